"""The whole service on an ``s3a://`` home against a real S3 server (SeaweedFS, tests/s3server.py): drop, stream,
refit, identify, status and files; bad input; a SIGKILLed stream restarted; a second stream refused; the lease and
the conditional uploads underneath.

The server binary comes from ``.ci/build-weed``. Without it these tests are skipped, or fail when FRUITS_REQUIRE_S3
is set (CI).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import NOTOP_WEIGHTS, missing, sample_files
from s3server import S3Server, start_server, weed_binary

FRUITS = str(Path(sys.executable).with_name("fruits"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One real S3 server for the run (SeaweedFS on free loopback ports), stopped at the end."""
    binary = weed_binary()
    if binary is None:
        missing("no SeaweedFS binary: run .ci/build-weed (or set FRUITS_WEED)", required_by="FRUITS_REQUIRE_S3")
    server = start_server(binary, tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture()
def s3_env(s3_server: S3Server, monkeypatch):
    """This process's environment as a ``fruits`` command's would be (the credentials and ``FRUITS_S3_ENDPOINT``:
    nothing else, no ``AWS_ENDPOINT_URL``), a fresh bucket whose ``fruits`` folder is the home, and the home's files
    (fruits/home/filesystem.py) with the server's settings."""
    from fruits.home import s3
    from fruits.home.filesystem import S3Files

    bucket = "fruits-" + secrets.token_hex(4)
    s3_server.create_bucket(bucket)
    for key, value in s3_server.environment.items():
        monkeypatch.setenv(key, value)
    home = f"s3a://{bucket}/fruits"
    settings = s3.S3Settings(s3_server.endpoint, "us-east-1", True)
    yield {"home": home, "bucket": bucket, "server": s3_server, "files": S3Files(settings)}


def fruits(home: str, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Run a ``fruits`` command on ``home`` (the server's settings come from this process's environment)."""
    env = {**os.environ, "FRUITS_HOME": home, "FRUITS_WEIGHTS": str(NOTOP_WEIGHTS), "FRUITS_MASTER": "local[2]"}
    done = subprocess.run([FRUITS, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"fruits {' '.join(args)}: {done.returncode}\n{done.stderr[-4000:]}"
    return done


def start_stream(home: str, log: Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "FRUITS_HOME": home, "FRUITS_WEIGHTS": str(NOTOP_WEIGHTS), "FRUITS_MASTER": "local[2]"}
    with open(log, "ab") as out:
        return subprocess.Popen([FRUITS, "stream", *flags], env=env, stdout=out, stderr=out, start_new_session=True)


def keys(server: S3Server, bucket: str, prefix: str) -> list[str]:
    """Every object key below ``prefix`` but S3A's folder markers (``folder/``, left when a folder's last file goes)."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", []) if not item["Key"].endswith("/")]


def home_of(home: str):
    """The :class:`~fruits.home.home.Home` at ``home`` on the test's server (its settings from FRUITS_S3_*)."""
    from fruits.config import load_config
    from fruits.home.home import Home

    return Home.from_config(load_config(overrides={"paths": {"home": home}}))


def table(home: str, name: str):
    """A Delta table of the home, read by deltalake (delta-rs) with the home's storage options."""
    return home_of(home).table(name).open()


def outcome_paths(home: str) -> Counter:
    paths: Counter = Counter()
    for name in ("features", "quarantine"):
        paths.update(table(home, name).to_pyarrow_table(columns=["path"]).column("path").to_pylist())
    return paths


def photo_folders(root: Path, classes: list[str], per_class: int) -> dict[str, Path]:
    """Copies ``per_class`` real photos of each class into ``root/<class>/``; returns one held-out photo per class."""
    held_out = {}
    for label in classes:
        photos = sample_files(label, per_class + 1)
        (root / label).mkdir(parents=True)
        for photo in photos[:-1]:
            (root / label / photo.name).write_bytes(photo.read_bytes())
        held_out[label] = photos[-1]
    return held_out


def bad_files(folder: Path) -> dict[str, bytes]:
    """Files with image names that are not images: random bytes, empty, a truncated JPEG, a PNG header on noise."""
    rng = random.Random(14)
    good = sample_files("Banana", 1)[0].read_bytes()
    files = {"noise.jpg": rng.randbytes(3000), "empty.jpg": b"", "truncated.jpg": good[:900],
             "fake.png": b"\x89PNG\r\n\x1a\n" + rng.randbytes(500)}
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


