"""Which model a command runs on a home: the home's active model, unless a flag asks for another (refused).

Every command that featurizes (``fruits stream``, ``identify``, ``serve``, the switch) starts here:

- a home with an active model (:mod:`fruits.home.models`) runs that model. The ``[model]`` settings of files only
  apply to a home's first model; a flag (or ``FRUITS_*`` variable) that asks for a model whose features differ is
  refused with :class:`OtherModel` (exit code 2), which names ``fruits model switch``. A runtime that gives the same
  features (fp32 OpenVINO and TensorFlow, :func:`fruits.model.runtimes.same_features`) is not another model;
- a home without one (before its first stream) runs what the configuration says; the stream records it
  (:func:`record_first_model`), with ``precision = "auto"`` resolved once, on this CPU, by the accuracy gate.

Example::

    run = model_to_run(home, asked={"precision": "int8"})   # OtherModel on a home whose model is fp32
    run.config.model.precision, run.weights.model_id, run.record.number
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping

from fruits.config import Config
from fruits.errors import Refused
from fruits.home.home import Home
from fruits.home.models import ModelRecord, Registry, model_table, now_text
from fruits.model.cpu import cpu_info
from fruits.model.runtimes import same_features
from fruits.model.weights import WeightsRef, WeightsUnavailable, resolve_weights

log = logging.getLogger("fruits.model")

# The [model] settings that make a model (and the flags that ask for one).
MODEL_SETTINGS = ("weights", "runtime", "precision", "views")


class OtherModel(Refused):
    """A command asked for a model other than its home's active one; the message names ``fruits model switch``."""


class NoModel(Refused):
    """The home has no model yet (``fruits stream`` records the first one)."""


@dataclass(frozen=True)
class ModelToRun:
    """The model a command runs: its settings (``config.model``), its resolved weights, and its record (None before
    the home's first stream). ``chosen``: how ``precision = "auto"`` was resolved, for the first record."""

    config: Config
    weights: WeightsRef
    record: ModelRecord | None
    chosen: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Home:
        return Home.from_config(self.config)


def with_model(config: Config, **settings: str) -> Config:
    """``config`` with ``[model]`` settings replaced (those given as None are left as they are)."""
    given = {key: value for key, value in settings.items() if value is not None}
    return replace(config, model=replace(config.model, **given)) if given else config


def record_settings(record: ModelRecord) -> dict[str, str]:
    """The ``[model]`` settings that make ``record``'s model."""
    return {"weights": record.weights, "runtime": record.runtime, "precision": record.precision, "views": record.views}


def model_to_run(home: Home, *, asked: Mapping[str, str | None] | None = None) -> ModelToRun:
    """The model a command runs on ``home``; ``asked``: the model settings given by flags or variables (the others
    are not asked for). Raises :class:`OtherModel` when they ask for a model other than the active one."""
    asked = {key: value for key, value in (asked or {}).items() if value is not None and key in MODEL_SETTINGS}
    active = home.models.load().active
    if active is None:
        return first_model(home.config)
    settings = {**record_settings(active), **asked}
    if settings.get("precision") == "auto":  # chosen once per home: the active model's precision is that choice
        settings["precision"] = active.precision
    config = with_model(home.config, **settings)
    try:
        weights = resolve_weights(config.model.weights)
    except WeightsUnavailable as exc:
        if "weights" not in asked or asked["weights"] == active.weights:
            raise
        # Asked for other weights that cannot be had here (offline, a missing file): say which the home runs.
        raise WeightsUnavailable(
            f"{exc} This home's active model is {active.model_id} (model {active.number}, weights "
            f"{active.weights!r}): leave out --weights and FRUITS_WEIGHTS to run it"
        ) from None
    wanted = model_id_for(config, weights)
    if weights.model_id != active.weights_id or not same_features(wanted, active.model_id):
        flags = " ".join(f"--{key} {value}" for key, value in asked.items()) or "its [model] settings"
        if asked:
            raise OtherModel(
                f"this home's active model is {active.model_id} (model {active.number}, since "
                f"{active.active_since or active.since}); {flags} asks for {wanted}. Run `fruits model switch "
                f"{flags}` to move the home to it (its history is featurized again), or leave the flag out"
            )
        raise OtherModel(
            f"this home's active model is {active.model_id}, but its weights {active.weights!r} now give "
            f"{weights.model_id}: the file changed. Pass --weights with the file the home was streamed with"
        )
    return ModelToRun(config, weights, active)


def first_model(config: Config) -> ModelToRun:
    """The model the configuration asks for, for a home without one; ``precision = "auto"`` is resolved here."""
    weights = resolve_weights(config.model.weights)
    chosen: dict[str, Any] = {}
    if config.model.precision == "auto":
        from fruits.model.accuracy import choose_precision

        choice = choose_precision(config, weights)
        chosen = {"setting": "auto", "precision": choice.precision, "why": choice.describe(),
                  "candidates": [asdict(candidate) for candidate in choice.candidates]}
        config = with_model(config, precision=choice.precision)
        log.info("%s", choice.describe())
    return ModelToRun(config, weights, None, chosen)


