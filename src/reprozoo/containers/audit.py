"""Auditing a built image: where a credential could hide (environment, labels, history, layer files).

A build never sees a credential (they reach a container only at run time); `find_secrets` checks
that the image agrees, down to every file of every layer.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Any


def image_layers(engine: Any, image: Any) -> Iterator[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]:
    """Every file of every layer: (info, content) for regular files; used by the secrets check."""
    with tempfile.TemporaryFile() as raw:
        for chunk in engine.api.get_image(image.id):
            raw.write(chunk)
        raw.seek(0)
        yield from _archive_files(raw)


def _archive_files(raw: Any) -> Iterator[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=raw) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=archive.extractfile(layer)) as tar:  # type: ignore[arg-type]
                for member in tar:
                    if member.isfile():
                        yield member, tar.extractfile(member).read()  # type: ignore[union-attr]
                    else:
                        yield member


SECRET_FILE_NAMES = ("clearml.conf", ".env", ".netrc", ".git-credentials", "id_rsa", "id_ed25519", ".pypirc")
SECRET_ENV_NAMES = ("SECRET", "TOKEN", "PASSWORD", "ACCESS_KEY", "API_KEY", "CREDENTIAL")


def find_secrets(engine: Any, image: Any, needles: list[str]) -> list[str]:
    """Where a credential could hide in an image: env, labels, history, files. Returns findings."""
    findings = []
    attrs = image.attrs
    config = attrs.get("Config") or {}
    for entry in config.get("Env") or []:
        name, _, value = entry.partition("=")
        if value and any(word in name.upper() for word in SECRET_ENV_NAMES):
            findings.append(f"env {name} is set in the image")
    texts = {"env": json.dumps(config.get("Env")), "labels": json.dumps(config.get("Labels")),
             "history": json.dumps(image.history()), "config": json.dumps(attrs)}
    for where, text in texts.items():
        for needle in needles:
            if needle in text:
                findings.append(f"{where} contains {needle[:6]}…")
    encoded = [n.encode() for n in needles]
    for item in image_layers(engine, image):
        member, data = item if isinstance(item, tuple) else (item, b"")
        base = member.name.rsplit("/", 1)[-1]
        if base in SECRET_FILE_NAMES or member.name.endswith(".docker/config.json"):
            findings.append(f"file {member.name}")
        for needle in encoded:
            if data and needle in data:
                findings.append(f"file {member.name} contains {needle[:6].decode()}…")
    return findings
