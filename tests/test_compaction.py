"""Compaction of the stream's tables (Delta OPTIMIZE) by refit-pca: fewer files, same rows, incremental refits intact."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import pytest

from conftest import assert_same_pca, make_config
from fruits.config import CompactionConfig
from fruits.home.home import Home

SMALL = CompactionConfig(enabled=True, min_extra_files=3, target_file_mb=128)


def append_in_slices(append, rows, start: int, slices: int, size: int = 5) -> int:
    """Append rows[start:] in ``slices`` commits of ``size`` rows, as micro-batches do; returns the next row index."""
    for index in range(slices):
        append(rows.iloc[start + index * size : start + (index + 1) * size])
    return start + slices * size


def content(spark, location: str, version: int | None = None) -> list[tuple]:
    """Every row of the Delta table at ``location``, as sorted tuples (arrays as tuples)."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in reader.load(location).collect())


def operations(spark, location: str) -> dict[int, str]:
    """Version -> operation (WRITE, OPTIMIZE, ...) of every commit of the table."""
    from delta.tables import DeltaTable

    return {r["version"]: r["operation"] for r in DeltaTable.forPath(spark, location).history().collect()}


@pytest.mark.slow
def test_compaction_merges_many_small_appends_into_one_file_with_the_same_rows(spark, features_home):
    from fruits.batch.compaction import compact_table
    from fruits.reports.status import collect_status, format_status

    config, rows, append = features_home
    end = append_in_slices(append, rows, 250, slices=6)
    before = collect_status(Home.from_config(config))["features"]
    assert before["rows"] == end and before["files"] >= 7  # 1 + 6 appends of small files
    version_before = Home.from_config(config).features.version()
    rows_before = content(spark, config.features_table)

    outcome = compact_table(spark, Home.from_config(config).features, SMALL)
    assert outcome["compacted"] and outcome["files_before"] == before["files"], outcome
    assert outcome["files_after"] == 1 and outcome["files_removed"] == before["files"]

    after = collect_status(Home.from_config(config))["features"]
    assert after["files"] == 1 and after["rows"] == end and after["version"] == version_before + 1
    assert after["mean_file_bytes"] > before["mean_file_bytes"]
    assert content(spark, config.features_table) == rows_before
    assert content(spark, config.features_table, version_before) == rows_before  # time travel still reads the old files
    assert operations(spark, config.features_table)[version_before + 1] == "OPTIMIZE"
    # The OPTIMIZE commit is no change for the change data feed (dataChange=false).
    changes = (
        spark.read.format("delta").option("readChangeFeed", "true")
        .option("startingVersion", version_before + 1).option("endingVersion", version_before + 1)
        .load(config.features_table)
    )
    assert changes.isEmpty()
    assert "files     1 (mean " in format_status(collect_status(Home.from_config(config)))

    # Nothing left to merge: below the threshold, skipped without a commit.
    again = compact_table(spark, Home.from_config(config).features, SMALL)
    assert not again["compacted"] and "0 extra files" in again["skipped"]
    assert Home.from_config(config).features.version() == version_before + 1


@pytest.mark.slow
def test_compaction_while_the_stream_appends_loses_no_row(spark, features_home):
    """OPTIMIZE and blind appends do not conflict: appends committed during the compaction are all kept. (Whether one
    lands inside OPTIMIZE's read-to-commit window depends on timing; on 2 cores it did: read version 8, committed as
    10 after an append's 9.)"""
    from fruits.batch.compaction import compact_table

    config, rows, append = features_home
    start = append_in_slices(append, rows, 250, slices=4)
    errors: list[BaseException] = []
    first_commit = threading.Event()

    def appender():
        try:
            for index in range(4):
                append(rows.iloc[start + 5 * index : start + 5 * (index + 1)])
                first_commit.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
            first_commit.set()

    thread = threading.Thread(target=appender)
    thread.start()
    first_commit.wait(120)
    outcome = compact_table(spark, Home.from_config(config).features, SMALL)
    thread.join(300)
    assert not errors and "error" not in outcome, (errors, outcome)
    assert outcome["compacted"]
    paths = [r["path"] for r in spark.read.format("delta").load(config.features_table).select("path").collect()]
    assert sorted(paths) == sorted(rows.iloc[: start + 20]["path"])  # every row once, none lost or doubled


