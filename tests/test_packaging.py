"""A plain (non-editable) ``pip install .`` works: the jobs install as ``fruits.streaming`` / ``fruits.batch``, the
defaults ship as package data, nothing generic lands in site-packages, and the demo runs from the installed package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import NOTOP_WEIGHTS, ROOT

pytestmark = pytest.mark.slow


def run(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_a_plain_pip_install_runs_the_demo_from_site_packages(tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).stdout.strip())
    # The dependencies (pyspark, TensorFlow, ...) come from this test run's environment, as a plain folder on sys.path:
    # its .pth files (among them the editable install's finder) are not processed, so `fruits` can only come from the
    # new venv. Only the project itself is installed, without deps, from a copy of the sources.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    sources = tmp_path / "src"
    shutil.copytree(ROOT, sources, ignore=shutil.ignore_patterns(
        ".venv", ".cache", ".git", "build", "*.egg-info", "spark-warehouse", "demo-home", "__pycache__", "tests", "bench"))
    run(str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(sources), cwd=tmp_path)

    where = json.loads(run(str(python), "-c", (
        "import json, fruits, fruits.streaming.ingest, fruits.batch.refit_pca, importlib.util as u;"
        "from fruits.config import load_config;"
        "print(json.dumps({'fruits': fruits.__file__, 'ingest': fruits.streaming.ingest.__file__,"
        " 'k': load_config(environ={}).pca.k, 'streaming': u.find_spec('streaming') is not None,"
        " 'batch': u.find_spec('batch') is not None, 'standalone': u.find_spec('fruits.standalone') is not None}))"
    ), cwd=tmp_path).stdout)
    assert where["fruits"].startswith(str(site)) and where["ingest"].startswith(str(site))
    assert where["k"] == 20  # conf/fruits.toml came with the package
    assert not where["streaming"] and not where["batch"] and not where["standalone"]  # no generic top-level names

    demo = run(
        str(python), str(sources / "examples" / "demo.py"), "--home", str(tmp_path / "home"), "--weights", str(NOTOP_WEIGHTS),
        "--master", "local[2]", cwd=tmp_path,
    )
    assert "Traceback" not in demo.stderr
    features = tmp_path / "home" / "tables" / "features"
    assert (features / "_delta_log").is_dir() and (tmp_path / "home" / "models" / "pca" / "v1" / "metadata.json").is_file()
