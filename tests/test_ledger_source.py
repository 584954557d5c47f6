"""The ledger's streaming source (fruits.streaming.ledger_source) without Spark: its offsets are ledger versions, a
micro-batch is the rows of its commits, a replay reads the same rows, and an older checkpoint's Delta offsets are read
conservatively. The stream over it is tested end to end in test_stream, test_discovery and test_exactly_once."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

from fruits.home.ledger import FileVersion, record
from fruits.home.tables import LEDGER, Table
from fruits.streaming.ledger_source import LedgerReader, LedgerUnreadable, position

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
    Table(uri, LEDGER).ensure()
    for commit, count in enumerate([3, 2, 4]):  # versions 1, 2, 3
        record(Table(uri, LEDGER), versions(f"c{commit}-", count), "watch")
    return uri


def test_micro_batches_follow_commits_within_the_row_limit_and_replay_the_same_rows(ledger):
    reader = LedgerReader(Table("file:" + ledger, LEDGER), rows_per_trigger=4)
    start = {"version": 0}  # a checkpoint that has read the ledger's creation
    first = reader.latestOffset(start, reader.getDefaultReadLimit())
    assert first == {"version": 1}  # version 1 (3 rows); version 2 would make 5 > 4
    assert rows(reader, start, first) == [f"file:/landing/Kiwi/c0-{i}.jpg" for i in range(3)]
    second = reader.latestOffset(first, ReadMaxRows(4))
    assert second == {"version": 2}  # 2 more rows; the 4 of version 3 would make 6
    third = reader.latestOffset(second, ReadMaxRows(4))
    assert third == {"version": 3}  # exactly the limit
    assert reader.latestOffset(third, ReadMaxRows(4)) == third  # nothing new: the start again
    assert reader.partitions(third, third) == []
    # A replay after a crash (same offsets from the checkpoint) reads the same rows, whatever came since.
    record(Table(ledger, LEDGER), versions("later-", 2), "watch")
    assert rows(reader, first, second) == [f"file:/landing/Kiwi/c1-{i}.jpg" for i in range(2)]
    # A commit bigger than the limit is a micro-batch of its own, never split and never stuck.
    assert reader.latestOffset(second, ReadMaxRows(1)) == {"version": 3}
    assert reader.latestOffset(third, ReadAllAvailable()) == {"version": 4}


def test_row_counts_stay_right_when_commits_land_while_they_are_read(ledger):
    """deltalake's history() returns commits newer than the table it is asked of, numbered as if they were not: the
    counts must still go to the right versions (a big commit counted as small would overfill a micro-batch)."""
    reader = LedgerReader(Table("file:" + ledger, LEDGER), rows_per_trigger=5)
    reader._latest()
    record(Table(ledger, LEDGER), versions("big-", 50), "watch")  # version 4, after the reader's view of the table (version 3)
    reader._count_rows(1)
    assert {v: reader._rows_of[v] for v in range(1, 5)} == {1: 3, 2: 2, 3: 4, 4: 50}


def test_a_new_checkpoint_reads_the_snapshot_a_few_files_at_a_time_then_the_commits_after_it(ledger):
    reader = LedgerReader(Table("file:" + ledger, LEDGER), rows_per_trigger=5)  # the snapshot's files hold 3, 2 and 4 rows
    offsets, batches = [reader.initialOffset()], []
    while True:
        end = reader.latestOffset(offsets[-1], reader.getDefaultReadLimit())
        if end == offsets[-1]:
            break
        batches.append(rows(reader, offsets[-1], end))
        offsets.append(end)
        if end == {"version": 3}:
            record(Table(ledger, LEDGER), versions("after-", 2), "watch")  # version 4: read as a commit, after the snapshot
    assert offsets[-2:] == [{"version": 3}, {"version": 4}]
    assert [offset.get("snapshot") for offset in offsets[1:-2]] == [3] * (len(offsets) - 3)  # parts of version 3
    assert len(offsets) >= 4 and all(len(batch) <= 5 for batch in batches)  # no file fits with all three
    seen = [path for batch in batches for path in batch]
    assert len(seen) == len(set(seen)) == 11
    # A replay of the snapshot's first part reads the same files.
    assert rows(reader, offsets[0], offsets[1]) == batches[0]


def test_available_now_stops_at_the_version_it_started_with(ledger):
    reader = LedgerReader(Table("file:" + ledger, LEDGER), rows_per_trigger=100)
    reader.prepareForTriggerAvailableNow()
    record(Table(ledger, LEDGER), versions("after-", 2), "watch")  # landed after the run started: the next run's
    end = reader.latestOffset({"version": 0}, reader.getDefaultReadLimit())
    assert end == {"version": 3}
    assert len(rows(reader, {"version": 0}, end)) == 9
    assert reader.latestOffset(end, reader.getDefaultReadLimit()) == end


def test_a_compaction_adds_no_rows_and_vacuumed_commits_stop_the_stream_with_what_to_do(ledger):
    reader = LedgerReader(Table("file:" + ledger, LEDGER), rows_per_trigger=100)
    DeltaTable(ledger).optimize.compact()  # version 4: the same rows in new files (no data change)
    assert rows(reader, {"version": 3}, {"version": 4}) == []
    DeltaTable(ledger).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with pytest.raises(LedgerUnreadable, match="delete HOME/checkpoints/ingest"):
        rows(reader, {"version": 0}, {"version": 3})
    # ... and a new checkpoint reads the snapshot, which is whole: every row, once.
    fresh = LedgerReader(Table("file:" + ledger, LEDGER), rows_per_trigger=100)
    end = fresh.latestOffset(fresh.initialOffset(), fresh.getDefaultReadLimit())
    assert end == {"version": DeltaTable(ledger).version()}
    assert len(set(rows(fresh, fresh.initialOffset(), end))) == 9


def added_files(ledger: str, version: int) -> list[Path]:
    entry = Path(ledger) / "_delta_log" / f"{version:020d}.json"
    actions = [json.loads(line) for line in entry.read_text().splitlines() if line.strip()]
    return [Path(ledger) / a["add"]["path"] for a in actions if "add" in a]


def test_commits_whose_log_entries_expired_stop_the_stream_with_what_to_do(ledger):
    """Gone is read from the ledger's files, not from the error's text: log entries older than a checkpoint that
    log cleanup removed are gone, as vacuumed data files are."""
    reader = LedgerReader(Table("file:" + ledger, LEDGER), rows_per_trigger=100)
    DeltaTable(ledger).create_checkpoint()  # version 3: the table loads without the entries before it
    for version in (1, 2):
        (Path(ledger) / "_delta_log" / f"{version:020d}.json").unlink()
    with pytest.raises(LedgerUnreadable, match="delete HOME/checkpoints/ingest"):
        rows(reader, {"version": 0}, {"version": 3})
    record(Table(ledger, LEDGER), versions("after-", 2), "watch")  # version 4: what is still in the log is read
    assert len(rows(reader, {"version": 3}, {"version": 4})) == 2


def test_a_data_file_that_is_there_but_unreadable_is_tried_again_then_its_error_raised(ledger):
    """A read that fails while the commits' log entries and data files are all there is not "gone": no
    LedgerUnreadable (the checkpoint stays), the read is tried again, then delta-rs' own error stops the query."""
    reader = LedgerReader(Table("file:" + ledger, LEDGER), rows_per_trigger=100)
    (damaged,) = added_files(ledger, 2)
    damaged.write_bytes(b"not parquet")  # e.g. a file a storage hiccup returns cut short
    with pytest.raises((DeltaError, pa.ArrowException, OSError)) as failed:
        rows(reader, {"version": 1}, {"version": 2})
    assert not isinstance(failed.value, LedgerUnreadable)


