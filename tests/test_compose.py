"""docker-compose.yml, checked without Docker: its services, the shared home volume, and that every `fruits` command
line in it (the services' commands and the `docker compose run` lines of its header) parses with the real CLI parser."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
import yaml

from conftest import ROOT
from fruits.cli import build_parser
from fruits.config import ENV_OVERRIDES

pytestmark = pytest.mark.fast  # no Spark, no TensorFlow, no ../shared (make test-fast)

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


def environment_of(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, dict):
        return {k: str(v) for k, v in environment.items()}
    return dict(e.split("=", 1) for e in environment)


def test_every_process_shares_one_s3a_home_on_the_s3_service(compose, image_entrypoint):
    services = compose["services"]
    s3 = services["s3"]
    assert s3["build"]["target"] == "seaweedfs" and "-s3" in command(s3)
    (port,) = [arg.split("=", 1)[1] for arg in command(s3) if arg.startswith("-s3.port=")]
    assert any(volume.endswith(":/data") for volume in s3["volumes"]), "the object store keeps its data in a volume"
    homes = {}
    for name in ("stream", "refit", "web", "land-samples"):
        homes[name] = parse_fruits(command(services[name]), name).home
        assert services[name]["depends_on"]["s3"]["condition"] == "service_healthy", f"{name} starts before S3"
    assert len(set(homes.values())) == 1 and homes["stream"].startswith("s3a://"), homes
    for name in ("spark-worker-1", "spark-worker-2", "stream", "refit", "web", "land-samples"):
        environment = environment_of(services[name])
        assert interpolate(environment["FRUITS_S3_ENDPOINT"]) == f"http://s3:{port}", name
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # from .env, required, never in the file
            with pytest.raises(LookupError):
                interpolate(environment[key])
            assert interpolate(environment[key], {key: "k"}) == "k"
    assert not any("fruits-home" in v for service in services.values() for v in service.get("volumes", []))


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
                assert key in ENV_OVERRIDES, f"service {name} sets {key}, which fruits does not read"


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


# --- A locked-down deployment ---------------------------------------------------------------------------------------

SPARK_SERVICES = ("spark-master", "spark-worker-1", "spark-worker-2", "stream", "refit")
ENTRYPOINT_SCRIPT = ROOT / "deploy" / "docker-entrypoint.sh"


def interpolate(value: str, environ: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` with ``environ`` (default: nothing set); a
    required variable that is unset raises ``LookupError``."""

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = (environ or {}).get(name, "")
        if value:
            return value
        if op == ":?":
            raise LookupError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def size_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", str(text).lower()).groups()
    return int(number) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def dockerfile_instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith(name + " ")]


def test_the_image_runs_as_an_unprivileged_user_whose_home_holds_the_caches(compose):
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
    entry = [i for i, line in enumerate(lines) if line.startswith("ENTRYPOINT")][0]
    assert users and users[-1] < entry, "no USER before the ENTRYPOINT: containers would run as root"
    user = lines[users[-1]].split()[1]
    assert user not in ("root", "0") and not user.startswith("0:")
    created = re.search(rf"useradd\b.*--uid (\d+).*\b{user}\b", "\n".join(lines))
    assert created and int(created.group(1)) >= 1000, "the user is created with a non-system uid"
    keras_home = re.search(r"KERAS_HOME=(\S+)", "\n".join(lines)).group(1)
    assert keras_home.startswith(f"/home/{user}/")
    for name, service in compose["services"].items():
        assert str(service.get("user", user)) not in ("root", "0"), f"{name} runs as root"
    assert mounts(compose["services"]["stream"])["keras-cache"] == keras_home  # the cache the user can write


def test_published_ports_bind_to_localhost_by_default(compose):
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            parts = interpolate(str(port)).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name} publishes {port} on every interface"
            published += 1
    assert published >= 1  # the master's web UI
    ui = compose["services"]["spark-master"]["ports"][0]
    assert interpolate(ui, {"FRUITS_UI_BIND": "0.0.0.0"}).startswith("0.0.0.0:"), "FRUITS_UI_BIND opens it on purpose"


def test_spark_services_require_the_shared_secret_from_the_environment(compose, image_entrypoint):
    for name in SPARK_SERVICES:
        service = compose["services"][name]
        environment = service.get("environment") or {}
        assert "SPARK_AUTH_SECRET" in environment, f"{name} gets no SPARK_AUTH_SECRET"
        with pytest.raises(LookupError):  # compose refuses to start without it: no default, no empty secret
            interpolate(environment["SPARK_AUTH_SECRET"])
        assert interpolate(environment["SPARK_AUTH_SECRET"], {"SPARK_AUTH_SECRET": "s3cret"}) == "s3cret"
        entry = entrypoint(service, image_entrypoint)
        assert str(ENTRYPOINT_SCRIPT.relative_to(ROOT)) in " ".join(entry), f"{name} skips {ENTRYPOINT_SCRIPT.name}"


