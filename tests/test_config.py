"""Configuration precedence and parsing (no Spark needed)."""

from __future__ import annotations

import pytest

from fruits.config import ConfigError, join_uri, load_config, parse_duration


def test_precedence_defaults_then_file_then_env_then_flags(tmp_path):
    defaults = load_config(environ={})
    assert defaults.section("pca")["k"] == 20 and defaults.section("model")["weights"] == "imagenet"

    override = tmp_path / "site.toml"
    override.write_text('[paths]\nhome = "/srv/a"\n[pca]\nk = 7\n[model]\nweights = "/w/file.h5"\n')
    from_file = load_config(override, environ={})
    assert from_file.home == "/srv/a" and from_file.section("pca")["k"] == 7
    assert from_file.section("stream")["trigger"] == defaults.section("stream")["trigger"]  # untouched defaults survive

    from_env = load_config(override, environ={"FRUITS_HOME": "/srv/b", "FRUITS_WEIGHTS": "imagenet"})
    assert from_env.home == "/srv/b" and from_env.section("model")["weights"] == "imagenet"

    from_flags = load_config(override, {"paths": {"home": "/srv/c"}, "pca": {"k": None}}, environ={"FRUITS_HOME": "/srv/b"})
    assert from_flags.home == "/srv/c" and from_flags.section("pca")["k"] == 7  # None flags do not override


def test_locations_derive_from_home_and_can_be_overridden(tmp_path):
    config = load_config(overrides={"paths": {"home": "s3a://bucket/fruits", "pca_table": "/elsewhere/pca"}}, environ={})
    assert config.landing == "s3a://bucket/fruits/landing"
    assert config.features_table == "s3a://bucket/fruits/tables/features"
    assert config.quarantine_table == "s3a://bucket/fruits/tables/quarantine"
    assert config.pca_table == "/elsewhere/pca"
    assert config.checkpoint("ingest") == "s3a://bucket/fruits/checkpoints/ingest"
    assert config.pca_models == "s3a://bucket/fruits/models/pca"
    relative = load_config(overrides={"paths": {"home": "rel/home"}}, environ={})
    assert relative.home.startswith("/") and relative.home.endswith("rel/home")


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize("text,seconds", [("2s", 2), ("500ms", 0.5), ("10m", 600), ("1h", 3600), ("3", 3), ("1.5s", 1.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage():
    with pytest.raises(ConfigError):
        parse_duration("soon")


def test_join_uri_keeps_absolute_and_uri_children():
    assert join_uri("/h", "a/b") == "/h/a/b"
    assert join_uri("hdfs://nn/h/", "x") == "hdfs://nn/h/x"
    assert join_uri("/h", "file:/abs") == "file:/abs"
    assert join_uri("/h", "s3a://b/k") == "s3a://b/k"
