"""The same service on a real Spark standalone cluster: a master and two 1-core workers as local processes.

The cluster comes from pyspark's own distribution (``bin/spark-class ...Master`` / ``...Worker``, see
tests/standalone.py), on 127.0.0.1 and free ports. Workers reach what they need as they would on other machines:

- Python and the project's code: the same interpreter path (``spark.pyspark.python``, set by ``fruits.spark.session``) with
  the project installed in it, as every node of a real cluster runs the same image or virtualenv;
- the weights: **not** from the driver's path. The workers run in a private mount namespace where ``../shared``
  (the weights and the source photos) is an empty tmpfs, so the executors can only use the copy the driver ships
  with ``SparkContext.addFile``;
- the images and tables: the shared home (here a local folder every process sees, as NFS or s3a:// would be).

``fruits stream --master spark://...`` (the command, as users run it) must give the same rows and features as local
mode (``local[2]``) over the same landing folder, and ``fruits refit-pca`` must then fit on the cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import NOTOP_WEIGHTS, SHARED, make_config, place, sample_files

pytestmark = pytest.mark.slow

FRUITS = str(Path(sys.executable).with_name("fruits"))
CLASSES = ["Banana", "Lemon", "Kiwi", "Fig", "Orange", "Pineapple", "Strawberry", "Avocado"]
PER_CLASS = 10
K = 5


def fruits(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    started = time.perf_counter()
    result = subprocess.run([FRUITS, *args], env=env, capture_output=True, text=True, timeout=timeout)
    print(f"fruits {args[0]}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    assert result.returncode == 0, f"fruits {' '.join(args)} failed:\n{result.stderr[-4000:]}"
    return result


def read_table(location: Path):
    from deltalake import DeltaTable

    return DeltaTable(str(location)).to_pandas()


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> dict:
    """One landing folder both runs read (same paths): 80 real photos of 8 classes and one truncated JPEG."""
    root = tmp_path_factory.mktemp("cluster-landing")
    landing = root / "landing"
    for label in CLASSES:
        place(sample_files(label, PER_CLASS), landing / label)
    (landing / "Banana" / "truncated.jpg").write_bytes(sample_files("Banana", 1)[0].read_bytes()[:1500])
    # Both homes take their landing folder from this file, so the `path` column is identical in both runs; the files
    # stay there after the first run (not archived) for the second.
    config = root / "shared-landing.toml"
    config.write_text(f'[paths]\nlanding = "{landing}"\n\n[discovery]\nafter_ingest = "keep"\n')
    return {"landing": landing, "config": config}


@pytest.fixture(scope="module")
def local_run(spark, weights, landing, tmp_path_factory) -> dict:
    """Local mode over the same landing folder: the stream `fruits stream --master local[2] --available-now` runs
    (:func:`fruits.streaming.ingest.run_stream`), on the test run's shared local[2] session, so no second JVM is started."""
    from fruits.streaming.ingest import run_stream

    assert spark.sparkContext.master == "local[2]"
    home = tmp_path_factory.mktemp("local-home")
    config = make_config(home, paths={"landing": str(landing["landing"])}, discovery={"after_ingest": "keep"})
    files = run_stream(spark, config, weights, available_now=True)
    return {"home": home, "files": files}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, local_run):  # local mode first: it does not compete with the cluster for CPU
    """Master + 2 workers (1 core, 2g each) that cannot see ../shared; stopped at the end even if a test failed."""
    from standalone import StandaloneCluster

    with StandaloneCluster(
        workers=2, cores=1, memory="2g", root=tmp_path_factory.mktemp("standalone"), hide=[str(SHARED)]
    ) as cluster:
        yield cluster
        started = cluster.process_tree()
    # Leaving the block stopped every process the cluster started and their children, also when a test failed.
    assert len(started) >= 3 and StandaloneCluster.alive(started) == []


