"""One ``fruits stream`` and one ``refit-pca`` per home at a time.

On a local home (or one every machine mounts, e.g. NFS with working locks): an exclusive, non-blocking ``flock`` on
``HOME/locks/<name>.lock`` (``[paths] locks``), released by the kernel when the process dies, so a killed process
never leaves a stale lock.

On an S3 home (``s3a://``): a lease object ``HOME/locks/<name>.lock`` (:class:`S3Lease`), created with a conditional
PUT (``If-None-Match: *``: of two processes, exactly one creates it) and renewed every ``[s3] lease_seconds / 3``
with ``If-Match`` on its ETag. The lease names its holder by an owner id drawn at random per lease, never by host name
and pid: two containers of one service share both (pid 1, one host name). A holder is taken over only once it stopped
renewing for ``lease_seconds`` (its process or machine died), again with ``If-Match``, so of two contenders one wins.
A holder that finds its lease taken over stops its process (SIGTERM: the stream's clean stop).

Other remote homes (``hdfs://``): the lock file is local (``~/.cache/fruits/locks/``), which only keeps processes
of the same machine apart; see docs/deployment.md.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

from fruits.config import Config
from fruits.errors import Busy
from fruits.home.filesystem import S3Files
from fruits.home.home import Home
from fruits.home.s3 import is_s3
from fruits.home.uris import local_path

log = logging.getLogger("fruits.home.locks")


class LockBusy(Busy):
    """Another process holds the lock at ``lock`` (a local file, or an S3 lease's URI); the message names it."""

    def __init__(self, message: str, *, lock: str = "") -> None:
        super().__init__(message)
        self.lock = lock


# The home's locks: one `fruits stream`, one `fruits refit-pca` and one `fruits model switch|prune` at a time.
LockName = Literal["stream", "refit-pca", "model"]


def lock_path(config: Config, name: LockName) -> Path:
    """Where the lock ``name`` of ``config``'s home lives (local file; see the module's docstring)."""
    folder = local_path(config.locks)
    if folder is not None:
        return Path(folder) / f"{name}.lock"
    digest = hashlib.sha256(config.home.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "fruits" / "locks" / f"{digest}-{name}.lock"


@contextmanager
def exclusive(config: Config, name: LockName) -> Iterator[Path]:
    """Hold the lock ``name`` of the home for the ``with`` block, or raise :class:`LockBusy` at once if another
    process holds it. The lock records the holder (host, pid, since) for the message."""
    if is_s3(config.locks):
        uri = f"{config.locks.rstrip('/')}/{name}.lock"
        lease = S3Lease(uri, name, config.s3.lease_seconds, Home.from_config(config).files.on(uri))
        lease.acquire()
        try:
            yield Path(lease.uri)
        finally:
            lease.release()
        return
    path = lock_path(config, name)
    if local_path(config.home) is None:
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
                "run it again once that one has finished",
                lock=str(path),
            ) from None
        os.ftruncate(descriptor, 0)
        holder = f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        os.pwrite(descriptor, holder.encode() + b"\n", 0)
        yield path
    finally:
        os.close(descriptor)  # releases the lock


def _holder() -> dict[str, object]:
    """A new holder record: a random owner id (what the lease is keyed by), and host, pid and start for people."""
    now = time.time()
    return {"owner": secrets.token_hex(16), "host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "renewed_at": now}


def _silent(holder: dict[str, object], lease_seconds: float) -> bool:
    """Whether the lease's holder stopped renewing for ``lease_seconds``: only then is it taken over."""
    return time.time() - float(holder.get("renewed_at", 0)) > lease_seconds


class S3Lease:
    """The lock ``name`` of an S3 home: a lease object renewed by a heartbeat thread (see the module docstring),
    through ``files`` (the home's S3 objects: the lease needs their conditional writes)."""

    def __init__(self, uri: str, name: str, lease_seconds: float, files: S3Files) -> None:
        self.uri, self.name, self.lease_seconds, self.files = uri, name, lease_seconds, files
        self.holder = _holder()
        self.etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps(self.holder).encode()

    def acquire(self) -> None:
        """Create the lease, or take over a dead holder's; raise :class:`LockBusy` if a live process holds it."""
        for _ in range(3):  # the object may vanish (released) between our create and our read: try again
            self.etag = self.files.write(self.uri, self._body(), if_absent=True)
            if self.etag is not None:
                break
            current = self.files.get(self.uri)
            if current is None:
                continue
            data, etag = current
            try:
                holder = json.loads(data)
            except ValueError:
                holder = {}
            if not _silent(holder, self.lease_seconds):
                raise LockBusy(
                    f"another {self.name} is running on this home (host {holder.get('host')} pid {holder.get('pid')} "
                    f"since {holder.get('since')}; lease {self.uri}, renewed every {self.lease_seconds / 3:.0f} s): "
                    "exiting; run it again once that one has finished",
                    lock=self.uri,
                )
            log.warning("taking over the %s lease of a holder silent for %.0f s: %s", self.name, self.lease_seconds, holder)
            self.etag = self.files.write(self.uri, self._body(), if_match=etag)
            if self.etag is not None:
                break
        if self.etag is None:
            raise LockBusy(f"another {self.name} took the lease {self.uri} at the same time: exiting",
                           lock=self.uri)
        self._thread = threading.Thread(target=self._renew, name=f"fruits-{self.name}-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            self.holder["renewed_at"] = time.time()
            try:
                etag = self.files.write(self.uri, self._body(), if_match=self.etag or "")
            except Exception:  # S3 unreachable for a moment: try again at the next beat (the lease has 3 beats)
                log.exception("could not renew the %s lease %s", self.name, self.uri)
                continue
            if etag is None:
                log.critical("the %s lease %s was taken over by another process: stopping this one", self.name, self.uri)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            self.etag = etag

    def release(self) -> None:
        """Stop renewing and delete the lease (unless another process took it over meanwhile)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self.files.get(self.uri)
        if current is not None and current[1] == self.etag:
            self.files.delete(self.uri)
