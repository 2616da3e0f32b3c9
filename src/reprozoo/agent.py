"""How a ClearML agent in docker mode runs a reprozoo task inside our image, in one place.

Read from clearml-agent 3.0.3's source (the version envs/colab-agent.lock pins), not run against a
server here. In docker mode the agent starts `docker run [args] IMAGE bash -c "<bootstrap>; python -m
clearml_agent execute --id TASK"`. With our image as it is, that would go wrong in three ways, each
answered by one argument below:

- the image's ENTRYPOINT is `reprozoo`, so `bash -c …` would become `reprozoo bash -c …`
  → `--entrypoint=` (empty: docker resets it);
- the agent mounts its configuration (mode 0600, owned by root) and caches under /root, which the
  image's user 10001 cannot read → `--user=0:0`;
- `execute` would build a virtualenv and `pip install` the task's packages, and clone the repository
  with git (the image has none): the run must use the image's own interpreter and code
  → CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1 (install nothing), CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=
  /opt/venv/bin/python (run with this interpreter; "1" would mean the agent's own Python, which has
  no torch), CLEARML_AGENT_FORCE_CODE_DIR=/work (no clone, no diff: the code is the image's, the
  commit it was built from is in its labels and the record).

The agent's own helper (clearml-agent inside the container) is bootstrapped by the agent, not by us:
docker/clearml/agent.conf points it at a throwaway venv under /tmp (`agent.docker_init_bash_script`),
so it never installs into /opt/venv (clearml-agent 3.0.3 requires requests<2.33 and setuptools<82,
older than the training tree: installed there it would downgrade them).
"""

from __future__ import annotations

from reprozoo.errors import UserError

IMAGE_PYTHON = "/opt/venv/bin/python"  # docker/Dockerfile: the locked tree lives in /opt/venv
IMAGE_WORKDIR = "/work"  # docker/Dockerfile: WORKDIR, writable by any user
AGENT_VERSION = "3.0.3"  # envs/colab-agent.in (the agent's own lock)

AGENT_ENV = {
    "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL": "1",
    "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL": IMAGE_PYTHON,
    "CLEARML_AGENT_FORCE_CODE_DIR": IMAGE_WORKDIR,
}

# --ipc=host first: dataloader workers share memory through /dev/shm (and records read it first).
DOCKER_ARGUMENTS: tuple[str, ...] = (
    "--ipc=host", "--entrypoint=", "--user=0:0",
    *(part for key, value in AGENT_ENV.items() for part in ("-e", f"{key}={value}")),
)


def docker_arguments() -> str:
    """The arguments as one string, for Task.set_base_docker(docker_arguments=…)."""
    return " ".join(DOCKER_ARGUMENTS)


class QueueError(UserError, LookupError):
    """A queue the ClearML server does not have."""


def require_queue(name: str) -> str:
    """The id of queue `name` on the configured server; else one line naming the queues it has.
    Called before anything is cloned, so an unknown queue leaves no stray draft task behind."""
    from clearml.backend_api.session.client import APIClient

    queues = {q.name: q.id for q in APIClient().queues.get_all(only_fields=["id", "name"])}
    if name in queues:
        return queues[name]
    have = ", ".join(sorted(queues)) or "none"
    raise QueueError(f"the ClearML server has no queue {name!r} (it has: {have}); pick one of those, or start an agent"
                     f" that creates it: `clearml-agent daemon --queue {name} --create-queue` (`make agent QUEUE={name}`)")
