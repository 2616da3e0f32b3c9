"""The ClearML server that the server tests and bench/ use, taken the way a user provides one:

1. `REPROZOO_TEST_CLEARML_CONF=/path/clearml.conf`: a running server (api, files and web hosts, and a
   test user's keys), used as it is;
2. else `make clearml-server`, when Docker has the images that docker/clearml/docker-compose.yml pins:
   started for the test run (its own data folder, keys and ports) and stopped at its end;
3. else none: `NoServer`, one line naming both and how to provide them.

A configured server that does not answer, rejects the keys, is older than the tests need, or whose
fileserver does not answer is `BadServer`: one line, found within bounded waits.

A test run works on the server in a namespace of its own (`Server.run_id`): its tasks in project
`reprozoo-tests/<run id>`, its queues `<run id>-<name>`, its agents' worker ids `<run id>:<name>`.
`cleanup()` stops what the run left queued or running, unregisters its workers and deletes its queues.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONF_VARIABLE = "REPROZOO_TEST_CLEARML_CONF"
# Where a server is meant to be (CI with `make clearml-server`): a server test that would skip fails instead.
REQUIRE_VARIABLE = "REPROZOO_TEST_REQUIRE_SERVER"
COMPOSE_FILE = REPO / "docker" / "clearml" / "docker-compose.yml"
# The release these tests were measured against (clearml 2.1.12 and clearml-agent 3.0.3 speak its API).
MIN_SERVER_VERSION = (2, 0)
PROBE_SECONDS = 10.0
PROJECT_ROOT = "reprozoo-tests"
HOW = (f"set {CONF_VARIABLE}=/path/clearml.conf (a running server with a test user's keys), or load the images of"
       " docker/clearml/docker-compose.yml into Docker (`docker compose -f docker/clearml/docker-compose.yml pull`)"
       " so that the tests start `make clearml-server`")


class NoServer(Exception):
    """No server was provided: the server tests skip (fail where REPROZOO_TEST_REQUIRE_SERVER is set)."""


class BadServer(Exception):
    """A server was provided and is not usable: one line saying what and how to fix it."""


@dataclass(frozen=True)
class Server:
    config_file: Path
    api_url: str
    files_url: str
    web_url: str
    access_key: str
    secret_key: str = field(repr=False)
    version: str = ""
    api_version: str = ""
    source: str = ""  # how it was provided, for messages
    run_id: str = ""

    @property
    def project(self) -> str:
        """This test run's ClearML project: every task a test records goes here or below."""
        return f"{PROJECT_ROOT}/{self.run_id}"

    def queue(self, name: str) -> str:
        return f"{self.run_id}-{name}"

    def worker(self, name: str) -> str:
        return f"{self.run_id}:{name}"

    def env(self) -> dict[str, str]:
        """os.environ pointed at this server alone: its clearml.conf, no CLEARML_API_* or offline override
        from the caller's shell, no task id of an enclosing ClearML run."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_API_", "TRAINS_API_"))}
        for key in ("CLEARML_OFFLINE_MODE", "TRAINS_OFFLINE_MODE", "CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID",
                    "CLEARML_TASK_ID", "TRAINS_TASK_ID", "CLEARML_WORKER_ID", "CLEARML_FILES_HOST", "CLEARML_WEB_HOST"):
            env.pop(key, None)
        env["CLEARML_CONFIG_FILE"] = str(self.config_file)
        env["CLEARML_LOG_ENVIRONMENT"] = ""
        return env

    def conf_copy(self, path: Path, api_url: str | None = None, files_url: str | None = None,
                  secret_key: str | None = None) -> Path:
        """This server's clearml.conf written to `path` with other hosts or another secret (a proxy in
        front of it, a closed port, wrong keys)."""
        path.write_text(render_conf(api_url or self.api_url, files_url or self.files_url, self.web_url,
                                    self.access_key, secret_key or self.secret_key))
        return path


def render_conf(api_url: str, files_url: str, web_url: str, access_key: str, secret_key: str) -> str:
    return (f'api {{\n    api_server: "{api_url}"\n    web_server: "{web_url}"\n    files_server: "{files_url}"\n'
            f'    credentials {{\n        access_key: "{access_key}"\n        secret_key: "{secret_key}"\n    }}\n}}\n')


# --- finding it ------------------------------------------------------------------------------------
def read_conf(path: Path, source: str) -> dict[str, str]:
    """The hosts and keys of a clearml.conf (HOCON, read by ClearML's own parser)."""
    from clearml.utilities.pyhocon import ConfigFactory

    if not path.is_file():
        raise BadServer(f"{source}: no such file; point it at a clearml.conf (`clearml-init` writes one)")
    try:
        conf = ConfigFactory.parse_file(str(path))
    except Exception as err:
        raise BadServer(f"{source}: not a readable clearml.conf ({type(err).__name__}: {str(err)[:200]})") from None
    fields = {}
    for key, name in (("api.api_server", "api_url"), ("api.files_server", "files_url"), ("api.web_server", "web_url"),
                      ("api.credentials.access_key", "access_key"), ("api.credentials.secret_key", "secret_key")):
        value = conf.get(key, None)
        if not value:
            raise BadServer(f"{source}: {key} is not set; the server tests need the api, files and web hosts and a test user's keys")
        fields[name] = str(value).rstrip("/")
    return fields


def _request(url: str, timeout: float, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _unreachable(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "no answer"
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def probe(fields: dict[str, str], source: str, timeout: float = PROBE_SECONDS) -> tuple[str, str]:
    """(server version, API version), or BadServer. Each request waits at most `timeout` seconds."""
    api, files = fields["api_url"], fields["files_url"]
    try:
        status, _ = _request(f"{api}/debug.ping", timeout)
    except (OSError, ValueError) as err:
        raise BadServer(f"{source}: the ClearML apiserver {api} does not answer ({_unreachable(err)}); start it, or fix api.api_server") from None
    if status != 200:
        raise BadServer(f"{source}: {api}/debug.ping answered HTTP {status}; is {api} a ClearML apiserver?")
    basic = base64.b64encode(f"{fields['access_key']}:{fields['secret_key']}".encode()).decode()
    try:
        status, body = _request(f"{api}/auth.login", timeout, data=b"{}",
                                headers={"Authorization": f"Basic {basic}", "Content-Type": "application/json"})
    except OSError as err:
        raise BadServer(f"{source}: the ClearML apiserver {api} did not answer a login ({_unreachable(err)})") from None
    if status in (401, 403):
        raise BadServer(f"{source}: the ClearML server {api} rejected the test user's keys (HTTP {status}); "
                        "fix api.credentials (create keys in the web UI: Settings > Workspace > Create new credentials)")
    try:
        token = json.loads(body)["data"]["token"]
        claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        version, api_version = str(claims["server_version"]), str(claims["api_version"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise BadServer(f"{source}: {api}/auth.login answered HTTP {status} without a ClearML token; is {api} a ClearML apiserver?") from None
    if _version(version) < MIN_SERVER_VERSION:
        wanted = ".".join(map(str, MIN_SERVER_VERSION))
        raise BadServer(f"{source}: {api} is ClearML server {version} (API {api_version}); the server tests need {wanted} or newer: upgrade it")
    try:
        _request(f"{files}/", timeout)  # any HTTP answer will do (the fileserver's / is a 404 or 405)
    except OSError as err:
        raise BadServer(f"{source}: the ClearML fileserver {files} does not answer ({_unreachable(err)}); start it, or fix api.files_server") from None
    return version, api_version


def run_id() -> str:
    """One per test process: xdist's workers each get their own (`<run>-gw0`), so no two units share a queue."""
    run = (os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex)[:8]
    return f"{run}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


def from_conf(path: Path, source: str) -> Server:
    fields = read_conf(path, source)
    version, api_version = probe(fields, source)
    return Server(config_file=path, version=version, api_version=api_version, source=source, run_id=run_id(), **fields)


# --- `make clearml-server` ---------------------------------------------------------------------------
def compose_images() -> list[str]:
    """The images `make clearml-server` runs (the agent profile and images built here left out)."""
    import yaml

    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return sorted({spec["image"] for spec in services.values() if "image" in spec and "build" not in spec and not spec.get("profiles")})


def compose_missing(images: bool = True) -> str | None:
    """Why `make clearml-server` cannot start here (with `images`: without pulling), or None when it can."""
    if not shutil.which("docker"):
        return "no docker command"
    try:
        if subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False).returncode != 0:
            return "no Docker engine answers"
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False).returncode != 0 \
                and not shutil.which("docker-compose"):
            return "no docker compose"
        missing = [ref for ref in (compose_images() if images else [])
                   if subprocess.run(["docker", "image", "inspect", ref], capture_output=True, timeout=60, check=False).returncode != 0]
    except subprocess.TimeoutExpired:
        return "docker did not answer in time"
    return f"Docker lacks {', '.join(missing)}" if missing else None


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _make(target: str, env_file: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(REPO), target, f"CLEARML_ENV={env_file}"], capture_output=True, text=True,
                          timeout=timeout, check=False)


def compose_start(folder: Path) -> Path:
    """`make clearml-server` with a data folder, keys and ports of its own (settings in FOLDER/clearml.env),
    waited for until it answers; its clearml.conf. A start that fails is stopped again."""
    folder.mkdir(parents=True, exist_ok=True)
    # The services write their volumes as their own users (Elasticsearch as uid 1000), not as the caller.
    for volume in ("data/elastic_7", "data/mongo_4/db", "data/mongo_4/configdb", "data/redis", "data/fileserver", "logs", "config"):
        (folder / "data" / volume).mkdir(parents=True, exist_ok=True)
        (folder / "data" / volume).chmod(0o777)
    api, web, files = _free_ports(3)
    key, secret = secrets.token_hex(15).upper(), secrets.token_urlsafe(40)
    env_file = folder / "clearml.env"
    env_file.write_text(f"CLEARML_DATA={folder / 'data'}\nCLEARML_HOST_IP=127.0.0.1\nCLEARML_AGENT_ACCESS_KEY={key}\n"
                        f"CLEARML_AGENT_SECRET_KEY={secret}\nCLEARML_FILES_HOST=http://127.0.0.1:{files}\n"
                        f"CLEARML_API_PORT={api}\nCLEARML_WEB_PORT={web}\nCLEARML_FILES_PORT={files}\n"
                        f"COMPOSE_PROJECT_NAME=reprozoo-tests-{folder.name.lower()}\n")
    env_file.chmod(0o600)
    conf = folder / "clearml.conf"
    conf.write_text(render_conf(f"http://127.0.0.1:{api}", f"http://127.0.0.1:{files}", f"http://127.0.0.1:{web}", key, secret))
    conf.chmod(0o600)
    try:
        started = _make("clearml-server", env_file, timeout=900)
        if started.returncode != 0:
            tail = (started.stderr or started.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BadServer(f"make clearml-server failed: {tail[0]}")
        deadline = time.monotonic() + 300  # Elasticsearch and the apiserver's first migration take minutes
        fields = read_conf(conf, "make clearml-server")
        while True:
            try:
                probe(fields, "make clearml-server", timeout=5)
                return conf
            except BadServer:
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)
    except BaseException:
        compose_stop(folder)
        raise


def compose_stop(folder: Path) -> None:
    _make("clearml-server-down", folder / "clearml.env", timeout=300)


@contextlib.contextmanager
def compose_server(folder: Path) -> Iterator[Path]:
    """compose_start, and compose_stop at the end."""
    conf = compose_start(folder)
    try:
        yield conf
    finally:
        compose_stop(folder)


@contextlib.contextmanager
def _shared_compose_server() -> Iterator[Path]:
    """One `make clearml-server` for all of a test run's processes (xdist workers): the first starts it,
    the last to finish stops it."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        with tempfile.TemporaryDirectory(prefix="reprozoo-clearml-") as folder, compose_server(Path(folder)) as conf:
            yield conf
        return
    state = Path(tempfile.gettempdir()) / f"reprozoo-clearml-{run[:12]}"
    lock_path = state.with_suffix(".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        users = state / "users"
        if not (users / "started").is_file():
            compose_start(state)  # raises, and stops what it started, when the start fails
            users.mkdir()
            (users / "started").touch()
        (users / str(os.getpid())).touch()
    try:
        yield state / "clearml.conf"
    finally:
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            (users / str(os.getpid())).unlink(missing_ok=True)
            if [p.name for p in users.iterdir()] == ["started"]:
                compose_stop(state)
                shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def provided_server() -> Iterator[Server]:
    """The server as a user provides it (the module docstring's order). The caller cleans up its
    namespace (`cleanup`); a server started here is stopped at the end."""
    configured = os.environ.get(CONF_VARIABLE)
    if configured:
        yield from_conf(Path(configured).expanduser(), f"{CONF_VARIABLE}={configured}")
        return
    missing = compose_missing()
    if missing:
        raise NoServer(f"no ClearML server: {CONF_VARIABLE} is not set and `make clearml-server` cannot start ({missing}); {HOW}")
    with _shared_compose_server() as conf:
        yield from_conf(conf, "make clearml-server")


# --- the run's namespace -------------------------------------------------------------------------------
class Api:
    """The server's REST API with the test user's keys (what the SDK's APIClient does, without the SDK)."""

    def __init__(self, server: Server, timeout: float = 30) -> None:
        self.server, self.timeout = server, timeout
        basic = base64.b64encode(f"{server.access_key}:{server.secret_key}".encode()).decode()
        _, body = _request(f"{server.api_url}/auth.login", timeout, data=b"{}", headers={"Authorization": f"Basic {basic}"})
        self.token = json.loads(body)["data"]["token"]

    def __call__(self, endpoint: str, **payload: Any) -> dict[str, Any]:
        status, body = _request(f"{self.server.api_url}/{endpoint}", self.timeout, data=json.dumps(payload).encode(),
                                headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        answer = json.loads(body)
        if status != 200:
            raise RuntimeError(f"{endpoint}: HTTP {status}: {answer.get('meta', {}).get('result_msg')}")
        return answer["data"]

    def project_ids(self, name: str) -> list[str]:
        """The project `name` and every project below it."""
        found = self("projects.get_all", name=f"^{re.escape(name)}(/|$)", only_fields=["id"], search_hidden=True)
        return [p["id"] for p in found["projects"]]

    def tasks(self, project: str, status: list[str]) -> list[dict[str, Any]]:
        ids = self.project_ids(project)
        if not ids:
            return []
        return self("tasks.get_all", project=ids, status=status, only_fields=["id", "name", "status"], search_hidden=True)["tasks"]

    def queues(self, prefix: str) -> list[dict[str, Any]]:
        return [q for q in self("queues.get_all", only_fields=["id", "name", "entries"])["queues"] if q["name"].startswith(prefix)]

    def workers(self, prefix: str) -> list[str]:
        return [w["id"] for w in self("workers.get_all")["workers"] if w["id"].startswith(prefix)]


def cleanup(server: Server) -> list[str]:
    """Stop the run's tasks still queued or running, unregister its workers, delete its queues. Returns
    the tasks that were left queued or running (a test that leaves one behind has a bug, or failed)."""
    api = Api(server)
    left = []
    for task in api.tasks(server.project, ["queued", "in_progress"]):
        left.append(f"task {task['id']} ({task['name']}) {task['status']}")
        if task["status"] == "queued":
            api("tasks.dequeue", task=task["id"])
        with contextlib.suppress(RuntimeError):
            api("tasks.stop", task=task["id"], force=True, status_reason="left by a server test")
    for worker in api.workers(server.run_id + ":"):  # a killed agent's registration outlives it until the server expires it
        with contextlib.suppress(RuntimeError):
            api("workers.unregister", worker=worker)
    for queue in api.queues(server.run_id + "-"):
        for entry in queue.get("entries") or []:
            with contextlib.suppress(RuntimeError):
                api("tasks.dequeue", task=entry["task"])
        api("queues.delete", queue=queue["id"], force=True)
    return left


@contextlib.contextmanager
def server_for_bench(script: str) -> Iterator[Server]:
    """bench/'s scripts: the server as the tests take it (its namespace cleaned up after), or one line
    saying that none is configured."""
    try:
        with provided_server() as server:
            try:
                yield server
            finally:
                cleanup(server)
    except (NoServer, BadServer) as err:
        raise SystemExit(f"{script}: {err}") from None


def main(argv: list[str]) -> int:
    """`python tests/clearml_server.py up DIR` starts `make clearml-server` for a test run (CI: then
    REPROZOO_TEST_CLEARML_CONF=DIR/clearml.conf) and prints the conf's path; `down DIR` stops it."""
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print("usage: python tests/clearml_server.py up|down DIR", file=sys.stderr)
        return 2
    folder = Path(argv[1]).resolve()
    if argv[0] == "down":
        compose_stop(folder)
        return 0
    missing = compose_missing(images=False)  # `up` pulls them
    if missing:
        print(f"make clearml-server cannot start: {missing}", file=sys.stderr)
        return 1
    try:
        print(compose_start(folder))
    except BadServer as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