@pytest.fixture(scope="module")
def cluster_run(cluster, landing, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("cluster-home")
    common = ["--home", str(home), "--config", str(landing["config"]), "--master", cluster.master_url]
    stream = fruits(["stream", *common, "--available-now", "--weights", str(NOTOP_WEIGHTS)], cluster.driver_env())
    refit = fruits(["refit-pca", *common, "--k", str(K)], cluster.driver_env())
    return {"home": home, "stream": stream.stderr, "refit": refit.stderr, "state": cluster.master_state()}


def test_cluster_has_two_one_core_workers_that_do_not_see_the_shared_folder(cluster):
    state = cluster.master_state()
    assert state["status"] == "ALIVE" and state["url"] == cluster.master_url
    assert state["aliveworkers"] == 2 and [w["cores"] for w in state["workers"]] == [1, 1]
    if not cluster.isolated:
        pytest.skip("no private mount namespaces here (unshare): workers see the driver's weights path")
    for pid in cluster.worker_pids():
        # /proc/PID/root is the filesystem as that process sees it: ../shared is an empty tmpfs for the workers. An
        # absolute symlink below it would resolve in *this* process's view, so look at the real (resolved) folder:
        # ../shared may be a symlink, and the cluster hides its target.
        assert os.listdir(f"/proc/{pid}/root{SHARED.resolve()}") == []
        assert not os.path.exists(f"/proc/{pid}/root{NOTOP_WEIGHTS.resolve()}")
    assert NOTOP_WEIGHTS.is_file()  # ...while the driver (this process's children) sees it


def test_cluster_stream_gives_the_same_rows_and_features_as_local_mode(local_run, cluster_run):
    local = read_table(local_run["home"] / "tables" / "features").sort_values("path").reset_index(drop=True)
    remote = read_table(cluster_run["home"] / "tables" / "features").sort_values("path").reset_index(drop=True)
    assert len(local) == len(CLASSES) * PER_CLASS
    assert list(remote["path"]) == list(local["path"])  # same landing folder, same paths
    assert list(remote["label"]) == list(local["label"])
    assert list(remote["content_sha256"]) == list(local["content_sha256"])
    assert set(remote["model_id"]) == set(local["model_id"]) and len(set(local["model_id"])) == 1
    a, b = np.stack(local["features"].to_numpy()), np.stack(remote["features"].to_numpy())
    assert a.shape == b.shape == (len(local), 1280)
    assert np.abs(a - b).max() <= 1e-4
    assert a.std(axis=0).max() > 0.1  # real features, not a constant

    quarantine = read_table(cluster_run["home"] / "tables" / "quarantine")
    assert [Path(p).name for p in quarantine["path"]] == ["truncated.jpg"] and "truncated" in quarantine["reason"][0]


def test_both_workers_featurized_with_the_model_files_shipped_by_add_file(cluster, cluster_run):
    from fruits.model.weights import resolve_weights
    from fruits.model.runtimes import make_featurizer

    # The files the stream's featurizer needs on executors: the weights (TensorFlow) or the converted IR (OpenVINO,
    # the default), already converted and cached in the cluster home by the stream.
    featurizer = make_featurizer(make_config(cluster_run["home"]), resolve_weights(str(NOTOP_WEIGHTS)))
    for worker in (1, 2):
        stream_executor = cluster.executor_dirs(worker)[0]  # the first application is the stream
        # Fetched from the driver's file server into the executor's folder (SparkFiles) ...
        for needed in map(Path, featurizer.files):
            assert (stream_executor / needed.name).is_file(), needed.name
            assert (stream_executor / needed.name).stat().st_size == needed.stat().st_size
        # ... and used by the executor's Python worker to build the model (fruits.model.featurizer.shared_model logs this).
        log = (stream_executor / "stderr").read_text(errors="replace")
        assert "fruits: worker pid" in log and f"built {featurizer.model_id}" in log, log[-3000:]
    names = [app["name"] for app in cluster_run["state"]["completedapps"]]
    assert sorted(names) == ["fruits-refit-pca", "fruits-stream"]


def test_refit_pca_on_the_cluster_matches_numpy(cluster_run):
    import json

    home = cluster_run["home"]
    features = read_table(home / "tables" / "features")
    pca = read_table(home / "tables" / "pca")
    metadata = json.loads((home / "models" / "pca" / "v1" / "metadata.json").read_text())
    assert "refit v1" in cluster_run["refit"]
    assert metadata["version"] == 1 and metadata["k"] == K and metadata["rows"] == len(features)
    assert sorted(pca["path"]) == sorted(features["path"]) and set(pca["pca_version"]) == {1}
    assert {len(v) for v in pca["pca"]} == {K}

    # Spark ML PCA: eigen-decomposition of the covariance; explained variance = eigenvalue / trace.
    x = np.stack(features["features"].to_numpy()).astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(np.cov(x, rowvar=False))[::-1]
    expected = eigenvalues[:K] / eigenvalues.sum()
    np.testing.assert_allclose(metadata["explained_variance"], expected, rtol=1e-3, atol=1e-6)
