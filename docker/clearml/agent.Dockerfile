# The ClearML agent daemon of docker/clearml/docker-compose.yml (profile `agent`): clearml-agent from
# its own hash-locked tree (envs/colab-agent.lock, the same lock Colab's worker mode installs) plus
# the docker CLI, which it uses to start each task as a sibling container through the host's socket.
# Build context: the repository root (the compose file sets it). Nothing secret is copied in.
#
# Bases pinned by digest: the python base is the cpu flavour's (docker/Dockerfile); the docker CLI
# image's index digest is the one docker-library/repo-info records for docker:29.6.2-cli
# (repos/docker/remote/29.6.2-cli.md). Neither was pulled here. Its /usr/local/bin/docker is the static
# binary from download.docker.com, so it runs on the Debian base.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
ARG DOCKER_CLI_IMAGE=docker:29.6.2-cli@sha256:be132a9f282288de4afaf63379dff75711fda0147c6b72a9df44e51841402144

FROM ${DOCKER_CLI_IMAGE} AS docker-cli

FROM ${BASE_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY --from=docker-cli /usr/local/bin/docker /usr/local/bin/docker
COPY envs/colab-agent.lock /tmp/agent.lock
# --require-hashes --no-deps: exactly the files the lock names (its hashes cover every wheel of each
# pinned version, so the lock compiled for 3.12 installs on this 3.11 too: all pure Python or abi3).
RUN python3 -m venv /opt/clearml-agent \
    && /opt/clearml-agent/bin/pip install --require-hashes --no-deps -r /tmp/agent.lock \
    && rm /tmp/agent.lock \
    && /opt/clearml-agent/bin/clearml-agent --help > /dev/null \
    && docker --version
COPY docker/clearml/agent.conf /etc/reprozoo/agent.conf
ENV PATH=/opt/clearml-agent/bin:${PATH} \
    CLEARML_CONFIG_FILE=/etc/reprozoo/agent.conf
ENTRYPOINT ["clearml-agent"]
CMD ["--help"]
