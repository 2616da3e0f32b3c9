#!/usr/bin/env bash
# `make lock`: every lock in envs/ from pyproject.toml, with one resolver (uv) and sha256 hashes.
#
#   envs/cpu.lock    image flavour cpu   CPython 3.11 (Debian bookworm), torch 2.13.0+cpu
#   envs/cuda.lock   image flavour cuda  CPython 3.11 (Debian bookworm, the cpu flavour's base), torch 2.13.0 CUDA build
#                    (PyPI's torch brings the CUDA runtime, cuDNN, cuBLAS, NCCL as nvidia-* wheels; the host only the driver)
#   envs/colab.lock  Colab: what it needs on top of Colab's preinstalled torch (CPython 3.12)
#   envs/colab-agent.lock  Colab worker mode: clearml-agent, installed in a venv of its own
#   envs/cpu.txt     plain constraints (no hashes, dev tools included) for `make setup`
#
# Images install a lock with `pip install --require-hashes --no-deps -r envs/<flavour>.lock`:
# no resolver runs at build time, and a wheel whose sha256 is not in the lock is refused.
#
# Where torch comes from (uv reads no pip.conf, so the source is explicit):
#   TORCH_CPU_SOURCE  the +cpu wheel: default `--find-links /opt/wheels` (this machine's wheelhouse);
#                     elsewhere `--index https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match`.
#   CUDA_TORCH_SOURCE empty: PyPI's torch 2.13.0, which is built against CUDA 13.0 (its nvidia-*-cu13 wheels);
#                     for a CUDA 12.x build: `--index https://download.pytorch.org/whl/cu128 --index-strategy unsafe-best-match`
#                     (the host's driver must then support CUDA 12.8 instead of 13.0).
#
# Nothing moves that pyproject.toml did not move: each compile starts from the lock it replaces
# (uv pip compile prefers the versions already in its output file), so a newer release on PyPI
# enters only with `UPGRADE=1 make lock` (or UPGRADE=<package>).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
TORCH_CPU_SOURCE=${TORCH_CPU_SOURCE:---find-links /opt/wheels}
CUDA_TORCH_SOURCE=${CUDA_TORCH_SOURCE:-}
PLATFORM=x86_64-manylinux_2_28
common=(--python-platform "$PLATFORM" --custom-compile-command "make lock" --quiet)
case ${UPGRADE:-} in
    "") ;;
    1) common+=(--upgrade) ;;
    *) common+=(--upgrade-package "$UPGRADE") ;;
esac

seed() {  # seed OLD OUT: OLD's pins (its reprozoo header dropped) as OUT's content, uv's preferences
    if [ -f "$1" ]; then grep -v '^# reprozoo-lock ' "$1" > "$2"; fi
}

compile() {  # compile NAME PYTHON [uv args...]: write envs/NAME.lock with a header the Dockerfile checks
    local name=$1 python=$2
    shift 2
    local body
    body=$(mktemp)
    seed "envs/$name.lock" "$body"
    # shellcheck disable=SC2086
    "$UV" pip compile "${common[@]}" --python-version "$python" --generate-hashes "$@" -o "$body"
    { echo "# reprozoo-lock name=$name python=$python platform=$PLATFORM"; cat "$body"; } > "envs/$name.lock"
    rm -f "$body"
    echo "envs/$name.lock: $(grep -c '^[A-Za-z0-9]' "envs/$name.lock") packages, sha256 $(sha256sum "envs/$name.lock" | cut -c1-12)"
}

# shellcheck disable=SC2086
compile cpu 3.11 pyproject.toml envs/build.in $TORCH_CPU_SOURCE
# The other locks take the cpu lock's versions as constraints: every flavour runs the same numpy,
# transformers, ... (only torch's build and its CUDA libraries differ), even where a newer release
# exists for their Python (numpy 2.5 and scipy 1.18 dropped 3.11). torch without its local label:
# the cuda lock's torch is the same release, built for CUDA.
mkdir -p build && same=build/cpu-pins.txt
grep -oE '^[A-Za-z0-9._-]+==[^ ]+' envs/cpu.lock | sed 's/^\(torch==[^+]*\)+.*$/\1/' > "$same"
# shellcheck disable=SC2086
compile cuda 3.11 pyproject.toml envs/build.in $CUDA_TORCH_SOURCE --constraint "$same"
# Colab brings its own torch (and the CUDA libraries under it): leave them out, pin the rest.
skip=(--no-emit-package torch --no-emit-package triton)
for name in $(grep -oE '^(nvidia|cuda)-[a-z0-9-]+' envs/cuda.lock); do skip+=(--no-emit-package "$name"); done
compile colab 3.12 pyproject.toml "${skip[@]}" --constraint "$same"
# The ClearML agent for Colab's worker mode lives in its own venv (it pins requests<2.33 and
# setuptools<82, older than the training tree): its own lock, outside the run's dependencies.
compile colab-agent 3.12 envs/colab-agent.in
rm -f "$same"

# make setup's constraints: the cpu resolution without hashes, plus the dev tools and the bench extra, torch without its
# local version label (make setup installs `torch==2.13.0` from wherever pip finds the CPU build).
# Seeded like the locks: the old constraints (torch with its label again, as the find-links wheel has it).
pins=build/cpu-txt.pins
grep -v '^#' envs/cpu.txt | sed 's/^torch==\([^+]*\)$/torch==\1+cpu/' > "$pins"
# shellcheck disable=SC2086
"$UV" pip compile "${common[@]}" --python-version 3.11 --extra dev --extra bench --no-header --no-annotate \
    pyproject.toml $TORCH_CPU_SOURCE -o "$pins" >/dev/null
{ head -2 envs/cpu.txt; sed 's/^torch==\(.*\)+cpu$/torch==\1/' "$pins"; } > build/cpu.txt && mv build/cpu.txt envs/cpu.txt
rm -f "$pins"
echo "envs/cpu.txt: $(grep -c '==' envs/cpu.txt) constraints"
