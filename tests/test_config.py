from __future__ import annotations

from pathlib import Path

import pytest

from reprozoo.config import ConfigError, RunConfig


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig().override(["optim.lr=3e-5", "data.granularity=phrases", "trainer.max_time=00:00:10:00", "seed=7"])
    cfg.save(tmp_path / "config.yaml")
    again = RunConfig.load(tmp_path / "config.yaml")
    assert again == cfg
    assert again.optim.lr == 3e-5 and again.data.granularity == "phrases" and again.seed == 7


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("optim.lr=-1e-5", "optim.lr=-1e-05 must be positive"),
        ("data.batch_size=0", "data.batch_size=0 must be a whole number >= 1"),
        ("data.granularity=phrase", "did you mean phrases"),
        ("data.imbalance=balanced", "not one of none, weighted-loss, balanced-sampler"),
        ("data.max_length=4", "too short"),
        ("data.max_tokens=0", "data.max_tokens=0 must be a whole number >= 1"),
        ("model.pooling=max", "not one of cls, mean, last"),
        ("trainer.precision=fp16", "not one of"),
    ],
)
def test_invalid_settings_are_refused_with_the_fix(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig().override([assignment]).validate()


def test_unknown_keys_suggest_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean lr"):
        RunConfig().override(["optim.lrate=1"])
    with pytest.raises(ConfigError, match="unknown section 'optm'; did you mean optim"):
        RunConfig().override(["optm.lr=1"])
    with pytest.raises(ConfigError, match="data.granularty: unknown setting; did you mean granularity"):
        RunConfig.from_dict({"data": {"granularty": "phrases"}})
    with pytest.raises(ConfigError, match="expected key=value"):
        RunConfig().override(["optim.lr"])


def test_config_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, reprozoo.config, reprozoo.zoo, reprozoo.data.trees; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
