"""Shared fixtures: one SparkSession per test run, the verified weights in ../shared, and real Fruits-360 images."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from fruits.model.accuracy import IMAGENET_CLASSES  # noqa: F401 (tests import it from here: the classes ImageNet knows)

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the repository (a folder or a symlink), or FRUITS_SHARED. The fast tier needs none of it.
SHARED = Path(os.environ.get("FRUITS_SHARED") or ROOT.parent / "shared")
# The small attributed subset of real Fruits-360 photos shipped with the demo: the fast tier's photos.
SHIPPED = ROOT / "examples" / "sample-images"
SAMPLE = SHARED / "data" / "fruits360-sample"
NOTOP_WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet_notop.weights.h5"
TOP_WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet.weights.h5"


def chromium_path() -> str | None:
    """The Chromium the browser tests drive: $FRUITS_CHROMIUM, else Debian's `chromium` (or chromium-browser,
    google-chrome) on PATH."""
    for candidate in (os.environ.get("FRUITS_CHROMIUM"), *map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))):
        if candidate:
            return candidate
    return None


def missing(message: str, required_by: str) -> None:
    """A tool some tests need is not on this machine: they are skipped, or fail when the ``required_by`` variable is
    set (CI sets it, so a missing tool can never pass unnoticed)."""
    if os.environ.get(required_by):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright launches this Chromium (Playwright's own browser download is not needed). Without one the
    browser tests are skipped, or fail when FRUITS_REQUIRE_BROWSER is set (CI)."""
    path = chromium_path()
    if path is None:
        missing(
            "no Chromium: `apt-get install chromium`, or set FRUITS_CHROMIUM to a Chromium/Chrome binary",
            required_by="FRUITS_REQUIRE_BROWSER",
        )
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
    return {**browser_type_launch_args, "executable_path": path, "headless": True, "args": args}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1280, "height": 1000}}


def pytest_collection_finish(session):
    """Every test needs ../shared except the fast tier's (``@pytest.mark.fast``: no Spark, no TensorFlow, no
    ../shared; `make test-fast`)."""
    needs_shared = [item for item in session.items if item.get_closest_marker("fast") is None]
    missing = [p for p in (SAMPLE, NOTOP_WEIGHTS, TOP_WEIGHTS) if not p.exists()]
    if needs_shared and missing:
        raise pytest.UsageError(
            f"{len(needs_shared)} selected tests need ../shared beside the repository (or FRUITS_SHARED); missing: "
            f"{[str(p) for p in missing]}. `make test-fast` runs the tests that need none of it."
        )


def pytest_sessionfinish(session, exitstatus):
    """A run of fast tests only must not have started a JVM or imported TensorFlow: the tier's promise."""
    items = getattr(session, "items", [])
    if not items or any(item.get_closest_marker("fast") is None for item in items):
        return
    import sys

    context = getattr(sys.modules.get("pyspark"), "SparkContext", None)
    heavy = [name for name in ("tensorflow", "openvino") if name in sys.modules]
    if (context is not None and context._active_spark_context is not None) or heavy:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"fast tier broke its promise: Spark context {'started' if context else 'not started'}, imported {heavy}",
            red=True,
        )
        session.exitstatus = 1


def shipped_photos(label: str, count: int | None = None) -> list[Path]:
    """Real Fruits-360 photos of one class shipped in examples/sample-images, in a stable order (fast tier)."""
    files = sorted((SHIPPED / label).glob("*.jpg"))
    assert count is None or len(files) >= count, f"examples/sample-images/{label} holds {len(files)} photos"
    return files[:count]


def sample_files(label: str, count: int | None = None, skip: int = 0) -> list[Path]:
    """Real Fruits-360 photos of one class of the shared sample, in a stable order."""
    files = sorted((SAMPLE / label).glob("*.jpg"))
    return files[skip : None if count is None else skip + count]


def place(files: list[Path], folder: Path, rename: str | None = None) -> list[Path]:
    """Copy ``files`` into ``folder`` atomically (hidden temporary name, then rename), as a user should land them."""
    folder.mkdir(parents=True, exist_ok=True)
    placed = []
    for index, source in enumerate(files):
        target = folder / (f"{rename}{index}{source.suffix}" if rename else source.name)
        temporary = folder / f".{target.name}.tmp"
        shutil.copyfile(source, temporary)
        temporary.replace(target)
        placed.append(target)
    return placed


