"""``fruits files``: each ledger row with its state (pending, ingested, quarantined), like Auto Loader's
``cloud_files_state``; and the backlog figures of ``fruits status``. Read with delta-rs and pyarrow: no JVM."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from fruits.config import Config
from fruits.ledger import ledger_rows
from fruits.names import readable
from fruits.uris import rust_uri

STATES = ("pending", "ingested", "quarantined")


def _outcomes(uri: str, state: str, columns: list[str]) -> pa.Table:
    """``file_id`` -> state (and ``columns``) of one outcome table; empty if it does not exist yet."""
    try:
        rows = DeltaTable(rust_uri(uri)).to_pyarrow_dataset().to_table(columns=["file_id", *columns])
    except TableNotFoundError:
        rows = pa.table({"file_id": pa.array([], pa.string()), **{c: pa.array([], pa.string()) for c in columns}})
    rows = rows.filter(pc.is_valid(rows.column("file_id")))
    return rows.append_column("state", pa.array([state] * rows.num_rows, pa.string()))


def ledger_states(config: Config) -> pa.Table:
    """Every ledger row with ``state``, and ``reason`` / ``stored_path`` from its outcome row when it has one."""
    ledger = ledger_rows(config.files_table)
    outcomes = pa.concat_tables(
        [
            _outcomes(config.features_table, "ingested", ["stored_path"]),
            _outcomes(config.quarantine_table, "quarantined", ["stored_path", "reason"]),
        ],
        promote_options="default",  # features rows have no reason: null
    )
    joined = ledger.join(outcomes, "file_id", join_type="left outer")
    state = pc.if_else(pc.is_null(joined.column("state")), "pending", joined.column("state"))
    return joined.set_column(joined.schema.get_field_index("state"), "state", state).sort_by("discovered_at")


def file_states(config: Config, state: str | None = None) -> list[dict[str, Any]]:
    """Ledger rows (oldest discovery first) as dicts, optionally only those in ``state``. ``path`` is valid UTF-8
    (a name that is not UTF-8 spelled readably); ``raw_path``, its exact bytes when it is not the exact name, is
    given as hex digits (JSON has no bytes)."""
    table = ledger_states(config)
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


def backlog(config: Config) -> dict[str, Any]:
    """How many discovered files wait for an outcome, and how long the oldest one has waited."""
    table = ledger_states(config)
    pending = table.filter(pc.equal(table.column("state"), "pending"))
    counts = {s: int(pc.sum(pc.equal(table.column("state"), s)).as_py() or 0) for s in STATES}
    oldest = pc.min(pending.column("discovered_at")).as_py() if pending.num_rows else None
    return {
        "discovered": table.num_rows,
        **counts,
        "oldest_pending_age_seconds": round((datetime.now(timezone.utc) - oldest).total_seconds(), 1) if oldest else None,
    }
