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

- ``beside``: does identify starve a stream on the same machine? A ``fruits serve`` holds the reference
  home (as in ``identify``); ``fruits stream --available-now`` ingests a fresh landing folder of ``--images`` photos
  twice: alone (the server idle), then with ``--clients`` (default 8) identify clients asking in a loop for as long
  as it runs. The stream's steady rate comes from its own per-batch lines (bench/ingest_throughput.py). Targets: the
  stream keeps >= 80 % of its rate alone, identify's p95 <= 1 s, and no identify answered 503.

Every mode follows bench/honest.py (docs/performance.md, "Honest figures"): the CPU and the load average before and
after, a refusal at a 1-minute load average above 1.5 unless ``--force`` (``beside`` checks again after building its
reference home, once that load has settled), its headline figures on ``ratio`` lines, then one JSON object. Usage:
  python bench/web.py identify [--home H] [--images 200] [--clients 1,8] [--warmup 20]
  python bench/web.py upload [--images 400] [--clients 8] [--upscale 4032]
  python bench/web.py visible [--images 60] [--rate 2] [--trigger 1s]
  python bench/web.py beside [--home H] [--images 3000] [--clients 8] [--reference-per-class N [--reference-classes C]]
Common: [--weights FILE] [--master local[2]] [--port 8765] [--force] [--smoke]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
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
from honest import Honest  # noqa: E402
from ingest_throughput import (  # noqa: E402
    BATCH_LINE, DEFAULT_WEIGHTS, SAMPLE, as_backlog, fill_landing, run_fruits, steady_rate,
)
from latency import CommitWatcher, batch_summary, percentiles, pick_photos, wait_ready, wait_visible  # noqa: E402
from proctree import exit_on_sigterm, fruits_process, load_average, log_tail, resolved_stream_config  # noqa: E402

from fruits.landing.drop import drop  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_serving(process, log_path: Path, url: str, ready_line: str | None, timeout: float = 300,
                 headers: dict[str, str] | None = None) -> None:
    """Wait until ``fruits serve`` answers (and, with ``ready_line``, logged it); exit with its log if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"fruits serve exited ({process.returncode}):\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{url}/api/config", timeout=2, headers=headers).status_code == 200 and (
                ready_line is None or ready_line in log_path.read_text(errors="replace")
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"fruits serve not ready after {timeout:.0f} s:\n{log_tail(log_path)}")


def age_landing(landing: Path) -> None:
    """Date the photos just dropped into ``landing`` back, as fill_landing's copies (:func:`as_backlog`): a reference
    home's photos are a backlog, and `--available-now` would first wait ``[discovery] quiet_seconds`` for photos this
    young."""
    as_backlog(path for path in landing.rglob("*") if path.is_file())


def build_reference_home(home: Path, env: dict[str, str]) -> list[Path]:
    """80 % of each class of the sample streamed and fitted into ``home``; returns the other 20 % (shuffled)."""
    rng, held_out = random.Random(2026), []
    for folder in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        rng.shuffle(photos)
        cut = round(len(photos) * 0.8)
        drop(photos[:cut], home / "landing", ["jpg"], label=folder.name)
        held_out += photos[cut:]
    age_landing(home / "landing")
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


def bench_identify(args, tmp: Path, env: dict[str, str], honest: Honest) -> dict:
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
            latency = report["runs"][f"{clients}_clients"]["latency_ms"]
            honest.ratio(f"identify, {clients} concurrent client(s), {len(jobs)} requests: p50 {latency['p50']} ms, "
                         f"p95 {latency['p95']} ms, {len(jobs) / wall:.1f} requests/s (target p95 <= 300 ms, 1 client)")
    return report


def phone_size(photo: Path, width: int) -> bytes:
    """A real photo upscaled to ``width`` x 3/4 ``width`` pixels (4032: a 12 MP phone photo), as a JPEG (quality 92)."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(photo).convert("RGB").resize((width, width * 3 // 4), Image.Resampling.BICUBIC).save(out, "JPEG", quality=92)
    return out.getvalue()


