"""How the server tests find their server (tests/clearml_server.py), without one: a bad server is one
line within bounded waits, and with none provided the whole server unit skips saying what it looked
for (a failure where REPROZOO_TEST_REQUIRE_SERVER is set)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clearml_server import CONF_VARIABLE, REQUIRE_VARIABLE, BadServer, NoServer, from_conf, provided_server, render_conf
from helpers import free_port

REPO = Path(__file__).resolve().parents[1]


def token(server_version: str, api_version: str = "2.31") -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part({'server_version': server_version, 'api_version': api_version})}.signature"


@contextlib.contextmanager
def http_server(answers: dict[str, tuple[int, dict]]) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering each path with (status, JSON body); 404 elsewhere."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            status, body = answers.get(self.path, (404, {}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """Accepts connections and never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def conf(tmp_path: Path, api: str, files: str) -> Path:
    path = tmp_path / "clearml.conf"
    path.write_text(render_conf(api, files, "http://127.0.0.1:1", "ACCESSKEY", "the-secret"))
    return path


def one_line(tmp_path: Path, api: str, files: str, seconds: float = 25) -> str:
    started = time.monotonic()
    with pytest.raises(BadServer) as raised:
        from_conf(conf(tmp_path, api, files), "REPROZOO_TEST_CLEARML_CONF=c")
    assert time.monotonic() - started < seconds  # bounded: each request waits at most PROBE_SECONDS
    line = str(raised.value)
    assert "\n" not in line and "the-secret" not in line and line.startswith("REPROZOO_TEST_CLEARML_CONF=c: ")
    return line


def test_an_unreachable_apiserver_is_one_line(tmp_path: Path) -> None:
    api = f"http://127.0.0.1:{free_port()}"
    assert f"the ClearML apiserver {api} does not answer (Connection refused)" in one_line(tmp_path, api, api)


def test_a_hung_apiserver_is_one_line_after_the_probe_timeout(tmp_path: Path) -> None:
    with silent_listener() as api:
        assert f"the ClearML apiserver {api} does not answer (no answer)" in one_line(tmp_path, api, api)


def test_an_older_server_is_one_line(tmp_path: Path) -> None:
    answers = {"/debug.ping": (200, {"data": {"msg": "ClearML server"}}), "/auth.login": (200, {"data": {"token": token("1.16.2", "2.29")}})}
    with http_server(answers) as api:
        line = one_line(tmp_path, api, api)
    assert f"{api} is ClearML server 1.16.2 (API 2.29); the server tests need 2.0 or newer" in line


def test_rejected_keys_are_one_line(tmp_path: Path) -> None:
    answers = {"/debug.ping": (200, {}), "/auth.login": (401, {"meta": {"result_msg": "Unauthorized"}})}
    with http_server(answers) as api:
        line = one_line(tmp_path, api, api)
    assert f"the ClearML server {api} rejected the test user's keys (HTTP 401); fix api.credentials" in line


def test_a_fileserver_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    answers = {"/debug.ping": (200, {}), "/auth.login": (200, {"data": {"token": token("2.0.0")}})}
    with http_server(answers) as api, silent_listener() as files:
        assert f"the ClearML fileserver {files} does not answer (no answer)" in one_line(tmp_path, api, files)
    with http_server(answers) as api:
        assert from_conf(conf(tmp_path, api, api), "c").version == "2.0.0"  # the same server with a fileserver that answers


def test_something_else_on_the_port_is_one_line(tmp_path: Path) -> None:
    with http_server({"/debug.ping": (200, {}), "/auth.login": (200, {"hello": "world"})}) as api:
        assert f"{api}/auth.login answered HTTP 200 without a ClearML token; is {api} a ClearML apiserver?" in one_line(tmp_path, api, api)


def test_a_missing_or_incomplete_conf_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(BadServer, match=r"^c: no such file; point it at a clearml.conf"):
        from_conf(tmp_path / "absent.conf", "c")
    partial = tmp_path / "partial.conf"
    partial.write_text('api { api_server: "http://127.0.0.1:1" }\n')
    with pytest.raises(BadServer, match=r"^c: api.files_server is not set; the server tests need"):
        from_conf(partial, "c")


def test_no_server_names_both_ways_to_provide_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CONF_VARIABLE, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker command
    with pytest.raises(NoServer) as raised, provided_server():
        pass
    line = str(raised.value)
    assert line.startswith(f"no ClearML server: {CONF_VARIABLE} is not set and `make clearml-server` cannot start (no docker command)")
    assert f"set {CONF_VARIABLE}=/path/clearml.conf" in line and "docker/clearml/docker-compose.yml" in line


def run_server_tests(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-o", "addopts=",
                           "tests/server/test_fixture.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def test_without_a_server_every_server_test_skips_with_the_reason_shown(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (CONF_VARIABLE, REQUIRE_VARIABLE, "PYTEST_XDIST_WORKER",
                                                              "PYTEST_XDIST_TESTRUNUID", "PYTEST_ADDOPTS")}
    env["PATH"] = f"{tmp_path}:{os.path.dirname(sys.executable)}:/usr/bin:/bin"
    (tmp_path / "docker").symlink_to("/bin/false")  # a docker whose engine does not answer
    skipped = run_server_tests(env)
    assert skipped.returncode == 0, skipped.stdout[-3000:]
    tail = skipped.stdout.strip().splitlines()
    assert tail[-1].startswith("4 skipped"), skipped.stdout[-3000:]
    reasons = [line for line in tail if line.startswith("SKIPPED")]
    assert reasons and all("no ClearML server: REPROZOO_TEST_CLEARML_CONF is not set and `make clearml-server` cannot"
                           " start (no Docker engine answers)" in line for line in reasons), skipped.stdout[-3000:]

    required = run_server_tests({**env, REQUIRE_VARIABLE: "1"})
    assert required.returncode == 1 and "4 errors" in required.stdout.strip().splitlines()[-1], required.stdout[-3000:]
    assert f"({REQUIRE_VARIABLE} is set: this run needs a server)" in required.stdout
