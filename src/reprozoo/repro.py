"""Replay a recorded run: the same image (by digest) or code (commit + diff), the same data, the same RunConfig.

    record ──► ReproPlan ──► run in the image  (the record names an image: pull it by digest, mount the data)
                         └─► run from the code  (no image: a git worktree at the commit, the diff applied)
           ──► new metrics.json ──► Verdict (bit-identical | within tolerance | differs)

`--enqueue QUEUE` hands the same replay to a ClearML agent instead: a clone of the task, pinned to
the image digest, with the agent told not to reinstall Python packages over the image.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reprozoo import run_spec, safeyaml
from reprozoo.config import ConfigError, RunConfig
from reprozoo.records import Record
from reprozoo.session import configure_clearml

# Library versions that can change a result; a replay outside the recorded image compares them.
_ENV_KEYS = ("python", "torch", "cuda", "transformers", "lightning")


class ReproError(ConfigError):
    """A replay that cannot run as recorded (image, commit or data missing); the message says what to do."""


# --- verdict --------------------------------------------------------------------------------------
@dataclass
class Verdict:
    status: str  # bit-identical | within tolerance | differs | no metrics
    differences: list[tuple[str, Any, Any]] = field(default_factory=list)  # (field, recorded, replayed)
    max_abs_diff: float = 0.0
    tolerance: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("bit-identical", "within tolerance")

    def lines(self, limit: int = 20) -> list[str]:
        head = {"bit-identical": ("verdict: bit-identical (metrics.json equal, every float to the last bit: scores, confusion counts,"
                                  " every step's train loss, the exported weights' sha256)"),
                "within tolerance": f"verdict: within tolerance (largest difference {self.max_abs_diff:.3g} ≤ {self.tolerance:g})",
                "differs": f"verdict: differs ({len(self.differences)} field(s); tolerance {self.tolerance:g})",
                "no metrics": "verdict: nothing to compare (the record holds no metrics: the run did not finish)"}[self.status]
        rows = [f"  {name}: recorded {a!r}, replayed {b!r}" for name, a, b in self.differences[:limit]]
        more = [f"  … {len(self.differences) - limit} more"] if len(self.differences) > limit else []
        return [head, *rows, *more]


def _leaves(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for key in sorted(data):
            yield from _leaves(data[key], f"{prefix}{key}.")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), data


def compare_metrics(recorded: dict[str, Any] | None, replayed: dict[str, Any], tolerance: float = 1e-6) -> Verdict:
    """Bit-identical when every leaf is equal (floats by value, so 0.1 == 0.1 exactly); within tolerance
    when every numeric leaf is within `tolerance` (absolute) and every other leaf is equal."""
    if recorded is None:
        return Verdict("no metrics", tolerance=tolerance)
    a, b = dict(_leaves(recorded)), dict(_leaves(replayed))
    exact: list[tuple[str, Any, Any]] = []
    worst = 0.0
    beyond = False
    for name in sorted(set(a) | set(b)):
        va, vb = a.get(name, "—"), b.get(name, "—")
        if va == vb and type(va) is type(vb):
            continue
        exact.append((name, va, vb))
        if name == "weights_sha256":
            continue  # other weights within the tolerance's reach (a GPU replay) are listed, not beyond it
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (va, vb))
        gap = abs(float(va) - float(vb)) if numbers else math.inf
        worst = max(worst, gap)
        beyond = beyond or not gap <= tolerance
    if not exact:
        return Verdict("bit-identical", tolerance=tolerance)
    return Verdict("differs" if beyond else "within tolerance", exact, worst, tolerance)


# --- plan -----------------------------------------------------------------------------------------
@dataclass
class ReproPlan:
    record: Record
    config: RunConfig  # what the replay trains (its out_dir as seen by the process that trains)
    executor: str  # image | checkout
    image: str | None  # repo@sha256:… (or a local tag when the record was never pushed)
    run_dir: Path  # on this machine
    data_dir: Path  # on this machine, sha256-verified against the record
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        r = self.record
        where = f"image {self.image}" if self.executor == "image" else \
            f"code at {r.commit[:12] or '?'}{' + recorded diff' if r.dirty else ''} (git worktree)"
        return [f"replaying {r.task_id or r.source} ({r.config.model.name}, seed {r.config.seed})",
                f"  in      {where}",
                f"  data    {self.data_dir} (sha256 matches the record)",
                f"  run dir {self.run_dir}", *[f"  note    {n}" for n in self.notes]]


# --- the recorded spec against here ----------------------------------------------------------------
# What can change a replay's numbers besides code, data, weights and config, in the order a
# `differs` verdict names them: the hardware and the numerics libraries.
NUMERICS = ("gpu_model", "gpu_count", "gpu_driver", "cuda", "cudnn", "torch", "cpu_model", "torch_threads", "determinism",
            "python", "transformers", "lightning")
SOFTWARE = ("python", "torch", "transformers", "lightning", "cuda", "cudnn")  # fixed by the image's digest


def _shown(value: Any) -> str:
    if isinstance(value, dict):  # the determinism flags
        torch = ("warn-only" if value.get("torch_deterministic_warn_only") else "strict"
                 if value.get("torch_deterministic_algorithms") else "off")
        return (f"torch {torch}, cudnn deterministic {value.get('cudnn_deterministic')} benchmark"
                f" {value.get('cudnn_benchmark')}, CUBLAS_WORKSPACE_CONFIG {value.get('CUBLAS_WORKSPACE_CONFIG')}")
    return "not recorded" if value is None else str(value)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def spec_lines(plan: ReproPlan, here: dict[str, Any]) -> list[str]:
    """Before a replay runs: each field of the run's recorded identity, beside what this replay will
    have (`here`: provenance.environment() of this machine). A `≠` marks a field that differs."""
    r, recorded = plan.record, plan.record.environment
    in_image = plan.executor == "image"
    pinned = in_image and "@sha256:" in (plan.image or "")
    content = ", ".join(f"{k} {v[:12]}" for k, v in sorted(r.data_sha256.items()))
    rows: list[tuple[str, str, str, bool]] = [
        ("code", f"{r.commit[:12] or '?'}{' + diff' if r.dirty else ''}",
         "the image's" if in_image else "the recorded commit + diff (a git worktree)", False),
        ("weights", r.model_revision, "that revision (checked before training)", False),
        ("data", f"{r.dataset_id or 'none'} ({content})", f"{plan.data_dir} (sha256 matches)", False),
        ("image", r.image_digest, plan.image or "none", False),
    ]
    lock_here = "the image's" if pinned else f"{here.get('lock_file', 'none')} {str(here.get('lock_sha256', 'none'))[:12]}"
    lock_rec = f"{r.lock_file} {r.lock_sha256[:12]}"
    rows.append(("lock", lock_rec, lock_here, not pinned and lock_here != lock_rec))
    for key in (*SOFTWARE, "gpu_model", "gpu_count", "gpu_driver", "cpu_model", "cpu_count", "torch_threads"):
        was = _shown(recorded.get(key))
        now = "the image's" if pinned and key in SOFTWARE else _shown(here.get(key))
        rows.append((key, was, now, now != "the image's" and was != "not recorded" and was != now))
    # The training code sets torch's flags at its start (devices.deterministic_mode), on the device it gets.
    rows.append(("determinism", _shown(recorded.get("determinism")), "what the replay's code sets on its device", False))
    width = 40
    return ["the run's spec, recorded against this replay (≠: differs):",
            f"    {'field':<14} {'recorded':<{width}} here",
            *[f"  {'≠' if differs else ' '} {name:<14} {_cut(was, width):<{width}} {now}" for name, was, now, differs in rows]]


def explain_difference(recorded: dict[str, Any], replayed: dict[str, Any]) -> list[str]:
    """For a `differs` verdict: the hardware and numerics fields in which the replay's environment
    differs from the record's, which can explain other numbers from the same code, data and weights."""
    changed = [f"  {key}: recorded {_shown(recorded.get(key))}, replayed {_shown(replayed.get(key))}"
               for key in NUMERICS if key in recorded and key in replayed and recorded[key] != replayed[key]]
    if not changed:
        return ["  no hardware or numerics difference between the two environments explains it: the same code, data,"
                " weights and environment gave other numbers"]
    return ["  environment differences that can explain it:", *changed]


