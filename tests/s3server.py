"""A real S3-compatible server for the tests and benches: SeaweedFS (``weed server -s3``), one process with its
master, volume server, filer and S3 gateway on free loopback ports, data in a temporary folder.

The binary is built once by ``.ci/build-weed`` into ``~/.cache/fruits/weed/<version>/weed`` (or named by
``FRUITS_WEED``). Credentials are made up per run and exported as the standard AWS variables.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / ".ci" / "build-weed"


def weed_binary() -> Path | None:
    """The SeaweedFS binary: ``$FRUITS_WEED``, else the newest one ``.ci/build-weed`` cached; None if none."""
    named = os.environ.get("FRUITS_WEED")
    if named:
        return Path(named) if Path(named).is_file() else None
    cache = Path(os.environ.get("WEED_CACHE", Path.home() / ".cache" / "fruits" / "weed"))
    built = sorted(cache.glob("*/weed"), key=lambda p: p.stat().st_mtime)
    return built[-1] if built else None


def _free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class S3Server:
    """A running ``weed server -s3``; :meth:`stop` ends it."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log: Path

    @property
    def environment(self) -> dict[str, str]:
        """What a ``fruits`` process needs to use this server (with an ``s3a://`` home)."""
        return {
            "FRUITS_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def client(self):
        """A boto3 client for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, config=Config(s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        """Create the bucket ``name``."""
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        """Stop the server: SIGKILL at once. After SIGTERM (or SIGINT), weed's master keeps retrying its stopped
        filer and does not exit, so a grace would only be waited out; its data folder is a test's, thrown away."""
        self.process.kill()
        self.process.wait(10)


def _wait_ready(server: S3Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited with {server.process.returncode}: {server.log.read_text()[-3000:]}")
        try:
            probe = f"probe-{secrets.token_hex(4)}"
            server.create_bucket(probe)  # a real write: the S3 gateway, filer and volume server all answer
            client = server.client()
            client.put_object(Bucket=probe, Key="k", Body=b"x")
            client.delete_object(Bucket=probe, Key="k")
            client.delete_bucket(Bucket=probe)
            return
        except Exception as exc:  # not up yet
            error = exc
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"weed's S3 gateway not ready after {timeout} s ({error}): {server.log.read_text()[-3000:]}")


def start_server(binary: Path, folder: Path, timeout: float = 90) -> S3Server:
    """Start ``weed server -s3`` with its data in ``folder``; returns once a bucket can be written."""
    folder.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "fruits" + secrets.token_hex(6), secrets.token_hex(20)
    identities = {"identities": [{"name": "fruits", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
    (folder / "s3.json").write_text(json.dumps(identities))
    (folder / "data").mkdir(exist_ok=True)
    roles = ("master", "volume", "filer", "s3")
    ports = {f"{role}.port{grpc}": _free_port() for role in roles for grpc in ("", ".grpc")}
    command = [
        str(binary), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder / 'data'}", "-s3",
        *(f"-{flag}={port}" for flag, port in ports.items()), f"-debug.port={_free_port()}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # off: nothing needs them, and their fixed ports could clash
        f"-s3.config={folder / 's3.json'}", "-master.volumeSizeLimitMB=64", "-volume.max=100",
    ]
    log = folder / "weed.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key, process, log)
    _wait_ready(server, timeout)
    return server
