"""Benchmark: what a new home's first `fruits stream` pays for the OpenVINO IR, per-home cache against per-user cache.

Before, the IR was cached under each home (HOME/cache): every new home converted the Keras model again. Now it is
cached per user ([model] ir_cache, else $XDG_CACHE_HOME/fruits or ~/.cache/fruits). Both cases run here, in one run,
alternating: `fruits stream --available-now` over the same few real photos on a fresh home, with an empty IR cache
(what every new home paid before: ``[model] ir_cache`` set to a folder inside that home) and with a warm per-user
cache (what a new home pays now). The whole command and its first micro-batch (the stream's ``batch 0`` line) are
timed.

Usage: python bench/ir_cache.py [--photos 64] [--rounds 2] [--master local[2]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from ingest_throughput import BATCH_LINE, DEFAULT_WEIGHTS, fill_landing, run_fruits  # noqa: E402


def first_stream(home: Path, source: Path, ir_cache: Path, master: str) -> dict:
    """`fruits stream --available-now` on the fresh ``home`` with ``[model] ir_cache = ir_cache``."""
    import shutil

    shutil.copytree(source, home / "landing")
    site = home.parent / f"{home.name}.toml"
    site.write_text(f'[model]\nir_cache = "{ir_cache}"\n')
    env = {"FRUITS_HOME": str(home), "FRUITS_WEIGHTS": str(DEFAULT_WEIGHTS), "FRUITS_MASTER": master}
    seconds, log = run_fruits(["stream", "--available-now", "--config", str(site)], env)
    batches = {int(b): float(s) for b, _, s in BATCH_LINE.findall(log)}
    return {"whole_command_seconds": round(seconds, 1), "first_batch_seconds": batches.get(0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()

    load_before = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {"per_home_cold": [], "per_user_warm": []}
    with tempfile.TemporaryDirectory(prefix="fruits-ir-cache-") as tmp:
        source, user_cache = Path(tmp) / "source", Path(tmp) / "user-cache"
        fill_landing(source, args.photos)
        first_stream(Path(tmp) / "warm-up", source, user_cache, args.master)  # fills the per-user cache once
        for round_ in range(args.rounds):
            cold = Path(tmp) / f"cold{round_}"
            runs["per_home_cold"].append(first_stream(cold, source, cold / "cache", args.master))
            runs["per_user_warm"].append(first_stream(Path(tmp) / f"warm{round_}", source, user_cache, args.master))
            print(json.dumps({k: v[-1] for k, v in runs.items()}), file=sys.stderr, flush=True)
    mean = {k: sum(r["whole_command_seconds"] for r in v) / len(v) for k, v in runs.items()}
    print(f"new home, whole command: per-home cache {mean['per_home_cold']:.1f} s -> per-user cache "
          f"{mean['per_user_warm']:.1f} s ({mean['per_home_cold'] / mean['per_user_warm']:.2f}x faster, "
          f"{mean['per_home_cold'] - mean['per_user_warm']:.1f} s saved)")
    print(json.dumps({"photos": args.photos, "master": args.master, "load_avg_before": load_before,
                      "load_avg_after": [round(x, 2) for x in os.getloadavg()], "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
