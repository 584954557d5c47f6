"""Configuration: one TOML file of defaults (conf/fruits.toml), then --config, then FRUITS_* env vars, then flags.

Every setting the jobs read comes from a :class:`Config`; nothing else reads the TOML files or FRUITS_* variables.
(Spark's and Keras' own variables — PYSPARK_PYTHON, SPARK_LOCAL_IP, KERAS_HOME — keep their usual meaning.)
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "conf" / "fruits.toml"

# Environment variable -> (section, key) it overrides.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "FRUITS_HOME": ("paths", "home"),
    "FRUITS_WEIGHTS": ("model", "weights"),
    "FRUITS_RUNTIME": ("model", "runtime"),
    "FRUITS_PRECISION": ("model", "precision"),
    "FRUITS_MASTER": ("spark", "master"),
    "FRUITS_JARS_DIR": ("spark", "jars_dir"),
    "FRUITS_TOKEN": ("web", "token"),
}


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"2s"``, ``"500ms"``, ``"10m"``, ``"1h"`` or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not match:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 500ms, 2s, 10m, 1h)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def join_uri(root: str, child: str) -> str:
    """``child`` if it is absolute or a URI, else ``root/child`` (works for local paths and Hadoop URIs)."""
    if "://" in child or child.startswith("/") or re.match(r"^[a-z][a-z0-9+.-]*:/", child):
        return child
    return root.rstrip("/") + "/" + child


def _absolute(home: str) -> str:
    """Local relative homes become absolute so Spark, deltalake and workers agree on them; URIs stay as given."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", home):
        return home
    return str(Path(home).expanduser().resolve())


@dataclass(frozen=True)
class Config:
    """The merged settings, with the derived locations of the home folder."""

    raw: dict[str, Any]

    def section(self, name: str) -> dict[str, Any]:
        return self.raw.get(name, {})

    @property
    def home(self) -> str:
        return _absolute(str(self.raw["paths"]["home"]))

    def location(self, key: str) -> str:
        """Location of ``key`` in [paths] (landing, features_table, ...), resolved against the home."""
        return join_uri(self.home, str(self.raw["paths"][key]))

    @property
    def landing(self) -> str:
        return self.location("landing")

    @property
    def features_table(self) -> str:
        return self.location("features_table")

    @property
    def quarantine_table(self) -> str:
        return self.location("quarantine_table")

    @property
    def files_table(self) -> str:
        """The file ledger: one row per discovered file version (:mod:`fruits.ledger`)."""
        return self.location("files_table")

    @property
    def archive(self) -> str:
        return self.location("archive")

    @property
    def locks(self) -> str:
        return self.location("locks")

    @property
    def pca_table(self) -> str:
        return self.location("pca_table")

    @property
    def pca_models(self) -> str:
        return self.location("pca_models")

    @property
    def cache(self) -> str:
        return self.location("cache")

    @property
    def stream_progress(self) -> str:
        """The JSON file where the running stream leaves its last micro-batch's figures."""
        return join_uri(self.location("status"), "stream-progress.json")

    def checkpoint(self, name: str) -> str:
        return join_uri(self.location("checkpoints"), name)


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge, lowest precedence first: conf/fruits.toml, ``config_file``, FRUITS_* variables, ``overrides``.

    ``overrides`` holds the command-line flags as ``{section: {key: value}}``; ``None`` values are ignored.
    """
    if not DEFAULTS_FILE.is_file():
        raise ConfigError(f"default configuration not found at {DEFAULTS_FILE}; install the project with `pip install -e .`")
    raw = tomllib.loads(DEFAULTS_FILE.read_text())
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {config_file}: no such file")
        _merge(raw, tomllib.loads(path.read_text()))
    env = os.environ if environ is None else environ
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            raw[section][key] = env[var]
    for section, values in (overrides or {}).items():
        _merge(raw.setdefault(section, {}), {k: v for k, v in values.items() if v is not None})
    return Config(copy.deepcopy(raw))
