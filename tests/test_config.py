"""Configuration precedence and parsing (no Spark needed)."""

from __future__ import annotations

import pytest

from fruits.config import ConfigError, join_uri, load_config, parse_duration

pytestmark = pytest.mark.fast  # no Spark, no TensorFlow, no ../shared (make test-fast)


def test_precedence_defaults_then_file_then_env_then_flags(tmp_path):
    defaults = load_config(environ={})
    assert defaults.pca.k == 20 and defaults.model.weights == "imagenet"

    override = tmp_path / "site.toml"
    override.write_text('[paths]\nhome = "/srv/a"\n[pca]\nk = 7\n[model]\nweights = "/w/file.h5"\n')
    from_file = load_config(override, environ={})
    assert from_file.home == "/srv/a" and from_file.pca.k == 7
    assert from_file.stream.trigger == defaults.stream.trigger  # untouched defaults survive

    from_env = load_config(override, environ={"FRUITS_HOME": "/srv/b", "FRUITS_WEIGHTS": "imagenet"})
    assert from_env.home == "/srv/b" and from_env.model.weights == "imagenet"

    from_flags = load_config(override, overrides={"paths": {"home": "/srv/c"}, "pca": {"k": None}}, environ={"FRUITS_HOME": "/srv/b"})
    assert from_flags.home == "/srv/c" and from_flags.pca.k == 7  # None flags do not override


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
    for there in (tmp_path, "/dev/null"):  # there, but not a file to read settings from
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config(there, environ={})


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


def test_unknown_keys_and_sections_name_the_file_and_what_is_known(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text("[pca]\nkk = 7\n")  # a typo must not be silently ignored
    with pytest.raises(ConfigError, match=r"site\.toml: unknown key \[pca\] kk \(known: k, variance, every"):
        load_config(site, environ={})
    site.write_text("[pcaa]\nk = 7\n")
    with pytest.raises(ConfigError, match=r"site\.toml: unknown section \[pcaa\]"):
        load_config(site, environ={})


@pytest.mark.parametrize(
    "text,message",
    [
        ('[discovery]\nafter_ingest = "move"\n', r"\[discovery\] after_ingest = 'move': expected one of archive, delete, keep"),
        ('[pca]\nk = "twenty"\n', r"\[pca\] k = 'twenty': expected an integer"),
        ("[pca]\nk = 0\n", r"\[pca\] k = 0: expected a number >= 1"),
        ('[stream]\ntrigger = "soon"\n', r"\[stream\] trigger = 'soon': expected a duration"),
        ('[discovery]\nwatch = "yes"\n', r"\[discovery\] watch = 'yes': expected true or false"),
        ("[stream]\nextensions = 3\n", r"\[stream\] extensions = 3: expected a list of strings"),
        ("[web]\nport = 80.5\n", r"\[web\] port = 80.5: expected an integer"),
        ("[paths]\nhome = 3\n", r"\[paths\] home = 3: expected a string"),
        ("[pca\nk = 3\n", r"not valid TOML"),
    ],
)
def test_bad_values_name_the_file_the_key_and_what_is_allowed(tmp_path, text, message):
    site = tmp_path / "site.toml"
    site.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(site, environ={})
    assert str(site) in str(error.value)


def test_environment_and_flags_are_checked_too():
    with pytest.raises(ConfigError, match=r"environment variable FRUITS_PRECISION: \[model\] precision = 'fp64': expected one of"):
        load_config(environ={"FRUITS_PRECISION": "fp64"})
    with pytest.raises(ConfigError, match=r"command-line flags: \[stream\] max_files_per_trigger = 0: expected a number >= 1"):
        load_config(overrides={"stream": {"max_files_per_trigger": 0}}, environ={})


def test_the_readme_names_every_environment_variable_the_config_reads():
    """The README's Configuration section is the user's list of FRUITS_* variables: one the config reads but the list
    leaves out is a setting nobody finds (a trial needed FRUITS_HEAD_WEIGHTS for `--precision auto` offline)."""
    from conftest import ROOT
    from fruits.config import ENV_OVERRIDES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Configuration"):]
    assert [name for name in ENV_OVERRIDES if f"`{name}`" not in section] == []


def test_values_are_typed_once_loaded(tmp_path):
    site = tmp_path / "site.toml"
    site.write_text('[stream]\ntrigger = "500ms"\n[pca]\nevery = "10m"\n[spark.conf]\n"spark.x" = 4\n')
    config = load_config(site, environ={})
    assert config.stream.trigger == 0.5 and config.pca.every == 600 and config.discovery.backfill_interval == 600
    assert load_config(environ={}).pca.every is None  # "" in the defaults: no periodic refit
    # Spark settings add up across layers: the file's key joins the defaults' keys, as a string.
    assert config.spark.conf["spark.x"] == "4" and config.spark.conf["spark.sql.session.timeZone"] == "UTC"
    assert isinstance(config.stream.extensions, tuple) and "jpg" in config.stream.extensions
    with pytest.raises(Exception):  # frozen: settings cannot change after load
        config.pca.k = 3  # type: ignore[misc]


def test_cli_choices_and_help_come_from_the_defaults_file():
    from fruits.cli import build_parser
    from fruits.config import allowed_values, default_value

    stream = build_parser()._subparsers._group_actions[0].choices["stream"]  # noqa: SLF001
    help_text = stream.format_help()
    assert f"default {default_value('stream', 'trigger')}" in help_text
    assert f"default {default_value('stream', 'max_files_per_trigger')}" in help_text
    precision = next(a for a in stream._actions if a.dest == "precision")  # noqa: SLF001
    assert tuple(precision.choices) == allowed_values("model", "precision")


def test_a_bad_config_file_stops_any_command_with_exit_code_2_and_the_reason(tmp_path, capsys):
    from fruits.cli import main

    site = tmp_path / "site.toml"
    site.write_text('[discovery]\nafter_ingest = "move"\n')
    assert main(["status", "--home", str(tmp_path), "--config", str(site)]) == 2
    error = capsys.readouterr().err
    assert "fruits status: error:" in error and str(site) in error and "expected one of archive, delete, keep" in error
