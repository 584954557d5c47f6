"""Poison files: a file that makes the featurizing job itself fail (a Python worker that dies on it; on a remote home,
a file Spark's JVM cannot read) is found, quarantined with the reason, and the rest of its micro-batch is ingested;
the stream does not fail and does not replay the same failure forever."""

from __future__ import annotations

import time

import pytest
from deltalake import DeltaTable

from conftest import make_config, place, sample_files
from faults import CrashingFeaturizer, crash_png

pytestmark = pytest.mark.slow


def test_a_worker_crash_and_a_file_over_2_gib_are_quarantined_and_the_rest_ingested(spark, weights, tmp_path):
    from fruits.model.runtimes import make_featurizer
    from fruits.streaming.ingest import run_stream

    # A byte cap above 2 GiB, so that the big file reaches the reader instead of being quarantined from its ledger
    # size before any read. On this local home that is the Python worker (fruits.model.udf.read_local), which holds
    # more than the 2 GiB of Spark's binaryFile: the file is read, and it is no image.
    config = make_config(tmp_path, model={"max_bytes": 3 << 30}, stream={"max_files_per_trigger": 20})
    featurizer = CrashingFeaturizer(make_featurizer(config, weights))
    landing = tmp_path / "landing"
    good = place(sample_files("Banana", 9), landing / "Banana") + place(sample_files("Lemon", 9), landing / "Lemon")
    crashing = landing / "Lemon" / "crashes-the-worker.png"
    crashing.write_bytes(crash_png())  # a valid PNG all the same: only the worker's crash stops it
    huge = landing / "Banana" / "over-2-GiB.jpg"
    with open(huge, "wb") as handle:
        handle.truncate((2 << 30) + 4096)  # sparse: no disk space used

    started = time.perf_counter()
    assert run_stream(spark, config, weights, available_now=True, featurizer=featurizer) == len(good) + 2
    print(f"poison batch recovery: {time.perf_counter() - started:.1f} s for {len(good) + 2} files, 2 poison")

    features = DeltaTable(config.features_table).to_pandas(columns=["path"])
    quarantine = DeltaTable(config.quarantine_table).to_pandas(columns=["path", "reason"])
    assert sorted(features["path"]) == sorted(f"file:{p}" for p in good)
    reasons = dict(zip(quarantine["path"], quarantine["reason"]))
    assert sorted(reasons) == sorted([f"file:{crashing}", f"file:{huge}"])
    assert reasons[f"file:{crashing}"].startswith("featurizing this file failed 2 times, alone:")
    assert "worker" in reasons[f"file:{crashing}"].lower(), reasons
    assert reasons[f"file:{huge}"] == "not a recognised image format", reasons
    assert run_stream(spark, config, weights, available_now=True, featurizer=featurizer) == 0  # nothing is replayed
