"""One error family (fruits/errors.py): every exception class of the code is a member through one of its kinds, the
CLI maps the kinds to the exit codes the README documents, and Spark errors are told apart by their conditions."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import shipped_photos
from test_layout import ROOT, _module_name, _sources

FRUITS = str(Path(sys.executable).with_name("fruits"))
# fastapi's HTTPException subclasses of the web's front door: they are HTTP answers, not errors of the family.
HTTP_ANSWERS = {"fruits.web.door.BodyTooLarge", "fruits.web.door.BodyTooSlow"}


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined at the top of a module under fruits/, streaming/ and batch/, by full name."""
    found = {}
    for path in _sources():
        names = [node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef)]
        if not names:
            continue
        module = importlib.import_module(_module_name(path))
        for name in names:
            cls = getattr(module, name)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found[f"{module.__name__}.{name}"] = cls
    return found


@pytest.mark.fast
def test_every_exception_class_is_a_member_of_the_family_through_one_kind():
    from fruits.errors import Busy, Failed, FruitsError, Refused, Stopped, Unavailable

    kinds = (Refused, Unavailable, Busy, Failed, Stopped)
    classes = {name: cls for name, cls in exception_classes().items() if name not in HTTP_ANSWERS}
    members = {name.rsplit(".", 1)[1] for name in classes}
    assert {"ConfigError", "UnsafeName", "RejectedImage", "WeightsUnavailable", "IdentifyError", "ChangedRows",
            "LockBusy", "BudgetExhausted", "ModelFailure", "StreamFailed", "LedgerUnreadable", "RefitKeepsFailing",
            "SourcesMissing", "StopRequested"} <= members
    outside = [name for name, cls in classes.items() if cls not in (FruitsError, *kinds) and not issubclass(cls, kinds)]
    assert outside == []
    several = [name for name, cls in classes.items() if sum(issubclass(cls, kind) for kind in kinds) > 1]
    assert several == []
    assert set(HTTP_ANSWERS) <= set(exception_classes())  # still there, and still left out on purpose


@pytest.mark.fast
def test_the_exit_code_table_covers_the_family_and_is_the_readme_table():
    from fruits.cli import EXIT_CODES, OUTPUT_CLOSED, exit_code
    from fruits.errors import FruitsError

    classes = [cls for name, cls in exception_classes().items() if name not in HTTP_ANSWERS]
    nearest = {cls.__name__: next(kind for kind in cls.__mro__ if kind in EXIT_CODES) for cls in classes}
    assert [name for name, kind in nearest.items() if kind is FruitsError and name != "FruitsError"] == []
    codes = {cls.__name__: exit_code(cls) for cls in classes}
    # What the README's sentences promise: a busy home 3, a refused setting or label and missing weights 2, a
    # stream, a refit or a drop that failed 1, a requested stop 0.
    assert (codes["LockBusy"], codes["ConfigError"], codes["UnsafeName"], codes["WeightsUnavailable"]) == (3, 2, 2, 2)
    assert (codes["StreamFailed"], codes["RefitKeepsFailing"], codes["SourcesMissing"], codes["StopRequested"]) == (1, 1, 1, 0)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}
    assert documented == set(EXIT_CODES.values()) | {OUTPUT_CLOSED}


