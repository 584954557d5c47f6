"""``fruits status``: the home's tables and last refit, read with ``deltalake`` and pyarrow (no JVM, no Spark)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fruits.home.files import backlog
from fruits.home.home import Home
from fruits.home.names import readable
from fruits.home.pca_store import latest_record
from fruits.home.filesystem import read_json
from fruits.home.tables import Table
from fruits.home.uris import local_path


def _table_summary(handle: Table, label_counts: bool = False) -> dict[str, Any]:
    table = handle.open()
    if table is None:
        return {"location": handle.location, "exists": False}
    dataset = handle.dataset(table=table)
    summary: dict[str, Any] = {
        "location": handle.location, "exists": True, "version": table.version(), "rows": dataset.count_rows(),
        **data_files(handle.add_actions(table=table)),
    }
    if label_counts:
        labels = dataset.to_table(columns=["label"]).column("label").to_pylist()
        summary["labels"] = dict(sorted(Counter("(none)" if v is None else v for v in labels).items()))
    return summary


def data_files(actions: pa.Table) -> dict[str, Any]:
    """How many data files a snapshot holds (its add actions: :meth:`fruits.home.tables.Table.add_actions`) and their
    mean size (the stream adds small ones; a refit compacts them): ``{"files": n, "mean_file_bytes": m}``."""
    sizes = actions.column("size_bytes").to_pylist()
    return {"files": len(sizes), "mean_file_bytes": round(sum(sizes) / len(sizes)) if sizes else 0}


def _size(n: float) -> str:
    """Bytes as ``512 B``, ``4.2 KB``, ``130.0 MB`` or ``2.5 GB``."""
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            break
        n /= 1024
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def last_refit(home: Home) -> dict[str, Any] | None:
    """The metadata of the newest complete PCA model version, if any."""
    return latest_record(home.pca_store)


def duplicates(features: Table) -> dict[str, int]:
    """Identical bytes ingested under several paths: how many contents, and how many extra rows they make."""
    counts = Counter(features.read(["content_sha256"]).column(0).to_pylist())
    return {
        "contents": sum(1 for n in counts.values() if n > 1),
        "extra_rows": sum(n - 1 for n in counts.values() if n > 1),
    }


def overwritten_in_place(home: Home) -> dict[str, Any]:
    """Files overwritten in place after their ingestion (``after_ingest = "keep"``): the ledger rows of their new
    versions (featurized again only with ``[discovery] allow_overwrites``)."""
    paths = home.ledger.read(["path"], filter=pc.field("overwrites")).column("path").to_pylist()
    return {"overwritten": len(paths), "overwritten_paths": [readable(local_path(p) or p) for p in paths[:20]]}


def age_seconds(timestamp: str) -> float:
    return round((datetime.now(timezone.utc) - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds(), 1)


def collect_status(home: Home) -> dict[str, Any]:
    """Versions, row counts and data files of the features, quarantine and pca tables, labels, duplicates, files
    changed since ingest, the last refit and the stream's last micro-batch."""
    home = home.pinned()  # one features table for the whole report, even if a switch makes another model active
    active = home.models.load().active
    report = {
        "home": home.root,
        "model": None if active is None else {"number": active.number, "model_id": active.model_id,
                                              "since": active.active_since or active.since},
        "features": _table_summary(home.features, label_counts=True),
        "duplicates": duplicates(home.features),
        "landing_changes": overwritten_in_place(home),
        "backlog": backlog(home),
        "quarantine": _table_summary(home.quarantine),
        "pca": _table_summary(home.pca),
        "last_refit": last_refit(home),
        "stream": read_json(home.files, home.stream_progress),
    }
    if report["last_refit"]:
        report["last_refit"]["age_seconds"] = age_seconds(report["last_refit"]["fitted_at"])
    if report["stream"]:
        report["stream"]["age_seconds"] = age_seconds(report["stream"]["at"])
    return report


def format_status(report: dict[str, Any]) -> str:
    """The status report as a few human-readable lines."""
    lines = [f"home: {report['home']}"]
    model = report.get("model")
    lines.append(f"model {model['number']}: {model['model_id']} (active since {model['since']}; `fruits model`)"
                 if model else "model: none yet (the first `fruits stream` records it)")
    for name in ("features", "quarantine", "pca"):
        table = report[name]
        lines.append(
            f"{name:<11} version {table['version']:>4}  rows {table['rows']:>7}  files {table['files']:>5} "
            f"(mean {_size(table['mean_file_bytes'])})"
            if table["exists"]
            else f"{name:<11} (none yet)"
        )
    labels = report["features"].get("labels") or {}
    if labels:
        lines.append(f"labels: {len(labels)} — " + ", ".join(f"{readable(k)} {v}" for k, v in list(labels.items())[:12]) + (" …" if len(labels) > 12 else ""))
    files = report["backlog"]
    age = files["oldest_pending_age_seconds"]
    lines.append(
        f"files: {files['discovered']} discovered, {files['ingested']} ingested, {files['quarantined']} quarantined, "
        f"{files['pending']} pending" + (f" (oldest waiting {age:.0f} s)" if age is not None else "")
        + (f", {files['retrying']} to be tried again by the stream" if files["retrying"] else "")
    )
    dup = report["duplicates"]
    lines.append(f"duplicates: {dup['contents']} contents ingested more than once ({dup['extra_rows']} extra rows)")
    changes = report["landing_changes"]
    if changes["overwritten"]:
        lines.append(f"landing: {changes['overwritten']} ingested files overwritten in place since (new ledger rows)")
    refit = report["last_refit"]
    if refit:
        lines.append(
            f"last refit: v{refit['version']} ({refit.get('method', 'full')}) k={refit['k']} over {refit['rows']} rows "
            f"of features version {refit['source_version']}, explained variance {sum(refit['explained_variance']):.3f}, "
            f"{refit['age_seconds']:.0f} s ago; tables/pca in v{refit.get('projection_version') or refit['version']} coordinates"
        )
        if refit.get("compaction"):
            from fruits.batch.compaction import describe

            lines.append(f"compaction at the last refit: {describe(refit['compaction'])}")
    else:
        lines.append("last refit: none")
    stream = report.get("stream")
    if stream:
        lines.append(
            f"stream: batch {stream['batch']} read {stream['files']} files in {stream['seconds']:.2f} s "
            f"({stream['images_per_s']} images/s), {stream['files_since_start']} since its start, {stream['age_seconds']:.0f} s ago"
        )
    else:
        lines.append("stream: no progress recorded")
    return "\n".join(lines)
