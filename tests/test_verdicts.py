"""Verdicts that can be undone, on the real stream: quarantined originals are kept whatever ``after_ingest`` says,
``fruits retry`` supersedes a quarantine row, the stream retries transient failures by itself, and a file recorded
by its writer before it appears is waited for (without blocking the rest) and ingested whenever it appears."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from conftest import local_path, make_config, place, sample_files
from faults import CrashingFeaturizer, crash_png
from fruits.home.home import Home

pytestmark = pytest.mark.slow


def outcome_rows(config) -> list[dict]:
    rows = []
    for table, kind in ((config.features_table, "features"), (config.quarantine_table, "quarantine")):
        columns = ["path", "file_id", "attempt", "stored_path"] + (["cause", "retryable", "reason"] if kind == "quarantine" else [])
        for row in DeltaTable(table).to_pyarrow_table(columns=columns).to_pylist():
            rows.append({**row, "kind": kind})
    return rows


def states(config) -> dict[str, dict]:
    from fruits.home.files import file_states

    return {Path(local_path(row["path"])).name: row for row in file_states(Home.from_config(config))}


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_quarantined_originals_are_kept_and_every_verdict_can_be_undone(spark, weights, tmp_path):
    from fruits.home.ledger import FileVersion, local_mtime_ms, record
    from fruits.model.runtimes import make_featurizer
    from fruits.reports.retry import retry_quarantined
    from fruits.streaming.ingest import run_stream
    from fruits.landing.writers import WriterLease

    landing = tmp_path / "landing"
    photos = place(sample_files("Banana", 6), landing / "Banana")
    sizes = sorted(p.stat().st_size for p in photos)
    cap = sizes[2]  # the three largest photos are above the byte cap
    too_large = {p.name for p in photos if p.stat().st_size > cap}
    assert len(too_large) >= 2
    crashing = landing / "Lemon" / "crashes-the-worker.jpg"
    crashing.parent.mkdir(parents=True)
    crashing.write_bytes(crash_png())  # below the byte cap: it reaches the worker
    sections = dict(
        discovery={"after_ingest": "delete", "writer_timeout": "3s"},
        stream={"max_files_per_trigger": 4, "max_retries": 1, "retry_backoff": "1s", "trigger": "200ms"},
    )

    # 1. A byte cap too low, and a file that kills its worker. after_ingest = "delete" deletes featurized originals
    #    only: quarantined ones are moved to HOME/quarantine and kept.
    config = make_config(tmp_path, model={"max_bytes": cap}, **sections)
    featurizer = CrashingFeaturizer(make_featurizer(config, weights))  # the stream's own, which dies on crash_png()
    run_stream(spark, config, weights, available_now=True, featurizer=featurizer)
    first = states(config)
    assert {name for name, row in first.items() if row["state"] == "quarantined"} == too_large
    assert first[crashing.name]["state"] == "retrying" and first[crashing.name]["cause"] == "transient"
    assert {row["cause"] for name, row in first.items() if name in too_large} == {"too_large"}
    kept = {Path(local_path(row["stored_path"])) for name, row in first.items() if row["state"] != "ingested"}
    assert {p.name for p in kept} == too_large | {crashing.name}
    assert all(p.exists() and str(p).startswith(config.quarantine + "/") for p in kept), kept
    assert not any(p.exists() for p in photos) and not crashing.exists()  # featurized: deleted; quarantined: moved

    # 2. The cap raised: `fruits retry` sends the too-large files through again; the running stream also retries the
    #    crashing file by itself once ([stream] max_retries = 1), and then its verdict is final.
    config = make_config(tmp_path, **sections)
    asked = retry_quarantined(Home.from_config(config), reason="too_large")
    assert {Path(local_path(row["path"])).name for row in asked} == too_large
    # Asked twice (two operators at once): the same attempt, which gets one outcome (checked at the end).
    assert len(retry_quarantined(Home.from_config(config), reason="too_large")) == len(too_large)
    stop = threading.Event()
    stream = threading.Thread(
        target=run_stream, args=(spark, config, weights), kwargs={"stop": stop, "featurizer": featurizer}
    )
    stream.start()
    try:
        def settled() -> bool:
            now = states(config)
            return all(now[name]["state"] == "ingested" for name in too_large) and \
                now[crashing.name]["state"] == "quarantined"

        wait_until(settled, 300, "the retried files' new outcomes")

        # 3. Recorded first by a writer that died before the file appeared: missing, then ingested when it appears.
        #    Recorded first by a writer that still heartbeats: waiting (the rest goes on), ingested when it appears.
        source = sample_files("Lemon", 2, skip=1)
        staged = tmp_path / "elsewhere"
        staged.mkdir()
        late, slow = (shutil.copy2(p, staged / name) for p, name in zip(source, ("late.jpg", "slow.jpg")))

        def version(path: str) -> FileVersion:
            stat = os.stat(path)
            target = f"file:{landing}/Lemon/{Path(path).name}"
            return FileVersion(target, stat.st_size, local_mtime_ms(stat), "Lemon")

        record(Home.from_config(config).ledger, [version(late)], "drop", writer="a-writer-that-died")
        with WriterLease(config.writers, timeout=3.0) as lease:
            lease.start()
            record(Home.from_config(config).ledger, [version(slow)], "drop", writer=lease.id)
            wait_until(lambda: {states(config).get(n, {}).get("cause") for n in ("late.jpg", "slow.jpg")}
                       == {"missing", "waiting"}, 60, "the verdicts on files not there yet")
            assert states(config)["slow.jpg"]["state"] == "retrying"
            os.link(slow, landing / "Lemon" / "slow.jpg")  # the writer's rename
            wait_until(lambda: states(config)["slow.jpg"]["state"] == "ingested", 60, "the waited-for file")
        os.link(late, landing / "Lemon" / "late.jpg")  # the lost file turns up after all
        wait_until(lambda: states(config)["late.jpg"]["state"] == "ingested", 60, "the missing file")
    finally:
        stop.set()
        stream.join(120)
    assert not stream.is_alive()

    # Exactly one current outcome per file version, the superseded ones kept as history.
    rows = outcome_rows(config)
    per_try = Counter((row["file_id"], row["attempt"]) for row in rows)
    assert max(per_try.values()) == 1, "an attempt has two outcomes"
    final = states(config)
    assert {name for name, row in final.items() if row["state"] == "ingested"} == \
        {p.name for p in photos} | {"late.jpg", "slow.jpg"}
    assert final[crashing.name]["state"] == "quarantined"
    crash_rows = sorted((r for r in rows if r["path"].endswith(crashing.name)), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["cause"], r["retryable"]) for r in crash_rows] == [(0, "transient", True), (1, "transient", False)]
    retried = [r for r in rows if Path(local_path(r["path"])).name in too_large]
    assert Counter((r["kind"], r["attempt"]) for r in retried) == {("quarantine", 0): len(too_large), ("features", 1): len(too_large)}
    # The retried originals were read from the quarantine folder, then deleted (featurized, after_ingest = "delete");
    # the crashing file's original is still kept there.
    assert not any(p.exists() for p in kept if p.name in too_large)
    assert Path(local_path(crash_rows[-1]["stored_path"])).exists()


def test_a_file_left_in_landing_after_its_outcome_was_committed_is_moved_at_the_next_start(spark, weights, tmp_path):
    """A crash between an outcome's commit and the file's move leaves a decided file in landing: the next listing
    moves it where its outcome row says, and it is not featurized again; so does a file whose name is not UTF-8
    (found by its exact bytes, not by the ledger's readable spelling of its name)."""
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path)
    landing = tmp_path / "landing"
    photos = place(sample_files("Kiwi", 2), landing / "Kiwi")
    odd = os.fsencode(landing / "Kiwi") + b"/caf\xe9.jpg"  # Latin-1: the ledger spells it caf\xe9.jpg
    with open(odd, "wb") as handle:
        handle.write(sample_files("Kiwi", 1, skip=2)[0].read_bytes())
    assert run_stream(spark, config, weights, available_now=True) == 3
    features = DeltaTable(config.features_table).to_pyarrow_table(columns=["path", "stored_path"]).to_pylist()
    stored = {row["path"]: Path(local_path(row["stored_path"])) for row in features}
    # As if the stream had died between the commits and the moves: archived photos back in landing, unmoved.
    left = {f"file:{photos[0]}": os.fsencode(photos[0]), f"file:{landing}/Kiwi/caf\\xe9.jpg": odd}
    for path, exact in left.items():
        os.rename(stored[path], exact)
    assert run_stream(spark, config, weights, available_now=True) == 0  # decided already: no new outcome
    for path, exact in left.items():
        assert not os.path.lexists(exact) and stored[path].exists(), path
    assert len(DeltaTable(config.features_table).to_pyarrow_table(columns=["path"])) == 3
