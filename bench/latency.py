"""Benchmark: latency of the long-running `fruits stream`, from the moment a photo is handed to landing to its row
being visible in the features Delta table.

1. `fruits stream` (no --available-now: the configured processing-time trigger, or --trigger) runs
   on a fresh home (or ``--home``) in its own process group. Once it logs "stream ... watching", ``--warmup`` photos
   are landed and waited for, uncounted: the first micro-batch starts the Python workers and loads the model.
2. ``--images`` real photos land at about ``--rate`` per second in ``landing/<Class>/``, from this process, the way
   ``--arrive`` says (:data:`ARRIVALS`): ``drop`` (default) as `fruits drop` lands them (ledger row first, then the
   file; the clock starts before the ledger commit), ``rsync`` (a rename within landing) or ``copy`` (a link, which
   the watcher records once quiet); the clock starts right after the rename or link of those two.
3. A thread polls ``tables/features/_delta_log/`` (and the quarantine table's) every ``--poll-ms`` for the next
   ``NNNNN.json`` commit, reads the ``path`` column of the parquet files each one adds, and records each path as
   visible when its commit file was first seen (the lag behind the commit file's mtime is reported as
   ``poll_lag``). Latency = visible - handed over. Every photo must show up in the features table within
   ``--timeout`` seconds of the last one, or the run fails (naming any that were quarantined, with the reason).

Breakdown: each commit's commitInfo carries ``fruits.micro_batch`` = the micro-batch id (written by
``fruits.streaming.outcomes.append``), and the checkpoint's ``offsets/N`` file is written when micro-batch N is
planned (after the ledger source found the ledger's new commits). So each latency splits into *queued*
(handed over -> batch N planned) and *processing* (planned -> commit visible: read, featurize, Delta append).
*Queued* splits again at the ledger commit that records the photo (the same watcher on ``tables/files``): getting
into the ledger (`fruits drop`'s own commit, or discovery's), then the wait for a micro-batch to take it. Also
reported: the stream's own per-batch lines (files per micro-batch, phases of the sink).

Compare triggers with e.g. ``--trigger 500ms`` or ``--flags "--trigger 500ms --conf spark.x=y"``.

Usage: python bench/latency.py [--images 240] [--rate 5] [--arrive drop|rsync|copy] [--warmup 5] [--trigger 2s] [--flags "..."]
                               [--master local[*]] [--weights FILE] [--timeout 180] [--poll-ms 25]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from honest import Honest  # noqa: E402
from ingest_throughput import DEFAULT_WEIGHTS, SAMPLE  # noqa: E402
from proctree import exit_on_sigterm, fruits_process, log_tail, resolved_stream_config  # noqa: E402

from fruits.home.tables import LEDGER, Table  # noqa: E402
from fruits.landing.drop import LedgerRecorder, place_atomically  # noqa: E402
from fruits.streaming.outcomes import MICRO_BATCH_KEY  # noqa: E402

COMMIT = re.compile(r"^(\d{20})\.json$")


def local_path(spark_path: str) -> str:
    """A path as the tables' ``path`` column spells it (``file:/a/b c.jpg``, Hadoop's Path.toString) as a local
    path (``/a/b c.jpg``)."""
    return "/" + re.sub(r"^file:", "", spark_path).lstrip("/")


class CommitWatcher(threading.Thread):
    """Polls the ``_delta_log`` of Delta tables for new commits; records, per landed path, when its row appeared.

    ``seen[path] = (seconds since the epoch when the commit was first listed, table name, micro-batch id, reason)``:
    the micro-batch id comes from the commit's commitInfo, the reason column from quarantine rows.
    """

    def __init__(self, tables: dict[str, Path], poll_seconds: float) -> None:
        super().__init__(daemon=True)
        self.tables, self.poll_seconds = tables, poll_seconds
        self.seen: dict[str, tuple[float, str, int | None, str | None]] = {}
        self.commits: list[dict] = []
        self.error: BaseException | None = None
        self._next: dict[str, int] = {name: 0 for name in tables}  # the next commit to read, per table
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        """Poll until :meth:`finish`; an error is kept in ``self.error`` for the main thread to raise."""
        try:
            while not self._halt.is_set():
                self.poll()
                self._halt.wait(self.poll_seconds)
        except BaseException as exc:  # surfaced by the main thread: a silent watcher would look like lost files
            self.error = exc

    def poll(self) -> None:
        """Read each table's new commits: Delta commit files are numbered without gaps and appear whole, so the
        next one is looked up by name (listing a long ``_delta_log`` 40 times a second costs the stream CPU)."""
        for name, table in self.tables.items():
            while (table / "_delta_log" / f"{self._next[name]:020d}.json").exists():
                self._read_commit(name, table, self._next[name], time.time())
                self._next[name] += 1

    def _read_commit(self, name: str, table: Path, version: int, listed_at: float) -> None:
        """Record the paths of the rows one commit added (renames make Delta commit files appear whole)."""
        commit = table / "_delta_log" / f"{version:020d}.json"
        actions = [json.loads(line) for line in commit.read_text().splitlines() if line]
        info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
        batch = int(info[MICRO_BATCH_KEY]) if MICRO_BATCH_KEY in info else None
        paths = []
        for action in actions:
            if "add" in action:
                columns = ["path", "reason"] if name == "quarantine" else ["path"]
                rows = pq.read_table(table / unquote(action["add"]["path"]), columns=columns).to_pylist()
                paths.extend((local_path(r["path"]), r.get("reason")) for r in rows)
        with self._lock:
            for path, reason in paths:
                self.seen.setdefault(path, (listed_at, name, batch, reason))
            self.commits.append({"table": name, "version": version, "batch": batch, "rows": len(paths), "at": listed_at,
                                 "poll_lag": listed_at - commit.stat().st_mtime})

    def skip_existing(self) -> None:
        """Treat the commits already in the logs as read (a home with history: only new rows are of interest)."""
        for name, table in self.tables.items():
            log = table / "_delta_log"
            if log.is_dir():
                self._next[name] = 1 + max((int(m.group(1)) for n in os.listdir(log) if (m := COMMIT.match(n))), default=-1)

    def visible(self, paths) -> dict[str, tuple[float, str, int | None, str | None]]:
        """The entries of ``paths`` seen so far."""
        with self._lock:
            return {p: self.seen[p] for p in paths if p in self.seen}

    def finish(self) -> None:
        """Stop polling and wait for the thread."""
        self._halt.set()
        self.join()


def pick_photos(count: int, seed: int = 0) -> list[Path]:
    """``count`` real photos in a random (seeded) order across classes, reusing the sample if it is too small."""
    photos = sorted(SAMPLE.glob("*/*.jpg"))
    random.Random(seed).shuffle(photos)
    return [photos[i % len(photos)] for i in range(count)]


# How a photo arrives in landing (--arrive):
# - "drop": what `fruits drop` does: the photo is copied under a hidden temporary name, recorded in the ledger
#   (tables/files, one delta-rs commit), then linked under its final name. Discovery has nothing to do.
# - "rsync": rsync's last step: a hidden temporary name in the same folder, then a rename; the watcher records a file
#   renamed within landing at once.
# - "copy": the final name appears whole but not by a rename (a hard link: what earlier rounds measured, and what
#   `cp`, `scp` or a phone's sync app look like); the watcher records it once quiet (settle).
ARRIVALS = ("drop", "rsync", "copy")


def drop_paced(
    photos: list[Path], landing: Path, prefix: str, rate: float, arrive: str = "drop", ledger: str | None = None
) -> dict[str, float]:
    """Land ``photos`` at ``landing/<Class>/<prefix>-<i>-<name>`` as ``arrive`` says (:data:`ARRIVALS`; "drop" needs
    the ``ledger`` location), one every 1/``rate`` s (0: all at once); returns local path -> time.time() when it was
    handed over: before `fruits drop`'s ledger commit, right after the rename or link of the others."""
    recorder = LedgerRecorder(Table(ledger, LEDGER), landing, "drop") if arrive == "drop" else None
    renamed, start = {}, time.monotonic()
    for index, photo in enumerate(photos):
        if rate > 0:
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
        target = landing / photo.parent.name / f"{prefix}-{index}-{photo.name}"
        handed_over = time.time()
        if arrive == "rsync":
            hidden = target.with_name(f".{target.name}.tmp")
            hidden.parent.mkdir(parents=True, exist_ok=True)
            hidden.write_bytes(photo.read_bytes())
            os.rename(hidden, target)
            placed = target
        else:
            placed = place_atomically(photo, target, recorder=recorder)
        renamed[str(placed)] = handed_over if arrive == "drop" else time.time()
    return renamed


