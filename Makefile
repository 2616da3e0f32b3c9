# reprozoo: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= all-minilm-l6-v2
# make sweep: all | family:<f> | name,name,…
MODELS ?= all
# The real SST-5 trees live beside the checkout; override with DATA_DIR=... or REPROZOO_DATA_DIR.
DATA_DIR ?= $(or $(REPROZOO_DATA_DIR),$(abspath ../shared/data/sst5/trees))
ARGS ?=
PYTEST_ARGS ?=
# Three pytest processes on CI's 2 cores: the server tests and the container tests wait on agents,
# builds and servers most of the time (with two processes the cores were 1.4 busy on average), the
# third trains meanwhile (tests/conftest.py groups and orders them). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --no-loadscope-reorder)
# Torch's OpenMP threads sleep instead of spinning while they wait: two trainings side by side on
# 2 cores took 140 s each spinning, 87 s each sleeping (one alone: 74 s, 64 s); same numerics.
TEST_ENV := OMP_WAIT_POLICY=PASSIVE
STAMP := $(VENV)/.installed

export REPROZOO_DATA_DIR := $(DATA_DIR)

.PHONY: help setup train repro sweep leaderboard test test-fast lint models data-stats bench bench-quick bench-startup bench-budget-accuracy bench-accuracy bench-gpu lock wheelhouse image push run engine clean \
	hpo agent clearml-server clearml-server-down pin-clearml

# Containers (docker/Dockerfile): FLAVOUR cpu|cuda, BASE another base image, REGISTRY for push.
FLAVOUR ?= cpu
BASE ?=
REGISTRY ?= $(or $(REPROZOO_REGISTRY),127.0.0.1:5000)
UV_VERSION ?= 0.13.9
UV := $(VENV)/bin/uv

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: MODEL=$(MODEL) DATA_DIR=$(DATA_DIR) ARGS='extra reprozoo train flags'"

setup: $(STAMP) ## create .venv and install reprozoo with pinned dependencies (CPU torch)

$(STAMP): pyproject.toml envs/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# dev: the test tools; bench: accelerate, which the benchmark's HF Trainer baselines need (reprozoo and
	# its images do not). envs/cpu.txt pins both, so this venv is what a record names as envs/cpu.txt.
	$(PY) -m pip install --quiet -c envs/cpu.txt -e '.[dev,bench]'
	@touch $@

train: setup ## train MODEL on SST-5 (ClearML offline unless a server is configured); ARGS='--max-epochs 1 ...'
	$(VENV)/bin/reprozoo train --model $(MODEL) $(ARGS)

repro: setup ## re-run a recorded task exactly (its image by digest, or commit + diff): make repro TASK=<id> [ARGS=--verify]
	@test -n "$(TASK)" || { echo "usage: make repro TASK=<task id | run dir | session zip> [ARGS='--verify --no-image']"; exit 2; }
	$(VENV)/bin/reprozoo repro $(TASK) $(ARGS)

sweep: setup ## train MODELS (all | family:<f> | a,b,c) here, one after another; ARGS='--dry-run', '--queue Q --image REF@sha256:…', '--set k=v'
	$(VENV)/bin/reprozoo sweep --models $(MODELS) $(ARGS)

leaderboard: setup ## every finished run, best test accuracy first → leaderboard/ (md, csv, html, png); ARGS='--server --project P'
	$(VENV)/bin/reprozoo leaderboard $(ARGS)

test: setup ## run the whole test suite (what CI runs), in TEST_WORKERS processes; the server tests need REPROZOO_TEST_CLEARML_CONF or the images of `make clearml-server`, else they skip and say why
	$(TEST_ENV) $(PY) -m pytest -q -rfEs $(XDIST) $(PYTEST_ARGS)

test-fast: setup ## the suite without slow tests
	$(TEST_ENV) $(PY) -m pytest -q -rfEs -m "not slow" $(XDIST) $(PYTEST_ARGS)

lint: setup ## ruff, and lint-imports: the layers and no import cycle (pyproject.toml [tool.importlinter])
	$(VENV)/bin/ruff check src tests bench
	PYTHONPATH=src $(VENV)/bin/lint-imports --no-cache

models: setup ## list the model zoo
	$(VENV)/bin/reprozoo models

data-stats: setup ## class distribution table + bar chart (class_distribution.png)
	$(VENV)/bin/reprozoo data stats

bench: setup ## throughput vs HF Trainer (A: pad 128, B: group_by_length): 8,192 phrases + 2,048 sentences per system, ~10 min idle [ARGS=--full-epoch: + a real phrase epoch of ours]
	$(PY) bench/throughput.py $(ARGS)

bench-quick: setup ## the same on 4,096 phrases + 1,024 sentences (~6 min idle), sized so its ratios predict the full run's
	$(PY) bench/throughput.py --quick $(ARGS)

bench-startup: setup ## launch -> first optimiser step: a fresh `reprozoo train`, runs in one process (sweep items, HPO trials), against the import floor (~3 min)
	$(PY) bench/startup.py $(ARGS)

bench-budget-accuracy: setup ## dev accuracy of token-budget vs fixed batches after the same 6,400 phrases, 3 seeds (~8 min) [ARGS=--lr-scale 2]
	$(PY) bench/budget_accuracy.py $(ARGS)

bench-gpu: setup ## the device script (needs a GPU; ≤10 min): CUDA stack, timed bf16 MiniLM, determinism, fp16+clip, throughput [ARGS=--compile|--prepare|--wiring]
	PYTHON=$(PY) bench/gpu.sh $(ARGS)

