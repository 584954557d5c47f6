"""Getting images into the landing folder atomically: ``fruits drop`` (copy now) and ``fruits stage`` (watch an inbox).

The stream records each file version it finds in landing once, so a file must appear there whole: it is written
under a hidden temporary name in the destination folder (which the stream never reads), flushed to disk, then linked
under its final name (a link, unlike a rename, never replaces a file already there). With a
:class:`LedgerRecorder`, the file is recorded in the ledger just before, so the stream's discovery has nothing left
to do for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Literal

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from fruits.errors import Failed
from fruits.home.filesystem import UnsupportedLocation
from fruits.home.ledger import FileVersion, LandedBy, label_of, local_mtime_ms, record
from fruits.home.tables import Table
from fruits.home.uris import hadoop_uri
from fruits.landing.writers import WriterLease
from fruits.home.names import check_label, check_sources, is_candidate, stage_refusal, temporary_name

log = logging.getLogger("fruits.landing.drop")

# Files recorded in the ledger per commit by `fruits drop` (then made visible in landing).
RECORD_GROUP = 500

# One local drop at a time in a process. Two threads of a server landing uploads of one name would both choose that
# name as free and record it in the ledger before one of them finds it taken: a row for bytes that never appear there.
# Between processes, the link that never replaces a file decides (:func:`_publish`).
_LANDING = threading.Lock()


def local_folder(uri: str) -> Path:
    """The local path of a landing location (``/x`` or ``file:/x``); drop and stage write to local folders only."""
    if uri.startswith("file:"):
        uri = "/" + uri[len("file:") :].lstrip("/")
    if "://" in uri:
        raise UnsupportedLocation(f"{uri}: drop and stage write to a local (or mounted) landing folder only")
    return Path(uri)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LedgerRecorder:
    """Records files in the ledger (:mod:`fruits.home.ledger`) just before they appear in the landing folder, so the
    stream's discovery finds them already recorded and the stream does not wait for an event or a listing."""

    # The ledger (home.ledger), kept loaded from the first record on (`fruits stage` and the web server record for as
    # long as they run: each record then writes its commit without reading the ledger's log again).
    ledger: Table
    landing: Path
    method: LandedBy
    # The heartbeat of this process while it lands files (fruits.landing.writers): started before the first row is recorded.
    lease: WriterLease | None = None

    def __call__(self, placements: list["_Placement"]) -> None:
        landing = hadoop_uri(str(self.landing))
        versions = []
        for placement in placements:
            stat = placement.temporary.stat()  # the rename keeps size and mtime
            path = hadoop_uri(str(placement.final))
            versions.append(FileVersion(path, stat.st_size, local_mtime_ms(stat), label_of(path, landing)))
        if self.lease is not None:
            self.lease.start()
        record(self.ledger, versions, self.method, writer=self.lease.id if self.lease else None)


@dataclass
class _Placement:
    """A file copied under a hidden temporary name beside its final name, not yet visible to the stream."""

    source: Path
    temporary: Path
    final: Path


def _free_name(source: Path, target: Path, chosen: set[Path] = frozenset()) -> Path | None:
    """``target``, or ``name-2.ext``, ``name-3.ext``... if taken by other bytes (or in ``chosen``); None if the same
    bytes are there."""
    final, number = target, 1
    while final in chosen or final.exists():
        if final in chosen:
            number += 1
            final = target.with_name(f"{target.stem}-{number}{target.suffix}")
            continue
        if final.stat().st_size == source.stat().st_size and _sha256(final) == _sha256(source):
            return None
        number += 1
        final = target.with_name(f"{target.stem}-{number}{target.suffix}")
    return final


def _prepare(source: Path, target: Path, chosen: set[Path] = frozenset()) -> _Placement | None:
    """Copy ``source`` beside ``target`` under a hidden name and flush it; None if its bytes are already there.
    ``chosen``: names prepared but not published yet, which count as taken."""
    target.parent.mkdir(parents=True, exist_ok=True)
    final = _free_name(source, target, chosen)
    if final is None:
        return None
    temporary = final.with_name(temporary_name(final.name))
    try:
        with open(source, "rb") as reader, open(temporary, "xb") as writer:  # never a file another writer has open
            shutil.copyfileobj(reader, writer, 1 << 20)
            writer.flush()
            os.fsync(writer.fileno())
    except BaseException:  # disk full, a name too long, Ctrl-C: no hidden copy is left behind
        temporary.unlink(missing_ok=True)
        raise
    return _Placement(source, temporary, final)


