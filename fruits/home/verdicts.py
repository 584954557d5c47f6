"""What a quarantine row says about its file, in one word, and what the stream does about it.

A verdict that might be wrong is never final: the stream tries a file again by itself when the cause may pass
(:attr:`Cause.TRANSIENT`, :attr:`Cause.WAITING`, :attr:`Cause.MISSING`), and ``fruits retry`` sends any quarantined
file through the stream again. Each try is one more ``attempt`` of the same file version; the outcome of the highest
attempt is the file's current one, and the rows it supersedes stay as history.
"""

from __future__ import annotations

from enum import Enum


class Cause(str, Enum):
    """Why a file version was quarantined (the quarantine table's ``cause`` column)."""

    REJECTED = "rejected"  # the bytes are not an image the model takes (the decoder's or the model's verdict)
    TOO_LARGE = "too_large"  # above [model] max_bytes: never read
    OVERWRITTEN = "overwritten"  # overwritten in place after its ingestion ([discovery] allow_overwrites = false)
    CHANGED = "changed"  # changed between its discovery and its reading: its new version has its own ledger row
    TRANSIENT = "transient"  # its featurizing job failed with it alone (a worker crash, an I/O error, out of memory)
    WAITING = "waiting"  # recorded by a writer that has not made it appear yet, and still heartbeats
    MISSING = "missing"  # not there when read (deleted, or its writer gave up): ingested if it appears again

    @property
    def watched(self) -> bool:
        """Whether the stream tries the file again when it appears (or, waiting, when its writer is gone)."""
        return self in (Cause.WAITING, Cause.MISSING)

    @property
    def moves_original(self) -> bool:
        """Whether the quarantined original is moved to the quarantine folder (it is kept there, whatever
        ``after_ingest`` says). A missing or waiting file is not there; a changed file's bytes are its newer version,
        which has its own ledger row and stays in landing."""
        return self not in (Cause.WAITING, Cause.MISSING, Cause.CHANGED)


def retryable(cause: Cause, attempt: int, max_retries: int) -> bool:
    """Whether the stream will try the file again by itself after this verdict."""
    if cause is Cause.TRANSIENT:
        return attempt < max_retries
    return cause.watched


def backoff_seconds(attempt: int, base: float) -> float:
    """How long after the ``attempt``-th try's verdict the next try of a transient failure starts: ``base``, then
    twice that, and so on."""
    return base * (2 ** attempt)
