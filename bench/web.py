"""Benchmark `fruits serve` (a real server process, real photos, real HTTP over loopback).

- ``identify``: latency of ``POST /api/identify`` for ``--images`` real photos (default 200), warm (``--warmup``
  requests first, uncounted), with 1 and with 8 concurrent clients (``--clients 1,8``). The reference home is
  ``--home`` if given, else one built here: 80 % of each class of the shared sample (``fruits drop``), streamed
  (``fruits stream --available-now``) and fitted (``fruits refit-pca``); the photos asked about are the other 20 %.
- ``upload``: photos accepted per second by ``POST /api/photos`` (one photo per request, ``--clients`` concurrent,
  default 8), into a fresh home, with no stream running; every upload must answer 202 and land. The sample's photos
  are 100x100 JPEGs of ~4.5 KB; ``--upscale 4032`` sends each one upscaled to a 12 MP JPEG instead, the size of a
  phone photo.
- ``visible``: with a real ``fruits stream`` (configured trigger, or ``--trigger``) and ``fruits serve`` on one
  fresh home, photos are uploaded one per request at ``--rate`` per second; latency = from the 202 answer (the photo
  is in the landing folder) to its row in the features table (bench/latency.py's commit watcher: the first listing
  of the Delta commit that adds it). The dashboard shows it at its next poll (``[web] refresh_seconds``) after that.

Each mode prints one JSON object. Usage:
  python bench/web.py identify [--home H] [--images 200] [--clients 1,8] [--warmup 20]
  python bench/web.py upload [--images 400] [--clients 8] [--upscale 4032]
  python bench/web.py visible [--images 60] [--rate 2] [--trigger 1s]
Common: [--weights FILE] [--master local[2]] [--port 8765]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_throughput import DEFAULT_WEIGHTS, SAMPLE, run_fruits  # noqa: E402
from latency import CommitWatcher, batch_summary, percentiles, pick_photos, wait_ready, wait_visible  # noqa: E402
from proctree import exit_on_sigterm, fruits_process, load_average, log_tail, resolved_stream_config  # noqa: E402

from fruits.landing import drop  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_serving(process, log_path: Path, url: str, ready_line: str | None, timeout: float = 300) -> None:
    """Wait until ``fruits serve`` answers (and, with ``ready_line``, logged it); exit with its log if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"fruits serve exited ({process.returncode}):\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{url}/api/config", timeout=2).status_code == 200 and (
                ready_line is None or ready_line in log_path.read_text(errors="replace")
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"fruits serve not ready after {timeout:.0f} s:\n{log_tail(log_path)}")


def build_reference_home(home: Path, env: dict[str, str]) -> list[Path]:
    """80 % of each class of the sample streamed and fitted into ``home``; returns the other 20 % (shuffled)."""
    rng, held_out = random.Random(2026), []
    for folder in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        rng.shuffle(photos)
        cut = round(len(photos) * 0.8)
        drop(photos[:cut], home / "landing", ["jpg"], label=folder.name)
        held_out += photos[cut:]
    stream_s, _ = run_fruits(["stream", "--available-now"], env)
    refit_s, _ = run_fruits(["refit-pca"], env)
    print(f"reference home built: stream {stream_s:.0f} s, refit {refit_s:.0f} s", file=sys.stderr, flush=True)
    rng.shuffle(held_out)
    return held_out


def timed_posts(url: str, jobs: list[tuple[str, dict, list]], clients: int) -> tuple[list[float], list[int], float]:
    """POST each ``(path, data, files)`` job with ``clients`` concurrent clients (one httpx.Client per thread);
    returns per-request seconds, status codes, and the wall time of the whole run."""
    local = threading.local()

    def post(job):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        path, data, files = job
        started = time.perf_counter()
        response = local.client.post(path, data=data, files=files)
        return time.perf_counter() - started, response.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(post, jobs))
    wall = time.perf_counter() - started
    return [r[0] for r in results], [r[1] for r in results], wall


def ms(stats: dict) -> dict:
    """percentiles() in seconds -> the same in milliseconds."""
    return {k: (round(v * 1000, 1) if k != "count" else v) for k, v in stats.items()}


