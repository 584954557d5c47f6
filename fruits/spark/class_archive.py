"""The driver JVM's class data archive (Java's AppCDS, dynamic archive), cached per user: ``[spark] class_archive``.

A driver JVM spends much of its start loading and verifying Spark's, Delta's and their libraries' classes. A JVM
started with ``-XX:ArchiveClassesAtExit=FILE`` writes the classes it loaded to FILE when it exits normally; later
JVMs started with ``-XX:SharedArchiveFile=FILE`` map them instead (docs/performance.md, "Start-up";
``bench/startup.py``). So the first driver JVM of a user writes the archive, and later ones use it.

- One archive per key: the JVM's build (its ``libjvm``), Spark's jars, the jars given as ``spark.jars`` and the
  settings that change the driver's class path or its heap layout. Anything else that makes an archive invalid is
  checked by the JVM itself (its version, the class path's jar sizes and times, the base archive), and with
  ``-Xshare:auto`` a rejected archive only costs its gain.
- An archive is written under a name of its own per process and becomes the archive only once it is whole: the
  JVM writes the header last, so a later start renames a part whose header is there
  (:func:`_promote`). A JVM killed while writing leaves a part without a header, removed later. The archive's size
  is in its name: a truncated file would crash the JVM (the mapped pages past its end), so one of another size is
  never given to a JVM.
- After the session is up, :func:`check_used` reads the JVM's memory maps (``/proc/PID/maps``): an archive the JVM
  did not map (another JVM build, a foreign or corrupt file) is removed, and the next start writes a new one.
- The JVM's own ``cds`` log lines are turned off (they would land on the driver's stdout, after the command
  returned when the archive is written at exit).

Only the driver's JVM: the executors of a cluster are other JVMs, started by their workers.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

# The first 4 bytes of a dynamic archive whose header was written (CDS's DYNAMIC_ARCHIVE_MAGIC, native order).
_DYNAMIC_MAGIC = 0xF00BABA8
# A part without a header this old was left by a JVM killed while writing (writing one takes seconds).
_STALE_PART_SECONDS = 3600.0
# A part whose header is there but was written less than this ago may still get its last bytes (the base archive's
# name follows the header).
_SETTLE_SECONDS = 0.25
# Archives of other keys (an older JDK or pyspark, another Spark conf folder) not used for this long are removed:
# each is ~150 MB.
_UNUSED_DAYS = 30
# At most this many other keys keep their files (the most recently used): a user whose drivers change keys often
# (a conf folder per run, as test clusters make) would otherwise fill the disk within the month.
_KEPT_OTHER_KEYS = 3
# The key in an archive's or a part's name (see :func:`plan` and :func:`_promote`), and a part's writer process.
_NAMED = re.compile(r"\.?spark-driver-(?P<key>[0-9a-f]{16})(?:-\d+\.jsa|\.(?P<pid>\d+)-[0-9a-f]+\.part)")
# Settings that change the driver JVM's class path or its pointers' layout, hence its archive. Not the heap's size:
# only whether it is past 32 GB (no compressed pointers then).
_KEYED_SETTINGS = ("spark.jars", "spark.driver.extraClassPath", "spark.driver.extraJavaOptions",
                   "spark.driver.defaultJavaOptions")
_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_KEYED_ENV = ("SPARK_CONF_DIR", "SPARK_DIST_CLASSPATH", "HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_PREPEND_CLASSES")


@dataclass(frozen=True)
class ArchivePlan:
    """What one driver JVM does with its archive: map ``use`` or write ``write`` at exit; ``options`` are the JVM
    options that say so."""

    options: str
    use: Path | None = None
    write: Path | None = None


def plan(settings: dict[str, str], cache: Path) -> ArchivePlan | None:
    """The archive options for a driver JVM launched with ``settings``, or None when no key can be made (no ``java``
    found, jars Ivy is still to resolve, a cache that cannot be written)."""
    if settings.get("spark.jars.packages"):  # Ivy resolves them at launch: the class path is not known yet
        return None
    key = archive_key(settings)
    if key is None:
        return None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _prune(cache, key)
        archive = _archive(cache, key) or _promote(cache, key)
        if archive is not None:
            os.utime(archive)  # used: not pruned as an unused key's
    except OSError as error:
        log.info("class data archive: cache %s not usable (%s); starting without it", cache, error)
        return None
    if archive is not None:
        return ArchivePlan(_options(f"-XX:SharedArchiveFile={archive}", "-Xshare:auto"), use=archive)
    part = cache / f".spark-driver-{key}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part"
    return ArchivePlan(_options(f"-XX:ArchiveClassesAtExit={part}"), write=part)


def check_used(archive_plan: ArchivePlan, jvm_pid: int) -> bool | None:
    """Whether the JVM ``jvm_pid`` mapped the archive it was given; one it did not map is removed (the next start
    writes a new one). None when there is nothing to check (no archive given, no ``/proc``)."""
    archive = archive_plan.use
    if archive is None:
        return None
    try:
        maps = Path(f"/proc/{jvm_pid}/maps").read_text()
        stat = archive.stat()
    except OSError:
        return None
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}"
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) >= 5 and fields[4] == str(stat.st_ino) and fields[3] == device:
            return True
    log.warning("class data archive %s was not used by the JVM (another JVM build, or a foreign or corrupt file): "
                "removed, the next start writes a new one", archive)
    archive.unlink(missing_ok=True)
    return False


def archive_key(settings: dict[str, str]) -> str | None:
    """A digest of what makes an archive invalid: the JVM build, Spark's jars, ``spark.jars`` and the settings of
    :data:`_KEYED_SETTINGS`; None when ``java`` is not found."""
    from pyspark.find_spark_home import _find_spark_home

    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")  # as spark-class finds it
    if not java or not os.path.isfile(java):
        return None
    java = os.path.realpath(java)
    spark_home = _find_spark_home()
    parts = ["fruits-class-archive-1", _stat_line(java)]
    parts += [_stat_line(p) for p in sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(java)), "lib",
                                                                   "**", "libjvm.*"), recursive=True))]
    parts += [_stat_line(p) for p in sorted(glob.glob(os.path.join(spark_home, "jars", "*")))]
    for jar in settings.get("spark.jars", "").split(","):
        if jar:
            parts.append(_stat_line(urlparse(jar).path if jar.startswith("file:") else jar))
    parts += [f"{name}={settings.get(name, '')}" for name in _KEYED_SETTINGS]
    parts += [f"${name}={os.environ.get(name, '')}" for name in _KEYED_ENV]
    parts.append(f"SPARK_HOME={spark_home}")
    parts.append(f"large heap={_bytes(settings.get('spark.driver.memory', '1g')) >= 32 * 2**30}")
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _bytes(size: str) -> int:
    """Bytes in a JVM memory size as Spark writes them (``1500m``, ``4g``; a bare number is MiB); 0 if unreadable."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgtp]?)b?\s*", size.lower())
    return int(match.group(1)) * _UNITS[match.group(2) or "m"] if match else 0


