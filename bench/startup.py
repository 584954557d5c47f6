"""Benchmark: how long `fruits stream` takes to reach "watching", on a fresh home and on a restart, phase by phase.

Each round starts `fruits stream` (the long-running command, its own process tree) on a fresh home whose landing
folder holds ``--photos`` real photos (default 0: the empty home of a first start), waits for its
``stream NAME watching`` line, stops it (SIGTERM), then starts it again on the same home (the restart: checkpoint,
ledger and tables already there) and waits for the line again. Seconds are counted from the moment the process is
started; the phases come from the timestamps of the command's own log lines (weights resolved, featurizer ready,
Spark session up, home prepared, discovery's first listing, watching), so a change to start-up shows where it went.
Caches are warm (a first, uncounted start fills the IR cache and Ivy's jar cache if they are empty; ``--no-warm-up``
leaves it out where they are warm already, as in the suite's smoke run).

Usage: python bench/startup.py [--rounds 3] [--photos 0] [--master local[*]] [--no-warm-up]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from honest import Honest  # noqa: E402
from ingest_throughput import DEFAULT_WEIGHTS, fill_landing  # noqa: E402
from latency import wait_ready  # noqa: E402
from proctree import exit_on_sigterm, fruits_process  # noqa: E402

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$", re.M)
# The log lines that mark the end of a start-up phase, in the order they come.
MILESTONES = {
    "weights": r"^weights ",
    "featurizer": r"^featurizer ",
    "spark_session": r"^Spark session up",
    "home_prepared": r"^home prepared",
    "watching": r"^stream \S+ watching",
}


def phases(log_text: str, started: float) -> dict[str, float]:
    """Seconds from ``started`` (epoch) to the first log line of each milestone."""
    found = {}
    for stamp, message in LOG_LINE.findall(log_text):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() - started
        for name, pattern in MILESTONES.items():
            if name not in found and re.search(pattern, message):
                found[name] = round(at, 2)
    return found


def start_once(home: Path, env: dict[str, str], log_path: Path, timeout: float) -> dict:
    """Start `fruits stream` on ``home``, wait for "watching", stop it; the seconds and phases."""
    started = time.time()
    with fruits_process(["stream", "--home", str(home)], env, log_path) as process:
        wait_ready(process, log_path, timeout)
        seconds = time.time() - started
    return {"to_watching_seconds": round(seconds, 2), "phases": phases(log_path.read_text(errors="replace"), started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", type=int, default=0, help="photos in the fresh home's landing folder (default 0)")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--warm-up", action=argparse.BooleanOptionalAction, default=True,
                        help="one uncounted start first, to fill empty caches (default on)")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)
    exit_on_sigterm()
    env = {"FRUITS_WEIGHTS": args.weights, "FRUITS_MASTER": args.master}
    runs: dict[str, list[dict]] = {"fresh": [], "restart": []}
    with tempfile.TemporaryDirectory(prefix="fruits-startup-") as tmp:
        work = Path(tmp)
        if args.photos:
            fill_landing(work / "photos", args.photos)
        if args.warm_up:
            start_once(work / "warm-up", env, work / "warm-up.log", args.ready_timeout)  # warm caches, uncounted
        for round_ in range(args.rounds):
            home = work / f"home-{round_}"
            if args.photos:
                shutil.copytree(work / "photos", home / "landing")
            for kind in ("fresh", "restart"):
                runs[kind].append(start_once(home, env, work / f"{kind}-{round_}.log", args.ready_timeout))
                print(f"round {round_ + 1} {kind}: {runs[kind][-1]}", file=sys.stderr, flush=True)
    median = {kind: statistics.median(r["to_watching_seconds"] for r in values) for kind, values in runs.items()}
    honest.ratio(f"fresh home to \"watching\": median {median['fresh']:.1f} s of {args.rounds} (target <= 10 s)")
    honest.ratio(f"restart to \"watching\": median {median['restart']:.1f} s of {args.rounds}")
    print(json.dumps({"photos": args.photos, "master": args.master, "runs": runs, "median_to_watching_seconds": median,
                      **honest.finish()}, indent=2))


if __name__ == "__main__":
    main()