def bench_identify(args, tmp: Path, env: dict[str, str]) -> dict:
    if args.home:
        home, photos = Path(args.home).resolve(), pick_photos(args.images)
        env = {**env, "FRUITS_HOME": str(home)}
    else:
        home = tmp / "home"
        env = {**env, "FRUITS_HOME": str(home)}
        photos = build_reference_home(home, env)
    photos = [photos[i % len(photos)] for i in range(args.images)]
    url, log_path = f"http://127.0.0.1:{args.port}", tmp / "serve.log"
    jobs = [("/api/identify", {}, [("file", (p.name, p.read_bytes(), "image/jpeg"))]) for p in photos]
    report = {"home": str(home), "images": len(photos), "warmup": args.warmup, "runs": {}}
    with fruits_process(["serve", "--port", str(args.port)], env, log_path) as process:
        wait_serving(process, log_path, url, "identify ready")
        seconds, codes, _ = timed_posts(url, jobs[: args.warmup], 1)
        assert set(codes) == {200}, codes
        status = httpx.get(f"{url}/api/status").json()
        report["reference_rows"] = status["pca"]["rows"]
        for clients in args.clients:
            load_before = load_average()
            seconds, codes, wall = timed_posts(url, jobs, clients)
            bad = [c for c in codes if c != 200]
            if bad:
                sys.exit(f"{len(bad)} identify requests failed: {bad[:5]}\n{log_tail(log_path)}")
            report["runs"][f"{clients}_clients"] = {
                "latency_ms": ms(percentiles(seconds)), "requests_per_s": round(len(jobs) / wall, 1),
                "load_avg_before": load_before, "load_avg_after": load_average(),
            }
            print(f"{clients} clients: {report['runs'][f'{clients}_clients']}", file=sys.stderr, flush=True)
    return report


