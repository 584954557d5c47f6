"""The one place a SparkSession is built: Delta enabled, the project's Python for workers, settings from config."""

from __future__ import annotations

import glob
import logging
import os
import sys
import time
from typing import TYPE_CHECKING

from pyspark.sql import SparkSession

from fruits.home import s3
from fruits.config import Config, load_config, user_cache_dir
from fruits.home.uris import local_path

if TYPE_CHECKING:
    from fruits.spark.class_archive import ArchivePlan

log = logging.getLogger(__name__)

DELTA_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


# With a local master and a landing folder on this machine's disks, Spark lists each chunk's files on the driver
# instead of with a job: the job's tasks would run the same calls in the same JVM, plus their scheduling, between
# two featurizing jobs (the "list" phase of the stream's progress line, bench/ingest_throughput.py). On object
# stores or clusters the listing job stays (its tasks list in parallel).
LOCAL_LISTING = {"spark.sql.sources.parallelPartitionDiscovery.threshold": "1000000"}


def spark_settings(config: Config, command_section: str | None = None) -> dict[str, str]:
    """Every Spark setting of a command: Delta's, S3A's for a home on S3 (:mod:`fruits.home.s3`), the local listing on a
    local master and disk (:data:`LOCAL_LISTING`), ``[spark.conf]``, then the command's ``[<section>.spark_conf]``
    (which holds the ``--conf`` flags too)."""
    command_conf = getattr(config, command_section).spark_conf if command_section else {}
    uses_s3 = s3.uses_s3(config)
    s3a = s3.S3Settings.from_config(config).spark_conf() if uses_s3 else {}
    on_disk = config.spark.master.startswith("local") and not uses_s3 and local_path(config.landing) is not None
    listing = LOCAL_LISTING if on_disk else {}
    merged = {**DELTA_SETTINGS, "spark.pyspark.python": sys.executable, **s3a, **listing, **config.spark.conf, **command_conf}
    return {key: str(value) for key, value in merged.items()}