def resumed_segments(record: Record) -> list[str]:
    """For a run resumed with accepted changes (`train --resume --accept-changes`): which of its segments
    a replay runs. The record is the last segment's state; the replay runs that state from the start."""
    history = record.provenance.get("resume_history") or []
    if not isinstance(history, list) or not all(isinstance(h, dict) and isinstance(h.get("changes"), list) for h in history):
        raise ReproError(f"{record.task_id or record.source}: provenance.resume_history is not a list of resumes; the record is damaged")
    if not history:
        return []
    resumes = "; ".join(f"resume {h.get('resume', n)}: " + ", ".join(str(c.get("field") if isinstance(c, dict) else c)[:60]
                                                                    for c in h["changes"][:8])
                        for n, h in enumerate(history[:20], 1))
    segments = len(history) + 1
    return [f"this run was resumed with accepted changes ({resumes}): its {segments} segments trained on {segments} states;"
            f" the replay runs the recorded one, segment {segments} of {segments}, from the start, so its metrics can differ"
            " from the recorded ones (`reprozoo tasks show` lists the states)"]


def replayed_environment(plan: ReproPlan) -> dict[str, Any]:
    """The environment the replay recorded in its run directory's provenance.json ({} if none)."""
    from reprozoo.records import record_mapping, run_dir_json

    recorded = run_dir_json(plan.run_dir, "provenance.json") or {}
    return record_mapping(recorded.get("environment"), f"{plan.run_dir / 'provenance.json'}: environment")