def model_id_for(config: Config, weights: WeightsRef) -> str:
    """The model id the featurizer of ``config.model`` gives (:mod:`fruits.model.featurizer`), without building it."""
    from fruits.model.featurizer import compose_model_id

    model = config.model
    return compose_model_id(weights.model_id, model.runtime, model.precision, model.views)


def new_record(run: ModelToRun, *, number: int, state: str, cpu: str) -> ModelRecord:
    """The registry record of the model ``run`` describes, as model ``number`` of its home."""
    model = run.config.model
    return ModelRecord(
        number=number, model_id=model_id_for(run.config, run.weights), weights=model.weights,
        weights_id=run.weights.model_id, runtime=model.runtime, precision=model.precision,
        views=model.views, table=model_table(run.config.features_table, number), state=state,
        since=now_text(), cpu=cpu, chosen=dict(run.chosen),
        active_since=now_text() if state == "active" else None,
    )


def record_first_model(home: Home, run: ModelToRun, *, stored_ids: list[str]) -> ModelRecord:
    """Record ``run``'s model as the home's first, active model (the first stream of the home does). ``stored_ids``:
    the model ids of the rows its features table already holds (a home streamed before models were recorded): they
    must all be that model's, else :class:`OtherModel`."""
    record = new_record(run, number=1, state="active", cpu=cpu_text())
    others = [stored for stored in stored_ids if not same_features(stored, record.model_id)]
    if others:
        raise OtherModel(
            f"this home's features come from {', '.join(sorted(others))}, not {record.model_id}: pass the flags "
            "(--weights, --runtime, --precision, --views) that give the model they were made with"
        )
    home.models.save(Registry((record,)))
    log.info("model 1 of this home: %s", record.model_id)
    return record


def cpu_text() -> str:
    """One line naming this machine's CPU and the instruction sets that decide the precisions (recorded with each
    model)."""
    return cpu_info().summary()


def model_of_stream(home: Home, run: ModelToRun, model_id: str) -> ModelRecord:
    """The record of the model a stream runs (``model_id``, its featurizer's): the home's active model, which it must
    give the same features as (else :class:`OtherModel`), or, on the home's first stream, the new record of it."""
    active = home.models.load().active
    if active is None:
        stored = home.features.read(["model_id"]).column("model_id").unique().to_pylist()
        return record_first_model(home, run, stored_ids=[s for s in stored if s])
    if not same_features(model_id, active.model_id):
        raise OtherModel(
            f"this home's active model is {active.model_id} (model {active.number}); this stream's is {model_id}: "
            "start it without model flags, or move the home with `fruits model switch`"
        )
    return active


def target_model(home: Home, *, asked: Mapping[str, str | None]) -> ModelToRun:
    """The model ``fruits model switch`` moves ``home`` to: the active model's settings (those of the switch under
    way, if one was stopped) with those ``asked`` for (``precision = "auto"``: chosen again by the gate, on this
    CPU)."""
    registry = home.models.load()
    active, pending = active_model(registry), registry.switching
    # A stopped switch is the only one allowed: the flags say what differs from it (none: it is resumed, whatever
    # FRUITS_* variables repeat of it), not from the active model.
    base = record_settings(pending if pending is not None else active)
    settings = {**base, **{k: v for k, v in asked.items() if v is not None and k in MODEL_SETTINGS}}
    run = first_model(with_model(home.config, **settings))
    switch_to(registry, model_id_for(run.config, run.weights))  # a refusal comes before the switch starts Spark
    return run


def active_model(registry: Registry) -> ModelRecord:
    """The active model of ``registry``; :class:`NoModel` before the home's first stream."""
    if registry.active is None:
        raise NoModel("this home has no model yet: `fruits stream` records its first one")
    return registry.active


def switch_to(registry: Registry, wanted: str) -> ModelRecord | None:
    """Whether a switch of the home ``registry`` describes to the model ``wanted`` may go on: the record of the switch
    to it a stopped run left (resumed), or None for a new switch. Refused (:class:`Refused`) when ``wanted`` is the
    active model, or when a switch to another model is under way."""
    active, pending = active_model(registry), registry.switching
    if same_features(wanted, active.model_id):
        raise Refused(f"{wanted} is already this home's active model (model {active.number})")
    if pending is not None and pending.model_id != wanted:
        raise Refused(f"a switch to {pending.model_id} (model {pending.number}) is under way: run it again to "
                      f"finish it (`fruits model switch` with its flags) before switching to {wanted}")
    return pending
