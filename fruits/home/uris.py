"""How the home's locations are spelled for each reader: Spark/Hadoop (``file:/x``, ``s3a://b/k``), delta-rs and
pyarrow (``/x``, ``s3://b/k``), and the local file system (``/x``, or None for a remote store)."""

from __future__ import annotations

import re

from fruits.config import has_scheme

def rust_uri(uri: str) -> str:
    """A Hadoop URI as delta-rs / pyarrow spell it (``s3a://`` -> ``s3://``, ``file:/x`` -> ``/x``)."""
    uri = re.sub(r"^s3a://", "s3://", uri)
    return local_path(uri) if uri.startswith("file:") else uri


def local_path(uri: str) -> str | None:
    """The local file-system path of ``uri`` (``/x``, ``file:/x``, ``file:///x``), or None for a remote URI."""
    if uri.startswith("file:"):
        return "/" + uri[len("file:") :].lstrip("/")
    return None if has_scheme(uri) else uri


def hadoop_uri(local: str) -> str:
    """A local absolute path as Spark's file sources spell it in their ``path`` column (``/a/b c`` -> ``file:/a/b c``)."""
    return "file:" + local


def glob_escape(uri: str) -> str:
    """``uri`` with Hadoop glob characters escaped, so a reader given it reads that one file whatever its name."""
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", uri)

