"""`--devices`: handed to Lightning as given on GPUs (several: DDP); on the CPU one process, said so."""

from __future__ import annotations

from pathlib import Path

import pytest

from reprozoo.config import RunConfig


def test_devices_on_cpu_train_one_process_and_say_so(data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from reprozoo.train import plan_run

    plan = plan_run(RunConfig().override([f"data.data_dir={data_dir}", "trainer.accelerator=cpu", "trainer.devices=2"]))
    assert plan.accelerator == "cpu"
    assert "trainer.devices=2 ignored on the CPU: one process trains (several devices means Lightning DDP over GPUs)" in capsys.readouterr().err
    plan_run(RunConfig().override([f"data.data_dir={data_dir}", "trainer.accelerator=cpu"]))
    assert "ignored" not in capsys.readouterr().err  # devices=auto: nothing to say


@pytest.mark.parametrize(("accelerator", "devices", "expected"), [("gpu", "2", "2"), ("gpu", "0,1", "0,1"), ("gpu", "auto", "auto"),
                                                                   ("cpu", "2", 1)])
def test_devices_reach_the_lightning_trainer(data_dir: Path, tmp_path: Path, accelerator: str, devices: str, expected: object) -> None:
    from dataclasses import replace

    from reprozoo.train import _trainer_kwargs, plan_run

    cfg = RunConfig().override([f"data.data_dir={data_dir}", f"trainer.devices={devices}", f"out_dir={tmp_path / 'run'}"])
    plan = replace(plan_run(cfg), accelerator=accelerator)  # no GPU here: the plan says what a GPU host decides

    class NoTracker:
        def lightning_logger(self, run_dir: Path) -> list:
            return []

    kwargs = _trainer_kwargs(cfg, plan, NoTracker())
    assert kwargs["accelerator"] == accelerator and kwargs["devices"] == expected
