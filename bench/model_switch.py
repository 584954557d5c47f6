"""Benchmark: the photos/s of ``fruits model switch`` over a home's archived history (issue 24, item 6).

1. A home whose active model is model 1 (fp32, single view, OpenVINO, the weights in ../shared/models) with
   ``--photos`` features rows whose originals are in the home's archive: hard links of the real photos of
   ../shared/data/fruits360-sample (bench/discovery_scale.py's ``build_landing``) under ``HOME/archive/<day>/``.
   The rows are not featurized with fp32 (that is not what is measured): they are made by the stream's own row
   builder (``fruits.streaming.outcomes.featurized_rows``: path, label, ``content_sha256`` of the real bytes, size,
   mtime, ``file_id``, ``stored_path`` = the archive copy, attempt 0) with a stand-in float32 vector as features
   (the switch never reads the old features), appended ``[stream] max_files_per_trigger`` rows per commit as the
   stream does; model 1 is recorded in the registry as the first stream records it
   (``fruits.model.active.record_first_model``).
2. The real command, ``fruits model switch --precision int8 --no-refit`` (a subprocess: the whole command's time
   includes the JVM's start), on ``--master local[2]``. Three figures: the whole command; ``switch_model``'s own
   seconds (the command's last log line: the passes, the seal and the flip); and the steady rate, from the new
   table's commit times (one commit per chunk): the chunks after the first (which pays the Python workers' model
   load) over the time between the first chunk's commit and the last's. Then, timed apart, the refit the switch
   would have run (``fruits refit-pca --full``), unless ``--no-refit-timing``.
3. The same with ``--views rot4`` (int8), on its own home of ``--rot4-photos`` photos (4x the inference).
4. The bare model of the same precision (and views) in the same run: bench/bare_model.py's ``measure``, 2 processes
   x 1 thread, chunks of 8, as the switch's 2 Spark tasks run it; the ratio is switch steady / bare.
5. Once on the standalone test cluster (tests/standalone.py, 2 workers x 1 core), ``--cluster-photos`` photos: the
   workers see neither ../shared nor the IR cache, so the executors can only featurize with the IR files the driver
   ships (``SparkContext.addFile``); the bench checks they were fetched into the executors' folders. On 2 shared
   cores the cluster's speed says nothing about scaling: it shows the switch runs there.

Usage: python bench/model_switch.py [--photos 20000] [--rot4-photos 10000] [--cluster-photos 20000] [--chunk 2000]
Prints JSON on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH), str(ROOT / "tests")]
from bare_model import decoded, measure  # noqa: E402
from discovery_scale import SAMPLE, WEIGHTS, build_landing, say  # noqa: E402
from honest import Honest  # noqa: E402
from ingest_throughput import run_fruits  # noqa: E402

SHARED = ROOT.parent / "shared"
# The command's last line: "switched to model N (ID): X photos featurized in P passes, S s; L left out".
SWITCHED = re.compile(r"switched to model (\d+) \((\S+)\): (\d+) photos featurized in (\d+) passes, ([\d.]+) s; (\d+) left out")
FEATURES_LENGTH = 1280
# The featurizing job's ``result`` column (fruits.model.udf), as the stream's row builder takes it.
RESULT = pa.struct([("features", pa.binary()), ("error", pa.string())])  # the UDF's wire format (fruits.model.udf)


def home_config(home: Path, chunk: int):
    from fruits.config import load_config

    return load_config(overrides={
        "paths": {"home": str(home)}, "model": {"weights": str(WEIGHTS), "runtime": "openvino", "precision": "fp32"},
        "stream": {"max_files_per_trigger": chunk},
    }, environ={})


def seed_home(home: Path, count: int, chunk: int, hashes: dict[Path, str]) -> dict:
    """Model 1's features rows for ``count`` archived photos (see the module docstring, step 1)."""
    from fruits.home.home import Home
    from fruits.home.ledger import file_id
    from fruits.model.active import first_model, model_id_for, record_first_model
    from fruits.streaming.outcomes import Places, append, featurized_rows, split_featurized

    started = time.perf_counter()
    config = home_config(home, chunk)
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    archived = build_landing(home / "archive" / day, count)
    photos = sorted(SAMPLE.glob("*/*.jpg"))
    linked = time.perf_counter() - started
    run = first_model(config)
    model_id = model_id_for(run.config, run.weights)
    vectors = np.random.default_rng(0).random((len(photos), FEATURES_LENGTH), dtype=np.float32)
    features = Home.from_config(config).features
    now = datetime.now(timezone.utc)
    for start in range(0, count, chunk):
        rows, read, places = [], [], {}
        for index in range(start, min(count, start + chunk)):
            source, copy = photos[index % len(photos)], archived[index]
            stat = copy.stat()
            mtime_ms = stat.st_mtime_ns // 1_000_000
            landed = f"file:{home / 'landing' / copy.parent.name / copy.name}"  # where it landed, before archiving
            row = {"path": landed, "label": copy.parent.name, "size_bytes": stat.st_size,
                   "modified_at": datetime.fromtimestamp(mtime_ms / 1000, timezone.utc),
                   "file_id": file_id(landed, stat.st_size, mtime_ms), "discovered_at": now, "attempt": 0}
            rows.append(row)
            places[row["file_id"]] = Places(features=f"file:{copy}", quarantine=None)
            if source not in hashes:
                hashes[source] = hashlib.sha256(source.read_bytes()).hexdigest()
            read.append({"path": landed, "length": stat.st_size, "mtime_ms": mtime_ms, "content_sha256": hashes[source],
                         "result": {"features": vectors[index % len(photos)].astype("<f4").tobytes(), "error": None}})
        table = pa.table({
            "path": [r["path"] for r in read], "length": pa.array([r["length"] for r in read], pa.int64()),
            "mtime_ms": pa.array([r["mtime_ms"] for r in read], pa.int64()),
            "content_sha256": [r["content_sha256"] for r in read],
            "result": pa.array([r["result"] for r in read], RESULT),
        })
        made, unread = featurized_rows(rows, table, places, model_id)
        assert not unread, f"{len(unread)} seeded rows without their read row"
        good, rejected = split_featurized(made)
        assert rejected.num_rows == 0 and good.num_rows == len(rows)
        append(features, good)
    record = record_first_model(Home.from_config(config), run, stored_ids=[model_id])
    return {"photos": count, "link_seconds": round(linked, 1), "seed_seconds": round(time.perf_counter() - started, 1),
            "model_1": record.model_id}


