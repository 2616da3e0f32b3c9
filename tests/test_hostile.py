"""Hostile and careless input, thrown at random (hypothesis): `--set` values, config files and run records.

The property is the same everywhere: the outcome is a parsed, validated RunConfig (or a Record) or a
`UserError` with a one-line message; never another exception, never slow, never a memory blow-up.
Derandomized, so CI sees the same examples every time.
"""

from __future__ import annotations

import io
import json
import math
import re
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reprozoo import config as config_module
from reprozoo.config import RunConfig, apply
from reprozoo.errors import UserError
from reprozoo.records import Record, load_record
from reprozoo.session import CONFIG_OBJECT, PROVENANCE_OBJECT

# The deadline catches hangs, not slowness: a shared CI machine can stall any example for a second or two.
# The "well under a second" bound for bombs is timed on its own in tests/test_config.py.
SETTINGS = settings(max_examples=60, deadline=timedelta(seconds=5), derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MEMORY_CAP = 64 * 1024 * 1024  # peak Python allocations while handling one input

NAMES = sorted(config_module._EXAMPLES)
SECTIONS = sorted(config_module._SECTIONS)

# The values a careless or hostile user types: non-finite, huge, YAML's surprises, aliases, tags.
NASTY_TEXT = [
    "nan", "NaN", ".nan", "inf", "-inf", ".inf", "1e999", "-1e999", "1e-999", "0", "-0", "-1", "1.5", "2.0", "1e3",
    "4294967295", "4294967296", "9" * 30, "9" * 5000, "0x10", "0o17", "1_000", "yes", "no", "on", "off", "true",
    "True", "~", "null", "", " ", "[1, 2]", "{a: 1}", "&a [*a]", "[&x [1, 2], *x, *x]", "!!binary AAAA",
    "!!python/object/apply:os.system ['true']", "!!set {a, b}", "2024-13-45", "2024-01-01", "00:00:10:00",
    "1:00:00:00", "99:99:99:99", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "a\x00b", "\u202etxt", "é", "💥", "-", "[", "]", "{", "'", '"', "|", ">", "*a", "&a", "<<: {a: 1}", "%YAML 1.2",
    "---", "...", "auto", "0,1", "[0, 1]", "-2", "cpu", "gpu", "phrases", "bf16-mixed", "simple",
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.sampled_from(NASTY_TEXT),
    st.binary(max_size=10),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=15)


@contextmanager
def bounded_memory() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        if started:
            tracemalloc.stop()
        assert peak < MEMORY_CAP, f"{peak / 1e6:.0f} MB allocated for one input"


def outcome(action: Callable[[], Any]) -> Any:
    """Run `action`: a UserError (one line) is a fine answer; any other exception fails the property."""
    with bounded_memory():
        try:
            result = action()
        except UserError as err:
            message = str(err)
            assert message and "\n" not in message and "Traceback" not in message, message
            return err
    return result


@pytest.fixture(autouse=True, scope="module")
def _warm_imports() -> None:
    # The first HOCON fallback imports clearml (seconds): do it before any example is timed.
    from clearml.utilities.pyhocon import ConfigFactory

    ConfigFactory.parse_string("a = 1")


def assert_valid(cfg: RunConfig) -> None:
    """What validate() promised: the types and ranges the trainer relies on."""
    for name, annotation, value in config_module._settings(cfg):
        base = annotation.split()[0]
        if value is None:
            assert "None" in annotation, name
        elif base == "float":
            assert type(value) in (int, float) and math.isfinite(value), (name, value)
        elif base == "int":
            assert type(value) is int and abs(value) < 2**32, (name, value)
        else:
            assert type(value) is {"bool": bool, "str": str}[base], (name, value)
    assert 0 <= cfg.seed <= 2**32 - 1
    # A validated config survives its own round trip (what the run directory and the record hold).
    assert RunConfig.from_dict(yaml.safe_load(cfg.to_yaml())).validate() == cfg


# --- --set and config.apply -----------------------------------------------------------------------
@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=20))),
                min_size=1, max_size=4))
def test_set_values_parse_validate_or_refuse_in_one_line(assignments: list[tuple[str, str]]) -> None:
    result = outcome(lambda: RunConfig().override([f"{k}={v}" for k, v in assignments]).validate())
    if isinstance(result, RunConfig):
        assert_valid(result)


@SETTINGS
@given(st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=12)), values, min_size=1, max_size=4))
def test_apply_takes_any_python_value_or_refuses_it(changes: dict[str, Any]) -> None:
    result = outcome(lambda: apply(RunConfig(), changes).validate())
    if isinstance(result, RunConfig):
        assert_valid(result)


# --- whole config files ---------------------------------------------------------------------------
config_dicts = st.dictionaries(
    st.one_of(st.sampled_from([*SECTIONS, "seed", "out_dir"]), st.text(max_size=6)),
    st.one_of(st.dictionaries(st.one_of(st.sampled_from([n.split(".")[-1] for n in NAMES]), st.text(max_size=6)),
                              values, max_size=5), values),
    max_size=5)


