"""``fruits drop`` and ``fruits stage`` into a landing folder on S3 (``s3a://bucket/.../landing``).

An object store has no rename, and needs none: an object appears whole when its upload completes. So each file is
stored by one PUT under its final name, made conditional (``If-None-Match: *``) so that it never replaces another
object; its ledger row (:mod:`fruits.home.ledger`, version = path, size and ETag, i.e. the MD5 of the bytes) is committed
before the PUT, as on local disk, so the stream's listing finds the object already recorded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from fruits.home.filesystem import FileSystem
from fruits.home.s3 import etag_of
from fruits.landing.drop import Dropped, drop_plan, land_in_groups
from fruits.home.ledger import FileVersion, LandedBy, label_of, record
from fruits.home.tables import Table
from fruits.landing.writers import WriterLease

log = logging.getLogger("fruits.landing.stage")


@dataclass
class _Upload:
    source: Path
    size: int
    target: str  # s3a://... final name
    etag: str  # MD5 of the bytes (read again when uploaded: a large drop is not held in memory)


@dataclass(frozen=True)
class ObjectLanding:
    """Lands files in the S3 landing folder ``landing`` (as Spark spells it, ``s3a://``), recording them in the
    ``ledger`` (kept loaded from the first upload on: `fruits stage` and the web server land for as long as they run)
    as landed by ``method``, through ``files`` (the home's file system: S3 objects)."""

    landing: str
    ledger: Table = field(compare=False)
    method: LandedBy
    files: FileSystem = field(compare=False, repr=False)
    # The heartbeat of this process while it lands files (fruits.landing.writers): started before the first row is recorded.
    lease: WriterLease | None = field(default=None, compare=False)
    # The conditional PUT (a parameter so that a test can slow the uploads down, as a slow link would); None: a PUT
    # of ``files`` that never replaces an object (``If-None-Match: *``).
    put: Callable[[str, bytes], str | None] | None = field(default=None, compare=False, repr=False)

    def _free_name(self, size: int, etag: str, relative: PurePosixPath, chosen: set[str]) -> str | None:
        """``landing/relative``, or ``name-2.ext``... if taken by other bytes (or in ``chosen``); None if the same
        bytes are there."""
        base, number = f"{self.landing.rstrip('/')}/{relative.as_posix()}", 1
        target = base
        while True:
            existing = None if target in chosen else self.files.stat(target)
            if target not in chosen and existing is None:
                return target
            if existing is not None and existing.etag == etag and existing.size == size:
                return None
            number += 1
            stem, dot, suffix = base.rpartition(".")
            target = f"{stem}-{number}.{suffix}" if dot else f"{base}-{number}"

    def _prepare(self, source: Path, relative: PurePosixPath, chosen: set[str]) -> _Upload | None:
        data = source.read_bytes()
        etag = etag_of(data)
        target = self._free_name(len(data), etag, relative, chosen)
        return None if target is None else _Upload(source, len(data), target, etag)

    def _record(self, uploads: list[_Upload]) -> None:
        """Record ``uploads`` in the ledger in one commit (before any of them is visible)."""
        now_ms = int(time.time() * 1000)  # informational: the server sets the object's own mtime
        versions = [FileVersion(u.target, u.size, now_ms, label_of(u.target, self.landing), u.etag) for u in uploads]
        if self.lease is not None:
            self.lease.start()
        record(self.ledger, versions, self.method, writer=self.lease.id if self.lease else None)

    def _publish(self, upload: _Upload) -> str:
        """PUT the object under its name, never replacing one: a name taken meanwhile moves it to the next free one
        (recorded first)."""
        data = upload.source.read_bytes()
        if etag_of(data) != upload.etag:
            raise OSError(f"{upload.source} changed while it was being dropped: drop it again")
        put = self.put or (lambda uri, data: self.files.write(uri, data, if_absent=True))
        while put(upload.target, data) is None:
            relative = PurePosixPath(upload.target[len(self.landing.rstrip("/")) + 1 :])
            target = self._free_name(upload.size, upload.etag, relative, set())
            if target is None:
                break  # the same bytes landed meanwhile
            upload.target = target
            self._record([upload])
        return upload.target

    def place(self, source: Path, relative: PurePosixPath) -> str | None:
        """Land one file at ``relative`` below landing; where it landed, or None if its bytes are already there."""
        upload = self._prepare(source, relative, set())
        if upload is None:
            return None
        self._record([upload])
        return self._publish(upload)

    def drop(self, sources: list[Path], extensions: list[str], *, label: str | None = None) -> list[Dropped]:
        """:func:`fruits.landing.drop` into this S3 landing folder (one ledger commit per group of files)."""
        pairs, results = drop_plan(sources, extensions, label=label)
        return results + land_in_groups(
            pairs,
            prepare=lambda path, relative, done: self._prepare(path, relative, {u.target for u in done}),
            record=self._record,
            publish=self._publish,
        )
