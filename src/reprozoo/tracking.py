"""ClearML task lifecycle: offline by default, a real server when one is configured.

Offline mode needs no server: ClearML writes the whole task (config, scalars, artifacts) under
its offline folder (`$CLEARML_CACHE_DIR/offline`, default `~/.clearml/cache/offline/<task id>/`)
and zips it on close; `reprozoo tasks import <zip>` (ClearML's `Task.import_offline_session`)
uploads it to a server later. `mode=off` records nothing beyond the run directory.

A run's record, in the order train.py builds it:
  open()   Task.init; on a ClearML agent, the (possibly UI-edited) RunConfig comes back from the task
  record() config object + hyperparameter sections, code (repo/branch/commit/diff), environment
           fingerprint, pip freeze, data version, model revision, base docker image by digest
  finish() final metrics, plots, metrics.json, the export (output model / artifact), model card, close
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import yaml

from reprozoo import agent, provenance, run_spec, safeyaml, task_view
from reprozoo.config import _SECTIONS, ConfigError, RunConfig, _annotation, _parse_value
from reprozoo.data import versions
from reprozoo.data.trees import LABEL_NAMES
from reprozoo.log import log
from reprozoo.session import (
    BASELINE_OBJECT,
    CONFIG_OBJECT,
    ENTRY_POINT,
    PROVENANCE_OBJECT,
    RUN_SECTION,
    WORKING_DIR,
    clearml_env,
    configure_clearml,
    resolve_mode,
    restore_clearml_env,
)

# How long a run's end waits for its checkpoint upload in flight (a spot instance's notice is 30 s
# to 2 min; the fileserver down makes the upload retry until then).
UPLOAD_WAIT_SECONDS = 120.0

# --- RunConfig <-> task -------------------------------------------------------------------------
def config_sections(cfg: RunConfig) -> dict[str, dict[str, str]]:
    """RunConfig as ClearML hyperparameter sections (strings; None as "null", editable in the UI)."""
    data = cfg.to_dict()
    sections = {name: {k: _text(v) for k, v in data[name].items()} for name in _SECTIONS}
    sections[RUN_SECTION] = {k: _text(v) for k, v in data.items() if k not in _SECTIONS}
    return sections


def _text(value: Any) -> str:
    return "null" if value is None else str(value)


def config_from_sections(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Parse hyperparameter sections back into a RunConfig dict (only the fields they hold).

    A key that is no RunConfig setting, or a value that does not parse, is a ConfigError naming it:
    skipping it would run another config than the one the UI shows, and the merged record would
    then overwrite the evidence."""
    out: dict[str, Any] = {}
    for name, values in sections.items():
        if name in _SECTIONS:
            fields = {f for f in _SECTIONS[name].__dataclass_fields__}
            out[name] = _parsed(name, values, fields, [name])
        elif name == RUN_SECTION:
            out.update(_parsed(name, values, set(RunConfig.__dataclass_fields__) - set(_SECTIONS), []))
        elif name != task_view.USER_PROPERTIES_SECTION and values:
            # Nothing reads it: an edit there would be silently ignored by the run.
            raise ConfigError(f"task hyperparameter section {name!r} is not RunConfig's (sections: "
                              f"{', '.join([*_SECTIONS, RUN_SECTION])}) and no run reads it; move the edit into"
                              " one of those sections or the 'RunConfig' object, delete the section, then enqueue it again")
    return out


