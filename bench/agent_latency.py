"""Agent pick-up latency: seconds from `enqueue` returning to the task's `started` time on the server,
with one idle `clearml-agent daemon` (venv mode, the pinned 3.0.3) polling the queue.

    REPROZOO_TEST_CLEARML_CONF=/path/clearml.conf python bench/agent_latency.py [--tasks 5] [--append]

Needs a ClearML server, taken as the server tests take it (tests/clearml_server.py):
REPROZOO_TEST_CLEARML_CONF, else `make clearml-server` where Docker has its images; else it says so
in one line. The tasks go to the run's own project and queue, removed at the end. Each task is a one-line
script (no repository, no packages), enqueued only once the agent is idle again, so what is measured
is the agent's poll (`agent.polling_interval`, 5 s by default, and the daemon's own sleep) plus its
task start-up, not training; each task is enqueued after a random 0–5 s pause, so the poll
phase is sampled. The agent comes from tests/server/agents.py, as in the tests.
--append adds a line to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "server"), str(REPO / "tests")]

from agents import Agent, install_agent  # noqa: E402

from clearml_server import Server, server_for_bench  # noqa: E402

SCRIPT = "print('reprozoo agent latency probe')\n"


def measure(n_tasks: int, folder: Path, server: Server) -> list[float]:
    os.environ.update(server.env())  # the SDK in this process
    from clearml import Task

    script = folder / "probe.py"
    script.write_text(SCRIPT)
    queue = server.queue("latency")
    agent = Agent(install_agent(folder / "agent-venv"), server.env(), queue, folder / "agent", "latency",
                  server.worker("latency")).start()
    try:
        agent.wait_listening()
        latencies = []
        phase = random.Random(0)
        for i in range(n_tasks):
            # The daemon sleeps between polls: enqueue at a random point of its cycle, not right after a task.
            time.sleep(phase.uniform(0, 5))
            task = Task.create(project_name=server.project, task_name=f"latency probe {i}", script=str(script),
                               add_task_init_call=False, detect_repository=False)
            Task.enqueue(task, queue_name=queue)
            enqueued = time.time()
            deadline = enqueued + 300
            while True:
                task.reload()
                if task.get_status() in ("completed", "failed", "stopped") or time.time() > deadline:
                    break
                time.sleep(0.5)
            if task.get_status() != "completed":
                raise SystemExit(f"probe {task.id} ended {task.get_status()}; agent log: {agent.log()[-2000:]}")
            latencies.append(task.data.started.timestamp() - enqueued)
            print(f"probe {i}: picked up after {latencies[-1]:.2f} s", flush=True)
        return latencies
    finally:
        agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--append", action="store_true", help="add the result line to bench/RESULTS.md")
    args = parser.parse_args()
    with server_for_bench("bench/agent_latency.py") as server, tempfile.TemporaryDirectory(prefix="reprozoo-latency-") as tmp:
        latencies = measure(args.tasks, Path(tmp), server)
        where = f"ClearML server {server.version} at {server.api_url}"
    result = {"tasks": len(latencies), "min_s": round(min(latencies), 2), "median_s": round(statistics.median(latencies), 2),
              "max_s": round(max(latencies), 2), "agent": "clearml-agent 3.0.3 daemon, venv mode",
              "machine": f"{os.cpu_count()} CPU {platform.machine()}", "server": where}
    print(json.dumps(result))
    if args.append:
        line = (f"\n- Agent pick-up latency (`bench/agent_latency.py`, {datetime.now(timezone.utc):%Y-%m-%d}): enqueue → task started,"
                f" one idle {result['agent']} polling every 5 s, {where}, {result['tasks']} one-line tasks:"
                f" median **{result['median_s']} s** (min {result['min_s']} s, max {result['max_s']} s), {result['machine']}.\n")
        with (REPO / "bench" / "RESULTS.md").open("a") as results:
            results.write(line)


if __name__ == "__main__":
    main()
