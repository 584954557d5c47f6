"""Delta Lake's jars: resolve them once (Ivy via delta-spark, or Maven into a folder) so sessions start offline-safe.

``python -m fruits.jars warm`` starts and stops one SparkSession, which makes Ivy download the jars into ~/.ivy2*.
``python -m fruits.jars maven DIR`` is the fallback when Ivy cannot reach Maven Central: it resolves the same
coordinates with ``mvn dependency:copy-dependencies`` into DIR; then set ``FRUITS_JARS_DIR=DIR``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pyspark


def delta_coordinates() -> tuple[str, str, str]:
    """(group, artifact, version) of the Delta jar matching the installed pyspark and delta-spark packages."""
    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return "io.delta", f"delta-spark_{spark_minor}_2.13", metadata.version("delta-spark")


POM = """<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
<groupId>fruits</groupId><artifactId>delta-jars</artifactId><version>1</version>
<dependencies><dependency><groupId>{0}</groupId><artifactId>{1}</artifactId><version>{2}</version></dependency>
</dependencies></project>"""


def fetch_with_maven(target: str) -> None:
    """Copy Delta's jar and its runtime dependencies (Spark's own are 'provided' and skipped) into ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(POM.format(*delta_coordinates()))
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={Path(target).resolve()}", "-DincludeScope=runtime"],
            check=True,
        )


def warm() -> None:
    """Start one SparkSession with the default configuration so its jars are resolved and cached."""
    from fruits.config import load_config
    from fruits.session import build_spark

    spark = build_spark(load_config(overrides={"spark": {"master": "local[1]"}}), "warm-jars")
    spark.range(1).count()
    spark.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["maven"] and len(sys.argv) == 3:
        fetch_with_maven(sys.argv[2])
    elif sys.argv[1:] == ["warm"]:
        warm()
    else:
        sys.exit("usage: python -m fruits.jars warm | maven DIR")