@SETTINGS
@given(config_dicts)
def test_random_config_files_load_or_refuse(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any]) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    result = outcome(lambda: RunConfig.load(path).validate())
    if isinstance(result, RunConfig):
        assert_valid(result)


def alias_yaml(levels: int, width: int, section: str, key: str) -> str:
    """A "billion laughs" document whose expansion lands inside a known setting."""
    items = ["&l0 [" + ",".join(["lol"] * width) + "]"]
    items += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return f"{section}:\n  {key}: [{', '.join(items)}]\n"


@SETTINGS
@given(st.one_of(
    st.text(max_size=300), st.binary(max_size=300).map(bytes),
    st.builds(alias_yaml, st.integers(1, 12), st.integers(1, 12), st.sampled_from(SECTIONS), st.sampled_from(["name", "lr", "seed", "devices"])),
    st.lists(st.sampled_from(NASTY_TEXT), max_size=8).map(lambda parts: "\n".join(f"k{i}: {p}" for i, p in enumerate(parts))),
))
def test_random_config_text_and_bytes_load_or_refuse(tmp_path_factory: pytest.TempPathFactory, content: str | bytes) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    result = outcome(lambda: RunConfig.load(path).validate())
    if isinstance(result, RunConfig):
        assert_valid(result)


# --- run records (session zips, session folders, run directories) --------------------------------
def session_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def task_json(config_text: Any, prov_text: Any, extra: dict[str, Any]) -> bytes:
    task = {"id": "offline-0", "name": "x", "project_name": "reprozoo", "offline_folder": "/tmp/offline-0",
            "configuration": {CONFIG_OBJECT: {"value": config_text}, PROVENANCE_OBJECT: {"value": prov_text}},
            "execution": {"artifacts": [{"key": "metrics", "uri": "file:///tmp/offline-0/data/metrics.json"}]},
            "script": {"diff": "", "version_num": "abc"}}
    task.update(extra)
    return json.dumps(task).encode()


yaml_texts = st.one_of(
    st.text(max_size=200), st.sampled_from(NASTY_TEXT),
    config_dicts.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.builds(alias_yaml, st.integers(1, 12), st.integers(1, 12), st.sampled_from([*SECTIONS, "environment"]), st.just("name")),
    st.just("data {\n  granularity = phrases\n}\nseed = 7\n"), st.just('include "/etc/passwd"'), st.just("a = ${b}\nb = 1"),
    json_values,
)


@SETTINGS
@given(yaml_texts, yaml_texts, st.dictionaries(st.sampled_from(["id", "name", "configuration", "execution", "script",
                                                              "offline_folder", "project_name"]), json_values, max_size=2),
       st.one_of(st.binary(max_size=50), json_values.map(lambda v: json.dumps(v).encode())),
       st.one_of(st.none(), st.binary(max_size=80), st.lists(json_values, max_size=3).map(
           lambda rows: b"\n".join(json.dumps([{"metric": "Summary", "variant": "v", "value": r}]).encode() for r in rows))))
def test_crafted_session_zips_read_or_refuse(tmp_path_factory: pytest.TempPathFactory, config_text: Any, prov_text: Any,
                                            extra: dict[str, Any], metrics: bytes, jsonl: bytes | None) -> None:
    members = {"task.json": task_json(config_text, prov_text, extra), "data/metrics.json": metrics}
    if jsonl is not None:
        members["metrics.jsonl"] = jsonl
    path = session_zip(tmp_path_factory.mktemp("rec") / "offline-0.zip", members)
    result = outcome(lambda: load_record(path))
    if isinstance(result, Record):
        assert isinstance(result.config, RunConfig) and isinstance(result.diff, str) and isinstance(result.commit, str)
        assert all(isinstance(v, float) and math.isfinite(v) for v in result.single_values.values())
        json.dumps(result.to_dict(), default=str)  # what `tasks show --json` prints


@SETTINGS
@given(st.one_of(st.binary(max_size=400), json_values.map(lambda v: json.dumps(v).encode())))
def test_random_task_json_and_random_zips(tmp_path_factory: pytest.TempPathFactory, content: bytes) -> None:
    folder = tmp_path_factory.mktemp("rec")
    outcome(lambda: load_record(session_zip(folder / "a.zip", {"task.json": content, "metrics.jsonl": content})))
    # A file that says it is a zip but is not, or is a truncated one.
    (folder / "b.zip").write_bytes(b"PK\x05\x06" + bytes(18) + content)
    outcome(lambda: load_record(folder / "b.zip"))
    whole = (folder / "a.zip").read_bytes()
    (folder / "c.zip").write_bytes(whole[: len(whole) // 2] + content + whole[len(whole) // 2 + 40:])
    outcome(lambda: load_record(folder / "c.zip"))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["task.json", "config.yaml", "provenance.json", "metrics.json", "timing.json",
                                        "git.diff"]),
                       st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v).encode()),
                                 yaml_texts.map(lambda t: str(t).encode("utf-8", "surrogatepass"))), min_size=1))
