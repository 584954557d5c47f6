"""The file ledger (``HOME/tables/files``): one Delta row per discovered file version, whatever its mtime.

Discovery (the stream's watcher and listings, ``fruits drop``, ``fruits stage``) appends rows here; the stream reads
the ledger with its own streaming source (:mod:`fruits.streaming.ledger_source`) and gives every row exactly one
outcome, a ``features`` row or a ``quarantine`` row with the same ``file_id``. Rows are written with delta-rs (no JVM), so the commands that land files
record them directly.

A file version is (path, size, mtime in ms): ``file_id`` is their SHA-256. The same bytes landed again under the same
path with the same mtime (``rsync -a`` of an archive twice) are the same version, recorded once; a file overwritten in
place is a new version. On an object store (``s3a://``) the server sets an object's mtime when its upload completes,
so a writer that records the row first cannot know it: there a version is (path, size, ETag) instead, the ETag being
the MD5 of a single-PUT object's bytes (:mod:`fruits.home.s3`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, get_args

import numpy as np
import pyarrow as pa

from fruits.home.names import exact_bytes, spelled
from fruits.home.tables import LEDGER_SCHEMA, TIMESTAMP, Table

log = logging.getLogger("fruits.home.ledger")

# How a ledger row came to be (its ``discovered_by``): a file event, a listing, a process that records the files it
# lands (drop, stage, a web upload), the adoption of a home made before the ledger, or `fruits retry` / the stream's
# own retries.
DiscoveredBy = Literal["watch", "backfill", "drop", "stage", "upload", "migration", "retry"]
LandedBy = Literal["drop", "stage", "upload"]  # the writers that record their files before those appear
DISCOVERY_METHODS: tuple[DiscoveredBy, ...] = get_args(DiscoveredBy)


def file_id(path: str | bytes, size: int, mtime_ms: int, etag: str | None = None) -> str:
    """The id of one file version: 32 hex digits of SHA-256 over its path's exact bytes (as Spark would spell it),
    size and mtime (ms), or, for an object store's object, its ETag instead of the mtime."""
    version = f"etag:{etag}" if etag else str(mtime_ms)
    exact = path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")
    return hashlib.sha256(exact + f"\n{size}\n{version}".encode()).hexdigest()[:32]


def label_of(path: str, landing: str) -> str | None:
    """The file's parent folder below ``landing`` (both spelled alike); None for a file in the landing root."""
    relative = path[len(landing.rstrip("/")) + 1 :] if path.startswith(landing.rstrip("/") + "/") else None
    if relative is None or "/" not in relative:
        return None
    return relative.rsplit("/", 2)[-2]


@dataclass(frozen=True)
class FileVersion:
    """One file as discovery saw it: ``path`` as Spark's ``binaryFile`` spells it, size, mtime in ms, label, on an
    object store its ETag, and ``raw`` (the ledger's ``raw_path``): the exact bytes when ``path`` is not the exact
    name. Give ``path`` as Python spells it (``os.fsdecode``): a name that is not UTF-8 becomes its readable
    spelling and ``raw`` here (:func:`fruits.home.names.spelled`), and so does such a label."""

    path: str
    size: int
    mtime_ms: int
    label: str | None
    etag: str | None = None
    raw: bytes | None = None

    def __post_init__(self) -> None:
        if self.raw is None:
            path, raw = spelled(self.path)
            object.__setattr__(self, "path", path)
            object.__setattr__(self, "raw", raw)
        if self.label is not None:
            object.__setattr__(self, "label", spelled(self.label)[0])

    @property
    def exact(self) -> bytes:
        """The path's exact bytes."""
        return exact_bytes(self.path, self.raw)

    @property
    def file_id(self) -> str:
        return file_id(self.exact, self.size, self.mtime_ms, self.etag)

    @property
    def row(self) -> dict[str, Any]:
        """The version's ledger columns ``path`` and ``raw_path``: what finds its exact file (a name that is not
        UTF-8 by its bytes, not by its readable ``path``), for :func:`fruits.home.names.local_bytes` and the stream's
        moves."""
        return {"path": self.path, "raw_path": self.raw}


def record(
    ledger: Table,
    versions: Iterable[FileVersion],
    discovered_by: DiscoveredBy,
    *,
    overwrites: Iterable[bool] | None = None,
    writer: str | None = None,
) -> int:
    """Append ``versions`` to the ``ledger`` (made if missing; a handle kept by a long-running process spares
    reading its log again) in one commit; returns how many rows were written. ``writer``: the lease id of a process
    that records its files before they appear (:class:`fruits.landing.writers.WriterLease`)."""
    versions = list(versions)
    if not versions:
        return 0
    if discovered_by not in DISCOVERY_METHODS:
        raise ValueError(f"discovered_by={discovered_by!r}: expected one of {DISCOVERY_METHODS}")
    now = datetime.now(timezone.utc)
    table = pa.table(
        {
            "file_id": [v.file_id for v in versions],
            "path": [v.path for v in versions],
            "label": [v.label for v in versions],
            "size_bytes": [v.size for v in versions],
            "modified_at": pa.array([v.mtime_ms * 1000 for v in versions], pa.int64()).cast(TIMESTAMP),
            "discovered_at": pa.array([now] * len(versions), TIMESTAMP),
            "discovered_by": [discovered_by] * len(versions),
            "overwrites": list(overwrites) if overwrites is not None else [False] * len(versions),
            "attempt": [0] * len(versions),
            "writer": [writer] * len(versions),
            "read_from": pa.nulls(len(versions), pa.string()),
            "raw_path": pa.array([v.raw for v in versions], pa.binary()),
        },
        schema=LEDGER_SCHEMA,
    )
    ledger.append(table)
    return len(versions)


