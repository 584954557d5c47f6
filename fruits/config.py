"""Configuration: the shipped defaults (conf/fruits.toml), then --config, then FRUITS_* env vars, then flags.

Every setting the jobs read comes from a :class:`Config`: one frozen dataclass per TOML section, checked when it is
loaded. A wrong type, a value outside its allowed set or an unknown key is a :class:`ConfigError` that names where
the value came from (file, environment variable or flag), the key and what is allowed; nothing is silently ignored.
Nothing else reads the TOML files or FRUITS_* variables (Spark's and Keras' own variables, PYSPARK_PYTHON,
SPARK_LOCAL_IP, KERAS_HOME, keep their usual meaning). The defaults exist once, in conf/fruits.toml, which ships
inside the package (``fruits.conf``), so a plain ``pip install .`` finds them.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, get_args, get_origin, get_type_hints

from fruits.errors import Refused

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


class ConfigError(Refused):
    """A configuration value is missing, malformed or unknown."""


def has_scheme(text: str) -> bool:
    """Whether ``text`` is a URI (``file:/x``, ``s3a://b/k``, ``hdfs://nn/x``) rather than a plain path."""
    return _SCHEME.match(text) is not None


def user_cache_dir() -> Path:
    """The per-user cache of Fruits! (converted models, the jars a session resolved): ``$XDG_CACHE_HOME/fruits``,
    else ``~/.cache/fruits``. Per user rather than per home, so a new home pays no conversion or resolution again."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "fruits"


def parse_duration(text: str | float) -> float:
    """Seconds in a duration such as ``"2s"``, ``"500ms"``, ``"10m"``, ``"1h"`` or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not match:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 500ms, 2s, 10m, 1h)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def join_uri(root: str, child: str) -> str:
    """``child`` if it is absolute or a URI, else ``root/child`` (works for local paths and Hadoop URIs)."""
    if child.startswith("/") or has_scheme(child):
        return child
    return root.rstrip("/") + "/" + child


def _absolute(home: str) -> str:
    """Local relative homes become absolute so Spark, deltalake and workers agree on them; URIs stay as given."""
    if has_scheme(home):
        return home
    return str(Path(home).expanduser().resolve())


# --- the modes: each setting that takes one of a few words, declared once here -----------------------------------
# A ``Literal`` field accepts exactly its words at load; the flags' ``choices`` and the code's signatures use the same
# alias, so a new word is added in one place.

Runtime = Literal["openvino", "tensorflow"]  # [model] runtime: what runs MobileNetV2 (fruits.model.runtimes)
Precision = Literal["fp32", "bf16", "int8"]  # what a featurizer runs in: bf16 and int8 need the OpenVINO runtime
# [model] precision and --precision: a precision, or "auto" (the fastest that passes fruits.model.accuracy's gate on
# this CPU; resolved once per home before a featurizer is made).
PrecisionSetting = Literal["auto", Precision]
Views = Literal["single", "rot4"]  # [model] views: the photo as it is, or the mean of its 4 rotations (fruits.model.featurizer)
AfterIngest = Literal["archive", "delete", "keep"]  # [discovery] after_ingest: what becomes of a featurized original
RefitEngine = Literal["local", "spark"]  # where one refit runs: this process (delta-rs + numpy) or Spark
PcaEngine = Literal["auto", RefitEngine]  # [pca] engine (auto: chosen per refit, fruits.batch.local_fit)

# --- the sections: field types are checked at load; ``minimum`` restricts values further --------------------------

Seconds = float  # a duration: "500ms", "2s", "10m", "1h" or a number of seconds in TOML, seconds once loaded
SparkConf = dict[str, str]  # Spark settings, passed as they are


def _at_least(minimum: float) -> Any:
    return field(metadata={"minimum": minimum})


def _duration(optional: bool = False) -> Any:
    return field(metadata={"duration": True, "optional": optional})


@dataclass(frozen=True)
class PathsConfig:
    home: str
    landing: str
    features_table: str
    quarantine_table: str
    files_table: str
    pca_table: str
    checkpoints: str
    pca_models: str
    model_registry: str
    status: str
    archive: str
    quarantine: str
    writers: str
    locks: str


@dataclass(frozen=True)
class S3Config:
    endpoint: str
    region: str
    path_style: bool
    lease_seconds: float = _at_least(3)


@dataclass(frozen=True)
class SparkConfig:
    master: str
    app_name: str
    jars_dir: str
    class_archive: bool
    conf: SparkConf


@dataclass(frozen=True)
class StreamConfig:
    trigger: Seconds = _duration()
    max_files_per_trigger: int = _at_least(1)
    extensions: tuple[str, ...]
    partitions: int = _at_least(0)
    query_name: str
    max_retries: int = _at_least(0)
    retry_backoff: Seconds = _duration()
    spark_conf: SparkConf


@dataclass(frozen=True)
class DiscoveryConfig:
    watch: bool
    backfill_interval: Seconds = _duration()
    commit_interval: Seconds = _duration()
    quiet_seconds: Seconds = _duration()
    max_rows_per_commit: int = _at_least(1)
    after_ingest: AfterIngest
    allow_overwrites: bool
    writer_timeout: Seconds = _duration()


