"""One process at a time per home and job: an exclusive ``flock`` on ``HOME/locks/<name>.lock``.

The kernel drops the lock when the process dies (even by SIGKILL), so a crash never leaves a stale lock behind. It
holds on a local disk and on NFSv4; on an object store (``s3a://``) there is no such lock, and the home is locked on
this machine only (run one stream per home: see docs/deployment.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
from pathlib import Path

from fruits.uris import local_path


class AlreadyRunning(RuntimeError):
    """Another process holds the lock; the message says which and how to proceed."""


class HomeLock:
    """``with HomeLock(config.locks, "stream", what):`` runs the block only if no other process holds that lock.

    Re-entrant within a process (the CLI takes it before starting the JVM, the job again when it starts)."""

    _held: dict[Path, list[int]] = {}  # lock file -> [descriptor, how many holders in this process]

    def __init__(self, locks_uri: str, name: str, what: str) -> None:
        folder = local_path(locks_uri)
        if folder is None:  # object store: lock on this machine, keyed by the home's URI
            folder = os.path.join(tempfile.gettempdir(), "fruits-locks", hashlib.sha256(locks_uri.encode()).hexdigest()[:16])
        self.path = Path(folder) / f"{name}.lock"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        if self.path in self._held:
            self._held[self.path][1] += 1
            self._fd = self._held[self.path][0]
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AlreadyRunning(
                f"{self.what} is already running on this home ({holder}; lock {self.path}). "
                "Stop it first, or use another --home."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        self._held[self.path] = [fd, 1]

    def release(self) -> None:
        if self._fd is None:
            return
        held = self._held[self.path]
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.path]
            os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> "HomeLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