def test_offsets_of_deltas_own_streaming_source_are_read_conservatively():
    """Homes whose checkpoint was written by Delta's streaming source keep their checkpoint: the version that may
    have been read in part is read again (the sink finds its rows decided), never skipped."""
    assert position({"version": 7}).version == 7
    assert position({"snapshot": 7, "files": 2}).files == 2
    delta = {"sourceVersion": 1, "reservoirId": "x", "reservoirVersion": 12, "index": 3, "isStartingVersion": False}
    assert position(delta).version == 11
    assert position({**delta, "index": -1}).version == 11
    assert position({**delta, "isStartingVersion": True}).in_snapshot


def test_a_big_micro_batch_travels_in_several_partitions(ledger, monkeypatch):
    """Rows travel inside their partitions; a big micro-batch is split so that no task carries too much."""
    import fruits.streaming.ledger_source as source

    monkeypatch.setattr(source, "ROWS_PER_PARTITION", 4)
    reader = LedgerReader(Table("file:" + ledger, LEDGER), rows_per_trigger=100)
    end = reader.latestOffset({"version": 0}, reader.getDefaultReadLimit())
    assert len(reader.partitions({"version": 0}, end)) == 3  # 9 rows
    assert len(set(rows(reader, {"version": 0}, end))) == 9