def bench_upload(args, tmp: Path, env: dict[str, str], honest: Honest) -> dict:
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
    latency = ms(percentiles(seconds))
    mean_kb = statistics.fmean(map(len, contents)) / 1024
    honest.ratio(f"upload, {clients} concurrent clients, {len(jobs)} photos of {mean_kb:.1f} KB mean: "
                 f"{len(jobs) / wall:.1f} accepted/s, p50 {latency['p50']} ms, p95 {latency['p95']} ms")
    return {
        "photos": len(jobs), "clients": clients, "accepted_per_s": round(len(jobs) / wall, 1),
        "mean_photo_bytes": round(statistics.fmean(len(data) for data in contents)), "upscale": args.upscale,
        "latency_ms": latency, "files_in_landing": landed,
        "load_avg_before": load_before, "load_avg_after": load_average(),
    }


def bench_visible(args, tmp: Path, env: dict[str, str], honest: Honest) -> dict:
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
    trigger, visible = resolved_stream_config(stream_flags)["trigger"], percentiles([seen[p][0] - landed[p] for p in landed])
    honest.ratio(f"upload 202 to features row, {len(landed)} photos at {args.rate:g}/s, trigger {trigger}: "
                 f"p50 {visible['p50']} s, p95 {visible['p95']} s, max {visible['max']} s")
    return {
        "images": len(landed), "rate_per_s": args.rate, "trigger": trigger,
        "upload_202_to_features_row_s": visible,
        # The stream's own lines for the micro-batches that read the counted uploads: where the time goes.
        "stream": batch_summary(stream_log_text, {seen[p][2] for p in landed if seen[p][2] is not None}),
        "load_avg_before": load_before, "load_avg_after": load_average(),
    }


def build_small_reference(home: Path, env: dict[str, str], per_class: int, classes: int | None) -> list[Path]:
    """``per_class`` photos of each class (of the first ``classes``; None: all) streamed and fitted into ``home`` (a
    quick check of the bench itself); returns other photos of those classes to ask about."""
    held_out = []
    for folder in sorted(p for p in SAMPLE.iterdir() if p.is_dir())[:classes]:
        photos = sorted(folder.glob("*.jpg"))
        drop(photos[:per_class], home / "landing", ["jpg"], label=folder.name)
        held_out += photos[per_class : per_class + 2]
    age_landing(home / "landing")
    run_fruits(["stream", "--available-now"], env)
    run_fruits(["refit-pca"], env)
    return held_out


def stream_rate(source: Path, home: Path, env: dict[str, str]) -> dict:
    """`fruits stream --available-now` over a copy of ``source`` as ``home``'s landing folder: its steady rate."""
    shutil.copytree(source, home / "landing")
    seconds, log = run_fruits(["stream", "--available-now"], {**env, "FRUITS_HOME": str(home)})
    batches = [(int(b), int(n), float(t)) for b, n, t in BATCH_LINE.findall(log)]
    rate, used = steady_rate(batches)
    if rate is None:  # too few batches for a steady part (a tiny check run): the whole of them
        rate, used = sum(n for _, n, _ in batches) / max(sum(t for _, _, t in batches), 1e-9), len(batches)
    return {"steady_images_per_s": round(rate, 2), "steady_batches": used, "whole_command_seconds": round(seconds, 1)}


