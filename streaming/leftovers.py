"""Files left in landing although their outcome is committed: moved where their outcome row says.

The sink moves each file right after its outcome commit; a crash between the two, or a file that was busy at that
moment (it changed, or a writer raced the move), leaves it in landing. Each listing of landing (at start-up and every
``[discovery] backfill_interval``) hands its files to :class:`Leftovers`, which looks up their current outcomes in the
background and moves those that have one: a featurized file to its archive place (or deletes it, when ``after_ingest``
is "delete"), a quarantined one to its quarantine place. A file is moved only if it is still the version its outcome
describes (size and mtime), and never onto another file.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from fruits.home.files import current_outcomes
from fruits.home.home import Home
from fruits.home.ledger import FileVersion
from fruits.home.verdicts import Cause

log = logging.getLogger("fruits.leftovers")


class Leftovers:
    """Moves decided files still in landing; see the module docstring. ``files`` is the stream's
    :class:`~fruits.streaming.sink.LandedFiles`."""

    def __init__(self, home: Home, files) -> None:
        self.home, self.config = home, home.config
        self.files = files
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fruits-leftovers")

    def submit(self, listed: list[FileVersion]) -> Future | None:
        """Settle the decided files among ``listed`` in the background (nothing to do when files stay in landing)."""
        if self.config.discovery.after_ingest == "keep" or not listed:
            return None
        return self._worker.submit(self._settle_logged, listed)

    def _settle_logged(self, listed: list[FileVersion]) -> int:
        try:
            return self.settle(listed)
        except Exception:  # the next listing tries again
            log.exception("settling files left in landing failed")
            return 0

    def settle(self, listed: list[FileVersion]) -> int:
        """Move the decided files among ``listed``; returns how many moved."""
        by_id = {version.file_id: version for version in listed}
        current = current_outcomes(self.home, file_ids=pa.array(list(by_id), pa.string()))
        moved = 0
        for outcome in current.to_pylist():
            version = by_id[outcome["file_id"]]
            featurized = outcome["kind"] == "features"
            if not featurized and (outcome["retryable"] or not Cause(outcome["cause"] or "rejected").moves_original):
                continue
            target = outcome["stored_path"]
            if target == version.path or (target is None and not featurized):
                continue
            now = self.files.identity(version.row)  # the exact name: ``path`` is only its readable spelling
            if now is None or now[0] != version.size or now[1] not in (-1, version.mtime_ms):
                continue
            if target is None:
                self.files.remove(version.row)
            elif not self.files.move_unchanged(version.row, target, now):
                log.warning("%s: decided, but %s is taken or the file changed; it stays in landing", version.path, target)
                continue
            moved += 1
        if moved:
            log.info("moved %d decided files left in landing", moved)
        return moved

    def stop(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