@dataclass(frozen=True)
class StageConfig:
    settle_seconds: float = _at_least(0)
    stable_seconds: float = _at_least(0)


@dataclass(frozen=True)
class ModelConfig:
    weights: str
    image_size: int = _at_least(32)
    runtime: Runtime
    precision: PrecisionSetting
    views: Views
    head_weights: str
    ir_cache: str
    calibration: str
    inference_batch_size: int = _at_least(1)
    intra_op_threads: int = _at_least(1)
    max_pixels: int = _at_least(1)
    max_bytes: int = _at_least(1)


@dataclass(frozen=True)
class PcaConfig:
    k: int = _at_least(1)
    variance: float = _at_least(0)
    every: Seconds | None = _duration(optional=True)
    max_consecutive_failures: int = _at_least(1)
    reproject_growth: float = _at_least(0)
    engine: PcaEngine
    local_max_rows: int = _at_least(0)
    spark_conf: SparkConf


@dataclass(frozen=True)
class CompactionConfig:
    enabled: bool
    min_extra_files: int = _at_least(0)
    target_file_mb: int = _at_least(1)


@dataclass(frozen=True)
class WebConfig:
    host: str
    token: str
    allow_no_token: bool
    public_origin: str
    cors_origins: tuple[str, ...]
    port: int = _at_least(0)
    max_request_bytes: int = _at_least(1)
    body_seconds: Seconds = _duration()
    max_in_flight: int = _at_least(1)
    signed_url_seconds: Seconds = _duration()
    identify_workers: int = _at_least(1)
    identify_threads: int = _at_least(0)
    identify_nice: int = _at_least(0)
    identify_cpu_share: float = _at_least(0)
    max_pixels: int = _at_least(1)
    decode_pixels: int = _at_least(1)
    decode_wait_seconds: Seconds = _duration()
    max_files: int = _at_least(1)
    thumbnail_px: int = _at_least(16)
    refresh_seconds: float = _at_least(0.1)
    window_seconds: float = _at_least(1)
    sample_seconds: float = _at_least(0.1)


SECTIONS: dict[str, type] = {
    "paths": PathsConfig, "s3": S3Config, "spark": SparkConfig, "stream": StreamConfig, "discovery": DiscoveryConfig,
    "stage": StageConfig, "model": ModelConfig, "pca": PcaConfig,
    "compaction": CompactionConfig, "web": WebConfig,
}

# Environment variable -> (section, key) it overrides.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "FRUITS_HOME": ("paths", "home"),
    "FRUITS_WEIGHTS": ("model", "weights"),
    "FRUITS_RUNTIME": ("model", "runtime"),
    "FRUITS_PRECISION": ("model", "precision"),
    "FRUITS_VIEWS": ("model", "views"),
    "FRUITS_HEAD_WEIGHTS": ("model", "head_weights"),
    "FRUITS_MASTER": ("spark", "master"),
    "FRUITS_JARS_DIR": ("spark", "jars_dir"),
    "FRUITS_TOKEN": ("web", "token"),
    "FRUITS_PUBLIC_ORIGIN": ("web", "public_origin"),
    "FRUITS_S3_ENDPOINT": ("s3", "endpoint"),
    "FRUITS_S3_REGION": ("s3", "region"),
    "FRUITS_S3_PATH_STYLE": ("s3", "path_style"),
}


class _Location:
    """A read-only attribute of :class:`Config`: the location of ``[paths] key``, resolved against the home."""

    def __init__(self, key: str, doc: str = "") -> None:
        self.key, self.__doc__ = key, doc or f"``[paths] {key}``, resolved against the home."

    def __get__(self, config: "Config | None", owner: type) -> Any:
        return self if config is None else config.location(self.key)


@dataclass(frozen=True)
class Config:
    """The merged, checked settings, one attribute per section, and the derived locations of the home folder."""

    paths: PathsConfig
    s3: S3Config
    spark: SparkConfig
    stream: StreamConfig
    discovery: DiscoveryConfig
    stage: StageConfig
    model: ModelConfig
    pca: PcaConfig
    compaction: CompactionConfig
    web: WebConfig

    @property
    def home(self) -> str:
        return _absolute(self.paths.home)

    def location(self, key: str) -> str:
        """Location of ``key`` in [paths] (landing, features_table, ...), resolved against the home."""
        if key not in {f.name for f in fields(PathsConfig)}:
            raise ConfigError(f"no location named {key!r} in [paths]")
        return join_uri(self.home, getattr(self.paths, key))

    landing = _Location("landing")
    features_table = _Location("features_table")
    quarantine_table = _Location("quarantine_table")
    files_table = _Location("files_table", "The file ledger: one row per discovered file version (:mod:`fruits.home.ledger`).")
    archive = _Location("archive")
    quarantine = _Location("quarantine")
    writers = _Location("writers")
    locks = _Location("locks")
    pca_table = _Location("pca_table")
    pca_models = _Location("pca_models")
    model_registry = _Location("model_registry", "The home's models (:mod:`fruits.home.models`).")

    @property
    def stream_progress(self) -> str:
        """The JSON file where the running stream leaves its last micro-batch's figures."""
        return join_uri(self.location("status"), "stream-progress.json")

    def checkpoint(self, name: str) -> str:
        return join_uri(self.location("checkpoints"), name)