def pinned_image(record: Record) -> str | None:
    """The image a replay pulls: repo@sha256:… when the run's image was pushed, else its local tag."""
    from reprozoo.provenance import pinned_reference

    return pinned_reference(record.image, record.image_digest) or (record.image if record.image != "none" else None)


def _replay_data(record: Record, data_dir: str | Path | None) -> Path:
    """A folder on this machine holding exactly the recorded files (by sha256)."""
    from reprozoo.data.sst5 import DataSourceError, data_fingerprint, resolve_data_dir

    candidates: list[Path] = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    if record.dataset_id and data_dir is None:
        from reprozoo.data import versions

        # Not on this machine: the trees in $REPROZOO_DATA_DIR may still be the very same files.
        with suppress(DataSourceError):
            candidates.append(Path(versions.resolve(record.dataset_id).path))
    if data_dir is None:
        with suppress(DataSourceError):
            candidates.append(resolve_data_dir(None))
    if not record.data_sha256:
        raise ReproError(f"{record.task_id}: the record holds no data sha256; it cannot be replayed on verified data")
    for path in candidates:
        try:
            actual = data_fingerprint(path)
        except (OSError, DataSourceError):
            continue
        if actual == record.data_sha256:
            return path
    tried = ", ".join(str(p) for p in candidates) or "nothing (no --data-dir, no $REPROZOO_DATA_DIR)"
    raise ReproError(f"no SST-5 trees here match the record's sha256 (tried {tried}); pass --data-dir with the"
                     f" original trees{' or restore dataset ' + record.dataset_id if record.dataset_id else ''}")


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)


def source_checkout() -> Path | None:
    """The git checkout holding the reprozoo that runs (where a recorded commit is looked up)."""
    here = Path(__file__).resolve().parent
    top = _git(here, "rev-parse", "--show-toplevel")
    return Path(top.stdout.strip()) if top.returncode == 0 else None


