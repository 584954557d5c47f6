"""Benchmark: steady `fruits stream --available-now` throughput with an ``s3a://`` home (a real S3 server, SeaweedFS
on loopback, tests/s3server.py) against a local-disk home, in the same run, over the same photos.

Each round lands the same N real photos (the Fruits-360 sample, cycled under new names) in a fresh home of each
kind, `fruits drop` for S3 (one conditional PUT each, timed too) and a plain copy for local disk, then runs one
`fruits stream --available-now`. The steady rate comes from the stream's per-batch lines over the full micro-batches
after the first (JVM start-up and model load left out), as in bench/ingest_throughput.py. Rounds alternate
local, s3, local, s3... so the machine's load hits both alike.

Usage: python bench/s3_throughput.py [--images 2000] [--rounds 2] [--max-files-per-trigger 500] [--master local[*]]
Needs the SeaweedFS binary (`make weed`) and hadoop-aws's jars (`make s3-jars`).
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from ingest_throughput import BATCH_LINE, DEFAULT_WEIGHTS, fill_landing, run_fruits, steady_rate  # noqa: E402
from honest import Honest  # noqa: E402
from proctree import exit_on_sigterm  # noqa: E402
from s3server import start_server, weed_binary  # noqa: E402


def one_run(kind: str, source: Path, env: dict[str, str], home: str, flags: list[str]) -> dict:
    """Land ``source`` in ``home`` and stream it once; the figures of that run."""
    landed = time.perf_counter()
    if kind == "s3":
        run_fruits(["drop", str(source)], {**env, "FRUITS_HOME": home})
    else:
        shutil.copytree(source, Path(home) / "landing")
    land_seconds = time.perf_counter() - landed
    seconds, log = run_fruits(["stream", "--available-now", *flags], {**env, "FRUITS_HOME": home})
    batches = [(int(b), int(n), float(s)) for b, n, s in BATCH_LINE.findall(log)]
    rate, steady = steady_rate(batches)
    return {"kind": kind, "rate": rate, "steady_batches": steady, "stream_seconds": seconds, "land_seconds": land_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-files-per-trigger", type=int, default=500)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--master", default="local[*]")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)
    binary = weed_binary()
    if binary is None:
        sys.exit("no SeaweedFS binary: run `make weed` (.ci/build-weed)")
    exit_on_sigterm()  # the finally below stops the server (a session of its own) when the smoke pool stops this run
    workdir = Path(tempfile.mkdtemp(prefix="fruits-s3-bench-"))
    source = workdir / "photos"
    # weed's start mostly waits (its master's and filer's start-up holds): it runs while the photos are copied and,
    # in a smoke run, while the first local stream runs. A real run's streams never run beside it.
    starting = ThreadPoolExecutor(1).submit(start_server, binary, workdir / "seaweedfs")
    env = {"FRUITS_WEIGHTS": args.weights, "FRUITS_MASTER": args.master}
    flags = ["--max-files-per-trigger", str(args.max_files_per_trigger)]
    runs = []
    try:
        fill_landing(source, args.images)
        if not args.smoke:
            env.update(starting.result().environment)  # every run's, as a smoke run's from its first s3 run on
        for round_ in range(args.rounds):
            for kind in ("local", "s3"):
                bucket = f"bench-{secrets.token_hex(4)}"
                home = f"s3a://{bucket}/fruits" if kind == "s3" else str(workdir / f"local-{round_}")
                if kind == "s3":
                    server = starting.result()
                    server.create_bucket(bucket)
                    env.update(server.environment)
                runs.append(one_run(kind, source, env, home, flags))
                print(f"round {round_ + 1} {kind}: {runs[-1]}", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(Exception):  # a failed start raised in the try, unless an earlier error did
            starting.result().stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(runs, args, honest)


def report(runs: list[dict], args: argparse.Namespace, honest: Honest) -> None:
    """The ratio lines first, then each run."""
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None  # None: no full batch after the first (tiny runs)

    rate = {k: median([r["rate"] for r in runs if r["kind"] == k and r["rate"]]) for k in ("local", "s3")}
    land = {k: median([r["land_seconds"] for r in runs if r["kind"] == k]) for k in ("local", "s3")}
    ratio = f"{rate['s3'] / rate['local']:.2f}x" if rate["s3"] and rate["local"] else "n/a (no steady batch)"
    honest.ratio(f"s3a:// home / local home, steady images/s: {ratio} "
                 f"({rate['s3']} vs {rate['local']} images/s; medians of {args.rounds} rounds)")
    honest.ratio(f"landing {args.images} photos: fruits drop to S3 {land['s3']:.1f} s ({args.images / land['s3']:.0f} "
                 f"photos/s), local copy {land['local']:.1f} s")
    for run in runs:
        print(run)
    honest.finish()


if __name__ == "__main__":
    main()