@pytest.mark.slow
def test_the_whole_service_on_an_s3a_home(s3_env, tmp_path):
    home, bucket, server = s3_env["home"], s3_env["bucket"], s3_env["server"]
    classes = ["Banana", "Lemon", "Strawberry", "Orange", "Kiwi"]
    held_out = photo_folders(tmp_path / "photos", classes, 20)
    bad = bad_files(tmp_path / "junk" / "Junk")

    dropped = fruits(home, "drop", str(tmp_path / "photos"), str(tmp_path / "junk"))
    assert dropped.stdout.count("placed: ") == 100 + len(bad), dropped.stdout
    landed = keys(server, bucket, "fruits/landing/")
    assert len(landed) == 100 + len(bad) and not any("tmp" in k for k in landed), landed[:5]
    again = fruits(home, "drop", "--label", "Kiwi", *map(str, sorted((tmp_path / "photos" / "Kiwi").glob("*.jpg"))[:3]))
    assert again.stdout.count("already there") == 3, again.stdout  # the same bytes are not landed twice
    pending = [json.loads(line) for line in fruits(home, "files", "--json").stdout.splitlines()]
    assert len(pending) == 104 and {row["state"] for row in pending} == {"pending"}  # recorded before the upload

    fruits(home, "stream", "--available-now")
    rows = [json.loads(line) for line in fruits(home, "files", "--json").stdout.splitlines()]
    states = Counter(row["state"] for row in rows)
    assert states == {"ingested": 100, "quarantined": len(bad)}, states
    quarantined = {row["path"].rsplit("/", 1)[-1]: row["reason"] for row in rows if row["state"] == "quarantined"}
    assert set(quarantined) == set(bad) and all(quarantined.values()), quarantined
    features = table(home, "features").to_pyarrow_table(columns=["path", "label", "stored_path"]).to_pylist()
    assert len({f["path"] for f in features}) == 100 and all(f["path"].startswith(f"s3a://{bucket}/fruits/landing/") for f in features)
    assert Counter(f["label"] for f in features) == {label: 20 for label in classes}
    # after_ingest = "archive": landing only holds the backlog; the bytes live on under archive/ (copy, then delete),
    # and the quarantined originals under quarantine/ (kept, whatever after_ingest says: a verdict can be undone)
    assert keys(server, bucket, "fruits/landing/") == []
    archived = set(keys(server, bucket, "fruits/archive/"))
    assert len(archived) == 100 and {f["stored_path"].split("/", 3)[3] for f in features} <= archived
    assert len(keys(server, bucket, "fruits/quarantine/")) == len(bad)
    assert keys(server, bucket, "fruits/tables/features/_delta_log/00000000000000000000.json")

    fruits(home, "refit-pca", "--k", "10")
    status = json.loads(fruits(home, "status", "--json").stdout)
    assert status["features"]["rows"] == 100 and status["quarantine"]["rows"] == len(bad), status
    assert status["backlog"]["ingested"] == 100 and status["backlog"]["pending"] == 0, status["backlog"]
    assert status["last_refit"]["version"] == 1 and status["pca"]["rows"] == 100, status["last_refit"]
    answers = [json.loads(line) for line in fruits(home, "identify", "--json", *map(str, held_out.values())).stdout.splitlines()]
    right = sum(answer["predicted"] == label for answer, label in zip(answers, held_out))
    assert right >= 4, answers  # held-out photos of 5 classes, identified through the PCA space on S3

    # The model lifecycle on S3: the switch reads the archived originals from the store, seals the old table (a
    # delta-rs metadata commit), replaces the registry (one PUT) and refits; identify follows; prune deletes the old
    # table's objects.
    assert fruits(home, "stream", "--precision", "int8", "--available-now", check=False).returncode == 2
    fruits(home, "model", "switch", "--precision", "int8")
    report = json.loads(fruits(home, "model", "--json").stdout)
    active = report["active"]
    assert (active["number"], active["rows"], active["table"]) == (2, 100, f"s3a://{bucket}/fruits/tables/features-m2")
    assert active["model_id"].endswith("/openvino-int8") and report["models"][0]["state"] == "retired"
    assert table(home, "features").to_pyarrow_table(columns=["model_id"]).column("model_id").unique().to_pylist() == [
        active["model_id"]]  # the home's features are the new model's
    answers = [json.loads(line) for line in fruits(home, "identify", "--json", *map(str, held_out.values())).stdout.splitlines()]
    assert sum(answer["predicted"] == label for answer, label in zip(answers, held_out)) >= 4, answers
    fruits(home, "model", "prune")
    assert keys(server, bucket, "fruits/tables/features/") == [] and len(keys(server, bucket, "fruits/archive/")) == 100


