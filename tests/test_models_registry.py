"""The home's model registry (fruits/home/models.py) and where a home reaches it, without Spark."""

from __future__ import annotations

import json

import pytest

from conftest import make_config

pytestmark = pytest.mark.fast


def _record(number, state, **fields):
    from fruits.home.models import ModelRecord

    return ModelRecord(**{"number": number, "model_id": f"m/openvino-fp32-{number}", "weights": "imagenet",
                          "weights_id": "w", "runtime": "openvino", "precision": "fp32", "views": "single",
                          "table": f"/t-{number}", "state": state, "since": "2026-12-07T00:00:00+00:00", **fields})


def test_the_registry_is_replaced_whole_and_flips_one_model_active(tmp_path):
    from fruits.home.filesystem import Files
    from fruits.home.models import ModelRegistry, Registry, model_table

    registry = ModelRegistry(str(tmp_path / "models" / "registry.json"), Files())
    assert registry.load() == Registry() and registry.load().active is None  # a home before its first stream
    registry.save(Registry((_record(1, "active"),)).with_model(_record(2, "switching", left_out=1)))
    loaded = registry.load()
    assert (loaded.active.number, loaded.switching.number, loaded.next_number()) == (1, 2, 3)
    flipped = loaded.flipped(2)
    assert [(m.number, m.state) for m in flipped.models] == [(1, "retired"), (2, "active")]
    assert flipped.number(1).retired_at and flipped.number(2).active_since and flipped.number(2).left_out == 1
    registry.save(flipped)
    assert registry.load() == flipped and not list((tmp_path / "models").glob(".*"))  # no temporary file left
    assert registry.left_out(2) == {}
    registry.save_left_out(2, {"f": "deleted after ingestion: /l/x.jpg"})  # beside the registry, not in it
    assert registry.left_out(2) == {"f": "deleted after ingestion: /l/x.jpg"} and "x.jpg" not in registry.uri
    assert "x.jpg" not in (tmp_path / "models" / "registry.json").read_text()
    with pytest.raises(ValueError):
        registry.save(Registry((_record(1, "active"), _record(2, "active"))))
    assert registry.load() == flipped  # a refused save changes nothing
    document = json.loads((tmp_path / "models" / "registry.json").read_text())
    document["models"][0]["added_by_a_newer_version"] = 1  # unknown fields of a newer writer are ignored
    (tmp_path / "models" / "registry.json").write_text(json.dumps(document))
    assert registry.load().number(1).state == "retired"
    assert model_table("/h/tables/features", 1) == "/h/tables/features"
    assert model_table("s3a://b/h/tables/features/", 3) == "s3a://b/h/tables/features-m3"


def test_the_features_table_is_the_active_models_and_an_hdfs_home_reaches_its_files_through_spark(tmp_path):
    from fruits.home.filesystem import HadoopFiles, UnsupportedLocation
    from fruits.home.home import Home
    from fruits.home.models import Registry, model_table

    home = Home.from_config(make_config(tmp_path))
    assert home.features_table == home.config.features_table and not home.needs_spark  # no model yet: model 1's
    home.models.save(Registry((_record(1, "retired"), _record(2, "active"))))
    m2, m3 = (model_table(home.config.features_table, n) for n in (2, 3))  # the home's own, whatever was recorded
    assert home.features_table == m2 and home.features.location == m2
    pinned = home.pinned()
    home.models.save(Registry((_record(1, "retired"), _record(2, "retired"), _record(3, "active"))))
    assert (home.features_table, pinned.features_table) == (m3, m2)  # a pinned home keeps its table

    hdfs = Home.from_config(make_config(tmp_path, paths={"home": "hdfs://namenode/fruits"}))
    assert hdfs.needs_spark
    with pytest.raises(UnsupportedLocation):
        hdfs.models.load()  # without Spark nothing reaches hdfs://
    session = object()  # what HadoopFiles keeps until its first call
    on_spark = hdfs.with_spark(session)
    assert not on_spark.needs_spark and isinstance(on_spark.files.on("hdfs://namenode/fruits/x"), HadoopFiles)
    assert on_spark.with_spark(session) is on_spark and on_spark == hdfs  # the session is no part of its identity


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-an-object", "record-missing-fields"])
def test_a_damaged_model_registry_is_one_clear_error_naming_the_file(damage, tmp_path, capsys):
    """A registry cut short (a disk that filled up, a hand edit) or not one: every command that reads it says which file
    is damaged, as an error of the family (exit 1), not a traceback."""
    from fruits.cli import main

    registry = tmp_path / "models" / "registry.json"
    registry.parent.mkdir(parents=True)
    whole = json.dumps({"models": [{"number": 1, "model_id": "m/openvino-fp32", "weights": "imagenet",
                                    "weights_id": "m", "runtime": "openvino", "precision": "fp32", "views": "single",
                                    "table": str(tmp_path / "tables" / "features"), "state": "active",
                                    "since": "2026-12-07T00:00:00+00:00"}]})
    registry.write_text({"truncated": whole[: len(whole) // 2], "garbage": "\x00\x13 not json",
                         "not-an-object": "[]", "record-missing-fields": '{"models": [{"number": 1}]}'}[damage])
    for command in (["model"], ["status"]):
        assert main([*command, "--home", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert str(registry) in err and "Traceback" not in err, err



def test_a_copied_home_reads_and_writes_its_own_model_tables_not_the_originals(tmp_path):
    """A home copied or restored elsewhere (a backup, a staging clone, a bucket moved) keeps its registry: its model
    tables are the copy's, found from its own ``[paths] features_table``, never those of the home it was copied from
    (a stream of the copy would append to the original's table)."""
    import shutil

    from fruits.batch.model_switch import prune_models
    from fruits.home.home import Home
    from fruits.home.models import Registry, model_table
    from fruits.reports.models import models_report

    original = Home.from_config(make_config(tmp_path / "original"))
    table = lambda number: model_table(original.config.features_table, number)  # noqa: E731
    original.models.save(Registry((_record(1, "retired", table=table(1)), _record(2, "active", table=table(2)))))
    shutil.copytree(tmp_path / "original", tmp_path / "copy")

    copy = Home.from_config(make_config(tmp_path / "copy"))
    mine = copy.config.features_table
    assert copy.features_table == model_table(mine, 2) and copy.features.location == model_table(mine, 2)
    assert [m.table for m in copy.models.load().models] == [mine, model_table(mine, 2)]
    assert [m["table"] for m in models_report(copy)["models"]] == [mine, model_table(mine, 2)]
    (tmp_path / "original" / "tables" / "features").mkdir(parents=True)
    assert [m.table for m in prune_models(copy, dry_run=True)] == [mine]