def run_entrypoint(tmp_path, **environ) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "SPARK_CONF_DIR": str(tmp_path / "conf"), **environ}
    return subprocess.run(["sh", str(ENTRYPOINT_SCRIPT), "sh", "-c", "echo ran $0 $1", "a", "b"],
                          env=env, capture_output=True, text=True, timeout=30)


def spark_properties(path) -> dict[str, str]:
    """A spark-defaults.conf as Spark reads it: ``key value`` per line (whitespace or '=' between)."""
    pairs = [re.split(r"[\s=]+", line.strip(), maxsplit=1) for line in path.read_text().splitlines()]
    return {pair[0]: pair[1] for pair in pairs if pair[0] and not pair[0].startswith("#")}


def test_the_entrypoint_turns_on_rpc_authentication_with_the_secret_readable_by_its_user_only(tmp_path):
    result = run_entrypoint(tmp_path, SPARK_AUTH_SECRET="s3cret value")
    assert result.returncode == 0 and result.stdout.strip() == "ran a b", result.stderr  # then runs the command
    defaults = tmp_path / "conf" / "spark-defaults.conf"
    assert spark_properties(defaults) == {"spark.authenticate": "true", "spark.authenticate.secret": "s3cret value"}
    assert defaults.stat().st_mode & 0o777 == 0o600
    run_entrypoint(tmp_path, SPARK_AUTH_SECRET="x", SPARK_NETWORK_CRYPTO="true", SPARK_IO_ENCRYPTION="true")
    properties = spark_properties(defaults)
    assert properties["spark.network.crypto.enabled"] == "true" and properties["spark.io.encryption.enabled"] == "true"
    other = tmp_path / "unset"
    assert run_entrypoint(other).returncode == 0 and not (other / "conf").exists()  # local commands need no secret


def test_the_master_rest_submission_port_is_off(compose):
    master = compose["services"]["spark-master"]
    options = master["environment"]["SPARK_MASTER_OPTS"].split()
    assert "-Dspark.master.rest.enabled=false" in options
    assert not any("6066" in str(port) for port in master.get("ports", []))


def test_every_service_has_a_memory_limit_above_what_it_is_given(compose):
    from fruits.config import load_config
    from fruits.spark.session import spark_settings

    services = compose["services"]
    for name, service in services.items():
        assert "mem_limit" in service, f"{name} has no memory limit"
    for name in ("spark-worker-1", "spark-worker-2"):
        argv = command(services[name])
        assert size_bytes(services[name]["mem_limit"]) > size_bytes(argv[argv.index("--memory") + 1])
    config = load_config(environ={})
    for name, section in (("stream", "stream"), ("refit", "pca")):
        driver = spark_settings(config, section)["spark.driver.memory"]
        assert size_bytes(services[name]["mem_limit"]) >= size_bytes(driver) + (1 << 30), (name, driver)


# --- No secret in the image; encrypted Spark RPC; a web service that needs its token ---------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as Docker reads it (moby/patternmatcher): ``(exclude, regex)`` per line, the last match wins; a
    rule that matches a folder matches everything in it; ``**`` spans folders, ``*`` and ``?`` do not."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        pattern = re.sub(r"/+", "/", pattern)
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((exclude, re.compile(regex + r"\Z")))
    return rules


