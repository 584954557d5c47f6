"""The model lifecycle on real Spark, real Delta and real photos: a home records its model at its first stream,
refuses another one, switches to int8 beside its live stream (the switch killed in the middle and resumed), identify
follows without a restart, and prune deletes the old model's table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.compute as pc
import pytest

from conftest import NOTOP_WEIGHTS, make_config, place, sample_files, wait_for

pytestmark = pytest.mark.slow

FRUITS = str(Path(sys.executable).with_name("fruits"))
CLASSES = ["Banana", "Lemon", "Strawberry", "Pineapple", "Kiwi", "Apple Granny Smith", "Pomegranate", "Fig"]


def land(landing: Path, count: int, skip: int) -> list[Path]:
    return [p for label in CLASSES for p in place(sample_files(label, count, skip=skip), landing / label)]


def keys(table) -> list[tuple[str, int]]:
    rows = table.read(["file_id", "attempt"])
    return list(zip(rows.column("file_id").to_pylist(), rows.column("attempt").to_pylist()))


def test_a_home_keeps_one_model_and_switches_to_another_beside_its_stream(spark, weights, tmp_path):
    from fruits.batch.model_switch import prune_models, switch_model
    from fruits.batch.refit_pca import refit_pca_local
    from fruits.cli import main
    from fruits.home.home import Home
    from fruits.home.locks import exclusive
    from fruits.model.active import target_model
    from fruits.model.identify import Identifier
    from fruits.streaming.ingest import run_stream

    home_dir = tmp_path / "home"
    settings = {"stream": {"max_files_per_trigger": 4, "trigger": "200ms"}, "discovery": {"backfill_interval": "1s"}}
    config = make_config(home_dir, **settings)
    home = Home.from_config(config)
    landing = Path(config.landing)

    # 1. The first stream records the home's model.
    first = land(landing, 5, 0)
    assert run_stream(spark, config, weights, available_now=True) == len(first)
    model_1 = home.models.load().active
    assert model_1.number == 1 and model_1.model_id == weights.model_id + "/openvino-fp32"
    assert model_1.table == config.features_table and model_1.cpu

    # 2. Another model asked for by a flag is refused (exit 2, naming the switch); the same one is not.
    question = str(sample_files("Banana", 1, skip=20)[0])
    common = ["--home", str(home_dir), "--weights", str(NOTOP_WEIGHTS)]
    assert main(["identify", *common, "--precision", "int8", question]) == 2
    assert main(["stream", *common, "--precision", "int8", "--available-now"]) == 2
    serve = subprocess.run([FRUITS, "serve", *common, "--precision", "int8", "--allow-no-token", "--port", "0"],
                           capture_output=True, text=True, timeout=120)
    assert serve.returncode == 2 and "fruits model switch" in serve.stderr, serve.stderr[-2000:]
    assert home.features.read(["model_id"]).column("model_id").unique().to_pylist() == [model_1.model_id]
    refit_pca_local(config, k=8)
    identifier = Identifier(home, weights)  # kept, as `fruits serve` keeps it
    before = identifier.identify([("q", Path(question).read_bytes())])[0]
    assert before["predicted"] == "Banana"

    # 3. The switch, killed in the middle: its rows so far stay, exactly once, and nothing is active but model 1.
    (tmp_path / "switch.toml").write_text(
        f'[paths]\nhome = "{home_dir}"\n[model]\nweights = "{NOTOP_WEIGHTS}"\n[stream]\nmax_files_per_trigger = 4\n'
        '[spark]\nmaster = "local[1]"\n'
    )
    log = tmp_path / "switch.log"
    with open(log, "ab") as out:
        killed = subprocess.Popen([FRUITS, "model", "switch", "--config", str(tmp_path / "switch.toml"), "--precision",
                                   "int8", "--no-refit"], stdout=out, stderr=out, start_new_session=True)
    model_2_table = Path(config.features_table + "-m2")
    assert wait_for(lambda: len(list((model_2_table / "_delta_log").glob("*.json"))) >= 3, 300), log.read_text()[-3000:]
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(30)
    registry = home.models.load()
    assert registry.active.number == 1 and registry.switching.number == 2
    partial = keys(home.model_features(registry.switching))
    assert 0 < len(partial) < len(first) and len(set(partial)) == len(partial)

    # Ctrl-C stops the resumed switch after the chunk in flight: a clean end (exit 0) that says how to resume it.
    commits = lambda: len(list((model_2_table / "_delta_log").glob("*.json")))  # noqa: E731
    before, written = commits(), log.stat().st_size
    with open(log, "ab") as out:
        interrupted = subprocess.Popen([FRUITS, "model", "switch", "--config", str(tmp_path / "switch.toml"),
                                        "--precision", "int8", "--no-refit"], stdout=out, stderr=out,
                                       start_new_session=True)
    assert wait_for(lambda: commits() > before, 300), log.read_text()[-3000:]
    os.killpg(interrupted.pid, signal.SIGINT)  # Ctrl-C in a terminal: to the whole group, the JVM's too
    assert interrupted.wait(120) == 0, log.read_bytes()[written:].decode(errors="replace")[-3000:]
    said = log.read_bytes()[written:].decode(errors="replace")
    assert "run the same command again" in said and "Traceback" not in said, said[-3000:]
    registry = home.models.load()
    assert registry.active.number == 1 and registry.switching.number == 2 and home.features.sealed_by() is None
    partial = keys(home.model_features(registry.switching))
    assert 0 < len(partial) < len(first) and len(set(partial)) == len(partial)

    # 4. The live stream runs on while the switch resumes; photos land before and after its flip.
    stop = threading.Event()
    streamed: list[int] = []
    stream = threading.Thread(target=lambda: streamed.append(run_stream(spark, config, weights, stop=stop)))
    stream.start()
    try:
        during = land(landing, 2, 5)
        target = target_model(home, asked={"precision": "int8"})
        with exclusive(config, "model"):
            outcome = switch_model(spark, home, target)
        assert outcome.model.number == 2 and outcome.model.state == "active"
        fitted = outcome.refit.refitted  # PCA refitted on the new model's rows, all of them
        assert fitted.model_ids == [outcome.model.model_id] and fitted.method == "full"
        assert fitted.features_table == outcome.model.table
        after = land(landing, 1, 7)
        every = len(first) + len(during) + len(after)
        assert wait_for(lambda: len(keys(home.features)) == every, 300), (len(keys(home.features)), every)
    finally:
        stop.set()
        stream.join(120)
    assert not stream.is_alive() and streamed

    registry = home.models.load()
    model_1, model_2 = registry.number(1), registry.number(2)
    assert (model_1.state, model_2.state) == ("retired", "active")
    assert model_2.model_id == weights.model_id + "/openvino-int8" and home.features_table == model_2.table
    new_keys, old_keys = keys(home.model_features(model_2)), keys(home.model_features(model_1))
    assert len(set(new_keys)) == len(new_keys) == every  # every photo exactly once under the new model
    assert set(old_keys) <= set(new_keys) and len(old_keys) < every  # the old table took no row after its seal
    assert home.features.read(["model_id"]).column("model_id").unique().to_pylist() == [model_2.model_id]
    stored = home.features.read(["stored_path"]).column("stored_path").to_pylist()
    assert all(p and os.path.isfile(p.removeprefix("file:")) for p in stored)  # read from the archive

    # 5. identify follows the new model without a restart (the PCA it answers with is fitted on it).
    assert main(["identify", *common, question]) == 0  # no flag: the active model
    refit = refit_pca_local(config, k=8)  # the rows the stream added after the flip
    assert refit.refitted.model_ids == [model_2.model_id] and refit.refitted.method == "incremental"
    after_switch = identifier.identify([("q", Path(question).read_bytes())])[0]
    assert after_switch["predicted"] == "Banana" and after_switch["pca_version"] == refit.refitted.version
    assert identifier.featurizer()[0].model_id == model_2.model_id

    # 6. prune deletes the retired model's table; its record stays.
    assert [m.number for m in prune_models(home)] == [1]
    assert not Path(model_1.table).exists() and home.models.load().number(1).state == "pruned"
    assert pc.count(home.features.read(["file_id"]).column("file_id")).as_py() == every

    # `fruits model` shows the active model: its id, since when, its rows, the CPU it was chosen on.
    from fruits.reports.models import models_report

    report = models_report(home)
    assert report["active"]["number"] == 2 and report["active"]["rows"] == every and "cores" in report["active"]["cpu"]
    assert [m["state"] for m in report["models"]] == ["pruned", "active"]


def test_auto_is_chosen_once_and_a_switch_refuses_while_originals_are_gone(spark, weights, tmp_path):
    """``precision = "auto"`` chosen by the gate on this CPU at the home's first stream and recorded; then a switch
    to the other precision on a home that deletes its originals: refused, listing them, unless told to leave them out."""
    from fruits.batch.model_switch import MissingOriginals, switch_model
    from fruits.cli import main
    from fruits.home.home import Home
    from fruits.model.active import model_to_run, target_model
    from fruits.model.cpu import cpu_info
    from fruits.reports.models import format_models, models_report
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path / "home", discovery={"after_ingest": "delete"}, model={"precision": "auto"})
    home = Home.from_config(config)
    run = model_to_run(home)  # as `fruits stream` does before the JVM: the gate runs here, once
    landed = place(sample_files("Lemon", 3), Path(config.landing) / "Lemon")
    assert run_stream(spark, run.config, run.weights, available_now=True, chosen=run.chosen) == 3
    model_1 = home.models.load().active
    expected = "int8" if cpu_info().int8_candidate else "fp32"  # int8 passes the gate where it is a candidate
    assert model_1.precision == expected and model_1.chosen["precision"] == expected, model_1.chosen
    assert model_1.model_id.endswith(f"/openvino-{expected}") and "AVX" in model_1.cpu
    assert model_to_run(home).config.model.precision == expected  # recorded: never chosen again for this home
    shown = format_models(models_report(home))  # `fruits model`: the gate's sentence, not its figures as a dict
    assert f"  {model_1.chosen['why']}" in shown.splitlines() and "{" not in shown, shown

    assert not any(p.exists() for p in landed)  # deleted once featurized
    # One original is back in landing, as a delete that failed leaves it (the stream's leftovers delete it later).
    leftover = place(sample_files("Lemon", 1), Path(config.landing) / "Lemon")[0]
    target = target_model(home, asked={"precision": "fp32" if expected == "int8" else "int8"})
    with pytest.raises(MissingOriginals) as refused:
        switch_model(spark, home, target, refit=False)
    rows = home.features.read(["file_id", "path", "stored_path"]).to_pylist()
    back = next(row["file_id"] for row in rows if row["path"].endswith(f"/Lemon/{leftover.name}"))
    file_ids = {row["file_id"] for row in rows} - {back}
    assert set(refused.value.missing) == file_ids and all("deleted" in why for why in refused.value.missing.values())
    assert home.models.load().active.number == 1 and home.features.sealed_by() is None  # nothing flipped or sealed

    # Given up (`fruits model switch --abandon`): its table is gone, its record stays; then done again, leaving out.
    assert main(["model", "switch", "--home", str(tmp_path / "home"), "--abandon"]) == 0
    assert home.models.load().number(2).state == "abandoned" and not Path(config.features_table + "-m2").exists()
    assert main(["model", "switch", "--home", str(tmp_path / "home"), "--abandon"]) == 2  # nothing under way now
    outcome = switch_model(spark, home, target, leave_out_missing=True, refit=False)
    assert outcome.model.number == 3 and set(outcome.left_out) == file_ids
    assert home.models.load().active.left_out == len(file_ids) and home.models.left_out(3) == outcome.left_out
    # The leftover's new row says what its old row said (deleted): where the switch happened to read it is not where
    # its original belongs, else the stream would keep it in landing for good.
    assert home.features.read(["file_id", "stored_path"]).to_pylist() == [{"file_id": back, "stored_path": None}]
