"""One ``fruits stream`` and one ``refit-pca`` per home at a time: an exclusive, non-blocking ``flock`` on a file
under the home.

The lock file is ``HOME/locks/<name>.lock`` (``[paths] locks``) for a local home (or one every machine mounts, e.g.
NFS with working locks). ``flock`` is released by the kernel when the process dies, so a killed refit never leaves a stale
lock. Object stores (``s3a://``) have no locks: for a remote home the lock file is local
(``~/.cache/fruits/locks/``), which only keeps refits on the same machine apart; see docs/deployment.md
(Concurrent refits) for what to use there.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fruits.config import Config
from fruits.uris import local_path

log = logging.getLogger("fruits.locks")


class LockBusy(RuntimeError):
    """Another process holds the lock; the message names it."""


def lock_path(config: Config, name: str) -> Path:
    """Where the lock ``name`` of ``config``'s home lives (local file; see the module's docstring)."""
    folder = local_path(config.locks)
    if folder is not None:
        return Path(folder) / f"{name}.lock"
    digest = hashlib.sha256(config.home.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "fruits" / "locks" / f"{digest}-{name}.lock"


@contextmanager
def exclusive(config: Config, name: str) -> Iterator[Path]:
    """Hold the lock ``name`` of the home for the ``with`` block, or raise :class:`LockBusy` at once if another
    process holds it. The lock file records the holder (host, pid, since) for the message."""
    path = lock_path(config, name)
    if not config.home.startswith(("/", "file:")) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", config.home):
        log.warning("home %s is remote: the %s lock (%s) keeps out only processes of this machine", config.home, name, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 512, 0).decode(errors="replace").strip() or "unknown process"
            raise LockBusy(
                f"another {name} is running on this home ({holder}; lock {path}): exiting; "
                "run it again once that one has finished"
            ) from None
        os.ftruncate(descriptor, 0)
        holder = f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        os.pwrite(descriptor, holder.encode() + b"\n", 0)
        yield path
    finally:
        os.close(descriptor)  # releases the lock
