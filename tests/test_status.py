"""`fruits status`: duplicates (same bytes under two names) and files overwritten in place after ingestion."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import make_config, place, sample_files

pytestmark = pytest.mark.slow


def test_status_reports_duplicates_and_files_overwritten_in_place(spark, weights, tmp_path):
    from fruits.status import collect_status, format_status
    from streaming.ingest import run_stream

    config = make_config(tmp_path)
    banana = place(sample_files("Banana", 1), tmp_path / "landing" / "Banana")[0]
    lemon = place(sample_files("Lemon", 1), tmp_path / "landing" / "Lemon")[0]
    shutil.copyfile(banana, tmp_path / "landing" / "Banana" / "same bytes, other name.jpg")
    run_stream(spark, config, weights, available_now=True)

    # Overwrite a file in place with other bytes, and a later mtime: the stream does not read the path again.
    lemon.write_bytes(sample_files("Lemon", 2)[1].read_bytes())
    os.utime(lemon, (lemon.stat().st_atime, lemon.stat().st_mtime + 5))
    assert run_stream(spark, config, weights, available_now=True) == 0

    report = collect_status(config)
    assert report["features"]["rows"] == 3
    # Data files of the current snapshot, as Spark's Delta counts them; the quarantine table is still empty.
    from delta.tables import DeltaTable

    detail = DeltaTable.forPath(spark, config.features_table).detail().head()
    assert report["features"]["files"] == detail["numFiles"] >= 1
    assert report["features"]["mean_file_bytes"] == round(detail["sizeInBytes"] / detail["numFiles"])
    assert report["quarantine"]["files"] == 0 and report["quarantine"]["mean_file_bytes"] == 0
    assert report["duplicates"] == {"contents": 1, "extra_rows": 1}
    assert report["landing_changes"]["overwritten"] == 1 and report["landing_changes"]["overwritten_paths"] == [str(lemon)]
    assert report["stream"]["files"] == 3 and report["stream"]["batch"] == 0  # the last micro-batch that read files
    text = format_status(report)
    assert f"files {report['features']['files']:>5} (mean " in text and "files     0 (mean 0 B)" in text
    assert "duplicates: 1 contents ingested more than once (1 extra rows)" in text
    assert "1 ingested files overwritten in place since (not re-read)" in text
