"""What a stream's start-up does not pay for: the tables made with delta-rs (not Spark jobs), and Ivy's resolution
of the Delta jars at every session start (the jars an earlier resolution found are reused)."""

from __future__ import annotations

import pytest


@pytest.mark.fast
def test_tables_are_made_with_delta_rs_as_spark_made_them(tmp_path):
    import dataclasses

    import pyarrow as pa
    from deltalake import DeltaTable

    from fruits.streaming.outcomes import FEATURES_ARROW
    from fruits.home.tables import FEATURES, Table

    location = str(tmp_path / "features")
    assert Table(location, FEATURES).ensure()
    table = DeltaTable(location)
    assert pa.schema(table.schema().to_arrow()).equals(FEATURES_ARROW)  # the schema the stream's appends write
    assert table.metadata().configuration == {"delta.enableChangeDataFeed": "true"}
    assert table.metadata().description == "MobileNetV2 features of landed images"
    assert not Table(location, FEATURES).ensure() and DeltaTable(location).version() == 0

    # A table made by an older service (without the ledger's columns) gets them, nullable, in one commit.
    older = str(tmp_path / "older")
    Table(older, dataclasses.replace(FEATURES, schema=pa.schema(list(FEATURES.schema)[:8]))).ensure()
    assert not Table(older, FEATURES).ensure()
    fields = DeltaTable(older).schema().fields
    assert [f.name for f in fields] == FEATURES.schema.names and all(f.nullable for f in fields[8:])
    assert DeltaTable(older).version() == 1


@pytest.mark.fast
def test_jars_ivy_resolved_once_are_reused_while_they_are_all_there(tmp_path, monkeypatch):
    from fruits.spark.jars import remember_resolved, resolved_jars

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    jars = [tmp_path / "ivy" / "jars" / name for name in ("io.delta_delta-spark.jar", "io.delta_delta-storage.jar")]
    for jar in jars:
        jar.parent.mkdir(parents=True, exist_ok=True)
        jar.write_bytes(b"PK")
    packages = ["io.delta:delta-spark_4.2_2.13:4.4.0"]
    assert resolved_jars(packages) is None  # never resolved here: Ivy resolves
    remember_resolved(packages, ",".join(f"file://{jar}" for jar in jars))
    assert resolved_jars(packages) == [f"file://{jar}" for jar in jars]
    assert resolved_jars([*packages, "org.apache.hadoop:hadoop-aws:3.4.1"]) is None  # other coordinates: resolve
    jars[1].unlink()
    assert resolved_jars(packages) is None  # a jar gone from Ivy's cache: resolve again
    remember_resolved(packages, None)  # a session without jars remembers nothing
    assert resolved_jars(packages) is None