def plan_repro(record: Record, *, data_dir: str | Path | None = None, runs_dir: Path = Path("runs"),
               out: str | None = None, use_image: bool | None = None, accept_changes: bool = False) -> ReproPlan:
    """Decide everything cheap: executor, image, data, run directory. Fails before anything runs,
    also where this machine would train the run otherwise (`_other_settings`) unless `accept_changes`."""
    if record.config is None:
        raise ReproError(f"{record.task_id}: no RunConfig in the record")
    image = pinned_image(record)
    if use_image is True and image is None:
        raise ReproError(f"{record.task_id} ran without an image (lock {record.lock_file}); it replays from the code at"
                         f" commit {record.commit[:12]}: drop --image")
    executor = "image" if image and use_image is not False else "checkout"
    notes = []
    if executor == "image" and "@sha256:" not in image:
        notes.append(f"the run's image {image} was never pushed, so it is not pinned by digest: the local tag is used")
    if executor == "checkout":
        notes.extend(_checkout_checks(record, image))
    notes.extend(resumed_segments(record))
    path = _replay_data(record, data_dir)
    name = out or f"repro-{(record.task_id or 'run').removeprefix('offline-')[:12]}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    run_dir = Path(name) if out and Path(out).is_absolute() else runs_dir / Path(name).name
    if (run_dir / "metrics.json").exists():
        raise ReproError(f"{run_dir} already holds a finished run; choose another --out")
    # The data is pinned by sha256 above; the replay re-registers the same content (same version offline).
    if executor == "image":
        from reprozoo.containers.run import CONTAINER_WORK

        # The data is mounted at the image's data path ($REPROZOO_DATA_DIR inside).
        where = run_spec.Where(out_dir=f"{CONTAINER_WORK}/runs/{run_dir.name}", data_dir=None, dataset_id=None)
    else:
        where = run_spec.Where(out_dir=str(run_dir.resolve()), data_dir=str(path.resolve()), dataset_id=None)
    config = run_spec.executable(record.config, record.model_revision, where)
    notes.extend(_other_settings(record, config, accept_changes))
    return ReproPlan(record, config, executor, image if executor == "image" else None, run_dir, path, notes)


def _other_settings(record: Record, config: RunConfig, accept: bool) -> list[str]:
    """How the run trained (run_spec.settings) against how this machine would train `config`
    (train.plan_run's choices: accelerator, precision, world size; on the CPU its model and thread
    count): refused unless `accept` (then a note)."""
    from reprozoo import devices, zoo
    from reprozoo.errors import UserError

    accelerator = devices.choose_accelerator(config)
    here = {"accelerator": accelerator, "world_size": devices.device_count(config.trainer.devices, accelerator)}
    with suppress(UserError):  # a model this machine cannot name fails later, with its own line
        here["precision"] = devices.choose_precision(config, zoo.get(config.model.name), accelerator)
    differ = run_spec.other_settings(run_spec.recorded_settings(record), run_spec.settings(here, devices.cpu_here()))
    if not differ:
        return []
    shown = "; ".join(differ)
    if not accept:
        raise ReproError(f"{record.task_id or record.source}: this machine would train it otherwise than the run did ({shown});"
                         " replay it where those match, or pass --accept-changes to replay anyway (a verdict then names them)")
    return [f"other settings than the run's, accepted (--accept-changes): {shown}"]


def _checkout_checks(record: Record, image: str | None) -> list[str]:
    notes = []
    if image:
        notes.append(f"--no-image: the run's image {image} is not used; the code runs in this environment")
    root = source_checkout()
    if root is None:
        raise ReproError(f"{record.task_id} ran without an image and this reprozoo is not a git checkout; clone"
                         f" {record.repository or 'the repository'} and run `reprozoo repro` from there")
    if not record.commit:
        raise ReproError(f"{record.task_id}: the record names no commit; it cannot be replayed from code")
    if _git(root, "cat-file", "-e", f"{record.commit}^{{commit}}").returncode != 0:
        raise ReproError(f"commit {record.commit[:12]} of {record.task_id} is not in {root}; `git fetch"
                         f" {record.repository or 'origin'}` (or the branch {record.branch or 'it was on'}) and retry")
    import reprozoo.provenance as provenance

    env_here = provenance.environment(record.config.seed, str(root))  # what a record here would say
    for key in _ENV_KEYS:
        recorded, here = record.environment.get(key), env_here.get(key)
        if recorded and here and recorded != here:
            notes.append(f"{key} differs: recorded {recorded}, here {here} (the metrics may differ)")
    lock_name, lock_sha = env_here["lock_file"], env_here["lock_sha256"]
    if record.lock_sha256 not in ("none", lock_sha) and lock_name == record.lock_file:
        notes.append(f"{lock_name} here differs from the recorded lock (sha256 {record.lock_sha256[:12]})")
    return notes




