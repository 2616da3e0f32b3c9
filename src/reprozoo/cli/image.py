"""`reprozoo image …`: build, push and run the Docker images (reprozoo.containers, stage by stage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from reprozoo.cli.common import call, fail

image_app = typer.Typer(no_args_is_help=True, help="Docker images: build, push, run (Docker SDK).")


FlavourOpt = Annotated[str, typer.Option("--flavour", "-f", help="cpu | cuda")]
BaseOpt = Annotated[str | None, typer.Option("--base", help="base image (default: the flavour's pinned one)")]
ImageOpt = Annotated[str | None, typer.Option("--image", help="image reference (default: this checkout's reprozoo:<flavour>-<hash12>)")]


@image_app.command("tag")
def image_tag(flavour: FlavourOpt = "cpu", base: BaseOpt = None) -> None:
    """Print the content-addressed tag this checkout builds (no engine needed)."""
    from reprozoo.containers.identity import image_spec, project_root

    spec = call(lambda: image_spec(project_root(), flavour, base))
    typer.echo(spec.ref)


@image_app.command("wheelhouse")
def image_wheelhouse(flavour: FlavourOpt = "cpu") -> None:
    """Download the lock's wheels (hash-checked) into docker/wheelhouse/<flavour> for an offline build."""
    from reprozoo.containers.build import download_wheelhouse
    from reprozoo.containers.identity import project_root

    root = call(project_root)
    dest = call(lambda: download_wheelhouse(root, flavour))
    wheels = list(dest.glob("*.whl"))
    typer.echo(f"{dest}: {len(wheels)} wheels, {sum(w.stat().st_size for w in wheels) / 2**20:.0f} MiB")


@image_app.command("build")
def image_build(
    flavour: FlavourOpt = "cpu",
    base: BaseOpt = None,
    wheelhouse: Annotated[bool | None, typer.Option("--wheelhouse/--no-wheelhouse",
                                                   help="install from docker/wheelhouse/<flavour> offline (default: when it holds wheels)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="ignore the engine's layer cache")] = False,
    source: Annotated[str | None, typer.Option(help="org.opencontainers.image.source label")] = None,
) -> None:
    """Build docker/Dockerfile for a flavour; tag reprozoo:<flavour>-<hash12>."""
    from reprozoo.containers.build import build_image
    from reprozoo.containers.identity import project_root

    root = call(project_root)
    result = call(lambda: build_image(root, flavour, base, use_wheelhouse=wheelhouse, no_cache=no_cache, source=source,
                                      log=lambda line: typer.echo(line, err=True)))
    typer.echo(f"image {result.ref} id {result.image_id} ({result.seconds:.0f} s{', all steps cached' if result.cached else ''})")
    if result.state.dirty:
        typer.echo(f"warning: built with uncommitted code (changed tracked files or untracked files under src/): labelled"
                   f" revision {result.state.revision}-dirty, which `reprozoo repro` of a run from commit"
                   f" {result.state.revision[:12]} refuses", err=True)


@image_app.command("push")
def image_push(
    flavour: FlavourOpt = "cpu",
    base: BaseOpt = None,
    image: ImageOpt = None,
    registry: Annotated[str | None, typer.Option(help="e.g. ghcr.io/OWNER or 127.0.0.1:5000 (default: $REPROZOO_REGISTRY)")] = None,
) -> None:
    """Push the image and print its pinned reference, repo@sha256:…"""
    import os

    from reprozoo.containers.engine import client
    from reprozoo.containers.identity import project_root
    from reprozoo.containers.registry import push_image, resolve_local_image

    registry = registry or os.environ.get("REPROZOO_REGISTRY")
    if not registry:
        fail("no registry: pass --registry (e.g. ghcr.io/OWNER) or set REPROZOO_REGISTRY")
    engine = call(client)
    found = call(lambda: resolve_local_image(engine, project_root(), flavour, base, image))
    pinned = call(lambda: push_image(engine, found, str(registry), log=lambda line: typer.echo(line, err=True)))
    typer.echo(pinned)


@image_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def image_run(
    args: Annotated[list[str] | None, typer.Argument(help="the reprozoo command to run inside, after --: train --model …")] = None,
    flavour: FlavourOpt = "cpu",
    base: BaseOpt = None,
    image: ImageOpt = None,
    gpus: Annotated[str, typer.Option("--gpus", help="auto (use GPUs when the host has them) | all | none")] = "auto",
    data_dir: Annotated[Path | None, typer.Option(help="SST-5 trees to mount read-only (default: $REPROZOO_DATA_DIR)")] = None,
    hf_cache: Annotated[Path | None, typer.Option(help="Hugging Face cache to mount (default: $HF_HOME or ~/.cache/huggingface)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where run directories land (mounted at /work/runs)")] = Path("runs"),
    clearml_dir: Annotated[Path | None, typer.Option(help="ClearML home (offline sessions) to mount (default: ~/.clearml)")] = None,
    network: Annotated[str, typer.Option(help="bridge | host | none (none: nothing leaves the container)")] = "bridge",
    shm_size: Annotated[str, typer.Option(help="shared memory for dataloader workers")] = "2g",
    ipc_host: Annotated[bool, typer.Option("--ipc-host", help="share the host's IPC namespace instead of --shm-size")] = False,
    user: Annotated[str | None, typer.Option(help="uid:gid inside (default: the image's non-root user)")] = None,
) -> None:
    """Run a reprozoo command inside the image, with data, HF cache and runs/ mounted."""
    from reprozoo.containers.run import run_command_in_image

    command = list(args or [])
    if not command:
        fail("nothing to run: add the command after --, e.g. `reprozoo image run -- train --model all-minilm-l6-v2`")
    code = call(lambda: run_command_in_image(
        command, flavour=flavour, base=base, image=image, gpus=gpus, data_dir=data_dir, hf_cache=hf_cache,
        runs_dir=runs_dir, clearml_dir=clearml_dir, network=network, shm_size=shm_size, ipc_host=ipc_host, user=user,
        log=lambda line: typer.echo(line, err=True)))
    raise typer.Exit(code)


@image_app.command("identity")
def image_identity() -> None:
    """Print which image (or lock) this process runs in, as the record sees it (JSON)."""
    from reprozoo.containers.identity import runtime_identity

    typer.echo(json.dumps(runtime_identity(), indent=2))
