"""Bounded parsing of YAML and JSON that others wrote: configs, run records, session zips.

A config or a record can come from anyone (a colleague's zip, a ClearML task, a file on disk), so
parsing one must end fast, in bounded memory, with a one-line `ConfigError` naming the file:

- size: at most `MAX_YAML_BYTES` of YAML (a RunConfig is ~1 KB, a provenance record ~2 KB) and
  `MAX_JSON_BYTES` of JSON (a session's task.json holds the uncommitted diff); checked before parsing;
- aliases: allowed (PyYAML's own dumper writes them for shared objects), but the document as
  expanded, every alias counted at its full size, may hold at most `MAX_EXPANDED` nodes plus
  characters; a "billion laughs" document is refused after parsing its few hundred bytes, before
  anything walks it. Merge keys (`<<`) are refused: PyYAML expands them while composing;
- depth: at most `MAX_DEPTH` levels of nesting; cycles (`&a [*a]`) are refused;
- text: UTF-8 only; binary, undecodable or unparsable input says so with the line YAML names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from reprozoo.errors import ConfigError

MAX_YAML_BYTES = 256 * 1024
MAX_JSON_BYTES = 32 * 1024 * 1024
MAX_EXPANDED = 1_000_000  # nodes + characters of the document with every alias expanded
MAX_DEPTH = 32

_BASE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~4x faster


class NotYAML(ConfigError):
    """The text does not parse as YAML (as opposed to parsing into something out of bounds)."""


class _BoundedLoader(_BASE_LOADER):  # type: ignore[misc, valid-type]
    """SafeLoader without merge keys (`<<: [*a, *a]` doubles a list per level while composing)."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        for key, _ in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(None, None, "merge keys (<<) are not supported", key.start_mark)
        super().flatten_mapping(node)


def read_bytes(path: str | Path, limit: int, what: str = "file") -> bytes:
    """A file's bytes, refusing a missing, unreadable or larger-than-`limit` file in one line."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = read_capped(handle, limit)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a {what}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if len(data) > limit:
        raise ConfigError(f"{path}: larger than {_size(limit)}; a {what} is far smaller, this is not one")
    return data


def read_capped(handle: BinaryIO, limit: int) -> bytes:
    """At most limit + 1 bytes (one more than allowed tells "too big"), read in chunks: `read(n)`
    allocates n bytes up front, which would cost the cap for every small file."""
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = handle.read(min(1 << 20, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def decode(data: bytes | str, source: str) -> str:
    """UTF-8 text, or a one-line error naming `source` and the offending byte."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{source}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start});"
                          " is it a binary file?") from None


def load_yaml(data: bytes | str, source: str, limit: int = MAX_YAML_BYTES) -> Any:
    """Parse YAML from others within the bounds above; any failure is a one-line ConfigError."""
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > limit:
        raise ConfigError(f"{source}: {_size(size)} of YAML is over the {_size(limit)} limit for a config or record")
    text = decode(data, source)
    if "\x00" in text:
        raise ConfigError(f"{source}: holds NUL bytes; it is a binary file, not YAML")
    try:
        value = yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        multiline = "\n" in text.strip()  # a `--set` value is one line: a line number would be noise
        where = f"{source}:{mark.line + 1}" if mark is not None and multiline else source
        raise NotYAML(f"{where}: not valid YAML ({_one_line(err.problem or err.context or 'parse error')})") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as err:
        # Scalars PyYAML cannot build (an int over Python's 4300-digit limit, a date like 2024-13-45).
        raise NotYAML(f"{source}: not valid YAML ({_problem(err)})") from None
    check_shape(value, source)
    return value


def load_yaml_mapping(data: bytes | str, source: str, limit: int = MAX_YAML_BYTES) -> dict[str, Any]:
    """`load_yaml` for a document that must be a mapping (an empty document reads as {})."""
    value = load_yaml(data, source, limit)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: expected a mapping of settings (key: value lines), got {_kind(value)}")
    return value


def load_json(data: bytes | str, source: str, limit: int = MAX_JSON_BYTES) -> Any:
    """Parse JSON from others within `limit` bytes and `MAX_DEPTH` levels; failures are one line."""
    size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    if size > limit:
        raise ConfigError(f"{source}: {_size(size)} of JSON is over the {_size(limit)} limit")
    text = decode(data, source)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{source}:{err.lineno}: not valid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:  # ints over 4300 digits; nesting past the C stack guard
        raise ConfigError(f"{source}: not valid JSON ({_problem(err)})") from None
    check_shape(value, source, max_expanded=limit)  # JSON has no aliases: only the depth can be out of bounds
    return value


def load_json_object(data: bytes | str, source: str, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    value = load_json(data, source, limit)
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: expected a JSON object ({{...}}), got {_kind(value)}")
    return value


def check_shape(value: Any, source: str, max_expanded: int = MAX_EXPANDED) -> None:
    """Refuse a parsed document that is cyclic, deeper than MAX_DEPTH or larger than MAX_EXPANDED
    once every shared (aliased) part is counted at each place it appears.

    Iterative, and linear in the number of distinct objects: each container's expanded size and
    depth are computed once and reused wherever it is referenced."""
    sizes: dict[int, tuple[int, int]] = {}  # id → (expanded size, depth)
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    keep: list[Any] = []  # hold every visited object so that ids stay unique while we walk
    while stack:
        node, done = stack.pop()
        key = id(node)
        if not isinstance(node, dict | list | tuple | set | frozenset):
            continue
        children = [c for pair in node.items() for c in pair] if isinstance(node, dict) else list(node)
        if done:
            on_path.discard(key)
            size, depth = 1, 1
            for child in children:
                child_size, child_depth = sizes.get(id(child)) or (_scalar_size(child), 0)
                size += child_size
                depth = max(depth, child_depth + 1)
            if depth > MAX_DEPTH:
                raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels; no config or record is")
            if size > max_expanded:
                raise ConfigError(f"{source}: expands to over {max_expanded:,} nodes and characters (YAML aliases"
                                  " repeating a block, a 'billion laughs' document); refused")
            sizes[key] = (size, depth)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ConfigError(f"{source}: a YAML alias refers to a block that contains it (a cycle); refused")
        if len(on_path) >= MAX_DEPTH:
            raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels; no config or record is")
        on_path.add(key)
        keep.append(node)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _scalar_size(value: Any) -> int:
    return 1 + len(value) if isinstance(value, str | bytes) else 1


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def _problem(err: BaseException) -> str:
    if isinstance(err, RecursionError):
        return "nested too deeply"
    if "integer string conversion" in str(err):
        return f"a number of more than {sys.get_int_max_str_digits()} digits"
    return _one_line(str(err)) or type(err).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"
