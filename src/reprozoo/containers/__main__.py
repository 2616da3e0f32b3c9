"""`python -m reprozoo.containers ci-meta|wheelhouse`: the CI helper (.github/workflows/images.yml).

Standard library only (no Docker SDK, no torch): CI runs it with a bare Python before anything is installed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reprozoo.containers.build import download_wheelhouse
from reprozoo.containers.identity import FLAVOURS, IMAGE_REPO, build_args, image_spec, project_root, source_state, source_url


def ci_meta(root: Path, flavour: str, registry: str | None, base: str | None = None) -> str:
    """GitHub Actions step outputs for docker/build-push-action: tag, image name, build args.

    Stdlib only (no Docker SDK, no torch): CI computes the same content-addressed tag and labels as
    `reprozoo image build`, and adds SOURCE_DATE_EPOCH, which BuildKit uses for the image's timestamps.
    """
    spec = image_spec(root, flavour, base)
    state = source_state(root)
    args = build_args(spec, state, source_url(root))
    args["SOURCE_DATE_EPOCH"] = str(state.epoch)
    image = f"{registry.rstrip('/')}/{IMAGE_REPO}:{spec.tag}" if registry else spec.ref
    lines = [f"tag={spec.tag}", f"ref={spec.ref}", f"image={image}", "build-args<<REPROZOO_EOF",
             *(f"{key}={value}" for key, value in args.items()), "REPROZOO_EOF"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reprozoo.containers", description="CI helpers (stdlib only)")
    sub = parser.add_subparsers(dest="command", required=True)
    meta = sub.add_parser("ci-meta", help="GitHub step outputs: tag, image, build-args")
    meta.add_argument("--flavour", required=True, choices=FLAVOURS)
    meta.add_argument("--registry")
    meta.add_argument("--base")
    wheels = sub.add_parser("wheelhouse", help="download the flavour lock's wheels (hash-checked)")
    wheels.add_argument("--flavour", required=True, choices=FLAVOURS)
    args = parser.parse_args(argv)
    root = project_root()
    if args.command == "ci-meta":
        sys.stdout.write(ci_meta(root, args.flavour, args.registry, args.base))
    else:
        print(download_wheelhouse(root, args.flavour))
    return 0


if __name__ == "__main__":
    sys.exit(main())