@pytest.mark.slow
def test_sigkill_on_s3_then_restart_ingests_every_photo_once_and_a_second_stream_is_refused(s3_env, tmp_path):
    home, bucket, server, files = s3_env["home"], s3_env["bucket"], s3_env["server"], s3_env["files"]
    photo_folders(tmp_path / "photos", ["Apple Granny Smith", "Fig", "Pineapple", "Pomegranate"], 40)
    fruits(home, "drop", str(tmp_path / "photos"))
    landed = {f"s3a://{bucket}/{k}" for k in keys(server, bucket, "fruits/landing/")}
    assert len(landed) == len(list((tmp_path / "photos").glob("*/*.jpg"))) >= 80
    log = tmp_path / "stream.log"
    commits = lambda: len([k for k in keys(server, bucket, "fruits/tables/features/_delta_log/") if k.endswith(".json")])

    first = start_stream(home, log, "--trigger", "200ms", "--max-files-per-trigger", "20")
    deadline = time.monotonic() + 300
    while commits() < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None and commits() >= 3, log.read_text()[-4000:]
    second = fruits(home, "stream", "--available-now", check=False, timeout=120)
    assert second.returncode == 3, second.stderr[-3000:]
    assert "another stream is running on this home" in second.stderr and "lease" in second.stderr
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    assert len(outcome_paths(home)) < len(landed), "killed too late to prove anything"

    # Its lease is taken over only once it has been silent for [s3] lease_seconds (the same host and pid prove nothing).
    renewed = json.loads(files.read(f"{home}/locks/stream.lock"))["renewed_at"]  # at most 10 s ago: 20 s left
    refused = fruits(home, "stream", "--available-now", check=False, timeout=120)
    assert refused.returncode == 3 and time.time() < renewed + 30, refused.stderr[-3000:]
    time.sleep(max(0.0, renewed + 31 - time.time()))
    fruits(home, "stream", "--available-now")
    counts = outcome_paths(home)
    assert max(counts.values()) == 1, [p for p, n in counts.items() if n > 1][:5]
    assert set(counts) == landed


def test_a_lease_is_keyed_by_its_owner_not_by_host_and_pid_and_only_a_silent_holder_is_taken_over(s3_env):
    """Two leases of one process (the same host name and pid, as two containers of one service have) never take each
    other's, even after longer than the lease; a holder is taken over only once it stopped renewing for the lease."""
    from fruits.home.locks import LockBusy, S3Lease

    uri, files = f"{s3_env['home']}/locks/test.lock", s3_env["files"]
    first = S3Lease(uri, "test", lease_seconds=3, files=files)  # renewed every second
    first.acquire()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with pytest.raises(LockBusy, match="another test is running on this home"):
            S3Lease(uri, "test", lease_seconds=3, files=files).acquire()
        time.sleep(0.5)
    assert json.loads(files.read(uri))["owner"] == first.holder["owner"]
    assert first._thread.is_alive()  # still renewing: never found its lease taken
    first.release()
    assert files.read(uri) is None

    # A holder that stopped renewing (its process was killed), of this very host and pid: kept until it is silent
    # for the lease, then taken over.
    silent = {"owner": "a-killed-process", "host": os.uname().nodename, "pid": os.getpid(), "since": "x"}
    assert files.write(uri, json.dumps({**silent, "renewed_at": time.time() - 20}).encode(), if_absent=True) is not None
    with pytest.raises(LockBusy):
        S3Lease(uri, "test", lease_seconds=30, files=files).acquire()
    _, etag = files.get(uri)
    assert files.write(uri, json.dumps({**silent, "renewed_at": time.time() - 31}).encode(), if_match=etag) is not None
    taker = S3Lease(uri, "test", lease_seconds=30, files=files)
    taker.acquire()
    assert json.loads(files.read(uri))["owner"] == taker.holder["owner"] != silent["owner"]
    taker.release()


