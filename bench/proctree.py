"""Helpers shared by bench/latency.py and bench/backlog.py: run a `fruits` command as a process tree, watch it, stop it.

A `fruits stream` is a tree of processes: the `fruits` Python driver, the JVM it starts (spark-submit), the PySpark
daemon the JVM forks (which moves itself to its own process group) and the Python workers the daemon forks. So
stopping and measuring go by the tree read from /proc, not by the process group alone.

Not a benchmark itself: ``python bench/latency.py --help`` and ``python bench/backlog.py --help``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_throughput import FRUITS  # noqa: E402  (the `fruits` next to this interpreter)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks (which stop the child trees) run, as they do on Ctrl-C."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


PF_FORKNOEXEC = 0x40  # kernel task flag: forked, has not exec'd yet


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, start time in clock ticks, kernel flags) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ..., flags, ..., starttime
    return int(fields[1]), int(fields[19]), int(fields[6])


def process_tree(root: int) -> dict[int, int]:
    """``root`` and its live descendants: pid -> start time (to tell a pid from a later process reusing it)."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[0], []).append(int(entry))
            started[int(entry)] = stat[1]
    if root not in started:
        return {}
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        tree[pid] = started[pid]
        todo.extend(children.get(pid, []))
    return tree


def _kill_tree(tree: dict[int, int]) -> None:
    """SIGKILL each process of ``tree`` that is still the same process (same pid and start time)."""
    for pid, started in tree.items():
        stat = _stat(pid)
        if stat and stat[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop(process: subprocess.Popen, grace: float = 60.0) -> int:
    """Stop ``process`` and its tree: SIGTERM to it (`fruits` stops its query cleanly and exits 0), wait ``grace``
    seconds, then SIGKILL its process group and every descendant still alive. Returns its exit code."""
    tree = process_tree(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            print(f"pid {process.pid} still running {grace:.0f} s after SIGTERM: killing its tree", file=sys.stderr)
    deadline = time.monotonic() + 10  # the JVM and the PySpark daemon exit on their own once the driver is gone
    while time.monotonic() < deadline and any(_stat(p) and _stat(p)[1] == s for p, s in tree.items()):
        time.sleep(0.2)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # start_new_session: the group id is the pid
    except (ProcessLookupError, PermissionError):
        pass
    _kill_tree(tree)
    return process.wait()


@contextmanager
def fruits_process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """Run ``fruits ARGS`` in its own session, stdout and stderr to ``log_path``; always stopped (:func:`stop`) on
    leaving the block, also on an error, Ctrl-C or SIGTERM (with :func:`exit_on_sigterm`)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [FRUITS, *args], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop(process)


def log_tail(log_path: Path, chars: int = 4000) -> str:
    """The end of a command's log, for error messages."""
    return log_path.read_text(errors="replace")[-chars:] if log_path.exists() else "(no log)"


def resolved_stream_config(flags: list[str]) -> dict:
    """The trigger and files per trigger `fruits stream FLAGS` will use, resolved by the CLI's own parser and config
    (conf/fruits.toml < --config < FRUITS_* < flags). Also rejects bad flags before anything is started."""
    from fruits.cli import build_parser, config_from_args

    args = build_parser().parse_args(["stream", *flags])
    stream_cfg = config_from_args(args).stream
    return {
        "trigger": "availableNow" if args.available_now else f"{stream_cfg.trigger}s",
        "max_files_per_trigger": stream_cfg.max_files_per_trigger,
        "flags": shlex.join(flags),
    }


def kind(pid: int, root: int) -> tuple[str, str]:
    """What a process of a `fruits` tree is, and its command name: ``driver`` (the `fruits` Python process),
    ``java``, ``python`` (PySpark daemon and workers) or ``other`` (e.g. the JVM's short-lived helpers)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = "?"
    if pid == root:
        return "driver", comm
    if comm == "java":
        return "java", comm
    return ("python" if comm.startswith("python") else "other"), comm


def _status_kb(pid: int, path: str, key: str) -> int:
    """A ``Key:   N kB`` figure of /proc/PID/{status,smaps_rollup}; 0 if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class TreeMemory(threading.Thread):
    """Samples the memory of a process tree every ``interval`` seconds from /proc until :meth:`finish`.

    Per sample: the sum of VmRSS over the tree (shared pages, e.g. of the Python workers the PySpark daemon forks,
    count once per process), the sum of Pss (shared pages split between their users: closer to what the tree
    really costs the machine), and per kind (:func:`kind`) the sum and the largest single process. A child caught
    between fork and exec (e.g. the `fruits` driver launching spark-submit, or a JVM thread's vfork before it runs
    chmod, which shares the JVM's memory) shows its parent's pages as its own: it is left out of the sums, and only
    its largest VmRSS is reported (``fork_copy_max_mib``). PySpark's Python workers are forks that never exec: they
    are counted.
    """

    def __init__(self, root: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.samples = self.peak_rss_kb = self.peak_pss_kb = 0
        self.peak_at_s = 0.0
        self.peak_by_kind: dict[str, dict[str, int]] = {}
        self.names: dict[str, set[str]] = {}
        self.fork_copy_kb = 0
        self._done = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        """Sample until :meth:`finish` is called."""
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)

    def sample(self) -> None:
        """Read the tree's memory once and update the peaks."""
        total_rss = total_pss = 0
        by_kind: dict[str, list[int]] = {}
        for pid in process_tree(self.root):
            name, comm = kind(pid, self.root)
            rss = _status_kb(pid, "status", "VmRSS:")
            if name == "other" and (_stat(pid) or (0, 0, 0))[2] & PF_FORKNOEXEC:  # its parent's pages, not its own
                self.fork_copy_kb = max(self.fork_copy_kb, rss)
                continue
            total_rss += rss
            total_pss += _status_kb(pid, "smaps_rollup", "Pss:")
            by_kind.setdefault(name, []).append(rss)
            self.names.setdefault(name, set()).add(comm)
        self.samples += 1
        if total_rss > self.peak_rss_kb:
            self.peak_rss_kb, self.peak_at_s = total_rss, time.monotonic() - self._t0
        self.peak_pss_kb = max(self.peak_pss_kb, total_pss)
        for name, sizes in by_kind.items():
            peak = self.peak_by_kind.setdefault(name, {"sum_kb": 0, "largest_kb": 0, "processes": 0})
            peak["sum_kb"] = max(peak["sum_kb"], sum(sizes))
            peak["largest_kb"] = max(peak["largest_kb"], max(sizes))
            peak["processes"] = max(peak["processes"], len(sizes))

    def finish(self) -> dict:
        """Stop sampling; the peaks in MiB (and the total in GB)."""
        self._done.set()
        self.join()
        mib = lambda kb: round(kb / 1024, 1)  # noqa: E731
        return {
            "peak_total_rss_mib": mib(self.peak_rss_kb),
            "peak_total_rss_gb": round(self.peak_rss_kb * 1024 / 1e9, 2),
            "peak_total_pss_mib": mib(self.peak_pss_kb),
            "peak_at_s": round(self.peak_at_s, 1),
            "by_kind": {
                name: {"peak_sum_rss_mib": mib(p["sum_kb"]), "peak_largest_rss_mib": mib(p["largest_kb"]),
                       "max_processes": p["processes"], "commands": sorted(self.names[name])}
                for name, p in sorted(self.peak_by_kind.items())
            },
            "fork_copy_max_mib": mib(self.fork_copy_kb),
            "samples": self.samples,
            "interval_s": self.interval,
        }
