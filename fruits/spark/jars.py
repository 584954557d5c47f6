"""Delta Lake's jars, and S3A's for ``s3a://`` homes: resolve them once (Ivy via delta-spark, or Maven into a
folder) so sessions start offline-safe.

``python -m fruits.spark.jars warm [--s3]`` starts and stops one SparkSession, which makes Ivy download the jars into
~/.ivy2* (with ``--s3``, also ``hadoop-aws`` and its AWS SDK bundle, which sessions add only when the home or the
landing folder is on S3: the bundle is large). ``python -m fruits.spark.jars maven DIR`` is the fallback when Ivy cannot
reach Maven Central: it resolves the same coordinates (Delta's and S3A's) with ``mvn dependency:copy-dependencies``
into DIR; then set ``FRUITS_JARS_DIR=DIR``.

Ivy resolves the coordinates again at every session start even when every jar is cached (it reads the poms of
some 37 modules). The jars a resolution found are remembered per coordinates (:func:`remember_resolved`, in the
per-user cache folder), and later sessions get them as ``spark.jars`` (:func:`resolved_jars`) while they are all
still there: no Ivy at start-up.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pyspark

from fruits.config import user_cache_dir


def delta_coordinates() -> tuple[str, str, str]:
    """(group, artifact, version) of the Delta jar matching the installed pyspark and delta-spark packages."""
    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return "io.delta", f"delta-spark_{spark_minor}_2.13", metadata.version("delta-spark")


def hadoop_version() -> str:
    """The Hadoop version pyspark ships (``pyspark/jars/hadoop-client-api-<version>.jar``)."""
    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    if not jars:
        raise FileNotFoundError("pyspark ships no hadoop-client-api jar: cannot tell which hadoop-aws matches it")
    return jars[-1].name[len("hadoop-client-api-") : -len(".jar")]


def s3a_coordinates() -> tuple[str, str, str]:
    """(group, artifact, version) of ``hadoop-aws`` matching pyspark's Hadoop (it brings its AWS SDK v2 bundle)."""
    return "org.apache.hadoop", "hadoop-aws", hadoop_version()


def maven_coordinate(coordinates: tuple[str, str, str]) -> str:
    """``group:artifact:version``, as ``spark.jars.packages`` takes it."""
    return ":".join(coordinates)


def _resolved_list(packages: list[str]) -> Path:
    """Where the jars resolved for ``packages`` are remembered: in the per-user cache, one file per set of coordinates
    and pyspark version."""
    key = hashlib.sha256("\n".join([pyspark.__version__, *sorted(packages)]).encode()).hexdigest()[:16]
    return user_cache_dir() / f"spark-jars-{key}.txt"


def resolved_jars(packages: list[str]) -> list[str] | None:
    """The local jars an earlier session's Ivy resolution of ``packages`` found, if every one is still there."""
    try:
        jars = _resolved_list(packages).read_text().split()
    except OSError:
        return None
    return jars if jars and all(os.path.isfile(_local(jar)) for jar in jars) else None


def remember_resolved(packages: list[str], spark_jars: str | None) -> None:
    """Remember the jars Ivy resolved for ``packages`` (a session's ``spark.jars``); best effort."""
    jars = [jar for jar in (spark_jars or "").split(",") if jar]
    if not jars or not all(os.path.isfile(_local(jar)) for jar in jars):
        return
    target = _resolved_list(packages)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}")
        temporary.write_text("\n".join(jars) + "\n")
        temporary.replace(target)
    except OSError:
        pass


def _local(jar: str) -> str:
    return jar[len("file:"):] if jar.startswith("file:") else jar


DEPENDENCY = "<dependency><groupId>{0}</groupId><artifactId>{1}</artifactId><version>{2}</version></dependency>"
POM = """<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>fruits</groupId><artifactId>delta-jars</artifactId><version>1</version>
<dependencies>{0}</dependencies></project>"""


def fetch_with_maven(target: str) -> None:
    """Copy Delta's and hadoop-aws's jars and their runtime dependencies (Spark's and Hadoop's own are 'provided'
    and skipped) into ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(POM.format("".join(DEPENDENCY.format(*c) for c in (delta_coordinates(), s3a_coordinates()))))
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={Path(target).resolve()}", "-DincludeScope=runtime"],
            check=True,
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["maven"] and len(sys.argv) == 3:
        fetch_with_maven(sys.argv[2])
    else:
        sys.exit("usage: python -m fruits.spark.jars maven DIR  (python -m fruits.spark.session warm [--s3] uses Ivy)")
