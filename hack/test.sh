#!/usr/bin/env bash
# Runs Kiln's whole test suite, installing what it needs on a fresh Debian machine:
# formatting, the GitHub Actions workflows (actionlint, built from source like the other
# tools, with shellcheck), clippy, unit tests, integration tests against a real control plane
# (built from source by hack/k8s-binaries.sh and cached outside the repo; the object-store
# tests also against a real S3 server built by hack/object-store.sh), the Argo CD health
# checks, the Helm chart checks, the GitOps suite against a real Argo CD
# (hack/test-gitops.sh), and the end-to-end suite on a real node (hack/test-e2e.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
step() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - start)) >&2; }

step "system packages"
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v lua5.1 >/dev/null || missing+=(lua5.1)
command -v unzip >/dev/null || missing+=(unzip)
command -v zip >/dev/null || missing+=(zip)
command -v python3 >/dev/null || missing+=(python3)
command -v flock >/dev/null || missing+=(util-linux)
command -v curl >/dev/null || missing+=(curl)
command -v go >/dev/null || missing+=(golang-go)
command -v git >/dev/null || missing+=(git)
command -v jq >/dev/null || missing+=(jq)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

step "Kubernetes binaries"
KILN_K8S_BIN=$(hack/k8s-binaries.sh)
export KILN_K8S_BIN
echo "using $KILN_K8S_BIN" >&2

step "S3-compatible object store (MinIO, for tests/object_store.rs)"
# Built once and cached like the Kubernetes binaries; each test starts its own server.
hack/object-store.sh build >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

step "GitHub Actions workflows (actionlint)"
hack/lint-workflows.sh

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked -- --test-threads=4

if [ -x hack/test-argocd-health.sh ]; then
  step "Argo CD health checks (Lua 5.1)"
  hack/test-argocd-health.sh
fi

if [ -x hack/test-chart.sh ]; then
  step "Helm chart"
  hack/test-chart.sh
fi

# Kiln synced by a real Argo CD (built once and cached like the Kubernetes binaries), with
# the operator as a local process. Fails, never skips.
step "GitOps with Argo CD"
hack/test-gitops.sh

# Kiln as a pod on a real node (kubelet, containerd, runc, CNI, kube-proxy), its image built
# from the Dockerfile and installed with the chart. Needs root; fails, never skips.
step "end-to-end on a real node"
hack/test-e2e.sh

step "all tests passed"