def wait_visible(watcher: CommitWatcher, paths, timeout: float, process) -> dict:
    """Wait until every path is in a table (or ``timeout`` s pass, or the stream dies); returns what was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and watcher.error is None and process.poll() is None:
        seen = watcher.visible(paths)
        if len(seen) == len(paths):
            return seen
        time.sleep(0.05)
    if watcher.error is not None:
        raise watcher.error
    return watcher.visible(paths)


def wait_ready(process, log_path: Path, timeout: float) -> None:
    """Wait for the stream's "stream NAME watching" line; exit with the log's tail if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"fruits stream exited ({process.returncode}) before it was ready:\n{log_tail(log_path)}")
        if re.search(r"stream \S+ watching", log_path.read_text(errors="replace")):
            return
        time.sleep(0.2)
    sys.exit(f"fruits stream not ready after {timeout:.0f} s:\n{log_tail(log_path)}")


def planned_at(checkpoint: Path, batch: int | None) -> float | None:
    """When micro-batch ``batch`` was planned: the mtime of the checkpoint's ``offsets/N`` (written before it runs)."""
    try:
        return (checkpoint / "offsets" / str(batch)).stat().st_mtime if batch is not None else None
    except FileNotFoundError:
        return None


def percentiles(values: list[float]) -> dict:
    """p50, p95, max, min, mean of ``values`` (seconds, 3 decimals); empty dict if there are none."""
    if not values:
        return {}
    ordered = sorted(values)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50": round(cuts[49], 3), "p95": round(cuts[94], 3), "max": round(ordered[-1], 3),
            "min": round(ordered[0], 3), "mean": round(statistics.fmean(ordered), 3), "count": len(ordered)}


