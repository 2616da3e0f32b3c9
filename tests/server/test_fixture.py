"""The fixture itself: a cold server that the SDK reaches, whose apiserver and fileserver can be
killed and restarted without losing what the server holds."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

PROBE = """
import json
from clearml import Task
task = Task.create(project_name="fixture-probe", task_name="probe")
print(json.dumps({"id": task.id, "host": task.session.host}))
"""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def test_server_answers_the_sdk_and_survives_api_and_fileserver_restarts(clearml_server: Any) -> None:
    env = clearml_server.env()
    assert "CLEARML_API_HOST" not in env and env["CLEARML_CONFIG_FILE"] == str(clearml_server.config_file)
    created = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True)
    probe = json.loads(created.stdout.strip().splitlines()[-1])
    assert probe["host"] == clearml_server.api_url

    api_pid = clearml_server.pid("api")
    clearml_server.stop_api()
    assert not _answers(f"{clearml_server.api_url}/debug.ping")
    clearml_server.start_api()
    assert clearml_server.pid("api") != api_pid

    clearml_server.stop_files()
    assert not _answers(f"{clearml_server.files_url}/")
    clearml_server.start_files()
    assert _answers(f"{clearml_server.files_url}/")

    read = f"from clearml import Task; print(Task.get_task(task_id={probe['id']!r}).name)"
    again = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert again.stdout.strip().splitlines()[-1] == "probe"  # the restarted apiserver serves what was stored before
    with urllib.request.urlopen(f"{clearml_server.api_url}/debug.ping", timeout=5) as response:
        assert response.status == 200
