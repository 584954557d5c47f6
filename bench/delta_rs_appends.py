"""Benchmark: one-row delta-rs appends through a table kept loaded, against a :class:`fruits.home.tables.Table` handle
(the same, loaded again every ``RELOAD_EVERY`` commits), as the commit count grows. In one run, interleaved.

Two fresh ledgers (the ledger's schema, :func:`fruits.home.ledger.record`'s rows) get ``--commits`` one-row appends each,
one to each in turn: ``kept`` through a table loaded once and never again (what the stream did before), and
``reloaded`` through a :class:`~fruits.home.tables.Table` handle. Prints the ratio line first (kept / reloaded, median
seconds of an append over the last ``--window`` commits), then JSON with the medians per window.

Usage: python bench/delta_rs_appends.py [--commits 1000] [--window 100] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fruits.home.ledger import FileVersion, record  # noqa: E402
from fruits.home.tables import LEDGER, Table  # noqa: E402
from honest import Honest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--workdir", default=None)
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)
    with tempfile.TemporaryDirectory(prefix="fruits-appends-", dir=args.workdir) as tmp:
        for name in ("kept", "reloaded"):
            Table(os.path.join(tmp, name), LEDGER).ensure()
        targets = {
            "kept": Table(os.path.join(tmp, "kept"), LEDGER, reload_every=sys.maxsize),
            "reloaded": Table(os.path.join(tmp, "reloaded"), LEDGER),
        }
        seconds: dict[str, list[float]] = {name: [] for name in targets}
        for index in range(args.commits):
            for name, target in targets.items():
                version = FileVersion(f"file:/bench/{name}/{index}.jpg", 1000 + index, 1_700_000_000_000, "bench")
                started = time.perf_counter()
                record(target, [version], "watch")
                seconds[name].append(time.perf_counter() - started)
    windows = {
        name: [round(statistics.median(values[start : start + args.window]) * 1000, 1)
               for start in range(0, len(values), args.window)]
        for name, values in seconds.items()
    }
    last = {name: statistics.median(values[-args.window :]) for name, values in seconds.items()}
    honest.ratio(f"after {args.commits} commits: kept/reloaded = {last['kept'] / last['reloaded']:.2f}x "
                 f"({last['kept'] * 1000:.0f} ms against {last['reloaded'] * 1000:.0f} ms per append)")
    print(json.dumps({"commits": args.commits, "window": args.window, "median_ms_per_window": windows,
                      "total_seconds": {name: round(sum(values), 1) for name, values in seconds.items()},
                      **honest.finish()}, indent=2))


if __name__ == "__main__":
    main()