def _parsed(section: str, values: dict[str, Any], fields: set[str], parents: list[str]) -> dict[str, Any]:
    """A redacted value (`***`) is no setting: such fields keep the recorded config's value."""
    out: dict[str, Any] = {}
    fix = "fix or delete it in the task's hyperparameters, then enqueue it again"
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"task hyperparameter {section}/{key}: not a setting of the {section!r} section "
                              f"(settings: {', '.join(sorted(fields))}); {fix}")
        if str(value) == provenance.REDACTED:
            continue
        try:
            out[key] = _parse_value(str(value), _annotation(parents, key), f"{section}/{key}")
        except (yaml.YAMLError, ConfigError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(f"task hyperparameter {section}/{key} = {str(value)[:80]!r} does not parse ({reason}); {fix}") from None
    return out


def remote_config(task: Any, local: RunConfig) -> RunConfig:
    """On an agent: the RunConfig held by the (cloned, maybe edited) task, else the local one."""
    text = task.get_configuration_object(CONFIG_OBJECT)
    if not text:
        return local  # not a task reprozoo recorded; run what the command line says
    task_view.check_read_only(task)
    edited = run_spec.recorded_config(safeyaml.load_yaml_mapping(text, f"task {task.id} {CONFIG_OBJECT}"), f"task {task.id} {CONFIG_OBJECT}")
    base_text = task.get_configuration_object(BASELINE_OBJECT)
    baseline = run_spec.recorded_config(safeyaml.load_yaml_mapping(base_text, f"task {task.id} {BASELINE_OBJECT}"),
                                        f"task {task.id} {BASELINE_OBJECT}") if base_text else None
    return run_spec.merge_edits(baseline, edited, config_from_sections(task.get_parameters_as_dict()))


# --- lightning logger -----------------------------------------------------------------------------
def write_config(task: Any, cfg: RunConfig, description: str) -> None:
    """A RunConfig into a task, as every reprozoo task holds it: the editable object, its read-only
    baseline (what `remote_config` merges edits against) and the hyperparameter sections; redacted."""
    recorded = provenance.redact(cfg.to_yaml())
    task.set_configuration_object(CONFIG_OBJECT, config_text=recorded, config_type="yaml", description=description)
    task.set_configuration_object(BASELINE_OBJECT, config_text=recorded, config_type="yaml",
                                  description="read-only: UI edits of RunConfig and of the sections are merged against this")
    task.set_parameters_as_dict(provenance.redact_obj(config_sections(cfg)))
    task_view.set_properties(task, {"recorded_config_sha256": task_view.text_sha256(recorded)})


def clearml_logger(task: Any) -> Any:
    """A Lightning logger that mirrors every logged scalar into the ClearML task.

    Its iterations are the optimiser steps done, as the console counts them (`trainer.global_step`,
    once the logger is attached to a trainer: `StepClock`); Lightning's own step counter lags by one
    during fit (a step's loss and the dev scores after N steps are logged at N - 1).
    Built on demand so that importing this module (`reprozoo tasks …`) does not import Lightning (~7 s)."""
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.utilities import rank_zero_only

    class ClearMLLogger(Logger):
        def __init__(self) -> None:
            super().__init__()
            self.task = task
            self.trainer: Any = None

        def clock(self) -> Callback:
            logger = self

            class StepClock(Callback):
                def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
                    logger.trainer = trainer

            return StepClock()

        @property
        def name(self) -> str:
            return "clearml"

        @property
        def version(self) -> str:
            return task.id

        @rank_zero_only
        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass  # the RunConfig is recorded once, in Tracker.record()

        @rank_zero_only
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            reporter = task.get_logger()
            iteration = self.trainer.global_step if self.trainer is not None else step or 0
            for key, value in metrics.items():
                if key == "epoch":
                    continue
                title, _, series = key.partition("/")
                # LearningRateMonitor logs at a batch's start the lr that batch's step uses: numbered with that step.
                shift = 1 if title == "lr" and self.trainer is not None else 0
                reporter.report_scalar(title=title, series=series or title, value=float(value), iteration=iteration + shift)

    return ClearMLLogger()


def flush_on_checkpoint(task: Any) -> Any:
    """A Lightning callback that puts every reported scalar on the server before a checkpoint is written.

    A run killed after a checkpoint resumes from it without reporting its earlier steps again, and
    ClearML sends reports in the background every few seconds: without this, the steps reported in
    the seconds before a kill -9 would be lost (a gap in the resumed task's scalars).
    Lightning logs a step just after writing that step's checkpoint, so that step is flushed at the
    start of the next batch; a kill in the milliseconds between can still lose that one step."""
    from lightning.pytorch.callbacks import Callback

    class FlushOnCheckpoint(Callback):
        pending = False

        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
            task.flush(wait_for_uploads=True)
            self.pending = True

        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            if self.pending:
                self.pending = False
                task.flush(wait_for_uploads=True)

    return FlushOnCheckpoint()


# --- the tracker ----------------------------------------------------------------------------------
class Tracker:
    """One run's record keeper; `task` is None in mode off."""

    def __init__(self, mode: str, task: Any = None, config: RunConfig | None = None, remote: bool = False) -> None:
        self.mode, self.task, self.config, self.remote = mode, task, config, remote
        self.provenance: dict[str, Any] = {}
        self.dataset: Any = None
        self.resumes: str | None = None  # a task this run continues but could not reopen (see open_task)
        self.resume_history: list[dict[str, Any]] = []  # accepted resumes with their changes (--accept-changes)
        self.replays: dict[str, Any] | None = None  # on an agent, the task this replays and the changes accepted
        self.closed = False
        self.env_before: dict[str, str] = clearml_env()
        self.uploader: Any = None  # checkpoint_store.CheckpointUploader of a server run (start_uploads)
        self.logger: Any = None  # the ClearML Lightning logger (lightning_logger)

    @property
    def task_id(self) -> str | None:
        return self.task.id if self.task is not None else None

    def lightning_logger(self, run_dir: Path) -> list[Any]:
        from lightning.pytorch.loggers import CSVLogger

        loggers: list[Any] = [CSVLogger(save_dir=str(run_dir), name="logs", version="")]
        if self.task is not None:
            self.logger = clearml_logger(self.task)
            loggers.append(self.logger)
        return loggers

    def lightning_callbacks(self) -> list[Any]:
        """After lightning_logger: the task's scalars flushed at checkpoints, numbered by optimiser step."""
        if self.task is None:
            return []
        return [flush_on_checkpoint(self.task), *([self.logger.clock()] if self.logger is not None else [])]

    def start_uploads(self, run_dir: Path) -> Any:
        """A server run's resume checkpoints go to its task's storage as they are written
        (checkpoint_store): the run survives its machine. None in offline mode and off."""
        wanted = self.config is None or self.config.tracking.upload_checkpoints
        if self.mode == "server" and self.task is not None and self.uploader is None and wanted:
            from reprozoo.checkpoint_store import CheckpointUploader

            self.uploader = CheckpointUploader(self.task, run_dir)
        return self.uploader

    def _end_uploads(self, completed: bool) -> dict[str, Any] | None:
        """Waits for the checkpoint upload in flight; once the task completed, removes its checkpoints
        from storage unless trainer.keep_last_checkpoint keeps them. What reached the storage."""
        if self.uploader is None:
            return None
        kept = not completed or (self.config is not None and self.config.trainer.keep_last_checkpoint)
        summary = self.uploader.close(timeout=UPLOAD_WAIT_SECONDS, drop_pending=not kept)
        stored = ", ".join(str(s["step"]) for s in summary["stored"]) or "none"
        failed = [f"step {a['step']}: {a['status']}" for a in summary["attempts"] if a["status"] != "stored"]
        if not kept:
            removed = [s["url"] for s in summary["stored"]]
            self.uploader.remove_stored()
            summary = {**self.uploader.summary(), "removed_at_completion": removed}
        self.task.get_logger().report_text(
            f"resume checkpoints uploaded to {summary['storage']}: steps {stored}"
            + ("" if kept else " (removed: the task completed; trainer.keep_last_checkpoint=true keeps them)")
            + (f"; not stored: {'; '.join(failed)}" if failed else ""))
        return summary

    # -- before training ---------------------------------------------------------------------------
    def record(self, cfg: RunConfig, plan: Any, weights: Any, git: provenance.GitState | None = None) -> dict[str, Any]:
        """Everything known before training, into the task and into run_dir/provenance.json; `git`: the
        code state the run resolved at its start (else read now)."""
        git = git or provenance.git_state()
        if git.untracked:
            shown = ", ".join(git.untracked[:8]) + (f" (+{len(git.untracked) - 8} more)" if len(git.untracked) > 8 else "")
            log.warning(f"warning: {len(git.untracked)} untracked file(s) are not in the record and would be lost"
                        f" on replay (commit or .gitignore them): {shown}")
        if plan.dataset is not None:
            self.dataset = plan.dataset  # --dataset-id: already resolved and verified by plan_run
        elif self.task is not None and (self.dataset is None or self.dataset.sha256 != plan.data_sha256):
            # Only on an agent whose edited config names other data (server mode: no Task.init involved).
            self.dataset = versions.register(plan.data_dir, self.mode, cfg.tracking.project)
        env = provenance.environment(cfg.seed, git.root)
        data = {"dataset_id": self.dataset.dataset_id if self.dataset else None,
                "dataset_project": versions.dataset_project(cfg.tracking.project), "dataset_name": versions.NAME,
                "content_hash": versions.content_hash(plan.data_sha256), "sha256": plan.data_sha256,
                "parent": self.dataset.parent if self.dataset else None, "data_dir": str(plan.data_dir)}
        self.provenance = provenance.redact_obj({
            "task_id": self.task_id, "mode": self.mode, "run_dir": str(plan.run_dir.resolve()), "resumes": self.resumes,
            # As it ran: what it left to the zoo (`null`) applied, so no later zoo.yaml changes a replay.
            "config": run_spec.with_zoo_defaults(cfg, plan.entry).to_dict(),
            "code": {k: v for k, v in git.to_dict().items() if k != "diff"},
            "environment": env,
            "data": data,
            "model": {"name": plan.entry.name, "hub_id": plan.entry.hub_id, "weights_source": weights.source,
                      "revision": weights.revision},
            "resolved": plan.resolved(),
            **({"resume_history": self.resume_history} if self.resume_history else {}),
            **({"replays": self.replays} if self.replays else {}),
        })
        # The diff as it is (git_state refused a real secret in it): a masked diff would be other code.
        self.provenance["code"]["diff"] = git.diff
        self.provenance["code"]["diff_sha256"] = run_spec.diff_sha256(git.diff)
        # The run, resolved: one document, these same bytes in the run directory and on the task.
        document = json.dumps(self.provenance, indent=2) + "\n"
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        (plan.run_dir / "provenance.json").write_text(document)
        (plan.run_dir / "pip-freeze.txt").write_text(provenance.pip_freeze())
        if git.diff:
            (plan.run_dir / "git.diff").write_text(git.diff)
        if self.task is None:
            return self.provenance
        task = self.task
        # On an agent `cfg` is the task's RunConfig merged with its edits (object and sections, e.g. an HPO
        # trial's optim/lr): record what ran, else the record would hold the template's config.
        write_config(task, cfg, "the whole RunConfig; edit a clone's copy to change the re-run")
        if not self.remote:
            # ClearML detects the repo in a background thread from sys.argv[0]; let it finish, then
            # replace what it found with the repository of the reprozoo source that actually runs.
            task._wait_for_repo_detection(timeout=30)
            task.set_script(repository=git.repository, branch=git.branch, commit=git.commit, diff=git.diff,
                            working_dir=WORKING_DIR, entry_point=ENTRY_POINT)
        lock = Path(git.root or ".") / env["lock_file"]  # an absolute $REPROZOO_LOCK stays as it is
        if env["lock_file"] != provenance.NONE and lock.is_file():
            task.set_packages(str(lock))  # an agent without the image installs exactly the lock
        pinned = provenance.pinned_reference(env["image"], env["image_digest"])
        if pinned:
            # A ClearML agent in docker mode re-runs the task in exactly this image, without
            # reinstalling Python packages over the ones the image was built with.
            task.set_base_docker(docker_image=pinned, docker_arguments=agent.docker_arguments())
        task.set_configuration_object(PROVENANCE_OBJECT, config_text=document, config_type="json",
                                      description="read-only: the run as resolved at its start (config, code and diff,"
                                                  " environment, data and model versions), as its provenance.json")
        task_view.set_record_properties(task, task_view.record_properties(task.id, self.provenance, plan.world_size), document)
        task.set_comment(task_view.description(self.provenance, task.id, cfg.data.granularity, cfg.seed))
        task.add_tags(["sst-5", plan.entry.name, cfg.data.granularity])
        warning = task_view.repository_warning(str(self.provenance["code"].get("repository") or ""))
        if warning and not self.remote:
            log.warning(f"warning: {warning}")
        if self.mode == "server":
            self._link_inputs(plan, weights, data["dataset_id"])
        _upload_with_preview(task, "pip-freeze", plan.run_dir / "pip-freeze.txt")
        return self.provenance

    def _link_inputs(self, plan: Any, weights: Any, dataset_id: str | None) -> None:
        """ClearML's own links from the task to what it used: the data version (the task's `datasets`
        runtime property, as Dataset.get sets it) and the base weights (an input model, one per revision)."""
        from clearml import Dataset, InputModel

        if dataset_id and not dataset_id.startswith("offline-"):
            Dataset.get(dataset_id=dataset_id, silence_alias_warnings=True)  # links it to the current task
        revision = str(weights.revision)
        if plan.entry.local_dir:
            url = f"file://{Path(plan.entry.local_dir).resolve()}#{revision}"
        elif revision.startswith("sha256:"):
            url = f"https://huggingface.co/{plan.entry.hub_id}#{revision}"
        else:
            url = f"https://huggingface.co/{plan.entry.hub_id}/tree/{revision}"
        base = InputModel.import_model(
            weights_url=url, name=f"{plan.entry.hub_id} @ {revision[:19]}", project=self.config.tracking.project if self.config else None,
            tags=["base-weights", plan.entry.name], framework="PyTorch", create_as_published=True,
            comment=f"base weights of {plan.entry.name}: {plan.entry.hub_id}, revision {revision} (from {weights.source})")
        connected = {m.name: m.model for m in self.task.data.models.input or []}
        if connected.get("base weights") != base.id:  # a clone or a resumed task holds it already
            self.task.set_input_model(model_id=base.id, name="base weights", update_task_design=False, update_task_labels=False)

    # -- after training ----------------------------------------------------------------------------
    def finish(self, metrics: dict[str, Any], timing: dict[str, Any], run_dir: Path, export_dir: Path,
               class_counts: list[float] | None = None, misclassified: list[dict[str, Any]] | None = None,
               summary: list[str] | None = None) -> None:
        """The run's outputs into the task, then the task closed; `summary` (the run's closing lines) is
        printed before that, so the task's console ends with it."""
        record: dict[str, Any] = {"mode": self.mode, "task_id": self.task_id,
                                  "dataset_id": self.dataset.dataset_id if self.dataset else None}
        uploads = self._end_uploads(completed=True)
        if uploads is not None:
            record["checkpoint_uploads"] = uploads
        write_model_card(export_dir, self.task_id, self.provenance, metrics)
        if self.task is None:
            for line in summary or []:
                print(line, flush=True)
        else:
            reporter = self.task.get_logger()
            step = metrics["train"]["steps"]
            best_step = best_checkpoint_step(metrics.get("best_checkpoint"), step)
            for key in ("accuracy", "macro_f1"):  # the best checkpoint's dev scores: a point on the dev curve
                reporter.report_scalar("dev", f"best_checkpoint_{key}", value=float(metrics["dev"][key]), iteration=best_step)
            reporter.report_single_value("train_seconds", timing["train_seconds"])
            task_view.report_evaluations(reporter, metrics, step)
            if misclassified:
                task_view.report_misclassified(reporter, misclassified, best_step)
            if class_counts is not None:
                reporter.report_histogram("class distribution", f"train ({metrics['train']['granularity']})",
                                          values=[float(c) for c in class_counts], iteration=0, xlabels=list(LABEL_NAMES),
                                          yaxis="examples")
            cfg = self.config
            if cfg is not None:
                self.task.set_comment(task_view.description(self.provenance, self.task_id, cfg.data.granularity, cfg.seed, metrics))
            _upload_with_preview(self.task, "metrics", run_dir / "metrics.json")
            with tempfile.TemporaryDirectory() as tmp:  # the run's own config.yaml may hold a secret
                recorded = Path(tmp) / "config.yaml"
                recorded.write_text(provenance.redact((run_dir / "config.yaml").read_text()))
                _upload_with_preview(self.task, "config", recorded)
            _upload_with_preview(self.task, "provenance", run_dir / "provenance.json")
            # A server run's model package is zipped into `packaging`, removed once close() has
            # waited for its upload (or when anything before that fails).
            with tempfile.TemporaryDirectory(prefix="reprozoo-model-") as packaging:
                if self.mode == "server":
                    from clearml import OutputModel

                    name = str(self.provenance.get("model", {}).get("name") or "model")
                    model_name = f"{name} SST-5 {run_dir.name}"
                    model = OutputModel(task=self.task, name=model_name, framework="PyTorch",
                                        label_enumeration=task_view.LABELS, tags=["sst-5", name],
                                        comment=f"{name} fine-tuned on SST-5 by task {self.task_id}: test accuracy"
                                                f" {metrics['test']['accuracy']:.4f}, macro-F1 {metrics['test']['macro_f1']:.4f}")
                    # Without an output_uri ClearML registers the model as a file:// path to a temporary
                    # zip on this machine; upload it where the artifacts go.
                    destination = self.task.output_uri or self.task.get_logger().get_default_upload_destination()
                    # Zipped here, not by update_weights_package: its export-sized /tmp zip is removed only by
                    # an async upload's callback (else left behind), and its auto_delete_file would delete the export.
                    # The package's name is also the model's entry on the task (ARTIFACTS › OUTPUT MODELS).
                    package = _zip_folder(export_dir, Path(packaging) / f"{model_name.replace('/', '_')}.zip")
                    model.update_weights(weights_filename=str(package), upload_uri=destination, target_filename=package.name,
                                         auto_delete_file=False, is_package=True, update_comment=False)
                else:
                    # ClearML 2.1.12 cannot register an OutputModel offline ('DummyModel' has no 'locked'):
                    # the export travels as an artifact (a zip of the folder) inside the offline session.
                    with _zips_stored():
                        self.task.upload_artifact("model-export", artifact_object=str(export_dir), wait_on_upload=True)
                self.task.flush(wait_for_uploads=True)
                for line in summary or []:
                    print(line, flush=True)
                folder = self.task.get_offline_mode_folder() if self.mode == "offline" else None
                closing = time.monotonic()
                self.closed = True
                with _zips_stored():  # offline, close() zips the session folder, the export in it
                    self.task.close()  # waits for the model upload too
            restore_clearml_env(self.env_before)
            record["close_seconds"] = round(time.monotonic() - closing, 3)
            if folder is not None:
                record["offline_folder"] = str(folder)
                record["offline_zip"] = str(folder) + ".zip" if Path(str(folder) + ".zip").exists() else None
        (run_dir / "task.json").write_text(json.dumps(record, indent=2) + "\n")

    def abort(self, reason: str, run_dir: Path, failed: bool = False) -> None:
        """Training stopped early: close the task so what it holds is kept, marked failed (an error)
        or stopped (preemption, Ctrl-C)."""
        if self.closed:
            return  # finish() had closed it: the failure came after the record was complete
        record: dict[str, Any] = {"mode": self.mode, "task_id": self.task_id, "stopped": reason}
        self.closed = True
        uploads = self._end_uploads(completed=False)  # a preempted run's last checkpoint matters most
        if uploads is not None:
            record["checkpoint_uploads"] = uploads
        if self.task is not None:
            self.task.get_logger().report_text(f"training stopped: {reason}")
            if self.mode == "offline":
                record["offline_folder"] = str(self.task.get_offline_mode_folder())
            if self.mode == "server" and failed:
                self.task.mark_failed(status_reason=reason[:200], status_message=reason[:200], force=True)
            elif self.mode == "server":
                self.task.mark_stopped(force=True, status_message=reason[:200])
            with _zips_stored():
                self.task.close()
            restore_clearml_env(self.env_before)
        with contextlib.suppress(OSError):  # a read-only or missing run directory must not hide the failure
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "task.json").write_text(json.dumps(record, indent=2) + "\n")


