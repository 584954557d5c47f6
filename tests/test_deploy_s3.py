"""The `s3` service of docker-compose.yml, run here as compose runs it (its own command line and environment; only
the data folder, the ports and the interface it shows to the network are this machine's): it answers signed requests
and refuses anonymous or wrongly signed ones, and only its S3 gateway listens beyond loopback.

The SeaweedFS binary comes from ``.ci/build-weed``; without it the test is skipped, or fails when FRUITS_REQUIRE_S3
is set (CI)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time

import pytest
import yaml

from conftest import ROOT, missing
from s3server import _free_port, weed_binary

pytestmark = pytest.mark.slow  # a real S3 server (no Spark)


def other_address() -> str | None:
    """An IPv4 address of this machine other than loopback (where "the network" reaches it), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 1).close()
        return True
    except OSError:
        return False


def compose_s3_command(folder, network: str) -> tuple[list[str], dict[str, int]]:
    """The s3 service's `weed` command line, with the data in ``folder``, free ports for every role, and ``network``
    for the address compose's network reaches the container at (0.0.0.0 there)."""
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["s3"]
    argv = [str(arg) for arg in service["command"]]
    ports = {role: _free_port() for role in ("s3", "master", "volume", "filer")}
    replaced = []
    for arg in argv:
        flag, _, value = arg.partition("=")
        if flag == "-dir":
            arg = f"-dir={folder}"
        elif flag == "-s3.port":
            arg = f"-s3.port={ports['s3']}"
        elif flag == "-s3.ip.bind":
            assert value == "0.0.0.0", "compose's S3 gateway listens on the container's network"
            arg = f"-s3.ip.bind={network}"
        replaced.append(arg)
    assert "-ip.bind=127.0.0.1" in replaced, "master, volume server and filer (no authentication) on loopback only"
    extra = [f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
             # every gRPC port too (weed's default, the port + 10000, is past 65535 for a free port above 55535)
             *(f"-{role}.port.grpc={_free_port()}" for role in ("master", "volume", "filer", "s3")),
             f"-debug.port={_free_port()}"]
    return replaced + extra, ports


def test_the_compose_s3_service_refuses_anonymous_requests(tmp_path):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    binary = weed_binary()
    if binary is None:
        missing("no SeaweedFS binary: run .ci/build-weed (or set FRUITS_WEED)", required_by="FRUITS_REQUIRE_S3")
    network = other_address() or "127.0.0.1"
    argv, ports = compose_s3_command(tmp_path / "data", network)
    (tmp_path / "data").mkdir()
    key, secret = "fruits" + secrets.token_hex(6), secrets.token_hex(24)  # as the compose header makes them
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    log = (tmp_path / "weed.log").open("wb")
    process = subprocess.Popen([str(binary), *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    endpoint = f"http://{network}:{ports['s3']}"

    def client(**credentials):
        return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **credentials))

    try:
        admin = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                             aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"}))
        deadline, error = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "weed.log").read_text()[-3000:]
            try:
                admin.create_bucket(Bucket="fruits")  # the first write creates the bucket, as in compose
                admin.put_object(Bucket="fruits", Key="home/landing/Banana/a.jpg", Body=b"photo bytes")
                break
            except Exception as exc:  # not up yet
                error = exc
                time.sleep(0.5)
        else:
            pytest.fail(f"weed not ready: {error}\n{(tmp_path / 'weed.log').read_text()[-3000:]}")
        assert admin.get_object(Bucket="fruits", Key="home/landing/Banana/a.jpg")["Body"].read() == b"photo bytes"

        anonymous = client(signature_version=UNSIGNED)
        wrong = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                             aws_secret_access_key="not-" + secret, config=Config(s3={"addressing_style": "path"}))
        for who in (anonymous, wrong):
            for attempt in (
                lambda c: c.list_buckets(),
                lambda c: c.list_objects_v2(Bucket="fruits"),
                lambda c: c.get_object(Bucket="fruits", Key="home/landing/Banana/a.jpg"),
                lambda c: c.put_object(Bucket="fruits", Key="home/landing/Poison/x.jpg", Body=b"x"),
                lambda c: c.delete_object(Bucket="fruits", Key="home/landing/Banana/a.jpg"),
                lambda c: c.create_bucket(Bucket="other"),
            ):
                with pytest.raises(ClientError) as refused:
                    attempt(who)
                assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert [o["Key"] for o in admin.list_objects_v2(Bucket="fruits")["Contents"]] == ["home/landing/Banana/a.jpg"]
        if network != "127.0.0.1":  # the roles without authentication cannot be reached from the network
            assert reachable(network, ports["s3"])
            for role in ("master", "volume", "filer"):
                assert not reachable(network, ports[role]), f"weed's {role} port answers on {network}"
                assert reachable("127.0.0.1", ports[role]), role
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
