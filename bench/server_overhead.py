"""Per-run overhead of recording on a ClearML server vs offline: the same tiny MiniLM run through the
real `reprozoo train` CLI, alternately `--tracking offline` and `--tracking server`, against a cold
local server (the kit in ../shared/clearml-server, started on a free port base and stopped at the end)
or the one a `--config-file` names. Ends with one JSON line: median wall seconds per mode, the
difference and the ratio.

    python bench/server_overhead.py [--repeats 3] [--data-dir DIR] [--config-file STATE/clearml.conf]

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
KIT = Path(os.environ.get("REPROZOO_CLEARML_SERVER_KIT") or REPO.parent / "shared" / "clearml-server")
TINY = ["--limit-train-samples", "64", "--limit-eval-samples", "32", "--max-length", "32", "--max-epochs", "1",
        "--batch-size", "16"]
sys.path.insert(0, str(REPO / "tests"))
from helpers import free_port_base  # noqa: E402  (the tests' probe for the kit's consecutive ports)


def timed_run(env: dict[str, str], mode: str, data_dir: str, out: Path) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reprozoo", "train", "--tracking", mode, "--data-dir", data_dir,
                           "--out", str(out), *TINY], env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("REPROZOO_DATA_DIR") or str(REPO.parent / "shared/data/sst5/trees"))
    parser.add_argument("--config-file", help="clearml.conf of a running server (default: start the local kit)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="server-overhead-") as tmp:
        root = Path(tmp)
        state = root / "server"
        if args.config_file:
            config = Path(args.config_file)
        else:
            subprocess.run([str(KIT / "install.sh")], check=True, capture_output=True)
            subprocess.run([str(KIT / "start.sh"), str(state)], check=True, capture_output=True,
                           env={**os.environ, "CLEARML_LOCAL_PORT_BASE": str(free_port_base(6))})
            config = state / "clearml.conf"
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_API_")}
            env.update(CLEARML_CONFIG_FILE=str(config), CLEARML_CACHE_DIR=str(root / "clearml-cache"),
                       REPROZOO_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            first = timed_run(env, "server", args.data_dir, root / "first")  # + data version upload
            times: dict[str, list[float]] = {"offline": [], "server": []}
            for i in range(args.repeats):
                for mode in ("offline", "server"):
                    times[mode].append(timed_run(env, mode, args.data_dir, root / f"{mode}-{i}"))
                    print(f"{mode} run {i + 1}: {times[mode][-1]:.1f} s", file=sys.stderr, flush=True)
        finally:
            if not args.config_file:
                subprocess.run([str(KIT / "stop.sh"), str(state)], check=False, capture_output=True)
    offline, server = statistics.median(times["offline"]), statistics.median(times["server"])
    print(json.dumps({"offline_seconds": round(offline, 1), "server_seconds": round(server, 1),
                      "overhead_seconds": round(server - offline, 1), "ratio": round(server / offline, 2),
                      "first_server_seconds": round(first, 1), "repeats": args.repeats,
                      "runs": {k: [round(x, 1) for x in v] for k, v in times.items()},
                      "load_average_1min": round(os.getloadavg()[0], 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