def wait_for(predicate, timeout: float, poll: float = 0.05) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds (asked every ``poll`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def make_config(home: Path, **sections):
    """A Config for ``home`` with test-sized Spark settings on top of conf/fruits.toml."""
    from fruits.config import load_config

    overrides = {"paths": {"home": str(home)}, "spark": {"master": "local[2]"},
                 "model": {"weights": str(NOTOP_WEIGHTS), "head_weights": str(TOP_WEIGHTS)}}
    # Tests place whole files (renamed in) and run at once: a listed file is complete however young (the tests of
    # [discovery] quiet_seconds set it themselves).
    overrides["discovery"] = {"quiet_seconds": 0}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(overrides=overrides, environ={})


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The one SparkSession (local[2], Delta enabled) every test of the run shares."""
    from fruits.spark.session import build_spark

    config = make_config(tmp_path_factory.mktemp("session-home"))
    session = build_spark(config, "tests", "pca")  # the larger driver heap of refit-pca: tests run both jobs
    yield session
    session.stop()


@pytest.fixture(scope="session")
def weights():
    """The verified ImageNet weights (no top) from ../shared/models."""
    from fruits.model.weights import resolve_weights

    return resolve_weights(str(NOTOP_WEIGHTS))


ODD_LABEL = "Pépin 50% off ü"


def local_path(spark_path: str) -> str:
    """A local file path from the ``path`` column (``file:/a/b c.jpg``)."""
    assert spark_path.startswith("file:")
    return spark_path[len("file:") :]


@pytest.fixture(scope="session")
def ingested(spark, weights, tmp_path_factory):
    """A home whose landing folder got real photos plus bad and ignorable files, streamed once (available-now)."""
    from fruits.streaming.ingest import run_stream

    home = tmp_path_factory.mktemp("ingested-home")
    landing = home / "landing"
    expected: dict[str, str | None] = {}  # landed file -> expected label
    for label in IMAGENET_CLASSES:
        for path in place(sample_files(label), landing / label):
            expected[str(path)] = label
    for path in place(sample_files("Kiwi", 3), landing / ODD_LABEL):
        expected[str(path)] = ODD_LABEL
    for path in place(sample_files("Kiwi", 2, skip=3), landing / "orchard" / "Kiwi"):
        expected[str(path)] = "Kiwi"  # nested: the label is the immediate parent folder
    for path in place(sample_files("Mango", 1), landing):
        expected[str(path)] = None  # directly in the landing root: no label
    for path in place(sample_files("Fig", 1, skip=22), landing / "Fig", rename="UPPER CASE "):
        upper = path.with_suffix(".JPG")
        path.rename(upper)
        expected[str(upper)] = "Fig"

    # Bad input: quarantined, never a crash.
    good_jpeg = sample_files("Banana", 1)[0].read_bytes()
    corrupt = {landing / "Banana" / "truncated.jpg": good_jpeg[:1200], landing / "Lemon" / "noise.jpg": os.urandom(3000)}
    for path, data in corrupt.items():
        path.write_bytes(data)
    # Never read: hidden, Spark-private and temporary names, other extensions.
    ignored = [".hidden.jpg", "_spark_private.jpg", "upload.jpg.part", "download.crdownload", "~lock.jpg", "notes.txt"]
    for name in ignored:
        (landing / "Banana" / name).write_bytes(good_jpeg)

    config = make_config(home)
    files_read = run_stream(spark, config, weights, available_now=True)
    features = spark.read.format("delta").load(config.features_table).toPandas()
    quarantine = spark.read.format("delta").load(config.quarantine_table).toPandas()
    return {
        "config": config,
        "expected": expected,
        "corrupt": {str(p) for p in corrupt},
        "files_read": files_read,
        "features": features,
        "quarantine": quarantine,
    }


@pytest.fixture()
def features_home(spark, ingested, tmp_path):
    """A home whose features table (change data feed on) holds the first 250 real feature rows of `ingested`, and
    ``append(frame)`` to add rows of ``rows`` (all of `ingested`'s, sorted by path) in one commit (2 small files)."""
    from fruits.home.home import Home
    from fruits.home.tables import FEATURES_SCHEMA

    config = make_config(tmp_path)
    Home.from_config(config).features.ensure(spark)  # change data feed on
    rows = ingested["features"].sort_values("path").reset_index(drop=True)

    def append(frame):
        frame = frame[FEATURES_SCHEMA.fieldNames()].assign(features=frame["features"].map(lambda v: [float(x) for x in v]))
        spark.createDataFrame(frame, FEATURES_SCHEMA).write.format("delta").mode("append").save(config.features_table)

    append(rows.iloc[:250])
    return config, rows, append


def assert_same_pca(fitted, reference) -> None:
    """Two PCA versions (:class:`fruits.batch.refit_pca.PcaVersion`) have the same components up to sign (|cos| >= 0.9999
    per component) and the same explained variance (within 1e-6)."""
    import numpy as np
    from pyspark.ml.feature import PCAModel

    def unit_columns(matrix):
        return matrix / np.linalg.norm(matrix, axis=0)

    a, b = PCAModel.load(fitted.model_path).pc.toArray(), PCAModel.load(reference.model_path).pc.toArray()
    cosines = np.abs(np.sum(unit_columns(a) * unit_columns(b), axis=0))
    assert cosines.min() >= 0.9999, cosines
    assert np.abs(np.array(fitted.explained_variance) - np.array(reference.explained_variance)).max() <= 1e-6


# Classes of the home `identify_home` holds (all their sample photos but the last, which is held out).
IDENTIFY_CLASSES = ["Banana", "Lemon", "Strawberry", "Orange", "Kiwi", "Pineapple", "Apple Granny Smith", "Fig"]


@pytest.fixture(scope="session")
def identify_home(spark, weights, tmp_path_factory):
    """A home built by the real stream and refit: features of real photos of IDENTIFY_CLASSES under
    landing/<class>/ and PCA v1 over them; ``held_out`` maps each class to one of its photos not in the tables."""
    from fruits.batch.refit_pca import refit_pca
    from fruits.streaming.ingest import run_stream

    home = tmp_path_factory.mktemp("identify-home")
    held_out = {}
    for label in IDENTIFY_CLASSES:
        photos = sample_files(label)
        place(photos[:-1], home / "landing" / label)
        held_out[label] = photos[-1]
    config = make_config(home)
    run_stream(spark, config, weights, available_now=True)
    assert refit_pca(spark, config, k=20).refitted.version == 1
    return {"config": config, "held_out": held_out}


@contextlib.contextmanager
def serving(app):
    """``app`` under a real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
