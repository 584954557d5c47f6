"""Getting images into the landing folder atomically: ``fruits drop`` (copy now) and ``fruits stage`` (watch an inbox).

Spark's file source lists the landing folder and reads each new path once, so a file must appear there whole:
it is written under a hidden temporary name in the destination folder (which the stream never reads), flushed to
disk, then renamed to its final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from fruits.names import check_label, check_sources, stage_refusal

log = logging.getLogger("fruits.landing")


def local_folder(uri: str) -> Path:
    """The local path of a landing location (``/x`` or ``file:/x``); drop and stage write to local folders only."""
    if uri.startswith("file:"):
        uri = "/" + uri[len("file:") :].lstrip("/")
    if "://" in uri:
        raise ValueError(f"{uri}: drop and stage write to a local (or mounted) landing folder only")
    return Path(uri)


def is_candidate(name: str, extensions: list[str]) -> bool:
    """Whether the stream would read a file of this name: an image extension, not hidden or temporary."""
    stem, dot, extension = name.rpartition(".")
    accepted = {e.lower().lstrip(".") for e in extensions}
    return bool(dot and stem) and not name.startswith((".", "_", "~")) and extension.lower() in accepted


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def place_atomically(source: Path, target: Path, move: bool = False) -> Path | None:
    """Put ``source``'s bytes at ``target`` atomically; returns where they landed, or None if already there.

    A different file already at ``target`` is never overwritten (the stream would not read it again): the bytes
    land under ``name-2.ext``, ``name-3.ext``, ... instead. With ``move``, the source is removed afterwards.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    final, number = target, 1
    while final.exists():
        if final.stat().st_size == source.stat().st_size and _sha256(final) == _sha256(source):
            if move:
                source.unlink()
            return None
        number += 1
        final = target.with_name(f"{target.stem}-{number}{target.suffix}")
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(source, "rb") as reader, open(temporary, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    if move:
        source.unlink()
    return final


@dataclass(frozen=True)
class Dropped:
    """One source file and what became of it."""

    source: Path
    target: Path | None
    note: str


def drop(sources: list[Path], landing: Path, extensions: list[str], label: str | None = None) -> list[Dropped]:
    """Copy image files, and the images under folders (keeping their sub-folders), into ``landing`` atomically.

    ``drop(["photos/"])`` puts ``photos/Banana/a.jpg`` at ``landing/Banana/a.jpg``; a file argument lands in the
    landing root, or in ``landing/<label>/`` with ``label``.
    """
    check_label(label)  # fruits.names: refuse, before anything is written, what would leave landing or go unread
    check_sources(sources, lambda name: is_candidate(name, extensions))
    root = landing / label if label else landing
    results = []
    for source in sources:
        if source.is_dir():
            pairs = [(path, root / path.relative_to(source)) for path in sorted(source.rglob("*")) if path.is_file()]
        elif source.is_file():
            pairs = [(source, root / source.name)]
        else:
            results.append(Dropped(source, None, "no such file or folder"))
            continue
        for path, target in pairs:
            if not is_candidate(path.name, extensions):
                results.append(Dropped(path, None, "skipped: not an image name the stream reads"))
                continue
            placed = place_atomically(path, target)
            results.append(Dropped(path, placed, "placed" if placed else "already there"))
    return results


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    changed_at: float
    closed: bool = False


@dataclass(eq=False)  # watchdog keeps handlers in a set: identity hashing
class InboxStager(FileSystemEventHandler):
    """Promotes files from an inbox, where other tools write slowly, into the landing folder once complete.

    A file is complete when its writer closed it (inotify close-write, or it was renamed into the inbox) and it has
    not changed for ``settle_seconds``, or, without such an event, when its size and mtime have not changed for
    ``stable_seconds``. Promotion is an atomic copy into the landing folder (same sub-folders), then removal
    from the inbox.
    """

    inbox: Path
    landing: Path
    extensions: list[str]
    stable_seconds: float = 5.0
    settle_seconds: float = 0.5
    pending: dict[Path, _Pending] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    promoted: int = 0

    def _track(self, path: str | bytes, closed: bool = False) -> None:
        path = Path(os.fsdecode(path))
        if not is_candidate(path.name, self.extensions) or not path.is_file():
            return
        refusal = stage_refusal(path, self.inbox)  # fruits.names: no link out of the inbox, no name Spark skips
        if refusal:
            log.warning("not staged: %s", refusal)
            return
        stat = path.stat()
        with self.lock:
            entry = self.pending.get(path)
            if entry is None or (entry.size, entry.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                self.pending[path] = entry = _Pending(stat.st_size, stat.st_mtime_ns, time.monotonic())
            entry.closed = entry.closed or closed

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._track(event.src_path)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._track(event.src_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._track(event.src_path, closed=True)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:  # a rename into the inbox is how careful writers (rsync) finish a file
            self._track(event.dest_path, closed=True)

    def scan(self) -> None:
        """Track files already in the inbox (written while no stager ran)."""
        for path in self.inbox.rglob("*"):
            if path.is_file():
                self._track(path)

    def promote_ready(self) -> int:
        """Promote every complete file; returns how many this call promoted."""
        now, promoted = time.monotonic(), 0
        with self.lock:
            for path in list(self.pending):
                entry = self.pending[path]
                if not path.exists():
                    del self.pending[path]
                    continue
                stat = path.stat()
                if (stat.st_size, stat.st_mtime_ns) != (entry.size, entry.mtime_ns):
                    self.pending[path] = _Pending(stat.st_size, stat.st_mtime_ns, now, entry.closed)
                    continue
                quiet = now - entry.changed_at
                if quiet >= (self.settle_seconds if entry.closed else self.stable_seconds):
                    del self.pending[path]
                    if stage_refusal(path, self.inbox):  # replaced by a link since it was tracked
                        continue
                    placed = place_atomically(path, self.landing / path.relative_to(self.inbox), move=True)
                    log.info("staged %s -> %s", path, placed or "(already in landing)")
                    promoted += 1
        self.promoted += promoted
        return promoted

    def run(self, stop: threading.Event, poll_seconds: float = 0.2) -> None:
        """Watch the inbox and promote complete files until ``stop`` is set."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(self, str(self.inbox), recursive=True)
        observer.start()
        try:
            self.scan()
            while not stop.wait(poll_seconds):
                self.promote_ready()
        finally:
            observer.stop()
            observer.join()
