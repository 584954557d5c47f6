"""`fruits status`: duplicates (same bytes under two names) and files overwritten in place after ingestion."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import make_config, place, sample_files
from fruits.home.home import Home

pytestmark = pytest.mark.slow


def test_status_reports_duplicates_and_files_overwritten_in_place(spark, weights, tmp_path):
    from fruits.reports.status import collect_status, format_status
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path, discovery={"after_ingest": "keep"})  # overwrites in place need files kept
    banana = place(sample_files("Banana", 1), tmp_path / "landing" / "Banana")[0]
    lemon = place(sample_files("Lemon", 1), tmp_path / "landing" / "Lemon")[0]
    shutil.copyfile(banana, tmp_path / "landing" / "Banana" / "same bytes, other name.jpg")
    run_stream(spark, config, weights, available_now=True)

    # Overwrite a file in place with other bytes, and a later mtime: a new ledger row, quarantined as an overwrite
    # (allow_overwrites is off), not featurized again.
    lemon.write_bytes(sample_files("Lemon", 2)[1].read_bytes())
    os.utime(lemon, (lemon.stat().st_atime, lemon.stat().st_mtime + 5))
    assert run_stream(spark, config, weights, available_now=True) == 1
    assert run_stream(spark, config, weights, available_now=True) == 0

    report = collect_status(Home.from_config(config))
    assert report["features"]["rows"] == 3
    # Data files of the current snapshot, as Spark's Delta counts them; the quarantine table is still empty.
    from delta.tables import DeltaTable

    detail = DeltaTable.forPath(spark, config.features_table).detail().head()
    assert report["features"]["files"] == detail["numFiles"] >= 1
    assert report["features"]["mean_file_bytes"] == round(detail["sizeInBytes"] / detail["numFiles"])
    assert report["quarantine"]["rows"] == 1 and report["quarantine"]["files"] == 1
    assert report["backlog"] == {
        "discovered": 4, "ingested": 3, "quarantined": 1, "retrying": 0, "pending": 0, "oldest_pending_age_seconds": None
    }
    assert report["duplicates"] == {"contents": 1, "extra_rows": 1}
    assert report["landing_changes"]["overwritten"] == 1 and report["landing_changes"]["overwritten_paths"] == [str(lemon)]
    assert report["stream"]["files"] == 1 and report["stream"]["batch"] == 0  # the last run's only chunk
    text = format_status(report)
    assert f"files {report['features']['files']:>5} (mean " in text
    assert "files: 4 discovered, 3 ingested, 1 quarantined, 0 pending" in text
    assert "duplicates: 1 contents ingested more than once (1 extra rows)" in text
    assert "1 ingested files overwritten in place since (new ledger rows)" in text

    # With allow_overwrites, the next version overwritten in place is featurized again.
    allowing = make_config(tmp_path, discovery={"after_ingest": "keep", "allow_overwrites": True})
    lemon.write_bytes(sample_files("Lemon", 3)[2].read_bytes())
    os.utime(lemon, (lemon.stat().st_atime, lemon.stat().st_mtime + 10))
    assert run_stream(spark, allowing, weights, available_now=True) == 1
    rows = spark.read.format("delta").load(config.features_table).where(f"path = 'file:{lemon}'").collect()
    assert len(rows) == 2 and len({r["content_sha256"] for r in rows}) == 2