@pytest.mark.fast
def test_a_reader_that_closes_the_output_first_ends_the_command_quietly(tmp_path):
    """`fruits files | head -1`: the command stops with the code of a Unix tool ended by SIGPIPE, no traceback."""
    from fruits.cli import OUTPUT_CLOSED

    dropped = fruits("drop", "--home", str(tmp_path), *map(str, shipped_photos("Banana", 3)))
    assert dropped.returncode == 0, dropped.stderr
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FRUITS_", "PYTHONUNBUFFERED"))}
    for unbuffered in ({}, {"PYTHONUNBUFFERED": "1"}):  # the broken pipe met at a print, or at the last flush
        read, write = os.pipe()
        os.close(read)  # the reader left before the first line
        try:
            listed = subprocess.run([FRUITS, "files", "--home", str(tmp_path)], stdout=write, stderr=subprocess.PIPE,
                                    text=True, timeout=120, env={**clean, **unbuffered})
        finally:
            os.close(write)
        assert listed.returncode == OUTPUT_CLOSED, listed.stderr
        assert "Error" not in listed.stderr and "Traceback" not in listed.stderr, listed.stderr
    # Started with its output closed (`>&-`): Python has no stdout then; the command's work is done, no error.
    closed = subprocess.run(["sh", "-c", '"$0" files --home "$1" >&-', FRUITS, str(tmp_path)], stderr=subprocess.PIPE,
                            text=True, timeout=120, env=clean)
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed.stderr


def fruits(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FRUITS_")}
    return subprocess.run([FRUITS, *args], capture_output=True, text=True, timeout=120, env={**clean, **(env or {})})


@pytest.mark.fast
def test_a_refused_setting_exits_2_with_one_line_naming_it(tmp_path):
    result = fruits("status", "--home", str(tmp_path), env={"FRUITS_PRECISION": "fp64"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("fruits status: error: environment variable FRUITS_PRECISION: [model] precision")
    assert "Traceback" not in result.stderr


@pytest.mark.fast
@pytest.mark.parametrize("command", ["stream", "refit-pca"])
def test_a_busy_home_exits_3_before_anything_starts(tmp_path, command):
    from fruits.config import load_config
    from fruits.home.locks import LockBusy, exclusive, lock_path

    config = load_config(environ={"FRUITS_HOME": str(tmp_path)})
    with exclusive(config, command):  # as a running `fruits stream` or `fruits refit-pca` holds it
        with pytest.raises(LockBusy) as busy:
            with exclusive(config, command):
                pass
        result = fruits(command, "--home", str(tmp_path))
    assert busy.value.lock == str(lock_path(config, command)) and busy.value.retryable
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stderr.startswith(f"fruits {command}: error: another {command} is running on this home")
    assert not (tmp_path / "tables").exists()  # nothing was done: no Spark, no table


def _slow(ids: pd.Series) -> pd.Series:
    time.sleep(30)  # cancelled long before
    return ids


def _broken(ids: pd.Series) -> pd.Series:
    raise ValueError("this image breaks the worker")


def test_spark_errors_are_told_by_their_conditions(spark, tmp_path):
    """The sink tells a cancelled featurizing job (the query is stopping) and a file deleted before Spark read it by
    Spark's error conditions: a real cancelled job, a real missing path, and a job that failed otherwise."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    from fruits.spark.conditions import error_conditions
    from fruits.streaming.sink import JOB_FAILURES

    slow, broken = F.pandas_udf(_slow, "long"), F.pandas_udf(_broken, "long")
    raised = {}

    def collect() -> None:
        try:
            spark.range(1).select(slow("id")).toArrow()
        except Exception as exc:
            raised["cancelled"] = exc

    job = threading.Thread(target=collect)
    job.start()
    deadline = time.monotonic() + 60
    while not spark.sparkContext.statusTracker().getActiveJobsIds() and time.monotonic() < deadline:
        time.sleep(0.1)
    spark.sparkContext.cancelAllJobs()
    job.join(60)
    assert isinstance(raised["cancelled"], JOB_FAILURES)  # what the sink catches, then asks the conditions of
    assert "SPARK_JOB_CANCELLED" in error_conditions(raised["cancelled"])

    with pytest.raises(AnalysisException) as gone:
        spark.read.format("binaryFile").load([str(tmp_path / "deleted.jpg")])
    assert gone.value.getCondition() == "PATH_NOT_FOUND" and error_conditions(gone.value) == ["PATH_NOT_FOUND"]

    with pytest.raises(JOB_FAILURES) as failed:
        spark.range(1).select(broken("id")).toArrow()
    assert "SPARK_JOB_CANCELLED" not in error_conditions(failed.value)
