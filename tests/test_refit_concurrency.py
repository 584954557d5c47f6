"""Refits that run together, readers during a refit, refits over many small commits, and a periodic refit that
keeps failing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import NOTOP_WEIGHTS, make_config, sample_files
from fruits.home.locks import LockBusy, exclusive
from fruits.home.home import Home

FRUITS = str(Path(sys.executable).with_name("fruits"))


def fruits(*args: str, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "FRUITS_MASTER": "local[2]", "FRUITS_WEIGHTS": str(NOTOP_WEIGHTS), **env}
    return subprocess.run([FRUITS, *args], capture_output=True, text=True, timeout=timeout, env=environ)


def test_the_refit_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    config = make_config(tmp_path)
    with exclusive(config, "refit-pca") as path:
        assert path == tmp_path / "locks" / "refit-pca.lock"
        with pytest.raises(LockBusy, match=rf"another refit-pca is running on this home \(host .* pid {os.getpid()} "):
            with exclusive(config, "refit-pca"):
                pass
    with exclusive(config, "refit-pca"):  # released on exit
        pass
    # A holder killed with SIGKILL leaves no stale lock: the kernel releases flock with the process.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from conftest import make_config; from fruits.home.locks import exclusive\n"
         f"with exclusive(make_config({str(tmp_path)!r}), 'refit-pca'):\n    print('held', flush=True); time.sleep(60)"],
        cwd=Path(__file__).parent, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy, match=f"pid {holder.pid} "):
            with exclusive(config, "refit-pca"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    with exclusive(config, "refit-pca"):
        pass


@pytest.mark.slow
def test_a_second_refit_exits_while_identify_and_status_keep_answering(spark, weights, features_home):
    """One refit holds the home's lock (as `fruits refit-pca` does) and refits; a second `fruits refit-pca` exits 3 at
    once with a clear message; `identify` and `status` run in a loop meanwhile, without one failure."""
    from fruits.batch.refit_pca import refit_pca
    from fruits.home.pca_store import PcaModelStore
    from fruits.model.identify import identify
    from fruits.reports.status import collect_status

    config, rows, append = features_home
    assert refit_pca(spark, config, k=10).refitted.version == 1
    append(rows.iloc[250:])
    reader_config = make_config(Path(config.home), model={"runtime": "tensorflow"})  # no IR conversion needed here
    photo = sample_files("Banana")[-1:]

    holding, refitted, release = threading.Event(), threading.Event(), threading.Event()
    outcome, answers, failures = {}, [], []

    def refit() -> None:
        with exclusive(config, "refit-pca"):
            holding.set()
            try:
                outcome["v"] = refit_pca(spark, config, k=10)
            finally:
                refitted.set()
                release.wait(120)

    def read() -> None:
        while not refitted.is_set():
            try:
                answers.append(identify(photo, reader_config, weights)[0]["pca_version"])
                collect_status(Home.from_config(config))
            except Exception as exc:  # any failure of a reader during the refit
                failures.append(f"{type(exc).__name__}: {exc}")

    reader = threading.Thread(target=read)
    refitter = threading.Thread(target=refit)
    reader.start()
    refitter.start()
    try:
        # wait until the refit holds the lock (told by the thread: polling the lock could take it from the refit)
        assert holding.wait(120)
        second = fruits("refit-pca", "--home", config.home, "--k", "10", timeout=120)
    finally:
        refitted.wait(600)
        release.set()
        refitter.join(60)
        reader.join(120)
    assert second.returncode == 3, second.stderr[-2000:]
    assert "another refit-pca is running on this home" in second.stderr and "Traceback" not in second.stderr
    assert outcome["v"].refitted.version == 2
    assert [v.version for v in PcaModelStore(config.pca_models).versions()] == [1, 2]
    assert sorted(p.name for p in Path(config.pca_models).iterdir()) == ["v1", "v2"]
    print(f"\nidentify during the refit: {len(answers)} answers (PCA versions {sorted(set(answers))}), {len(failures)} failures")
    assert failures == [] and len(answers) >= 1 and set(answers) <= {1, 2}

    # The window a reader may hit: the refit has replaced tables/pca, its metadata is not written yet.
    metadata = Path(config.pca_models) / "v2" / "metadata.json"
    saved = metadata.read_bytes()
    metadata.unlink()
    try:
        assert identify(photo, reader_config, weights)[0]["pca_version"] == 1
    finally:
        metadata.write_bytes(saved)
    assert identify(photo, reader_config, weights)[0]["pca_version"] == 2


@pytest.mark.slow
def test_an_incremental_refit_after_30_small_commits_merges_on_the_executors(spark, features_home):
    """30 one-row commits, read as 30 partitions: the statistics are merged in a tree on the executors (30 -> 4 -> 1,
    two levels of shuffles), so the refit passes with spark.driver.maxResultSize=40m, which one 13 MB block per
    partition collected on the driver (393 MB) would exceed. The commits are made as the stream makes them
    (delta-rs appends from the driver). Each partition's block costs the same whatever its rows: more commits
    would only make the test slower."""
    import pyarrow as pa

    from fruits.batch.moments import Moments
    from fruits.batch.refit_pca import refit_pca
    from fruits.home.pca_store import PcaModelStore
    from fruits.streaming.outcomes import FEATURES_ARROW, append as commit

    config, rows, _ = features_home
    commits = 30
    assert refit_pca(spark, config, k=10).refitted.method == "full"
    since = Home.from_config(config).features.version()
    table = Home.from_config(config).features  # kept: the commits are made as the stream's sink makes them
    for index in range(commits):
        row = rows.iloc[[250 + index % (len(rows) - 250)]][FEATURES_ARROW.names]
        commit(table, pa.Table.from_pandas(row, schema=FEATURES_ARROW, preserve_index=False), micro_batch=index)
    assert Home.from_config(config).features.version() == since + commits
    files_as_partitions = {"spark.sql.files.openCostInBytes": "134217728", "spark.sql.files.maxPartitionBytes": "134217728"}
    for key, value in files_as_partitions.items():
        spark.conf.set(key, value)
    try:
        changes = (
            spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", since + 1)
            .load(config.features_table)
        )
        assert changes.rdd.getNumPartitions() >= commits
    finally:
        for key in files_as_partitions:
            spark.conf.unset(key)

    flags = [f"--conf={key}={value}" for key, value in files_as_partitions.items()]
    result = fruits(
        "refit-pca", "--home", config.home, "--k", "10", "--no-compact", "--conf=spark.driver.maxResultSize=40m",
        "--conf=spark.driver.memory=1500m", *flags,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"refit v2 (incremental): k=10 over {250 + commits} rows" in result.stderr and f"({commits} new)" in result.stderr
    fitted = PcaModelStore(config.pca_models).versions()[-1]
    table = spark.read.format("delta").load(config.features_table).toPandas()
    exact = Moments.of_rows(np.stack(table["features"].to_numpy()))
    assert fitted.rows == exact.n == 250 + commits
    assert np.abs(np.array(fitted.explained_variance) - exact.principal_components()[1][:10]).max() <= 1e-6


@pytest.mark.slow
def test_refit_every_exits_non_zero_after_the_configured_consecutive_failures(tmp_path):
    log = tmp_path / "tables" / "features" / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text("this is not a Delta log\n")  # every refit fails on it
    site = tmp_path / "site.toml"
    site.write_text("[pca]\nmax_consecutive_failures = 2\n")
    result = fruits("refit-pca", "--home", str(tmp_path), "--config", str(site), "--every", "0.2s", timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "fruits refit-pca: error: 2 refits failed in a row, the last with" in result.stderr
    assert result.stderr.count("refit failed (1 of 2 in a row)") == 1
