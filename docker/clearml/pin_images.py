#!/usr/bin/env python3
"""`make pin-clearml`: pin every image of docker/clearml/ by digest.

Finds image references without `@sha256:` in docker-compose.yml (`image:` values and the
`x-clearml-server-image` anchor) and agent.Dockerfile (`ARG …_IMAGE=` defaults), asks the registry
for each one's index digest (`docker buildx imagetools inspect`) and writes `name:tag@sha256:…`
back in place. `--check` only lists what is unpinned (exit 1 if anything is). Images built here
(`…:local`) are skipped: their bases are pinned in their Dockerfile. Standard library only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = (HERE / "docker-compose.yml", HERE / "agent.Dockerfile")
# `image: ref`, `&anchor ref` (a YAML anchor on an image value) and `ARG NAME_IMAGE=ref`
REF_RE = re.compile(r"^(?P<head>\s*(?:image:\s*|x-[\w-]+-image:\s*&[\w-]+\s+|ARG\s+\w*IMAGE=))(?P<ref>[^\s#*]+)(?P<tail>.*)$", re.MULTILINE)
DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")


def unpinned(text: str) -> list[str]:
    return [m["ref"] for m in REF_RE.finditer(text) if not DIGEST_RE.search(m["ref"]) and not m["ref"].endswith(":local")]


def pin(text: str, resolve: Callable[[str], str]) -> str:
    def replace(m: re.Match[str]) -> str:
        ref = m["ref"]
        if DIGEST_RE.search(ref) or ref.endswith(":local"):
            return m[0]
        digest = resolve(ref)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"{ref}: the registry answered {digest!r}, not a sha256 digest")
        return f"{m['head']}{ref}@{digest}{m['tail']}"

    return REF_RE.sub(replace, text)


def registry_digest(ref: str) -> str:
    """The index (multi-platform) digest of `ref`, as the registry reports it."""
    out = subprocess.run(["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{json .Manifest}}"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["digest"]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    missing = {path.name: unpinned(path.read_text()) for path in FILES}
    if check:
        for name, refs in missing.items():
            for ref in refs:
                print(f"{name}: {ref} is not pinned by digest")
        return 1 if any(missing.values()) else 0
    for path in FILES:
        text = path.read_text()
        pinned = pin(text, registry_digest)
        if pinned != text:
            path.write_text(pinned)
            print(f"{path.name}: pinned {', '.join(missing[path.name])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
