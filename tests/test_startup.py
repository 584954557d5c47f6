"""What a stream's start-up does not pay for: the tables made with delta-rs (not Spark jobs), and Ivy's resolution
of the Delta jars at every session start (the jars an earlier resolution found are reused)."""

from __future__ import annotations

import pytest


@pytest.mark.fast
def test_tables_are_made_with_delta_rs_as_spark_made_them(tmp_path):
    import dataclasses

    import pyarrow as pa
    from deltalake import DeltaTable

    from fruits.streaming.outcomes import FEATURES_ARROW
    from fruits.home.tables import FEATURES, Table

    location = str(tmp_path / "features")
    assert Table(location, FEATURES).ensure()
    table = DeltaTable(location)
    assert pa.schema(table.schema().to_arrow()).equals(FEATURES_ARROW)  # the schema the stream's appends write
    assert table.metadata().configuration == {"delta.enableChangeDataFeed": "true"}
    assert table.metadata().description == "MobileNetV2 features of landed images"
    assert not Table(location, FEATURES).ensure() and DeltaTable(location).version() == 0

    # A table made by an older service (without the ledger's columns) gets them, nullable, in one commit.
    older = str(tmp_path / "older")
    Table(older, dataclasses.replace(FEATURES, schema=pa.schema(list(FEATURES.schema)[:8]))).ensure()
    assert not Table(older, FEATURES).ensure()
    fields = DeltaTable(older).schema().fields
    assert [f.name for f in fields] == FEATURES.schema.names and all(f.nullable for f in fields[8:])
    assert DeltaTable(older).version() == 1


@pytest.mark.fast
def test_jars_ivy_resolved_once_are_reused_while_they_are_all_there(tmp_path, monkeypatch):
    from fruits.spark.jars import remember_resolved, resolved_jars

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    jars = [tmp_path / "ivy" / "jars" / name for name in ("io.delta_delta-spark.jar", "io.delta_delta-storage.jar")]
    for jar in jars:
        jar.parent.mkdir(parents=True, exist_ok=True)
        jar.write_bytes(b"PK")
    packages = ["io.delta:delta-spark_4.2_2.13:4.4.0"]
    assert resolved_jars(packages) is None  # never resolved here: Ivy resolves
    remember_resolved(packages, ",".join(f"file://{jar}" for jar in jars))
    assert resolved_jars(packages) == [f"file://{jar}" for jar in jars]
    assert resolved_jars([*packages, "org.apache.hadoop:hadoop-aws:3.4.1"]) is None  # other coordinates: resolve
    jars[1].unlink()
    assert resolved_jars(packages) is None  # a jar gone from Ivy's cache: resolve again
    remember_resolved(packages, None)  # a session without jars remembers nothing
    assert resolved_jars(packages) is None


def _fake_jdk(tmp_path, monkeypatch):
    """A JAVA_HOME whose ``libjvm`` the key reads (nothing is run: the fast tier starts no JVM)."""
    jdk = tmp_path / "jdk"
    (jdk / "bin").mkdir(parents=True)
    (jdk / "bin" / "java").write_bytes(b"")
    (jdk / "lib" / "server").mkdir(parents=True)
    (jdk / "lib" / "server" / "libjvm.so").write_bytes(b"build 1")
    monkeypatch.setenv("JAVA_HOME", str(jdk))
    return jdk


def _whole_archive(path, size=8192):
    """What a JVM leaves once it wrote an archive: the dynamic archive's magic first (its header is written last)."""
    import struct

    path.write_bytes(struct.pack("=I", 0xF00BABA8) + b"\x01" * (size - 4))


