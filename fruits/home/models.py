"""The home's models: which model made its features (the *active* one), and the others it has had or is getting.

A home has one active model at a time: the weights, runtime, precision and views that every row of its features
table comes from. The registry is one small JSON document, ``HOME/models/registry.json`` (``[paths]
model_registry``), replaced whole and atomically (a rename on local disks and Hadoop, one PUT on S3), so a reader
sees the old registry or the new one, never a mix:

- the first ``fruits stream`` of a home records model 1, whose features table is ``[paths] features_table``;
- ``fruits model switch`` adds model N (state ``switching``) with its own table, ``<features_table>-mN``, fills it,
  then makes it the active one in one replace (the old one becomes ``retired``);
- ``fruits model prune`` deletes a retired model's table (state ``pruned``; the record stays, as history);
- ``fruits model switch --abandon`` gives up a switch under way (state ``abandoned``, its table deleted).

No Spark and no model code here: :mod:`fruits.model.active` decides which model a command runs, the switch
(:mod:`fruits.batch.model_switch`) fills a new model's table.

Example::

    registry = ModelRegistry(home.config.model_registry, home.files, features_table=home.config.features_table)
    active = registry.load().active          # a ModelRecord, or None before the home's first stream
    active.model_id, active.table            # '.../openvino-fp32', '/data/fruits/tables/features'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any, Literal

from fruits.errors import Failed
from fruits.home.filesystem import FileSystem

# What became of a model: being filled by a switch, the one the home runs, replaced by another, or its table deleted.
ModelState = Literal["switching", "active", "retired", "pruned", "abandoned"]


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelRecord:
    """One model of a home: what it is (``weights``, ``runtime``, ``precision``, ``views``, their ``model_id``),
    where its features are (``table``) and its history."""

    number: int
    model_id: str
    weights: str  # as the operator gave it: "imagenet" or a weights file (the id checks it is the same file)
    weights_id: str
    runtime: str
    precision: str
    views: str
    table: str
    state: ModelState
    since: str  # when it was recorded (switching) or became active
    cpu: str = ""  # the CPU it was chosen on (fruits.model.cpu)
    chosen: dict[str, Any] = field(default_factory=dict)  # how the precision was chosen ("auto": the gate's figures)
    active_since: str | None = None
    retired_at: str | None = None
    # How many photos of the previous model the switch left out because their originals are gone; which ones, and
    # why, are in a file of their own (ModelRegistry.left_out), so the registry every command reads stays small.
    left_out: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Registry:
    """The models of a home, oldest first; at most one is ``active``."""

    models: tuple[ModelRecord, ...] = ()

    @property
    def active(self) -> ModelRecord | None:
        return next((m for m in self.models if m.state == "active"), None)

    @property
    def switching(self) -> ModelRecord | None:
        return next((m for m in self.models if m.state == "switching"), None)

    def number(self, number: int) -> ModelRecord | None:
        return next((m for m in self.models if m.number == number), None)

    def by_id(self, model_id: str) -> ModelRecord | None:
        """The newest model recorded under ``model_id`` that still has its table."""
        return next((m for m in reversed(self.models) if m.model_id == model_id and m.state != "pruned"), None)

    def with_model(self, record: ModelRecord) -> "Registry":
        """This registry with ``record`` added, or replacing the record of the same number."""
        others = tuple(m for m in self.models if m.number != record.number)
        return Registry(tuple(sorted((*others, record), key=lambda m: m.number)))

    def flipped(self, number: int) -> "Registry":
        """The model ``number`` active, the one active before retired: the switch's last step."""
        stamp = now_text()
        models = []
        for model in self.models:
            if model.number == number:
                model = replace(model, state="active", active_since=stamp)
            elif model.state == "active":
                model = replace(model, state="retired", retired_at=stamp)
            models.append(model)
        return Registry(tuple(models))

    def next_number(self) -> int:
        return max((m.number for m in self.models), default=0) + 1

    def to_json(self) -> str:
        return json.dumps({"models": [asdict(m) for m in self.models]}, indent=2, sort_keys=True)


def model_table(features_table: str, number: int) -> str:
    """Where model ``number``'s features go: ``[paths] features_table`` for the first, ``<that>-mN`` after."""
    return features_table if number == 1 else f"{features_table.rstrip('/')}-m{number}"


class RegistryDamaged(Failed):
    """The registry document cannot be read as one (cut short, not JSON, a record without its fields): every command
    that needs the home's model stops, naming the file, rather than guess which model the home runs."""


class ModelRegistry:
    """The registry document at ``uri``, read and replaced through ``files`` (the home's file system).

    ``features_table``: the home's ``[paths] features_table``, where each loaded record's ``table`` is found
    (:func:`model_table` of its number), whatever location the record was written with: a home copied, restored or
    moved elsewhere reads and writes its own tables, never those of the home it came from. None: as written."""

    def __init__(self, uri: str, files: FileSystem, *, features_table: str | None = None) -> None:
        self.uri, self.files, self.features_table = uri, files, features_table

    def load(self) -> Registry:
        """The registry as stored now (empty before the home's first stream)."""
        data = self.files.read(self.uri)
        if data is None:
            return Registry()
        try:
            document = json.loads(data.decode("utf-8"))
            records = tuple(ModelRecord.from_json(m) for m in document["models"])
        except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise RegistryDamaged(
                f"the model registry {self.uri} is damaged ({type(exc).__name__}: {exc}): without it no command can "
                "tell which model this home runs; restore it from a backup"
            ) from exc
        if self.features_table is not None:
            records = tuple(replace(m, table=model_table(self.features_table, m.number)) for m in records)
        return Registry(records)

    def left_out_uri(self, number: int) -> str:
        """Where the photos model ``number``'s switch left out are listed (``models/left-out-mN.json``)."""
        return f"{self.uri.rsplit('/', 1)[0]}/left-out-m{number}.json"

    def left_out(self, number: int) -> dict[str, str]:
        """The photos model ``number``'s switch left out (``file_id`` -> where their original was looked for)."""
        data = self.files.read(self.left_out_uri(number))
        return {} if data is None else json.loads(data.decode("utf-8"))

    def save_left_out(self, number: int, photos: dict[str, str]) -> None:
        self.files.write(self.left_out_uri(number), json.dumps(photos, indent=0, sort_keys=True).encode("utf-8"))

    def save(self, registry: Registry) -> None:
        """Replace the stored registry with ``registry``, whole (readers see the old one or this one)."""
        if sum(m.state == "active" for m in registry.models) > 1:
            raise ValueError("a registry has at most one active model")
        self.files.write(self.uri, registry.to_json().encode("utf-8"))