# --- execute --------------------------------------------------------------------------------------
@contextmanager
def code_at(record: Record) -> Iterator[Path]:
    """A temporary git worktree at the recorded commit with the recorded diff applied."""
    root = source_checkout()
    assert root is not None  # plan_repro checked
    folder = Path(tempfile.mkdtemp(prefix="reprozoo-repro-"))
    tree = folder / "src-tree"
    added = _git(root, "worktree", "add", "--detach", "--force", str(tree), record.commit)
    if added.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise ReproError(f"git worktree add {record.commit[:12]} failed: {added.stderr.strip()[:200]}")
    try:
        if record.diff.strip():
            patch = folder / "recorded.diff"
            patch.write_text(record.diff if record.diff.endswith("\n") else record.diff + "\n")
            applied = _git(tree, "apply", "--whitespace=nowarn", str(patch))
            if applied.returncode != 0:
                raise ReproError(f"the recorded diff does not apply to {record.commit[:12]}: {applied.stderr.strip()[:200]}"
                                 " (was it redacted? see `reprozoo tasks show --json`)")
        yield tree
    finally:
        _git(root, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(folder, ignore_errors=True)


def run_from_code(plan: ReproPlan, out: Callable[[str], None] | None = None) -> int:
    """`python -m reprozoo train --config …` with the recorded code first on the import path."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    config_file = plan.run_dir.parent / f"{plan.run_dir.name}.config.yaml"
    plan.config.save(config_file)
    with code_at(plan.record) as tree:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        process = subprocess.Popen([sys.executable, "-m", "reprozoo", "train", "--config", str(config_file)],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            (out or sys.stdout.write)(line)
        return process.wait()


REVISION_LABEL = "org.opencontainers.image.revision"  # the commit an image was built from, `-dirty` when the tree was


def image_code_difference(record: Record, image: str, revision: str) -> tuple[str, str] | None:
    """(how the image's code differs from the run's, the fix) when its revision label is not the recorded
    commit, or when the record holds a diff, which no image can (one is built from a commit); else None.
    A run in an image records the image's revision as its commit (`-dirty` included), so that replay matches."""
    if record.dirty:
        return (f"the run had uncommitted changes (the record's diff) that image {image} (revision {revision or 'unlabelled'})"
                " cannot hold", "replay from the code with --no-image (the recorded commit + diff)")
    if not record.commit or not revision or revision == record.commit:
        return None
    fix = ("the run's code was uncommitted changes built into the image it ran in, which only that image holds: replay in it"
           " by its recorded digest" if record.commit.endswith("-dirty") else
           f"replay from the code with --no-image, or in an image built from commit {record.commit[:12]}")
    return f"image {image} holds other code than the run: its revision {revision} is not the recorded commit {record.commit}", fix


def run_in_image(plan: ReproPlan, *, gpus: str = "auto", network: str = "bridge", log: Callable[[str], None] = print,
                 out: Callable[[str], None] | None = None, accept_changes: bool = False) -> int:
    """The replay inside the recorded image: pulled by digest when not on this engine. An image whose code
    is not the recorded code is refused before anything runs; `accept_changes` replays in it, saying so."""
    from reprozoo.containers.engine import client
    from reprozoo.containers.identity import ContainerError
    from reprozoo.containers.registry import ensure_image
    from reprozoo.containers.run import run_config_in_image

    assert plan.image is not None
    engine = client()
    try:
        found = ensure_image(engine, plan.image, log)
    except ContainerError as err:
        if "@sha256:" not in plan.image:
            raise ReproError(f"image {plan.image} is not on this engine and was never pushed (no digest); rebuild it from"
                             f" commit {plan.record.commit[:12]} with `reprozoo image build` or replay with --no-image") from None
        raise ReproError(f"the recorded image cannot be pulled ({err}); log in to its registry (`docker login"
                         f" {plan.image.split('/')[0]}`) or push it again, or replay with --no-image") from None
    revision = (found.attrs.get("Config", {}).get("Labels") or {}).get(REVISION_LABEL, "")
    difference = image_code_difference(plan.record, plan.image, revision)
    if difference and not accept_changes:
        raise ReproError(f"{difference[0]}; {difference[1]}, or pass --accept-changes to replay in this image anyway")
    if difference:
        log(f"warning: {difference[0]}; replaying in it anyway (--accept-changes)")
    code, _ = run_config_in_image(plan.config, plan.image, runs_dir=plan.run_dir.parent, data_dir=plan.data_dir,
                                  gpus=gpus, network=network, log=log, out=out, engine=engine)
    return code


def replay(plan: ReproPlan, *, gpus: str = "auto", network: str = "bridge", log: Callable[[str], None] = print,
           accept_changes: bool = False) -> tuple[dict[str, Any], str | None]:
    """Run the plan (in its image, or from the recorded code here): the replay's metrics and task id."""
    code = run_in_image(plan, gpus=gpus, network=network, log=log, accept_changes=accept_changes) \
        if plan.executor == "image" else run_from_code(plan)
    if code != 0:
        raise ReproError(f"the replay exited with code {code}; its run directory is {plan.run_dir}")
    return replayed_metrics(plan), replayed_task(plan)


def replayed_metrics(plan: ReproPlan) -> dict[str, Any]:
    path = plan.run_dir / "metrics.json"
    if not path.is_file():
        raise ReproError(f"the replay finished without {path}; see its output above")
    return safeyaml.load_json_object(safeyaml.read_bytes(path, 1 << 24, path.name), str(path))


def replayed_task(plan: ReproPlan) -> str | None:
    from reprozoo.run_claims import recorded_task_id

    return recorded_task_id(plan.run_dir)


# --- enqueue (a ClearML agent replays it) -----------------------------------------------------------
def enqueue_spec(record: Record, queue: str, accept_changes: bool = False) -> dict[str, Any]:
    """What the clone for an agent looks like, as data: checked in tests, fed to ClearML by `enqueue`.
    The agent runs it as a replay (agent_task.read_task): the record's RunConfig, and its settings compared
    with the agent machine's, other ones accepted only with `accept_changes`."""
    from reprozoo.agent import docker_arguments

    if not record.task_id or record.task_id.startswith("offline-"):
        raise ReproError(f"{record.task_id or record.source} is an offline record; upload it first with `reprozoo tasks import"
                         f" {record.offline_zip or 'ZIP'}`, then enqueue the server's task id")
    image = pinned_image(record)
    if image and "@sha256:" not in image:
        raise ReproError(f"{record.task_id}'s image {image} was never pushed; an agent can only pull an image by digest:"
                         " push it (`reprozoo image push`) and re-run the task in it")
    return {"source_task": record.task_id, "name": f"repro of {record.name or record.task_id}", "queue": queue,
            "docker_image": image, "docker_arguments": docker_arguments() if image else None,
            "tags": ["repro", f"repro-of:{record.task_id}"], "accept_changes": accept_changes,
            # A fresh run directory (the recorded one holds the finished run) and the recorded data version;
            # an agent's run records to the server (a record imported from an offline run says offline).
            "config": enqueued_config(record, record.dataset_id)}


def enqueued_config(record: Record, dataset_id: str | None) -> RunConfig:
    """What an agent's clone trains: the record, in a fresh run directory, on data version `dataset_id`."""
    return run_spec.executable(record.config, record.model_revision,
                               run_spec.Where(out_dir=None, dataset_id=dataset_id, tracking="server"))


def with_server_data(spec: dict[str, Any], record: Record) -> dict[str, Any]:
    """The clone names a data version an agent can fetch: an offline one (a record imported with
    `tasks import`) becomes the server's version of the same content, uploaded from here if need be."""
    dataset_id = spec["config"].data.dataset_id
    if not dataset_id or not dataset_id.startswith("offline-"):
        return spec
    from reprozoo.data.versions import server_version

    return {**spec, "config": enqueued_config(record, server_version(dataset_id, record.data_sha256, spec["config"].tracking.project))}


def enqueue(spec: dict[str, Any], task_api: Any = None) -> str:
    """Clone the task, give it the replay's RunConfig, pin its image, enqueue it (run by real agents in
    tests/server/test_agents.py). The caller checks the server (session.require_server) and the queue."""
    if task_api is None:
        from clearml import Task as task_api

        configure_clearml()
    from reprozoo.tracking import write_config

    clone = task_api.clone(source_task=spec["source_task"], name=spec["name"])
    write_config(clone, spec["config"], "the replay's RunConfig: the recorded one, a fresh run directory, the data version")
    if spec["docker_image"]:
        clone.set_base_docker(docker_image=spec["docker_image"], docker_arguments=spec["docker_arguments"])
    from reprozoo.task_view import accept_changes_tag, replay_tag

    marks = [replay_tag(str(clone.id))] + ([accept_changes_tag(str(clone.id))] if spec["accept_changes"] else [])
    clone.add_tags(spec["tags"] + marks)
    task_api.enqueue(clone, queue_name=spec["queue"])
    return str(clone.id)


def requeue(task_id: str, queue: str, force: bool = False, accept_changes: bool = False) -> dict[str, Any]:
    """`train --resume TASK_ID --enqueue Q`: the same task back on a queue; the agent that takes it
    resumes from the last checkpoint in the task's storage (agent_task.read_task), or starts over when
    none was uploaded. A task still `in_progress` whose agent died with its machine (kill -9, a lost
    spot instance) is marked stopped first, with `force`; the server's own non-responsive-task
    watchdog does that after 2 h without an update (services.tasks.non_responsive_tasks_watchdog)."""
    from clearml import Task

    from reprozoo.checkpoint_store import latest_stored

    configure_clearml()
    task = Task.get_task(task_id=task_id)
    status = str(task.get_status())
    if status in ("completed", "published", "publishing", "closed"):
        raise ReproError(f"task {task_id} is {status}: there is nothing to resume; `reprozoo repro {task_id} --enqueue"
                         f" {queue}` re-runs it as a new task")
    if status == "queued":
        raise ReproError(f"task {task_id} is already queued; an agent on its queue will take it (or dequeue it in the UI first)")
    if status == "in_progress":
        updated = task.data.last_update
        if updated is not None and updated.tzinfo is None:
            updated = updated.replace(tzinfo=timezone.utc)
        age = f"{(datetime.now(timezone.utc) - updated).total_seconds():.0f} s ago" if updated else "at an unknown time"
        if not force:
            raise ReproError(f"task {task_id} is in progress on {task.data.last_worker or 'an unknown worker'} (last update"
                             f" {age}); if that machine is gone, add --force to mark it stopped and re-enqueue it")
        task.mark_stopped(force=True, status_message="marked stopped by `reprozoo train --resume --enqueue --force`:"
                                                     " its agent is gone")
    stored = latest_stored(task)
    if accept_changes:  # the agent resumes although it would train otherwise (agent_task.read_task)
        from reprozoo.task_view import accept_changes_tag

        task.add_tags([accept_changes_tag(task_id)])
    Task.enqueue(task, queue_name=queue)
    return {"status": status, "step": stored.step if stored else None}