def record_retries(ledger: Table, rows: list[dict], read_from: list[str | None]) -> int:
    """Ask for one more try of each ledger row of ``rows`` (dicts of its columns, with the ``attempt`` of its current
    outcome): a row with the same file version, ``attempt`` one higher, ``discovered_by`` "retry", and ``read_from``
    where its bytes are now (None: at its path). One commit; returns how many rows were written. Recording the same
    retry twice is harmless: the stream gives each (file version, attempt) one outcome."""
    if not rows:
        return 0
    now = datetime.now(timezone.utc)
    columns = {name: [row.get(name) for row in rows] for name in ("file_id", "path", "label", "size_bytes")}
    table = pa.table(
        {
            **columns,
            "modified_at": pa.array([row["modified_at"] for row in rows], TIMESTAMP),
            "discovered_at": pa.array([now] * len(rows), TIMESTAMP),
            "discovered_by": ["retry"] * len(rows),
            "overwrites": [bool(row.get("overwrites")) for row in rows],
            "attempt": [int(row.get("attempt") or 0) + 1 for row in rows],
            "writer": [row.get("writer") for row in rows],
            "read_from": read_from,
            "raw_path": pa.array([row.get("raw_path") for row in rows], pa.binary()),
        },
        schema=LEDGER_SCHEMA,
    )
    ledger.append(table)
    return len(rows)


def digests(hex_ids: pa.Array | list[str]) -> np.ndarray:
    """32-hex-digit ids as a numpy array of 16-byte values (what :class:`SortedDigests` stores)."""
    ids = pa.array(hex_ids, pa.string()) if not isinstance(hex_ids, pa.Array) else hex_ids
    if len(ids) == 0:
        return np.zeros(0, dtype="S16")
    return np.frombuffer(bytes.fromhex("".join(ids.to_pylist())), dtype="S16")


def path_digests(paths: list[str | bytes]) -> np.ndarray:
    """16-byte SHA-256 prefixes of paths, their exact bytes (overwrite detection keeps these, not the paths)."""
    exact = [p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape") for p in paths]
    return np.array([hashlib.sha256(p).digest()[:16] for p in exact], dtype="S16")


# Recent additions a SortedDigests keeps in its set before it merges them into its sorted array.
MERGE_AT = 100_000


class SortedDigests:
    """A set of 16-byte digests for millions of members: a sorted numpy array plus a small set of recent additions
    (merged in when it grows). 16 bytes a member instead of ~100 for a Python set of strings."""

    def __init__(self, members: np.ndarray | None = None) -> None:
        self._sorted = np.unique(members) if members is not None and len(members) else np.zeros(0, dtype="S16")
        self._recent: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``values`` are members."""
        if len(values) == 0:
            return np.zeros(0, dtype=bool)
        found = np.zeros(len(values), dtype=bool)
        if len(self._sorted):
            index = np.minimum(np.searchsorted(self._sorted, values), len(self._sorted) - 1)
            found = self._sorted[index] == values
        if self._recent:
            found |= np.fromiter((v in self._recent for v in values.tolist()), dtype=bool, count=len(values))
        return found

    def add(self, values: np.ndarray) -> None:
        if len(values) > MERGE_AT:  # many at once (a view's first load): merged into the array, never one by one
            self._sorted = np.unique(np.concatenate([self._sorted, values]))
            return
        self._recent.update(values.tolist())
        if len(self._recent) > MERGE_AT:
            self._sorted = np.unique(np.concatenate([self._sorted, np.array(sorted(self._recent), dtype="S16")]))
            self._recent.clear()


class LedgerView:
    """What discovery needs to know of the ledger: which file versions (and, to detect overwrites, which paths) are
    in it. Loaded once, then kept up to date by reading only the data files added since (other processes' rows too).
    """

    def __init__(self, ledger: Table, track_paths: bool) -> None:
        self.ledger = ledger  # discovery appends through it too: the ledger stays loaded
        self.track_paths = track_paths
        self.ids = SortedDigests()
        self.paths = SortedDigests()
        self._seen_files: set[str] = set()
        self.version = -1

    def refresh(self) -> int:
        """Read the rows of data files added since the last call; returns how many rows were read."""
        table = self.ledger.latest(create=True)
        if table.version() == self.version:
            return 0
        self.version = table.version()
        actions = self.ledger.add_actions(table=table).column("path").to_pylist()
        new_files = [f for f in actions if f not in self._seen_files]
        if not new_files:
            return 0
        columns = ["file_id", "path", "raw_path"] if self.track_paths else ["file_id"]
        rows = self.ledger.read_files(new_files, columns)
        self.ids.add(digests(rows.column("file_id").combine_chunks()))
        if self.track_paths:
            paths, raws = rows.column("path").to_pylist(), rows.column("raw_path").to_pylist()
            self.paths.add(path_digests([exact_bytes(p, r) for p, r in zip(paths, raws)]))
        self._seen_files.update(new_files)
        return rows.num_rows


def local_mtime_ms(stat: os.stat_result) -> int:
    """A local file's mtime in whole ms, as Hadoop's FileStatus (and so Spark's binaryFile) reports it."""
    return stat.st_mtime_ns // 1_000_000
