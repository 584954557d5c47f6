"""``fruits files``: each file version of the ledger with its current state, like Auto Loader's
``cloud_files_state``; the backlog figures of ``fruits status``; and the current outcomes that ``fruits retry`` and
the stream's retries start from. Read with delta-rs and pyarrow: no JVM.

A file version (``file_id``) may have several outcome rows, one per ``attempt`` (:mod:`fruits.home.verdicts`): its
*current* outcome is the one of its highest attempt; the others are superseded (history). Its state:

- ``pending``: its newest ledger row has no outcome yet (being featurized, or waiting for the stream);
- ``ingested``: a features row;
- ``quarantined``: a quarantine row the stream will not try again by itself (``fruits retry`` can);
- ``retrying``: a quarantine row the stream will try again (a transient failure, a writer still uploading, a file
  that may come back), with its ``cause``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc

from fruits.home.home import Home
from fruits.home.names import readable
from fruits.home.tables import Table

# A file version's current state (``fruits files --state``): no outcome yet (or a retry asked for), featurized,
# quarantined for good, or quarantined with a retry the stream will make by itself.
FileState = Literal["pending", "ingested", "quarantined", "retrying"]
STATES: tuple[FileState, ...] = get_args(FileState)
# Which outcome table a row comes from.
OutcomeKind = Literal["features", "quarantine"]
# Columns of an outcome row as readers of current outcomes see them (missing ones are null: older rows).
OUTCOME_COLUMNS = {
    "file_id": pa.string(), "attempt": pa.int64(), "stored_path": pa.string(), "reason": pa.string(),
    "cause": pa.string(), "retryable": pa.bool_(), "ingested_at": pa.timestamp("us", tz="UTC"),
}


def outcome_rows(table: Table, kind: OutcomeKind, *, file_ids: pa.Array | None = None) -> pa.Table:
    """The outcome rows of one table (only those of ``file_ids``, if given) with :data:`OUTCOME_COLUMNS` and
    ``kind`` ("features" | "quarantine"); ``attempt`` 0 where null (rows written before attempts existed)."""
    only = None if file_ids is None else pc.field("file_id").isin(file_ids)
    wanted = [name for name in OUTCOME_COLUMNS if name in table.schema.names]  # features rows have no reason
    rows = table.read(wanted, filter=only)
    columns = {
        name: rows.column(name).cast(kind_type) if name in wanted else pa.nulls(rows.num_rows, kind_type)
        for name, kind_type in OUTCOME_COLUMNS.items()
    }
    columns["attempt"] = pc.fill_null(columns["attempt"], 0)
    result = pa.table(columns).append_column("kind", pa.array([kind] * rows.num_rows, pa.string()))
    return result.filter(pc.is_valid(result.column("file_id")))


def all_outcomes(home: Home, *, file_ids: pa.Array | None = None) -> pa.Table:
    """Every outcome row of the home (features and quarantine; only those of ``file_ids``, if given), superseded
    ones included."""
    return pa.concat_tables([
        outcome_rows(home.features, "features", file_ids=file_ids),
        outcome_rows(home.quarantine, "quarantine", file_ids=file_ids),
    ])


def with_attempt(rows: pa.Table) -> pa.Table:
    """``rows`` with an ``attempt`` on every row, as int64: rows older than retries have none (their first try, 0)."""
    attempt = pc.fill_null(rows.column("attempt").cast(pa.int64()), 0)
    return rows.set_column(rows.schema.get_field_index("attempt"), "attempt", attempt)


def newest_per_file(rows: pa.Table) -> pa.Table:
    """The row of the highest ``attempt`` of each ``file_id`` (features before quarantine on a tie, which a
    stream never writes)."""
    if rows.num_rows == 0:
        return rows
    rank = pc.if_else(pc.equal(rows.column("kind"), "features"), 1, 0)
    ordered = rows.append_column("_rank", rank).sort_by(
        [("file_id", "ascending"), ("attempt", "descending"), ("_rank", "descending")]
    )
    ids = ordered.column("file_id")
    first = pc.invert(pc.equal(ids.slice(1), ids.slice(0, len(ids) - 1)))
    keep = pa.concat_arrays([pa.array([True]), first.combine_chunks()]) if len(ids) > 1 else pa.array([True])
    return ordered.filter(keep).drop_columns(["_rank"])


def current_outcomes(home: Home, *, file_ids: pa.Array | None = None) -> pa.Table:
    """The current outcome row of each decided file version (only those of ``file_ids``, if given; see the module
    docstring)."""
    return newest_per_file(all_outcomes(home, file_ids=file_ids))


def _state(current: pa.Table) -> pa.Array:
    features = pc.equal(current.column("kind"), "features")
    retrying = pc.fill_null(current.column("retryable"), False)
    return pc.if_else(features, "ingested", pc.if_else(retrying, "retrying", "quarantined"))


def ledger_states(home: Home) -> pa.Table:
    """One row per file version: its newest ledger row with ``state``, and ``reason``, ``cause``, ``attempt`` and
    ``stored_path`` from its current outcome when that is for the newest attempt asked for."""
    ledger = with_attempt(home.ledger.read())
    newest = newest_per_file(ledger.append_column("kind", pa.array(["ledger"] * ledger.num_rows, pa.string())))
    newest = newest.drop_columns(["kind"])
    current = current_outcomes(home)
    current = current.append_column("state", _state(current)).select(
        ["file_id", "attempt", "state", "reason", "cause", "stored_path"]
    ).rename_columns(["file_id", "outcome_attempt", "state", "reason", "cause", "stored_path"])
    joined = newest.join(current, "file_id", join_type="left outer")
    # A retry asked for but not decided yet: pending again (its older verdict is what is being undone).
    asked_again = pc.greater(joined.column("attempt"), pc.fill_null(joined.column("outcome_attempt"), -1))
    state = pc.if_else(pc.or_kleene(pc.is_null(joined.column("state")), asked_again), "pending", joined.column("state"))
    joined = joined.set_column(joined.schema.get_field_index("state"), "state", state).drop_columns(["outcome_attempt"])
    return joined.sort_by("discovered_at")


def file_states(home: Home, *, state: FileState | None = None) -> list[dict[str, Any]]:
    """File versions (oldest discovery first) as dicts, optionally only those in ``state``. ``path`` is valid UTF-8
    (a name that is not UTF-8 spelled readably); ``raw_path``, its exact bytes when it is not the exact name, is
    given as hex digits (JSON has no bytes).

    >>> [(row["path"], row["reason"]) for row in file_states(home, state="quarantined")]
    [('file:/data/fruits/landing/Banana/broken.jpg', 'cannot decode image: ...')]
    """
    table = ledger_states(home)
    if state is not None:
        if state not in STATES:
            raise ValueError(f"state {state!r}: expected one of {STATES}")
        table = table.filter(pc.equal(table.column("state"), state))
    rows = table.to_pylist()
    for row in rows:
        if row.get("raw_path") is not None:
            row["raw_path"] = row["raw_path"].hex()
    return rows


def format_file(row: dict[str, Any]) -> str:
    """One line of ``fruits files`` for a row of :func:`file_states`: a newline, an escape sequence or a byte that is
    not UTF-8 in a name (or a reason) is shown escaped, never written to the terminal."""
    detail = f"  ({readable(row['reason'])})" if row.get("reason") else ""
    return f"{row['state']:<11} {row['discovered_at']}  {readable(row['path'])}{detail}"


def backlog(home: Home) -> dict[str, Any]:
    """How many discovered files wait for an outcome, and how long the oldest one has waited."""
    table = ledger_states(home)
    pending = table.filter(pc.equal(table.column("state"), "pending"))
    counts = {s: int(pc.sum(pc.equal(table.column("state"), s)).as_py() or 0) for s in STATES}
    oldest = pc.min(pending.column("discovered_at")).as_py() if pending.num_rows else None
    return {
        "discovered": table.num_rows,
        **counts,
        "oldest_pending_age_seconds": round((datetime.now(timezone.utc) - oldest).total_seconds(), 1) if oldest else None,
    }
