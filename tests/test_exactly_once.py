"""Exactly-once, proven the hard way: `fruits stream` processes killed with SIGKILL, or stopped with SIGTERM, and
restarted on the same checkpoint; in the end every landed file is in features ∪ quarantine exactly once."""

from __future__ import annotations

import os
import re
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import NOTOP_WEIGHTS, SAMPLE, local_path

pytestmark = pytest.mark.slow

FRUITS = str(Path(sys.executable).with_name("fruits"))


def land(home: Path, images: int, corrupt: int = 0, empty: int = 0) -> set[str]:
    """Land real photos (class folders), random-byte files and 0-byte files; returns their paths."""
    landing = home / "landing"
    landed = set()
    for photo in sorted(SAMPLE.glob("*/*.jpg"))[:images]:
        target = landing / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(photo.read_bytes())
        landed.add(str(target))
    rng = random.Random(7)
    for index in range(corrupt + empty):
        target = landing / "junk" / f"junk-{index}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(2000) if index < corrupt else b"")
        landed.add(str(target))
    return landed


def start(home: Path, log: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "FRUITS_HOME": str(home), "FRUITS_WEIGHTS": str(NOTOP_WEIGHTS), "FRUITS_MASTER": "local[2]"}
    with open(log, "ab") as out:
        return subprocess.Popen([FRUITS, "stream", *flags], env=env, stdout=out, stderr=out, start_new_session=True)


def commits(home: Path) -> int:
    log = home / "tables" / "features" / "_delta_log"
    return len(list(log.glob("*.json"))) if log.exists() else 0


def wait_for(predicate, timeout: float, process: subprocess.Popen | None = None, poll: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(poll)
    return False


def ingested_paths(home: Path) -> Counter:
    from deltalake import DeltaTable

    paths = Counter()
    for table in ("features", "quarantine"):
        paths.update(local_path(p) for p in DeltaTable(str(home / "tables" / table)).to_pandas(columns=["path"])["path"])
    return paths


def finish(home: Path, log: Path) -> None:
    final = start(home, log, "--available-now")
    assert final.wait(600) == 0, log.read_text()[-3000:]


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    seed = int(os.environ.get("FRUITS_KILL_SEED", time.time()))
    rng = random.Random(seed)
    print(f"kill test seed {seed}")
    home, log = tmp_path / "home", tmp_path / "stream.log"
    landed = land(home, images=500, corrupt=8, empty=2)
    flags = ["--trigger", "200ms", "--max-files-per-trigger", "25"]

    kills = []
    for round_ in range(4):
        process = start(home, log, *flags)
        before = commits(home)
        if round_ == 0:  # right after a Delta commit of the features table
            assert wait_for(lambda: commits(home) > before, 180, process), log.read_text()[-3000:]
        elif round_ < 3:  # at a random moment while micro-batches are being processed
            assert wait_for(lambda: commits(home) > before, 180, process), log.read_text()[-3000:]
            time.sleep(rng.uniform(0, 3))
        else:  # at a random moment from the start (JVM start-up, model load, or a batch)
            time.sleep(rng.uniform(2, 25))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        kills.append(commits(home))
    assert sum(n > 0 for n in kills) >= 3, f"too few kills landed after a commit: {kills}"

    finish(home, log)
    counts = ingested_paths(home)
    duplicated = {p: n for p, n in counts.items() if n > 1}
    assert not duplicated, f"seed {seed}: ingested more than once: {list(duplicated)[:5]}"
    assert set(counts) == landed, f"seed {seed}: missing {sorted(landed - set(counts))[:5]}"


def test_sigterm_stops_cleanly_and_a_restart_resumes(tmp_path):
    home, log = tmp_path / "home", tmp_path / "stream.log"
    landed = land(home, images=150)
    process = start(home, log, "--trigger", "500ms", "--max-files-per-trigger", "20")
    assert wait_for(lambda: commits(home) > 1, 180, process), log.read_text()[-3000:]
    process.send_signal(signal.SIGTERM)  # to the driver process only, as `docker stop` or systemd would
    assert process.wait(120) == 0, log.read_text()[-3000:]
    assert "stop requested" in log.read_text()
    assert len(ingested_paths(home)) < len(landed), "stopped too late to prove anything; slow the stream down"

    finish(home, log)
    counts = ingested_paths(home)
    assert set(counts) == landed and max(counts.values()) == 1


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every running process (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z":  # a zombie has exited: only its parent has not reaped it yet
                found[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return found


def test_a_signal_to_the_whole_group_stops_between_chunks_and_a_killed_driver_leaves_no_jvm(tmp_path):
    """Ctrl-C in a terminal, or `docker stop` through an init that forwards to the group, signal the stream's whole
    process group. SIGTERM, then SIGINT, to the group, while chunks are being featurized: each run exits 0, with one
    stop line and no traceback (the JVM and its Python workers, in a session of their own, are not hit). Then two
    signals, and a kill -9 of the driver: it exits at once, and its JVM and workers with it. In the end every photo
    has exactly one outcome."""
    home = tmp_path / "home"
    landed = land(home, images=300, corrupt=3)
    flags = ["--trigger", "200ms", "--max-files-per-trigger", "10"]
    for sig in (signal.SIGTERM, signal.SIGINT):
        log = tmp_path / f"stream-{sig.name}.log"
        before = max(commits(home), 1)  # the table's creation is a commit too
        process = start(home, log, *flags)
        assert wait_for(lambda: commits(home) > before, 180, process), log.read_text()[-3000:]
        time.sleep(0.5)  # into the next chunk's featurizing
        os.killpg(process.pid, sig)
        assert process.wait(120) == 0, log.read_text()[-3000:]
        text = log.read_text()
        stops = [line for line in text.splitlines() if "stop requested" in line]
        assert len(stops) == 1, text[-3000:]
        assert re.search(r"stream stopped after \d+ files", text), text[-3000:]  # then what it did (README)
        assert "Traceback" not in text and "Exception" not in text and " ERROR " not in text, text[-5000:]
    assert len(ingested_paths(home)) < len(landed), "stopped too late to prove anything; slow the stream down"

    # A second signal does not wait for the chunk in flight; a kill -9 of the driver alone: in both cases the JVM and
    # its workers exit with the driver.
    for name, end in {"second-signal": (signal.SIGTERM, signal.SIGINT), "killed": (signal.SIGKILL,)}.items():
        log = tmp_path / f"stream-{name}.log"
        before = commits(home)
        process = start(home, log, *flags)
        assert wait_for(lambda: commits(home) > before, 180, process), log.read_text()[-3000:]
        (jvm,) = [pid for pid, (parent, session) in _processes().items() if parent == process.pid and session == pid]
        in_jvm_session = lambda: [pid for pid, (_, session) in _processes().items() if session == jvm]  # noqa: E731
        assert len(in_jvm_session()) >= 2  # the JVM and its Python workers
        for sig in end:
            os.killpg(process.pid, sig)  # the group: the driver only (the JVM has a session of its own)
        assert process.wait(10) < 0, log.read_text()[-3000:]  # ended by the signal, without waiting for the chunk
        assert wait_for(lambda: not in_jvm_session(), 60, poll=0.2), f"left behind: {in_jvm_session()}"

    finish(home, log)
    counts = ingested_paths(home)
    assert set(counts) == landed and max(counts.values()) == 1, [p for p, n in counts.items() if n > 1][:5]
