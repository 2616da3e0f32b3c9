"""What a user sees of a run's task in the ClearML web UI: properties, description, links, plots.

The record's facts (commit, data version, image digest, lock, weights, precision, how to re-run)
are User Properties: shown on the task, usable as project-table columns, and not hyperparameters,
which an agent would read. The two read-only configuration objects carry their sha256 among them,
so an agent refuses a clone whose read-only record was edited (`check_read_only`).
"""

from __future__ import annotations

import hashlib
import html
from typing import Any

from reprozoo.config import ConfigError
from reprozoo.data.trees import LABEL_NAMES
from reprozoo.session import BASELINE_OBJECT, PROVENANCE_OBJECT

USER_PROPERTIES_SECTION = "properties"  # where ClearML keeps User Properties among the hyperparameters
# Property name → the read-only configuration object whose text it fingerprints.
READ_ONLY_OBJECTS = {"recorded_config_sha256": BASELINE_OBJECT, "provenance_sha256": PROVENANCE_OBJECT}
PROPERTIES_SHA256 = "properties_sha256"  # over the other User Properties: the facts are read-only too
MISCLASSIFIED_SAMPLES = 24  # misclassified dev sentences shown as debug samples
LABELS = {name: index for index, name in enumerate(LABEL_NAMES)}  # the output model's label enumeration


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def reproduce_command(task_id: str | None) -> str:
    return f"reprozoo repro {task_id} --verify" if task_id else "reprozoo repro RUN_DIR --verify"


def record_properties(task_id: str, prov: dict[str, Any], world_size: int) -> dict[str, str]:
    """The facts of a run's record as User Properties (name → value)."""
    env, code, data, model, resolved = (prov.get(k) or {} for k in ("environment", "code", "data", "model", "resolved"))
    return {
        "model": str(model.get("name", "")),
        "weights_revision": str(model.get("revision", "")),
        "commit": str(code.get("commit") or "unknown"),
        "dirty": "yes" if code.get("dirty") else "no",
        "dataset_id": str(data.get("dataset_id") or "none"),
        "data_content_hash": str(data.get("content_hash", "")),
        "image_digest": str(env.get("image_digest", "none")),
        "lock": f"{env.get('lock_file', 'none')} sha256:{env.get('lock_sha256', 'none')}",
        "precision": str(resolved.get("precision", "")),
        "accelerator": str(resolved.get("accelerator", "")),
        "world_size": str(world_size),
        "batch_size": str(resolved.get("batch_size", "")),
        "lr": str(resolved.get("lr", "")),
        "reproduce": reproduce_command(task_id),
    }


def set_properties(task: Any, properties: dict[str, str]) -> None:
    task.set_user_properties(*({"name": name, "value": value} for name, value in properties.items()))


def set_record_properties(task: Any, properties: dict[str, str], provenance_text: str) -> None:
    """The record's facts (record_properties) with their own fingerprint, and that of the Provenance
    object's text as the task holds it, in one request."""
    set_properties(task, {**properties, PROPERTIES_SHA256: facts_sha256(properties),
                          "provenance_sha256": text_sha256(provenance_text)})


def facts_sha256(properties: dict[str, Any]) -> str:
    facts = {k: str(v) for k, v in properties.items() if k not in READ_ONLY_OBJECTS and k != PROPERTIES_SHA256}
    return text_sha256("\n".join(f"{k}={v}" for k, v in sorted(facts.items())))


def replay_tag(task_id: str) -> str:
    """The tag `repro --enqueue` gives its clone: this task replays the record it was cloned from. It
    names the clone's own id: a clone of the clone (a new run, edited in the UI) is no replay."""
    return f"replay:{task_id}"


def accept_changes_tag(task_id: str) -> str:
    """The tag `repro --enqueue` / `train --resume --enqueue` add with --accept-changes: the agent may
    train this task otherwise than its record did (named in the run's record)."""
    return f"accept-changes:{task_id}"


