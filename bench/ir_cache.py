"""Benchmark: what a new home pays for the OpenVINO IR before its first batch, per-home cache against per-user cache.

Before, the IR was cached under each home (HOME/cache): every new home converted the Keras model again. Now it is
cached per user ([model] ir_cache, else $XDG_CACHE_HOME/fruits or ~/.cache/fruits). Both cases run here, in one run,
alternating, on fresh homes: an empty IR cache (what every new home paid before: ``[model] ir_cache`` inside that
home) and a warm per-user cache (what a new home pays now).

By default the featurizer set-up is timed (``fruits.model.runtimes.make_featurizer``, which `fruits stream` runs before the
JVM starts: the only step the cache changes). ``--stream`` times the whole `fruits stream --available-now` over
``--photos`` real photos instead, and its first micro-batch (the stream's ``batch 0`` line).

Usage: python bench/ir_cache.py [--rounds 2] [--stream] [--photos 64] [--master local[2]] [--user-cache DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from honest import Honest  # noqa: E402
from ingest_throughput import BATCH_LINE, DEFAULT_WEIGHTS, fill_landing, run_fruits  # noqa: E402


def first_setup(home: Path, ir_cache: Path) -> dict:
    """Seconds of ``make_featurizer`` (weights resolved, IR converted or found) for the fresh ``home``."""
    from fruits.config import load_config
    from fruits.model.weights import resolve_weights
    from fruits.model.runtimes import make_featurizer

    overrides = {"paths": {"home": str(home)}, "model": {"weights": str(DEFAULT_WEIGHTS), "ir_cache": str(ir_cache)}}
    started = time.perf_counter()
    make_featurizer(load_config(overrides=overrides, environ={}), resolve_weights(str(DEFAULT_WEIGHTS)))
    return {"setup_seconds": round(time.perf_counter() - started, 2)}


def first_stream(home: Path, ir_cache: Path, source: Path, master: str) -> dict:
    """`fruits stream --available-now` of ``source`` on the fresh ``home`` with ``[model] ir_cache = ir_cache``."""
    shutil.copytree(source, home / "landing")
    site = home.parent / f"{home.name}.toml"
    site.write_text(f'[model]\nir_cache = "{ir_cache}"\n')
    env = {"FRUITS_HOME": str(home), "FRUITS_WEIGHTS": str(DEFAULT_WEIGHTS), "FRUITS_MASTER": master}
    seconds, log = run_fruits(["stream", "--available-now", "--config", str(site)], env)
    batches = {int(b): float(s) for b, _, s in BATCH_LINE.findall(log)}
    return {"whole_command_seconds": round(seconds, 1), "first_batch_seconds": batches.get(0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stream", action="store_true", help="time the whole `fruits stream` instead of the set-up")
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--user-cache", help="the per-user IR cache of the warm runs (default: a new one, filled by a "
                        "warm-up conversion before the rounds)")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)

    runs: dict[str, list[dict]] = {"per_home_cold": [], "per_user_warm": []}
    key = "whole_command_seconds" if args.stream else "setup_seconds"
    with tempfile.TemporaryDirectory(prefix="fruits-ir-cache-") as tmp:
        source, user_cache = Path(tmp) / "source", Path(args.user_cache or Path(tmp) / "user-cache")
        fill_landing(source, args.photos)
        first_setup(Path(tmp) / "warm-up", user_cache)  # fills the per-user cache once, if it is not warm yet

        def run(home: Path, cache: Path) -> dict:
            return first_stream(home, cache, source, args.master) if args.stream else first_setup(home, cache)

        for round_ in range(args.rounds):
            cold = Path(tmp) / f"cold{round_}"
            runs["per_home_cold"].append(run(cold, cold / "cache"))
            runs["per_user_warm"].append(run(Path(tmp) / f"warm{round_}", user_cache))
            print(json.dumps({k: v[-1] for k, v in runs.items()}), file=sys.stderr, flush=True)
    mean = {k: sum(r[key] for r in v) / len(v) for k, v in runs.items()}
    honest.ratio(f"new home, {key}: per-home cache {mean['per_home_cold']:.2f} s -> per-user cache "
                 f"{mean['per_user_warm']:.2f} s ({mean['per_home_cold'] - mean['per_user_warm']:.1f} s saved)")
    print(json.dumps({"mode": key, "photos": args.photos if args.stream else None, "runs": runs,
                      **honest.finish()}, indent=2))


if __name__ == "__main__":
    main()