def test_table_handles_reach_the_server_with_their_homes_options_alone(s3_env, monkeypatch):
    """delta-rs gets the server's settings from the home's storage options, passed per call, not from this process's
    environment: with none of the server's AWS_* variables set (only the credentials), the ledger is made, appended
    to, followed, read by data file and by change feed, and read again through a pickled handle."""
    import pickle

    from fruits.home.ledger import FileVersion, LedgerView, record

    home = home_of(s3_env["home"])
    for key in home.storage_options:
        monkeypatch.delenv(key, raising=False)
    ledger = home.ledger
    view = LedgerView(ledger, track_paths=False)
    assert view.refresh() == 0 and ledger.exists()  # made by the view's first look
    versions = [FileVersion(f"{home.landing}/Kiwi/{i}.jpg", 10 + i, 0, "Kiwi", etag=f"{i:032x}") for i in range(3)]
    record(ledger, versions[:2], "drop")
    record(home.ledger, versions[2:], "drop")  # another handle: another writer
    assert view.refresh() == 3 and len(view.ids) == 3  # the data files added, read through the object store
    assert sorted(ledger.read(["path"]).column("path").to_pylist()) == sorted(v.path for v in versions)
    assert ledger.changes(1, columns=["file_id"]).read_all().num_rows == 3
    assert pickle.loads(pickle.dumps(ledger)).version() == ledger.version() == 2


def test_s3_files_reach_the_server_they_are_given_and_a_conditional_put_never_replaces_an_object(s3_env, monkeypatch):
    """The home's S3 files (fruits/home/filesystem.py): the settings they are given, not the process's AWS_*
    variables, say where the server is; conditional writes, stat with ETag, listing, moves and deletes."""
    from fruits.home.filesystem import S3Files, StoreError, s3_client
    from fruits.home.s3 import S3Settings, etag_of

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there: only the settings lead to the server
    s3_client.cache_clear()
    files = S3Files(S3Settings(s3_env["server"].endpoint, "us-east-1", True))
    home = s3_env["home"]
    uri = f"{home}/x/photo.jpg"
    first = files.write(uri, b"first", if_absent=True)
    assert first == etag_of(b"first")  # a single PUT's ETag is its MD5: what drop records in the ledger
    assert files.write(uri, b"second", if_absent=True) is None
    assert files.get(uri) == (b"first", first)
    assert files.write(uri, b"third", if_match="0" * 32) is None
    assert files.write(uri, b"third", if_match=first) == etag_of(b"third")

    stat = files.stat(uri)
    assert (stat.size, stat.etag, stat.identity) == (5, etag_of(b"third"), (5, -1, -1))
    assert abs(stat.mtime_ms / 1000 - time.time()) < 120
    assert files.stat(f"{home}/x/none.jpg") is None and files.read(f"{home}/x/none.jpg") is None
    files.write(f"{home}/x/sub/a.jpg", b"a")
    assert {(f.name, f.is_dir) for f in files.list(f"{home}/x")} == {("photo.jpg", False), ("sub", True)}
    assert {f.uri for f in files.list(f"{home}/x", recursive=True)} == {uri, f"{home}/x/sub/a.jpg"}
    assert files.exists(f"{home}/x/sub") and not files.exists(f"{home}/y")

    assert not files.move(uri, f"{home}/x/sub/a.jpg")  # never over another object
    assert not files.move(uri, f"{home}/archive/photo.jpg", unchanged=(4, -1, -1))  # not the version that was read
    assert files.move(uri, f"{home}/archive/photo.jpg", unchanged=stat.identity)
    assert files.read(uri) is None and files.read(f"{home}/archive/photo.jpg") == b"third"
    files.delete(f"{home}/x", recursive=True)
    assert files.list(f"{home}/x", recursive=True) == []
    with pytest.raises(StoreError) as refused:  # the store's own errors are OSErrors, told apart by their code
        files.read(f"s3a://no-such-bucket-{secrets.token_hex(4)}/k")
    assert isinstance(refused.value, OSError) and refused.value.code == "NoSuchBucket"


def test_drop_to_s3_keeps_both_names_and_records_the_listed_version(s3_env, tmp_path):
    from fruits.home.ledger import file_id
    from fruits.landing.stage import ObjectLanding

    home, bucket, server = s3_env["home"], s3_env["bucket"], s3_env["server"]
    one, other = sample_files("Lemon", 2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "lemon.jpg").write_bytes(one.read_bytes())
    (tmp_path / "b" / "lemon.jpg").write_bytes(other.read_bytes())
    ledger = home_of(home).ledger
    landing = ObjectLanding(f"{home}/landing", ledger, "drop", s3_env["files"])
    extensions = ["jpg"]
    assert [d.note for d in landing.drop([tmp_path / "a" / "lemon.jpg"], extensions, label="Lemon")] == ["placed"]
    assert [d.note for d in landing.drop([tmp_path / "a" / "lemon.jpg"], extensions, label="Lemon")] == ["already there"]
    (again,) = landing.drop([tmp_path / "b" / "lemon.jpg"], extensions, label="Lemon")
    assert again.target == f"{home}/landing/Lemon/lemon-2.jpg"
    listed = server.client().list_objects_v2(Bucket=bucket, Prefix="fruits/landing/")["Contents"]
    ids = {file_id(f"s3a://{bucket}/{o['Key']}", o["Size"], 0, o["ETag"].strip('"')) for o in listed}
    assert ids == set(ledger.read().column("file_id").to_pylist())  # the listing finds them known


