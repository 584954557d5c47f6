"""The one table seam (fruits/home/tables.py): no other module talks to Delta, and its handles read old tables, travel
to Spark's tasks and carry their home's storage options. The handles against a real S3 server: tests/test_s3.py."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import make_config
from fruits.home.home import Home
from fruits.home.ledger import FileVersion, LedgerView, record
from fruits.home.tables import FEATURES, LEDGER, LEDGER_SCHEMA, Table

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
SEAM = ROOT / "fruits" / "home" / "tables.py"


def delta_calls(source: str) -> list[str]:
    """What in ``source`` talks to Delta: imports of deltalake or delta-spark's tables, Spark's ``delta`` format,
    and SQL naming a table by its path (``delta.`...```)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "deltalake" or a.name.startswith("delta.tables")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == "deltalake" or node.module.startswith("delta.tables"):
                found.append(node.module)
            elif node.module == "delta" and any(a.name == "tables" for a in node.names):
                found.append("delta.tables")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            if any(isinstance(a, ast.Constant) and a.value == "delta" for a in node.args):
                found.append('format("delta")')
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "delta.`" in node.value:
            found.append("delta.`path`")
    return found


def test_only_the_table_seam_talks_to_delta():
    sources = [*ROOT.glob("fruits/**/*.py"), *ROOT.glob("streaming/*.py"), *ROOT.glob("batch/*.py")]
    outside = {
        str(path.relative_to(ROOT)): calls
        for path in sources
        if path != SEAM and (calls := delta_calls(path.read_text()))
    }
    assert outside == {}
    # The detector finds what it looks for: the seam itself uses each kind.
    assert {"deltalake", "delta.tables", 'format("delta")', "delta.`path`"} <= set(delta_calls(SEAM.read_text()))


def test_an_old_table_reads_with_the_columns_it_lacks_as_nulls(tmp_path):
    """A ledger made before some columns existed: reads (rows, filters, data files, the change feed) see every
    column of today's schema, the missing ones null, before any writer has added them."""
    from deltalake import write_deltalake

    location = str(tmp_path / "files")
    old = pa.schema(list(LEDGER_SCHEMA)[:8])
    version = FileVersion("file:/l/Kiwi/a.jpg", 10, 1_700_000_000_000, "Kiwi")
    rows = pa.table({
        "file_id": [version.file_id], "path": [version.path], "label": ["Kiwi"], "size_bytes": [10],
        "modified_at": pa.array([1_700_000_000_000_000], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "discovered_at": pa.array([1_700_000_000_000_000], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "discovered_by": ["watch"], "overwrites": [False],
    }, schema=old)
    write_deltalake(location, rows, configuration={"delta.enableChangeDataFeed": "true"})
    ledger = Table(location, LEDGER)

    read = ledger.read()
    assert read.schema.names == LEDGER_SCHEMA.names and read.num_rows == 1
    assert read.column("attempt").to_pylist() == [None] and read.column("raw_path").type == pa.binary()
    assert ledger.read(["file_id"], filter=pc.field("attempt") > 0).num_rows == 0  # a filter on a missing column
    assert ledger.read(["path", "writer"], version=0).to_pylist() == [{"path": version.path, "writer": None}]
    files = ledger.add_actions().column("path").to_pylist()
    assert ledger.read_files(files, ["file_id", "read_from"]).to_pylist() == [{"file_id": version.file_id, "read_from": None}]
    changes = ledger.changes(0, columns=["path", "attempt"]).read_all()
    assert changes.column("attempt").to_pylist() == [None] and changes.column("_change_type").to_pylist() == ["insert"]
    assert ledger.version() == 0  # reading changed nothing: the columns are added by the first writer
    record(ledger, [FileVersion("file:/l/Kiwi/b.jpg", 11, 1_700_000_000_000, "Kiwi")], "drop")
    assert ledger.version() == 2 and set(ledger.read(["attempt"]).column("attempt").to_pylist()) == {None, 0}


def test_a_missing_table_reads_as_no_row_and_is_not_made_by_a_reader(tmp_path):
    features = Table(str(tmp_path / "features"), FEATURES)
    assert features.open() is None and features.version() is None and features.add_actions() is None
    assert features.read(["path", "features"]).num_rows == 0 and features.latest() is None
    assert not (tmp_path / "features").exists()
    with pytest.raises(ValueError, match="needs a session"):
        Table("hdfs://namenode/fruits/tables/features", FEATURES).ensure()


def test_a_handle_travels_pickled_without_its_loaded_table(tmp_path):
    """The ledger source's reader (and its handle) is pickled to Spark's tasks: it carries where the table is and
    the storage options, not the table it keeps loaded, nor its lock."""
    ledger = Table(str(tmp_path / "files"), LEDGER, storage_options={"AWS_REGION": "eu-west-3"}, reload_every=7)
    record(ledger, [FileVersion("file:/l/Kiwi/a.jpg", 10, 1_700_000_000_000, "Kiwi")], "drop")
    assert ledger.kept() is not None
    copy = pickle.loads(pickle.dumps(ledger))
    assert (copy.location, copy.spec, copy.storage_options, copy.reload_every) == (ledger.location, LEDGER, {"AWS_REGION": "eu-west-3"}, 7)
    assert copy._kept is None and copy.read(["path"]).column("path").to_pylist() == ["file:/l/Kiwi/a.jpg"]


def test_a_home_hands_out_its_tables_with_its_storage_options(tmp_path):
    local = Home.from_config(make_config(tmp_path))
    assert local.storage_options == {} and local.features.storage_options == {}
    assert [local.table(name).location for name in ("features", "quarantine", "files", "pca")] == [
        local.features_table, local.quarantine_table, local.ledger_table, local.pca_table]
    assert (local.ledger.spec, local.pca.spec) == (LEDGER, local.table("pca").spec)
    assert local.features is not local.features  # a new handle each time: the one kept stays loaded

    remote = Home.from_config(make_config(tmp_path, paths={"home": "s3a://bucket/fruits"},
                                          s3={"endpoint": "http://127.0.0.1:8333"}))
    options = remote.ledger.storage_options
    assert options == remote.storage_options and options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert remote.ledger.uri == "s3://bucket/fruits/tables/files"


def test_a_ledger_view_reads_only_the_rows_added_since(tmp_path):
    ledger = Table(str(tmp_path / "files"), LEDGER)
    view = LedgerView(ledger, track_paths=True)
    assert view.refresh() == 0 and ledger.exists()  # the ledger is made by the view's first look
    record(ledger, [FileVersion(f"file:/l/Kiwi/{i}.jpg", 10, 1_700_000_000_000, "Kiwi") for i in range(3)], "watch")
    record(Table(ledger.location, LEDGER), [FileVersion("file:/l/Kiwi/x.jpg", 10, 1, "Kiwi")], "drop")  # another writer
    assert view.refresh() == 4 and len(view.ids) == 4 and len(view.paths) == 4
    assert view.refresh() == 0