@pytest.mark.fast
def test_class_archive_only_a_whole_archive_of_this_key_reaches_the_jvm(tmp_path, monkeypatch):
    import os
    import shlex
    import time

    from fruits.spark.class_archive import archive_key, plan

    jdk = _fake_jdk(tmp_path, monkeypatch)
    jar = tmp_path / "delta.jar"
    jar.write_bytes(b"PK")
    settings = {"spark.jars": f"file://{jar}", "spark.driver.memory": "1500m"}
    cache = tmp_path / "odd 'cache' dir"  # the options must reach the JVM as one argument each
    key = archive_key(settings)

    first = plan(settings, cache)  # nothing yet: this JVM writes the archive at exit, under a name of its own
    assert first.use is None and first.write.parent == cache and key in first.write.name
    assert f"-XX:ArchiveClassesAtExit={first.write}" in shlex.split(first.options)
    assert "-Xlog:cds*=off" in shlex.split(first.options)  # the JVM's own lines would land on the command's stdout
    assert plan({**settings, "spark.jars.packages": "io.delta:delta-spark_4.2_2.13:4.4.0"}, cache) is None  # Ivy

    first.write.write_bytes(b"\0" * 8192)  # a JVM killed while writing: no header
    second = plan(settings, cache)
    assert second.use is None and second.write != first.write and first.write.exists()  # maybe still being written
    an_hour_ago = time.time() - 3700
    os.utime(first.write, (an_hour_ago, an_hour_ago))
    _whole_archive(second.write, 12288)
    os.utime(second.write, (time.time() - 5,) * 2)
    third = plan(settings, cache)  # the whole part becomes the archive, the killed one's part is gone
    assert third.use == cache / f"spark-driver-{key}-12288.jsa" and third.use.exists()
    assert not first.write.exists() and not second.write.exists()
    assert {"-Xshare:auto", f"-XX:SharedArchiveFile={third.use}"} <= set(shlex.split(third.options))
    assert plan(settings, cache).use == third.use  # and stays it

    # What makes an archive invalid makes another key: the JVM's build, a jar of spark.jars, a heap past 32 GB.
    assert archive_key({**settings, "spark.driver.memory": "4g"}) == key
    assert archive_key({**settings, "spark.driver.memory": "64g"}) != key
    jar.write_bytes(b"PK2")
    assert archive_key(settings) != key
    jar.write_bytes(b"PK")
    os.utime(jar, ns=(os.stat(third.use).st_mtime_ns,) * 2)
    (jdk / "lib" / "server" / "libjvm.so").write_bytes(b"build 2")
    other = plan(settings, cache)
    assert other.use is None and other.write is not None and third.use.exists()  # kept: another JDK may use it

    # A truncated archive would crash the JVM that maps it (SIGBUS): one not of the size in its name is removed.
    (jdk / "lib" / "server" / "libjvm.so").write_bytes(b"build 1")
    os.utime(jar, ns=(os.stat(jar).st_mtime_ns,) * 2)
    key = archive_key(settings)
    archive = cache / f"spark-driver-{key}-12288.jsa"
    _whole_archive(archive, 4096)
    truncated = plan(settings, cache)
    assert truncated.use is None and truncated.write is not None and not archive.exists()

    # Other keys' archives unused for a month go (each is ~150 MB); this key's is touched when used.
    old = cache / "spark-driver-0123456789abcdef-8192.jsa"
    _whole_archive(old)
    os.utime(old, (time.time() - 31 * 86400,) * 2)
    plan(settings, cache)
    assert not old.exists()

    # Keys that change often (a conf folder per run) keep 3 other keys at most, the most recently used; a part whose
    # writer was killed goes at once, one whose writer runs stays whatever its key.
    import subprocess
    import sys

    cache = tmp_path / "another cache"
    cache.mkdir()

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    others = [cache / f"spark-driver-{n:016x}-8192.jsa" for n in range(5)]
    for age, archive in enumerate(others):
        _whole_archive(archive)
        os.utime(archive, (time.time() - 3600 * (age + 1),) * 2)
    killed = cache / f".spark-driver-{5:016x}.{gone}-0badc0de.part"
    killed.write_bytes(b"\0" * 4096)
    done = cache / f".spark-driver-{6:016x}.{gone}-0abcdef0.part"  # whole: that key's archive, used 30 min ago
    _whole_archive(done)
    os.utime(done, (time.time() - 1800,) * 2)
    writing = cache / f".spark-driver-{7:016x}.{os.getpid()}-12345678.part"
    writing.write_bytes(b"\0" * 4096)
    os.utime(writing, (time.time() - 5 * 3600,) * 2)  # its key the oldest: past the 3 kept, yet it stays
    mine = plan(settings, cache)
    assert sorted(p.name for p in cache.iterdir() if p.name != mine.write.name) == sorted(
        [done.name, others[0].name, others[1].name, writing.name])


