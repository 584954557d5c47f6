"""``spark-submit`` entry point: ``spark-submit [Spark options] deploy/fruits_submit.py stream|refit-pca [fruits options]``.

It runs the ``fruits`` command (:func:`fruits.cli.main`) in the JVM that spark-submit started, so the master, deploy
mode, ``--conf``, ``--packages``, ``--archives`` and ``--py-files`` given to spark-submit apply. Two things to know:

- Master: fruits' own default master (``local[*]`` in conf/fruits.toml) would replace spark-submit's ``--master``;
  unless ``--master`` or ``FRUITS_MASTER`` is given to fruits, the master given to spark-submit is used.
- Jars: the JVM is already running when fruits builds its session, so Delta's jars (and hadoop-aws for s3a://)
  must be given to spark-submit: ``--packages io.delta:delta-spark_4.2_2.13:4.4.0`` or ``--jars``.

See docs/deployment.md.
"""

from __future__ import annotations

import os
import sys


def submitted_master() -> str | None:
    """The ``spark.master`` spark-submit was given, or None when not running under spark-submit."""
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):  # set by spark-submit for the Python driver
        return None
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # attaches to spark-submit's JVM; SparkConf then reads its spark.* settings
    return SparkConf().get("spark.master", None)


def main(argv: list[str]) -> int:
    if "--master" not in argv and not os.environ.get("FRUITS_MASTER"):
        master = submitted_master()
        if master:
            os.environ["FRUITS_MASTER"] = master
    from fruits.cli import main as fruits_main

    return fruits_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
