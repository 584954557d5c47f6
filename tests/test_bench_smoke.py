"""No bench rots: every script in bench/ runs here at a tiny size (``--smoke``: no load check, ratio lines marked as
no figure) and must finish and print its ratio lines; and bench/honest.py's rules (docs/performance.md, "Honest
figures") hold. The smoke runs measure nothing: they are not timed tests, and several run at once (:class:`SmokePool`,
docs/testing.md).

The heavy runs start Spark, OpenVINO or TensorFlow: run them under the shared lock,
``flock /tmp/fruits-heavy.lock .venv/bin/python -m pytest tests/test_bench_smoke.py -q``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import ROOT, missing

sys.path.insert(0, str(ROOT / "bench"))
from honest import MAX_LOAD, REFUSED, Honest, cpu_info  # noqa: E402

BENCH = ROOT / "bench"
# Modules of bench/ that are no benchmark: helpers the benches import.
HELPERS = {"honest.py", "proctree.py"}
# Benches whose smoke run is somebody else's change in flight (named, so the list can only shrink on purpose).
PENDING: dict[str, str] = {}

# Tiny sizes: each run exercises every step of its bench once, with as little data as that step needs.
SMOKE = {
    "fuzz_decode.py": ["--count", "20"],
    "delta_rs_appends.py": ["--commits", "6", "--window", "3"],
    "delta_append.py": ["--appends", "1"],
    "bare_model.py": ["--images", "4", "--seconds", "0.05", "--per-class", "1", "--ir-cache", "{ir_cache}"],
    "ingest_throughput.py": ["--images", "8", "--variant", "shipped=--max-files-per-trigger 4", "--bare-seconds", "0.05",
                             "--bare-images", "4", "--tensorflow-shapes", "1x2", "--ir-cache", "{ir_cache}",
                             "--master", "local[2]"],
    "int8.py": ["--images", "8", "--seconds", "0.05", "--batch", "4", "--master", "local[2]", "--bare-images", "4"],
    "notebook_vs_stream.py": ["--images", "8", "--notebook-master", "local[1]"],  # one Python worker imports TensorFlow
    "backlog.py": ["--images", "8", "--flags", "--max-files-per-trigger 4", "--master", "local[2]", "--interval", "0.5"],
    "cluster_vs_local.py": ["--images", "12", "--max-files-per-trigger", "4", "--workers", "1", "--memory", "1g"],
    "ir_cache.py": ["--rounds", "1", "--user-cache", "{ir_cache}"],  # its warm-up: the suite's cache
    "latency.py": ["--images", "3", "--rate", "5", "--warmup", "1", "--master", "local[2]", "--timeout", "120"],
    "s3_throughput.py": ["--images", "12", "--rounds", "1", "--max-files-per-trigger", "4", "--master", "local[2]"],
    "pca_refit.py": ["--workdir", "{tmp}", "--repeats", "1", "--photos", "12", "--rows", "100", "--k", "5", "--also-spark"],
    "startup.py": ["--rounds", "1", "--master", "local[2]", "--no-warm-up"],  # the caches are the suite's, warm
    "discovery_scale.py": ["--files", "60", "--drops", "2", "--rate", "5", "--listings", "1", "--lost", "5",
                           "--idle-seconds", "1", "--cost-repeats", "1", "--skip-file-source", "--workdir", "{tmp}"],
    # beside: its most code (reference home, serve, identify clients, two streams, the settle re-check), smallest.
    "views.py": ["--per-class", "1", "--classes", "8", "--precisions", "fp32"],
    "model_accuracy.py": ["--per-class", "1", "--ir-cache", "{ir_cache}"],
    # local only: the cluster's start costs more than the rest together (its full run is the one figure of it)
    "model_switch.py": ["--photos", "8", "--rot4-photos", "8", "--cluster-photos", "0", "--chunk", "4",
                        "--bare-seconds", "0.05", "--bare-images", "4", "--workdir", "{tmp}"],
    # its reference: as few photos as the refit's [pca] k needs
    "web.py": ["beside", "--reference-per-class", "1", "--reference-classes", "24", "--images", "8", "--clients", "2",
               "--warmup", "1"],
}
# Ratio lines each smoke run prints at least.
RATIO_LINES = {
    "bare_model.py": 6, "delta_append.py": 3, "int8.py": 6, "notebook_vs_stream.py": 2, "pca_refit.py": 3,
    "discovery_scale.py": 6, "s3_throughput.py": 2, "startup.py": 2, "views.py": 5, "web.py": 2,
    "model_switch.py": 2,  # int8 and int8 + rot4 against the bare model
    "model_accuracy.py": 6,  # fp32 and int8, single and rot4, and their 2 gate lines (bf16 adds 3 where it runs)
}
SMOKE_RATIO = re.compile(r"^ratio \[smoke run, not a figure\]: \S", re.M)
# Ratio lines a smoke run must print, with numbers: an accuracy check that ran on none of its photos prints nan, and
# target 1's lines name the bare model's rates before and after the streams.
SMOKE_NUMBERS = {
    "int8.py": [re.compile(r"^ratio \[smoke run, not a figure\]: imagenet_top5: int8 \d\.\d{4} vs fp32 \d\.\d{4} ", re.M),
                re.compile(r"^ratio \[smoke run, not a figure\]: stream steady / bare model 2 proc x 1 thr, int8: "
                           r"\d+\.\d\dx \([\d.]+ vs [\d.]+ images/s, the bare model's mean of [\d.]+ and [\d.]+\)$", re.M)],
    "ingest_throughput.py": [re.compile(r"^ratio \[smoke run, not a figure\]: shipped: steady [\d.]+ images/s = [\d.]+ x bare "
                                        r"OpenVINO fp32 \([\d.]+ images/s, the mean of [\d.]+ before and [\d.]+ after the streams", re.M)],
}


@pytest.mark.fast
def test_every_bench_has_a_smoke_run():
    scripts = {path.name for path in BENCH.glob("*.py")} - HELPERS
    assert scripts - set(PENDING) == set(SMOKE), "a bench without a smoke run, or a smoke run without its bench"
    for path in BENCH.glob("*.py"):
        if path.name not in HELPERS | set(PENDING):
            assert "Honest.add_arguments(parser)" in path.read_text() and "Honest.start(args)" in path.read_text(), path.name


@pytest.mark.fast
def test_cpu_flags_come_from_cpuinfo():
    text = "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: fpu sse avx2 avx512_vnni amx_tile amx_int8\n"
    cpu = cpu_info(text)
    assert (cpu.model, cpu.flags, cpu.cpu_class) == (
        "Some CPU 9000", {"avx2": True, "avx512_vnni": True, "amx": True}, "AVX-512/AMX")
    older = cpu_info("model name\t: Old CPU\nflags\t\t: fpu sse avx2\n")
    assert older.flags == {"avx2": True, "avx512_vnni": False, "amx": False} and older.cpu_class == "AVX2 only"
    here = cpu_info()  # this machine's /proc/cpuinfo, against what lscpu reads of it
    lscpu = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                                               check=True).stdout.splitlines() if ":" in line)
    machine = set(lscpu["Flags"].split())
    assert here.model == lscpu["Model name"].strip()
    assert here.flags == {"avx2": "avx2" in machine, "avx512_vnni": "avx512_vnni" in machine,
                          "amx": bool({"amx_tile", "amx_int8", "amx_bf16"} & machine)}


def _start(load: float, *flags: str) -> tuple[Honest | int, str]:
    import argparse

    parser = argparse.ArgumentParser()
    Honest.add_arguments(parser)
    out = io.StringIO()
    try:
        honest = Honest.start(parser.parse_args(list(flags)), out=out, load=lambda: (load, 0.2, 0.1))
    except SystemExit as exc:
        return exc.code, out.getvalue()
    honest.ratio("x / y = 2.00x")
    honest.finish()
    return honest, out.getvalue()


@pytest.mark.fast
def test_a_loaded_machine_gets_no_ratio_unless_forced():
    code, text = _start(MAX_LOAD + 0.5)
    assert code == REFUSED and "refused: load average 2.00 > 1.5" in text and not re.search(r"^ratio", text, re.M)
    assert text.startswith("cpu: ") and "AVX2" in text and "AVX512_VNNI" in text and "AMX" in text

    _, forced = _start(MAX_LOAD + 0.5, "--force")
    assert "ratio [--force: load average 2.00 > 1.5 before the run]: x / y = 2.00x" in forced

    _, quiet = _start(0.4)
    assert "\nratio: x / y = 2.00x\n" in quiet
    assert "load average before: 0.40 0.20 0.10\n" in quiet and "load average after: 0.40 0.20 0.10\n" in quiet

    _, smoke = _start(MAX_LOAD + 3, "--smoke")
    assert "ratio [smoke run, not a figure]: x / y = 2.00x" in smoke and "refused" not in smoke


@pytest.mark.fast
def test_a_settled_check_judges_the_measured_part():
    """bench/web.py beside: its own set-up loads the cores; the check after it waits for that load to settle."""
    import argparse

    parser = argparse.ArgumentParser()
    Honest.add_arguments(parser)
    loads = iter([0.3, 2.5, 2.5, 1.2, 1.2])  # quiet at the start, the set-up's load, then settled
    out = io.StringIO()
    honest = Honest.start(parser.parse_args([]), out=out, load=lambda: (next(loads), 0.5, 0.4))
    naps = []
    honest.check(settle=60, sleep=naps.append)
    assert len(naps) == 2 and honest.load_before == (1.2, 0.5, 0.4) and not honest.loaded
    assert re.search(r"^load average before the measured part .*: 1\.20 0\.50 0\.40$", out.getvalue(), re.M)

    busy = Honest.start(parser.parse_args([]), out=io.StringIO(), load=lambda: (0.3, 0.2, 0.1))
    busy._load = lambda: (2.5, 2.0, 1.0)  # the set-up's load never settles
    with pytest.raises(SystemExit) as refused:
        busy.check(settle=0.05, poll=0.01)
    assert refused.value.code == REFUSED and "refused: load average 2.50" in busy.out.getvalue()

    forced = Honest.start(parser.parse_args(["--force"]), out=io.StringIO(), load=lambda: (2.5, 2.0, 1.0))
    forced.check(settle=60, sleep=naps.append)  # --force waits for nothing and refuses nothing: it says so
    forced.ratio("a / b = 1.00x")
    assert len(naps) == 2 and "ratio [--force: load average 2.50 > 1.5 before the run]" in forced.out.getvalue()


@pytest.fixture(scope="module")
def ir_cache() -> str:
    """The per-user IR cache the service itself uses: the model is converted once for all smoke runs."""
    from fruits.config import load_config
    from fruits.model.ir import ir_cache_dir

    return str(ir_cache_dir(load_config(environ={})))


# Smoke runs at once (FRUITS_SMOKE_JOBS): a smoke run mostly waits (JVM and model starts, its stream's triggers), and it
# measures nothing, so several share the cores; a bench's real runs stay alone (docs/performance.md).
SMOKE_JOBS = int(os.environ.get("FRUITS_SMOKE_JOBS", "3"))
# The smoke runs' JVMs (Spark drivers, the test cluster's daemons and executors) compile with C1 only and collect with
# one thread: in a tiny run the C2 compiler threads cost more CPU than the work. Set here alone: benches' real runs keep
# the JVM's defaults.
SMOKE_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# The longest smoke runs start first, so the pool's last minutes are not one long run alone (bench/ names).
LONGEST_FIRST = ["pca_refit.py", "web.py", "s3_throughput.py", "int8.py", "discovery_scale.py", "cluster_vs_local.py",
                 "notebook_vs_stream.py", "bare_model.py", "delta_append.py", "startup.py", "model_switch.py",
                 "ingest_throughput.py", "latency.py", "ir_cache.py", "backlog.py", "model_accuracy.py", "views.py"]


@dataclass
class SmokeRun:
    script: str
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    error: str = ""  # why there is no return code (the timeout), else ""
    done: threading.Event = field(default_factory=threading.Event)


class SmokePool:
    """The selected smoke runs, :data:`SMOKE_JOBS` at a time, each a subprocess in its own session (stopped with its
    process tree if the test run ends first). :meth:`result` waits for one bench's run."""

    def __init__(self, scripts: list[str], args: dict[str, list[str]], tmp: dict[str, Path]) -> None:
        self.runs = {script: SmokeRun(script) for script in scripts}
        self.processes: dict[str, subprocess.Popen] = {}
        self.lock, self.closing = threading.Lock(), False
        order = sorted(scripts, key=lambda s: LONGEST_FIRST.index(s) if s in LONGEST_FIRST else len(LONGEST_FIRST))
        self.pool = ThreadPoolExecutor(max(1, SMOKE_JOBS), thread_name_prefix="smoke")
        for script in order:
            self.pool.submit(self._run, script, args[script], tmp[script])

    def _run(self, script: str, args: list[str], tmp: Path) -> None:
        run = self.runs[script]
        try:
            with self.lock:
                if self.closing:
                    run.error = "not started: the test run ended first"
                    return
                java = f"{os.environ.get('JAVA_TOOL_OPTIONS', '')} {SMOKE_JAVA_OPTIONS}".strip()
                env = {**os.environ, "TMPDIR": str(tmp), "JAVA_TOOL_OPTIONS": java}
                process = subprocess.Popen([sys.executable, str(BENCH / script), "--smoke", *args], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, env=env, cwd=tmp, start_new_session=True)
                self.processes[script] = process
            started = time.monotonic()
            try:
                run.stdout, run.stderr = process.communicate(timeout=900)
            except subprocess.TimeoutExpired:
                _stop(process)
                run.stdout, run.stderr = process.communicate()
                run.error = "timed out after 900 s"
            run.returncode, run.seconds = process.returncode, time.monotonic() - started
        except Exception as exc:  # noqa: BLE001  (the bench's test reports it)
            run.error = f"not run: {exc!r}"
        finally:
            run.done.set()

    def result(self, script: str) -> SmokeRun:
        run = self.runs[script]
        run.done.wait()
        return run

    def close(self) -> None:
        with self.lock:
            self.closing = True
        for process in self.processes.values():
            if process.poll() is None:
                _stop(process)
        self.pool.shutdown(wait=True)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the bench (its ``finally`` blocks stop the trees it started), then SIGKILL to its session."""
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _needs_weed() -> bool:
    sys.path.insert(0, str(ROOT / "tests"))
    from s3server import weed_binary

    return weed_binary() is None


@pytest.fixture(scope="module")
def smoke_pool(request, tmp_path_factory, ir_cache):
    """One pool for the smoke runs this test run selected: they start together at the first one's test."""
    scripts = sorted({item.callspec.params["script"] for item in request.session.items
                      if getattr(item, "originalname", None) == "test_bench_runs_at_a_tiny_size"})
    if "s3_throughput.py" in scripts and _needs_weed():
        scripts.remove("s3_throughput.py")  # its test says why it cannot run
    tmp = {script: tmp_path_factory.mktemp(script.removesuffix(".py")) for script in scripts}
    args = {script: [a.format(tmp=tmp[script], ir_cache=ir_cache) for a in SMOKE[script]] for script in scripts}
    pool = SmokePool(scripts, args, tmp)
    yield pool
    pool.close()


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_bench_runs_at_a_tiny_size(script, smoke_pool, record_property):
    if script == "s3_throughput.py" and _needs_weed():
        missing("no SeaweedFS binary (`make weed`): s3_throughput's smoke run needs it", "FRUITS_REQUIRE_S3")
    done = smoke_pool.result(script)
    record_property("smoke_run_seconds", round(done.seconds, 1))  # the run's own time (the test's is a wait)
    assert done.returncode == 0 and not done.error, (
        f"{script} failed ({done.error or done.returncode}, {done.seconds:.0f} s, beside up to {SMOKE_JOBS - 1} other "
        f"smoke runs):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    out = done.stdout
    assert re.search(r"^cpu: .+; \d+ cores; AVX2 (yes|no), AVX512_VNNI (yes|no), AMX (yes|no)", out, re.M), out[:500]
    assert re.search(r"^load average before: [\d.]+ [\d.]+ [\d.]+ \(smoke run: not checked\)$", out, re.M), out[:500]
    assert re.search(r"^load average after: [\d.]+ [\d.]+ [\d.]+$", out, re.M), out[-500:]
    ratios = SMOKE_RATIO.findall(out)
    assert len(ratios) >= RATIO_LINES.get(script, 1), f"{script}: {len(ratios)} ratio lines:\n{out}"
    assert not re.search(r"^ratio: ", out, re.M), f"{script}: a smoke run printed a ratio as a figure"
    for numbers in SMOKE_NUMBERS.get(script, []):
        assert numbers.search(out), f"{script}: no line matches {numbers.pattern!r}:\n{out}"
