"""The ledger's streaming source (fruits.streaming.ledger_source) without Spark: its offsets are ledger versions, a
micro-batch is the rows of its commits, a replay reads the same rows, and an older checkpoint's Delta offsets are read
conservatively. The stream over it is tested end to end in test_stream, test_discovery and test_exactly_once."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

from fruits.ledger import FileVersion, ensure_ledger, record
from fruits.streaming.ledger_source import LedgerReader, ledger_version

pytestmark = pytest.mark.fast


def versions(prefix: str, count: int) -> list[FileVersion]:
    return [FileVersion(f"file:/landing/Kiwi/{prefix}{i}.jpg", 100 + i, 1_700_000_000_000 + i, "Kiwi") for i in range(count)]


def rows(reader: LedgerReader, start: dict, end: dict) -> list[str]:
    """The paths of a micro-batch's rows, as Spark's task would read them."""
    partitions = reader.partitions(start, end)
    batches = [batch for partition in partitions for batch in reader.read(partition)]
    return sorted(pa.Table.from_batches(batches).column("path").to_pylist()) if batches else []


@pytest.fixture
def ledger(tmp_path):
    uri = str(tmp_path / "files")
    ensure_ledger(uri)
    for commit, count in enumerate([3, 2, 4]):  # versions 1, 2, 3
        record(uri, versions(f"c{commit}-", count), "watch")
    return uri


def test_micro_batches_follow_commits_within_the_row_limit_and_replay_the_same_rows(ledger):
    reader = LedgerReader("file:" + ledger, rows_per_trigger=4)
    start = reader.initialOffset()
    first = reader.latestOffset(start, reader.getDefaultReadLimit())
    assert first == {"version": 1}  # version 0 (the creation, no rows) and 1 (3 rows); version 2 would make 5 > 4
    assert rows(reader, start, first) == [f"file:/landing/Kiwi/c0-{i}.jpg" for i in range(3)]
    second = reader.latestOffset(first, ReadMaxRows(4))
    assert second == {"version": 2}  # 2 more rows; the 4 of version 3 would make 6
    third = reader.latestOffset(second, ReadMaxRows(4))
    assert third == {"version": 3}  # exactly the limit
    assert reader.latestOffset(third, ReadMaxRows(4)) == third  # nothing new: the start again
    assert reader.partitions(third, third) == []
    # A replay after a crash (same offsets from the checkpoint) reads the same rows, whatever came since.
    record(ledger, versions("later-", 2), "watch")
    assert rows(reader, first, second) == [f"file:/landing/Kiwi/c1-{i}.jpg" for i in range(2)]
    # A commit bigger than the limit is a micro-batch of its own, never split and never stuck.
    assert reader.latestOffset(second, ReadMaxRows(1)) == {"version": 3}
    assert reader.latestOffset(third, ReadAllAvailable()) == {"version": 4}


def test_available_now_stops_at_the_version_it_started_with(ledger):
    reader = LedgerReader("file:" + ledger, rows_per_trigger=100)
    reader.prepareForTriggerAvailableNow()
    record(ledger, versions("after-", 2), "watch")  # landed after the run started: the next run's
    end = reader.latestOffset(reader.initialOffset(), reader.getDefaultReadLimit())
    assert end == {"version": 3}
    assert len(rows(reader, reader.initialOffset(), end)) == 9


def test_a_compaction_adds_no_rows_and_vacuumed_commits_fall_back_to_the_whole_ledger(ledger):
    reader = LedgerReader("file:" + ledger, rows_per_trigger=100)
    DeltaTable(ledger).optimize.compact()  # version 4: the same rows in new files (no data change)
    assert rows(reader, {"version": 3}, {"version": 4}) == []
    DeltaTable(ledger).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    record(ledger, versions("new-", 2), "watch")  # version 5
    # The files of commits 1..3 are gone: the micro-batch reads every row of the ledger instead (a superset: the
    # sink drops the rows that already have an outcome), never fewer rows than it should.
    assert len(rows(reader, {"version": 0}, {"version": 3})) == 11


def test_offsets_of_deltas_own_streaming_source_are_read_conservatively():
    """Homes whose checkpoint was written by Delta's streaming source keep their checkpoint: the version that may
    have been read in part is read again (the sink finds its rows decided), never skipped."""
    assert ledger_version({"version": 7}) == 7
    delta = {"sourceVersion": 1, "reservoirId": "x", "reservoirVersion": 12, "index": 3, "isStartingVersion": False}
    assert ledger_version(delta) == 11
    assert ledger_version({**delta, "index": -1}) == 11
    assert ledger_version({**delta, "isStartingVersion": True}) == -1


def test_a_new_checkpoint_reads_the_whole_ledger_from_its_first_commit(ledger, tmp_path):
    reader = LedgerReader("file:" + ledger, rows_per_trigger=10**6)
    end = reader.latestOffset(reader.initialOffset(), reader.getDefaultReadLimit())
    assert end == {"version": 3} and len(rows(reader, reader.initialOffset(), end)) == 9
    copy = tmp_path / "copy"
    shutil.copytree(ledger, copy)
    assert len(rows(LedgerReader(f"file:{copy}", 10), {"version": -1}, {"version": 0})) == 0


def test_a_big_micro_batch_travels_in_several_partitions(ledger, monkeypatch):
    """Rows travel inside their partitions; a big micro-batch is split so that no task carries too much."""
    import fruits.streaming.ledger_source as source

    monkeypatch.setattr(source, "ROWS_PER_PARTITION", 4)
    reader = LedgerReader("file:" + ledger, rows_per_trigger=100)
    end = reader.latestOffset(reader.initialOffset(), reader.getDefaultReadLimit())
    assert len(reader.partitions(reader.initialOffset(), end)) == 3  # 9 rows
    assert len(set(rows(reader, reader.initialOffset(), end))) == 9
