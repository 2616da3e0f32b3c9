"""The ClearML session: which mode a run records in, and the names a record is made of.

A leaf module (standard library only at import time): records, data versions, containers and
tracking all ask it whether a server is configured and reachable, where offline sessions live,
and how to leave `os.environ` as they found it.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.request
from pathlib import Path

from reprozoo.errors import UserError
from reprozoo.log import log

CONFIG_OBJECT = "RunConfig"  # editable in the UI; what an agent run of a clone trains with
BASELINE_OBJECT = "RunConfig (as recorded)"  # do not edit: the base that UI edits are merged against
PROVENANCE_OBJECT = "Provenance"  # code, environment fingerprint, data and model versions
RUN_SECTION = "run"  # hyperparameter section for RunConfig's top-level fields (seed, out_dir)
RESOLVED_SECTION = "resolved"  # read-only facts (zoo defaults applied, versions) as table columns
ENTRY_POINT = "-m reprozoo train"
# Where in the repository an agent runs ENTRY_POINT: the package lives under src/ and is not among
# the task's requirements, so a venv-mode agent (which clones the repository and installs only the
# requirements) imports it from there. A docker-mode agent runs in the image's /work whatever this says.
WORKING_DIR = "src"
SERVER_SETTINGS = "set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY, CLEARML_API_SECRET_KEY (or run clearml-init)"


class ServerUnavailable(UserError, RuntimeError):
    """A command that needs a ClearML server has none configured, or it does not answer."""


class ServerRejectedCredentials(UserError, PermissionError):
    """The ClearML server answers but refuses the configured access key / secret key."""


def as_user_error(err: BaseException) -> UserError | None:
    """ClearML's LoginError (raised from deep inside whichever SDK call logs in first) as one line
    that names the fix; it names the server and the status, never the keys. None: not one of those."""
    login_error = getattr(sys.modules.get("clearml.backend_api.session.session"), "LoginError", None)
    if login_error is None or not isinstance(err, login_error):
        return None
    found = re.search(r"error (\d+) from ([^)\s]+)", str(err))
    status, host = (found.group(1), found.group(2)) if found else ("", "the ClearML server")
    if status in ("401", "403"):
        conf = os.environ.get("CLEARML_CONFIG_FILE") or str(Path.home() / "clearml.conf")
        return ServerRejectedCredentials(
            f"the ClearML server {host} rejected the credentials (HTTP {status}); set CLEARML_API_ACCESS_KEY and"
            f" CLEARML_API_SECRET_KEY (or api.credentials in {conf}) to a key pair created on that server"
            " (web UI: Settings > Workspace > Create new credentials)")
    return ServerUnavailable(f"the ClearML server {host} refused the login (HTTP {status or '?'}); retry when it is up,"
                             " or pass --tracking offline and `reprozoo tasks import` the session later")


def server_configured() -> bool:
    """ClearML credentials from the environment or a clearml.conf that names an api server."""
    if os.environ.get("CLEARML_API_ACCESS_KEY") and os.environ.get("CLEARML_API_SECRET_KEY"):
        return True
    conf = Path(os.environ.get("CLEARML_CONFIG_FILE", Path.home() / "clearml.conf"))
    return conf.is_file() and "access_key" in conf.read_text(errors="ignore")


def api_server() -> str:
    if os.environ.get("CLEARML_API_HOST"):
        return os.environ["CLEARML_API_HOST"]
    from clearml.backend_api import Session

    return Session.get_api_server_host()


def server_reachable(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/debug.ping", timeout=timeout) as response:
            return response.status < 500
    except OSError:
        return False


def require_server(purpose: str, fallback: str = "") -> str:
    """The api server's URL, or ServerUnavailable naming what to set (or to do instead).

    `purpose` completes "… needs a ClearML server" (e.g. "--enqueue"); `fallback` is the way to do
    without one ("--local trains here"), appended to both messages.
    """
    tail = f"; {fallback}" if fallback else ""
    if not server_configured():
        raise ServerUnavailable(f"{purpose} needs a ClearML server, but no ClearML server is configured: {SERVER_SETTINGS}{tail}")
    url = api_server()
    if not server_reachable(url):
        raise ServerUnavailable(f"{purpose}: the ClearML server {url} is unreachable; retry when it is up{tail}")
    return url


def resolve_mode(requested: str) -> str:
    """auto → server if configured, else offline; an unreachable server falls back to offline."""
    mode = requested
    if mode == "auto":
        mode = "server" if server_configured() else "offline"
    if mode == "server":
        url = api_server()
        if not server_reachable(url):
            log.warning(f"ClearML server {url} is unreachable; recording this run offline instead"
                        " (upload it later with `reprozoo tasks import <zip>`)")
            mode = "offline"
    return mode


def configure_clearml() -> None:
    """Settings every mode needs, applied before Task.init."""
    from clearml import Task

    # In-process reporting (sdk.development.report_use_subprocess: false): ClearML's subprocess
    # reporter can hang offline close() for minutes.
    Task._report_subprocess_enabled = False
    # Task.init re-seeds every RNG with ClearML's own seed (1337) unless told not to; the run's
    # seed is ours (RunConfig.seed), so the same config gives the same metrics tracked or not.
    Task.set_random_seed(None)
    # ClearML copies the environment variables listed here into the task: never, since the list
    # could name a token. The fingerprint records what a replay needs.
    os.environ["CLEARML_LOG_ENVIRONMENT"] = ""


def offline_root() -> Path:
    """Where ClearML keeps offline sessions (`<task id>/` and `<task id>.zip`)."""
    from clearml.config import get_offline_dir

    return Path(get_offline_dir())


def clearml_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(("CLEARML_", "TRAINS_"))}


def restore_clearml_env(before: dict[str, str]) -> None:
    """Undo what Task.init put in os.environ once the task is closed.

    Task.init exports CLEARML_PROC_MASTER_ID=<pid>:<task id>; a `reprozoo train` started later from
    this process (a driver script, a notebook, a test) inherits it, takes itself for a subprocess
    of that closed task and fails inside ClearML ("StubObject is not JSON serializable")."""
    for key in set(clearml_env()) - set(before):
        del os.environ[key]
    os.environ.update(before)
