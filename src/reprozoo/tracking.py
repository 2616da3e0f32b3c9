"""ClearML task lifecycle: offline by default, a real server when one is configured.

Offline mode needs no server: ClearML writes the whole task (config, scalars, artifacts,
models) under its offline folder and zips it on close; `Task.import_offline_session(zip)`
uploads it to a server later. `mode=off` records nothing beyond the run directory.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only

from reprozoo.config import RunConfig


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


def resolve_mode(requested: str) -> str:
    """auto → server if configured, else offline; an unreachable server falls back to offline."""
    mode = requested
    if mode == "auto":
        mode = "server" if server_configured() else "offline"
    if mode == "server":
        url = api_server()
        if not server_reachable(url):
            print(f"reprozoo: ClearML server {url} is unreachable; recording this run offline instead"
                  " (upload it later with `reprozoo tasks import <zip>`)", file=sys.stderr)
            mode = "offline"
    return mode


def configure_clearml() -> None:
    """Settings every mode needs, applied before Task.init."""
    from clearml import Task

    # ClearML's default subprocess reporter made offline task.close() hang for minutes on
    # these machines; in-process reporting is equivalent to sdk.development.report_use_subprocess: false.
    Task._report_subprocess_enabled = False
    os.environ.setdefault("CLEARML_LOG_ENVIRONMENT", "")


class ClearMLLogger(Logger):
    """Lightning logger that mirrors every logged scalar into the ClearML task."""

    def __init__(self, task: Any) -> None:
        super().__init__()
        self.task = task

    @property
    def name(self) -> str:
        return "clearml"

    @property
    def version(self) -> str:
        return self.task.id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the RunConfig is connected once, in start()

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        reporter = self.task.get_logger()
        for key, value in metrics.items():
            if key == "epoch":
                continue
            title, _, series = key.partition("/")
            reporter.report_scalar(title=title, series=series or title, value=float(value), iteration=step or 0)


class Tracker:
    """One run's record keeper; `task` is None in mode off."""

    def __init__(self, mode: str, task: Any = None) -> None:
        self.mode, self.task = mode, task

    @property
    def task_id(self) -> str | None:
        return self.task.id if self.task is not None else None

    def callbacks(self) -> list[Any]:
        return []

    def lightning_logger(self, run_dir: Path) -> list[Logger]:
        loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="logs", version="")]
        if self.task is not None:
            loggers.append(ClearMLLogger(self.task))
        return loggers

    def finish(self, metrics: dict[str, Any], timing: dict[str, Any], run_dir: Path, export_dir: Path) -> None:
        record: dict[str, Any] = {"mode": self.mode, "task_id": self.task_id}
        if self.task is not None:
            reporter = self.task.get_logger()
            for split in ("dev", "test"):
                for key in ("accuracy", "macro_f1"):
                    reporter.report_single_value(f"{split}_{key}", metrics[split][key])
            reporter.report_single_value("train_seconds", timing["train_seconds"])
            reporter.report_confusion_matrix("confusion", "test", matrix=metrics["test"]["confusion_matrix"], iteration=0,
                                             xlabels=list(metrics["test"]["per_class"]), ylabels=list(metrics["test"]["per_class"]))
            self.task.upload_artifact("metrics", artifact_object=str(run_dir / "metrics.json"), wait_on_upload=True)
            self.task.upload_artifact("config", artifact_object=str(run_dir / "config.yaml"), wait_on_upload=True)
            if self.mode == "server":
                from clearml import OutputModel

                model = OutputModel(task=self.task, name=f"{self.task.name}-export", framework="PyTorch")
                model.update_weights_package(weights_path=str(export_dir), auto_delete_file=False)
            else:
                # ClearML 2.1 cannot register an OutputModel offline (its DummyModel lacks `locked`);
                # the export travels as an artifact and is uploaded with the session on import.
                self.task.upload_artifact("model-export", artifact_object=str(export_dir), wait_on_upload=True)
            self.task.flush(wait_for_uploads=True)
            if self.mode == "offline":
                folder = self.task.get_offline_mode_folder()
                record["offline_folder"] = str(folder)
            self.task.close()
            if self.mode == "offline":
                record["offline_zip"] = str(folder) + ".zip" if Path(str(folder) + ".zip").exists() else None
        (run_dir / "task.json").write_text(json.dumps(record, indent=2) + "\n")

    def abort(self, reason: str, run_dir: Path) -> None:
        """Training stopped early (preemption, error): close the task so what it holds is kept."""
        record: dict[str, Any] = {"mode": self.mode, "task_id": self.task_id, "stopped": reason}
        if self.task is not None:
            self.task.get_logger().report_text(f"training stopped: {reason}")
            if self.mode == "offline":
                record["offline_folder"] = str(self.task.get_offline_mode_folder())
            if self.mode == "server":
                self.task.mark_stopped(force=True, status_message=reason[:200])
            self.task.close()
        (run_dir / "task.json").write_text(json.dumps(record, indent=2) + "\n")


def start(cfg: RunConfig, plan: Any, weights: Any) -> Tracker:
    mode = resolve_mode(cfg.tracking.mode)
    if mode == "off":
        return Tracker("off")
    configure_clearml()
    from clearml import Task

    Task.set_offline(mode == "offline")
    # Task.init re-seeds every RNG with ClearML's own seed (1337) unless told not to; the run's
    # seed is ours (RunConfig.seed), so the same config gives the same metrics tracked or not.
    Task.set_random_seed(None)
    task = Task.init(
        project_name=cfg.tracking.project,
        task_name=cfg.tracking.task_name or f"{plan.entry.name} {cfg.data.granularity} seed{cfg.seed}",
        task_type=Task.TaskTypes.training,
        reuse_last_task_id=False,
        auto_connect_arg_parser=False,
        auto_connect_frameworks=False,  # we upload the export ourselves, not every checkpoint
        auto_resource_monitoring=False,
    )
    task.connect_configuration(cfg.to_dict(), name="RunConfig")
    task.set_parameters_as_dict({"resolved": {
        "model": plan.entry.name, "hub_id": plan.entry.hub_id, "weights_source": weights.source,
        "weights_revision": weights.revision, "lr": plan.lr, "batch_size": plan.batch_size,
        "max_length": plan.max_length, "pooling": plan.pooling, "precision": plan.precision,
        "data_sha256": json.dumps(plan.data_sha256, sort_keys=True),
    }})
    return Tracker(mode, task)
