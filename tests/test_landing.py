"""Atomic landing: `fruits drop` and `fruits stage` put whole files into the landing folder, never partial ones."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import local_path, make_config, place, sample_files, shipped_photos
from fruits.landing.drop import InboxStager, drop
from fruits.home.home import Home

EXTENSIONS = ["jpg", "jpeg", "png"]
FRUITS = str(Path(sys.executable).with_name("fruits"))


@pytest.mark.fast
def test_drop_keeps_class_folders_and_never_overwrites(tmp_path):
    source = tmp_path / "photos"
    place(shipped_photos("Banana", 2), source / "Banana")
    place(shipped_photos("Lemon", 1), source / "Lemon")
    (source / "Lemon" / "notes.txt").write_text("not an image")
    landing = tmp_path / "landing"

    results = drop([source], landing, EXTENSIONS)
    placed = sorted(str(r.target.relative_to(landing)) for r in results if r.note == "placed")
    assert placed == sorted(f"{p.parent.name}/{p.name}" for p in shipped_photos("Banana", 2) + shipped_photos("Lemon", 1))
    assert [r.note for r in results if r.target is None] == ["skipped: not an image name the stream reads"]
    assert not [p for p in landing.rglob(".*")], "a temporary file was left behind"

    again = drop([source], landing, EXTENSIONS)
    assert {r.note for r in again if r.source.suffix == ".jpg"} == {"already there"}

    other = tmp_path / "other.jpg"
    other.write_bytes(shipped_photos("Strawberry", 1)[0].read_bytes())
    clash = landing / "Banana" / shipped_photos("Banana", 1)[0].name
    renamed = drop([other.rename(other.with_name(clash.name))], landing, EXTENSIONS, label="Banana")
    assert renamed[0].target == clash.with_name(f"{clash.stem}-2{clash.suffix}")
    assert clash.read_bytes() == shipped_photos("Banana", 1)[0].read_bytes()  # the first file was not overwritten


@pytest.mark.fast
def test_uploads_of_one_name_at_once_each_land_whole_under_their_own_name_and_ledger_row(tmp_path):
    """A server's threads landing photos that all arrive as `image.jpg` (a phone's name for every photo), at once:
    every photo lands whole under a name of its own, and the ledger holds one row per landed file, no other."""
    import hashlib

    from fruits.landing.drop import LedgerRecorder

    landing, home = tmp_path / "landing", Home.from_config(make_config(tmp_path))
    recorder = LedgerRecorder(home.ledger, landing, "upload")
    photos = []
    for i, photo in enumerate(shipped_photos("Banana", 4) + shipped_photos("Strawberry", 4)):
        (tmp_path / f"upload-{i}").mkdir()
        photos.append(tmp_path / f"upload-{i}" / "image.jpg")
        photos[-1].write_bytes(photo.read_bytes())
    start = threading.Barrier(len(photos))
    placed, errors = [], []

    def upload(photo: Path) -> None:
        start.wait()
        try:
            placed.extend(drop([photo], landing, EXTENSIONS, label="Phone", recorder=recorder))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(photo,)) for photo in photos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and [d.note for d in placed] == ["placed"] * len(photos)

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    landed = sorted((landing / "Phone").iterdir())
    assert sorted(d.target for d in placed) == landed  # each under its own name, nothing hidden left behind
    assert sorted(map(digest, landed)) == sorted(map(digest, photos))  # each photo whole, none lost or torn
    rows = home.ledger.read().to_pylist()
    assert sorted((row["path"], row["size_bytes"]) for row in rows) == sorted(
        (f"file:{path}", path.stat().st_size) for path in landed
    )


@pytest.mark.fast
def test_drop_command_prints_what_it_placed(tmp_path):
    photo = shipped_photos("Pomegranate", 1)[0]
    result = subprocess.run(
        [FRUITS, "drop", "--home", str(tmp_path), "--label", "Fig", str(photo), str(tmp_path / "missing.jpg")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1  # one source did not exist
    assert f"placed: {photo} -> {tmp_path}/landing/Fig/{photo.name}" in result.stdout
    assert "no such file or folder" in result.stdout
    assert (tmp_path / "landing" / "Fig" / photo.name).read_bytes() == photo.read_bytes()
    # drop recorded the photo in the file ledger itself: pending until the stream gives it an outcome
    listed = subprocess.run(
        [FRUITS, "files", "--home", str(tmp_path), "--state", "pending", "--json"], capture_output=True, text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["path"], r["label"], r["discovered_by"], r["state"]) for r in rows] == [
        (f"file:{tmp_path}/landing/Fig/{photo.name}", "Fig", "drop", "pending")
    ]
    status = subprocess.run([FRUITS, "status", "--home", str(tmp_path), "--json"], capture_output=True, text=True, timeout=60)
    backlog = json.loads(status.stdout)["backlog"]
    assert backlog["pending"] == 1 and backlog["discovered"] == 1 and backlog["oldest_pending_age_seconds"] >= 0


def write_slowly(path: Path, data: bytes, seconds: float, chunks: int = 20) -> None:
    """A slow uploader: one open file, written in chunks over ``seconds``."""
    with open(path, "wb") as handle:
        for index in range(chunks):
            handle.write(data[index * len(data) // chunks : (index + 1) * len(data) // chunks])
            handle.flush()
            time.sleep(seconds / chunks)


@pytest.mark.fast
def test_stager_promotes_only_complete_files(tmp_path):
    inbox, landing = tmp_path / "inbox", tmp_path / "landing"
    stager = InboxStager(inbox, landing, EXTENSIONS, stable_seconds=30, settle_seconds=0.3)
    stop = threading.Event()
    runner = threading.Thread(target=stager.run, args=(stop, 0.05))
    runner.start()
    data = shipped_photos("Banana", 1)[0].read_bytes()
    seen_sizes = set()
    try:
        time.sleep(0.5)
        (inbox / "Banana").mkdir(parents=True)
        writer = threading.Thread(target=write_slowly, args=(inbox / "Banana" / "slow.jpg", data, 2.0))
        writer.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (landing / "Banana" / "slow.jpg").exists():
            seen_sizes |= {p.stat().st_size for p in landing.rglob("*.jpg")}
            time.sleep(0.01)
        writer.join()
    finally:
        stop.set()
        runner.join(10)
    assert (landing / "Banana" / "slow.jpg").read_bytes() == data
    assert seen_sizes <= {len(data)}, "a partial file was visible in the landing folder"
    assert not (inbox / "Banana" / "slow.jpg").exists() and stager.promoted == 1


@pytest.mark.slow
def test_staged_slow_upload_is_featurized_whole_by_the_running_stream(spark, weights, tmp_path):
    """A JPEG written in chunks over 2 s into the inbox, while the long-running stream polls every 200 ms:
    the stream reads it once, whole; its features equal those of the same bytes landed at once."""
    from delta.tables import DeltaTable

    from fruits.home.files import file_states
    from fruits.landing.drop import LedgerRecorder
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path, stream={"trigger": "200ms"})
    landing = tmp_path / "landing"
    reference = place(sample_files("Pineapple", 1), landing / "reference")[0]
    recorder = LedgerRecorder(Home.from_config(config).ledger, landing, "stage")
    stager = InboxStager(tmp_path / "inbox", landing, EXTENSIONS, stable_seconds=30, settle_seconds=0.3, recorder=recorder)
    stop, stop_stream = threading.Event(), threading.Event()
    staging = threading.Thread(target=stager.run, args=(stop, 0.05))
    streaming = threading.Thread(target=run_stream, args=(spark, config, weights), kwargs={"stop": stop_stream})
    streaming.start()
    try:
        staging.start()
        time.sleep(1)
        (tmp_path / "inbox" / "Pineapple").mkdir(parents=True)
        write_slowly(tmp_path / "inbox" / "Pineapple" / "upload.jpg", reference.read_bytes(), 2.0)
        deadline = time.monotonic() + 120
        rows = []
        while time.monotonic() < deadline and len(rows) < 2:
            time.sleep(1)
            if DeltaTable.isDeltaTable(spark, config.features_table):
                rows = spark.read.format("delta").load(config.features_table).collect()
    finally:
        stop.set()
        staging.join(10)
        stop_stream.set()
        streaming.join(60)
    by_name = {Path(local_path(r["path"])).name: r for r in rows}
    assert sorted(by_name) == [reference.name, "upload.jpg"]
    assert by_name["upload.jpg"]["label"] == "Pineapple"
    staged = [r for r in file_states(Home.from_config(config)) if r["path"].endswith("/upload.jpg")]
    assert [r["discovered_by"] for r in staged] == ["stage"]  # recorded by stage itself, once
    assert by_name["upload.jpg"]["content_sha256"] == by_name[reference.name]["content_sha256"]
    assert np.array_equal(by_name["upload.jpg"]["features"], by_name[reference.name]["features"])
    assert spark.read.format("delta").load(config.quarantine_table).count() == 0


@pytest.mark.fast
def test_drop_lands_a_255_byte_name_and_a_name_that_is_not_utf8_recorded_exactly(tmp_path):
    import os

    from fruits.landing.drop import LedgerRecorder

    config = make_config(tmp_path)
    source, landing = tmp_path / "photos", tmp_path / "landing"
    source.mkdir()
    names = [b"p" * 251 + b".jpg", b"caf\xe9.jpg"]
    for name, photo in zip(names, shipped_photos("Banana", 2)):
        (source / os.fsdecode(name)).write_bytes(photo.read_bytes())
    results = drop([source], landing, EXTENSIONS, recorder=LedgerRecorder(Home.from_config(config).ledger, landing, "drop"))
    assert [r.note for r in results] == ["placed", "placed"]
    assert sorted(os.listdir(os.fsencode(landing))) == sorted(names)  # no temporary copy left
    rows = Home.from_config(config).ledger.read().to_pylist()
    exact = sorted(row["raw_path"] or row["path"].encode() for row in rows)
    assert exact == sorted(b"file:" + os.fsencode(landing) + b"/" + n for n in names)


@pytest.mark.fast
def test_a_failed_drop_leaves_no_hidden_copies_in_landing(tmp_path):
    source, landing = tmp_path / "photos", tmp_path / "landing"
    place(shipped_photos("Banana", 1), source)
    (source / "unreadable.jpg").symlink_to("/proc/self/mem")  # a file whose read fails (EIO) half-way in a drop
    with pytest.raises(OSError):
        drop(sorted(source.iterdir()), landing, EXTENSIONS)
    assert [p.name for p in landing.rglob("*")] == [], "a hidden temporary copy was left in landing"


@pytest.mark.fast
def test_stage_keeps_an_inbox_file_that_changed_while_it_was_copied(tmp_path):
    inbox, landing = tmp_path / "inbox", tmp_path / "landing"
    inbox.mkdir()
    first, rest = shipped_photos("Banana", 2)
    slow = inbox / "slow.jpg"
    slow.write_bytes(first.read_bytes())
    copies = []

    def place_then_written_to(path: Path, relative) -> Path:
        target = landing / f"{len(copies)}-{relative}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        copies.append(target)
        if len(copies) == 1:
            with open(path, "ab") as writer:  # its writer was not done: more bytes after our copy
                writer.write(rest.read_bytes())
        return target

    stager = InboxStager(inbox, landing, EXTENSIONS, stable_seconds=0, settle_seconds=0, place=place_then_written_to)
    stager.scan()
    assert stager.promote_ready() == 1
    assert slow.exists(), "the inbox file was removed although it changed after it was copied"
    stager.promote_ready()
    assert not slow.exists() and copies[1].read_bytes() == first.read_bytes() + rest.read_bytes()


@pytest.mark.fast
def test_a_writer_heartbeat_outlives_a_failed_beat_of_any_kind(tmp_path):
    """A beat that fails (an S3 client raises its own errors, not OSError) is retried at the next one: the marker
    keeps being rewritten, so the stream never takes a live writer's files for missing."""
    from fruits.landing.writers import WriterLease

    class Flaky(WriterLease):
        calls = 0

        def beat(self) -> None:
            Flaky.calls += 1
            if Flaky.calls == 2:  # the first beat of the background thread
                raise RuntimeError("service unavailable")
            super().beat()

    with Flaky(str(tmp_path / "writers"), timeout=0.06) as lease:
        lease.start()
        marker = tmp_path / "writers" / lease.id
        deadline = time.monotonic() + 5
        while Flaky.calls < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Flaky.calls >= 4 and json.loads(marker.read_bytes())["beat"] >= 2