def build_spark(config: Config, app_suffix: str = "", command_section: str | None = None) -> SparkSession:
    """Get or create the SparkSession for ``config`` with Delta Lake on the classpath.

    Delta's jars come from ``spark.jars_dir`` when it is set (a folder of jars, e.g. filled by
    ``mvn dependency:copy``), otherwise from Maven Central via ``delta.configure_spark_with_delta_pip`` (Ivy cache),
    or, once Ivy has resolved them on this machine, straight from that cache (:func:`fruits.spark.jars.resolved_jars`:
    Ivy's resolution at every start cost seconds).
    Python workers use this interpreter unless ``spark.pyspark.python`` is configured. The settings are
    ``[spark.conf]`` with the command's own ``[<command_section>.spark_conf]`` on top (e.g. its driver memory).
    For a home on S3, ``hadoop-aws`` (and its AWS SDK bundle) is added the same way, only then (the bundle is
    large), with the ``fs.s3a.*`` settings of :mod:`fruits.home.s3`.
    """
    started = time.perf_counter()
    uses_s3 = s3.uses_s3(config)
    spark_cfg = config.spark
    master = spark_cfg.master
    if master.startswith("local"):
        # A laptop or CI box: bind to loopback instead of whatever the hostname resolves to.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.master(master).appName(
        "-".join(filter(None, [spark_cfg.app_name, app_suffix]))
    )
    settings = spark_settings(config, command_section)
    # PySpark's UDFs take the worker interpreter from PYSPARK_PYTHON on the driver, not from the setting.
    os.environ["PYSPARK_PYTHON"] = str(settings["spark.pyspark.python"])
    for key, value in settings.items():
        builder = builder.config(key, str(value))

    jars_dir = spark_cfg.jars_dir
    if jars_dir:
        jars = sorted(glob.glob(os.path.join(jars_dir, "*.jar")))
        if not jars:
            raise FileNotFoundError(f"spark.jars_dir={jars_dir!r} holds no .jar file")
        if uses_s3 and not any(os.path.basename(j).startswith("hadoop-aws") for j in jars):
            raise FileNotFoundError(f"spark.jars_dir={jars_dir!r} has no hadoop-aws jar for the s3a:// home: fill it "
                                    "with `python -m fruits.spark.jars maven DIR`")
        builder = builder.config("spark.jars", ",".join(jars))
    else:
        from fruits.spark.jars import delta_coordinates, maven_coordinate, resolved_jars, s3a_coordinates

        packages = [maven_coordinate(delta_coordinates())] + ([maven_coordinate(s3a_coordinates())] if uses_s3 else [])
        known = resolved_jars(packages)
        if known:
            builder = builder.config("spark.jars", ",".join(known))
        else:
            from delta import configure_spark_with_delta_pip

            builder = configure_spark_with_delta_pip(builder, extra_packages=packages[1:] or None)
    archive_plan = start_jvm(builder, class_archive=spark_cfg.class_archive)
    spark = builder.getOrCreate()
    if archive_plan is not None and archive_plan.use is not None:
        from fruits.spark.class_archive import check_used

        check_used(archive_plan, spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    if not jars_dir and not known:
        from fruits.spark.jars import remember_resolved

        remember_resolved(packages, spark.sparkContext.getConf().get("spark.jars", None))
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark session up in %.1f s (%s)", time.perf_counter() - started, master)  # bench/startup.py's phases
    return spark


def start_jvm(builder: SparkSession.Builder, class_archive: bool = False) -> ArchivePlan | None:
    """Start this process's JVM (the py4j gateway, with the builder's settings) in a session of its own, unless one
    runs already. A signal to the driver's process group (Ctrl-C in a terminal, an init such as ``tini -g`` that
    forwards ``docker stop``'s SIGTERM to the group) then reaches the driver alone, which stops the stream between
    two chunks, instead of killing the JVM and the Python workers it forks in the middle of a job (PySpark only
    shields the JVM from SIGINT, and its workers restore the default handlers). The JVM still ends with this process,
    even a killed one: it exits when its stdin, a pipe from this process, is closed. With ``class_archive``, the JVM
    maps the per-user class data archive, or writes it when it exits (:mod:`fruits.spark.class_archive`); the plan it
    was given is returned."""
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None:  # a JVM runs already (a session was stopped): getOrCreate reuses it
        return None
    archive_plan = None
    if class_archive and "PYSPARK_GATEWAY_PORT" not in os.environ:  # else a JVM started by someone else is used
        from fruits.spark.class_archive import plan

        archive_plan = plan({k: str(v) for k, v in builder._options.items()}, user_cache_dir())
        if archive_plan is not None:
            options = builder._options.get("spark.driver.extraJavaOptions")
            builder.config("spark.driver.extraJavaOptions", " ".join(filter(None, [options, archive_plan.options])))
    # The settings as getOrCreate would pass them to spark-submit: spark.jars.packages (Delta's and S3A's jars,
    # resolved at launch) and the driver's memory only take effect there.
    conf = SparkConf().setAll(list(builder._options.items()))
    SparkContext(conf=conf, gateway=launch_gateway(conf, popen_kwargs={"start_new_session": True}))
    return archive_plan


def warm(*, s3: bool = False) -> None:
    """Start one SparkSession with the default configuration so its jars are resolved and cached; with ``s3``, as
    for an ``s3a://`` home (nothing is read from S3)."""
    overrides = {"spark": {"master": "local[1]"}, "paths": {"home": "s3a://warm/fruits" if s3 else None}}
    spark = build_spark(load_config(overrides=overrides), "warm-jars")
    spark.range(1).count()
    spark.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["warm"] and sys.argv[2:] in ([], ["--s3"]):
        warm(s3=sys.argv[2:] == ["--s3"])
    else:
        sys.exit("usage: python -m fruits.spark.session warm [--s3]")
