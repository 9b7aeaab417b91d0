#!/usr/bin/env bash
# Installs helm into .cache/bin (once) and prints its path.
# Helm is not packaged in Debian; it builds from source through the Go module proxy.
# GOPATH and the module cache live under .cache/go so later runs reuse them.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v4.3.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.cache/bin"
helm="$bin/helm"
if [ -x "$helm" ] && "$helm" version --short 2>/dev/null | grep -q "${HELM_VERSION}"; then
  echo "$helm"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "ensure-helm: Go is needed to build helm (go install helm.sh/helm/v4/cmd/helm@${HELM_VERSION})" >&2
  exit 1
fi
mkdir -p "$bin" "$root/.cache/go"
echo "ensure-helm: building helm ${HELM_VERSION} with go install (first time only, a few minutes)" >&2
GOBIN="$bin" GOPATH="$root/.cache/go" GOMODCACHE="$root/.cache/go/mod" GOFLAGS=-mod=mod \
  go install "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}"
echo "$helm"
