#!/usr/bin/env bash
# Installs promtool into .cache/bin (only when missing or another version) and prints its path.
# promtool is built from the Prometheus Go module through the Go module proxy
# (`go install github.com/prometheus/prometheus/cmd/promtool@VERSION`; Prometheus 3.x
# publishes its Go module as v0.3MM.P for release 3.MM.P). GOPATH, the module cache and
# the build cache are shared with scripts/ensure-helm.sh under .cache/go, so a rebuild after
# `rm .cache/bin/promtool` needs no download. It is built with the `remove_all_sd` tag:
# `check rules` and `test rules` need no service discovery, and leaving out the cloud
# SDKs (AWS, Azure, GCE, Kubernetes...) roughly halves the build. The first build takes
# several minutes on 2 cores; later runs return at once.
set -euo pipefail
PROMTOOL_VERSION="${PROMTOOL_VERSION:-v0.316.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.cache/bin"
promtool="$bin/promtool"

# A `go install` build carries no version in `promtool --version` (release builds set it
# by linker flags), so read the module version Go recorded in the binary.
installed_version() {
  go version -m "$1" 2>/dev/null \
    | awk '$1 == "mod" && $2 == "github.com/prometheus/prometheus" { print $3 }'
}

if ! command -v go >/dev/null 2>&1; then
  if [ -x "$promtool" ]; then  # cannot check the version without Go; use what is there
    echo "$promtool"
    exit 0
  fi
  echo "ensure-promtool: Go is needed to build promtool" \
    "(go install github.com/prometheus/prometheus/cmd/promtool@${PROMTOOL_VERSION})" >&2
  exit 1
fi
if [ -x "$promtool" ] && [ "$(installed_version "$promtool")" = "$PROMTOOL_VERSION" ]; then
  echo "$promtool"
  exit 0
fi
mkdir -p "$bin" "$root/.cache/go"
echo "ensure-promtool: building promtool ${PROMTOOL_VERSION} with go install" \
  "(first time only, several minutes)" >&2
GOBIN="$bin" GOPATH="$root/.cache/go" GOMODCACHE="$root/.cache/go/mod" \
  GOCACHE="$root/.cache/go/build" GOFLAGS=-mod=mod \
  go install -tags remove_all_sd "github.com/prometheus/prometheus/cmd/promtool@${PROMTOOL_VERSION}"
echo "$promtool"