@pytest.mark.slow
def test_incremental_refit_after_optimize_stays_incremental_and_equals_a_full_refit(spark, features_home, tmp_path):
    from fruits.batch.refit_pca import refit_pca

    _, rows, append = features_home
    config = make_config(tmp_path, compaction=dataclasses.asdict(SMALL))  # the same home, with a low compaction threshold
    end = append_in_slices(append, rows, 250, slices=3)
    first = refit_pca(spark, config, k=10).refitted
    assert first.method == "full" and first.rows == end
    assert first.compaction["features"]["compacted"] and first.compaction["features"]["files_after"] == 1
    assert operations(spark, config.features_table)[first.source_version] == "OPTIMIZE"  # compacted, then pinned

    end = append_in_slices(append, rows, end, slices=4)
    second = refit_pca(spark, config, k=10).refitted
    assert second.compaction["features"]["compacted"]
    history = operations(spark, config.features_table)
    assert "OPTIMIZE" in [history[v] for v in range(first.source_version + 1, second.source_version + 1)]
    # The OPTIMIZE commit inside the change-data-feed range is not taken for an update or a delete.
    assert second.method == "incremental" and second.fallback_reason is None, second.fallback_reason
    assert second.rows == end and second.new_rows == end - first.rows

    full_config = make_config(tmp_path, paths={"pca_models": str(tmp_path / "full-models"), "pca_table": str(tmp_path / "full-pca")})
    full = refit_pca(spark, full_config, k=10, incremental=False).refitted
    assert full.method == "full" and full.rows == end and full.source_version == second.source_version
    assert_same_pca(second, full)


@pytest.mark.slow
def test_refit_records_compaction_skipped_below_the_threshold_and_survives_a_failed_one(spark, features_home, caplog):
    from fruits.batch.refit_pca import refit_pca
    from fruits.batch.schedule import log_outcome

    config, _, _ = features_home  # default threshold (50 extra files); the features table holds 2 small files
    # A quarantine table whose log is corrupt: compacting it fails, the refit must not.
    log_folder = Path(config.quarantine_table) / "_delta_log"
    log_folder.mkdir(parents=True)
    (log_folder / "00000000000000000000.json").write_text("this is not a delta log\n")

    caplog.set_level(logging.INFO, logger="fruits")
    outcome = refit_pca(spark, config, k=5)
    fitted = outcome.refitted
    assert fitted is not None and fitted.rows == 250
    features = fitted.compaction["features"]
    assert not features["compacted"] and features["skipped"] == "1 extra files < min_extra_files 50", features
    assert features["files_before"] == 2
    quarantine = fitted.compaction["quarantine"]
    assert not quarantine["compacted"] and f"cannot read the Delta log of {config.quarantine_table}" in quarantine["error"]
    assert "compaction of" in caplog.text and "failed, the refit goes on without it" in caplog.text
    assert "OPTIMIZE" not in operations(spark, config.features_table).values()

    metadata = json.loads((Path(config.pca_models) / f"v{fitted.version}" / "metadata.json").read_text())
    assert metadata["compaction"] == fitted.compaction
    log_outcome(outcome)
    assert "compaction: features skipped (1 extra files < min_extra_files 50), quarantine failed (" in caplog.text


def test_compaction_can_be_disabled_and_is_skipped_on_s3_without_a_multi_cluster_log_store(tmp_path):
    from fruits.batch.compaction import compact_tables, multi_writer_unsafe

    disabled = compact_tables(None, Home.from_config(make_config(tmp_path, compaction={"enabled": False})))
    assert disabled == {name: {"compacted": False, "skipped": "compaction disabled"} for name in ("features", "quarantine", "files")}

    assert "single-driver log store" in multi_writer_unsafe("s3a://bucket/home/tables/features", {}.get)
    dynamo = {"spark.delta.logStore.s3a.impl": "io.delta.storage.S3DynamoDBLogStore"}
    assert multi_writer_unsafe("s3a://bucket/home/tables/features", dynamo.get) is None
    for location in ("/srv/home/tables/features", "file:/srv/t", "hdfs://nn/home/tables/features", "abfss://c@a.dfs.core.windows.net/t"):
        assert multi_writer_unsafe(location, {}.get) is None
