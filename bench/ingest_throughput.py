"""Benchmark: `fruits stream --available-now` end to end (landing -> Delta) and `fruits refit-pca`, real images.

Two stream runs of different sizes in one go, on the same machine, so that JVM start-up and model loading
(the fixed cost) separate from the steady-state rate (the marginal images/s):

    marginal rate = (N_large - N_small) / (t_large - t_small)

Images come from ../shared/data/fruits360-sample (3,013 real photos), copied under distinct names when N is larger.
Usage: python bench/ingest_throughput.py --weights FILE [--small 500] [--large 3013] [--master local[*]]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "fruits360-sample"
FRUITS = str(Path(sys.executable).with_name("fruits"))


def fill_landing(landing: Path, count: int) -> None:
    """Copy ``count`` real photos into class folders of ``landing`` (cycling through the sample with new names)."""
    photos = sorted(SAMPLE.glob("*/*.jpg"))
    for index in range(count):
        source = photos[index % len(photos)]
        target = landing / source.parent.name / f"{index // len(photos)}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([FRUITS, *args], env={**os.environ, **env}, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"fruits {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return elapsed, result.stderr


def stream_run(count: int, weights: str, master: str, workdir: Path) -> dict:
    home = workdir / f"home-{count}"
    fill_landing(home / "landing", count)
    env = {"FRUITS_HOME": str(home), "FRUITS_WEIGHTS": weights, "FRUITS_MASTER": master}
    seconds, log = timed(["stream", "--available-now"], env)
    batches = [(int(n), float(s)) for n, s in re.findall(r"batch \d+: (\d+) files in ([\d.]+) s", log)]
    assert sum(n for n, _ in batches) == count, f"stream read {sum(n for n, _ in batches)} of {count} files"
    refit_seconds, refit_log = timed(["refit-pca"], env)
    fit = float(re.search(r"rows of features version \d+ (?:\(\d+ new\) )?in ([\d.]+) s", refit_log).group(1))
    return {"images": count, "stream_seconds": round(seconds, 1), "batches": batches,
            "refit_command_seconds": round(refit_seconds, 1), "pca_fit_seconds": fit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=3013)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fruits-bench-") as tmp:
        small = stream_run(args.small, args.weights, args.master, Path(tmp))
        large = stream_run(args.large, args.weights, args.master, Path(tmp))
    marginal = (large["images"] - small["images"]) / (large["stream_seconds"] - small["stream_seconds"])
    summary = {
        "cpu_count": os.cpu_count(),
        "master": args.master,
        "runs": [small, large],
        "whole_command_images_per_s": {str(r["images"]): round(r["images"] / r["stream_seconds"], 1) for r in (small, large)},
        "marginal_images_per_s": round(marginal, 1),
        "fixed_cost_seconds": round(small["stream_seconds"] - small["images"] / marginal, 1),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
