"""Is the image build reproducible? Build the same flavour twice without the layer cache and compare.

    python bench/image_rebuild.py --base reprozoo-base:bookworm-py311 [--registry 127.0.0.1:5000]

Prints, per build: the content-addressed tag, the image id (config digest), each layer's diff id
(sha256 of the uncompressed layer tar), and with --registry the repo digest of a push. Then which
layers differ and, for the first differing layer, a sample of the file entries whose bytes or
headers differ. Needs a Docker engine and the wheelhouse (`reprozoo image wheelhouse`).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import time
from typing import Any

from reprozoo.containers.build import build_image
from reprozoo.containers.engine import client
from reprozoo.containers.identity import project_root, source_state
from reprozoo.containers.registry import push_image


def layer_entries(engine: Any, image_id: str) -> tuple[list[dict[str, tuple[str, int, int]]], list[str]]:
    """Per layer: path -> (sha256 of content, mtime, mode); and the Dockerfile step of each layer."""
    raw = io.BytesIO(b"".join(engine.api.get_image(image_id)))
    out = []
    with tarfile.open(fileobj=raw) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(archive.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        steps = [h.get("created_by", "?") for h in config["history"] if not h.get("empty_layer")]
        for layer in manifest[0]["Layers"]:
            entries = {}
            with tarfile.open(fileobj=archive.extractfile(layer)) as tar:  # type: ignore[arg-type]
                for member in tar:
                    data = tar.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
                    entries[member.name] = (hashlib.sha256(data).hexdigest()[:12], int(member.mtime), member.mode)
            out.append(entries)
    return out, steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flavour", default="cpu")
    parser.add_argument("--base")
    parser.add_argument("--registry")
    args = parser.parse_args()
    root = project_root()
    engine = client()
    state = source_state(root)
    builds = []
    for attempt in (1, 2):
        started = time.time()
        result = build_image(root, args.flavour, args.base, no_cache=True, engine=engine, state=state, log=lambda line: None)
        image = engine.images.get(result.image_id)
        digest = push_image(engine, image, args.registry, log=lambda line: None) if args.registry else None
        layers = image.attrs["RootFS"]["Layers"]
        print(f"build {attempt}: {result.ref} id {result.image_id[:19]} {time.time() - started:.0f} s"
              f"{' digest ' + digest.split('@')[1][:19] if digest else ''}")
        # keep this build alive under its own tag while the next one reuses the content tag
        image.tag("reprozoo-rebuild", f"attempt{attempt}")
        builds.append((result, layers, digest))
    (first, layers1, digest1), (second, layers2, digest2) = builds
    print(f"same tag: {first.ref == second.ref}   same image id: {first.image_id == second.image_id}"
          f"   same repo digest: {digest1 == digest2 if digest1 else 'not pushed'}")
    differing = [i for i, (a, b) in enumerate(zip(layers1, layers2, strict=True)) if a != b]
    print(f"layers: {len(layers1)}, identical: {len(layers1) - len(differing)}, differing: {differing}")
    (entries1, created_by), (entries2, _) = layer_entries(engine, first.image_id), layer_entries(engine, second.image_id)
    for index in differing:
        a, b = entries1[index], entries2[index]
        content = sorted(name for name in a.keys() & b.keys() if a[name][0] != b[name][0])
        mtime_only = sorted(name for name in a.keys() & b.keys() if a[name][0] == b[name][0] and a[name][1:] != b[name][1:])
        only = sorted(a.keys() ^ b.keys())
        step = created_by[index][:90] if index < len(created_by) else "?"
        print(f"  layer {index} ({step}): {len(a)} entries; content differs {len(content)}, metadata only {len(mtime_only)},"
              f" present in one build only {len(only)}")
        for name in content[:6]:
            print(f"      content: {name}")
        for name in mtime_only[:3]:
            print(f"      mtime:   {name}  {a[name][1]} vs {b[name][1]}")


if __name__ == "__main__":
    main()
