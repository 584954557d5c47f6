"""The bookkeeping that needs no Spark: PCA statistics and their merge, and the outcome rows the sink appends."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from fruits.batch.moments import Moments
from fruits.home.verdicts import Cause
from fruits.streaming.outcomes import (
    FEATURES_ARROW, QUARANTINE_ARROW, Places, Verdict, epoch_ms, featurized_rows, quarantine_rows, split_featurized,
)

pytestmark = pytest.mark.fast  # no Spark, no TensorFlow, no ../shared (make test-fast)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """Rank-deficient rows like real features (non-negative, a few directions carry most of the variance)."""
    generator = np.random.default_rng(7)
    basis = generator.normal(size=(12, 64))
    return np.clip(generator.normal(size=(900, 12)) @ basis * 4.0 + 1.0, 0, None)


def test_merged_statistics_equal_the_statistics_of_all_rows(rows):
    blocks = [rows[:1], rows[1:300], rows[300:301], rows[301:]]  # uneven blocks, some of one row
    merged = Moments.empty(rows.shape[1])
    for block in blocks:
        merged = merged.merge(Moments.of_rows(block))
    whole = Moments.of_rows(rows)
    assert merged.n == whole.n == len(rows)
    assert np.allclose(merged.mean, whole.mean) and np.allclose(merged.scatter, whole.scatter, rtol=1e-9, atol=1e-6)
    restored = Moments.from_bytes(merged.to_bytes())
    assert restored.n == merged.n and np.array_equal(restored.scatter, merged.scatter)


def test_principal_components_are_those_of_the_centred_rows(rows):
    components, ratios = Moments.of_rows(rows).principal_components()
    _, singular, vt = np.linalg.svd(rows - rows.mean(axis=0), full_matrices=False)
    for index in range(5):  # the same directions, up to sign
        assert abs(components[:, index] @ vt[index]) >= 0.9999
    expected = singular**2 / (singular**2).sum()
    assert np.allclose(ratios[:5], expected[:5], atol=1e-9)
    assert np.all(np.diff(ratios) <= 1e-12) and ratios.sum() == pytest.approx(1.0)


def ledger_row(index: int) -> dict:
    discovered = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc) + timedelta(seconds=index)
    return {
        "file_id": f"id{index}", "path": f"file:/home/landing/Banana/{index}.jpg", "label": "Banana",
        "size_bytes": 1000 + index, "modified_at": discovered - timedelta(days=30), "discovered_at": discovered,
    }


def test_a_featurized_group_splits_into_features_and_quarantine_rows_by_error():
    ledger = [ledger_row(i) for i in range(3)]
    errors = [None, "cannot decode image: image file is truncated", None]
    columns = {name: [row.get(name) for row in ledger] for name in ("file_id", "path", "label", "size_bytes")}
    now = datetime.now(timezone.utc)
    group = pa.table({
        **columns,
        "content_sha256": ["a" * 64, "b" * 64, "c" * 64],
        "modified_at": [row["modified_at"] for row in ledger],
        "ingested_at": [now] * 3,
        "features": [[0.5] * 1280, None, [0.25] * 1280],
        "model_id": ["m/openvino-fp32"] * 3,
        "discovered_at": [row["discovered_at"] for row in ledger],
        "stored_path": ["file:/home/archive/2026-12-03/Banana/0.jpg", None, None],
        "attempt": [0, 0, 1],
        "error": errors,
        "cause": [None, "rejected", None],
        "retryable": [False] * 3,
    })
    features, quarantine = split_featurized(group)
    assert features.schema == FEATURES_ARROW and quarantine.schema == QUARANTINE_ARROW
    assert features.column("file_id").to_pylist() == ["id0", "id2"]
    assert quarantine.column("file_id").to_pylist() == ["id1"]
    assert quarantine.column("reason").to_pylist() == [errors[1]]
    assert quarantine.column("cause").to_pylist() == ["rejected"]
    assert features.column("attempt").to_pylist() == [0, 1]
    assert features.column("stored_path").to_pylist()[0].endswith("archive/2026-12-03/Banana/0.jpg")


def test_what_the_job_read_is_paired_with_its_ledger_rows_by_path_and_version():
    """The featurizing job returns what it read; the driver gives each ledger row its outcome: the features of the
    version it recorded, a "changed" error for a version that is no longer there, nothing for a file not read."""
    ledger = [ledger_row(i) for i in range(3)]
    older = {**ledger_row(0), "file_id": "id0-old", "size_bytes": 999}  # an earlier version of file 0, same path
    read = pa.table({
        "path": [ledger[0]["path"], ledger[1]["path"]],  # file 2 was not read (gone)
        "length": [ledger[0]["size_bytes"], ledger[1]["size_bytes"]],
        "mtime_ms": [epoch_ms(ledger[0]["modified_at"]), epoch_ms(ledger[1]["modified_at"]) + 1],  # 1 was touched
        "content_sha256": ["a" * 64, "b" * 64],
        "result": pa.array(  # as the UDF sends them: each row's float32 as one binary value
            [{"features": np.full(1280, 0.5, "<f4").tobytes(), "error": None},
             {"features": np.full(1280, 0.25, "<f4").tobytes(), "error": None}],
            pa.struct([("features", pa.binary()), ("error", pa.string())]),
        ),
    })
    places = {
        row["file_id"]: Places(f"file:/home/archive/{row['file_id']}.jpg", f"file:/home/quarantine/{row['file_id']}.jpg")
        for row in [*ledger, older]
    }
    group, unread = featurized_rows([*ledger, older], read, places, "m/openvino-fp32")
    assert [row["file_id"] for row in unread] == ["id2"]
    features, quarantine = split_featurized(group)
    assert features.column("file_id").to_pylist() == ["id0"]
    assert features.column("content_sha256").to_pylist() == ["a" * 64]
    assert features.column("stored_path").to_pylist() == ["file:/home/archive/id0.jpg"]
    assert features.column("features").to_pylist()[0][:2] == [0.5, 0.5]
    reasons = dict(zip(quarantine.column("file_id").to_pylist(), quarantine.column("reason").to_pylist()))
    assert set(reasons) == {"id1", "id0-old"}
    assert reasons["id1"].startswith("changed after it was discovered (now 1001 bytes, modified 2026-11-03 12:00:01.001)")
    assert reasons["id0-old"].startswith("changed after it was discovered (now 1000 bytes")
    # a changed file's bytes are its newer version: it is not kept as this version's original
    assert set(quarantine.column("cause").to_pylist()) == {"changed"}
    assert quarantine.column("stored_path").to_pylist() == [None, None]


def test_the_udfs_binary_features_become_float_lists_and_nulls_stay_null():
    from fruits.model.udf import features_list

    vectors = [np.arange(1280, dtype="<f4") * k for k in (1, 2, 3)]
    result = pa.array(
        [{"features": vectors[0].tobytes(), "error": None}, {"features": None, "error": "not an image"},
         {"features": vectors[1].tobytes(), "error": None}, {"features": vectors[2].tobytes(), "error": None}],
        pa.struct([("features", pa.binary()), ("error", pa.string())]),
    )
    got = features_list(result)
    assert got.type == pa.list_(pa.float32()) and got.null_count == 1 and got[1].as_py() is None
    assert np.array_equal(np.array(got[3].as_py(), "<f4"), vectors[2])
    sliced = features_list(pa.chunked_array([result.slice(2), result.slice(0, 2)]))  # chunks, offsets not at 0
    assert [None if v is None else v[1] for v in sliced.to_pylist()] == [2.0, 3.0, 0.0 + 1.0, None]


def test_verdicts_from_ledger_rows_alone_become_quarantine_rows_without_a_content_hash():
    ledger = [ledger_row(i) for i in range(2)]
    ledger[1]["modified_at"] = ledger[1]["modified_at"].replace(tzinfo=None)  # as PySpark's collect gives it
    verdicts = [
        Verdict(ledger[0], "file disappeared before it was read", Cause.MISSING, retryable=True),
        Verdict(ledger[1], "file is 99 bytes, above the limit of 9 bytes", Cause.TOO_LARGE),
    ]
    places = {"id0": Places(None, "file:/home/quarantine/0.jpg"), "id1": Places(None, "file:/home/quarantine/1.jpg")}
    rows = quarantine_rows(verdicts, places, "m/openvino-fp32")
    assert rows.schema == QUARANTINE_ARROW and rows.num_rows == 2
    assert rows.column("content_sha256").null_count == 2
    assert rows.column("reason").to_pylist() == [verdict.reason for verdict in verdicts]
    # a missing file has no original to keep; a quarantined one is kept in the quarantine folder, never deleted
    assert rows.column("stored_path").to_pylist() == [None, "file:/home/quarantine/1.jpg"]
    assert rows.column("cause").to_pylist() == ["missing", "too_large"]
    assert rows.column("retryable").to_pylist() == [True, False]
    assert {t.tzinfo is not None for t in rows.column("modified_at").to_pylist()} == {True}
    assert rows.column("discovered_at").to_pylist()[0] == ledger[0]["discovered_at"]


@pytest.mark.fast
def test_a_kept_table_is_loaded_again_every_n_commits_and_loses_no_commit_of_another_writer(tmp_path):
    from deltalake import DeltaTable

    from fruits.home.ledger import FileVersion, record
    from fruits.home.tables import LEDGER, Table

    location = str(tmp_path / "files")
    Table(location, LEDGER).ensure()
    kept = Table(location, LEDGER, reload_every=3)
    loaded = []
    for index in range(7):
        record(kept, [FileVersion(f"file:/l/kept-{index}.jpg", 10 + index, 1_700_000_000_000, "x")], "watch")
        loaded.append(kept.kept())  # kept: no object's id is reused
        record(Table(location, LEDGER), [FileVersion(f"file:/l/other-{index}.jpg", 10 + index, 1_700_000_000_000, "x")], "drop")
    # a new table object after the 3rd and the 6th commit written through it, the same one in between
    assert [next(n for n, t in enumerate(loaded) if t is table) for table in loaded] == [0, 0, 2, 2, 2, 5, 5]
    assert DeltaTable(location).version() == 14  # 14 appends on top of the creation, none lost or overwritten
    paths = sorted(Table(location, LEDGER).read(["path"]).column("path").to_pylist())
    assert paths == sorted([f"file:/l/kept-{i}.jpg" for i in range(7)] + [f"file:/l/other-{i}.jpg" for i in range(7)])


@pytest.mark.fast
def test_a_table_handle_makes_a_missing_table_at_its_first_append_only(tmp_path):
    from deltalake import DeltaTable

    from fruits.home.ledger import FileVersion, record
    from fruits.home.tables import LEDGER, Table

    location = tmp_path / "tables" / "files"
    ledger = Table(str(location), LEDGER)
    assert not ledger.exists() and ledger.read(["path"]).num_rows == 0 and ledger.version() is None
    assert not location.exists()  # nothing made before it is used, not by a read either
    loaded = []
    for index in range(2):
        record(ledger, [FileVersion(f"file:/l/{index}.jpg", 10, 1_700_000_000_000, "x")], "drop")
        loaded.append(ledger.kept())
    assert loaded[0] is loaded[1]  # made and loaded once, at the first append
    assert [entry["operation"] for entry in reversed(DeltaTable(str(location)).history())] == ["CREATE TABLE", "WRITE", "WRITE"]
    assert sorted(ledger.read(["path"]).column("path").to_pylist()) == ["file:/l/0.jpg", "file:/l/1.jpg"]
