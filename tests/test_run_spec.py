"""The run spec's definition of "the same run" (run_spec.identity, settings) and of a replay (replayed):
what each names, what it leaves out, and the one line a difference gets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reprozoo import run_spec, zoo
from reprozoo.config import ConfigError, RunConfig, apply
from reprozoo.records import Record

SHA = {"train": "a" * 64, "dev": "b" * 64, "test": "c" * 64}
ENV = {"image_digest": "none", "lock_sha256": "d" * 64, "python": "3.11.7", "torch": "2.13.0", "transformers": "4.57.1",
       "lightning": "2.5.5", "cpu_model": "AMD EPYC", "torch_threads": 2}
RESOLVED = {"accelerator": "cpu", "precision": "32-true", "world_size": 1, "batch_size": 64, "accumulate_grad_batches": 1,
            "global_batch_size": 64, "lr": 1e-4, "max_length": 128, "pooling": "mean"}


def facts(cfg: RunConfig | None = None, **changes: object) -> dict[str, str]:
    args = {"commit": "1" * 40, "diff": "", "data_sha256": SHA, "weights_revision": "sha256:" + "e" * 64,
            "environment": ENV, "resolved": RESOLVED, **changes}
    return run_spec.identity(cfg or RunConfig(), **args)  # type: ignore[arg-type]


def test_identity_names_what_decides_a_run_and_leaves_out_where_it_reads_and_writes() -> None:
    base = facts()
    assert base["code.diff"] == "none" and base["weights.revision"] == "sha256:" + "e" * 64
    assert base["resolved.precision"] == "32-true" and base["environment.torch_threads"] == "2"
    assert base["data.sha256.train"] == "a" * 64 and base["config.seed"] == "42"
    # Each fact that decides what the run computes changes it, naming that fact alone.
    for changed, field in [(facts(RunConfig().override(["seed=7"])), "config.seed"),
                           (facts(commit="2" * 40), "code.commit"), (facts(diff="+x = 1\n"), "code.diff"),
                           (facts(data_sha256={**SHA, "train": "f" * 64}), "data.sha256.train"),
                           (facts(weights_revision="abc"), "weights.revision"),
                           (facts(environment={**ENV, "torch": "2.14.1"}), "environment.torch"),
                           (facts(resolved={**RESOLVED, "precision": "bf16-mixed"}), "resolved.precision"),
                           (facts(environment={**ENV, "torch_threads": 3}), "environment.torch_threads")]:
        assert [k for k in base if changed[k] != base[k]] == [field]
    # Where it reads and writes, how it is tracked and the pinned revision (weights.revision says what loaded) do not.
    where = RunConfig().override(["out_dir=/elsewhere", "data.data_dir=/trees", "data.dataset_id=abc",
                                  "tracking.mode=server", "tracking.project=p", "tracking.task_name=t",
                                  "model.revision=sha256:" + "e" * 64])
    assert facts(where) == base
    # The zoo's defaults left unset compare equal to the values the run applied.
    applied = run_spec.with_zoo_defaults(RunConfig(), zoo.get(RunConfig().model.name))
    assert applied.optim.lr is not None and facts(applied, resolved=None) == facts(RunConfig(), resolved=None)
    # On a GPU, the CPU and its threads do not decide the numbers.
    gpu = facts(resolved={**RESOLVED, "accelerator": "gpu"})
    assert "environment.cpu_model" not in gpu and "environment.torch_threads" not in gpu


def test_settings_name_how_a_run_trains_and_compare_only_what_both_sides_name() -> None:
    recorded = run_spec.settings(RESOLVED, ENV)
    assert recorded["resolved.world_size"] == "1" and recorded["environment.cpu_model"] == "AMD EPYC"
    here = run_spec.settings({"accelerator": "cpu", "precision": "32-true", "world_size": 2}, {**ENV, "torch_threads": 1})
    assert run_spec.other_settings(recorded, here) == ["resolved.world_size 1 → 2", "environment.torch_threads 2 → 1"]
    assert run_spec.other_settings({}, here) == []  # a record of older code names none


def test_a_replay_runs_its_record_and_refuses_any_edit_but_where(tmp_path: Path) -> None:
    recorded = run_spec.with_zoo_defaults(RunConfig().override(["out_dir=runs/orig"]), zoo.get(RunConfig().model.name))
    record = Record(task_id="t", config=recorded, metrics=None, image="none", image_digest="none", lock_sha256="none",
                    commit="1" * 40, diff="", dirty=False, dataset_id="ds1", data_sha256=SHA, model_revision="rev1",
                    status="completed", offline_zip=None)
    asked = run_spec.executable(record.config, record.model_revision,
                                run_spec.Where(out_dir=None, dataset_id="ds2", tracking="server"))
    replay = run_spec.replayed(record.config, record.model_revision, asked, "task c")
    assert replay == asked and replay.model.revision == "rev1" and replay.data.dataset_id == "ds2"
    edited = apply(asked, {"seed": 7, "optim.lr": 0.5})
    with pytest.raises(ConfigError) as refused:
        run_spec.replayed(record.config, record.model_revision, edited, "task c")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("task c replays a record, but its RunConfig differs")
    assert "optim.lr 0.0001 → 0.5" in message and "seed 42 → 7" in message and "`reprozoo repro TASK --enqueue QUEUE`" in message
    # Other weights than the run loaded are an edit too.
    with pytest.raises(ConfigError, match=r"model.revision rev1 → main"):
        run_spec.replayed(record.config, record.model_revision, apply(asked, {"model.revision": "main"}), "task c")


def test_an_agents_replay_refuses_settings_it_would_train_otherwise_unless_accepted(data_dir: Path, tmp_path: Path) -> None:
    """agent_task.check_replayed_settings, as an agent runs it once the replay is planned."""
    import torch

    from reprozoo.agent_task import check_replayed_settings
    from reprozoo.devices import cpu_here
    from reprozoo.train import plan_run

    plan = plan_run(RunConfig().override([f"data.data_dir={data_dir}", f"out_dir={tmp_path / 'run'}"]))
    here = cpu_here()
    same = Record(task_id="clone", config=plan.cfg, metrics=None, image="none", image_digest="none", lock_sha256="none",
                  commit="", diff="", dirty=False, dataset_id=None, data_sha256={}, model_revision="", status="queued",
                  offline_zip=None, environment=dict(here),
                  provenance={"task_id": "source", "resolved": plan.resolved()})
    assert check_replayed_settings(plan.resolved(), same, accept=False) == []
    threads = torch.get_num_threads()
    other = replace(same, environment={**here, "torch_threads": threads + 1},
                    provenance={"task_id": "source", "resolved": {**plan.resolved(), "precision": "bf16-mixed"}})
    with pytest.raises(ConfigError) as refused:
        check_replayed_settings(plan.resolved(), other, accept=False)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("task clone replays source, but this agent would train it otherwise")
    assert f"resolved.precision bf16-mixed → 32-true; environment.torch_threads {threads + 1} → {threads}" in message
    assert "`reprozoo repro source --enqueue QUEUE --accept-changes`" in message
    assert check_replayed_settings(plan.resolved(), other, accept=True) == [
        "resolved.precision bf16-mixed → 32-true", f"environment.torch_threads {threads + 1} → {threads}"]


def test_the_document_holds_the_diffs_sha256_and_a_diff_that_does_not_match_it_is_refused(tmp_path: Path) -> None:
    import json

    from reprozoo.records import run_dir_record

    diff = "diff --git a/x.py b/x.py\n+MAX_TOKENS_PER_BATCH = 4096\n"
    (tmp_path / "config.yaml").write_text(RunConfig().to_yaml())
    document = {"config": RunConfig().to_dict(), "code": {"commit": "1" * 40, "diff": diff,
                                                         "diff_sha256": run_spec.diff_sha256(diff)}}
    (tmp_path / "provenance.json").write_text(json.dumps(document))
    assert run_dir_record(tmp_path).diff == diff
    assert run_spec.identity(None, "1" * 40, diff, {}, None)["code.diff"] == run_spec.diff_sha256(diff)
    document["code"]["diff"] = diff.replace("4096", "***")
    (tmp_path / "provenance.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"provenance.code.diff does not match its diff_sha256; the record is damaged"):
        run_dir_record(tmp_path)