# The stream's line per chunk (fruits.streaming.progress): its files, seconds, micro-batch and phases.
CHUNK_LINE = re.compile(r"batch \d+: (\d+) files in ([\d.]+) s .*\(micro-batch (\d+)\); phases (\{.*\})")


def batch_summary(log_text: str, batches: set[int]) -> dict:
    """The stream's own per-chunk lines, restricted to the micro-batches ``batches`` (those of counted photos), and
    the median seconds of each phase of the sink (fruits.streaming.progress.Phases)."""
    found = [(int(b), int(n), float(s), json.loads(p)) for n, s, b, p in CHUNK_LINE.findall(log_text)]
    found = [line for line in found if line[0] in batches]
    lines = [(b, n, s) for b, n, s, _ in found]
    phases = sorted({name for *_, p in found for name in p})
    files = [n for _, n, _ in lines]
    return {
        "micro_batches": len(batches), "micro_batches_logged": len(lines),
        "files_per_batch": {"min": min(files, default=0), "mean": round(statistics.fmean(files), 2) if files else 0,
                            "max": max(files, default=0)},
        "batch_seconds": percentiles([s for _, _, s in lines]),
        "phase_seconds_median": {k: round(statistics.median(p.get(k, 0.0) for *_, p in found), 3) for k in phases},
        "batches": [{"batch": b, "files": n, "seconds": s} for b, n, s in lines],
    }


