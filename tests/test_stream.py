"""End-to-end: real images land, the real stream featurizes them with real TensorFlow into real Delta tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import IMAGENET_CLASSES, ODD_LABEL, TOP_WEIGHTS, local_path, make_config, place, sample_files

pytestmark = pytest.mark.slow

def test_every_good_image_gives_exactly_one_row_of_1280_floats(ingested):
    features = ingested["features"]
    paths = [local_path(p) for p in features["path"]]
    assert len(paths) == len(set(paths)), "a file was ingested twice"
    assert set(paths) == set(ingested["expected"])
    assert ingested["files_read"] == len(ingested["expected"]) + len(ingested["corrupt"])
    lengths = {len(v) for v in features["features"]}
    assert lengths == {1280}
    stacked = np.stack(features["features"].to_numpy())
    assert np.isfinite(stacked).all() and (stacked >= 0).all()  # ReLU6 backbone + average pooling
    assert stacked.std(axis=0).max() > 0.1, "features do not vary across images"


def test_labels_come_from_the_parent_folder_even_with_spaces_percent_and_accents(ingested):
    features = ingested["features"]
    got = {local_path(p): label for p, label in zip(features["path"], features["label"])}
    assert got == ingested["expected"]
    assert (features["label"] == ODD_LABEL).sum() == 3


def test_row_metadata_is_filled_in(ingested):
    import hashlib

    features = ingested["features"]
    row = features.iloc[0]
    data = Path(local_path(row["stored_path"])).read_bytes()  # archived after ingestion (after_ingest = "archive")
    assert local_path(row["stored_path"]).startswith(ingested["config"].archive + "/") and not Path(local_path(row["path"])).exists()
    assert row["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert row["size_bytes"] == len(data)
    assert row["modified_at"] <= row["ingested_at"]
    assert features["model_id"].nunique() == 1
    # weights id, then the runtime and precision that made the features (the default: OpenVINO fp32)
    assert features["model_id"].iloc[0] == "mobilenet_v2_1.0_224/file/sha256:0c307d1bb5e7222e/openvino-fp32"


def test_corrupt_files_are_quarantined_with_a_reason(ingested):
    quarantine = ingested["quarantine"]
    assert {local_path(p) for p in quarantine["path"]} == ingested["corrupt"]
    reasons = dict(zip((Path(local_path(p)).name for p in quarantine["path"]), quarantine["reason"]))
    assert "truncated" in reasons["truncated.jpg"]
    assert reasons["noise.jpg"] == "not a recognised image format"
    assert set(quarantine["label"]) == {"Banana", "Lemon"}
    assert (quarantine["size_bytes"] > 0).all()


def test_features_equal_keras_full_model_penultimate_layer(ingested):
    """The stored vector is the full Keras MobileNetV2's layers[-2] output for the same decoded image."""
    import tensorflow as tf

    from fruits.model.images import decode_image

    features = ingested["features"].sort_values("path").iloc[::20]
    images = np.stack([decode_image(Path(local_path(p)).read_bytes()) for p in features["stored_path"]])
    full = tf.keras.applications.MobileNetV2(weights=None, include_top=True, input_shape=(224, 224, 3))
    full.load_weights(str(TOP_WEIGHTS))
    penultimate = tf.keras.Model(full.inputs, full.layers[-2].output)
    reference = penultimate.predict(tf.keras.applications.mobilenet_v2.preprocess_input(images.astype("float32")), verbose=0)
    stored = np.stack(features["features"].to_numpy())
    assert len(stored) >= 10
    assert np.abs(stored - reference).max() <= 1e-4


def test_stored_features_classify_imagenet_fruits_with_the_imagenet_head(ingested):
    """Apply the with-top file's Dense(1000) head to the stored features: the fruit's ImageNet class is in the top 5."""
    import tensorflow as tf

    full = tf.keras.applications.MobileNetV2(weights=None, include_top=True, input_shape=(224, 224, 3))
    full.load_weights(str(TOP_WEIGHTS))
    kernel, bias = full.layers[-1].get_weights()
    features = ingested["features"]
    hit_rates = {}
    for label, imagenet_class in IMAGENET_CLASSES.items():
        rows = np.stack(features.loc[features["label"] == label, "features"].to_numpy())
        logits = rows @ kernel + bias
        top5 = np.argsort(-logits, axis=1)[:, :5]
        hit_rates[label] = float((top5 == imagenet_class).any(axis=1).mean())
    mean = float(np.mean(list(hit_rates.values())))
    assert mean >= 0.9, hit_rates


