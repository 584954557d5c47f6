"""S3 homes (``s3a://bucket/key``): one set of settings for every reader and writer of the home.

The endpoint, region and addressing style come from ``[s3]`` in conf/fruits.toml, with ``FRUITS_S3_ENDPOINT``,
``FRUITS_S3_REGION`` and ``FRUITS_S3_PATH_STYLE`` on top (:mod:`fruits.config`); the credentials only from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) or the usual AWS credential chain, never
from the repository. The same settings reach:

- Spark/Hadoop as ``spark.hadoop.fs.s3a.*`` (:meth:`S3Settings.spark_conf`);
- delta-rs (deltalake) and pyarrow's S3 file system through the ``AWS_*`` variables of this process
  (:meth:`S3Settings.export`): both read ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``...;
- direct object writes (``fruits drop``/``stage``, the lock object) through boto3 (:func:`client`), which can make a
  single PUT conditional (``If-None-Match: *``): an object appears whole when its upload completes, and never
  replaces another one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from fruits.config import Config

SCHEMES = ("s3a://", "s3://")


def is_s3(uri: str) -> bool:
    """Whether ``uri`` names an object in S3 (``s3a://`` as Hadoop spells it, or ``s3://``)."""
    return uri.startswith(SCHEMES)


def uses_s3(config: Config) -> bool:
    """Whether any location of ``config``'s home (the home itself, or a landing folder elsewhere) is on S3."""
    return any(is_s3(uri) for uri in (config.home, config.landing, config.archive, config.quarantine))


def split(uri: str) -> tuple[str, str]:
    """(bucket, key) of an ``s3a://`` or ``s3://`` URI."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


@dataclass(frozen=True)
class S3Settings:
    """Where the S3 server is and how to address it; see the module docstring."""

    endpoint: str  # empty: AWS's own endpoint for the region
    region: str
    path_style: bool

    @classmethod
    def from_config(cls, config: Config) -> "S3Settings":
        """``[s3]`` (with the ``FRUITS_S3_*`` variables on top, as :mod:`fruits.config` merged them)."""
        return cls(config.s3.endpoint.rstrip("/"), config.s3.region, config.s3.path_style)

    @property
    def plain_http(self) -> bool:
        return self.endpoint.startswith("http://")

    def spark_conf(self) -> dict[str, str]:
        """The ``spark.hadoop.fs.s3a.*`` settings (credentials: S3A's default chain, which reads the AWS variables)."""
        conf = {
            "spark.hadoop.fs.s3a.path.style.access": str(self.path_style).lower(),
            "spark.hadoop.fs.s3a.endpoint.region": self.region,
        }
        if self.endpoint:
            conf["spark.hadoop.fs.s3a.endpoint"] = self.endpoint
            conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(not self.plain_http).lower()
        return conf

    def environment(self) -> dict[str, str]:
        """The ``AWS_*`` variables delta-rs (object_store) and pyarrow read for this server."""
        env = {"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region,
               "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": str(not self.path_style).lower(),
               # delta-rs commits the ledger (several writers: stream, drop, stage) with If-None-Match PUTs
               "AWS_CONDITIONAL_PUT": "etag"}
        if self.endpoint:
            env["AWS_ENDPOINT_URL"] = self.endpoint
            env["AWS_ENDPOINT_URL_S3"] = self.endpoint
        if self.plain_http:
            env["AWS_ALLOW_HTTP"] = "true"
        return env

    def export(self, environ: os._Environ | dict[str, str] | None = None) -> None:
        """Set :meth:`environment` in this process (so every ``DeltaTable(...)`` and ``pyarrow.fs`` call uses it)."""
        target = os.environ if environ is None else environ
        target.update(self.environment())
        client.cache_clear()


def configure(config: Config) -> S3Settings | None:
    """Export the S3 settings for this process when the home uses S3; returns them (None for other homes)."""
    if not uses_s3(config):
        return None
    settings = S3Settings.from_config(config)
    settings.export()
    return settings


@lru_cache(maxsize=1)
def client():
    """A boto3 S3 client for the exported settings (endpoint/region/path style from the ``AWS_*`` variables)."""
    import boto3
    from botocore.config import Config as BotoConfig

    virtual = os.environ.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false") == "true"
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_REGION") or None,
        config=BotoConfig(s3={"addressing_style": "virtual" if virtual else "path"}, retries={"max_attempts": 5}),
    )


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


MISSING = ("404", "NoSuchKey", "NotFound")
# If-None-Match / If-Match not met (409: two conditional writes of one key at once, on some servers)
CONFLICT = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def etag_of(data: bytes) -> str:
    """The ETag S3 gives an object stored by a single PUT of ``data``: its MD5, in hex."""
    return hashlib.md5(data).hexdigest()


def clean_etag(etag: str | None) -> str | None:
    """An ETag without its quotes (S3 quotes them in headers and listings)."""
    return etag.strip('"') if etag else None


def _reply(call: Callable[[], Any], absent: tuple[str, ...]) -> Any | None:
    """``call()``'s reply, or None when S3 answers with one of the error codes ``absent``."""
    try:
        return call()
    except Exception as exc:
        if _error_code(exc) in absent:
            return None
        raise


def head(uri: str) -> dict[str, Any] | None:
    """``{"size", "etag", "mtime_ms"}`` of the object at ``uri``, or None if there is none."""
    bucket, key = split(uri)
    reply = _reply(lambda: client().head_object(Bucket=bucket, Key=key), MISSING)
    if reply is None:
        return None
    return {"size": int(reply["ContentLength"]), "etag": clean_etag(reply["ETag"]),
            "mtime_ms": int(reply["LastModified"].timestamp() * 1000)}


def put_new(uri: str, data: bytes) -> str | None:
    """Store ``data`` at ``uri`` in one PUT unless an object is there already (``If-None-Match: *``, atomic on the
    server); its ETag, or None if the name was taken."""
    bucket, key = split(uri)
    reply = _reply(lambda: client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*"), CONFLICT)
    return None if reply is None else clean_etag(reply["ETag"])


def put(uri: str, data: bytes) -> str:
    """Store ``data`` at ``uri`` in one PUT, replacing any object there; its ETag."""
    bucket, key = split(uri)
    return clean_etag(client().put_object(Bucket=bucket, Key=key, Body=data)["ETag"])


def replace_if(uri: str, data: bytes, etag: str) -> str | None:
    """Replace the object at ``uri`` only if it still has ``etag`` (``If-Match``); its new ETag, or None if it
    changed (or vanished) meanwhile."""
    bucket, key = split(uri)
    reply = _reply(
        lambda: client().put_object(Bucket=bucket, Key=key, Body=data, IfMatch=f'"{etag}"'), CONFLICT + MISSING
    )
    return None if reply is None else clean_etag(reply["ETag"])


def get(uri: str) -> tuple[bytes, str] | None:
    """(bytes, ETag) of the object at ``uri``, or None if there is none."""
    bucket, key = split(uri)
    reply = _reply(lambda: client().get_object(Bucket=bucket, Key=key), MISSING)
    return None if reply is None else (reply["Body"].read(), clean_etag(reply["ETag"]))


def delete(uri: str) -> None:
    """Delete the object at ``uri`` (no error if there is none)."""
    bucket, key = split(uri)
    client().delete_object(Bucket=bucket, Key=key)
