"""docker-compose.yml, checked without Docker: its services, the shared home volume, and that every `fruits` command
line in it (the services' commands and the `docker compose run` lines of its header) parses with the real CLI parser."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml

from conftest import ROOT
from fruits.cli import build_parser
from fruits.config import ENV_OVERRIDES

COMPOSE_FILE = ROOT / "docker-compose.yml"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # PyYAML resolves the x-* anchors and `<<` merge keys


@pytest.fixture(scope="module")
def image_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT (exec form): what a service runs when it does not override `entrypoint`."""
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT")]
    assert len(lines) == 1
    return json.loads(lines[0][len("ENTRYPOINT") :])


def entrypoint(service: dict, image_entrypoint: list[str]) -> list[str]:
    value = service.get("entrypoint", image_entrypoint)
    return shlex.split(value) if isinstance(value, str) else list(value)


def command(service: dict) -> list[str]:
    value = service.get("command", [])
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def runs_fruits(service: dict, image_entrypoint: list[str]) -> bool:
    entry = entrypoint(service, image_entrypoint)
    return bool(entry) and entry[-1].rsplit("/", 1)[-1] == "fruits"


def parse_fruits(argv: list[str], where: str):
    """The real `fruits` argparse parser; a flag it does not know, or a bad value, fails the test."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `fruits {shlex.join(argv)}` does not parse with fruits.cli.build_parser() ({exc})")


def mounts(service: dict) -> dict[str, str]:
    """Volume source -> target for the service's short-syntax volumes."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        found[source] = target
    return found


def test_services_are_a_master_two_workers_the_stream_the_refit_and_the_web(compose):
    services = compose["services"]
    assert {"spark-master", "stream", "refit", "web"} <= set(services)
    workers = sorted(name for name, s in services.items() if WORKER_CLASS in command(s))
    assert workers == ["spark-worker-1", "spark-worker-2"]
    assert MASTER_CLASS in command(services["spark-master"])


def test_workers_register_with_the_master_the_drivers_use(compose):
    services = compose["services"]
    master = command(services["spark-master"])
    host, port = master[master.index("--host") + 1], master[master.index("--port") + 1]
    url = f"spark://{host}:{port}"
    for name in ("spark-worker-1", "spark-worker-2"):
        argv = command(services[name])
        assert argv[-1] == url, f"{name} registers with {argv[-1]}, not {url}"
        assert argv[argv.index("--cores") + 1] == "1"
        assert services[name]["depends_on"]["spark-master"]["condition"] == "service_healthy"
    for name in ("stream", "refit"):
        argv = command(services[name])
        assert argv[argv.index("--master") + 1] == url
        assert services[name]["hostname"], "executors connect back to the driver by its hostname"


def test_the_shared_home_volume_is_mounted_at_the_same_path_in_workers_stream_and_refit(compose, image_entrypoint):
    services = compose["services"]
    assert "fruits-home" in compose["volumes"]
    targets = {
        name: mounts(services[name]).get("fruits-home")
        for name in ("spark-worker-1", "spark-worker-2", "stream", "refit", "web")
    }
    assert None not in targets.values(), f"fruits-home is not mounted in every service: {targets}"
    assert len(set(targets.values())) == 1, f"fruits-home is mounted at different paths: {targets}"
    home = targets["stream"]
    for name in ("stream", "refit", "web"):
        args = parse_fruits(command(services[name]), name)
        assert args.home == home, f"{name} uses --home {args.home}, the shared volume is at {home}"


def test_every_fruits_command_line_parses_with_the_real_parser(compose, image_entrypoint):
    services = compose["services"]
    parsed = {}
    for name, service in services.items():
        if runs_fruits(service, image_entrypoint):
            parsed[name] = parse_fruits(command(service), f"service {name}")
    assert {"stream", "refit", "web"} <= set(parsed)
    assert parsed["stream"].command == "stream" and parsed["refit"].command == "refit-pca"
    assert parsed["web"].command == "serve"
    assert parsed["refit"].every  # the periodic refit

    # The header's `docker compose run [options] SERVICE ARGS...` lines: ARGS go to the service's entrypoint.
    runs = 0
    for line in COMPOSE_FILE.read_text().splitlines():
        match = re.match(r"#\s+docker compose run\s+(.*?)(\s+#.*)?$", line)
        if not match:
            continue
        words = shlex.split(match.group(1))
        while words and words[0].startswith("-"):
            words.pop(0)
        service, argv = words[0], words[1:]
        assert service in services, f"`{line.strip()}` names no service"
        if runs_fruits(services[service], image_entrypoint) and argv:
            parse_fruits(argv, f"header line `{line.strip()}`")
            runs += 1
    assert runs >= 1


def test_fruits_environment_variables_are_ones_the_config_reads(compose):
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        keys = environment if isinstance(environment, dict) else [e.split("=", 1)[0] for e in environment]
        for key in keys:
            if key.startswith("FRUITS_"):
                assert key in ENV_OVERRIDES, f"service {name} sets {key}, which fruits.config does not read"


def test_the_web_service_is_published_on_the_host_loopback_only_with_the_streams_weights(compose):
    web = compose["services"]["web"]
    assert web["ports"], "the web service publishes its port"
    for port in web["ports"]:
        host_ip, host_port, container_port = str(port).split(":")
        assert host_ip == "127.0.0.1", f"web port {port} is published on every interface"
    argv = parse_fruits(command(web), "web")
    assert (argv.host, argv.port) == ("0.0.0.0", int(container_port))  # inside the container, for the port mapping
    stream = compose["services"]["stream"]
    assert web["environment"]["FRUITS_WEIGHTS"] == stream["environment"]["FRUITS_WEIGHTS"]
    assert mounts(web).get("keras-cache") == mounts(stream).get("keras-cache")
    assert "FRUITS_TOKEN" in web["environment"]
