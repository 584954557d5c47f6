"""One file-system interface for every file of a home outside its Delta tables: :class:`FileSystem`.

The home hands out the file system (:attr:`fruits.home.home.Home.files`, :meth:`~fruits.home.home.Home.spark_files`)
and whatever reads or writes files is given it, as Ray Data's ``FileBasedDatasource(paths, filesystem=...)`` is:

- :class:`LocalFiles`: the local (or mounted) file system, through the OS. Names on a local disk are bytes: a file
  may be named by its exact bytes (a name that is not UTF-8, :mod:`fruits.home.names`) as well as by a URI.
- :class:`S3Files`: ``s3a://`` (or ``s3://``) objects through boto3, with the home's S3 settings passed in (endpoint,
  region, addressing), never read from the process's environment; credentials come from the standard AWS chain.
  Writes can be conditional (``If-None-Match: *``, ``If-Match``): atomic on the server.
- :class:`HadoopFiles`: any Hadoop URI (``hdfs://``, ``s3a://``...) through Hadoop's ``FileSystem`` over py4j, with
  the Spark session's settings and credentials: what the stream and the refit use, as Spark's own reads do.
- :class:`Files`: local paths to :class:`LocalFiles`, every other URI to one remote file system.

This module and :mod:`fruits.home.tables` are the only ones that call Hadoop, boto3 or pyarrow's file systems.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Protocol, Union

from fruits.errors import Failed, Refused
from fruits.home.names import temporary_name
from fruits.home.s3 import S3Settings, is_s3, split
from fruits.home.uris import local_path

log = logging.getLogger("fruits.home.filesystem")

# A file's name: a URI (``/x``, ``file:/x``, ``s3a://b/k``, ``hdfs://nn/x``), or on a local disk its exact bytes.
Location = Union[str, bytes]
# What must not change between a file's reading and its move (:attr:`FileStat.identity`).
Identity = tuple[int, int, int]


class UnsupportedLocation(Refused, ValueError):
    """A location no file system of this home reaches (e.g. ``hdfs://`` in a command without Spark). A ValueError
    too: readers such as the dashboard's catch ``(OSError, ValueError)`` for a file they cannot read now."""


@dataclass(frozen=True)
class FileStat:
    """What a store tells of one file (or folder): its size, mtime, and the identity it keeps where it has one: a
    local file's inode, an object's ETag (the MD5 of a single-PUT object's bytes)."""

    uri: str
    size: int
    mtime_ms: int
    is_dir: bool = False
    inode: int | None = None
    etag: str | None = None

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def identity(self) -> Identity:
        """What must not change between a file's reading and its move: (size, mtime in ms, inode) on a local disk;
        elsewhere (size, -1, -1), the size alone (an object store's mtime is its upload's, not its writer's)."""
        return (self.size, self.mtime_ms, self.inode) if self.inode is not None else (self.size, -1, -1)


class FileSystem(Protocol):
    """The file operations the product needs, on any store. Every method takes the locations as the home spells them.

    Writes are atomic for readers (the whole file or none, never a part) on every store."""

    def stat(self, uri: Location) -> FileStat | None:
        """The file or folder at ``uri`` (a symbolic link: what it leads to), or None if there is none."""

    def exists(self, uri: Location) -> bool:
        """Whether the name ``uri`` is taken (by a file, a folder, or even a dangling link)."""

    def list(self, uri: Location, *, recursive: bool = False) -> list[FileStat]:
        """The files and folders directly in the folder ``uri``; ``recursive``: every file below it (no folders).
        Empty if there is no such folder."""

    def read(self, uri: Location) -> bytes | None:
        """The bytes of the file at ``uri``, or None if there is none."""

    def write(self, uri: Location, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> str | None:
        """Put ``data`` at ``uri`` (its folder is made), replacing a file there unless ``if_absent`` (only if the name
        is free) or ``if_match`` (only if the file there still has that ETag: S3 alone can). Returns the written file's
        ETag where the store gives one (else an empty string), or None when the condition refused the write."""

    def move(self, source: Location, target: Location, *, unchanged: Identity | None = None) -> bool:
        """Move the file ``source`` to ``target`` (its folder is made), never over another file: False if ``target``
        is taken or ``source`` is gone. With ``unchanged`` (a :attr:`FileStat.identity`), only if ``source`` is still that
        version, checked right before the move, and on a local disk again right after it (a
        writer may still hold the file open): a file that changed meanwhile is put back, and False returned."""

    def delete(self, uri: Location, *, recursive: bool = False) -> None:
        """Remove the file at ``uri`` (``recursive``: a folder and everything in it); nothing if there is none."""

    def mkdirs(self, uri: Location) -> None:
        """Make the folder ``uri`` and its parents if missing (nothing to do on an object store)."""


def read_json(files: FileSystem, uri: str) -> dict[str, Any] | None:
    """The JSON document at ``uri``, or None if there is no such file."""
    data = files.read(uri)
    return None if data is None else json.loads(data.decode("utf-8"))


class LocalFiles:
    """:class:`FileSystem` of the local disks, through the OS (see the module docstring)."""

    @staticmethod
    def path(uri: Location) -> bytes:
        """The exact local path (bytes) of ``uri``; :class:`UnsupportedLocation` for a remote URI."""
        if isinstance(uri, bytes):
            return uri
        local = local_path(uri)
        if local is None:
            raise UnsupportedLocation(f"{uri}: not a local path")
        return os.fsencode(local)

    @staticmethod
    def _stat(path: bytes, uri: Location) -> FileStat | None:
        try:
            found = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return FileStat(os.fsdecode(uri), found.st_size, found.st_mtime_ns // 1_000_000, os.path.isdir(path),
                        found.st_ino)

    def stat(self, uri: Location) -> FileStat | None:
        return self._stat(self.path(uri), uri)

    def exists(self, uri: Location) -> bool:
        return os.path.lexists(self.path(uri))

    def is_link(self, uri: Location) -> bool:
        """Whether ``uri`` is a symbolic link (which :meth:`move` stores as the bytes it leads to)."""
        return os.path.islink(self.path(uri))

    def list(self, uri: Location, *, recursive: bool = False) -> list[FileStat]:
        prefix = os.fsdecode(uri).rstrip("/")
        found: list[FileStat] = []
        folders = [(self.path(uri), prefix)]
        while folders:
            folder, spelled = folders.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                name = f"{spelled}/{os.fsdecode(entry.name)}"
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if recursive and is_dir:
                        folders.append((entry.path, name))
                        continue
                    stat = entry.stat()
                except FileNotFoundError:  # removed while listed, or a dangling link
                    continue
                found.append(FileStat(name, stat.st_size, stat.st_mtime_ns // 1_000_000, is_dir, stat.st_ino))
        return found

    def read(self, uri: Location) -> bytes | None:
        try:
            with open(self.path(uri), "rb") as handle:
                return handle.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def write(self, uri: Location, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> str | None:
        if if_match is not None:
            raise NotImplementedError("a local file cannot be replaced only if unchanged: no store-side condition")
        path = self.path(uri)
        folder, name = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, os.fsencode(temporary_name(os.fsdecode(name))))
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
            if if_absent:
                try:
                    os.link(temporary, path)  # a link, unlike a rename, never replaces a file
                except FileExistsError:
                    return None
            else:
                os.replace(temporary, path)
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)
        return ""

    def move(self, source: Location, target: Location, *, unchanged: Identity | None = None) -> bool:
        """See :meth:`FileSystem.move`. A symbolic link is moved as the bytes it leads to (a copy with their mtime,
        what a reader of the link read), and the link removed."""
        src, dst = self.path(source), self.path(target)
        if unchanged is not None:
            now = self._stat(src, source)
            if now is None or now.identity != unchanged:
                return False
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        link = os.path.islink(src)
        staged = src
        if link:
            staged = os.path.join(os.path.dirname(dst), os.fsencode(temporary_name(os.fsdecode(os.path.basename(dst)))))
            shutil.copy2(src, staged)
        try:
            os.link(staged, dst)  # never replaces an existing file, unlike rename
        except (FileExistsError, FileNotFoundError):
            return False
        finally:
            if staged is not src:
                os.unlink(staged)
        os.unlink(src)
        if unchanged is not None and not link:
            after = self._stat(dst, target)
            if after is None or after.identity != unchanged:
                try:  # a writer still had it open: put it back where the writer and the stream's discovery expect it
                    os.link(dst, src)
                    os.unlink(dst)
                    log.warning("%s changed while it was moved to %s: put back", os.fsdecode(source), os.fsdecode(target))
                except OSError as exc:
                    log.error("%s changed while it was moved to %s and could not be put back (%s): it is there",
                              os.fsdecode(source), os.fsdecode(target), exc)
                return False
        return True

    def delete(self, uri: Location, *, recursive: bool = False) -> None:
        path = self.path(uri)
        if recursive and os.path.isdir(path) and not os.path.islink(path):
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def mkdirs(self, uri: Location) -> None:
        os.makedirs(self.path(uri), exist_ok=True)

    def alias(self, source: Location, target: Location) -> bool:
        """Make ``target`` another name of the file ``source`` (a hard link; a copy with the same mtime on a file
        system without hard links), unless ``target`` is taken; False if ``source`` is gone."""
        src, dst = self.path(source), self.path(target)
        try:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if not os.path.lexists(dst):
                try:
                    os.link(src, dst, follow_symlinks=True)
                except FileNotFoundError:
                    return False
                except FileExistsError:
                    pass
                except OSError:  # a file system without hard links
                    shutil.copy2(src, dst)
        except FileNotFoundError:
            return False
        return True


# S3's answers by error code (the code, not the message, tells them apart).
MISSING = ("404", "NoSuchKey", "NotFound")
# If-None-Match / If-Match not met (409: two conditional writes of one key at once, on some servers)
CONFLICT = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def clean_etag(etag: str | None) -> str | None:
    """An ETag without its quotes (S3 quotes them in headers and listings)."""
    return etag.strip('"') if etag else None


class StoreError(Failed, OSError):
    """An object store's error (S3's ``code``, e.g. ``AccessDenied``; empty when it could not be reached): an
    :class:`OSError` too, as a local disk's errors are, so the callers that catch a disk's errors catch it."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def _reply(call: Callable[[], Any], absent: tuple[str, ...] = ()) -> Any | None:
    """``call()``'s reply, or None when S3 answers with one of the error codes ``absent``; its other errors as
    :class:`StoreError`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except (ClientError, BotoCoreError) as exc:
        code = _error_code(exc)
        if code in absent:
            return None
        raise StoreError(str(exc), code) from exc


@lru_cache(maxsize=8)
def s3_client(settings: S3Settings):
    """A boto3 S3 client for the server ``settings`` describe (one per settings and process: clients are
    thread-safe, and slow to make). Credentials: the standard AWS chain (variables, profile, instance role)."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint or None,
        region_name=settings.region or None,
        config=BotoConfig(s3={"addressing_style": "path" if settings.path_style else "virtual"},
                          retries={"max_attempts": 5}),
    )


class S3Files:
    """:class:`FileSystem` of S3 objects (``s3a://bucket/key`` or ``s3://``) through boto3, for the server
    ``settings`` describe. A folder is a key prefix; an object appears whole when its PUT completes."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings

    @property
    def client(self):
        return s3_client(self.settings)

    @staticmethod
    def _split(uri: Location) -> tuple[str, str]:
        if isinstance(uri, bytes) or not is_s3(uri):
            raise UnsupportedLocation(f"{os.fsdecode(uri)}: not an s3a:// or s3:// URI")
        return split(uri)

    def stat(self, uri: Location) -> FileStat | None:
        bucket, key = self._split(uri)
        reply = _reply(lambda: self.client.head_object(Bucket=bucket, Key=key), MISSING)
        if reply is None:
            return None
        return FileStat(uri, int(reply["ContentLength"]), int(reply["LastModified"].timestamp() * 1000),
                        etag=clean_etag(reply["ETag"]))

    def exists(self, uri: Location) -> bool:
        if self.stat(uri) is not None:
            return True
        bucket, key = self._split(uri)
        reply = _reply(lambda: self.client.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1))
        return bool(reply.get("KeyCount"))

    def list(self, uri: Location, *, recursive: bool = False) -> list[FileStat]:
        bucket, key = self._split(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        scheme = uri.split("://", 1)[0]
        arguments = {"Bucket": bucket, "Prefix": prefix, **({} if recursive else {"Delimiter": "/"})}
        found: list[FileStat] = []
        for page in _reply(lambda: list(self.client.get_paginator("list_objects_v2").paginate(**arguments))):
            for folder in page.get("CommonPrefixes", []):
                found.append(FileStat(f"{scheme}://{bucket}/{folder['Prefix'].rstrip('/')}", 0, 0, is_dir=True))
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):  # a folder marker (S3A leaves them), not a file
                    continue
                found.append(FileStat(f"{scheme}://{bucket}/{item['Key']}", int(item["Size"]),
                                      int(item["LastModified"].timestamp() * 1000), etag=clean_etag(item["ETag"])))
        return found

    def get(self, uri: Location) -> tuple[bytes, str] | None:
        """(bytes, ETag) of the object at ``uri``, read in one request, or None if there is none."""
        bucket, key = self._split(uri)
        reply = _reply(lambda: self.client.get_object(Bucket=bucket, Key=key), MISSING)
        return None if reply is None else (reply["Body"].read(), clean_etag(reply["ETag"]))

    def read(self, uri: Location) -> bytes | None:
        found = self.get(uri)
        return None if found is None else found[0]

    def write(self, uri: Location, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> str | None:
        bucket, key = self._split(uri)
        condition = {"IfNoneMatch": "*"} if if_absent else {"IfMatch": f'"{if_match}"'} if if_match is not None else {}
        refused = CONFLICT + MISSING if if_match is not None else CONFLICT if if_absent else ()
        reply = _reply(lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data, **condition), refused)
        return None if reply is None else clean_etag(reply["ETag"])

    def move(self, source: Location, target: Location, *, unchanged: Identity | None = None) -> bool:
        """See :meth:`FileSystem.move`: a server-side copy (only of the version ``unchanged`` names, by its ETag),
        then a delete. Not atomic: a process killed between the two leaves both objects."""
        (bucket, key), (target_bucket, target_key) = self._split(source), self._split(target)
        now = self.stat(source)
        if now is None or (unchanged is not None and now.identity != unchanged) or self.stat(target) is not None:
            return False
        condition = {"CopySourceIfMatch": f'"{now.etag}"'} if now.etag else {}  # the version just looked at
        copied = _reply(lambda: self.client.copy_object(Bucket=target_bucket, Key=target_key,
                                                        CopySource={"Bucket": bucket, "Key": key}, **condition),
                        CONFLICT + MISSING)
        if copied is None:
            return False
        _reply(lambda: self.client.delete_object(Bucket=bucket, Key=key))
        return True

    def delete(self, uri: Location, *, recursive: bool = False) -> None:
        bucket, key = self._split(uri)
        if recursive:
            for found in self.list(uri, recursive=True):
                _reply(lambda key=split(found.uri)[1]: self.client.delete_object(Bucket=bucket, Key=key))
        _reply(lambda: self.client.delete_object(Bucket=bucket, Key=key))

    def mkdirs(self, uri: Location) -> None:
        self._split(uri)  # an object store has no folders to make


# Hadoop file systems on object stores: a file written there appears whole when its stream is closed.
OBJECT_STORE_SCHEMES = ("s3a", "s3", "s3n", "gs", "abfs", "abfss", "wasb", "wasbs", "oss")


class HadoopFiles:
    """:class:`FileSystem` of any Hadoop URI through Hadoop's ``FileSystem`` in the Spark session's JVM (py4j, on
    the driver): the same settings and credentials as Spark's own reads and writes. No inode: a file's identity is
    its size (:attr:`FileStat.identity`)."""

    def __init__(self, spark) -> None:
        self.spark = spark

    @property
    def _jvm(self):
        return self.spark.sparkContext._jvm

    def _path_and_fs(self, uri: Location):
        if isinstance(uri, bytes):
            raise UnsupportedLocation(f"{os.fsdecode(uri)}: Hadoop takes names as text")
        path = self._jvm.org.apache.hadoop.fs.Path(uri)
        return path, path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration())

    def qualify(self, uri: str) -> str:
        """``uri`` as Spark's file sources spell it (``/a/b`` -> ``file:/a/b``; a path without a scheme is on
        Spark's default file system)."""
        path, fs = self._path_and_fs(uri)
        return fs.makeQualified(path).toString()

    def _is(self, exc: Exception, java_class: str) -> bool:
        """Whether a py4j error is the Java exception ``java_class`` (by its class, not its message)."""
        from py4j.java_gateway import is_instance_of

        java = getattr(exc, "java_exception", None)
        return java is not None and is_instance_of(self.spark.sparkContext._gateway, java, java_class)

    @staticmethod
    def _file_stat(status) -> FileStat:
        etag = None
        if status.isFile():
            try:  # S3A's statuses carry the object's ETag; HDFS's have no such method
                etag = clean_etag(str(status.getEtag())) if status.getEtag() else None
            except Exception:
                etag = None
        return FileStat(status.getPath().toString(), int(status.getLen()), int(status.getModificationTime()),
                        bool(status.isDirectory()), etag=etag)

    def stat(self, uri: Location) -> FileStat | None:
        from py4j.protocol import Py4JJavaError

        path, fs = self._path_and_fs(uri)
        try:
            return self._file_stat(fs.getFileStatus(path))
        except Py4JJavaError as exc:
            if self._is(exc, "java.io.FileNotFoundException"):
                return None
            raise

    def exists(self, uri: Location) -> bool:
        path, fs = self._path_and_fs(uri)
        return bool(fs.exists(path))

    def list(self, uri: Location, *, recursive: bool = False) -> list[FileStat]:
        path, fs = self._path_and_fs(uri)
        if not fs.exists(path):
            return []
        if not recursive:
            return [self._file_stat(status) for status in fs.listStatus(path)]
        found, files = [], fs.listFiles(path, True)
        while files.hasNext():
            found.append(self._file_stat(files.next()))
        return found

    def read(self, uri: Location) -> bytes | None:
        from py4j.protocol import Py4JJavaError

        path, fs = self._path_and_fs(uri)
        try:
            stream = fs.open(path)
        except Py4JJavaError as exc:
            if self._is(exc, "java.io.FileNotFoundException"):
                return None
            raise
        try:
            return bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def _create(self, fs, path, data: bytes, overwrite: bool) -> None:
        stream = fs.create(path, overwrite)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()

    def write(self, uri: Location, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> str | None:
        """See :meth:`FileSystem.write`. ``if_absent`` is Hadoop's ``create`` without overwrite: atomic on HDFS, a
        check then a write on S3A."""
        from py4j.protocol import Py4JJavaError

        if if_match is not None:
            raise NotImplementedError("Hadoop's FileSystem cannot replace a file only if unchanged")
        path, fs = self._path_and_fs(uri)
        if if_absent:
            try:
                self._create(fs, path, data, overwrite=False)
            except Py4JJavaError as exc:
                if self._is(exc, "org.apache.hadoop.fs.FileAlreadyExistsException"):
                    return None
                raise
            return ""
        if fs.getUri().getScheme() in OBJECT_STORE_SCHEMES:
            self._create(fs, path, data, overwrite=True)  # the object appears whole when the stream is closed
            return ""
        temporary = self._jvm.org.apache.hadoop.fs.Path(path.getParent(), temporary_name(path.getName()))
        self._create(fs, temporary, data, overwrite=True)
        if fs.exists(path):
            fs.delete(path, False)
        if not fs.rename(temporary, path):
            fs.delete(temporary, False)
            raise OSError(f"could not rename {temporary} to {uri}")
        return ""

    def move(self, source: Location, target: Location, *, unchanged: Identity | None = None) -> bool:
        """See :meth:`FileSystem.move`: Hadoop's rename (atomic on HDFS; a copy then a delete on an object store)."""
        if unchanged is not None:
            now = self.stat(source)
            if now is None or now.identity != unchanged:
                return False
        src, fs = self._path_and_fs(source)
        dst = self._jvm.org.apache.hadoop.fs.Path(target)
        fs.mkdirs(dst.getParent())
        return bool(fs.rename(src, dst))

    def delete(self, uri: Location, *, recursive: bool = False) -> None:
        path, fs = self._path_and_fs(uri)
        fs.delete(path, recursive)

    def mkdirs(self, uri: Location) -> None:
        path, fs = self._path_and_fs(uri)
        fs.mkdirs(path)


class Files:
    """:class:`FileSystem` of a whole home: local paths (and exact local names as bytes) to :class:`LocalFiles`,
    every other URI to ``remote`` (:class:`S3Files` or :class:`HadoopFiles`); :class:`UnsupportedLocation` when
    there is none for it."""

    def __init__(self, remote: FileSystem | None = None, local: LocalFiles | None = None) -> None:
        self.local = local or LocalFiles()
        self.remote = remote

    def on(self, uri: Location) -> FileSystem:
        """The file system that holds ``uri``."""
        if isinstance(uri, bytes) or local_path(uri) is not None:
            return self.local
        if self.remote is None:
            raise UnsupportedLocation(f"{uri}: no file system for it here (local paths and this home's store only)")
        return self.remote

    def stat(self, uri: Location) -> FileStat | None:
        return self.on(uri).stat(uri)

    def exists(self, uri: Location) -> bool:
        return self.on(uri).exists(uri)

    def list(self, uri: Location, *, recursive: bool = False) -> list[FileStat]:
        return self.on(uri).list(uri, recursive=recursive)

    def read(self, uri: Location) -> bytes | None:
        return self.on(uri).read(uri)

    def write(self, uri: Location, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> str | None:
        return self.on(uri).write(uri, data, if_absent=if_absent, if_match=if_match)

    def move(self, source: Location, target: Location, *, unchanged: Identity | None = None) -> bool:
        store = self.on(source)
        if self.on(target) is not store:
            raise OSError(f"cannot move {os.fsdecode(source)} to {os.fsdecode(target)}: another file system")
        return store.move(source, target, unchanged=unchanged)

    def delete(self, uri: Location, *, recursive: bool = False) -> None:
        self.on(uri).delete(uri, recursive=recursive)

    def mkdirs(self, uri: Location) -> None:
        self.on(uri).mkdirs(uri)