SESSION_SCRIPT = """
import json, sys
from pathlib import Path
from fruits.config import load_config
from fruits.spark.session import build_spark

spark = build_spark(load_config(overrides={"spark": {"master": "local[1]"}}), "class-archive-test")
assert spark.range(5).selectExpr("sum(id)").collect()[0][0] == 10
pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
print(json.dumps({"jvm": pid, "args": Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\\0"),
                  "mapped": sorted({line.split(maxsplit=5)[5] for line in maps if "spark-driver-" in line})}))
"""


def _session(cache):
    """A SparkSession started in a new process with ``cache`` as the per-user cache; what its JVM was given and
    mapped, once the JVM has exited (it writes its archive at exit)."""
    import json
    import os
    import subprocess
    import sys
    import time

    done = subprocess.run([sys.executable, "-c", SESSION_SCRIPT], env={**os.environ, "XDG_CACHE_HOME": str(cache)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 120
    while os.path.exists(f"/proc/{report['jvm']}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{report['jvm']}"), "the JVM did not exit after its driver"
    return report


def _foreign_archive(tmp_path):
    """A whole dynamic archive of another class path: Spark's launcher's (its jars without the driver's)."""
    import os
    import subprocess

    from pyspark.find_spark_home import _find_spark_home

    spark_home = _find_spark_home()
    archive = tmp_path / "foreign.jsa"
    subprocess.run(["java", f"-XX:ArchiveClassesAtExit={archive}", "-Xlog:cds*=off", "-cp",
                    os.path.join(spark_home, "jars", "*"), "org.apache.spark.launcher.Main",
                    "org.apache.spark.deploy.SparkSubmit", "pyspark-shell"],
                   env={**os.environ, "SPARK_HOME": spark_home, "SPARK_SCALA_VERSION": "2.13"},
                   capture_output=True, check=True, timeout=120)
    return archive


def _place(source, like):
    """``source``'s bytes as the archive of the key of ``like`` (named with its size, as a promoted archive is)."""
    import shutil

    target = like.with_name(f"{like.name[:len('spark-driver-') + 16]}-{source.stat().st_size}.jsa")
    shutil.copyfile(source, target)
    return target


@pytest.mark.slow
def test_a_second_session_maps_the_class_archive_the_first_wrote_and_a_bad_one_stops_nothing(tmp_path):
    import shutil
    import struct

    cache = tmp_path / "odd cache"  # a space: the options must reach the JVM as one argument each
    folder = cache / "fruits"
    ivy = _session(cache)  # a new cache: Ivy resolves Delta's jars at launch, the class path is not known before
    assert not any(a.startswith("-XX:ArchiveClassesAtExit") for a in ivy["args"])
    first = _session(cache)  # the jars Ivy found are known now: this JVM writes the archive at exit
    (part,) = folder.glob(".spark-driver-*.part")
    assert f"-XX:ArchiveClassesAtExit={part}" in first["args"] and not first["mapped"]
    assert part.read_bytes()[:4] == struct.pack("=I", 0xF00BABA8)  # whole: the JVM exited normally

    second = _session(cache)  # a new process: it maps the archive the first JVM wrote
    (archive,) = folder.glob("spark-driver-*.jsa")
    assert f"-XX:SharedArchiveFile={archive}" in second["args"] and str(archive) in second["mapped"]
    good = tmp_path / "good.jsa"
    shutil.copyfile(archive, good)
    archive.unlink()

    # Garbage of the right size, then a foreign archive (of another class path): the JVM ignores them, the session
    # starts and works, and the file is removed so that a later JVM writes a new one.
    garbage = tmp_path / "garbage.jsa"
    garbage.write_bytes(b"\x07" * good.stat().st_size)
    for bad in (garbage, _foreign_archive(tmp_path)):
        placed = _place(bad, archive)
        report = _session(cache)
        assert f"-XX:SharedArchiveFile={placed}" in report["args"] and not report["mapped"]
        assert not placed.exists()
    assert str(_place(good, archive)) in _session(cache)["mapped"]