def commit_rate(home: Path, table: str) -> dict:
    """The new table's appends (one per chunk): the steady photos/s over the chunks after the first."""
    from fruits.home.tables import FEATURES, Table

    commits = [c for c in Table(table, FEATURES).history() if c.get("operation") == "WRITE"]
    commits.sort(key=lambda c: c["timestamp"])
    rows = [int(c.get("operationMetrics", {}).get("num_added_rows", 0)) for c in commits]
    times = [c["timestamp"] / 1000 for c in commits]
    steady = sum(rows[1:]) / (times[-1] - times[0]) if len(commits) > 1 and times[-1] > times[0] else None
    return {"commits": len(commits), "rows_per_commit": sorted(set(rows)),
            "first_to_last_commit_seconds": round(times[-1] - times[0], 1) if commits else None,
            "steady_photos_per_s": round(steady, 1) if steady else None}


def switch(label: str, home: Path, config_file: Path, master: str, flags: list[str], env: dict[str, str],
           refit: bool) -> dict:
    """``fruits model switch FLAGS --no-refit`` on ``home``; its figures, checked against the home's tables."""
    from fruits.home.home import Home

    args = ["model", "switch", "--home", str(home), "--config", str(config_file), "--master", master, *flags, "--no-refit"]
    seconds, log = run_fruits(args, env)
    (home.parent / f"{label.replace(' ', '-')}.log").write_text(log)  # the command's log, for a post-mortem
    done = SWITCHED.search(log)
    if done is None:
        sys.exit(f"{label}: no 'switched to model' line in the log:\n{log[-3000:]}")
    number, model_id, featurized, passes, own, left_out = done.groups()
    home_ = Home.from_config(home_config(home, 1))
    active = home_.models.load().active
    photos = home_.features.read(["file_id"]).num_rows  # model 1's table
    rows = home_.model_features(active).read(["file_id"]).column("file_id")
    if active.number != int(number) or len(rows) != photos or len(set(rows.to_pylist())) != photos or int(left_out):
        sys.exit(f"{label}: model {active.number} active with {len(rows)} rows for {photos} photos, {left_out} left out")
    result = {
        "label": label, "master": master, "command": "fruits " + " ".join(args), "photos": photos,
        "model": model_id, "passes": int(passes), "featurized": int(featurized),
        "command_seconds": round(seconds, 1), "switch_seconds": float(own),
        "command_photos_per_s": round(photos / seconds, 1), "switch_photos_per_s": round(photos / float(own), 1),
        **commit_rate(home, active.table),
    }
    if refit:
        seconds, _ = run_fruits(["refit-pca", "--home", str(home), "--config", str(config_file), "--master", master,
                                 "--full"], env)
        result["refit_command_seconds"] = round(seconds, 1)
    say(f"{label}: {json.dumps(result)}")
    return result


