"""Discovery and the file ledger: every landed photo ends up exactly once in features or quarantine, whatever its
mtime, whatever happened to the checkpoint, whether the watcher saw it or a listing did."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from conftest import NOTOP_WEIGHTS, make_config, place, sample_files, wait_for
from fruits.home.home import Home

FRUITS = str(Path(sys.executable).with_name("fruits"))
THIRTY_DAYS = 30 * 24 * 3600


def outcome_paths(config) -> Counter:
    """How many outcome rows (features + quarantine) each landed path has."""
    counts = Counter()
    for table in (config.features_table, config.quarantine_table):
        counts.update(DeltaTable(table).to_pandas(columns=["path"])["path"])
    return counts


def age(paths: list[Path], seconds: float) -> None:
    """Set the mtime of ``paths`` ``seconds`` in the past, as `cp -p`, `rsync -a`, `mv` or unzip leave it."""
    for path in paths:
        when = time.time() - seconds
        os.utime(path, (when, when))


def uri(path: Path) -> str:
    return f"file:{path}"


def test_listing_records_each_version_once_and_skips_hidden_names(tmp_path):
    """No Spark: repeated listings, and files `fruits drop` recorded itself, never give a second ledger row."""
    from fruits.landing.drop import LedgerRecorder, drop
    from fruits.streaming.discovery import Discovery

    config = make_config(tmp_path, discovery={"after_ingest": "keep"})
    landing = tmp_path / "landing"
    place(sample_files("Kiwi", 3), landing / "Kiwi")
    place(sample_files("Kiwi", 1, skip=3), landing / "_spark_private")
    place(sample_files("Kiwi", 1, skip=4), landing / ".staging")
    (landing / "Kiwi" / ".hidden.jpg").write_bytes(b"x")
    (landing / "Kiwi" / "notes.txt").write_text("not an image")
    old = place(sample_files("Mango", 2), landing / "Mango")
    age(old, THIRTY_DAYS)

    discovery = Discovery(Home.from_config(config), uri(landing))
    discovery.start(continuous=False)
    assert discovery.recorded == {"backfill": 5}
    assert discovery.backfill() == 0  # nothing new
    drop([sample_files("Lemon", 1)[0]], landing, ["jpg"], label="Lemon", recorder=LedgerRecorder(Home.from_config(config).ledger, landing, "drop"))
    assert discovery.backfill() == 0  # drop recorded it before it appeared
    (landing / "Kiwi" / sample_files("Kiwi", 1)[0].name).write_bytes(sample_files("Fig", 1)[0].read_bytes())
    assert discovery.backfill() == 1  # overwritten in place: a new version

    rows = Home.from_config(config).ledger.read().to_pandas()
    assert len(rows) == len(set(rows["file_id"])) == 7
    assert Counter(rows["discovered_by"]) == {"backfill": 6, "drop": 1}
    assert rows.loc[rows["overwrites"], "path"].tolist() == [uri(landing / "Kiwi" / sample_files("Kiwi", 1)[0].name)]
    assert sorted(set(rows["label"])) == ["Kiwi", "Lemon", "Mango"]
    assert not rows["path"].str.contains("/_spark_private/|/.staging/|/.hidden", regex=True).any()


@pytest.mark.slow
def test_old_mtimes_and_a_deleted_checkpoint_lose_and_duplicate_nothing(spark, weights, tmp_path):
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path, stream={"max_files_per_trigger": 4})
    landing = tmp_path / "landing"
    first = place(sample_files("Kiwi", 6), landing / "Kiwi")
    assert run_stream(spark, config, weights, available_now=True) == 6

    # Photos older than everything seen so far: copied with their mtime kept, and a folder moved in (rsync -a, mv).
    copied = place(sample_files("Mango", 2), landing / "Mango")
    age(copied, THIRTY_DAYS)
    outside = tmp_path / "camera-roll" / "Fig"
    moved = place(sample_files("Fig", 3), outside)
    age(moved, 3 * THIRTY_DAYS)
    shutil.move(str(outside), str(landing / "Fig"))
    assert run_stream(spark, config, weights, available_now=True) == 5

    # The operator deletes the checkpoint (a stuck stream), and one more photo lands.
    shutil.rmtree(config.checkpoint("ingest"))
    later = place(sample_files("Lemon", 1), landing / "Lemon")
    run_stream(spark, config, weights, available_now=True)  # replays the whole ledger from a new checkpoint
    assert run_stream(spark, config, weights, available_now=True) == 0

    # Deleted under a running stream: its next chunk cannot write its offsets. It fails with a one-line error (the
    # README's promise for every error), and the next start gives the photo landed then its one outcome.
    from fruits.streaming.ingest import StreamFailed

    running = make_config(tmp_path, stream={"trigger": "200ms"})
    failed: list[BaseException] = []

    def stream() -> None:
        try:
            run_stream(spark, running, weights)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        assert wait_for(lambda: spark.streams.active, 60)
        time.sleep(2)  # a few empty triggers: the query is running
        shutil.rmtree(running.checkpoint("ingest"))
        later += place(sample_files("Lemon", 1, skip=1), landing / "Lemon")
        thread.join(120)
    finally:
        for query in spark.streams.active:
            query.stop()
        thread.join(60)
    assert [type(exc) for exc in failed] == [StreamFailed], failed
    assert "\n" not in str(failed[0]) and str(failed[0]).startswith("stream failed: "), str(failed[0])
    run_stream(spark, config, weights, available_now=True)

    counts = outcome_paths(config)
    landed = [*first, *copied, *(landing / "Fig" / p.name for p in moved), *later]
    assert sorted(counts) == sorted(uri(p) for p in landed)
    assert set(counts.values()) == {1}, {p: n for p, n in counts.items() if n > 1}
    assert DeltaTable(config.quarantine_table).to_pandas().empty
    # Each file was archived once its row was committed: landing holds no photo any more.
    assert not [p for p in landing.rglob("*.jpg")]
    stored = DeltaTable(config.features_table).to_pandas(columns=["stored_path"])["stored_path"]
    assert all(Path(p[len("file:") :]).is_file() for p in stored)


@pytest.mark.slow
def test_a_previous_versions_checkpoint_is_continued_and_a_file_recorded_before_it_appears_is_waited_for(
    spark, weights, tmp_path
):
    """Homes whose stream read the ledger with Delta's own streaming source keep their checkpoint: the new source
    reads its offsets (the last version again, found decided), so nothing is lost and nothing doubled. And `fruits
    drop`, `stage` and uploads record a file, then rename it into place: a stream that reads the row in between
    waits for the file instead of quarantining it as gone."""
    from fruits.landing.drop import LedgerRecorder, _prepare
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path)
    landing = tmp_path / "landing"
    first = place(sample_files("Kiwi", 3), landing / "Kiwi")
    assert run_stream(spark, config, weights, available_now=True) == 3
    # The checkpoint the previous version wrote: Delta's source over the ledger, up to its current version.
    shutil.rmtree(config.checkpoint("ingest"))
    (
        spark.readStream.format("delta").load(config.files_table).writeStream
        .option("checkpointLocation", config.checkpoint("ingest")).foreachBatch(lambda batch, batch_id: None)
        .trigger(availableNow=True).start().awaitTermination()
    )
    offsets = sorted((Path(config.checkpoint("ingest")) / "offsets").glob("[0-9]*"), key=lambda p: int(p.name))
    assert "reservoirVersion" in offsets[-1].read_text()

    later = place(sample_files("Mango", 2), landing / "Mango")
    (photo,) = sample_files("Fig", 1)
    (landing / "Fig").mkdir()
    placement = _prepare(photo, landing / "Fig" / photo.name)
    LedgerRecorder(Home.from_config(config).ledger, landing, "drop")([placement])  # recorded; still under its hidden name

    class PublishWhenWaitedFor(logging.Handler):  # the writer's rename comes while the stream has the row
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("waiting for") and placement.temporary.exists():
                threading.Timer(0.3, placement.temporary.rename, [placement.final]).start()

    handler, logger = PublishWhenWaitedFor(), logging.getLogger("fruits.stream")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert run_stream(spark, config, weights, available_now=True) == 3
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    counts = outcome_paths(config)
    assert sorted(counts) == sorted(uri(p) for p in [*first, *later, placement.final])
    assert set(counts.values()) == {1}
    assert DeltaTable(config.quarantine_table).to_pandas().empty


@pytest.mark.slow
def test_watcher_events_and_listing_backfill_each_find_new_photos(spark, weights, tmp_path):
    """With the watcher on, photos moved in are recorded from events, within seconds. With it off (or its events
    lost), the periodic listing finds every photo landed meanwhile."""
    from fruits.streaming.ingest import run_stream

    landing = tmp_path / "landing"

    def stream_until(config, land, expected: int, timeout: float = 120) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=run_stream, args=(spark, config, weights), kwargs={"stop": stop})
        thread.start()
        try:
            deadline = time.monotonic() + timeout
            while not spark.streams.active and time.monotonic() < deadline:  # discovery starts before the query
                time.sleep(0.1)
            land()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and sum(outcome_paths(config).values()) < expected:
                time.sleep(0.5)
        finally:
            stop.set()
            thread.join(120)

    # 1. Watcher on, listing every 10 minutes: only events can find these in time.
    watched = make_config(tmp_path, stream={"trigger": "200ms"}, discovery={"backfill_interval": "10m"})
    outside = tmp_path / "incoming" / "Pineapple"
    photos = place(sample_files("Pineapple", 4), outside)
    age(photos, THIRTY_DAYS)

    # a folder of old photos moved in at once
    stream_until(watched, lambda: shutil.move(str(outside), str(landing / "Pineapple")), 4)
    # 2. Watcher off, a listing every second: photos copied in by a tool that knows nothing of the ledger.
    listed = make_config(tmp_path, stream={"trigger": "200ms"}, discovery={"watch": False, "backfill_interval": "1s"})

    stream_until(listed, lambda: age(place(sample_files("Pomegranate", 3), landing / "Pomegranate"), THIRTY_DAYS), 7)

    rows = Home.from_config(watched).ledger.read().to_pandas()
    assert Counter(zip(rows["label"], rows["discovered_by"])) == {("Pineapple", "watch"): 4, ("Pomegranate", "backfill"): 3}
    counts = outcome_paths(watched)
    assert len(counts) == 7 and set(counts.values()) == {1}


@pytest.mark.fast
def test_a_file_is_recorded_when_renamed_in_or_closed_after_writing_never_while_its_writer_pauses():
    """The watcher's rules, fed real watchdog events: a rename within landing (rsync's and `fruits drop`'s last step)
    is complete and wakes discovery; a file written in place waits for its writer's close (then settles: `cp -p`
    sets the mtime after the close), however long the writer pauses with it open, and is not recorded at a stop while
    still open; a renamed file written to again waits for that close too. Where closes are not reported, a written
    file waits until it has been quiet for quiet_seconds."""
    from watchdog.events import (
        FileAttribEvent, FileClosedEvent, FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileOpenedEvent,
    )

    from fruits.streaming.discovery import _Events

    events = _Events(["jpg"], settle=0.0, quiet=0.0)
    events.on_any_event(FileCreatedEvent("/landing/Kiwi/written.jpg"))
    events.on_any_event(FileModifiedEvent("/landing/Kiwi/written.jpg"))
    events.on_any_event(FileOpenedEvent("/landing/Kiwi/written.jpg"))  # a reader: says nothing
    events.on_any_event(FileAttribEvent("/landing/Kiwi/written.jpg"))  # still open for writing: its close decides
    assert not events.arrived.is_set()
    events.on_any_event(FileMovedEvent("/landing/Kiwi/.tmp-1", "/landing/Kiwi/renamed.jpg"))
    events.on_any_event(FileMovedEvent("/landing/Kiwi/.tmp-2", "/landing/Kiwi/touched.jpg"))
    events.on_any_event(FileModifiedEvent("/landing/Kiwi/touched.jpg"))
    events.on_any_event(FileMovedEvent("/landing/Kiwi/.notes.tmp", "/landing/Kiwi/notes.txt"))  # not an image
    assert events.arrived.is_set()
    time.sleep(0.01)
    assert events.settled() == ["/landing/Kiwi/renamed.jpg"]  # the written ones are still open, quiet or not
    assert events.settled(everything=True) == []  # a stop does not record a file still being written
    events.on_any_event(FileClosedEvent("/landing/Kiwi/written.jpg"))
    events.on_any_event(FileAttribEvent("/landing/Kiwi/written.jpg"))  # cp -p: the mtime, after the close
    time.sleep(0.01)
    assert events.settled() == ["/landing/Kiwi/written.jpg"]
    events.on_any_event(FileClosedEvent("/landing/Kiwi/touched.jpg"))
    assert events.settled(everything=True) == ["/landing/Kiwi/touched.jpg"]

    no_closes = _Events(["jpg"], settle=0.0, quiet=60.0, closes=False)
    no_closes.on_any_event(FileModifiedEvent("/landing/Kiwi/written.jpg"))
    assert no_closes.settled() == [] and no_closes.settled(everything=True) == []
    no_closes.quiet = 0.0
    no_closes.on_any_event(FileModifiedEvent("/landing/Kiwi/written.jpg"))
    time.sleep(0.01)
    assert no_closes.settled() == ["/landing/Kiwi/written.jpg"]


@pytest.mark.fast
def test_an_empty_file_closed_or_renamed_in_is_recorded_at_once_one_still_open_waits_for_its_writer(tmp_path):
    """No Spark, the real watcher: an empty file its writer closed (`: > x.jpg`, `touch`) or renamed into landing is
    recorded from its events within seconds, to be quarantined as empty, not left to the next listing (10 minutes by
    default); an empty file its writer still holds open before its first byte is not recorded until it is closed,
    and then with its bytes."""
    from fruits.streaming.discovery import Discovery

    config = make_config(tmp_path, discovery={"quiet_seconds": "10m", "backfill_interval": "10m", "commit_interval": "100ms"})
    landing = tmp_path / "landing"
    (landing / "Kiwi").mkdir(parents=True)
    discovery = Discovery(Home.from_config(config), uri(landing))
    discovery.start()
    try:
        assert wait_for(lambda: discovery._observer is not None, 30)
        time.sleep(0.5)  # the observer's watches are set
        (landing / "Kiwi" / "closed.jpg").open("wb").close()
        (landing / "Kiwi" / ".part").write_bytes(b"")
        os.rename(landing / "Kiwi" / ".part", landing / "Kiwi" / "renamed.jpg")
        paused = (landing / "Kiwi" / "paused.jpg").open("wb")  # created; its writer has not written yet

        def recorded() -> dict[str, int]:
            rows = Home.from_config(config).ledger.read().to_pandas()
            assert set(rows["discovered_by"]) <= {"watch"}, rows
            return dict(zip(rows["path"].str.rsplit("/", n=1).str[-1], rows["size_bytes"]))

        wait_for(lambda: len(recorded()) >= 2, 20, poll=0.2)
        time.sleep(1.0)  # SETTLE_SECONDS and commit_interval several times over: the paused file stays out
        assert recorded() == {"closed.jpg": 0, "renamed.jpg": 0}
        photo = sample_files("Kiwi", 1)[0].read_bytes()
        paused.write(photo)
        paused.close()
        wait_for(lambda: len(recorded()) >= 3, 20, poll=0.2)
        assert recorded() == {"closed.jpg": 0, "renamed.jpg": 0, "paused.jpg": len(photo)}
        left = (landing / "Kiwi" / "left.jpg").open("wb")  # created, still empty when the stream stops
        time.sleep(0.1)  # its creation seen, and stopped on (settling takes SETTLE_SECONDS) or waiting for its close
    finally:
        discovery.stop()
    left.close()
    assert recorded() == {"closed.jpg": 0, "renamed.jpg": 0, "paused.jpg": len(photo)}  # left to the next listing
    assert len(Home.from_config(config).ledger.read()) == 3  # one row each: no version recorded twice


@pytest.mark.fast
def test_a_landing_folder_moved_away_and_made_again_is_watched_again_at_once(tmp_path):
    """No Spark, the real watcher: an operator moves landing away and makes a new one while the stream runs. The
    watches follow the old folder; discovery sees the folder at landing's path is another, lists it and watches
    it, so photos landed in the new folder are recorded within seconds, not at the next listing (10 minutes)."""
    from fruits.streaming.discovery import Discovery

    config = make_config(tmp_path, discovery={"backfill_interval": "10m", "commit_interval": "100ms"})
    landing = tmp_path / "landing"
    (landing / "Kiwi").mkdir(parents=True)
    discovery = Discovery(Home.from_config(config), uri(landing))
    discovery.start()

    def recorded() -> set[str]:
        rows = Home.from_config(config).ledger.read().to_pandas() if sum(discovery.recorded.values()) else None
        return set() if rows is None else set(rows["path"].str.rsplit("/", n=1).str[-1])

    try:
        assert wait_for(lambda: discovery._observer is not None and discovery.last_backfill, 30)
        time.sleep(0.5)  # the observer's watches are set
        os.rename(landing, tmp_path / "landing.old")
        (landing / "Melon").mkdir(parents=True)
        (landing / "Melon" / "early.jpg").write_bytes(b"landed before discovery looked again")
        assert wait_for(lambda: "early.jpg" in recorded(), 10, poll=0.2), recorded()
        time.sleep(0.5)  # the new folder's watches are set
        (landing / "Melon" / "later.jpg").write_bytes(b"landed in the new folder, seen by its events")
        assert wait_for(lambda: "later.jpg" in recorded(), 10, poll=0.2), recorded()
    finally:
        discovery.stop()
    assert discovery.recorded["watch"] >= 1 and recorded() == {"early.jpg", "later.jpg"}


@pytest.mark.fast
def test_a_close_that_comes_while_an_empty_created_file_is_looked_at_is_not_lost():
    """An empty file with only its creation seen settles, and the flush finds it empty: it goes back to wait for its
    writer's close. A close that came in between (the writer wrote and closed while the flush looked) decides: the
    file is not sent back to wait for a close that already happened."""
    from watchdog.events import FileClosedEvent, FileCreatedEvent, FileModifiedEvent

    from fruits.streaming.discovery import _Events

    events = _Events(["jpg"], settle=0.0, quiet=0.0)
    for name in ("raced.jpg", "waits.jpg"):
        events.on_any_event(FileCreatedEvent(f"/landing/Kiwi/{name}"))
    time.sleep(0.01)
    assert sorted(events.settled()) == ["/landing/Kiwi/raced.jpg", "/landing/Kiwi/waits.jpg"]
    assert events.only_created("/landing/Kiwi/raced.jpg") and events.only_created("/landing/Kiwi/waits.jpg")
    events.on_any_event(FileModifiedEvent("/landing/Kiwi/raced.jpg"))  # between the flush's stat and its re-wait
    events.on_any_event(FileClosedEvent("/landing/Kiwi/raced.jpg"))
    events.wait_for_close("/landing/Kiwi/raced.jpg")
    events.wait_for_close("/landing/Kiwi/waits.jpg")
    time.sleep(0.01)
    assert events.settled() == ["/landing/Kiwi/raced.jpg"]  # its close counted; the other still waits for one
    assert events.settled(everything=True) == []


def test_a_second_stream_on_the_same_home_stops_at_once(tmp_path):
    from fruits.home.locks import exclusive

    config = make_config(tmp_path)
    env = {**os.environ, "FRUITS_WEIGHTS": str(NOTOP_WEIGHTS), "FRUITS_MASTER": "local[2]"}
    with exclusive(config, "stream"):  # the first stream
        started = time.monotonic()
        second = subprocess.run(
            [FRUITS, "stream", "--home", str(tmp_path), "--available-now"], capture_output=True, text=True, env=env,
            timeout=120,
        )
        took = time.monotonic() - started
    assert second.returncode == 3
    assert "another stream is running on this home" in second.stderr
    assert f"pid {os.getpid()} " in second.stderr
    assert took < 20, f"the second stream took {took:.0f} s to give up (it should not start Spark)"
    assert not (tmp_path / "tables").exists()  # it wrote nothing


@pytest.mark.slow
def test_a_home_made_before_the_ledger_is_adopted_once_even_after_drop_made_the_ledger_and_a_crash(spark, weights, tmp_path):
    """Tables written by the previous version (no ledger, no file_id column, photos still in landing). `fruits drop`
    makes the ledger first (as `serve` would), and the adoption crashes between its two steps: the next stream still
    adopts every old row, each exactly once, and only featurizes the photo that is really new."""
    from pyspark.sql import functions as F

    from fruits.landing.drop import LedgerRecorder, drop
    from fruits.home.tables import LEDGER_LINK
    from fruits.streaming.ingest import run_stream
    from fruits.streaming.migration import ADOPTION_STEPS, adopt_legacy_rows

    config = make_config(tmp_path, discovery={"after_ingest": "keep"})
    landing = tmp_path / "landing"
    old = place(sample_files("Kiwi", 4), landing / "Kiwi")
    (landing / "Kiwi" / "broken.jpg").write_bytes(b"not a jpeg")
    assert run_stream(spark, config, weights, available_now=True) == 5
    # Back to the previous version's layout: no ledger link columns, no ledger, no checkpoint.
    legacy = [f.name for f in LEDGER_LINK]
    for table in (config.features_table, config.quarantine_table):
        frame = spark.read.format("delta").load(table).drop(*legacy).localCheckpoint()
        frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(table)
    shutil.rmtree(config.files_table)
    shutil.rmtree(config.checkpoint("ingest"))
    # The new version's first command is a drop: it makes the ledger, with its photo's row only.
    recorder = LedgerRecorder(Home.from_config(config).ledger, landing, "drop")
    (new,) = (r.target for r in drop(sample_files("Mango", 1), landing, ["jpg"], label="Mango", recorder=recorder))
    assert Counter(Home.from_config(config).ledger.read().to_pandas()["discovered_by"]) == {"drop": 1}
    # The stream's start crashes after the adoption's first step (prepare_home has added the columns by then).
    Home.from_config(config).features.ensure(spark)
    Home.from_config(config).quarantine.ensure(spark)
    assert adopt_legacy_rows(spark, Home.from_config(config), steps=ADOPTION_STEPS[:1]) == 5
    assert adopt_legacy_rows(spark, Home.from_config(config), steps=ADOPTION_STEPS[:1]) == 0  # the ledger only gets what it lacks

    assert run_stream(spark, config, weights, available_now=True) == 1
    counts = outcome_paths(config)
    assert sorted(counts) == sorted(uri(p) for p in [*old, landing / "Kiwi" / "broken.jpg", new])
    assert set(counts.values()) == {1}
    rows = Home.from_config(config).ledger.read().to_pandas()
    assert Counter(rows["discovered_by"]) == {"migration": 5, "drop": 1}
    assert rows["file_id"].is_unique
    features = spark.read.format("delta").load(config.features_table)
    assert features.where(F.col("file_id").isNull()).count() == 0
    assert adopt_legacy_rows(spark, Home.from_config(config)) == 0  # nothing left to adopt, told by the statistics


@pytest.mark.slow
def test_delete_after_ingest_and_a_file_changed_between_discovery_and_reading(spark, weights, tmp_path):
    """With after_ingest = "delete" the landed file is removed once its row is committed. A file rewritten after its
    discovery keeps the ledger row of its first version, which gets a quarantine row saying so; its new version
    (found by the start-up listing) is featurized."""
    from fruits.landing.drop import LedgerRecorder, drop
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path, discovery={"after_ingest": "delete"})
    landing = tmp_path / "landing"
    recorder = LedgerRecorder(Home.from_config(config).ledger, landing, "drop")
    kept, changed = (r.target for r in drop(sample_files("Kiwi", 2), landing, ["jpg"], label="Kiwi", recorder=recorder))
    changed.write_bytes(sample_files("Fig", 1)[0].read_bytes())  # rewritten after drop recorded it
    assert run_stream(spark, config, weights, available_now=True) == 3

    features = DeltaTable(config.features_table).to_pandas(columns=["path", "size_bytes", "stored_path"])
    quarantine = DeltaTable(config.quarantine_table).to_pandas(columns=["path", "reason"])
    assert sorted(features["path"]) == sorted([uri(kept), uri(changed)])
    assert features.loc[features["path"] == uri(changed), "size_bytes"].item() == len(sample_files("Fig", 1)[0].read_bytes())
    assert features["stored_path"].isna().all()
    assert quarantine["path"].tolist() == [uri(changed)]
    assert quarantine["reason"].item().startswith("changed after it was discovered")
    assert not list(landing.rglob("*.jpg")) and not (tmp_path / "archive").exists()


@pytest.mark.fast
def test_what_has_an_images_name_but_is_not_a_readable_file_is_skipped_and_logged_once(tmp_path, caplog):
    """A FIFO, a link to nothing and a link to a folder, each named like a photo: never listed (a FIFO's read would
    block), and each named once in the log however many listings pass, so an operator sees why it has no outcome."""
    from fruits.streaming.discovery import list_local

    landing = tmp_path / "landing"
    (landing / "Kiwi" / "sub").mkdir(parents=True)
    photo = landing / "Kiwi" / "photo.jpg"
    photo.write_bytes(b"bytes of a photo")
    os.mkfifo(landing / "Kiwi" / "pipe.jpg")
    (landing / "Kiwi" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (landing / "Kiwi" / "folder.jpg").symlink_to(landing / "Kiwi" / "sub")
    with caplog.at_level(logging.WARNING, logger="fruits.discovery"):
        for _ in range(3):
            assert [version.path for version in list_local(str(landing), ["jpg"])] == [uri(photo)]
    reported = [record.getMessage() for record in caplog.records if record.getMessage().startswith("not read: ")]
    assert sorted(message.split()[2].rsplit("/", 1)[1] for message in reported) == ["folder.jpg", "gone.jpg", "pipe.jpg"]


@pytest.mark.fast
def test_sorted_digests_hold_members_added_in_bulk_and_one_by_one():
    """A ledger view's first load adds its ids at once (merged into the sorted array), later commits a few at a time
    (kept in a set until merged): membership is the same either way."""
    import numpy as np

    from fruits.home.ledger import MERGE_AT, SortedDigests, digests

    ids = [f"{n:032x}" for n in range(MERGE_AT + 5)]
    members = SortedDigests()
    members.add(digests(ids[: MERGE_AT + 1]))  # bulk
    members.add(digests(ids[MERGE_AT + 1 :]))  # one by one
    members.add(digests(ids[:3]))  # again
    assert members.contains(digests(ids)).all()
    absent = digests([f"{n:032x}" for n in range(MERGE_AT + 5, MERGE_AT + 9)])
    assert not members.contains(absent).any()
    assert members.contains(np.concatenate([absent[:1], digests(ids[-1:])])).tolist() == [False, True]
