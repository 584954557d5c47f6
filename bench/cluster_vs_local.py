"""Benchmark: `fruits stream` on a 2-worker Spark standalone cluster vs `--master local[2]`, same machine, same images.

Both modes read the same landing folder (one absolute `[paths] landing` in a --config file, a fresh home each), so
they featurize exactly the same files under the same paths. The cluster is started from pyspark's own distribution
(``tests/standalone.py``: a master and ``--workers`` workers of ``--cores`` core(s) each, on 127.0.0.1); the workers
do not see ../shared, so the executors use the weights the driver ships with SparkContext.addFile, as on real nodes.

Start-up (JVM, Ivy, executors, TensorFlow import, model build) is left out: the rate is taken from the stream's own
progress lines (``batch N: X files in Y s``) over the full micro-batches after the first ``--skip-batches`` (1).
Whole-command times are reported too. More than 3,013 images reuses the real photos under new names.

Usage: python bench/cluster_vs_local.py [--images 10000] [--max-files-per-trigger 2000] [--rounds 1]
                                        [--skip-batches 1] [--conf KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet_notop.weights.h5"
FRUITS = str(Path(sys.executable).with_name("fruits"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from honest import Honest  # noqa: E402
from ingest_throughput import fill_landing  # noqa: E402  (the same real photos, the same names)

BATCH_LINE = re.compile(r"batch (\d+): (\d+) files in ([\d.]+) s")


def load_average() -> float:
    return os.getloadavg()[0]


class PythonWorkerMemory(threading.Thread):
    """Samples, every second, the largest resident size of the PySpark Python workers below the given processes."""

    def __init__(self, roots) -> None:
        super().__init__(daemon=True)
        self.roots, self.max_rss_mb, self.stop = roots, 0.0, threading.Event()

    def run(self) -> None:
        from standalone import _descendants  # tests/standalone.py

        while not self.stop.wait(1.0):
            for root in self.roots():
                for pid in _descendants(root):
                    try:
                        if b"pyspark.daemon" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                            continue
                        status = Path(f"/proc/{pid}/status").read_text()
                    except OSError:
                        continue
                    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
                    self.max_rss_mb = max(self.max_rss_mb, rss_kb / 1024)


def stream(label: str, master: str, home: Path, config: Path, args, env: dict[str, str], roots=None) -> dict:
    """One `fruits stream --available-now` run; its per-batch figures and the steady rate. ``roots`` gives the pids
    whose descendant Python workers are sampled for memory (default: the `fruits` process itself)."""
    command = [
        FRUITS, "stream", "--home", str(home), "--config", str(config), "--master", master, "--available-now",
        "--weights", str(args.weights), "--max-files-per-trigger", str(args.max_files_per_trigger),
    ]
    load = load_average()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = PythonWorkerMemory(roots or (lambda: [process.pid]))
    memory.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    memory.stop.set()
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if result.returncode != 0:
        sys.exit(f"{label}: {' '.join(command)} failed:\n{result.stderr[-4000:]}")
    batches = [(int(b), int(n), float(s)) for b, n, s in BATCH_LINE.findall(result.stderr)]
    files = sum(n for _, n, _ in batches)
    if files != args.images:  # the last batch's progress line can be lost when the process exits (see the README)
        print(f"{label}: progress lines account for {files} of {args.images} files", file=sys.stderr)
    steady = [(n, s) for b, n, s in batches if b >= args.skip_batches and n == args.max_files_per_trigger]
    if not steady:
        sys.exit("no full micro-batch after the skipped ones: raise --images or lower --max-files-per-trigger")
    steady_files, steady_seconds = sum(n for n, _ in steady), sum(s for _, s in steady)
    return {
        "mode": label,
        "master": master,
        "command_seconds": round(seconds, 1),
        "batches": [{"batch": b, "files": n, "seconds": s} for b, n, s in batches],
        "steady_files": steady_files,
        "steady_seconds": round(steady_seconds, 2),
        "steady_images_per_s": round(steady_files / steady_seconds, 1) if steady_seconds else None,
        "whole_command_images_per_s": round(args.images / seconds, 1),
        "python_worker_max_rss_mb": round(memory.max_rss_mb),
        "load_average_1m_before": round(load, 2),
    }


def feature_rows(home: Path) -> int:
    from deltalake import DeltaTable

    return len(DeltaTable(str(home / "tables" / "features")).to_pandas(columns=["path"]))


def main() -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from standalone import StandaloneCluster  # tests/standalone.py: the cluster the suite's cluster tests start

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--max-files-per-trigger", type=int, default=2000, help="default: the service's own")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="2g", help="memory per worker")
    parser.add_argument("--local-master", default="local[2]")
    parser.add_argument("--rounds", type=int, default=1, help="alternate local and cluster runs this many times")
    parser.add_argument(
        "--skip-batches", type=int, default=1,
        help="micro-batches left out of the steady rate as start-up (default 1: the first, with the model load)",
    )
    parser.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE",
        help="a Spark setting for both modes, written to the runs' --config file under [spark.conf] (repeatable)",
    )
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)

    with tempfile.TemporaryDirectory(prefix="fruits-cluster-bench-") as tmp:
        work = Path(tmp)
        landing = work / "landing"
        fill_landing(landing, args.images)
        config = work / "landing.toml"
        settings = dict(item.split("=", 1) for item in args.conf)
        config.write_text(
            # keep: every run reads the same landing folder, so none may archive the photos away from the next
            f'[paths]\nlanding = "{landing}"\n\n[discovery]\nafter_ingest = "keep"\n\n[spark.conf]\n'
            + "".join(f"{json.dumps(key)} = {json.dumps(value)}\n" for key, value in settings.items())
        )
        runs = []
        started = time.perf_counter()
        with StandaloneCluster(args.workers, args.cores, args.memory, root=work / "cluster", hide=[str(SHARED)]) as cluster:
            cluster_start = time.perf_counter() - started
            for round_ in range(1, args.rounds + 1):
                local_env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
                for label, master, env, roots in (
                    ("local", args.local_master, local_env, None),
                    ("cluster", cluster.master_url, cluster.driver_env(), cluster.worker_pids),
                ):
                    home = work / f"home-{label}-{round_}"
                    run = stream(label, master, home, config, args, env, roots)
                    run["round"] = round_
                    run["feature_rows"] = feature_rows(home)
                    if run["feature_rows"] != args.images:
                        sys.exit(f"{label}: {run['feature_rows']} feature rows for {args.images} images")
                    runs.append(run)
                    print(
                        f"round {round_} {label:7s}: {run['steady_images_per_s']} images/s steady "
                        f"({run['steady_files']} files in {run['steady_seconds']} s), "
                        f"whole command {run['command_seconds']} s",
                        file=sys.stderr,
                        flush=True,
                    )
            isolated = cluster.isolated

    def rate(mode: str) -> float | None:
        chosen = [r for r in runs if r["mode"] == mode]
        seconds = sum(r["steady_seconds"] or 0 for r in chosen)
        return sum(r["steady_files"] or 0 for r in chosen) / seconds if seconds else None  # None: no steady batch

    def rate_after(mode: str, skipped: int) -> float | None:
        """Images/s over the full batches numbered >= ``skipped``, all rounds of ``mode`` together."""
        chosen = [
            (b["files"], b["seconds"]) for r in runs if r["mode"] == mode for b in r["batches"]
            if b["batch"] >= skipped and b["files"] == args.max_files_per_trigger
        ]
        return sum(n for n, _ in chosen) / sum(s for _, s in chosen) if chosen else None

    # How the comparison moves as more of the cluster's warm-up (fresh executor JVMs) is left out.
    by_skipped = {}
    for skipped in range(1, 4):
        local_after, cluster_after = rate_after("local", skipped), rate_after("cluster", skipped)
        if local_after and cluster_after:
            by_skipped[skipped] = {
                "local_images_per_s": round(local_after, 1),
                "cluster_images_per_s": round(cluster_after, 1),
                "cluster_over_local": round(cluster_after / local_after, 3),
            }
    local_rate, cluster_rate = rate("local"), rate("cluster")
    summary = {
        "cpu_count": os.cpu_count(),
        "images": args.images,
        "max_files_per_trigger": args.max_files_per_trigger,
        "skip_batches": args.skip_batches,
        "cluster": f"{args.workers} workers x {args.cores} core(s), {args.memory} each",
        "spark_conf": settings,
        "workers_isolated_from_shared": isolated,
        "cluster_start_seconds": round(cluster_start, 1),
        "runs": runs,
        "local_steady_images_per_s": local_rate and round(local_rate, 1),
        "cluster_steady_images_per_s": cluster_rate and round(cluster_rate, 1),
        "cluster_over_local": round(cluster_rate / local_rate, 3) if local_rate and cluster_rate else None,
        "by_batches_skipped": by_skipped,
    }
    honest.ratio(f"cluster / local, steady images/s: {summary['cluster_over_local']} "
                 f"({summary['cluster_steady_images_per_s']} against {summary['local_steady_images_per_s']})")
    print(json.dumps({**summary, **honest.finish()}, indent=2))


if __name__ == "__main__":
    main()
