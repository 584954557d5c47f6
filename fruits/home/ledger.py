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
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, get_args
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from fruits.home.appends import AppendTarget, append_rows
from fruits.home.names import exact_bytes, spelled
from fruits.home.uris import rust_uri

log = logging.getLogger("fruits.home.ledger")

TIMESTAMP = pa.timestamp("us", tz="UTC")
LEDGER_SCHEMA = pa.schema(
    [
        pa.field("file_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("modified_at", TIMESTAMP, nullable=False),
        pa.field("discovered_at", TIMESTAMP, nullable=False),
        # "watch" (file event), "backfill" (listing), "drop", "stage", "upload", "migration" (ingested before the ledger)
        pa.field("discovered_by", pa.string(), nullable=False),
        # true: an earlier version of this path is in the ledger and was kept in landing (an overwrite in place)
        pa.field("overwrites", pa.bool_(), nullable=False),
        # Which try of this file version the row asks for: 0 when discovered, one more per retry ("retry" rows).
        pa.field("attempt", pa.int64()),
        # The lease of the process that recorded the row before making its file visible (drop, stage, upload): while
        # that writer heartbeats, a file not there yet is waited for (fruits.landing.writers).
        pa.field("writer", pa.string()),
        # Where the bytes are when not at ``path`` any more (a retry of a quarantined file reads them there).
        pa.field("read_from", pa.string()),
        # the path's exact bytes when ``path`` is not the exact name (not UTF-8: ``path`` spells each undecodable
        # byte as \xNN, fruits.home.names.spelled); null otherwise. file_id is made from these bytes.
        pa.field("raw_path", pa.binary()),
    ]
)
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


def ensure_ledger(uri: str) -> None:
    """Create the empty ledger at ``uri`` unless one is there (safe when several processes race to create it); an
    older ledger gets the columns it lacks (null in its rows)."""
    try:
        table = DeltaTable(rust_uri(uri))
    except TableNotFoundError:
        try:
            DeltaTable.create(
                rust_uri(uri), LEDGER_SCHEMA, mode="ignore", name="files",
                description="Fruits! file ledger: one row per discovered file version",
            )
            return
        except Exception:  # another process created it between our check and our commit
            table = DeltaTable(rust_uri(uri))
    _add_missing_columns(table)


def _add_missing_columns(table: DeltaTable) -> None:
    """Add the columns of :data:`LEDGER_SCHEMA` that a ledger made by an earlier version lacks (all nullable), so
    appends of the current schema fit; old rows read them as nulls."""
    from deltalake import Field

    have = {field.name for field in table.schema().fields}
    missing = [field for field in LEDGER_SCHEMA if field.name not in have]
    if missing:
        table.alter.add_columns([Field.from_arrow(field) for field in missing])  # type: ignore[attr-defined]
        log.info("ledger: added the columns %s", ", ".join(field.name for field in missing))


def ledger_target(uri: str) -> AppendTarget:
    """The ledger at ``uri`` for the appends of a long-running process (kept loaded); made at the first append, or
    the first read of its table, if there is none yet."""
    return AppendTarget(uri, create=ensure_ledger)


def record(
    ledger: str | AppendTarget,
    versions: Iterable[FileVersion],
    discovered_by: DiscoveredBy,
    *,
    overwrites: Iterable[bool] | None = None,
    writer: str | None = None,
) -> int:
    """Append ``versions`` to the ledger (its location; or, from a long-running process, an
    :class:`~fruits.home.appends.AppendTarget`, which spares reading its log again) in one commit; returns how many rows
    were written. ``writer``: the lease id of a process that records its files before they appear
    (:class:`fruits.landing.writers.WriterLease`)."""
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
    append_rows(ledger, table)
    return len(versions)


def record_retries(ledger: str | AppendTarget, rows: list[dict], read_from: list[str | None]) -> int:
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
    append_rows(ledger, table)
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
        self._recent.update(values.tolist())
        if len(self._recent) > 100_000:
            self._sorted = np.unique(np.concatenate([self._sorted, np.array(sorted(self._recent), dtype="S16")]))
            self._recent.clear()


class LedgerView:
    """What discovery needs to know of the ledger: which file versions (and, to detect overwrites, which paths) are
    in it. Loaded once, then kept up to date by reading only the data files added since (other processes' rows too).
    """

    def __init__(self, uri: str, track_paths: bool) -> None:
        self.uri = uri
        self.track_paths = track_paths
        self.ids = SortedDigests()
        self.paths = SortedDigests()
        self._seen_files: set[str] = set()
        self.target = ledger_target(uri)  # discovery appends through it: the ledger stays loaded
        self.version = -1

    def refresh(self) -> int:
        """Read the rows of data files added since the last call; returns how many rows were read."""
        table = self.target.table
        table.update_incremental()
        if table.version() == self.version:
            return 0
        self.version = table.version()
        actions = pa.table(table.get_add_actions(flatten=True)).column("path").to_pylist()
        new_files = [f for f in actions if f not in self._seen_files]
        if not new_files:
            return 0
        columns = ["file_id", "path", "raw_path"] if self.track_paths else ["file_id"]
        rows = read_data_files(self.uri, new_files, columns)
        self.ids.add(digests(rows.column("file_id").combine_chunks()))
        if self.track_paths:
            paths, raws = rows.column("path").to_pylist(), rows.column("raw_path").to_pylist()
            self.paths.add(path_digests([exact_bytes(p, r) for p, r in zip(paths, raws)]))
        self._seen_files.update(new_files)
        return rows.num_rows


def read_data_files(
    uri: str, files: list[str], columns: list[str] | None = None, schema: pa.Schema = LEDGER_SCHEMA
) -> pa.Table:
    """The rows of some data files of the Delta table at ``uri`` (paths as its add actions spell them); with
    ``schema``, columns a file lacks (written before they were added) are read as nulls."""
    import pyarrow.dataset as ds

    filesystem, located = _table_files(uri, files)
    return ds.dataset(located, format="parquet", filesystem=filesystem, schema=schema).to_table(columns=columns)


def _table_files(uri: str, files: list[str]) -> tuple[Any, list[str]]:
    """pyarrow's file system of the Delta table at ``uri``, and where ``files`` (relative to the table's root, or
    absolute) are on it."""
    import pyarrow.fs as pafs

    root = rust_uri(uri).rstrip("/")
    located = [f if "://" in f or f.startswith("/") else f"{root}/{f}" for f in files]
    if "://" not in root:
        return pafs.LocalFileSystem(), located
    filesystem, _ = pafs.FileSystem.from_uri(root)
    return filesystem, [f.split("://", 1)[1] for f in located]


def commits_gone(uri: str, first: int, last: int) -> bool:
    """Whether the commits ``first .. last`` of the Delta table at ``uri`` can no longer be read: a log entry of
    theirs expired (or never was), or a data file one of them added was vacuumed. Told by the table's files, as
    delta-rs raises no error type of its own for either."""
    import pyarrow.fs as pafs

    filesystem, entries = _table_files(uri, [f"_delta_log/{version:020d}.json" for version in range(first, last + 1)])
    if any(info.type != pafs.FileType.File for info in filesystem.get_file_info(entries)):
        return True
    added = []
    for entry in entries:
        with filesystem.open_input_stream(entry) as handle:
            actions = [json.loads(line) for line in handle.read().splitlines() if line.strip()]
        added += [unquote(action["add"]["path"]) for action in actions if "add" in action]
    _, located = _table_files(uri, added)
    return any(info.type == pafs.FileType.NotFound for info in filesystem.get_file_info(located))


def ledger_rows(uri: str, columns: list[str] | None = None) -> pa.Table:
    """The ledger's rows (all columns unless ``columns``); an empty table if there is no ledger yet."""
    try:
        table = DeltaTable(rust_uri(uri))
    except TableNotFoundError:
        return LEDGER_SCHEMA.empty_table().select(columns or LEDGER_SCHEMA.names)
    return table.to_pyarrow_dataset().to_table(columns=columns)


def local_mtime_ms(stat: os.stat_result) -> int:
    """A local file's mtime in whole ms, as Hadoop's FileStatus (and so Spark's binaryFile) reports it."""
    return stat.st_mtime_ns // 1_000_000