ARTIFACT_PREVIEW_CHARS = 4000  # of a text artifact, shown in the UI's artifact page


def _upload_with_preview(task: Any, name: str, path: Path) -> None:
    """A text file as an artifact whose UI preview is its beginning (ClearML's own is the file's name)."""
    text = path.read_text(errors="replace")
    preview = text if len(text) <= ARTIFACT_PREVIEW_CHARS else text[:ARTIFACT_PREVIEW_CHARS] + f"\n… ({len(text):,} characters)"
    task.upload_artifact(name, artifact_object=str(path), preview=preview, wait_on_upload=True)


def best_checkpoint_step(name: str | None, default: int) -> int:
    """The optimiser step in a best checkpoint's name (`best-{epoch}-{step}.ckpt`), else `default`."""
    parts = Path(name or "").stem.split("-")
    return int(parts[-1]) if len(parts) == 3 and parts[-1].isdigit() else default


def write_model_card(export_dir: Path, task_id: str | None, prov: dict[str, Any], metrics: dict[str, Any]) -> None:
    """export/README.md: a shared model points back to the run (and task) that made it."""
    env, code, data, model = (prov.get(k, {}) for k in ("environment", "code", "data", "model"))
    commit = code.get("commit") or "unknown"
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-classification", "tags: [sst-5, sentiment, reprozoo]", "---",
        "", f"# {model.get('name', 'model')} fine-tuned on SST-5 (reprozoo)", "",
        "| | |", "|---|---|",
        f"| ClearML task | `{task_id or 'none (tracking off)'}` |",
        f"| image | `{env.get('image', 'none')}` |",
        f"| image digest | `{env.get('image_digest', 'none')}` |",
        f"| lock | `{env.get('lock_file', 'none')}` sha256 `{env.get('lock_sha256', 'none')}` |",
        f"| commit | `{commit}`{' + uncommitted changes' if code.get('dirty') else ''} ({code.get('repository', '')}) |",
        f"| data version | ClearML dataset `{data.get('dataset_id') or 'none'}` (content sha256 `{data.get('content_hash', '')}`) |",
        f"| base model | `{model.get('hub_id', '')}` revision `{model.get('revision', '')}` |",
        "", "## Metrics (SST-5, 5 classes)", "", "| split | accuracy | macro-F1 |", "|---|---|---|",
        *(f"| {s} | {metrics[s]['accuracy']:.4f} | {metrics[s]['macro_f1']:.4f} |" for s in ("dev", "test")),
        "", "## Re-run", "",
        f"`reprozoo tasks show {task_id} --as-config > replay.yaml && reprozoo train --config replay.yaml`" if task_id
        else "`reprozoo train --config ../config.yaml`",
        "", "Load: `pipeline('text-classification', model=<this folder>, trust_remote_code=True)`.", "",
    ]
    export_dir.mkdir(parents=True, exist_ok=True)
    (export_dir / "README.md").write_text("\n".join(lines))