def phone_size(photo: Path, width: int) -> bytes:
    """A real photo upscaled to ``width`` x 3/4 ``width`` pixels (4032: a 12 MP phone photo), as a JPEG (quality 92)."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(photo).convert("RGB").resize((width, width * 3 // 4), Image.Resampling.BICUBIC).save(out, "JPEG", quality=92)
    return out.getvalue()


def bench_upload(args, tmp: Path, env: dict[str, str]) -> dict:
    home = tmp / "home"
    env = {**env, "FRUITS_HOME": str(home)}
    photos = pick_photos(args.images)
    contents = [phone_size(p, args.upscale) if args.upscale else p.read_bytes() for p in photos]
    jobs = [
        ("/api/photos", {"label": p.parent.name}, [("file", (f"{i}-{p.name}", data, "image/jpeg"))])
        for i, (p, data) in enumerate(zip(photos, contents))
    ]
    url, log_path = f"http://127.0.0.1:{args.port}", tmp / "serve.log"
    clients = args.clients[-1]
    with fruits_process(["serve", "--port", str(args.port)], env, log_path) as process:
        wait_serving(process, log_path, url, None)
        warm = [(path, data, [("file", ("warm-" + files[0][1][0], *files[0][1][1:]))]) for path, data, files in jobs[: args.warmup]]
        timed_posts(url, warm, 1)  # uncounted: other names than the counted uploads
        load_before = load_average()
        seconds, codes, wall = timed_posts(url, jobs, clients)
    landed = sum(1 for p in (home / "landing").rglob("*.jpg")) - args.warmup
    if set(codes) != {202}:
        sys.exit(f"not every upload was accepted: {sorted(set(codes))}")
    return {
        "photos": len(jobs), "clients": clients, "accepted_per_s": round(len(jobs) / wall, 1),
        "mean_photo_bytes": round(statistics.fmean(len(data) for data in contents)), "upscale": args.upscale,
        "latency_ms": ms(percentiles(seconds)), "files_in_landing": landed,
        "load_avg_before": load_before, "load_avg_after": load_average(),
    }


def bench_visible(args, tmp: Path, env: dict[str, str]) -> dict:
    home = tmp / "home"
    (home / "landing").mkdir(parents=True)
    env = {**env, "FRUITS_HOME": str(home)}
    photos = pick_photos(args.warmup + args.images, seed=1)
    url = f"http://127.0.0.1:{args.port}"
    stream_log, serve_log = tmp / "stream.log", tmp / "serve.log"
    stream_flags = ["--trigger", args.trigger] if args.trigger else []
    watcher = CommitWatcher({"features": home / "tables/features", "quarantine": home / "tables/quarantine"}, 0.025)
    client = httpx.Client(base_url=url, timeout=60)

    def upload(index: int, photo: Path, prefix: str) -> tuple[str, float]:
        response = client.post(
            "/api/photos", data={"label": photo.parent.name},
            files=[("file", (f"{prefix}-{index}-{photo.name}", photo.read_bytes(), "image/jpeg"))],
        )
        assert response.status_code == 202, response.text
        return str(home / "landing" / response.json()["photos"][0]["path"]), time.time()

    with fruits_process(["stream", *stream_flags], env, stream_log) as stream, \
            fruits_process(["serve", "--port", str(args.port)], env, serve_log) as serve:
        wait_serving(serve, serve_log, url, None)
        wait_ready(stream, stream_log, 600)
        load_before = load_average()
        watcher.start()
        try:
            warm = dict(upload(i, p, "warm") for i, p in enumerate(photos[: args.warmup]))
            if len(wait_visible(watcher, warm, 600, stream)) < len(warm):
                sys.exit(f"warm-up uploads not visible:\n{log_tail(stream_log)}")
            landed, start = {}, time.monotonic()
            for index, photo in enumerate(photos[args.warmup :]):
                time.sleep(max(0.0, start + index / args.rate - time.monotonic()))
                path, at = upload(index, photo, "photo")
                landed[path] = at
            seen = wait_visible(watcher, landed, 180, stream)
        finally:
            watcher.finish()
        stream_log_text = stream_log.read_text(errors="replace")
    missing = sorted(set(landed) - set(seen))
    if missing:
        sys.exit(f"{len(missing)} uploads never visible, e.g. {missing[:3]}\n{log_tail(stream_log)}")
    return {
        "images": len(landed), "rate_per_s": args.rate, "trigger": resolved_stream_config(stream_flags)["trigger"],
        "upload_202_to_features_row_s": percentiles([seen[p][0] - landed[p] for p in landed]),
        # The stream's own lines for the micro-batches that read the counted uploads: where the time goes.
        "stream": batch_summary(stream_log_text, {seen[p][2] for p in landed if seen[p][2] is not None}),
        "load_avg_before": load_before, "load_avg_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["identify", "upload", "visible"])
    parser.add_argument("--home", help="identify: an existing home with features and a PCA model")
    parser.add_argument("--images", type=int, help="requests counted (default 200 identify, 400 upload, 60 visible)")
    parser.add_argument("--clients", default=None, help="comma-separated concurrent clients (1,8 identify; 8 upload)")
    parser.add_argument("--warmup", type=int, default=None, help="uncounted requests first (20 identify, 3 visible)")
    parser.add_argument("--rate", type=float, default=2.0, help="visible: uploads per second")
    parser.add_argument("--upscale", type=int, default=0, help="upload: send each photo upscaled to this width (4032: 12 MP)")
    parser.add_argument("--trigger", help="visible: the stream's --trigger (default: configured)")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    args = parser.parse_args()
    args.images = args.images or {"identify": 200, "upload": 400, "visible": 60}[args.mode]
    args.clients = [int(c) for c in (args.clients or {"identify": "1,8", "upload": "8", "visible": "1"}[args.mode]).split(",")]
    args.warmup = {"identify": 20, "upload": 10, "visible": 3}[args.mode] if args.warmup is None else args.warmup
    args.port = args.port or free_port()
    exit_on_sigterm()
    env = {"FRUITS_WEIGHTS": args.weights, "FRUITS_MASTER": args.master}
    with tempfile.TemporaryDirectory(prefix="fruits-web-bench-") as tmp:
        report = {"identify": bench_identify, "upload": bench_upload, "visible": bench_visible}[args.mode](
            args, Path(tmp).resolve(), env
        )
    print(json.dumps({"mode": args.mode, **report, "cpus": __import__("os").cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