def bench_beside(args, tmp: Path, env: dict[str, str], honest: Honest) -> dict:
    if args.home:
        reference, photos = Path(args.home).resolve(), pick_photos(200)
    else:
        reference = tmp / "reference"
        reference_env = {**env, "FRUITS_HOME": str(reference)}
        photos = (build_small_reference(reference, reference_env, args.reference_per_class, args.reference_classes)
                  if args.reference_per_class
                  else build_reference_home(reference, reference_env))
    source = tmp / "landing-source"
    fill_landing(source, args.images)
    bodies = [(p.name, p.read_bytes()) for p in photos]
    url, log_path = f"http://127.0.0.1:{args.port}", tmp / "serve.log"
    serve_env = {**env, "FRUITS_HOME": str(reference), "FRUITS_TOKEN": "bench-token"}
    headers = {"Authorization": "Bearer bench-token"}
    with fruits_process(["serve", "--port", str(args.port)], serve_env, log_path) as process:
        wait_serving(process, log_path, url, "identify ready", headers=headers)
        with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
            for name, data in bodies[: args.warmup]:
                assert client.post("/api/identify", files=[("file", (name, data, "image/jpeg"))]).status_code == 200
        honest.check(settle=300)  # building the reference home loaded the machine
        alone = stream_rate(source, tmp / "alone", env)
        print(f"stream alone: {alone}", file=sys.stderr, flush=True)

        stop, seconds, codes = threading.Event(), [], []

        def ask(offset: int) -> None:
            with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
                index = offset
                while not stop.is_set():
                    name, data = bodies[index % len(bodies)]
                    started = time.perf_counter()
                    response = client.post("/api/identify", files=[("file", (name, data, "image/jpeg"))])
                    seconds.append(time.perf_counter() - started)
                    codes.append(response.status_code)
                    index += args.clients

        clients = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(args.clients)]
        for thread in clients:
            thread.start()
        try:
            beside = stream_rate(source, tmp / "beside", env)
        finally:
            stop.set()
            for thread in clients:
                thread.join(180)
        load_after = load_average()
    ratio = beside["steady_images_per_s"] / alone["steady_images_per_s"] if alone["steady_images_per_s"] else None
    latency = percentiles(seconds)
    refused = codes.count(503)
    honest.ratio(f"stream beside {args.clients} identify clients / stream alone, {args.images} photos: "
                 + (f"{ratio:.2f} of its steady rate" if ratio is not None else "no rate alone") + " (target >= 0.80)")
    honest.ratio(f"identify beside the stream, {len(codes)} requests: "
                 + (f"p50 {latency['p50'] * 1000:.0f} ms, p95 {latency['p95'] * 1000:.0f} ms" if latency else "none answered")
                 + f", {refused} answered 503 (target p95 <= 1 s, no 503)")
    return {
        "images": args.images, "clients": args.clients, "reference_home": str(reference),
        "stream_alone": alone, "stream_beside_identify": beside,
        "stream_kept": round(ratio, 3) if ratio is not None else None,
        "identify": {"requests": len(codes), "latency_ms": ms(latency), "codes": {str(c): codes.count(c) for c in set(codes)}},
        "targets_met": {"stream_kept_>=_0.8": ratio is not None and ratio >= 0.8,
                        "identify_p95_<=_1s": bool(latency) and latency["p95"] <= 1.0, "no_503": refused == 0},
        "load_avg_after": load_after,  # right after the measured part ("load_avg_before": bench/honest.py's)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["identify", "upload", "visible", "beside"])
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
    parser.add_argument("--reference-per-class", type=int, default=0,
                        help="beside: a small reference home of N photos per class (to check the bench itself)")
    parser.add_argument("--reference-classes", type=int, default=None,
                        help="beside, with --reference-per-class: of the first N classes only (default: all)")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    args.images = args.images or {"identify": 200, "upload": 400, "visible": 60, "beside": 3000}[args.mode]
    clients = args.clients or {"identify": "1,8", "upload": "8", "visible": "1", "beside": "8"}[args.mode]
    args.clients = [int(c) for c in clients.split(",")]
    if args.mode == "beside":
        args.clients = args.clients[-1]
    args.warmup = {"identify": 20, "upload": 10, "visible": 3, "beside": 8}[args.mode] if args.warmup is None else args.warmup
    args.port = args.port or free_port()
    honest = Honest.start(args)
    exit_on_sigterm()
    env = {"FRUITS_WEIGHTS": args.weights, "FRUITS_MASTER": args.master}
    with tempfile.TemporaryDirectory(prefix="fruits-web-bench-") as tmp:
        report = {"identify": bench_identify, "upload": bench_upload, "visible": bench_visible, "beside": bench_beside}[
            args.mode](args, Path(tmp).resolve(), env, honest)
    # The mode's own load averages (around its measured part) stand over honest's (around the whole run).
    print(json.dumps({"mode": args.mode, **honest.finish(), **report}, indent=2))


if __name__ == "__main__":
    main()