def allowed_values(section: str, key: str) -> tuple[str, ...]:
    """The words ``[section] key`` accepts (for the command-line flags' ``choices``): its ``Literal`` type's.

    >>> allowed_values("model", "precision")
    ('auto', 'fp32', 'bf16', 'int8')
    """
    return get_args(get_type_hints(SECTIONS[section])[key])


def default_value(section: str, key: str) -> Any:
    """``[section] key`` as written in the shipped defaults (for the command-line help)."""
    return shipped_defaults()[section][key]


# --- loading ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def shipped_defaults() -> Mapping[str, Any]:
    """conf/fruits.toml as shipped in the package (package data ``fruits.conf``), parsed once per process (the CLI's
    help reads it for every flag's default; nothing changes it: the layers only read it)."""
    return tomllib.loads(resources.files("fruits.conf").joinpath("fruits.toml").read_text())


class _Layers:
    """The raw values of every layer merged in order, remembering which layer gave each value."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        self.origins: dict[tuple[str, str], str] = {}

    def add(self, origin: str, layer: Mapping[str, Any]) -> None:
        for section, values in layer.items():
            if section not in SECTIONS:
                raise ConfigError(f"{origin}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
            if not isinstance(values, Mapping):
                raise ConfigError(f"{origin}: [{section}] must be a table of settings, not {values!r}")
            known = get_type_hints(SECTIONS[section])
            for key, value in values.items():
                if value is None:  # a flag that was not given
                    continue
                if key not in known:
                    raise ConfigError(f"{origin}: unknown key [{section}] {key} (known: {', '.join(known)})")
                current = self.values[section].get(key)
                if known[key] == SparkConf and isinstance(current, dict) and isinstance(value, Mapping):
                    value = {**current, **value}  # Spark settings add up across layers
                self.values[section][key] = value
                self.origins[(section, key)] = origin

    def build(self) -> Config:
        return Config(**{name: self._section(name, cls) for name, cls in SECTIONS.items()})

    def _section(self, name: str, cls: type) -> Any:
        hints = get_type_hints(cls)
        values = {}
        for spec in fields(cls):
            if spec.name not in self.values[name]:
                raise ConfigError(f"[{name}] {spec.name} is missing from the defaults file")
            raw = self.values[name][spec.name]
            where = f"{self.origins[(name, spec.name)]}: [{name}] {spec.name} = {raw!r}"
            values[spec.name] = _checked(raw, hints[spec.name], spec.metadata, where)
        return cls(**values)


def _checked(raw: Any, kind: Any, meta: Mapping[str, Any], where: str) -> Any:
    """``raw`` as ``kind``, or a ConfigError saying where the value came from and what is allowed."""
    if meta.get("duration"):
        if meta.get("optional") and raw in ("", 0):
            return None
        try:
            return parse_duration(raw)
        except ConfigError:
            raise ConfigError(f"{where}: expected a duration such as 500ms, 2s, 10m or 1h") from None
    value = _typed(raw, kind, where)
    if "minimum" in meta and value < meta["minimum"]:
        raise ConfigError(f"{where}: expected a number >= {meta['minimum']:g}")
    return value


def _typed(raw: Any, kind: Any, where: str) -> Any:
    if get_origin(kind) is Literal:  # a mode: one of its words
        value = _typed(raw, str, where)
        if value not in get_args(kind):
            raise ConfigError(f"{where}: expected one of {', '.join(get_args(kind))}")
        return value
    if kind == SparkConf:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a table of Spark settings")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}
    if kind == tuple[str, ...]:
        if not isinstance(raw, (list, tuple)) or not all(isinstance(v, str) for v in raw):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(raw)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ConfigError(f"{where}: expected true or false")
    if kind in (int, float):
        try:
            if isinstance(raw, bool) or (kind is int and isinstance(raw, float)):
                raise ValueError
            return kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {'an integer' if kind is int else 'a number'}") from None
    if kind is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{where}: expected a string (in quotes)")
        return raw
    raise TypeError(f"unsupported setting type {kind!r}")  # a bug in the sections above, not in a file


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: not valid TOML ({exc})") from None


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Merge, lowest precedence first: conf/fruits.toml, ``config_file``, FRUITS_* variables, ``overrides``.

    ``overrides`` holds the command-line flags as ``{section: {key: value}}``; ``None`` values are ignored.
    Raises :class:`ConfigError` naming the file (or variable, or flag), the key and the allowed values.
    """
    layers = _Layers()
    layers.add("defaults (conf/fruits.toml)", shipped_defaults())
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {config_file}: {'not a regular file' if path.exists() else 'no such file'}")
        layers.add(str(path), _read_toml(path, "--config"))
    env = os.environ if environ is None else environ
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            layers.add(f"environment variable {var}", {section: {key: env[var]}})
    layers.add("command-line flags", overrides or {})
    return layers.build()
