"""The README's quickstart runs as written, and every relative link in README.md and docs/ resolves
(in the spirit of litgpt's tests/test_readme.py), so the front page cannot rot.

The commands are read from README.md itself: every line of the ```bash blocks under `## Quickstart`,
run in order in a fresh folder with a throwaway HOME and ClearML offline, so nothing of the user's is
read or written. Each must exit 0 and print its expected line (EXPECTED below: a new quickstart command
needs an entry there)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, reprozoo

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
LABEL = "(very negative|negative|neutral|positive|very positive)"
# The start of a quickstart command → a regular expression its output must match (multi-line mode).
EXPECTED = {
    "reprozoo models": r"reprozoo model zoo \(50 models\)",
    "reprozoo data stats": r"^bar chart: class_distribution\.png$",
    "reprozoo train --fast-dev-run": r"^clearml task: offline-[0-9a-f]{32}$",
    "reprozoo predict": rf"^{LABEL}\ta lovely film$(.|\n)*^{LABEL}\ta dull, lifeless mess$",
    "reprozoo tasks list": r"^offline-[0-9a-f]{32} +all-minilm-l6-v2 +completed ",
    "reprozoo train --help": r"--fast-dev-run",
    "make help": r"train MODEL on SST-5",
}
SHELL_SYNTAX = {"|", "||", "&&", ";", ">", ">>", "<", "&"}


def section(markdown: str, heading: str) -> str:
    """The text under `heading` (a `## ` line) up to the next heading of the same or a higher level."""
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", markdown, flags=re.M | re.S)
    assert match, f"README.md has no {heading!r} section"
    return match.group(1)


def quickstart_commands() -> list[list[str]]:
    text = section(README.read_text(), "## Quickstart")
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def expected_output(words: list[str]) -> str:
    line = " ".join(words)
    starts = [start for start in EXPECTED if line == start or line.startswith(start + " ")]
    assert starts, f"quickstart command {line!r} has no expected output in tests/test_readme.py EXPECTED"
    return EXPECTED[max(starts, key=len)]


def run(words: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert not SHELL_SYNTAX & set(words), f"keep quickstart commands plain (no pipes or redirections): {words}"
    if words[0] == "reprozoo":
        return reprozoo(*words[1:], cwd=cwd, timeout=300)
    if words[:2] == ["make", "help"]:
        # -o: never (re)build .venv from a test.
        return subprocess.run(["make", "-C", str(REPO), "-o", ".venv/.installed", *words[1:]], capture_output=True,
                              text=True, check=False, timeout=60)
    raise AssertionError(f"the quickstart may run `reprozoo …` and `make help` only, not {words[0]!r}")


def test_quickstart_parses() -> None:
    commands = quickstart_commands()
    assert len(commands) >= 5 and all(words[0] in ("reprozoo", "make") for words in commands), commands
    for words in commands:
        expected_output(words)


def test_quickstart_commands_run(isolated_clearml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = isolated_clearml / "home"
    home.mkdir()
    for name, value in (("HOME", home), ("HF_HOME", home / ".cache" / "huggingface"), ("XDG_CACHE_HOME", home / ".cache"),
                        ("MPLCONFIGDIR", home / ".config" / "matplotlib")):
        monkeypatch.setenv(name, str(value))
    work = isolated_clearml / "work"
    work.mkdir()
    for words in quickstart_commands():
        result = run(words, work)
        shown = shlex.join(words)
        assert result.returncode == 0, f"{shown} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        assert re.search(expected_output(words), result.stdout, flags=re.M), f"{shown} printed:\n{result.stdout[-3000:]}"
    # Everything the quickstart wrote stayed in the throwaway folders.
    assert (work / "runs" / "first" / "metrics.json").is_file() and (work / "class_distribution.png").is_file()
    assert list((isolated_clearml / "clearml" / "offline").glob("offline-*.zip"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", markdown.read_text(), flags=re.M | re.S)
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def test_docs_pages_are_linked_from_the_readme() -> None:
    readme = README.read_text()
    assert DOCS and all(f"(docs/{page.name})" in readme for page in DOCS), [p.name for p in DOCS]
