"""`reprozoo repro`: verdicts, plans and their errors, the clone for an agent, and a real replay of a
tracked MiniLM run from its recorded commit + diff (the replay in the image is in test_docker.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from reprozoo import repro
from reprozoo.config import RunConfig
from reprozoo.provenance import pinned_reference
from reprozoo.records import Record

REPO = Path(__file__).resolve().parents[1]
HEAD = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
DIGEST = "sha256:" + "ab" * 32


def record(data_dir: Path, **changes: Any) -> Record:
    from reprozoo.data.sst5 import data_fingerprint

    base = Record(task_id="0123456789abcdef0123456789abcdef", config=RunConfig(), metrics={"test": {"accuracy": 0.5}},
                  image="none", image_digest="none", lock_sha256="none", commit=HEAD, diff="", dirty=False,
                  dataset_id=None, data_sha256=data_fingerprint(data_dir), model_revision="", status="completed",
                  offline_zip=None, name="minilm", repository="https://example.org/reprozoo.git")
    return replace(base, **changes)


# --- verdicts -------------------------------------------------------------------------------------
def test_verdicts() -> None:
    recorded = {"dev": {"accuracy": 0.5, "confusion_matrix": [[1, 2], [3, 4]]}, "best_checkpoint": "best.ckpt"}
    assert repro.compare_metrics(recorded, json.loads(json.dumps(recorded))).status == "bit-identical"
    close = {"dev": {"accuracy": 0.5 + 1e-9, "confusion_matrix": [[1, 2], [3, 4]]}, "best_checkpoint": "best.ckpt"}
    verdict = repro.compare_metrics(recorded, close, tolerance=1e-6)
    assert verdict.status == "within tolerance" and verdict.ok and verdict.differences == [("dev.accuracy", 0.5, 0.5 + 1e-9)]
    far = {"dev": {"accuracy": 0.5, "confusion_matrix": [[1, 2], [4, 3]]}, "best_checkpoint": "other.ckpt"}
    verdict = repro.compare_metrics(recorded, far, tolerance=1e-6)
    assert verdict.status == "differs" and not verdict.ok
    assert [d[0] for d in verdict.differences] == ["best_checkpoint", "dev.confusion_matrix.1.0", "dev.confusion_matrix.1.1"]
    assert "recorded 3, replayed 4" in "\n".join(verdict.lines())
    assert repro.compare_metrics(None, recorded).status == "no metrics"


def test_the_spec_against_here_and_what_explains_a_difference(data_dir: Path, tmp_path: Path) -> None:
    environment = {"torch": "2.13.0", "python": "3.11.2", "transformers": "5.0", "lightning": "2.6.6", "cuda": "13.0",
                   "cudnn": "91000", "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_count": 1, "gpu_driver": "580.65.06",
                   "cpu_model": "AMD EPYC", "cpu_count": 16, "torch_threads": 8, "lock_file": "envs/cuda.lock",
                   "determinism": {"torch_deterministic_algorithms": True}}
    recorded = record(data_dir, environment=environment, lock_file="envs/cuda.lock", lock_sha256="ab" * 32)
    plan = repro.ReproPlan(recorded, RunConfig(), "checkout", None, tmp_path / "again", data_dir)
    here = {**environment, "gpu_model": "Tesla T4", "cudnn": "90100", "torch_threads": 4, "lock_sha256": "ab" * 32}
    lines = repro.spec_lines(plan, here)
    marked = [line.split()[1] for line in lines if line.startswith("  ≠ ")]
    assert marked == ["cudnn", "gpu_model", "torch_threads"], lines
    assert any("weights" in line and "that revision" in line for line in lines)
    # In an image pinned by digest the software is the image's: only the hardware can differ.
    in_image = replace(plan, executor="image", image="reg/reprozoo@sha256:" + "c" * 64)
    marked = [line.split()[1] for line in repro.spec_lines(in_image, {**here, "torch": "2.12.0"}) if line.startswith("  ≠ ")]
    assert marked == ["gpu_model", "torch_threads"]
    explained = repro.explain_difference(environment, here)
    assert explained[0] == "  environment differences that can explain it:"
    assert explained[1:] == ["  gpu_model: recorded NVIDIA A100-SXM4-80GB, replayed Tesla T4", "  cudnn: recorded 91000, replayed 90100",
                             "  torch_threads: recorded 8, replayed 4"]
    assert "no hardware or numerics difference" in repro.explain_difference(environment, dict(environment))[0]


def test_pinned_references() -> None:
    assert pinned_reference("reprozoo:cpu-0123", "127.0.0.1:5000/reprozoo@" + DIGEST) == "127.0.0.1:5000/reprozoo@" + DIGEST
    assert pinned_reference("ghcr.io/o/reprozoo:cuda-0123", DIGEST) == "ghcr.io/o/reprozoo:cuda-0123@" + DIGEST
    assert pinned_reference("none", "none") is None and pinned_reference("reprozoo:cpu-0123", "none") is None


# --- plans and their errors -----------------------------------------------------------------------
def test_plan_for_a_record_with_an_image(data_dir: Path, tmp_path: Path) -> None:
    pinned = "127.0.0.1:5000/reprozoo@" + DIGEST
    rec = record(data_dir, image="reprozoo:cpu-0123", image_digest=pinned, dataset_id="offline-gone")
    plan = repro.plan_repro(rec, data_dir=data_dir, runs_dir=tmp_path / "runs", out="again")
    assert plan.executor == "image" and plan.image == pinned and plan.run_dir == tmp_path / "runs" / "again"
    # Inside the image: data mounted at $REPROZOO_DATA_DIR, the run under the mounted runs/.
    assert plan.config.data.data_dir is None and plan.config.out_dir == "/work/runs/again"
    assert plan.config.data.dataset_id is None and plan.config.model == rec.config.model
    # --no-image: the recorded commit here, saying the image is not used.
    plan = repro.plan_repro(rec, data_dir=data_dir, runs_dir=tmp_path / "runs", out="again", use_image=False)
    assert plan.executor == "checkout" and plan.config.data.data_dir == str(data_dir.resolve())
    assert any("is not used" in note for note in plan.notes)


def test_a_replay_this_machine_would_train_otherwise_is_refused_unless_accepted(data_dir: Path, tmp_path: Path) -> None:
    """Issue 31: what the run resolved at its start (a bf16 run on 2 GPUs; on the CPU its model and thread
    count) against what this machine would resolve: any difference is refused in one line naming each
    field and the flag, and replays with a note when accepted. Fields a record lacks are not compared."""
    import torch

    from reprozoo.provenance import cpu_model

    threads = torch.get_num_threads()
    same = {"resolved": {"accelerator": "cpu", "precision": "32-true", "world_size": 1}}
    here = {"cpu_model": cpu_model(), "torch_threads": threads}
    plan = repro.plan_repro(record(data_dir, provenance=same, environment=here), data_dir=data_dir, runs_dir=tmp_path)
    assert not any("accepted" in note for note in plan.notes)
    gpu = record(data_dir, provenance={"resolved": {"accelerator": "gpu", "precision": "bf16-mixed", "world_size": 2}})
    with pytest.raises(repro.ReproError) as refused:
        repro.plan_repro(gpu, data_dir=data_dir, runs_dir=tmp_path)
    message = str(refused.value)
    assert "\n" not in message and "--accept-changes" in message
    assert "resolved.accelerator gpu → cpu; resolved.precision bf16-mixed → 32-true; resolved.world_size 2 → 1" in message, message
    other_cpu = record(data_dir, provenance=same, environment={"cpu_model": "Another CPU", "torch_threads": threads + 1})
    with pytest.raises(repro.ReproError, match=rf"environment.cpu_model Another CPU → .*; environment.torch_threads {threads + 1} → {threads}\)"):
        repro.plan_repro(other_cpu, data_dir=data_dir, runs_dir=tmp_path)
    plan = repro.plan_repro(gpu, data_dir=data_dir, runs_dir=tmp_path, accept_changes=True)
    assert [n for n in plan.notes if n.startswith("other settings than the run's, accepted")]
    assert repro.plan_repro(record(data_dir), data_dir=data_dir, runs_dir=tmp_path).notes == []  # an older record: nothing to compare


def test_plan_errors_name_the_fix(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(repro.ReproError, match=r"commit deadbeefdead of .* is not in .*; `git fetch https://example.org/reprozoo.git`"):
        repro.plan_repro(record(data_dir, commit="deadbeef" * 5), data_dir=data_dir, runs_dir=tmp_path)
    with pytest.raises(repro.ReproError, match="ran without an image .*drop --image"):
        repro.plan_repro(record(data_dir), data_dir=data_dir, runs_dir=tmp_path, use_image=True)
    changed = tmp_path / "trees"
    shutil.copytree(data_dir, changed)
    with (changed / "dev.txt").open("a") as f:
        f.write("(2 (2 x))\n")
    with pytest.raises(repro.ReproError, match=r"no SST-5 trees here match the record's sha256 \(tried .*trees\); pass --data-dir"):
        repro.plan_repro(record(data_dir), data_dir=changed, runs_dir=tmp_path)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "metrics.json").write_text("{}")
    with pytest.raises(repro.ReproError, match="already holds a finished run"):
        repro.plan_repro(record(data_dir), data_dir=data_dir, runs_dir=tmp_path, out="done")


def test_an_image_that_cannot_be_pulled_says_so(data_dir: Path, tmp_path: Path) -> None:
    from reprozoo.containers.engine import client
    from reprozoo.containers.identity import ContainerError

    try:
        client()
    except ContainerError as err:
        pytest.skip(f"needs a Docker engine: {err}")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    rec = record(data_dir, image="reprozoo:cpu-0123", image_digest=f"127.0.0.1:{port}/reprozoo@{DIGEST}")
    plan = repro.plan_repro(rec, data_dir=data_dir, runs_dir=tmp_path)
    with pytest.raises(repro.ReproError, match=r"the recorded image cannot be pulled .*docker login 127\.0\.0\.1"):
        repro.run_in_image(plan, log=lambda line: None)


def test_code_at_applies_the_recorded_diff(data_dir: Path) -> None:
    diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD", "--", "README.md"], capture_output=True, text=True).stdout
    if not diff:  # a clean checkout: record a change of our own
        readme = (REPO / "README.md").read_text().splitlines(keepends=True)
        diff = "--- a/README.md\n+++ b/README.md\n@@ -1,2 +1,3 @@\n " + readme[0] + "+a recorded change\n " + readme[1]
    def changed_lines(patch: str) -> list[str]:
        return [line for line in patch.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]

    with repro.code_at(record(data_dir, diff=diff, dirty=True)) as tree:
        assert subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() == HEAD
        applied = subprocess.run(["git", "-C", str(tree), "diff", "HEAD", "--", "README.md"], capture_output=True, text=True).stdout
        assert changed_lines(applied) == changed_lines(diff) != []
    assert not tree.exists()
    with pytest.raises(repro.ReproError, match="the recorded diff does not apply"), \
            repro.code_at(record(data_dir, diff="--- a/nope.txt\n+++ b/nope.txt\n@@ -1 +1 @@\n-x\n+y\n", dirty=True)):
        pass


# --- the clone for an agent -----------------------------------------------------------------------
class RecordingTask:
    """Stands in for clearml.Task on a server (none can run here): records the calls `enqueue` makes."""

    calls: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, task_id: str) -> None:
        self.id = task_id

    @classmethod
    def clone(cls, source_task: str, name: str) -> RecordingTask:
        cls.calls.append(("clone", (source_task, name)))
        return cls("clone-of-" + source_task)

    def set_configuration_object(self, name: str, config_text: str, **kwargs: Any) -> None:
        self.calls.append(("set_configuration_object", (name, config_text)))

    def set_parameters_as_dict(self, sections: dict[str, Any]) -> None:
        self.calls.append(("set_parameters_as_dict", sections))

    def set_user_properties(self, *properties: dict[str, str]) -> None:
        self.calls.append(("set_user_properties", {p["name"]: p["value"] for p in properties}))

    def set_base_docker(self, docker_image: str, docker_arguments: str) -> None:
        self.calls.append(("set_base_docker", (docker_image, docker_arguments)))

    def add_tags(self, tags: list[str]) -> None:
        self.calls.append(("add_tags", tags))

    @classmethod
    def enqueue(cls, task: RecordingTask, queue_name: str) -> None:
        cls.calls.append(("enqueue", (task.id, queue_name)))


def test_enqueue_pins_the_image_and_skips_installs(data_dir: Path) -> None:
    pinned = "ghcr.io/o/reprozoo@" + DIGEST
    spec = repro.enqueue_spec(record(data_dir, image="ghcr.io/o/reprozoo:cuda-0123", image_digest=pinned), "gpu")
    assert spec["docker_image"] == pinned and spec["queue"] == "gpu"
    args = spec["docker_arguments"].split()
    assert "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL=1" in args and "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=/opt/venv/bin/python" in args
    assert "--entrypoint=" in args  # the image's `reprozoo` entrypoint would swallow the agent's command
    RecordingTask.calls = []
    assert repro.enqueue(spec, RecordingTask) == "clone-of-0123456789abcdef0123456789abcdef"
    assert [c[0] for c in RecordingTask.calls] == ["clone", "set_configuration_object", "set_configuration_object",
                                                   "set_parameters_as_dict", "set_user_properties", "set_base_docker",
                                                   "add_tags", "enqueue"]
    assert RecordingTask.calls[5][1][0] == pinned and RecordingTask.calls[7][1][1] == "gpu"
    # The clone's baseline is the replay's config: its fingerprint is updated with it (else the agent refuses it).
    from reprozoo.task_view import text_sha256
    assert RecordingTask.calls[4][1] == {"recorded_config_sha256": text_sha256(RecordingTask.calls[2][1][1])}
    # The clone trains into a fresh run directory (the recorded one holds the finished run), on the data version.
    assert RecordingTask.calls[3][1]["run"]["out_dir"] == "null"
    assert spec["config"].tracking.mode == "server"  # an agent's run records to the server, whatever the original did
    with pytest.raises(repro.ReproError, match="offline record; upload it first with `reprozoo tasks import"):
        repro.enqueue_spec(record(data_dir, task_id="offline-0123"), "gpu")
    with pytest.raises(repro.ReproError, match="never pushed"):
        repro.enqueue_spec(record(data_dir, image="reprozoo:cpu-0123", image_digest="none"), "gpu")


# --- a real replay --------------------------------------------------------------------------------
@pytest.mark.slow
def test_repro_from_code_is_bit_identical(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracked MiniLM run, replayed through the CLI from its recorded commit + diff in a git worktree."""
    from reprozoo.records import load_record
    from reprozoo.train import train

    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml"))
    monkeypatch.setenv("REPROZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(tmp_path / "absent-clearml.conf"))
    for name in ("CLEARML_API_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    cfg = RunConfig().override([f"data.data_dir={data_dir}", "data.limit_train_samples=192", "data.limit_eval_samples=96",
                                "trainer.max_epochs=1", "tracking.mode=offline", f"out_dir={tmp_path / 'first'}",
                                "tracking.project=reprozoo-tests", "data.batch_size=16"])
    first = train(cfg)
    result = subprocess.run([sys.executable, "-m", "reprozoo", "repro", first.task_id, "--verify", "--out", "again",
                             "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "in      code at " in result.stdout and "verdict: bit-identical" in result.stdout
    # Before it ran: each field of the recorded spec beside this machine's, none differing here.
    assert "the run's spec, recorded against this replay" in result.stdout and "torch_threads" in result.stdout and "  ≠ " not in result.stdout, result.stdout
    again = load_record(tmp_path / "runs" / "again")
    assert again.task_id != first.task_id and again.metrics == first.metrics
    original = load_record(first.task_id)
    assert (again.commit, again.diff, again.data_sha256) == (original.commit, original.diff, original.data_sha256)
    # The same RunConfig; only where it reads the (sha256-verified) data and writes the run differ, and the
    # replay pins the weights the original loaded (their sha256, which the original resolved from no revision).
    assert original.config.model.revision is None and again.config.model.revision == original.model_revision
    same_place = [f"out_dir={original.config.out_dir}", f"data.data_dir={original.config.data.data_dir}", "model.revision=null"]
    assert again.config.override(same_place) == original.config
    # A replay that differs says so and exits 1: the same record replayed with another seed.
    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "first", tampered)
    (tampered / "task.json").unlink()  # read from the run directory itself
    document = json.loads((tampered / "provenance.json").read_text())  # the run document holds the config that ran
    document["config"]["seed"] = 7
    (tampered / "provenance.json").write_text(json.dumps(document, indent=2) + "\n")
    result = subprocess.run([sys.executable, "-m", "reprozoo", "repro", str(tampered), "--verify", "--out", "seven",
                             "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 1 and "verdict: differs" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
    assert "no hardware or numerics difference between the two environments explains it" in result.stdout


# --- the image's code against the record's (issue 31) -----------------------------------------------
@pytest.mark.docker
def test_an_image_of_other_code_is_refused_before_it_runs(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded image's revision label is the run's commit, or the replay refuses before anything
    runs, naming both and the fix; --accept-changes replays in it with a warning. Tiny images FROM scratch
    that carry only the label stand in for reprozoo images (no image build)."""
    import io
    import uuid

    from reprozoo.containers import run as container_run
    from reprozoo.containers.engine import client
    from reprozoo.containers.identity import ContainerError

    try:
        engine = client()
    except ContainerError as err:
        pytest.skip(f"needs a Docker engine: {err}")
    ran: list[str] = []
    monkeypatch.setattr(container_run, "run_config_in_image", lambda cfg, image, **kwargs: (ran.append(image), (0, tmp_path))[1])
    tags: list[str] = []

    def labelled(revision: str) -> str:
        tag = f"reprozoo-test-revision:{uuid.uuid4().hex[:12]}"
        dockerfile = f"FROM scratch\nLABEL org.opencontainers.image.revision={revision}\n".encode()
        engine.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
        tags.append(tag)
        return tag

    def replay(revision: str, **changes: Any) -> tuple[Any, list[str]]:
        image = labelled(revision)
        plan = repro.plan_repro(record(data_dir, image=image, **changes), data_dir=data_dir, runs_dir=tmp_path)
        assert plan.executor == "image" and plan.image == image
        lines: list[str] = []
        return plan, lines

    other = "0" * 40
    try:
        # Another commit: refused, in one line naming the label's revision, the recorded commit and the fix.
        plan, lines = replay(other)
        with pytest.raises(repro.ReproError) as refused:
            repro.run_in_image(plan, log=lines.append)
        message = str(refused.value)
        assert "\n" not in message and ran == []
        assert f"its revision {other} is not the recorded commit {HEAD}" in message
        assert f"replay from the code with --no-image, or in an image built from commit {HEAD[:12]}" in message
        assert message.endswith("or pass --accept-changes to replay in this image anyway")
        # The commit built with uncommitted changes (`-dirty`) is not the clean commit either.
        plan, lines = replay(f"{HEAD}-dirty")
        with pytest.raises(repro.ReproError, match=rf"its revision {HEAD}-dirty is not the recorded commit {HEAD};"):
            repro.run_in_image(plan, log=lines.append)
        # A record with a diff: no image holds it (an image is built from a commit).
        plan, lines = replay(HEAD, diff="--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", dirty=True)
        with pytest.raises(repro.ReproError, match=r"the run had uncommitted changes \(the record's diff\) that image .* cannot"
                                                   r" hold; replay from the code with --no-image"):
            repro.run_in_image(plan, log=lines.append)
        assert ran == []
        # --accept-changes: it runs, and a warning line says in what.
        plan, lines = replay(other)
        assert repro.run_in_image(plan, log=lines.append, accept_changes=True) == 0 and ran == [plan.image]
        assert [line for line in lines if line.startswith("warning:")] == \
            [f"warning: image {plan.image} holds other code than the run: its revision {other} is not the recorded commit"
             f" {HEAD}; replaying in it anyway (--accept-changes)"]
        # The run's own code: a clean commit, or a run made in a `-dirty` image (its commit is the image's revision).
        for revision in (HEAD, f"{HEAD}-dirty"):
            plan, lines = replay(revision, commit=revision)
            assert repro.run_in_image(plan, log=lines.append) == 0 and ran[-1] == plan.image
            assert not any(line.startswith("warning:") for line in lines)
    finally:
        for tag in tags:
            engine.images.remove(tag, force=True)