def main() -> None:
    """Start the stream, warm it up, drop the photos at the given rate, wait for each row, print the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240, help="counted photos (default 240; the issue asks >= 200)")
    parser.add_argument("--rate", type=float, default=5.0, help="photos dropped per second (default 5)")
    parser.add_argument("--warmup", type=int, default=5, help="uncounted photos dropped and awaited first (default 5)")
    parser.add_argument("--trigger", help="the stream's --trigger (default: the configured one)")
    parser.add_argument("--flags", default="", help='extra `fruits stream` flags, e.g. "--trigger 500ms"')
    parser.add_argument("--arrive", choices=ARRIVALS, default="drop",
                        help="how each photo lands: drop (`fruits drop`: ledger row first), rsync (rename within "
                        "landing), copy (a link: the watcher waits until it is quiet); default drop")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--timeout", type=float, default=180.0, help="s after the last drop for every row to appear")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="s for start-up and the warm-up batch")
    parser.add_argument("--poll-ms", type=float, default=25.0, help="how often _delta_log is listed (default 25 ms)")
    parser.add_argument("--home", help="run on this existing home (e.g. the million-file home bench/discovery_scale.py "
                        "leaves, with --flags \"--config keep.toml\"), not a fresh one; only new commits are read")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)
    exit_on_sigterm()

    flags = (["--trigger", args.trigger] if args.trigger else []) + shlex.split(args.flags)
    resolved = resolved_stream_config(flags)
    photos = pick_photos(args.warmup + args.images)
    with tempfile.TemporaryDirectory(prefix="fruits-latency-") as tmp:
        home = Path(args.home).resolve() if args.home else Path(tmp).resolve() / "home"
        landing, log_path = home / "landing", Path(tmp) / "stream.log"
        landing.mkdir(parents=True, exist_ok=bool(args.home))
        env = {"FRUITS_HOME": str(home), "FRUITS_WEIGHTS": args.weights, "FRUITS_MASTER": args.master}
        watcher = CommitWatcher({"features": home / "tables/features", "quarantine": home / "tables/quarantine"},
                                args.poll_ms / 1000)
        ledger = CommitWatcher({"files": home / "tables/files"}, args.poll_ms / 1000)  # when discovery recorded it
        for each in (watcher, ledger):
            each.skip_existing()
        with fruits_process(["stream", *flags], env, log_path) as process:
            wait_ready(process, log_path, args.ready_timeout)
            watcher.start()
            ledger.start()
            try:
                run = f"{int(time.time())}-"  # new names in a reused home
                arrive = {"arrive": args.arrive, "ledger": str(home / "tables" / "files")}
                warm = drop_paced(photos[: args.warmup], landing, run + "warmup", rate=0, **arrive)
                if len(wait_visible(watcher, warm, args.ready_timeout, process)) < len(warm):
                    sys.exit(f"warm-up photos not visible after {args.ready_timeout:.0f} s:\n{log_tail(log_path)}")
                print(f"warmed up; dropping {args.images} photos at {args.rate}/s", file=sys.stderr, flush=True)
                renamed = drop_paced(photos[args.warmup :], landing, run + "photo", args.rate, **arrive)
                seen = wait_visible(watcher, renamed, args.timeout, process)
            finally:
                watcher.finish()
                ledger.finish()
        stream_exit = process.returncode
        log_text = log_path.read_text(errors="replace")
        checkpoint = home / "checkpoints" / "ingest"
        missing = sorted(set(renamed) - set(seen))
        quarantined = {p: s[3] for p, s in seen.items() if s[1] != "features"}
        if missing or quarantined:
            sys.exit(
                f"{len(missing)} of {len(renamed)} dropped photos not visible {args.timeout:.0f} s after the last "
                f"drop (e.g. {missing[:3]}); {len(quarantined)} quarantined: {dict(list(quarantined.items())[:3])}\n"
                f"stream log tail:\n{log_tail(log_path)}"
            )
        latency = [seen[p][0] - renamed[p] for p in renamed]
        planned = {p: planned_at(checkpoint, seen[p][2]) for p in renamed}
        queued = [planned[p] - renamed[p] for p in renamed if planned[p] is not None]
        recorded = ledger.visible(renamed)
        discovered = [recorded[p][0] - renamed[p] for p in recorded]
        waited = [planned[p] - recorded[p][0] for p in recorded if planned[p] is not None]
        processing = [seen[p][0] - planned[p] for p in renamed if planned[p] is not None]
        drops = sorted(renamed.values())
        commits = watcher.commits

    summary = percentiles(latency)
    honest.ratio(f"latency p50 {summary['p50']:.2f} s, p95 {summary['p95']:.2f} s at {args.rate}/s, --arrive {args.arrive} "
                 f"(target p95 <= 2 s: {'met' if summary['p95'] <= 2 else 'missed'})")
    print(json.dumps({
        "images": len(renamed), "warmup": args.warmup, "arrive": args.arrive, "master": args.master,
        "trigger": resolved["trigger"], "max_files_per_trigger": resolved["max_files_per_trigger"],
        "stream_flags": resolved["flags"], "poll_ms": args.poll_ms,
        "rate_requested_per_s": args.rate,
        "rate_achieved_per_s": round((len(drops) - 1) / (drops[-1] - drops[0]), 2) if len(drops) > 1 else None,
        "latency_s": percentiles(latency),
        "breakdown_s": {
            "queued_arrival_to_batch_planned": percentiles(queued),
            "of_which_arrival_to_ledger_commit_seen": percentiles(discovered),
            "of_which_ledger_commit_seen_to_batch_planned": percentiles(waited),
            "processing_batch_planned_to_visible": percentiles(processing),
            "poll_lag_commit_written_to_seen": percentiles([c["poll_lag"] for c in commits if c["rows"]]),
        },
        "stream": batch_summary(log_text, {seen[p][2] for p in renamed if seen[p][2] is not None}),
        "stream_exit_code": stream_exit,
        **honest.finish(),
    }, indent=2))


if __name__ == "__main__":
    main()
