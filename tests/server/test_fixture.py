"""The server fixture itself, against the provided server: the SDK reaches it through the config the
tests hand out, a test run's namespace is cleaned up without touching another run's, and a proxy in
front of it takes it away and gives it back (what the fault tests rely on)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from proxy import Proxy

from clearml_server import Api, BadServer, cleanup, from_conf, probe, read_conf

PROBE = """
import json, sys
from clearml import Task
task = Task.create(project_name=sys.argv[1], task_name="probe")
print(json.dumps({"id": task.id, "host": task.session.host, "project": task.get_project_name()}))
"""
ENQUEUE = """
import sys
from clearml import Task
from clearml.backend_api.session.client import APIClient
APIClient().queues.create(name=sys.argv[2])
task = Task.create(project_name=sys.argv[1], task_name="left queued")
Task.enqueue(task, queue_name=sys.argv[2])
print(task.id)
"""


def sdk(env: dict[str, str], code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_sdk_reaches_the_provided_server_in_the_run_project(clearml_server: Any) -> None:
    env = clearml_server.env()
    assert "CLEARML_API_HOST" not in env and env["CLEARML_CONFIG_FILE"] == str(clearml_server.config_file)
    probe_task = json.loads(sdk(env, PROBE, clearml_server.project))
    assert probe_task["host"] == clearml_server.api_url and probe_task["project"] == clearml_server.project
    assert clearml_server.project.startswith("reprozoo-tests/") and clearml_server.run_id in clearml_server.project


def test_cleanup_stops_the_runs_leftovers_and_leaves_another_runs_alone(clearml_server: Any) -> None:
    env = clearml_server.env()
    mine = dataclasses.replace(clearml_server, run_id=f"{clearml_server.run_id}-a")
    other = dataclasses.replace(clearml_server, run_id=f"{clearml_server.run_id}-b")
    ids = {run.run_id: sdk(env, ENQUEUE, run.project, run.queue("q")) for run in (mine, other)}
    api = Api(clearml_server)
    try:
        left = cleanup(mine)
        assert left == [f"task {ids[mine.run_id]} (left queued) queued"]
        assert api.queues(mine.queue("")) == [] and api.tasks(mine.project, ["queued", "in_progress"]) == []
        # The other run's queue still holds its task.
        queues = api.queues(other.queue(""))
        assert [q["name"] for q in queues] == [other.queue("q")] and len(queues[0]["entries"]) == 1
        assert [t["id"] for t in api.tasks(other.project, ["queued"])] == [ids[other.run_id]]
    finally:
        cleanup(other)
    assert api.queues(other.queue("")) == [] and cleanup(mine) == []


def test_a_proxy_takes_the_apiserver_away_and_gives_it_back(clearml_server: Any, tmp_path: Path) -> None:
    with Proxy(clearml_server.api_url) as api:
        conf = clearml_server.conf_copy(tmp_path / "clearml.conf", api_url=api.url)
        fields = read_conf(conf, "proxied")
        assert probe(fields, "proxied")[0] == clearml_server.version
        api.down()
        with pytest.raises(BadServer, match=r"^proxied: the ClearML apiserver http://127\.0\.0\.1:\d+ does not answer \("):
            probe(fields, "proxied", timeout=3)
        api.up()
        assert from_conf(conf, "proxied").api_url == api.url


def test_wrong_keys_are_one_line(clearml_server: Any, tmp_path: Path) -> None:
    conf = clearml_server.conf_copy(tmp_path / "clearml.conf", secret_key="not-the-secret")
    with pytest.raises(BadServer) as raised:
        from_conf(conf, "REPROZOO_TEST_CLEARML_CONF=x")
    line = str(raised.value)
    assert line.startswith(f"REPROZOO_TEST_CLEARML_CONF=x: the ClearML server {clearml_server.api_url} rejected the test user's keys (HTTP 401)")
    assert "\n" not in line and "not-the-secret" not in line
