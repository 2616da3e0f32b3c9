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


# --- issue 13: every setting has a type and a range ------------------------------------------------
@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("optim.lr=inf", "optim.lr=inf must be a finite number, e.g. optim.lr=3e-05"),
        ("optim.lr=1e999", "optim.lr=inf must be a finite number"),
        ("seed=-1", r"seed=-1 must be a whole number in \[0, 4294967295\] \(what numpy and torch seed with\), e.g. seed=42"),
        ("seed=4294967296", r"seed=4294967296 must be a whole number in \[0, 4294967295\]"),
        ("optim.weight_decay=nan", "optim.weight_decay=nan must be a finite number, e.g. optim.weight_decay=0.01"),
        ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 must be >= 0"),
        ("optim.grad_clip=inf", "optim.grad_clip=inf must be a finite number, e.g. optim.grad_clip=1.0"),
        ("optim.head_lr_multiplier=-5", "optim.head_lr_multiplier=-5 must be > 0, e.g. optim.head_lr_multiplier=10"),
        ("trainer.val_check_interval=0", r"trainer.val_check_interval=0 must be a number of batches >= 1 or a fraction"),
        ("trainer.val_check_interval=1.5", r"trainer.val_check_interval=1.5 must be a fraction of an epoch in \(0, 1\]"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be a whole number >= 1, e.g."),
        ("trainer.early_stopping_patience=-1", "trainer.early_stopping_patience=-1 must be a whole number >= 0, e.g."),
        ("trainer.max_time=garbage", "trainer.max_time='garbage' is not a duration 'DD:HH:MM:SS' above zero"),
        ("trainer.max_time=00:00:00:00", "trainer.max_time='00:00:00:00' is not a duration"),
        ("trainer.max_time=1:2:3", "trainer.max_time='1:2:3' is not a duration"),
        ("trainer.require_gpu=1", "trainer.require_gpu=1 is not true or false, e.g. trainer.require_gpu=true"),
        ("trainer.fast_dev_run=maybe", "trainer.fast_dev_run='maybe' is not true or false"),
        ("data.batch_size=2.5", "data.batch_size=2.5 is not a whole number, e.g. data.batch_size=32"),
        ("data.batch_size=true", "data.batch_size=True is not a whole number"),
        ("data.max_length=99999999999", "data.max_length=99999999999 must be at most 2147483647"),
        ("data.num_workers=-1", "data.num_workers=-1 must be a whole number >= 0"),
        ("seed=", "seed must be set, e.g. seed=42"),
        ("trainer.devices=0", "trainer.devices='0' is not auto, a count, -1"),
        ("trainer.accelerator=tpu9", "trainer.accelerator='tpu9' is not one of auto, cpu, gpu, cuda, mps"),
        ("trainer.profiler=none", "trainer.profiler='none' is not one of simple, advanced, pytorch"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 trains nothing"),
        ("trainer.max_steps=0", "trainer.max_steps=0 trains nothing"),
        ("trainer.max_epochs=-1", "trainer.max_epochs=-1 with trainer.max_steps=-1 never stops"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 must be a whole number >= 1"),
        ("tracking.project= ", "tracking.project=' ' is empty"),
        ("out_dir=runs/a\x00b", r"out_dir='runs/a\\x00b' must be one line of printable text"),
        ("optim.lr=[1, 2", r"--set optim.lr: not valid YAML \(did not find expected ',' or ']'\)"),
        ("optim.lr=&a [*a]", "--set optim.lr: a YAML alias refers to a block that contains it"),
    ],
)
def test_out_of_range_and_mistyped_settings_are_refused_in_one_line(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig().override([assignment]).validate()
    assert "\n" not in str(err.value)


def test_every_setting_has_a_valid_example_and_a_check() -> None:
    from reprozoo import config

    names = [name for name, _, _ in config._settings(RunConfig())]
    assert sorted(names) == sorted(config._EXAMPLES)  # a new setting must come with its example (and its rule)
    for name in names:
        RunConfig().override([f"{name}={config._EXAMPLES[name]}"]).validate()


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [("seed=1e3", 1000), ("seed=7.0", 7), ("trainer.val_check_interval=50", 50), ("trainer.val_check_interval=0.25", 0.25),
     ("trainer.devices=0,1", "0,1"), ("trainer.devices=-1", "-1"), ("trainer.max_epochs=-1", None)],
)
def test_lossless_spellings_are_accepted(assignment: str, expected: object) -> None:
    overrides = [assignment, "trainer.max_steps=100"] if expected is None else [assignment]
    cfg = RunConfig().override(overrides).validate()
    if expected is not None:
        key = assignment.split("=")[0]
        value = cfg.to_dict()
        for part in key.split("."):
            value = value[part]
        assert value == expected and type(value) is type(expected)


def test_yaml_spellings_become_the_field_type(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("trainer:\n  devices: 2\n  max_time: {hours: 1, minutes: 30}\noptim:\n  lr: 3e-5\nseed: 7\n")
    cfg = RunConfig.load(path).validate()
    assert cfg.trainer.devices == "2" and cfg.trainer.max_time == "00:01:30:00" and cfg.optim.lr == 3e-5
    path.write_text("trainer:\n  max_time: 1:00:00:00\n")  # YAML 1.1 reads this as 216000 (base 60)
    with pytest.raises(ConfigError, match=r"trainer.max_time=216000 is a number .*quote the 'DD:HH:MM:SS'"):
        RunConfig.load(path)
    path.write_text("trainer:\n  require_gpu: yes\n  fast_dev_run: 1\n")
    with pytest.raises(ConfigError, match=r"config.yaml: trainer.fast_dev_run=1 is not true or false"):
        RunConfig.load(path)


# --- issue 13: bounded parsing of config files ------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"config.yaml:1: not UTF-8 text \(byte 0x89 at offset 0\); is it a binary file\?"),
        ("seed: 4\nmodel: {name: caf\xe9}\n".encode("latin-1"), r"config.yaml:2: not UTF-8 text \(byte 0xe9"),
        (b"seed: 1\x00\n", "holds NUL bytes; it is a binary file, not YAML"),
        (b"seed: 1\noptim:\n  lr: [1e-5,\n", r"config.yaml:4: not valid YAML \("),
        (b"optim:\n\tlr: 1\n", r"config.yaml:2: not valid YAML \(found character that cannot start any token\)"),
        (b"- seed: 1\n", r"expected a mapping of sections \(data, model, optim, ...\), got list"),
        (b"just text", "expected a mapping of sections"),
        (b"data:\n  granularty: phrases\n", r"config.yaml: data.granularty: unknown setting; did you mean granularity"),
        (b"a: &a [*a]\n", "a YAML alias refers to a block that contains it"),
        (b"x: " + b"[" * 40 + b"]" * 40 + b"\n", "nested deeper than 32 levels"),
        (b"seed: " + b"9" * 5000 + b"\n", r"not valid YAML \(a number of more than 4300 digits\)"),
        (b"a: &a {x: 1}\nb: {<<: *a}\n", r"config.yaml:2: not valid YAML \(merge keys \(<<\) are not supported\)"),
        (b"model: !!python/object/apply:os.system [echo hi]\n", "could not determine a constructor"),
        (b"# big\n" + b"#" * (300 * 1024), r"larger than 256 KiB; a config file is far smaller"),
    ],
)
def test_unreadable_config_files_give_one_line_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig.load(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def billion_laughs(levels: int = 12, width: int = 10) -> str:
    anchors = ["&l0 [" + ", ".join(["lol"] * width) + "]"]
    anchors += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return f"model:\n  name: [{', '.join(anchors)}]\n"  # 10**12 "lol"s, inside a known setting


@pytest.mark.parametrize("document", [
    billion_laughs(),
    # merge keys double a list per level while PyYAML composes: 2**40 entries
    "a0: &a0 {k: 1}\n" + "".join(f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 40)),
    # one 200 KB string repeated through aliases: small as a graph, 10**6 times that as text
    "s: &s " + "x" * 200_000 + "\nt: &t [*s, *s, *s, *s, *s, *s, *s, *s, *s, *s]\nu: [*t, *t, *t, *t, *t, *t, *t, *t, *t, *t]\n",
])
def test_an_alias_bomb_is_refused_fast_in_bounded_memory(tmp_path: Path, document: str) -> None:
    import time
    import tracemalloc

    path = tmp_path / "bomb.yaml"
    path.write_text(document)
    tracemalloc.start()
    started = time.process_time()
    try:
        with pytest.raises(ConfigError) as err:
            RunConfig.load(path)
        elapsed = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))
    assert "billion laughs" in str(err.value) or "merge keys" in str(err.value)
    assert elapsed < 0.5, f"{elapsed:.2f} s of CPU"
    assert peak < 16 * 1024 * 1024, f"{peak / 1e6:.0f} MB"


def test_unknown_keys_are_quoted_when_they_would_not_print_as_one_line() -> None:
    from reprozoo.config import apply

    with pytest.raises(ConfigError, match=r"^'\\n': unknown setting '\\n'; known: data, model") as err:
        apply(RunConfig(), {"\n": None})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^data.'a\\x00': unknown setting"):
        RunConfig.from_dict({"data": {"a\x00": 1}})
