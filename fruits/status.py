"""``fruits status``: the home's tables and last refit, read with ``deltalake`` and pyarrow (no JVM, no Spark)."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from fruits.config import Config, join_uri


def rust_uri(uri: str) -> str:
    """A Hadoop URI as delta-rs / pyarrow spell it (``s3a://`` -> ``s3://``, ``file:/x`` -> ``/x``)."""
    uri = re.sub(r"^s3a://", "s3://", uri)
    return re.sub(r"^file:(//)?", "", uri) if uri.startswith("file:") else uri


def open_table(uri: str) -> DeltaTable | None:
    """The Delta table at ``uri``, or None if there is none yet."""
    try:
        return DeltaTable(rust_uri(uri))
    except TableNotFoundError:
        return None


def _table_summary(uri: str, label_counts: bool = False) -> dict[str, Any]:
    table = open_table(uri)
    if table is None:
        return {"location": uri, "exists": False}
    dataset = table.to_pyarrow_dataset()
    summary: dict[str, Any] = {"location": uri, "exists": True, "version": table.version(), "rows": dataset.count_rows()}
    if label_counts:
        labels = dataset.to_table(columns=["label"]).column("label").to_pylist()
        summary["labels"] = dict(sorted(Counter("(none)" if v is None else v for v in labels).items()))
    return summary


def last_refit(config: Config) -> dict[str, Any] | None:
    """The metadata of the newest complete PCA model version, if any."""
    fs, root = pafs.FileSystem.from_uri(rust_uri(config.pca_models))
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    versions = sorted(
        (int(info.base_name[1:]) for info in infos if info.type == pafs.FileType.Directory and re.fullmatch(r"v\d+", info.base_name)),
        reverse=True,
    )
    for version in versions:
        metadata = join_uri(root, f"v{version}/metadata.json")
        if fs.get_file_info(metadata).type == pafs.FileType.File:
            with fs.open_input_stream(metadata) as handle:
                return json.loads(handle.read().decode("utf-8"))
    return None


def collect_status(config: Config) -> dict[str, Any]:
    """Versions and row counts of the features, quarantine and pca tables, labels, and the last refit."""
    return {
        "home": config.home,
        "features": _table_summary(config.features_table, label_counts=True),
        "quarantine": _table_summary(config.quarantine_table),
        "pca": _table_summary(config.pca_table),
        "last_refit": last_refit(config),
    }


def format_status(report: dict[str, Any]) -> str:
    """The status report as a few human-readable lines."""
    lines = [f"home: {report['home']}"]
    for name in ("features", "quarantine", "pca"):
        table = report[name]
        lines.append(
            f"{name:<11} version {table['version']:>4}  rows {table['rows']:>7}" if table["exists"] else f"{name:<11} (none yet)"
        )
    labels = report["features"].get("labels") or {}
    if labels:
        lines.append(f"labels: {len(labels)} — " + ", ".join(f"{k} {v}" for k, v in list(labels.items())[:12]) + (" …" if len(labels) > 12 else ""))
    refit = report["last_refit"]
    if refit:
        lines.append(
            f"last refit: v{refit['version']} k={refit['k']} over {refit['rows']} rows of features version "
            f"{refit['source_version']}, explained variance {sum(refit['explained_variance']):.3f}, at {refit['fitted_at']}"
        )
    else:
        lines.append("last refit: none")
    return "\n".join(lines)
