"""The home's file system (fruits/home/filesystem.py) on a local disk: real files in a temporary folder, through the
OS and through Hadoop's FileSystem (the shared Spark session's JVM).

The S3 implementation is tested against a real S3 server in tests/test_s3.py (S3A's under the stream and the refit
there too).
"""

from __future__ import annotations

import os
import threading

import pytest

from fruits.home.filesystem import Files, HadoopFiles, LocalFiles, UnsupportedLocation


@pytest.mark.fast
def test_a_write_is_atomic_for_readers_and_leaves_no_temporary_file(tmp_path):
    files = LocalFiles()
    target = tmp_path / "status" / "progress.json"
    first, second = b"a" * 4_000_000, b"b" * 3_000_000
    files.write(str(target), first)  # its folder is made
    seen: list[bytes] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(files.read(str(target)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(40):
            files.write(f"file:{target}", second if round_ % 2 == 0 else first)
    finally:
        stop.set()
        thread.join()
    assert seen and all(data in (first, second) for data in seen), {len(d or b"") for d in seen}
    assert os.listdir(target.parent) == ["progress.json"]  # no hidden temporary copy left


@pytest.mark.fast
def test_only_if_absent_never_replaces_a_file_and_one_of_two_racers_wins(tmp_path):
    files = LocalFiles()
    target = str(tmp_path / "lock")
    assert files.write(target, b"first", if_absent=True) is not None
    assert files.write(target, b"second", if_absent=True) is None
    assert files.read(target) == b"first"

    racers = [str(tmp_path / "race")] * 8
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda i=i: results.append(files.write(racers[i], b"%d" % i, if_absent=True)))
               for i in range(len(racers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(result is not None for result in results) == 1
    assert sorted(os.listdir(tmp_path)) == ["lock", "race"]
    with pytest.raises(NotImplementedError):  # only S3 has a store-side "replace if unchanged"
        files.write(target, b"third", if_match="x")


@pytest.mark.fast
def test_stat_gives_size_mtime_and_an_identity_that_a_rewrite_changes(tmp_path):
    files = LocalFiles()
    path = tmp_path / "photo.jpg"
    files.write(str(path), b"12345")
    stat = files.stat(str(path))
    assert (stat.size, stat.mtime_ms, stat.inode) == (5, os.stat(path).st_mtime_ns // 1_000_000, os.stat(path).st_ino)
    assert stat.identity == (5, stat.mtime_ms, stat.inode) and not stat.is_dir
    assert files.stat(f"file://{path}") == stat.__class__(f"file://{path}", 5, stat.mtime_ms, False, stat.inode)
    files.write(str(path), b"54321")  # same size, a new file under the name
    assert files.stat(str(path)).identity != stat.identity
    assert files.stat(str(tmp_path / "missing.jpg")) is None
    assert files.stat(str(path / "below-a-file")) is None
    assert files.stat(str(tmp_path)).is_dir


@pytest.mark.fast
def test_a_name_that_is_not_utf8_is_reached_by_its_exact_bytes(tmp_path):
    files = LocalFiles()
    exact = os.fsencode(tmp_path) + b"/caf\xe9.jpg"  # Latin-1: not UTF-8
    assert files.write(exact, b"bytes") == ""
    assert os.listdir(os.fsencode(tmp_path)) == [b"caf\xe9.jpg"]
    assert files.read(exact) == b"bytes" and files.stat(exact).size == 5 and files.exists(exact)
    (listed,) = files.list(str(tmp_path))
    assert os.fsencode(listed.uri) == exact  # a listed name spells the exact bytes (os.fsdecode)
    moved = os.fsencode(tmp_path) + b"/archive/caf\xe9.jpg"
    assert files.move(exact, moved, unchanged=files.stat(exact).identity)
    assert not files.exists(exact) and files.read(os.fsencode(listed.uri.replace(str(tmp_path), str(tmp_path) + "/archive"))) == b"bytes"
    files.delete(moved)
    assert not files.exists(moved)


@pytest.mark.fast
def test_move_never_replaces_a_file_and_refuses_a_source_that_changed(tmp_path):
    files = LocalFiles()
    source, target, taken = tmp_path / "landing" / "a.jpg", tmp_path / "archive" / "day" / "a.jpg", tmp_path / "b.jpg"
    files.write(str(source), b"read bytes")
    files.write(str(taken), b"another file")
    read = files.stat(str(source))
    assert not files.move(str(source), str(taken), unchanged=read.identity)  # never over another file
    assert files.read(str(taken)) == b"another file" and files.read(str(source)) == b"read bytes"

    with open(source, "ab") as writer:  # a writer appends after the file was read
        writer.write(b" and more")
    assert not files.move(str(source), str(target), unchanged=read.identity)
    assert source.exists() and not target.exists()

    files.write(str(source), b"read bytes")  # same bytes, but a new file: its inode tells
    assert not files.move(str(source), str(target), unchanged=read.identity)
    now = files.stat(str(source))
    assert files.move(str(source), str(target), unchanged=now.identity)  # the archive's folders are made
    assert not source.exists() and target.read_bytes() == b"read bytes"
    assert not files.move(str(source), str(tmp_path / "c.jpg"))  # gone: nothing to move


@pytest.mark.fast
def test_a_symbolic_link_is_moved_as_the_bytes_it_leads_to(tmp_path):
    files = LocalFiles()
    real, link, target = tmp_path / "real.jpg", tmp_path / "link.jpg", tmp_path / "archive" / "link.jpg"
    real.write_bytes(b"what the reader read")
    os.utime(real, ns=(1_000_000_000_000, 1_000_000_000_000))
    link.symlink_to(real)
    assert files.move(str(link), str(target), unchanged=files.stat(str(link)).identity)
    assert not os.path.lexists(link) and real.exists()
    assert not target.is_symlink() and target.read_bytes() == b"what the reader read"
    assert target.stat().st_mtime_ns == real.stat().st_mtime_ns
    assert os.listdir(target.parent) == ["link.jpg"]


@pytest.mark.fast
def test_list_exists_delete_and_mkdirs(tmp_path):
    files = LocalFiles()
    assert files.list(str(tmp_path / "nothing")) == [] and not files.exists(str(tmp_path / "nothing"))
    files.mkdirs(str(tmp_path / "models" / "v1"))
    files.write(str(tmp_path / "models" / "v1" / "metadata.json"), b"{}")
    files.write(str(tmp_path / "models" / "v2" / "data" / "part.parquet"), b"x")
    files.write(str(tmp_path / "models" / "README"), b"y")
    (tmp_path / "models" / "dangling").symlink_to(tmp_path / "nowhere")
    top = {(f.name, f.is_dir) for f in files.list(f"file:{tmp_path}/models")}
    assert top == {("v1", True), ("v2", True), ("README", False)}
    below = {f.uri for f in files.list(f"file:{tmp_path}/models", recursive=True)}
    assert below == {f"file:{tmp_path}/models/{p}" for p in ("v1/metadata.json", "v2/data/part.parquet", "README")}
    assert files.exists(str(tmp_path / "models" / "dangling"))  # a name taken, even by a dangling link
    files.delete(str(tmp_path / "models" / "v2"), recursive=True)
    files.delete(str(tmp_path / "models" / "README"))
    files.delete(str(tmp_path / "models" / "README"))  # nothing there: no error
    assert {f.name for f in files.list(str(tmp_path / "models"))} == {"v1"}  # a dangling link is listed as nothing


@pytest.mark.fast
def test_the_home_files_route_local_paths_and_refuse_a_store_they_have_not(tmp_path):
    files = Files()
    files.write(f"file://{tmp_path}/x.json", b'{"a": 1}')
    assert files.read(str(tmp_path / "x.json")) == b'{"a": 1}' and files.on(f"file:{tmp_path}") is files.local
    with pytest.raises(UnsupportedLocation):
        files.read("s3a://bucket/home/x.json")
    with pytest.raises(UnsupportedLocation):
        LocalFiles().stat("hdfs://namenode/home/x.json")


def test_hadoop_files_read_write_list_and_move_through_the_jvm(spark, tmp_path):
    """Hadoop's FileSystem over py4j (what the stream and the refit use for hdfs:// and s3a:// homes), here on
    Hadoop's local file system: missing files answer None (told by the Java exception's class), writes are whole,
    "only if absent" refuses a taken name."""
    files = HadoopFiles(spark)
    root = f"file:{tmp_path}"
    assert files.qualify(str(tmp_path)) == root
    assert files.stat(f"{root}/none.json") is None and files.read(f"{root}/none.json") is None
    assert files.list(f"{root}/none") == [] and not files.exists(f"{root}/none")
    files.write(f"{root}/models/v1/metadata.json", b'{"k": 2}')  # its folders are made
    files.write(f"{root}/models/v1/metadata.json", b'{"k": 3}')  # replaced whole
    assert files.read(f"{root}/models/v1/metadata.json") == b'{"k": 3}'
    assert files.write(f"{root}/models/v1/metadata.json", b"other", if_absent=True) is None
    assert files.write(f"{root}/models/v2/metadata.json", b"new", if_absent=True) == ""
    stat = files.stat(f"{root}/models/v1/metadata.json")
    assert (stat.size, stat.is_dir, stat.identity) == (8, False, (8, -1, -1))
    assert stat.mtime_ms == os.stat(tmp_path / "models" / "v1" / "metadata.json").st_mtime_ns // 1_000_000
    assert {(f.name, f.is_dir) for f in files.list(f"{root}/models")} == {("v1", True), ("v2", True)}
    listed = {f.uri for f in files.list(f"{root}/models", recursive=True) if not f.name.endswith(".crc")}
    assert listed == {f"{root}/models/v1/metadata.json", f"{root}/models/v2/metadata.json"}
    assert not [p for p in os.listdir(tmp_path / "models" / "v1") if ".tmp" in p]  # no temporary file left
    assert not files.move(f"{root}/models/v2/metadata.json", f"{root}/archive/m.json", unchanged=(99, -1, -1))
    assert files.move(f"{root}/models/v2/metadata.json", f"{root}/archive/m.json", unchanged=(3, -1, -1))
    assert (tmp_path / "archive" / "m.json").read_bytes() == b"new" and not files.exists(f"{root}/models/v2/metadata.json")
    files.delete(f"{root}/models", recursive=True)
    assert not (tmp_path / "models").exists()