def _stat_line(path: str) -> str:
    try:
        stat = os.stat(path)
    except OSError:
        return f"{path} missing"
    return f"{path} {stat.st_size} {stat.st_mtime_ns}"


def _archive(cache: Path, key: str) -> Path | None:
    """This key's archive, if one is there whose size is the one in its name (a truncated one is removed)."""
    for path in cache.glob(f"spark-driver-{key}-*.jsa"):
        try:
            whole = path.stat().st_size == int(path.name[len(f"spark-driver-{key}-"):-len(".jsa")])
        except (OSError, ValueError):
            whole = False
        if whole:
            return path
        log.warning("class data archive %s is not the size it was written with: removed", path)
        path.unlink(missing_ok=True)
    return None


def _promote(cache: Path, key: str) -> Path | None:
    """Make a whole part written by an earlier JVM this key's archive (the others are removed); the archive, or
    None."""
    now = time.time()
    archive = None
    for part in sorted(cache.glob(f".spark-driver-{key}.*.part")):
        try:
            stat = part.stat()
            whole = _whole(part)
        except OSError:
            continue
        if whole and archive is None and now - stat.st_mtime > _SETTLE_SECONDS:
            archive = cache / f"spark-driver-{key}-{stat.st_size}.jsa"
            os.replace(part, archive)
        elif whole or now - stat.st_mtime > _STALE_PART_SECONDS:
            part.unlink(missing_ok=True)
    return archive


def _prune(cache: Path, key: str) -> None:
    """Remove other keys' files: a part without a header whose writer is gone; and every file of a key unused for
    :data:`_UNUSED_DAYS` days or not among the :data:`_KEPT_OTHER_KEYS` most recently used. A part whose writer
    still runs is left to it."""
    cutoff = time.time() - _UNUSED_DAYS * 86400
    keys: dict[str, list[tuple[Path, float, bool]]] = {}  # key -> its files: path, mtime, removable
    for path in [*cache.glob("spark-driver-*.jsa"), *cache.glob(".spark-driver-*.part")]:
        named = _NAMED.fullmatch(path.name)
        if named is None or named["key"] == key:
            continue
        try:
            mtime = path.stat().st_mtime
            writing = named["pid"] is not None and _alive(int(named["pid"]))
            if named["pid"] is not None and not writing and not _whole(path):
                path.unlink()  # its JVM was killed while writing it
                continue
        except OSError:
            continue
        keys.setdefault(named["key"], []).append((path, mtime, not writing))
    last_use = {other: max(mtime for _, mtime, _ in files) for other, files in keys.items()}
    for rank, other in enumerate(sorted(last_use, key=last_use.get, reverse=True)):
        if rank >= _KEPT_OTHER_KEYS or last_use[other] < cutoff:
            for path, _, removable in keys[other]:
                if removable:
                    path.unlink(missing_ok=True)


def _whole(part: Path) -> bool:
    """Whether the JVM wrote ``part``'s header (it writes it last)."""
    with open(part, "rb") as file:
        head = file.read(4)
    return len(head) == 4 and struct.unpack("=I", head)[0] == _DYNAMIC_MAGIC


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (it may be another process that got the number: then its part waits longer)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _options(*options: str) -> str:
    """JVM options as ``spark.driver.extraJavaOptions`` takes them (Spark's launcher splits them like a shell), the
    JVM's ``cds`` log lines off."""
    return " ".join(_quoted(option) for option in (*options, "-Xlog:cds*=off"))


def _quoted(option: str) -> str:
    if not any(c.isspace() or c in "\"'\\" for c in option):
        return option
    return '"' + option.replace("\\", "\\\\").replace('"', '\\"') + '"'
