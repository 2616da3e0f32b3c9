"""Images: build, push and run reprozoo in Docker, with the Docker SDK, one module per stage.

An image is identified three ways, from the cheapest to the strongest:

- its **tag** `reprozoo:<flavour>-<hash12>`, content-addressed from the Dockerfile, the flavour's
  lock, the project version and the base image reference: the same inputs give the same tag on
  any machine, before anything is built;
- its **image id** (the sha256 of its config): what this engine built;
- its **repo digest** `repo@sha256:…` (the sha256 of the pushed manifest): known only after a push,
  the identity a record pins and `docker pull` verifies.

The stages, each imported on its own (`from reprozoo.containers import registry`):

- `identity`: tag, lock, project version, build args, source state, and which image this process
  runs in (`runtime_identity`); standard library only, so CI computes tags without the SDK;
- `engine`: the Docker SDK client, image lookup, GPU detection;
- `build`: the wheelhouse, the build context, `build_image`;
- `registry`: push, pull by digest, repo digests, `ensure_image`;
- `run`: a container's plan (mounts, environment, GPUs) and the run itself;
- `audit`: where a credential could hide in an image;
- `__main__`: `python -m reprozoo.containers ci-meta|wheelhouse`, the stdlib-only CI helper.

Credentials reach a container only at run time, from the host's environment; a build never sees them.
"""
