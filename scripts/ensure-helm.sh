#!/usr/bin/env bash
# Installs helm into .cache/bin (only when missing or another version) and prints its path.
# Helm is not packaged in Debian; it builds from source through the Go module proxy
# (`go install helm.sh/helm/v4/cmd/helm@VERSION`). GOPATH, the module cache and the build
# cache live under .cache/go, so a rebuild after `rm .cache/bin/helm` needs no download.
# The first build takes about four minutes on 2 cores; later runs return at once.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v4.3.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.cache/bin"
helm="$bin/helm"

# `helm version` of a `go install` build says only "v4.3" (release builds set the full
# version by linker flags), so read the module version Go recorded in the binary instead.
installed_version() {
  go version -m "$1" 2>/dev/null | awk '$1 == "mod" && $2 == "helm.sh/helm/v4" { print $3 }'
}

if ! command -v go >/dev/null 2>&1; then
  if [ -x "$helm" ]; then  # cannot check the version without Go; use what is there
    echo "$helm"
    exit 0
  fi
  echo "ensure-helm: Go is needed to build helm (go install helm.sh/helm/v4/cmd/helm@${HELM_VERSION})" >&2
  exit 1
fi
if [ -x "$helm" ] && [ "$(installed_version "$helm")" = "$HELM_VERSION" ]; then
  echo "$helm"
  exit 0
fi
mkdir -p "$bin" "$root/.cache/go"
echo "ensure-helm: building helm ${HELM_VERSION} with go install (first time only, a few minutes)" >&2
GOBIN="$bin" GOPATH="$root/.cache/go" GOMODCACHE="$root/.cache/go/mod" \
  GOCACHE="$root/.cache/go/build" GOFLAGS=-mod=mod \
  go install "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}"
echo "$helm"