def on_executors(cluster, names: list[str], model_id: str) -> dict:
    """How many executor folders of the cluster hold each of ``names`` (files fetched from the driver), and how many
    executors' logs say a Python worker of theirs built ``model_id`` (the featurizing ran there)."""
    found = {name: 0 for name in names}
    built = 0
    for worker in range(1, cluster.workers + 1):
        for folder in cluster.executor_dirs(worker):
            for name in names:
                found[name] += (folder / name).is_file()
            stderr = folder / "stderr"
            built += stderr.is_file() and f"built {model_id} " in stderr.read_text(errors="replace")
    return {"executor_folders_with_the_shipped_ir": found, "executors_that_built_the_model": built}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=20000, help="archived photos of the int8 switch, locally")
    parser.add_argument("--rot4-photos", type=int, default=10000, help="photos of the int8 + rot4 switch (0: none)")
    parser.add_argument("--cluster-photos", type=int, default=20000, help="photos of the cluster's switch (0: none)")
    parser.add_argument("--chunk", type=int, default=2000, help="[stream] max_files_per_trigger (the service's default)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--bare-seconds", type=float, default=8.0, help="timed seconds of each bare-model run")
    parser.add_argument("--bare-images", type=int, default=64, help="distinct pre-decoded photos of the bare model")
    parser.add_argument("--no-refit-timing", action="store_true", help="do not time a full refit after the switch")
    parser.add_argument("--workdir", default=None, help="where the homes go (default: a temporary folder)")
    Honest.add_arguments(parser)
    args = parser.parse_args()
    honest = Honest.start(args)

    from fruits.model.runtimes import make_featurizer
    from standalone import StandaloneCluster

    work = Path(tempfile.mkdtemp(prefix="fruits-switch-bench-", dir=args.workdir))
    config_file = work / "bench.toml"
    config_file.write_text(f"[stream]\nmax_files_per_trigger = {args.chunk}\n")
    base = home_config(work / "probe", args.chunk)
    featurizers = {}
    for views in ("single", "rot4"):  # the int8 IR made (or found) in the per-user cache now, not in a timed switch
        model = replace(base.model, precision="int8", views=views)
        featurizers[views] = make_featurizer(replace(base, model=model), first_weights(base))
    ir_folder = str(Path(featurizers["single"].ir_path).parent)
    env = {"SPARK_LOCAL_IP": "127.0.0.1"}
    hashes: dict[Path, str] = {}
    result: dict = {"chunk": args.chunk, "workdir": str(work)}

    photos = sorted(SAMPLE.glob("*/*.jpg"))
    images = decoded(photos[:: max(1, len(photos) // args.bare_images)][: args.bare_images])
    bare = {}
    for views in ("single", "rot4") if args.rot4_photos else ("single",):
        spec = {"runtime": "openvino", "precision": "int8", "views": views, "procs": 2, "threads": 1, "chunk": 8}
        bare[views] = measure(spec, featurizers[views].weights, featurizers[views].ir_path, images, args.bare_seconds)
        say(f"bare model int8 {views}: {bare[views]['images_per_s']} photos/s")
    result["bare"] = bare

    runs = {}
    home = work / "home-int8"
    result["seed_int8"] = seed_home(home, args.photos, args.chunk, hashes)
    say(f"seeded: {result['seed_int8']}")
    runs["local int8"] = switch("local int8", home, config_file, args.master, ["--precision", "int8"], env,
                          refit=not args.no_refit_timing)
    if args.rot4_photos:
        home = work / "home-int8-rot4"
        result["seed_rot4"] = seed_home(home, args.rot4_photos, args.chunk, hashes)
        runs["local int8+rot4"] = switch("local int8+rot4", home, config_file, args.master,
                                   ["--precision", "int8", "--views", "rot4"], env, refit=False)
    if args.cluster_photos:
        home = work / "home-cluster"
        result["seed_cluster"] = seed_home(home, args.cluster_photos, args.chunk, hashes)
        started = time.perf_counter()
        with StandaloneCluster(2, 1, "2g", root=work / "cluster", hide=[str(SHARED), ir_folder]) as cluster:
            result["cluster"] = {"workers": "2 x 1 core, 2g", "isolated_from_shared_and_ir_cache": cluster.isolated,
                                 "start_seconds": round(time.perf_counter() - started, 1)}
            runs["cluster int8"] = switch("cluster int8", home, config_file, cluster.master_url,
                                          ["--precision", "int8"], cluster.driver_env(), refit=False)
            ir = Path(featurizers["single"].ir_path)
            result["cluster"].update(on_executors(cluster, [ir.name, ir.with_suffix(".bin").name],
                                                  runs["cluster int8"]["model"]))
            if not all(result["cluster"]["executor_folders_with_the_shipped_ir"].values()) or \
                    not result["cluster"]["executors_that_built_the_model"]:
                sys.exit(f"the switch did not run on the cluster's executors with the shipped IR: {result['cluster']}")
    result["switches"] = runs

    for name, run in runs.items():
        reference = bare["rot4" if "rot4" in name else "single"]["images_per_s"]
        steady = run["steady_photos_per_s"] or run["switch_photos_per_s"]
        which = "steady" if run["steady_photos_per_s"] else "switch_model's whole"
        run["over_bare"] = round(steady / reference, 3)
        honest.ratio(f"{name} switch / bare model, photos/s: {run['over_bare']} ({which} {steady} against "
                     f"{reference} bare, {run['photos']:,} photos; whole command {run['command_photos_per_s']}/s in "
                     f"{run['command_seconds']} s, switch_model {run['switch_seconds']} s)")
    print(json.dumps({**result, **honest.finish()}, indent=2, default=str))


def first_weights(config):
    from fruits.model.weights import resolve_weights

    return resolve_weights(config.model.weights)


if __name__ == "__main__":
    main()