def test_web_uploads_land_on_s3_recorded_in_the_ledger_and_never_over_another_photo(s3_env, tmp_path):
    from fastapi.testclient import TestClient

    from conftest import make_config
    from fruits.web.app import create_app

    home, bucket, server = s3_env["home"], s3_env["bucket"], s3_env["server"]
    # addressed to the loopback, as the front door wants from a server without a token
    config = make_config(tmp_path, paths={"home": home}, s3={"endpoint": server.endpoint})
    client = TestClient(create_app(config, None, warm=False), base_url="http://127.0.0.1")
    assert client.get("/api/config").json()["uploads"] is True
    first, second = sample_files("Kiwi", 2)
    upload = lambda path: ("file", ("kiwi.jpg", path.read_bytes(), "image/jpeg"))  # noqa: E731
    answers = [client.post("/api/photos", files=[upload(p)], data={"label": "Kiwi"}) for p in (first, second, first)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert [a.json()["photos"][0]["path"] for a in answers] == ["Kiwi/kiwi.jpg", "Kiwi/kiwi-2.jpg", None]
    assert [a.json()["photos"][0]["note"] for a in answers] == ["placed", "placed", "already there"]
    assert keys(server, bucket, "fruits/landing/") == ["fruits/landing/Kiwi/kiwi-2.jpg", "fruits/landing/Kiwi/kiwi.jpg"]
    assert server.client().get_object(Bucket=bucket, Key="fruits/landing/Kiwi/kiwi.jpg")["Body"].read() == first.read_bytes()
    recorded = home_of(home).ledger.read()
    assert sorted(recorded.column("path").to_pylist()) == [f"{home}/landing/Kiwi/kiwi-2.jpg", f"{home}/landing/Kiwi/kiwi.jpg"]
    assert set(recorded.column("discovered_by").to_pylist()) == {"upload"}


@pytest.mark.slow
def test_a_drop_of_500_photos_uploaded_over_3_minutes_is_all_featurized(s3_env, tmp_path):
    """A large drop over a slow link: its 500 ledger rows are committed first, then the photos arrive one by one
    over 3 minutes. The stream waits for them while the drop's writer heartbeats (without blocking the photos that
    are there) and featurizes every one, once."""
    from fruits.config import load_config
    from fruits.landing.stage import ObjectLanding
    from fruits.landing.writers import WriterLease

    from conftest import SAMPLE

    home = s3_env["home"]
    photos = tmp_path / "photos"
    for photo in sorted(SAMPLE.glob("*/*.jpg"))[:500]:
        (photos / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (photos / photo.parent.name / photo.name).write_bytes(photo.read_bytes())
    log = tmp_path / "stream.log"
    stream = start_stream(home, log)
    config = load_config(overrides={"paths": {"home": home}}, environ={})
    pace = 180 / 500

    def slow_put(uri: str, data: bytes) -> str | None:
        time.sleep(pace)
        return s3_env["files"].write(uri, data, if_absent=True)

    try:
        started = time.monotonic()
        with WriterLease(config.writers, config.discovery.writer_timeout, files=s3_env["files"]) as lease:
            landing = ObjectLanding(config.landing, home_of(home).ledger, "drop", s3_env["files"], lease=lease, put=slow_put)
            results = landing.drop([photos], list(config.stream.extensions))
        assert sum(r.note == "placed" for r in results) == 500
        assert time.monotonic() - started >= 180
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = [json.loads(line) for line in fruits(home, "files", "--json").stdout.splitlines()]
            if Counter(row["state"] for row in rows) == {"ingested": 500}:
                break
            assert stream.poll() is None, log.read_text()[-3000:]
            time.sleep(5)
        assert Counter(row["state"] for row in rows) == {"ingested": 500}, (Counter(row["state"] for row in rows), log.read_text()[-3000:])
    finally:
        os.killpg(stream.pid, signal.SIGTERM)
        stream.wait(120)
    features = table(home, "features").to_pyarrow_table(columns=["file_id"]).column("file_id").to_pylist()
    assert len(features) == len(set(features)) == 500  # each photo featurized once
    assert keys(s3_env["server"], s3_env["bucket"], "fruits/landing/") == []
