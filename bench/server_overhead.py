"""Per-run overhead of recording on a ClearML server vs offline: the same tiny MiniLM run through the
real `reprozoo train` CLI, alternately `--tracking offline` and `--tracking server`, against the server
the server tests take (tests/clearml_server.py: REPROZOO_TEST_CLEARML_CONF, else `make clearml-server`
where Docker has its images; else one line saying none is configured), in a project of its own.
Ends with one JSON line: median wall seconds per mode, the difference and the ratio.

    REPROZOO_TEST_CLEARML_CONF=/path/clearml.conf python bench/server_overhead.py [--repeats 3] [--data-dir DIR]

The first server run also registers the data version (uploads ~1.4 MiB); it is reported apart
(`first_server_seconds`) and left out of the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--limit-train-samples", "64", "--limit-eval-samples", "32", "--max-length", "32", "--max-epochs", "1",
        "--batch-size", "16"]
sys.path.insert(0, str(REPO / "tests"))
from clearml_server import server_for_bench  # noqa: E402


def timed_run(env: dict[str, str], mode: str, data_dir: str, out: Path, project: str) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--tracking", mode, "--data-dir", data_dir,
                           "--out", str(out), *TINY, "--set", f"tracking.project={project}"], env=env, capture_output=True,
                          text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("REPROZOO_DATA_DIR") or str(REPO.parent / "shared/data/sst5/trees"))
    args = parser.parse_args()
    with server_for_bench("bench/server_overhead.py") as server, tempfile.TemporaryDirectory(prefix="server-overhead-") as tmp:
        root = Path(tmp)
        env = server.env()
        env.update(CLEARML_CACHE_DIR=str(root / "clearml-cache"), REPROZOO_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        first = timed_run(env, "server", args.data_dir, root / "first", server.project)  # + data version upload
        times: dict[str, list[float]] = {"offline": [], "server": []}
        for i in range(args.repeats):
            for mode in ("offline", "server"):
                times[mode].append(timed_run(env, mode, args.data_dir, root / f"{mode}-{i}", server.project))
                print(f"{mode} run {i + 1}: {times[mode][-1]:.1f} s", file=sys.stderr, flush=True)
        where = f"ClearML server {server.version} at {server.api_url}"
    offline, server = statistics.median(times["offline"]), statistics.median(times["server"])
    print(json.dumps({"offline_seconds": round(offline, 1), "server_seconds": round(server, 1),
                      "overhead_seconds": round(server - offline, 1), "ratio": round(server / offline, 2),
                      "first_server_seconds": round(first, 1), "repeats": args.repeats, "server": where,
                      "runs": {k: [round(x, 1) for x in v] for k, v in times.items()},
                      "load_average_1min": round(os.getloadavg()[0], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
