"""PTB sentiment trees: parse one labelled binary tree per line and undo PTB tokenisation.

Pure Python on purpose (no torch): `reprozoo data stats` and the tests use it without loading
a model, and parsing the 8,544 training trees (318,582 nodes) takes about a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from reprozoo.errors import UserError

NUM_LABELS = 5
LABEL_NAMES = ("very negative", "negative", "neutral", "positive", "very positive")


class TreeFormatError(UserError, ValueError):
    """A tree file that is not one well-formed, 5-class labelled tree per line."""


class MissingSplitError(UserError, FileNotFoundError):
    """A split file that is not there."""


@dataclass(frozen=True)
class Tree:
    """One sentence: its leaf tokens, root label and every labelled span (start, end, label)."""

    tokens: tuple[str, ...]
    label: int
    spans: tuple[tuple[int, int, int], ...]  # half-open token ranges, root included

    def phrases(self) -> list[tuple[tuple[str, ...], int]]:
        return [(self.tokens[start:end], label) for start, end, label in self.spans]


_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_tree(line: str, where: str = "<string>") -> Tree:
    """Parse `(label (label word) ...)`; raise TreeFormatError naming `where` on any defect."""
    parts = _TOKEN.findall(line)
    if not parts:
        raise TreeFormatError(f"{where}: empty line, expected one tree like '(3 (2 a) (4 film))'")
    tokens: list[str] = []
    spans: list[tuple[int, int, int]] = []
    # Stack of (label, start token index, number of children) for open nodes.
    stack: list[list[int]] = []
    i = 0
    root_closed = False
    while i < len(parts):
        part = parts[i]
        if root_closed:
            raise TreeFormatError(f"{where}: text after the end of the tree: {part!r}")
        if part == "(":
            if i + 1 >= len(parts):
                raise TreeFormatError(f"{where}: line ends after '('")
            label = _parse_label(parts[i + 1], where)
            if stack:
                stack[-1][2] += 1
            stack.append([label, len(tokens), 0])
            i += 2
            if i < len(parts) and parts[i] not in ("(", ")"):
                # A leaf: (label word). A word may hold a space (the film title `8 1\/2`).
                words = []
                while i < len(parts) and parts[i] not in ("(", ")"):
                    words.append(parts[i])
                    i += 1
                tokens.append(" ".join(words))
                if i >= len(parts) or parts[i] != ")":
                    raise TreeFormatError(f"{where}: leaf {tokens[-1]!r} is not closed by ')'")
            continue
        if part == ")":
            if not stack:
                raise TreeFormatError(f"{where}: unbalanced ')' (more closing than opening brackets)")
            label, start, children = stack.pop()
            if children not in (0, 2):
                raise TreeFormatError(
                    f"{where}: a node has {children} children; SST trees are binary (0 or 2)"
                )
            if len(tokens) == start:
                raise TreeFormatError(f"{where}: a node with label {label} has no words")
            spans.append((start, len(tokens), label))
            root_closed = not stack
            i += 1
            continue
        raise TreeFormatError(f"{where}: unexpected {part!r}; words must sit in '(label word)'")
    if stack:
        raise TreeFormatError(f"{where}: unbalanced '(' ({len(stack)} bracket(s) never closed)")
    root_start, root_end, root_label = spans[-1]
    assert (root_start, root_end) == (0, len(tokens))
    return Tree(tokens=tuple(tokens), label=root_label, spans=tuple(spans))


def _parse_label(text: str, where: str) -> int:
    if not text.isdigit():
        raise TreeFormatError(f"{where}: expected a label 0-4 after '(', found {text!r}")
    label = int(text)
    if not 0 <= label < NUM_LABELS:
        raise TreeFormatError(
            f"{where}: label {label} is outside 0-4; SST-5 needs the fine-grained trees"
            " (trainDevTestTrees_PTB), not a binary or relabelled copy"
        )
    return label


def read_trees(path: str | Path) -> list[Tree]:
    """Read a split file; every line must be a tree, and errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise MissingSplitError(f"{path}: no such split file; point --data-dir at the folder holding train.txt, dev.txt, test.txt")
    raw = path.read_bytes()
    try:
        # As editors save them too: a byte-order mark, CRLF line ends, blank lines at the end.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_no = raw[: err.start].count(b"\n") + 1
        raise TreeFormatError(
            f"{path}:{line_no}: bytes that are not UTF-8 (at byte {err.start}); re-save the file as UTF-8"
        ) from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise TreeFormatError(f"{path}: the file is empty; expected one tree per line")
    trees = [parse_tree(line, f"{path}:{n}") for n, line in enumerate(lines, start=1)]
    labels = {tree.label for tree in trees}
    if len(trees) >= 100 and labels <= {0, 1}:
        raise TreeFormatError(
            f"{path}: every root label is 0 or 1, which looks like binary SST-2; SST-5 needs labels 0-4"
        )
    return trees


# --- PTB detokenisation -------------------------------------------------------------------

_REPLACE = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
            "``": '"', "''": '"', "`": "'"}
_CLITICS = {"n't", "'s", "'re", "'ve", "'ll", "'d", "'m", "'S", "'RE", "'VE", "'LL", "'D", "'M", "N'T"}
_ATTACH_LEFT = {".", ",", "!", "?", ";", ":", "%", "-RRB-", "-RSB-", "-RCB-", "...", "?!?", "''", "'"}
_ATTACH_RIGHT = {"-LRB-", "-LSB-", "-LCB-", "$", "#", "``", "`"}


def detokenize(tokens: tuple[str, ...] | list[str]) -> str:
    """Turn PTB leaves back into normal text so that pretrained sub-word tokenizers see
    `don't (really)` rather than `do n't -LRB- really -RRB-`."""
    out: list[str] = []
    glue_next = False
    for raw in tokens:
        token = raw.replace("\\/", "/").replace("\\*", "*")
        attach_left = raw in _ATTACH_LEFT or raw in _CLITICS
        text = _REPLACE.get(token, token)
        if out and (attach_left or glue_next):
            out[-1] += text
        else:
            out.append(text)
        glue_next = raw in _ATTACH_RIGHT
    return " ".join(out)