def test_crafted_run_directories_read_or_refuse(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]) -> None:
    run_dir = tmp_path_factory.mktemp("run")
    for name, content in files.items():
        (run_dir / name).write_bytes(content)
    result = outcome(lambda: load_record(run_dir))
    if isinstance(result, Record):
        assert isinstance(result.config, RunConfig)


def test_a_zip_member_that_inflates_past_the_cap_is_refused_without_inflating_it(tmp_path: Path) -> None:
    from reprozoo import records

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("task.json", b" " * (records.MAX_MEMBER_BYTES + 1))  # ~64 KB compressed
    (tmp_path / "bomb.zip").write_bytes(buffer.getvalue())
    result = outcome(lambda: load_record(tmp_path / "bomb.zip"))
    assert isinstance(result, UserError) and "over the 67,108,864-byte cap" in str(result)


# --- the cases of issue 13, one by one -------------------------------------------------------------
def well_formed(config_text: str | None = None, **extra: Any) -> dict[str, bytes]:
    text = RunConfig().override(["seed=7"]).to_yaml() if config_text is None else config_text
    return {"task.json": task_json(text, "environment: {image: img, lock_file: envs/cpu.txt}\ncode: {commit: abc}\n", extra),
            "data/metrics.json": b'{"dev": {"accuracy": 0.5}}',
            "metrics.jsonl": json.dumps([{"metric": "Summary", "variant": "train_seconds", "value": 12.5}]).encode()}


def test_a_well_formed_crafted_session_reads_back(tmp_path: Path) -> None:
    # The generators above start from this shape: it must read, or the properties only ever saw refusals.
    record = load_record(session_zip(tmp_path / "offline-0.zip", well_formed()))
    assert record.config.seed == 7 and record.metrics == {"dev": {"accuracy": 0.5}} and record.status == "completed"
    assert record.image == "img" and record.commit == "abc" and record.single_values == {"train_seconds": 12.5}
    old = "data {\n  granularity = phrases\n}\nseed = 7\n"  # the HOCON of records made before the YAML object
    assert load_record(session_zip(tmp_path / "old.zip", well_formed(old))).config.data.granularity == "phrases"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"task.json": b"[1, 2]"}, r"offline-0.zip/task.json: expected a JSON object \(\{...\}\), got list \[1, 2\]"),
        ({"task.json": b"\x89PNG\x00"}, r"offline-0.zip/task.json:1: not UTF-8 text"),
        ({"task.json": b'{"id": "offline-0",'}, r"offline-0.zip/task.json:1: not valid JSON \(Expecting property name"),
        ({"task.json": b"[" * 100_000 + b"]" * 100_000}, r"offline-0.zip/task.json: not valid JSON \(nested too deeply\)"),
        ({"task.json": b'{"configuration": "x"}'}, r"task.json: configuration is str, expected a mapping; the record is damaged"),
        (well_formed("a: &a [*a]\n"), r"offline-0.zip: RunConfig: a YAML alias refers to a block that contains it"),
        (well_formed("   "), r"offline-0.zip: RunConfig: the config object is empty; the record is damaged"),
        (well_formed('include "/etc/passwd"\n'), r"neither a YAML mapping nor a plain HOCON config .*no include"),
        (well_formed("a = {x: 1}\nb = [${a}, ${a}]\n"), r"neither a YAML mapping nor a plain HOCON config"),
        (well_formed("seed: -1\noptim: {lr: .inf}\n"), None),  # read (a record may predate a check); train re-validates
        (well_formed("data: {granularty: phrases}\n"), r"offline-0.zip: RunConfig: data.granularty: unknown setting"),
        (well_formed(execution={"artifacts": "x"}), r"execution.artifacts is not a list of artifacts"),
        ({**well_formed(), "metrics.jsonl": b'[{"metric": "Summary", "variant": "x", "value": "NaN"}]'},
         r"metrics.jsonl:1: the single value 'x'=NaN is not a number"),
        ({**well_formed(), "data/metrics.json": b"[]"}, r"data/metrics.json: expected a JSON object"),
    ],
)
def test_a_damaged_or_crafted_session_zip_gives_one_line(tmp_path: Path, members: dict[str, bytes], message: str | None) -> None:
    path = session_zip(tmp_path / "offline-0.zip", members)
    result = outcome(lambda: load_record(path))
    if message is None:
        assert isinstance(result, Record)
        return
    assert isinstance(result, UserError), result
    assert re.search(message, str(result)), str(result)


def test_a_session_folder_cannot_point_the_reader_outside_itself(tmp_path: Path) -> None:
    (tmp_path / "secret.json").write_text('{"leaked": true}')
    folder = tmp_path / "offline-0"
    folder.mkdir()
    task = json.loads(well_formed()["task.json"])
    task["execution"]["artifacts"][0]["uri"] = f"file://{tmp_path / 'secret.json'}"
    task["offline_folder"] = str(folder)
    (folder / "task.json").write_text(json.dumps(task))
    (folder / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match=r"names '/.*secret.json', a file outside its session folder; refused"):
        load_record(folder)