def in_build_context(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether ``path`` (relative to the repository, with /) is sent to the Docker daemon by `docker build .`."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = exclude
    return not excluded


# Files a deployment keeps beside docker-compose.yml, or a developer beside the code: none may reach the image.
SECRET_FILES = [
    ".env", ".env.local", ".env.production", "deploy/.env", "deploy/prod.env", "conf/.env.s3",
    "tls/server.pem", "server.key", "deploy/certs/web.crt", "keystore.p12", "conf/spark.jceks", "id_rsa",
    "home/.ssh/id_ed25519", ".aws/credentials", "credentials", "deploy/secrets/spark_auth", ".netrc", ".pypirc",
    ".git-credentials", ".docker/config.json", "token", "web-token.txt", "spark-secret.txt", "secret.env",
    "s3-data/s3.json", "spark-conf/spark-defaults.conf", "fruits-home/tables/files/part-0.parquet",
    "weights/my.weights.h5", ".venv/bin/python", ".git/config",
]
# What the Dockerfile needs from the context (COPY . ., pip install -e ., the entrypoint, the sample photos).
NEEDED_FILES = ["pyproject.toml", "fruits/web/app.py", "fruits/web/door.py", "conf/fruits.toml",
                "deploy/docker-entrypoint.sh", "README.md", "examples/sample-images/Banana/README.md"]
SECRET_CONTENT = re.compile(
    rb"-----BEGIN [A-Z ]*PRIVATE KEY-----|aws_secret_access_key\s*=\s*[\"']?[A-Za-z0-9/+]{30,}|AKIA[0-9A-Z]{16}"
    rb"|(?:SPARK_AUTH_SECRET|AWS_SECRET_ACCESS_KEY|FRUITS_TOKEN)=[0-9A-Za-z+/]{16,}"
)


def test_no_secret_file_is_in_the_build_context_so_none_in_the_image():
    rules = dockerignore_rules()
    sent = [name for name in SECRET_FILES if in_build_context(name, rules)]
    assert not sent, f"these would be copied into the image by `COPY . .`: {sent}"
    for name in NEEDED_FILES:
        assert in_build_context(name, rules), f"{name} is needed by the Dockerfile but left out of the context"
    # The context as it is on this disk now, untracked files included: no secret-looking content either.
    context = [p for p in ROOT.rglob("*") if p.is_file() and in_build_context(p.relative_to(ROOT).as_posix(), rules)]
    assert any(p.name == "pyproject.toml" for p in context)
    leaking = [str(p.relative_to(ROOT)) for p in context if p.stat().st_size < 5_000_000
               and SECRET_CONTENT.search(p.read_bytes())]
    assert not leaking, f"secret-looking content in the build context: {leaking}"
    # Nor does the Dockerfile bake one in by itself (ARG/ENV values end up in the image's history).
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith(("ARG ", "ENV ")):
            assert not re.search(r"SECRET|TOKEN|PASSWORD|AWS_|_KEY\b", line, re.I), line
        assert not re.match(r"(COPY|ADD)\s.*\.env", line), line


def test_the_dockerignore_matcher_reads_rules_as_docker_does(tmp_path):
    """The matcher above, on rules whose meaning Docker documents (a wrong matcher would make the test above moot)."""
    rules = [(True, re.compile(r"(?:.*/)?[^/]*\.pem\Z")), (True, re.compile(r"docs\Z")),
             (False, re.compile(r"docs/keep\.md\Z")), (True, re.compile(r"[^/]*\.env\Z"))]
    assert not in_build_context("a/b/c.pem", rules) and not in_build_context("c.pem", rules)
    assert not in_build_context("docs/x.md", rules) and in_build_context("docs/keep.md", rules)
    assert not in_build_context("prod.env", rules) and in_build_context("deploy/prod.env", rules)  # no ** : top only


def test_spark_rpc_is_authenticated_and_encrypted_in_compose(compose, tmp_path):
    for name in SPARK_SERVICES:
        environment = compose["services"][name]["environment"]
        assert interpolate(environment["SPARK_NETWORK_CRYPTO"], {"SPARK_AUTH_SECRET": "x"}) == "true", name
        given = {k: interpolate(v, {"SPARK_AUTH_SECRET": "s3cret"}) for k, v in environment.items() if k.startswith("SPARK_")}
        folder = tmp_path / name
        assert run_entrypoint(folder, **{k: v for k, v in given.items() if v}).returncode == 0
        properties = spark_properties(folder / "conf" / "spark-defaults.conf")
        assert properties["spark.authenticate"] == "true" and properties["spark.network.crypto.enabled"] == "true"


def test_the_web_service_cannot_start_without_its_token(compose, tmp_path):
    from fruits.config import ConfigError, load_config
    from fruits.web.door import check_exposure

    web = compose["services"]["web"]
    with pytest.raises(LookupError):  # compose refuses to start it without FRUITS_TOKEN
        interpolate(web["environment"]["FRUITS_TOKEN"])
    argv = parse_fruits(command(web), "web")
    environ = {"FRUITS_TOKEN": interpolate(web["environment"]["FRUITS_TOKEN"], {"FRUITS_TOKEN": "t0ken"})}
    check_exposure(load_config(environ=environ).web, argv.host)  # with it, serve listens on all interfaces
    with pytest.raises(ConfigError):  # and fruits serve itself would refuse without it
        check_exposure(load_config(environ={}).web, argv.host)
    assert "501" not in COMPOSE_FILE.read_text()  # uploads land on S3 (fruits/web/app.py), no stale comment


def test_the_image_build_fails_if_a_secret_file_got_into_the_context_anyway(tmp_path):
    """The Dockerfile's own guard after `COPY . .`, run with sh on a folder holding what a careless context would."""
    text = (ROOT / "Dockerfile").read_text()
    guard = re.search(r"RUN (leaked=.*?fi) \\\n", text, re.S).group(1)
    assert text.index("COPY . .") < text.index(guard) < text.index("pip install --no-deps -e .")
    clean = tmp_path / "clean"
    (clean / "fruits").mkdir(parents=True)
    (clean / "fruits" / "web.py").write_text("")
    assert subprocess.run(["sh", "-c", guard], cwd=clean, capture_output=True).returncode == 0
    for name in (".env", "deploy/.env.prod", "tls/server.pem", "server.key", "home/.ssh/id_ed25519", ".aws/credentials"):
        dirty = tmp_path / name.replace("/", "_")
        (dirty / name).parent.mkdir(parents=True, exist_ok=True)
        (dirty / name).write_text("secret")
        result = subprocess.run(["sh", "-c", guard], cwd=dirty, capture_output=True, text=True)
        assert result.returncode == 1 and name.rsplit("/", 1)[-1] in result.stderr, name