bench-accuracy: setup ## accuracy benchmark: MODEL's zoo recipe on full SST-5 (2 CPU cores: MiniLM ~20 min, MODEL=all-mpnet-base-v2 ~60 min)
	$(PY) bench/accuracy.py --model $(MODEL) $(ARGS)

lock: $(UV) ## regenerate envs/{cpu,cuda,colab}.lock (uv, sha256 hashes) and envs/cpu.txt from pyproject.toml
	UV=$(UV) envs/lock.sh

$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)

wheelhouse: setup ## download the wheels of envs/$(FLAVOUR).lock (hash-checked) for an offline image build
	$(VENV)/bin/reprozoo image wheelhouse --flavour $(FLAVOUR)

image: setup ## build the image FLAVOUR=cpu|cuda [BASE=image] (tag reprozoo:<flavour>-<hash12>)
	$(VENV)/bin/reprozoo image build --flavour $(FLAVOUR) $(if $(BASE),--base $(BASE))

push: setup ## push the FLAVOUR image to REGISTRY and print repo@sha256:...
	$(VENV)/bin/reprozoo image push --flavour $(FLAVOUR) --registry $(REGISTRY)

run: setup ## train MODEL inside the FLAVOUR image (data, HF cache, runs/ mounted); ARGS='--max-epochs 1 ...'
	$(VENV)/bin/reprozoo image run --flavour $(FLAVOUR) -- train --model $(MODEL) $(ARGS)

# Hyperparameter search and the ClearML engine (docker/clearml/). QUEUE: the queue an agent serves,
# and, given on the command line, the queue `make hpo` sends its trials to (else they run here).
SPACE ?= lr=1e-5:1e-4:log,batch_size=16|32,warmup=0:0.2,dropout=0:0.3
TRIALS ?= 10
QUEUE ?= gpu
IMAGE ?= $(REPROZOO_IMAGE)
GPUS ?= all
AGENT ?=
AGENT_VENV ?= .agent-venv
# The agent's settings (docker/clearml/agent.conf); another file for another setup (e.g. a test setup).
AGENT_CONF ?= $(CLEARML_DIR)/agent.conf
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
CLEARML_DIR := docker/clearml
# The server's settings (a copy of env.example); the server tests hand in one of their own.
CLEARML_ENV ?= $(CLEARML_DIR)/.env
CLEARML_COMPOSE = $(COMPOSE) --env-file $(abspath $(CLEARML_ENV)) -f $(CLEARML_DIR)/docker-compose.yml

hpo: setup ## search MODEL's hyperparameters by dev macro-F1: SPACE='lr=1e-5:1e-4:log,…' TRIALS=10 [QUEUE=gpu: on agents] ARGS='…'
	$(VENV)/bin/reprozoo hpo --model $(MODEL) --space '$(SPACE)' --trials $(TRIALS) \
	    $(if $(filter command line environment,$(origin QUEUE)),--queue $(QUEUE),--local) $(ARGS)

agent: ## serve QUEUE (default gpu) from this GPU host: clearml-agent (envs/colab-agent.lock) in docker mode, IMAGE=repo@sha256:…
	@test -n "$(IMAGE)" || { echo "make agent: set IMAGE=<registry>/reprozoo@sha256:... (what make push prints) or REPROZOO_IMAGE" >&2; exit 2; }
	@test -n "$$CLEARML_API_HOST" && test -n "$$CLEARML_API_ACCESS_KEY" && test -n "$$CLEARML_API_SECRET_KEY" || \
	    { echo "make agent: set CLEARML_API_HOST, CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY in the environment" >&2; exit 2; }
	test -x $(AGENT_VENV)/bin/clearml-agent || { $(PYTHON) -m venv $(AGENT_VENV) && \
	    $(AGENT_VENV)/bin/pip install --quiet --require-hashes --no-deps -r envs/colab-agent.lock; }
	CLEARML_CONFIG_FILE=$(abspath $(AGENT_CONF)) $(AGENT_VENV)/bin/clearml-agent daemon --queue $(QUEUE) \
	    --create-queue --docker $(IMAGE) --gpus $(GPUS) --force-current-version --foreground

clearml-server: ## self-hosted ClearML server (docker/clearml/docker-compose.yml, settings in CLEARML_ENV=docker/clearml/.env); AGENT=1 adds a GPU agent
	@test -f $(CLEARML_ENV) || { echo "make clearml-server: copy $(CLEARML_DIR)/env.example to $(CLEARML_ENV) and fill it in" >&2; exit 2; }
	@set -a; . $(CLEARML_ENV); set +a; test -z "$(AGENT)" || { test -n "$$REPROZOO_IMAGE" && test -n "$$CLEARML_HOST_IP" && \
	    test -n "$$CLEARML_AGENT_ACCESS_KEY" && test -n "$$CLEARML_AGENT_SECRET_KEY"; } || \
	    { echo "make clearml-server AGENT=1: set REPROZOO_IMAGE, CLEARML_HOST_IP, CLEARML_AGENT_ACCESS_KEY, CLEARML_AGENT_SECRET_KEY in $(CLEARML_ENV)" >&2; exit 2; }
	$(if $(AGENT),COMPOSE_PROFILES=agent) $(CLEARML_COMPOSE) up -d $(if $(AGENT),--build)

clearml-server-down: ## stop the server `make clearml-server` started (its data stay in CLEARML_DATA)
	$(CLEARML_COMPOSE) --profile agent down

pin-clearml: ## pin every image of docker/clearml/ by digest (docker buildx imagetools inspect; needs registry access)
	$(PYTHON) $(CLEARML_DIR)/pin_images.py

engine: ## start a Docker engine (dockerd) when none answers (root; used by .ci/run)
	docker/engine.sh start

clean: ## remove caches and build outputs (keeps runs/ and .venv)
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info class_distribution.png
