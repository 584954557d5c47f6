"""The family of errors Fruits! raises on purpose, sorted by what the one who meets them does next.

Every exception class of the code derives from :class:`FruitsError` through exactly one of the kinds below; the
concrete classes live beside the code that raises them (``ConfigError`` in fruits/config.py, ``LockBusy`` in
fruits/home/locks.py, ...); one keeps a built-in as its second base only where callers catch that built-in (an
object store's error is an OSError, as a disk's). Callers tell errors apart by class and by their fields, never by
their text: ``str(exc)`` is written for people. The ``fruits`` command maps the kinds to its exit codes in one table
(``EXIT_CODES`` in fruits/cli.py; README, "Exit codes").

This module imports nothing from fruits: every layer may raise these.
"""

from __future__ import annotations

from typing import ClassVar


class FruitsError(Exception):
    """Base of the family. ``retryable``: whether the same call may succeed later with nothing changed by anyone."""

    retryable: ClassVar[bool] = False


class Refused(FruitsError):
    """What was given is refused (a setting, a name, an image's bytes), before anything was done with it: change it
    and try again. ``reason`` says why, for people (it is the quarantine reason of an image)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unavailable(FruitsError):
    """Something the work needs is not there (weights, a PCA to identify against, a change feed of inserts only):
    provide it, or the caller takes another way."""


class Busy(FruitsError):
    """Another process or request holds what this needs (the home's lock, the decode budget): nothing was done, and
    the same call may succeed once it lets go."""

    retryable: ClassVar[bool] = True


class Failed(FruitsError):
    """The work started and failed (a stream, a refit, a model that no longer runs, sources that were not there); what
    was committed stays, and the next run resumes from it."""


class Stopped(FruitsError):
    """The work was stopped because a stop was asked for (a signal): not a failure, nothing is lost."""
