"""Stopping a long Spark driver loop (the stream, ``fruits model switch``) between two chunks on SIGTERM / SIGINT.

PySpark's own SIGINT handler cancels every running job at once: the chunk in flight is lost and the command ends with
the JVM's traceback. :func:`stop_on_signals` replaces it while its block runs: the first signal only sets an event,
which the loop looks at between chunks; a second one ends the process at once, as after a kill.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager


@contextmanager
def stop_on_signals(stop: threading.Event | None = None):
    """``stop`` (or a new event), also set by SIGTERM / SIGINT while the block runs in the main thread. A second signal
    does not wait: the process ends at once, as the signal's default action ends it (the JVM, its stdin closed, exits
    too); the chunk in flight is done again at the next start, as after a kill."""
    stop, previous = stop or threading.Event(), {}

    def handle(signum: int, _frame) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
