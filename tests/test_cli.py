"""The `fruits` console script, run as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOTOP_WEIGHTS, place, sample_files

FRUITS = str(Path(sys.executable).with_name("fruits"))


def run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([FRUITS, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_offline_imagenet_weights_fail_with_one_clear_error_naming_the_option(tmp_path):
    result = run("stream", "--home", str(tmp_path), "--available-now", env={"KERAS_HOME": str(tmp_path / "keras"), "FRUITS_WEIGHTS": ""})
    assert result.returncode == 2
    assert "--weights FILE" in result.stderr and "FRUITS_WEIGHTS" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "tables").exists(), "Spark must not start when the weights are unavailable"


def test_missing_weights_file_is_a_clear_error(tmp_path):
    result = run("stream", "--home", str(tmp_path), "--weights", str(tmp_path / "nope.h5"))
    assert result.returncode == 2 and "no such file" in result.stderr


@pytest.mark.fast
@pytest.mark.parametrize("command,driver_memory", [("stream", "1500m"), ("refit-pca", "4g")])
def test_conf_flags_land_on_top_of_the_command_settings_of_conf_fruits_toml(command, driver_memory, monkeypatch):
    from fruits.cli import COMMAND_SECTIONS, build_parser, config_from_args
    from fruits.config import ENV_OVERRIDES, load_config
    from fruits.spark.session import spark_settings

    for variable in ENV_OVERRIDES:
        monkeypatch.delenv(variable, raising=False)
    section = COMMAND_SECTIONS[command]
    defaults = spark_settings(load_config(environ={}), section)
    assert defaults["spark.driver.memory"] == driver_memory  # the command's own [X.spark_conf] over [spark.conf]
    assert defaults["spark.sql.shuffle.partitions"] == load_config(environ={}).spark.conf["spark.sql.shuffle.partitions"]
    args = build_parser().parse_args(
        [command, "--conf", "spark.sql.shuffle.partitions=3", "--conf", " spark.custom.setting = a=b ", "--conf",
         "spark.empty=", "--conf", "spark.driver.memory=8g"]
    )
    conf = spark_settings(config_from_args(args), section)
    assert conf == {**defaults, "spark.sql.shuffle.partitions": "3", "spark.custom.setting": "a=b", "spark.empty": "",
                    "spark.driver.memory": "8g"}
    assert spark_settings(config_from_args(build_parser().parse_args([command])), section) == defaults


@pytest.mark.fast
def test_files_on_this_machines_disk_are_listed_on_the_driver_and_elsewhere_by_a_job(tmp_path):
    from fruits.config import load_config
    from fruits.spark.session import LOCAL_LISTING, spark_settings

    (key, value), = LOCAL_LISTING.items()
    local = load_config(environ={"FRUITS_HOME": str(tmp_path)}, overrides={"spark": {"master": "local[2]"}})
    assert spark_settings(local)[key] == value
    cluster = load_config(environ={"FRUITS_HOME": str(tmp_path)}, overrides={"spark": {"master": "spark://h:7077"}})
    on_s3 = load_config(environ={"FRUITS_HOME": str(tmp_path)},
                        overrides={"spark": {"master": "local[2]"}, "paths": {"landing": "s3a://bucket/landing"}})
    assert key not in spark_settings(cluster) and key not in spark_settings(on_s3)
    chosen = load_config(environ={"FRUITS_HOME": str(tmp_path)}, overrides={"spark": {"conf": {key: "64"}}})
    assert spark_settings(chosen)[key] == "64"  # [spark.conf] still decides


@pytest.mark.fast
@pytest.mark.parametrize("setting", ["spark.sql.shuffle.partitions", "=4", " =4"])
def test_a_conf_flag_without_key_and_equals_sign_is_rejected(setting, capsys):
    from fruits.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["refit-pca", "--conf", setting])
    assert exit_info.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.fast
def test_no_compact_turns_compaction_off_for_one_refit(monkeypatch):
    from fruits.cli import build_parser, config_from_args

    monkeypatch.delenv("FRUITS_HOME", raising=False)
    assert config_from_args(build_parser().parse_args(["refit-pca"])).compaction.enabled is True
    assert config_from_args(build_parser().parse_args(["refit-pca", "--no-compact"])).compaction.enabled is False


@pytest.mark.slow
def test_stream_refit_and_status_from_the_command_line(tmp_path):
    home = tmp_path / "home"
    place(sample_files("Banana", 4), home / "landing" / "Banana")
    place(sample_files("Lemon", 4), home / "landing" / "Lemon")
    env = {"FRUITS_HOME": str(home), "FRUITS_WEIGHTS": str(NOTOP_WEIGHTS), "FRUITS_MASTER": "local[2]"}

    stream = run("stream", "--available-now", "--max-files-per-trigger", "5", env=env)
    assert stream.returncode == 0, stream.stderr[-3000:]
    assert "batch 0: 5 files" in stream.stderr and "batch 1: 3 files" in stream.stderr  # one progress line per batch

    refit = run("refit-pca", "--k", "4", env=env)
    assert refit.returncode == 0, refit.stderr[-3000:]
    assert "refit v1 (full): k=4 over 8 rows" in refit.stderr

    status = run("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["features"]["rows"] == 8 and report["features"]["labels"] == {"Banana": 4, "Lemon": 4}
    assert report["quarantine"]["rows"] == 0 and report["pca"]["rows"] == 8
    assert report["last_refit"]["version"] == 1 and report["last_refit"]["k"] == 4


@pytest.mark.fast
def test_a_switch_to_the_active_model_is_refused_before_spark_starts(tmp_path, capsys):
    """`fruits model switch` that would change nothing (the flags name the active model) or that names a third model
    while a switch is under way is refused (exit 2) at once: no JVM is started for a refusal."""
    import h5py
    from pyspark import SparkContext

    from fruits.cli import main
    from fruits.config import load_config
    from fruits.home.home import Home
    from fruits.home.models import Registry
    from fruits.model.active import first_model, model_id_for, new_record, target_model, with_model

    weights = tmp_path / "tiny.weights.h5"
    with h5py.File(weights, "w") as handle:
        handle.create_group("layers").create_group("conv1")
    config = load_config(overrides={"paths": {"home": str(tmp_path / "home")}, "model": {"weights": str(weights)}},
                         environ={})
    home = Home.from_config(config)
    active = new_record(first_model(config), number=1, state="active", cpu="test")
    pending = new_record(first_model(with_model(config, precision="int8")), number=2, state="switching", cpu="test")
    common = ["model", "switch", "--home", str(tmp_path / "home"), "--weights", str(weights)]

    running = SparkContext._active_spark_context  # the suite's shared session, when slow tests ran before this one
    home.models.save(Registry((active,)))
    assert main([*common, "--precision", "fp32"]) == 2
    assert "already this home's active model" in capsys.readouterr().err
    home.models.save(Registry((active, pending)))
    assert main([*common, "--precision", "bf16"]) == 2
    assert "under way" in capsys.readouterr().err
    assert SparkContext._active_spark_context is running  # none started (the fast tier has none at all)
    # Run again without its flags (FRUITS_WEIGHTS exported, as the README sets it up), the stopped switch resumes.
    resumed = target_model(home, asked={"weights": str(weights)})
    assert model_id_for(resumed.config, resumed.weights) == pending.model_id