def _publish(placement: _Placement, recorder: LedgerRecorder | None) -> Path:
    """Make a prepared file visible under its final name, never replacing a file (a hard link fails if the name is
    taken; then the next free name is used, and recorded)."""
    try:
        while True:
            try:
                os.link(placement.temporary, placement.final)
                break
            except FileExistsError:  # another process took the name since we chose it
                placement.final = _free_name(placement.source, placement.final) or placement.final
                if placement.final.exists():
                    break  # the same bytes landed meanwhile
                if recorder is not None:
                    recorder([placement])
    finally:
        placement.temporary.unlink(missing_ok=True)
    directory = os.open(placement.final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the new name itself survives a power cut
    finally:
        os.close(directory)
    return placement.final


def place_atomically(source: Path, target: Path, *, recorder: LedgerRecorder | None = None) -> Path | None:
    """Put ``source``'s bytes at ``target`` atomically; returns where they landed, or None if already there.

    A different file already at ``target`` is never overwritten (the stream would not read it again): the bytes
    land under ``name-2.ext``, ``name-3.ext``, ... instead. With ``recorder``, the file is recorded in the ledger before
    it appears.
    """
    with _LANDING:
        placement = _prepare(source, target)
        if placement is not None:
            try:
                if recorder is not None:
                    recorder([placement])
            except BaseException:
                placement.temporary.unlink(missing_ok=True)
                raise
            _publish(placement, recorder)
    return placement.final if placement else None


# What became of one source file of a drop (`fruits drop` prints it; the web API answers it as "note").
DropNote = Literal["placed", "already there", "no such file or folder", "skipped: not an image name the stream reads"]


class SourcesMissing(Failed):
    """Some sources given to ``fruits drop`` were not there; the others were placed."""

    def __init__(self, sources: list[Path]) -> None:
        super().__init__(f"{len(sources)} of the sources given did not exist: {', '.join(map(str, sources))}")
        self.sources = sources


@dataclass(frozen=True)
class Dropped:
    """One source file and what became of it (``target``: a local path, or an ``s3a://`` URI)."""

    source: Path
    target: Path | str | None
    note: DropNote


def drop_plan(
    sources: list[Path], extensions: list[str], *, label: str | None = None
) -> tuple[list[tuple[Path, PurePosixPath]], list[Dropped]]:
    """Which files of ``sources`` land where, relative to the landing folder, and the sources that do not land.

    A folder's images keep their sub-folders (``photos/Banana/a.jpg`` -> ``Banana/a.jpg``); a file argument lands in
    the landing root, or in ``<label>/`` with ``label`` (checked by :func:`fruits.home.names.check_label`). Names that
    would leave landing or go unread are refused (:class:`fruits.home.names.UnsafeName`) before anything is written.
    """
    label = check_label(label)
    check_sources(sources, lambda name: is_candidate(name, extensions))
    root = PurePosixPath(label) if label else PurePosixPath()
    pairs: list[tuple[Path, PurePosixPath]] = []
    refused: list[Dropped] = []
    for source in sources:
        if source.is_dir():
            found = [(p, root / p.relative_to(source).as_posix()) for p in sorted(source.rglob("*")) if p.is_file()]
        elif source.is_file():
            found = [(source, root / source.name)]
        else:
            refused.append(Dropped(source, None, "no such file or folder"))
            continue
        for path, relative in found:
            if is_candidate(path.name, extensions):
                pairs.append((path, relative))
            else:
                refused.append(Dropped(path, None, "skipped: not an image name the stream reads"))
    return pairs, refused


def drop(
    sources: list[Path],
    landing: Path,
    extensions: list[str],
    *,
    label: str | None = None,
    recorder: LedgerRecorder | None = None,
) -> list[Dropped]:
    """Copy image files, and the images under folders (keeping their sub-folders), into ``landing`` atomically
    (where each lands: :func:`drop_plan`). With ``recorder``, they are recorded in the ledger before they appear.

    >>> recorder = LedgerRecorder(config.files_table, landing, "drop")
    >>> [d.note for d in drop([Path("a.jpg")], landing, ["jpg"], label="Banana", recorder=recorder)]
    ['placed']
    """
    pairs, results = drop_plan(sources, extensions, label=label)
    with _LANDING:
        return results + land_in_groups(
            pairs,
            prepare=lambda path, relative, done: _prepare(path, landing / relative, {p.final for p in done}),
            record=recorder or (lambda group: None),
            publish=lambda placement: _publish(placement, recorder),
            discard=lambda placement: placement.temporary.unlink(missing_ok=True),
        )


def land_in_groups(
    pairs: list[tuple[Path, PurePosixPath]],
    prepare: Callable[[Path, PurePosixPath, list[Any]], Any | None],
    record: Callable[[list[Any]], None],
    publish: Callable[[Any], Path | str],
    discard: Callable[[Any], None] = lambda item: None,
) -> list[Dropped]:
    """The drop loop of every landing folder (local here, S3 in :mod:`fruits.landing.stage`): ``prepare`` each file
    (None: its bytes are there already; it sees the files prepared before it), then, a group of ``RECORD_GROUP`` at a
    time, ``record`` the group in the ledger (one commit) before ``publish`` makes each file visible. If a ledger
    commit fails, the files not yet published are ``discard``-ed and the error goes on."""
    results: list[Dropped] = []
    prepared: list[Any] = []
    try:
        for path, relative in pairs:
            item = prepare(path, relative, prepared)
            if item is None:
                results.append(Dropped(path, None, "already there"))
            else:
                prepared.append(item)
    except BaseException:  # one file failed (disk full, a name too long): the copies made so far go too
        for item in prepared:
            discard(item)
        raise
    for start in range(0, len(prepared), RECORD_GROUP):
        group = prepared[start : start + RECORD_GROUP]
        try:
            record(group)  # one ledger commit for many photos
        except BaseException:
            for item in prepared[start:]:
                discard(item)
            raise
        results.extend(Dropped(item.source, publish(item), "placed") for item in group)
    return results


def _same_file(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_ino, before.st_dev, before.st_size, before.st_mtime_ns) == (
        after.st_ino, after.st_dev, after.st_size, after.st_mtime_ns
    )


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
    recorder: LedgerRecorder | None = None
    # How a complete file is promoted: (inbox file, its path below landing) -> where it landed or None. Default: an
    # atomic local copy into ``landing`` (:func:`place_atomically`); fruits.landing.stage gives one for S3.
    place: Callable[[Path, PurePosixPath], object] | None = None
    pending: dict[Path, _Pending] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    promoted: int = 0

    def _track(self, path: str | bytes, closed: bool = False) -> None:
        path = Path(os.fsdecode(path))
        if not is_candidate(path.name, self.extensions) or not path.is_file():
            return
        refusal = stage_refusal(path, self.inbox)  # fruits.home.names: no link out of the inbox, no name Spark skips
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
                    placed = self._promote(path)
                    log.info("staged %s -> %s", path, placed or "(already in landing)")
                    promoted += 1
        self.promoted += promoted
        return promoted

    def _promote(self, path: Path) -> object:
        """Copy ``path`` into landing, then remove it from the inbox, unless it changed since it was copied (same
        size, mtime and inode right before the unlink): then it stays, and is staged again once complete."""
        relative = PurePosixPath(path.relative_to(self.inbox).as_posix())
        before = path.stat()
        if self.place is None:
            placed = place_atomically(path, self.landing / relative, recorder=self.recorder)
        else:
            placed = self.place(path, relative)
        try:
            after = path.stat()
        except FileNotFoundError:
            return placed
        if _same_file(before, after):
            path.unlink()
        else:
            log.warning("%s changed while it was staged: kept in the inbox, staged again once complete", path)
            self.pending[path] = _Pending(after.st_size, after.st_mtime_ns, time.monotonic())  # (lock held by the caller)
        return placed

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
