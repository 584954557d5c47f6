"""A throwaway Spark standalone cluster on this machine, started from pyspark's own distribution.

One master and N workers run as ordinary local processes (``bin/spark-class org.apache.spark.deploy.master.Master``
and ``...worker.Worker`` from the pip-installed pyspark), bound to 127.0.0.1 on free ports, with their work, log and
pid folders in a private directory. It is what the cluster test and ``bench/cluster_vs_local.py`` run against, and a
quick way to try ``--master spark://...`` on a laptop::

    python tests/standalone.py --workers 2 --cores 1      # prints the master URL, Ctrl-C stops everything

Folders listed in ``hide`` are made invisible to the workers (and to the executors and Python workers they start):
each worker runs in a private mount namespace with an empty tmpfs mounted over them. Workers then see this machine's
files the way a separate machine would see them for those folders, e.g. a driver-only copy of the weights that the
executors must receive through ``SparkContext.addFile``. This needs ``unshare`` (util-linux) and either root or
unprivileged user namespaces; :attr:`StandaloneCluster.isolated` says whether it was possible.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent
SPARK_CLASS = SPARK_HOME / "bin" / "spark-class"
HOST = "127.0.0.1"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClusterError(RuntimeError):
    """The cluster did not come up; the message carries the tail of the relevant log."""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _namespace_prefix(hide: list[str]) -> list[str] | None:
    """A command prefix that runs a command in a private mount namespace with an empty tmpfs over each of ``hide``,
    or None when this machine does not allow it."""
    unshare = shutil.which("unshare")
    if not unshare or not hide:
        return None
    mounts = "; ".join(f"mount -t tmpfs -o size=1m,mode=0555 fruits-hidden {shlex.quote(d)}" for d in hide)
    script = f"set -e; {mounts}; exec \"$@\""
    for flags in (["--mount", "--propagation", "private"], ["--user", "--map-root-user", "--mount", "--propagation", "private"]):
        prefix = [unshare, *flags, "sh", "-c", script, "sh"]
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot) of a live process, from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ..., starttime (22nd field)
    return int(fields[1]), int(fields[19])


def _process_tree(pid: int) -> dict[int, int]:
    """``pid`` and its live descendants, each with its start time (so a recycled pid is never mistaken for it)."""
    stats = {int(e.name): _stat(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit()}
    children: dict[int, list[int]] = {}
    for child, stat in stats.items():
        if stat:
            children.setdefault(stat[0], []).append(child)
    tree = {pid: stats[pid][1]} if stats.get(pid) else {}
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            tree[child] = stats[child][1]
            queue.append(child)
    return tree


def _descendants(pid: int) -> list[int]:
    """The live descendants of ``pid``, children before grandchildren."""
    return [p for p in _process_tree(pid) if p != pid]


def _signal(tree: dict[int, int], sig: int) -> None:
    """Send ``sig`` to each process of ``tree`` that is still the same process (same pid and start time)."""
    for pid, started in tree.items():
        stat = _stat(pid)
        if stat and stat[1] == started:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@dataclass
class StandaloneCluster:
    """A Spark standalone master and ``workers`` workers of ``cores`` cores and ``memory`` each, as local processes.

    Use as a context manager (``with StandaloneCluster(...) as cluster:``): the processes, and everything they
    started (executors, Python workers), are stopped on exit, also when the body raised.
    """

    workers: int = 2
    cores: int = 1
    memory: str = "2g"
    root: Path | None = None  # work, log and pid folders; a new temporary folder when None
    hide: list[str] = field(default_factory=list)  # folders the workers must not see (see the module doc)
    start_timeout: float = 120.0

    master_url: str = field(init=False, default="")
    webui_url: str = field(init=False, default="")
    isolated: bool = field(init=False, default=False)  # whether ``hide`` is in force for the workers
    processes: dict[str, subprocess.Popen] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root or tempfile.mkdtemp(prefix="fruits-standalone-"))  # kept: logs for post-mortems

    # -- paths -------------------------------------------------------------------------------------------------
    @property
    def work_dir(self) -> Path:
        """The workers' work folders: ``work/worker-N/app-*/<executor id>/`` holds an executor's stderr and the files
        and jars it fetched from the driver."""
        return self.root / "work"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def env(self) -> dict[str, str]:
        """The environment of the cluster's processes; also right for a driver that talks to the cluster."""
        conf_dir = self.root / "conf"  # empty: no stray spark-defaults.conf or spark-env.sh from elsewhere
        return {
            **os.environ,
            "SPARK_HOME": str(SPARK_HOME),
            "SPARK_CONF_DIR": str(conf_dir),
            "SPARK_LOCAL_IP": HOST,
            "SPARK_LOCAL_HOSTNAME": HOST,
            "SPARK_WORKER_DIR": str(self.work_dir),
            "SPARK_LOG_DIR": str(self.log_dir),
            "SPARK_PID_DIR": str(self.root / "pids"),
            "SPARK_NO_DAEMONIZE": "1",
        }

    def driver_env(self) -> dict[str, str]:
        """The environment of a driver (``fruits stream --master spark://...``) that talks to the cluster: this
        process's own, bound to the cluster's address. Not the daemons' conf folder: the driver keeps the Spark
        conf of its local-mode runs, and with it their class data archive (fruits/spark/class_archive.py keys it on
        ``SPARK_CONF_DIR``), which a conf folder of its own per cluster would make the driver write anew at exit."""
        return {**os.environ, "SPARK_LOCAL_IP": HOST, "SPARK_LOCAL_HOSTNAME": HOST}

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], prefix: list[str] | None = None) -> subprocess.Popen:
        log = open(self.log(name), "wb")
        try:
            process = subprocess.Popen(
                [*(prefix or []), str(SPARK_CLASS), *args],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C goes to the caller only, which then calls stop()
            )
        finally:
            log.close()
        self.processes[name] = process
        return process

    def start(self) -> "StandaloneCluster":
        for folder in (self.work_dir, self.log_dir, self.root / "pids", self.root / "conf"):
            folder.mkdir(parents=True, exist_ok=True)
        try:
            port, webui = free_port(), free_port()
            self.master_url, self.webui_url = f"spark://{HOST}:{port}", f"http://{HOST}:{webui}"
            self._spawn(
                "master",
                ["org.apache.spark.deploy.master.Master", "--host", HOST, "--port", str(port), "--webui-port", str(webui)],
            )
            self._wait(lambda state: state.get("status") == "ALIVE", "master", "the master to be ALIVE")
            if self.master_state()["url"] != self.master_url:  # the port was taken meanwhile and Spark moved on
                raise ClusterError(f"master is at {self.master_state()['url']}, not {self.master_url}")
            prefix = _namespace_prefix([str(Path(d).resolve()) for d in self.hide])
            self.isolated = prefix is not None
            for index in range(1, self.workers + 1):
                self._spawn(
                    f"worker-{index}",
                    [
                        "org.apache.spark.deploy.worker.Worker",
                        "--host", HOST, "--port", str(free_port()), "--webui-port", str(free_port()),
                        "--cores", str(self.cores), "--memory", self.memory,
                        "--work-dir", str(self.work_dir / f"worker-{index}"),  # as on separate machines
                        self.master_url,
                    ],
                    prefix,
                )
            self._wait(
                lambda state: state.get("aliveworkers") == self.workers,
                "worker-1",
                f"{self.workers} workers to register",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, ready, log_name: str, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise ClusterError(f"{name} exited with {process.returncode}:\n{self.tail(name)}")
            try:
                if ready(self.master_state()):
                    return
            except (OSError, ValueError):
                pass  # not listening yet
            time.sleep(0.5)
        raise ClusterError(f"timed out after {self.start_timeout:.0f} s waiting for {what}:\n{self.tail(log_name)}")

    def master_state(self) -> dict:
        """The master's JSON status (``/json/``): status, url, aliveworkers, cores, workers, activeapps, ..."""
        with _NO_PROXY.open(self.webui_url + "/json/", timeout=5) as response:  # never through an HTTP(S)_PROXY
            return json.load(response)

    def tail(self, name: str, lines: int = 40) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def worker_pids(self) -> list[int]:
        """The worker JVMs' pids (the processes the workers' executors are started from)."""
        pids = []
        for name, process in self.processes.items():
            if name.startswith("worker-") and process.poll() is None:
                pids.append(process.pid)  # unshare, sh and spark-class all exec: the pid is the worker JVM's
        return pids

    def process_tree(self) -> dict[int, int]:
        """Every live process of the cluster (master, workers, executors, Python workers): pid -> start time."""
        return {pid: start for p in self.processes.values() for pid, start in _process_tree(p.pid).items()}

    @staticmethod
    def alive(tree: dict[int, int]) -> list[int]:
        """The pids of ``tree`` that are still the same running process (zombies count as gone)."""
        alive = []
        for pid, started in tree.items():
            stat = _stat(pid)
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if stat and stat[1] == started and state != "Z":
                alive.append(pid)
        return alive

    def executor_dirs(self, worker: int) -> list[Path]:
        """The folders of the executors that worker ``worker`` (1-based) has run, oldest application first."""
        return sorted(path for path in (self.work_dir / f"worker-{worker}").glob("app-*/*") if path.is_dir())

    def stop(self, grace: float = 20.0) -> None:
        """Stop every process the cluster started, and their descendants (executors, Python workers): SIGTERM, then
        SIGKILL for what is left after ``grace`` s. Only those processes are signalled, by pid and start time."""
        if not self.processes:
            return
        trees = {name: _process_tree(p.pid) for name, p in self.processes.items()}
        # Workers first (they stop their executors), then the master.
        for name in sorted(trees, key=lambda n: n == "master"):
            _signal(trees[name], signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for name, process in self.processes.items():
            # What is still running: the first tree (orphans included) and anything started since.
            left = {**trees[name], **(_process_tree(process.pid) if process.poll() is None else {})}
            _signal(left, signal.SIGKILL)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.processes.clear()

    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run a Spark standalone cluster on this machine until Ctrl-C.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="2g", help="memory per worker for executors")
    parser.add_argument("--root", help="folder for the work, log and pid folders (default: a new temporary one)")
    args = parser.parse_args(argv)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with StandaloneCluster(args.workers, args.cores, args.memory, Path(args.root) if args.root else None) as cluster:
        print(f"master {cluster.master_url} (web UI {cluster.webui_url}); logs in {cluster.log_dir}", flush=True)
        print(f"drivers: export SPARK_LOCAL_IP={HOST}; fruits stream --master {cluster.master_url} ...", flush=True)
        try:
            while not stop:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
