"""S3 homes (``s3a://bucket/key``): one set of settings for every reader and writer of the home.

The endpoint, region and addressing style come from ``[s3]`` in conf/fruits.toml, with ``FRUITS_S3_ENDPOINT``,
``FRUITS_S3_REGION`` and ``FRUITS_S3_PATH_STYLE`` on top (:mod:`fruits.config`); the credentials only from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) or the usual AWS credential chain, never
from the repository. The same settings reach:

- Spark/Hadoop as ``spark.hadoop.fs.s3a.*`` (:meth:`S3Settings.spark_conf`);
- delta-rs (deltalake) as the storage options of every call (:meth:`S3Settings.storage_options`, handed out as
  :attr:`fruits.home.home.Home.storage_options` to the table handles of :mod:`fruits.home.tables`);
- every other file of the home (``fruits drop``/``stage``, the lock object, the model store, the progress file)
  through :class:`fruits.home.filesystem.S3Files`, given these settings: boto3, whose single PUT can be
  conditional (``If-None-Match: *``): an object appears whole when its upload completes, and never replaces another.

Nothing is exported to the process's environment: each reader is given the settings, so two homes on two S3 servers
can live in one process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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

    def storage_options(self) -> dict[str, str]:
        """The ``AWS_*`` options of this server for delta-rs (object_store's keys, passed per call)."""
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


def etag_of(data: bytes) -> str:
    """The ETag S3 gives an object stored by a single PUT of ``data``: its MD5, in hex."""
    return hashlib.md5(data).hexdigest()