# --- start ----------------------------------------------------------------------------------------
def continuable(task_id: str | None, mode: str) -> bool:
    """Whether this process can reopen that task: an offline session still on this machine, or a
    server task while the server is the mode. ClearML reopens both with `continue_last_task`."""
    if not task_id or mode == "off":
        return False
    if task_id.startswith("offline-"):
        from clearml.config import get_offline_dir

        return mode == "offline" and (Path(get_offline_dir()) / task_id / "task.json").is_file()
    return mode == "server"


def open_task(cfg: RunConfig, task_name: str, plan: Any, continue_task: str | None = None) -> Tracker:
    """Resolve the mode, register the data version, create (or, on an agent, attach to) the task.

    `continue_task`: a resumed run reports into the task it started (offline: the same session folder),
    from iteration 0 so its steps keep their numbers. When that task cannot be reopened here (a server
    task while the server is down), a new task is tagged `resumes:<id>` and `tasks import` folds it back."""
    mode = resolve_mode(cfg.tracking.mode)
    if mode == "off":
        return Tracker("off", config=cfg)
    configure_clearml()
    from clearml import Task

    _quiet_clearml()
    Task.set_offline(mode == "offline")
    if Task.current_task() is None:
        # No repository detection from sys.argv[0] (.venv/bin, which warns "Can't get url information"):
        # record() sets the task's code from the checkout that runs.
        Task.force_store_standalone_script(True)
    # Before Task.init: an offline Dataset.create is itself a Task.init, which ClearML refuses while
    # another task is the process's main task (UsageError "Current task already created").
    dataset = plan.dataset or versions.register(plan.data_dir, mode, cfg.tracking.project)
    env_before = clearml_env()
    reopen = continuable(continue_task, mode)
    if continue_task and not reopen:
        log.warning(f"task {continue_task} cannot be reopened in {mode} mode here; the resumed run is recorded as a"
                    f" new task tagged resumes:{continue_task}")
    task = Task.init(
        project_name=cfg.tracking.project,
        task_name=provenance.redact(cfg.tracking.task_name or task_name),
        task_type=Task.TaskTypes.training,
        reuse_last_task_id=continue_task if reopen else False,
        # On an agent, ClearML would otherwise report from the task's last iteration + 1 (a re-enqueued
        # task that resumes, or starts over): our scalars are numbered by the optimiser step.
        continue_last_task=0 if reopen or os.environ.get("CLEARML_TASK_ID") else False,
        tags=[f"resumes:{continue_task}"] if continue_task and not reopen else None,
        auto_connect_arg_parser=False,
        auto_connect_frameworks=False,  # we upload the export ourselves, not every checkpoint
        auto_resource_monitoring=False,
    )
    tracker = Tracker(mode, task, cfg) if Task.running_locally() else Tracker(mode, task, remote_config(task, cfg), remote=True)
    tracker.dataset, tracker.env_before = dataset, env_before
    tracker.resumes = continue_task if continue_task and not reopen else None
    return tracker


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def _quiet_clearml() -> None:
    """A task's console holds the run's own lines, not ClearML's chatter about its internals: upload
    progress (tqdm bars, else "Uploading … from /tmp/…" lines), the base weights' model lookup, and
    the standalone-script notice (the task's code is set from the checkout in record())."""
    from clearml.storage import callbacks

    callbacks.tqdm = None
    for name in ("clearml.storage", "clearml.model"):
        logging.getLogger(name).setLevel(logging.WARNING)
    task_log = logging.getLogger("clearml.Task")
    if not any(isinstance(f, _DropMessages) for f in task_log.filters):
        task_log.addFilter(_DropMessages("No repository found, storing script code instead"))


@contextlib.contextmanager
def _zips_stored() -> Any:
    """ClearML's zips (a folder artifact, the offline session) stored, not deflated, meanwhile.
    Weights do not compress: deflating an export twice costs seconds of a short run and saves a few
    percent. ClearML reads ZIP_DEFLATED from its modules when it zips, and unzips either kind."""
    from clearml import task as clearml_task
    from clearml.binding import artifacts as clearml_artifacts

    saved = clearml_artifacts.ZIP_DEFLATED, clearml_task.ZIP_DEFLATED
    clearml_artifacts.ZIP_DEFLATED = clearml_task.ZIP_DEFLATED = zipfile.ZIP_STORED
    try:
        yield
    finally:
        clearml_artifacts.ZIP_DEFLATED, clearml_task.ZIP_DEFLATED = saved


def _zip_folder(folder: Path, archive: Path) -> Path:
    """FOLDER's files as ARCHIVE, stored (weights do not compress) and named relative to FOLDER: the
    layout of ClearML's model packages, which `InputModel.get_local_copy()` unpacks."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, arcname=path.relative_to(folder).as_posix())
    return archive