def check_read_only(task: Any) -> None:
    """On an agent, before anything runs: a read-only object edited in the UI (its sha256 no longer the
    recorded one) is refused in one line; an agent would otherwise silently run without the edit."""
    properties = task.get_parameters_as_dict().get(USER_PROPERTIES_SECTION) or {}  # offline too (get_user_properties asks a server)
    if properties.get(PROPERTIES_SHA256) and facts_sha256(properties) != properties[PROPERTIES_SHA256]:
        raise ConfigError(f"task {task.id}: the User Properties were edited; they are the recorded run's facts, which no run"
                          " reads (the run records its own): undo the edit (or clone the original task again) and edit the"
                          " 'RunConfig' object or the data/model/optim/trainer/tracking/run hyperparameters instead")
    for prop, obj in READ_ONLY_OBJECTS.items():
        recorded = properties.get(prop)
        if recorded and text_sha256(task.get_configuration_object(obj) or "") != recorded:
            raise ConfigError(f"task {task.id}: the read-only configuration object {obj!r} was edited, which no run reads;"
                              " undo the edit (or clone the original task again) and edit the 'RunConfig' object or the"
                              " data/model/optim/trainer/tracking/run hyperparameters instead")


def description(prov: dict[str, Any], task_id: str | None, granularity: str, seed: int,
                metrics: dict[str, Any] | None = None) -> str:
    """The task's description: what the run is, how to re-run it, and (once scored) its headline scores."""
    model, data, code = (prov.get(k) or {} for k in ("model", "data", "code"))
    warning = repository_warning(str(code.get("repository") or ""))
    lines = [f"{model.get('name', 'model')} ({model.get('hub_id', '')}) fine-tuned on SST-5 {granularity}, seed {seed}",
             f"re-run: {reproduce_command(task_id)}",
             *([f"warning: {warning}"] if warning else []),
             *([" · ".join(f"{split}: accuracy {metrics[split]['accuracy']:.4f}, macro-F1 {metrics[split]['macro_f1']:.4f}"
                           for split in ("dev", "test"))] if metrics else []),
             f"data: SST-5 version {data.get('dataset_id') or 'none (not versioned)'}, content {str(data.get('content_hash', ''))[:16]}"]
    return "\n".join(lines)  # the box shows four lines before it scrolls: what, how to re-run, why it may not, scores


def repository_warning(repository: str) -> str | None:
    """Why an agent on another machine cannot fetch the task's code, or None."""
    if not repository:
        return "the task records no git repository: an agent can run it only from an image holding its code"
    if repository.startswith("file://") or repository.startswith("/"):
        return (f"the repository is {repository}, on this machine only: an agent on another machine cannot fetch it;"
                " push the checkout to a remote (`git remote add origin URL && git push`) before enqueueing it")
    return None


def report_evaluations(reporter: Any, metrics: dict[str, Any], step: int) -> None:
    """Dev and test confusion matrices and per-class tables. (The headline scores are scalars of their
    own, so project-table columns read "test › accuracy": test as Lightning logs it, dev as the best
    checkpoint's series, tracking.Tracker.finish.)"""
    for split in ("dev", "test"):
        scores = metrics[split]
        names = list(scores["per_class"])
        reporter.report_confusion_matrix(
            f"confusion matrix {split}", split, matrix=scores["confusion_matrix"], iteration=step,
            xaxis="predicted", yaxis="true", xlabels=names, ylabels=names, yaxis_reversed=True,
            # Merged by ClearML into the heatmap trace and its layout: counts in the cells, and axis titles
            # set apart from the tick labels ("very negative" is wider than the default margin).
            extra_layout={"texttemplate": "%{z}", "xaxis": {"automargin": True, "title": {"text": "predicted", "standoff": 12}},
                          "yaxis": {"automargin": True, "title": {"text": "true", "standoff": 12}}})
        rows = [["class", "precision", "recall", "F1", "support"]]
        for name, values in scores["per_class"].items():
            rows.append([name, *(f"{values[k]:.4f}" for k in ("precision", "recall", "f1")), str(values["support"])])
        reporter.report_table(f"per-class scores {split}", split, iteration=step, table_plot=rows)


def report_misclassified(reporter: Any, examples: list[dict[str, Any]], step: int) -> None:
    """Up to MISCLASSIFIED_SAMPLES misclassified dev sentences as debug samples (one HTML page each)."""
    import io

    for number, example in enumerate(examples[:MISCLASSIFIED_SAMPLES]):
        true, predicted = LABEL_NAMES[example["label"]], LABEL_NAMES[example["predicted"]]
        page = (f"<html><body><p><b>true:</b> {html.escape(true)} &nbsp; <b>predicted:</b> {html.escape(predicted)}</p>"
                f"<p>{html.escape(example['text'])}</p></body></html>")
        reporter.report_media("misclassified dev", f"{number:02d} true {true} predicted {predicted}", iteration=step,
                              stream=io.StringIO(page), file_extension=".html")
