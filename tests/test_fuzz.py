"""Fuzzing with mutated real photos (tests/fuzzing.py, fixed seeds): the decoder returns the model's input or a
RejectedImage, nothing else; through the real stream, every mutated file lands exactly once in features ∪
quarantine, with the decoder's own verdict."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from conftest import SAMPLE, make_config
from fruits.model.images import RejectedImage, decode_image
from fuzzing import KINDS, mutants, outcome_of, reason_class
from fruits.home.home import Home

PHOTOS = sorted(SAMPLE.glob("*/*.jpg"))[::25]  # real photos of many classes


def test_decode_image_returns_an_image_or_a_rejection_for_1000_mutated_photos():
    seen: collections.Counter = collections.Counter()
    for kind, _, data in mutants(PHOTOS, 1000, seed=11):
        try:
            array = decode_image(data)
            assert array.shape == (224, 224, 3) and array.dtype == np.uint8
            seen[kind, "decoded"] += 1
        except RejectedImage as exc:
            seen[kind, reason_class(str(exc))] += 1
    print("\n".join(f"{n:4d} {kind}: {outcome}" for (kind, outcome), n in sorted(seen.items())))
    assert sum(seen.values()) == 1000 and {kind for kind, _ in seen} == set(KINDS)
    outcomes = {outcome for _, outcome in seen}
    # The fuzz reaches Pillow's non-OSError failures (a SyntaxError escaping decode_image would fail a whole
    # micro-batch, not one photo), and plenty of both verdicts.
    assert "cannot decode image: SyntaxError" in outcomes
    decoded = sum(n for (_, outcome), n in seen.items() if outcome == "decoded")
    assert 200 <= decoded <= 800, decoded


@pytest.mark.slow
def test_the_stream_puts_each_of_240_mutated_photos_exactly_once_in_features_or_quarantine(spark, weights, tmp_path):
    """... under random names the file system allows (tests/fuzzing.py random_name): not UTF-8, newlines, glob
    characters, 255 bytes; a file is known by its exact bytes, through the ledger's raw_path."""
    import os
    import random

    from fruits.home.names import local_bytes
    from fruits.streaming.ingest import run_stream
    from fuzzing import random_name

    landing = tmp_path / "landing"
    names = random.Random(240)
    expected: dict[bytes, str] = {}  # landed file (exact bytes) -> the decoder's verdict ("decoded" or its reason class)
    for index, (kind, extension, data) in enumerate(mutants(PHOTOS, 240, seed=2026)):
        folder = landing / f"fuzz-{kind.replace('+', '-and-')}"
        folder.mkdir(parents=True, exist_ok=True)
        name = random_name(names, extension)
        name = f"{index:04d}".encode() + (name[4:] if len(name) > 251 else name)  # unique, and still <= 255 bytes
        path = os.fsencode(folder) + b"/" + name
        with open(path, "wb") as handle:
            handle.write(data)
        expected[path] = "empty file (0 bytes)" if not data else outcome_of(decode_image, data)
    config = make_config(tmp_path)
    run_stream(spark, config, weights, available_now=True)  # returns: the stream did not fail

    exact = {row["file_id"]: local_bytes(row) for row in Home.from_config(config).ledger.read().to_pylist()}
    features = spark.read.format("delta").load(config.features_table).toPandas()
    quarantine = spark.read.format("delta").load(config.quarantine_table).toPandas()
    featurized = [exact[i] for i in features["file_id"]]
    rejected = [exact[i] for i in quarantine["file_id"]]
    assert len(featurized) == len(set(featurized)) and len(rejected) == len(set(rejected)), "a file was written twice"
    assert not set(featurized) & set(rejected), "a file is in both tables"
    assert sorted(featurized + rejected) == sorted(expected), "a file was lost"
    assert {len(v) for v in features["features"]} == {1280}
    verdicts = {path: "decoded" for path in featurized}
    verdicts.update({exact[i]: reason_class(r) for i, r in zip(quarantine["file_id"], quarantine["reason"])})
    assert verdicts == expected  # the stream's verdict on each file is the decoder's
    reasons = collections.Counter(verdicts.values())
    print(f"\n{len(expected)} files: {len(featurized)} featurized, {len(rejected)} quarantined")
    print("\n".join(f"{n:4d} {reason}" for reason, n in reasons.most_common()))
    assert len(featurized) >= 60 and len(rejected) >= 60


@pytest.mark.fast
def test_2000_random_names_are_recorded_exactly_listed_back_and_shown_on_one_line(tmp_path):
    """Files under random names the file system allows (tests/fuzzing.py random_name): the listing finds each one,
    the ledger records it under a valid UTF-8 path with its exact bytes, and every name helper gives a name that
    fits and a one-line display."""
    import os
    import random

    from fruits.home.ledger import record
    from fruits.home.tables import LEDGER, Table
    from fruits.home.names import fit_name, local_bytes, readable, temporary_name
    from fruits.streaming.discovery import list_local
    from fuzzing import random_name

    rng = random.Random(21)
    landing = os.fsencode(tmp_path / "landing")
    os.makedirs(landing)
    names = {random_name(rng, rng.choice(["jpg", "JPG", "png"])) for _ in range(2000)}
    for name in names:
        with open(landing + b"/" + name, "wb") as handle:
            handle.write(name)  # each its own size-ish content
    listed = list_local(os.fsdecode(landing), ["jpg", "png"])
    assert len(listed) == len(names)
    ledger = Table(str(tmp_path / "files"), LEDGER)
    record(ledger, listed, "backfill")
    rows = ledger.read().to_pylist()
    assert sorted(local_bytes(row) for row in rows) == sorted(landing + b"/" + n for n in names)
    assert len({row["file_id"] for row in rows}) == len(names)
    for row in rows:
        row["path"].encode("utf-8")  # valid UTF-8, always
        shown = readable(row["path"])
        assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown
        name = os.fsdecode(local_bytes(row)).rsplit("/", 1)[-1]
        for fitted in (fit_name(readable(name)), fit_name(row["path"].rsplit("/", 1)[-1], row["file_id"]), temporary_name(name)):
            assert 0 < len(fitted.encode("utf-8")) <= 255 and "/" not in fitted
