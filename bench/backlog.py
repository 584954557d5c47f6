"""Benchmark: memory and table health while `fruits stream --available-now` ingests a large backlog.

1. A fresh home's landing folder is filled with ``--images`` real photos (the Fruits-360 sample, reused under new
   names above 3,013; 20,000 as in the issue by default).
2. `fruits stream --available-now` ingests them, rate-limited by the configured max files per trigger (1,000 as
   shipped; pass ``--flags "--max-files-per-trigger 500"`` etc.). Every ``--interval`` s (0.2) the whole process
   tree is read from /proc: the `fruits` driver, the JVM, the PySpark daemon and its Python workers. Reported: the
   peak of the sum of VmRSS over the tree (the issue's measure; pages the forked workers share count once per
   process), the peak of the sum of Pss (shared pages split between processes), and per kind (driver / java /
   python) the peak sum and the largest single process. Also the whole-command time and the steady images/s from
   the stream's own per-batch lines (full batches after the first).
3. Table health: for tables/features and tables/quarantine, the data files of the current Delta snapshot (read
   with `deltalake`, no Spark), the parquet files on disk, their total and mean size, and the rows.
4. With ``--compact`` (the default), `fruits refit-pca` on the same home (timed and sampled the same way), then the
   same table health again: refit-pca may compact the tables; whatever the counts are is reported.

Usage: python bench/backlog.py [--images 20000] [--flags "--max-files-per-trigger 1000"] [--no-compact]
                               [--master local[*]] [--weights FILE] [--interval 0.2]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.parquet as pq
from deltalake import DeltaTable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_throughput import BATCH_LINE, DEFAULT_WEIGHTS, fill_landing, steady_rate  # noqa: E402
from honest import Honest  # noqa: E402
from proctree import (  # noqa: E402
    TreeMemory, exit_on_sigterm, fruits_process, log_tail, resolved_stream_config,
)

TABLES = ["features", "quarantine", "pca"]


def sampled_run(args: list[str], env: dict[str, str], log_path: Path, interval: float) -> dict:
    """Run ``fruits ARGS`` to its end while sampling its process tree's memory; exits with the log's tail if it
    fails. Returns the whole-command seconds, the memory peaks (:class:`TreeMemory`) and the log."""
    started = time.perf_counter()
    with fruits_process(args, env, log_path) as process:
        memory = TreeMemory(process.pid, interval)
        memory.start()
        try:
            process.wait()
        finally:
            peaks = memory.finish()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"fruits {shlex.join(args)} failed ({process.returncode}):\n{log_tail(log_path)}")
    return {"whole_command_seconds": round(seconds, 1), "memory": peaks, "log": log_path.read_text(errors="replace")}


def _file_stats(paths: list[Path]) -> dict:
    """Count, total and mean size (MiB) of ``paths``."""
    sizes = [p.stat().st_size for p in paths]
    return {"files": len(sizes), "total_mib": round(sum(sizes) / 2**20, 2),
            "mean_kib": round(sum(sizes) / len(sizes) / 2**10, 1) if sizes else None}


def table_health(table: Path) -> dict:
    """Data files of a Delta table: those of the current snapshot (deltalake) and the parquet files on disk (data
    folders only, not _delta_log), with sizes; rows of the snapshot; version and log entries."""
    if not DeltaTable.is_deltatable(str(table)):
        return {"exists": False}
    delta = DeltaTable(str(table))
    uris = delta.file_uris() if hasattr(delta, "file_uris") else [str(table / f) for f in delta.files()]
    snapshot = [Path(unquote(urlparse(uri).path)) for uri in uris]
    on_disk = [p for p in table.rglob("*.parquet") if "_delta_log" not in p.relative_to(table).parts]
    log_entries = list((table / "_delta_log").glob("*.json"))
    return {
        "version": delta.version(),
        "snapshot": {**_file_stats(snapshot), "rows": sum(pq.ParquetFile(p).metadata.num_rows for p in snapshot)},
        "on_disk": _file_stats(on_disk),
        "log_commits": len(log_entries),
        "log_checkpoints": len(list((table / "_delta_log").glob("*.checkpoint*.parquet"))),
    }


def health(home: Path) -> dict:
    """:func:`table_health` of each table under ``home/tables``."""
    return {name: table_health(home / "tables" / name) for name in TABLES}


def main() -> None:
    """Fill the landing folder, stream it while sampling memory, read table health, refit, print the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="photos in the backlog (default 20,000)")
    parser.add_argument("--flags", default="", help='extra `fruits stream` flags, e.g. "--max-files-per-trigger 500"')
    parser.add_argument("--compact", action=argparse.BooleanOptionalAction, default=True,
                        help="then run `fruits refit-pca` and report table health again (default on)")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between memory samples (default 0.2)")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)
    exit_on_sigterm()

    flags = ["--available-now", *shlex.split(args.flags)]
    resolved = resolved_stream_config(flags)
    with tempfile.TemporaryDirectory(prefix="fruits-backlog-") as tmp:
        home = Path(tmp).resolve() / "home"
        fill_landing(home / "landing", args.images)
        env = {"FRUITS_HOME": str(home), "FRUITS_WEIGHTS": args.weights, "FRUITS_MASTER": args.master}
        print(f"landing filled with {args.images} photos; streaming", file=sys.stderr, flush=True)
        stream = sampled_run(["stream", *flags], env, Path(tmp) / "stream.log", args.interval)
        batches = [(int(b), int(n), float(s)) for b, n, s in BATCH_LINE.findall(stream.pop("log"))]
        rate, used = steady_rate(batches)
        after_stream = health(home)
        rows = sum(after_stream[t].get("snapshot", {}).get("rows", 0) for t in ("features", "quarantine"))
        if rows != args.images:
            print(f"features + quarantine hold {rows} rows for {args.images} photos", file=sys.stderr)
        refit = None
        if args.compact:
            print("refit-pca", file=sys.stderr, flush=True)
            refit = sampled_run(["refit-pca"], env, Path(tmp) / "refit.log", args.interval)
            refit.pop("log")
            refit["tables_after"] = health(home)

    peak = stream["memory"]["peak_total_rss_mib"]
    honest.ratio(f"{args.images} photos: steady {round(rate, 1) if rate else None} images/s, peak process-tree RSS "
                 f"{peak} MiB = {peak / max(args.images, 1):.3f} MiB per photo; rows accounted: {rows == args.images}")
    print(json.dumps({
        "images": args.images, "master": args.master, **resolved,
        "stream": {
            **stream,
            "steady_images_per_s": round(rate, 1) if rate else None, "steady_batches": used,
            "micro_batches": len(batches), "files_in_batch_lines": sum(n for _, n, _ in batches),
            "files_per_batch": sorted({n for _, n, _ in batches}, reverse=True),
            "batch_seconds": [s for _, _, s in batches],
        },
        "rows_accounted": rows == args.images,
        "tables_after_stream": after_stream,
        "refit_pca": refit,
        **honest.finish(),
    }, indent=2))


if __name__ == "__main__":
    main()
