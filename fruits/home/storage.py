"""Small files (model metadata) on the home's filesystem, through Hadoop's FileSystem so any Hadoop URI works."""

from __future__ import annotations

from pyspark.sql import SparkSession


def _path_and_fs(spark: SparkSession, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def qualify(spark: SparkSession, uri: str) -> str:
    """``uri`` as Spark's file sources spell it (``/a/b`` -> ``file:/a/b``)."""
    path, fs = _path_and_fs(spark, uri)
    return fs.makeQualified(path).toString()


def exists(spark: SparkSession, uri: str) -> bool:
    """Whether a file or folder exists at ``uri``."""
    path, fs = _path_and_fs(spark, uri)
    return bool(fs.exists(path))


def file_length(spark: SparkSession, uri: str) -> int | None:
    """Size in bytes of the file at ``uri``, or None if there is none."""
    path, fs = _path_and_fs(spark, uri)
    return int(fs.getFileStatus(path).getLen()) if fs.exists(path) else None


def mkdirs(spark: SparkSession, uri: str) -> None:
    """Create the folder ``uri`` and its parents if missing."""
    path, fs = _path_and_fs(spark, uri)
    fs.mkdirs(path)


def list_dir_names(spark: SparkSession, uri: str) -> list[str]:
    """Names of the sub-folders of ``uri`` (empty if it does not exist)."""
    path, fs = _path_and_fs(spark, uri)
    if not fs.exists(path):
        return []
    return sorted(status.getPath().getName() for status in fs.listStatus(path) if status.isDirectory())


def file_names(spark: SparkSession, uri: str) -> set[str]:
    """Names of the files directly in the folder ``uri`` (empty if it does not exist): one listing request."""
    path, fs = _path_and_fs(spark, uri)
    if not fs.exists(path):
        return set()
    return {status.getPath().getName() for status in fs.listStatus(path) if status.isFile()}


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``uri``: written to a hidden temporary file, then renamed into place, so readers
    see the whole file or none (a file already at ``uri`` — left by an interrupted run — is replaced)."""
    path, fs = _path_and_fs(spark, uri)
    jvm = spark.sparkContext._jvm
    tmp = jvm.org.apache.hadoop.fs.Path(path.getParent(), "." + path.getName() + ".tmp")
    stream = fs.create(tmp, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()
    if fs.exists(path):
        fs.delete(path, False)
    if not fs.rename(tmp, path):
        raise OSError(f"could not rename {tmp} to {uri}")


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` (replacing it)."""
    path, fs = _path_and_fs(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def read_bytes(spark: SparkSession, uri: str) -> bytes:
    """The bytes of the file at ``uri`` (read on the driver, no Spark job)."""
    path, fs = _path_and_fs(spark, uri)
    stream = fs.open(path)
    try:
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def read_text(spark: SparkSession, uri: str) -> str:
    """The UTF-8 text of the file at ``uri``."""
    return spark.read.text(uri, wholetext=True).head()[0]


def rename(spark: SparkSession, source: str, target: str) -> bool:
    """Move the file ``source`` to ``target`` (its folder is created); False if ``source`` is gone or ``target`` is
    taken. A local rename is atomic; on an object store it is a copy then a delete."""
    src, fs = _path_and_fs(spark, source)
    dst = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(target)
    fs.mkdirs(dst.getParent())
    return bool(fs.rename(src, dst))


def delete(spark: SparkSession, uri: str) -> bool:
    """Delete the file at ``uri``; False if there was none."""
    path, fs = _path_and_fs(spark, uri)
    return bool(fs.delete(path, False))