def test_restart_on_the_same_checkpoint_ingests_only_new_files(spark, weights, tmp_path):
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path, stream={"max_files_per_trigger": 3})
    first = place(sample_files("Kiwi", 5), tmp_path / "landing" / "Kiwi")
    assert run_stream(spark, config, weights, available_now=True) == 5
    second = place(sample_files("Mango", 4), tmp_path / "landing" / "Mango")
    assert run_stream(spark, config, weights, available_now=True) == 4
    assert run_stream(spark, config, weights, available_now=True) == 0

    rows = spark.read.format("delta").load(config.features_table).select("path", "label").collect()
    paths = [local_path(r["path"]) for r in rows]
    assert sorted(paths) == sorted(str(p) for p in first + second)
    # max_files_per_trigger=3: the 9 files took several micro-batches, each one Delta commit per table.
    history = spark.sql(f"DESCRIBE HISTORY delta.`{config.features_table}`").collect()
    assert len([h for h in history if h["operation"] == "WRITE"]) == 4


def test_a_local_chunk_is_read_by_its_python_workers_as_binary_file_reads_it(spark, weights, tmp_path):
    """On a local home the featurizing job's Python workers open the files themselves (``featurize_paths``): they
    return what ``binaryFile`` returns for the same files (size, mtime, hash, features); a file deleted after the
    driver's look is absent (the sink says "missing"), and one that grew past ``max_bytes`` after its ledger row is
    not read (no hash) and pairs as changed."""
    import hashlib
    from datetime import datetime, timezone

    from fruits.model.runtimes import make_featurizer
    from fruits.model.udf import featurize_files, featurize_paths, read_files
    from fruits.streaming.outcomes import Places, featurized_rows, split_featurized

    config = make_config(tmp_path)
    featurizer = make_featurizer(config, weights)
    photos = place(sample_files("Kiwi", 5), tmp_path / "landing" / "Kiwi")
    ledger = []
    for index, photo in enumerate(photos):  # the ledger rows, recorded before the changes below
        found = photo.stat()
        ms = found.st_mtime_ns // 1_000_000
        modified = datetime.fromtimestamp(ms // 1000, timezone.utc).replace(microsecond=ms % 1000 * 1000)
        ledger.append({"file_id": f"id{index}", "path": f"file:{photo}", "label": "Kiwi", "size_bytes": found.st_size,
                       "modified_at": modified, "discovered_at": datetime.now(timezone.utc), "attempt": 0})
    max_bytes = max(row["size_bytes"] for row in ledger)
    grown, gone = photos[3], photos[4]
    with open(grown, "r+b") as handle:
        handle.truncate(3 << 30)  # sparse: grew past max_bytes (and past the 2 GiB binaryFile can hold)
    gone.unlink()
    paths = [row["path"] for row in ledger]
    there = lambda path: os.path.exists(local_path(path))  # noqa: E731

    local = featurize_paths(spark, paths, featurizer, max_bytes=max_bytes, max_pixels=config.model.max_pixels,
                            partitions=2, still_there=there).toArrow()
    jvm = featurize_files(read_files(spark, paths[:3], still_there=there), featurizer, config.model.max_pixels, 2)
    by_path = {row["path"]: row for row in local.to_pylist()}
    assert sorted(by_path) == sorted(paths[:4])  # the deleted one is absent
    for expected in jvm.toArrow().to_pylist():
        got = by_path[expected["path"]]
        assert [got[k] for k in ("length", "mtime_ms", "content_sha256")] == [
            expected[k] for k in ("length", "mtime_ms", "content_sha256")]
        assert got["content_sha256"] == hashlib.sha256(Path(local_path(got["path"])).read_bytes()).hexdigest()
        mine, theirs = (np.frombuffer(r["result"]["features"], "<f4") for r in (got, expected))
        assert mine.shape == (1280,) and np.abs(mine - theirs).max() <= 1e-4
    too_big = by_path[paths[3]]
    assert too_big["length"] == 3 << 30 and too_big["content_sha256"] is None and too_big["result"]["features"] is None

    places = {row["file_id"]: Places(None, None) for row in ledger}
    group, unread = featurized_rows(ledger, local, places, featurizer.model_id)
    assert [row["file_id"] for row in unread] == ["id4"]
    features, quarantine = split_featurized(group)
    assert sorted(features.column("file_id").to_pylist()) == ["id0", "id1", "id2"]
    assert quarantine.column("file_id").to_pylist() == ["id3"] and quarantine.column("cause").to_pylist() == ["changed"]
    assert f"now {3 << 30} bytes" in quarantine.column("reason").to_pylist()[0]


def test_model_is_built_once_per_python_worker(spark, weights):
    """Many tasks and Arrow batches on two worker processes build two models, not one per batch."""
    import pandas as pd

    from fruits.model.keras import KerasFeaturizer

    featurizer = KerasFeaturizer(weights)

    def probe(batches):
        from fruits.model.featurizer import shared_model

        for batch in batches:
            model = shared_model(featurizer)
            yield pd.DataFrame({"pid": [os.getpid()] * len(batch), "model": [id(model)] * len(batch)})

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "5")
    try:
        seen = spark.range(0, 400, 1, 16).mapInPandas(probe, "pid long, model long").distinct().collect()
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
    pids = {r["pid"] for r in seen}
    assert len(seen) == len(pids), "a worker process built its model more than once"
    assert 1 <= len(pids) <= 2  # local[2] with worker reuse: at most two Python workers for 16 tasks, 80 batches
