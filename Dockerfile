# The one image of the project: root-orchestrator, cluster-orchestrator, node-engine and
# edgectl are all console scripts of this image; docker-compose.yml and the Helm charts
# pick the program with the container command. See docs/deployment.md.
#
#   docker build -t edge-orchestrator:local .
#   docker build --build-arg BASE_IMAGE=registry.example/python:3.11-slim -t ... .
#
# BASE_IMAGE: any image with Python >= 3.11 and pip on PATH as `python` (Debian's
# python:3.11-slim by default; a locally made base works the same way).
# PIP_INSTALL_ARGS: extra pip arguments, e.g. for a build without network from a base
# image that already holds the dependencies:
#   --build-arg PIP_INSTALL_ARGS="--no-index --no-build-isolation"
# or from a wheelhouse: "--no-index --find-links /wheels" (add the directory to the
# build context first).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG PIP_INSTALL_ARGS=""
ARG EDGE_UID=10001

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Only what the distribution needs (pyproject.toml lists the packages; the readme is
# part of the metadata). Tests, benchmarks and docs stay out (.dockerignore).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY placement ./placement
COPY store ./store
COPY root_orchestrator ./root_orchestrator
COPY cluster_orchestrator ./cluster_orchestrator
COPY node_engine ./node_engine
COPY edgectl ./edgectl

RUN python -m pip install ${PIP_INSTALL_ARGS} /src \
 && rm -rf /src \
 && root-orchestrator --help >/dev/null \
 && cluster-orchestrator --help >/dev/null \
 && node-engine --help >/dev/null \
 && mkdir -p /var/lib/edge /var/lib/edge-node \
 && chown -R "${EDGE_UID}:${EDGE_UID}" /var/lib/edge \
 && chmod 0700 /var/lib/edge-node

# State: the orchestrators' data directory (SQLite stores, generated tokens) and the
# node engine's state directory. Mount volumes here.
WORKDIR /var/lib/edge

# The orchestrators run as an unprivileged user (numeric: no user database needed in
# the base image). node-engine with the docker runtime needs the Docker socket and runs
# as root in docker-compose.yml (`user: "0:0"`).
USER ${EDGE_UID}:${EDGE_UID}

# root-orchestrator 8000, cluster-orchestrator 8100 (their defaults; both listen on
# 127.0.0.1 unless EDGE_HOST=0.0.0.0). The node engine listens on nothing.
EXPOSE 8000 8100

CMD ["root-orchestrator", "--help"]
