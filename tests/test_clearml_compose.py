"""docker/clearml/ checked as data: the compose file (server + GPU agent), the agent's settings and
image, the pinning script and the Make targets. No ClearML server or image can run here."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from reprozoo import agent
from reprozoo.provenance import SECRET_NAME_RE

REPO = Path(__file__).resolve().parents[1]
CLEARML = REPO / "docker" / "clearml"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
REFERENCE = re.compile(r"^\$\{[A-Z_]+(:-)?\}$")  # ${VAR} or ${VAR:-}: a value from .env / the environment


def compose() -> dict:
    return yaml.safe_load((CLEARML / "docker-compose.yml").read_text())


def pin_images():
    spec = importlib.util.spec_from_file_location("pin_images", CLEARML / "pin_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_server_services_follow_upstream_and_the_agent_is_optional() -> None:
    services = compose()["services"]
    assert set(services) == {"apiserver", "webserver", "fileserver", "async_delete", "mongo", "elasticsearch", "redis", "agent"}
    assert [s for s, spec in services.items() if spec.get("profiles")] == ["agent"]  # `up` alone starts the server only
    api = services["apiserver"]
    assert api["command"] == ["apiserver"] and api["ports"] == ["${CLEARML_API_PORT:-8008}:8008"]
    assert api["environment"]["CLEARML_MONGODB_SERVICE_HOST"] == "mongo"  # the YAML merge key was applied
    assert services["webserver"]["ports"] == ["${CLEARML_WEB_PORT:-8080}:80"]
    assert services["fileserver"]["ports"] == ["${CLEARML_FILES_PORT:-8081}:8081"]


def test_every_image_is_pinned_by_digest_but_the_one_said_so() -> None:
    services = compose()["services"]
    images = {name: spec["image"] for name, spec in services.items()}
    unpinned = sorted({ref for name, ref in images.items() if not DIGEST.search(ref) and "build" not in services[name]})
    # clearml/server has no digest anywhere public that could be read from here: an exact release tag,
    # declared unverified in the header, until `make pin-clearml` fills it in.
    assert unpinned in ([], ["clearml/server:2.4.0"])
    header = (CLEARML / "docker-compose.yml").read_text().split("\nservices:")[0]
    if unpinned:
        assert "clearml/server:2.4.0: NO DIGEST FOUND" in header and "make pin-clearml" in header
    assert pin_images().unpinned((CLEARML / "docker-compose.yml").read_text()) == unpinned
    for name, ref in images.items():
        assert not ref.endswith(":latest") and ":" in ref.split("/")[-1], f"{name}: {ref}"
    # The agent image is built here; its bases are pinned in its Dockerfile.
    assert services["agent"]["build"]["dockerfile"] == "docker/clearml/agent.Dockerfile"
    dockerfile = (CLEARML / "agent.Dockerfile").read_text()
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert len(bases) == 2 and all(DIGEST.search(ref) for ref in bases)
    assert pin_images().unpinned(dockerfile) == []


def test_the_agent_serves_the_queue_with_our_image_on_every_gpu() -> None:
    service = compose()["services"]["agent"]
    command = service["command"]
    assert command[:3] == ["daemon", "--queue", "${QUEUE:-gpu}"]
    assert command[command.index("--docker") + 1] == "${REPROZOO_IMAGE:-}" and command[command.index("--gpus") + 1] == "all"
    assert "--foreground" in command and "--force-current-version" in command
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "/var/run/docker.sock:/var/run/docker.sock" in service["volumes"]
    env = service["environment"]
    assert env["CLEARML_AGENT_DOCKER_HOST_MOUNT"].endswith("/agent:/root/.clearml")
    assert "${CLEARML_DATA:-/opt/clearml}/agent:/root/.clearml" in service["volumes"]


def test_no_secret_is_written_in_the_compose_file_or_the_example() -> None:
    checked = 0
    for name, spec in compose()["services"].items():
        for key, value in (spec.get("environment") or {}).items():
            if SECRET_NAME_RE.search(key):
                assert REFERENCE.match(str(value)), f"{name}: {key} must come from .env, not be written here"
                checked += 1
    assert checked >= 4  # the apiserver's two agent keys, the agent's access key and secret
    example = (CLEARML / "env.example").read_text()
    for line in example.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            assert not (SECRET_NAME_RE.search(key) and value), f"env.example must not hold a value for {key}"
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "**/.env" in ignored  # docker/clearml/.env stays out of the agent image's build context
    assert subprocess.run(["git", "check-ignore", "-q", "docker/clearml/.env"], cwd=REPO).returncode == 0


def test_agent_settings_keep_the_image_environment_untouched() -> None:
    from clearml.utilities.pyhocon import ConfigFactory

    conf = ConfigFactory.parse_file(str(CLEARML / "agent.conf"))
    assert list(conf.get("agent.extra_docker_arguments")) == list(agent.DOCKER_ARGUMENTS)
    init = list(conf.get("agent.docker_init_bash_script"))
    assert "export LOCAL_PYTHON=/tmp/clearml-agent-venv/bin/python" in init and not any("/opt/venv" in line for line in init)
    assert not any("{" in line for line in init)  # the agent str.format()s this script
    assert conf.get("agent.bootstrap.use_bootstrap") is False and conf.get("agent.docker_force_pull") is False
    assert list(conf.get("agent.forbidden_docker_args")) == []  # else the agent strips our --entrypoint=
    assert list(conf) == ["agent"] and not re.search(r"(?i)(access_key|secret_key)\s*[:=]", (CLEARML / "agent.conf").read_text())
    args = agent.docker_arguments().split()
    assert args[0] == "--ipc=host" and "--entrypoint=" in args and "--user=0:0" in args
    assert "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1" in args and f"CLEARML_AGENT_SKIP_PIP_VENV_INSTALL={agent.IMAGE_PYTHON}" in args
    assert f"CLEARML_AGENT_FORCE_CODE_DIR={agent.IMAGE_WORKDIR}" in args
    # The paths the arguments name are the image's (docker/Dockerfile).
    image = (REPO / "docker" / "Dockerfile").read_text()
    assert "VIRTUAL_ENV=/opt/venv" in image and re.search(r"^WORKDIR /work$", image, re.MULTILINE)
    assert 'ENTRYPOINT ["reprozoo"]' in image and re.search(r"^USER 10001:10001$", image, re.MULTILINE)


def test_agent_image_installs_the_hash_locked_agent_only() -> None:
    dockerfile = (CLEARML / "agent.Dockerfile").read_text()
    assert "pip install --require-hashes --no-deps -r /tmp/agent.lock" in dockerfile
    assert sorted(re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE)) == ["--from=docker-cli", "docker/clearml/agent.conf",
                                                                              "envs/colab-agent.lock"]
    lock = (REPO / "envs" / "colab-agent.lock").read_text()
    assert f"clearml-agent=={agent.AGENT_VERSION} \\" in lock
    assert f"clearml-agent=={agent.AGENT_VERSION}" in (REPO / "envs" / "colab-agent.in").read_text()


def test_pinning_rewrites_tags_with_the_registry_digest() -> None:
    pin = pin_images()
    text = (CLEARML / "docker-compose.yml").read_text()
    asked: list[str] = []

    def resolve(ref: str) -> str:
        asked.append(ref)
        return "sha256:" + "ab" * 32

    pinned = pin.pin(text, resolve)
    assert asked == pin.unpinned(text) and pin.unpinned(pinned) == []
    assert yaml.safe_load(pinned)["services"]["apiserver"]["image"] in ("clearml/server:2.4.0@sha256:" + "ab" * 32,
                                                                        compose()["services"]["apiserver"]["image"])
    with pytest.raises(ValueError, match="not a sha256 digest"):
        pin.pin("image: x:1\n", lambda ref: "latest")


def test_make_targets() -> None:
    makefile = (REPO / "Makefile").read_text()
    phony = " ".join(line for line in makefile.splitlines() if line.startswith(".PHONY") or line.startswith("\thpo"))
    for target in ("hpo", "agent", "clearml-server", "clearml-server-down", "pin-clearml"):
        assert re.search(rf"^{target}:.*## \S", makefile, re.MULTILINE), target
        assert re.search(rf"\b{target}\b", phony), target
    out = subprocess.run(["make", "-n", "agent", "IMAGE=reg/reprozoo@sha256:" + "1" * 64, "QUEUE=gpu2"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "--require-hashes --no-deps -r envs/colab-agent.lock" in out
    assert re.search(r"CLEARML_CONFIG_FILE=\S+/docker/clearml/agent.conf \S+/clearml-agent daemon --queue gpu2", out)
    assert "--docker reg/reprozoo@sha256:" + "1" * 64 + " --gpus all --force-current-version --foreground" in out
    local = subprocess.run(["make", "-n", "-o", "setup", "hpo", "MODEL=m"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "reprozoo hpo --model m --space" in local and "--local" in local
    queued = subprocess.run(["make", "-n", "-o", "setup", "hpo", "MODEL=m", "QUEUE=gpu"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    assert "--queue gpu" in queued and "--local" not in queued
    # The server tests hand in settings of their own (ports, data folder, keys), and stop what they started.
    env_file = REPO / "docker" / "clearml" / "env.example"
    for target, verb in (("clearml-server", "up -d"), ("clearml-server-down", "--profile agent down")):
        out = subprocess.run(["make", "-n", target, f"CLEARML_ENV={env_file}", "COMPOSE=docker compose"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
        assert f"docker compose --env-file {env_file} -f docker/clearml/docker-compose.yml {verb}" in out, out


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed (apt-get install docker-compose)")
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "clearml"
    shutil.copytree(CLEARML, folder)
    (folder / ".env").write_text("CLEARML_HOST_IP=10.0.0.5\nCLEARML_AGENT_ACCESS_KEY=a\nCLEARML_AGENT_SECRET_KEY=b\n"
                                 f"REPROZOO_IMAGE=reg/reprozoo@sha256:{'0' * 64}\n")
    result = subprocess.run(["docker-compose", "-f", str(folder / "docker-compose.yml"), "config"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "COMPOSE_PROFILES": "agent"})
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert resolved["agent"]["environment"]["CLEARML_API_HOST"] == "http://10.0.0.5:8008"
    assert f"reg/reprozoo@sha256:{'0' * 64}" in resolved["agent"]["command"]
