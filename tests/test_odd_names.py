"""Nothing lost, ever: any name the file system allows is recorded, featurized or quarantined, and shown readably;
a writer that pauses mid-file is waited for, not quarantined as truncated."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from conftest import make_config, place, sample_files

pytestmark = pytest.mark.slow

FRUITS = str(Path(sys.executable).with_name("fruits"))

# Good photos under names that are bytes, not text (name -> expected outcome).
ODD = {
    b"caf\xe9.jpg": "ingested",  # Latin-1 from an old Samba share: not UTF-8
    b"Caf\xe9/inside.jpg": "ingested",  # a label folder that is not UTF-8
    b"nl\nx.jpg": "ingested",  # a newline
    b"p" * 251 + b".jpg": "ingested",  # 255 bytes, the most a name may have
    "\u00e9t\u00e9.jpg".encode(): "ingested",  # NFC
    "e\u0301te\u0301.jpg".encode(): "ingested",  # NFD: another name for the same word
    b"-dash.jpg": "ingested",
    b"a:b[1]{x}*?%41\\.jpg": "ingested",
    b"broken\xff.jpg": "quarantined",  # not an image, and not UTF-8
}


def table_rows(uri: str) -> list[dict]:
    return DeltaTable(uri).to_pyarrow_dataset().to_table().to_pylist()


def test_any_name_gets_exactly_one_outcome_and_the_cli_shows_it(spark, weights, tmp_path):
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path, stream={"max_files_per_trigger": 4})
    landing = tmp_path / "landing"
    good = place(sample_files("Banana", 3), landing / "Banana")
    photos = iter(sample_files("Kiwi", len(ODD)))
    root = os.fsencode(landing)
    for name, outcome in ODD.items():
        path = root + b"/" + name
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(next(photos).read_bytes() if outcome == "ingested" else os.urandom(2000))
    (tmp_path / "elsewhere.jpg").write_bytes(sample_files("Lemon", 1)[0].read_bytes())
    os.symlink(tmp_path / "elsewhere.jpg", landing / "outside.jpg")  # a link out of landing: never read
    shared = place(sample_files("Lemon", 1, skip=1), landing / ".shared")[0]  # hidden: never landed itself
    os.symlink(shared, landing / "inside.jpg")  # a link within landing: read, its target's bytes archived

    assert run_stream(spark, config, weights, available_now=True) >= len(ODD) + 4

    ledger = table_rows(config.files_table)
    features, quarantine = table_rows(config.features_table), table_rows(config.quarantine_table)
    exact = {row["raw_path"] or row["path"].encode(): row for row in ledger}
    expected = {b"file:" + root + b"/" + name for name in ODD} | {
        os.fsencode(f"file:{p}") for p in [*good, landing / "inside.jpg"]
    }
    assert set(exact) == expected and len(ledger) == len(expected)  # one row each; the outside link none
    for row in ledger:
        row["path"].encode("utf-8")  # valid UTF-8 always
        assert (row["raw_path"] is not None) == (not utf8(exact_of(row)))
    assert exact[b"file:" + root + b"/caf\xe9.jpg"]["path"] == f"file:{landing}/caf\\xe9.jpg"
    assert exact[b"file:" + root + b"/Caf\xe9/inside.jpg"]["label"] == "Caf\\xe9"

    outcomes = Counter(row["file_id"] for row in features + quarantine)
    assert set(outcomes) == {row["file_id"] for row in ledger} and set(outcomes.values()) == {1}
    state = {row["file_id"]: "ingested" for row in features} | {row["file_id"]: "quarantined" for row in quarantine}
    for name, outcome in ODD.items():
        assert state[exact[b"file:" + root + b"/" + name]["file_id"]] == outcome, name
    assert all(len(row["features"]) == 1280 for row in features)

    # archived (or, quarantined, kept under quarantine/) under valid names that fit; nothing left in landing but the
    # link out of it
    left = {p.relative_to(landing).as_posix() for p in landing.rglob("*") if not p.is_dir()}
    assert left == {"outside.jpg", f".shared/{shared.name}"}
    archived = [p for root in (config.archive, config.quarantine) for p in Path(root).rglob("*") if p.is_file()]
    assert len(archived) == len(expected), sorted(os.fsencode(p.relative_to(tmp_path)) for p in archived)
    assert all(len(os.fsencode(p.name)) <= 255 for p in archived)
    for row in features + quarantine:
        assert Path(row["stored_path"].removeprefix("file:")).is_file(), row["stored_path"]

    env = {**os.environ, "FRUITS_HOME": str(tmp_path)}
    files = subprocess.run([FRUITS, "files"], capture_output=True, env=env, timeout=120)
    assert files.returncode == 0, files.stderr
    lines = files.stdout.decode("utf-8").splitlines()
    assert len(lines) == len(expected)  # a newline in a name does not break a line
    text = "\n".join(lines)
    assert "caf\\xe9.jpg" in text and "nl\\nx.jpg" in text and "p" * 251 + ".jpg" in text
    status = subprocess.run([FRUITS, "status"], capture_output=True, env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    assert f"{len(expected)} discovered" in status.stdout.decode("utf-8")


def test_links_to_a_photo_landed_beside_them_are_stored_as_copies_of_its_bytes(spark, weights, tmp_path):
    """Two symbolic links within landing lead to a photo that landed too, and all three are in one chunk: each link's
    outcome row points at a stored copy of the photo's bytes, whichever of the three comes first in the chunk. (A
    trial found the photo archived first: its link's row pointed at an archive file that was never made, the link
    was left broken in landing, and `fruits model switch` refused the home.)"""
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path)
    landing = tmp_path / "landing"
    photo = place(sample_files("Mango", 1), landing / "Mango")[0]
    content = photo.read_bytes()
    for label in ("Apple", "Zucchini"):  # named before and after the photo: one of them follows it in the chunk
        (landing / label).mkdir(parents=True)
        os.symlink(photo, landing / label / "linked.jpg")

    assert run_stream(spark, config, weights, available_now=True) == 3
    features = table_rows(config.features_table)
    assert len(features) == 3 and not table_rows(config.quarantine_table)
    for row in features:
        stored = Path(row["stored_path"].removeprefix("file:"))
        assert stored.is_file() and not stored.is_symlink() and stored.read_bytes() == content, row["stored_path"]
    assert not [p for p in landing.rglob("*") if p.is_symlink() or p.is_file()]  # no broken link left behind


def exact_of(row: dict) -> bytes:
    return row["raw_path"] or row["path"].encode()


def utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_a_writer_that_pauses_mid_file_gets_features_not_quarantine(spark, weights, tmp_path):
    """scp, SMB, a camera: 40 % of a JPEG, a 4 s pause with the file open, then the rest into the same file."""
    from fruits.streaming.ingest import run_stream

    config = make_config(tmp_path, stream={"trigger": "200ms"}, discovery={"quiet_seconds": "2s"})
    landing = tmp_path / "landing" / "Kiwi"
    landing.mkdir(parents=True)
    photo = sample_files("Kiwi", 1)[0].read_bytes()
    stop = threading.Event()
    thread = threading.Thread(target=run_stream, args=(spark, config, weights), kwargs={"stop": stop})
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not spark.streams.active and time.monotonic() < deadline:
            time.sleep(0.1)
        with open(landing / "slow.jpg", "wb") as writer:
            writer.write(photo[: len(photo) * 4 // 10])
            writer.flush()
            time.sleep(4)  # longer than quiet_seconds: only the open file says it is not complete
            writer.write(photo[len(photo) * 4 // 10 :])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not table_exists_with_rows(config):
            time.sleep(0.5)
        time.sleep(2)  # a second (wrong) version would have been recorded by now
    finally:
        stop.set()
        thread.join(120)
    ledger = table_rows(config.files_table)
    assert [row["size_bytes"] for row in ledger] == [len(photo)]
    features = table_rows(config.features_table)
    assert [row["size_bytes"] for row in features] == [len(photo)]
    assert not quarantine_rows(config)


def table_exists_with_rows(config) -> bool:
    try:
        return len(table_rows(config.features_table)) + len(quarantine_rows(config)) > 0
    except TableNotFoundError:  # not made yet
        return False


def quarantine_rows(config) -> list[dict]:
    try:
        return table_rows(config.quarantine_table)
    except TableNotFoundError:  # never made: nothing quarantined
        return []
