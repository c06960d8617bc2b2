#!/usr/bin/env bash
# Runs Kiln's whole test suite, installing what it needs on a fresh Debian machine:
# formatting, clippy, unit tests, integration tests against a real control plane (built
# from source by hack/k8s-binaries.sh and cached outside the repo; the object-store tests also
# against a real S3 server built by hack/object-store.sh), the Argo CD health checks, the Helm
# chart checks, a subset of the integration tests and the chart checks on the oldest and the
# newest Kubernetes release Kiln claims (hack/test-k8s-versions.sh), and the end-to-end suite
# on a real node (hack/test-e2e.sh).
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

# The binaries of the other Kubernetes releases (tested in the last step) build meanwhile, in
# the background at the lowest CPU priority: a cold build of each takes ~20 CPU-minutes, and
# this way it uses the cores the steps below leave idle (waits in the integration and
# end-to-end tests, single-threaded compile phases) instead of adding its own time at the end.
# Its own session, so that it can be stopped as a whole if this script ends first.
releases_log=$(mktemp "${TMPDIR:-/tmp}/kiln-k8s-releases-build.XXXXXX")
setsid nice -n 19 hack/test-k8s-versions.sh --build >"$releases_log" 2>&1 &
releases_pid=$!
trap 'kill -- -"$releases_pid" 2>/dev/null || true; rm -f "$releases_log"' EXIT

step "S3-compatible object store (MinIO, for tests/object_store.rs)"
# Built once and cached like the Kubernetes binaries; each test starts its own server.
hack/object-store.sh build >/dev/null

step "cargo fmt --check"
cargo fmt --all -- --check

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

# Kiln as a pod on a real node (kubelet, containerd, runc, CNI, kube-proxy), its image built
# from the Dockerfile and installed with the chart. Needs root; fails, never skips.
step "end-to-end on a real node"
hack/test-e2e.sh

# The other Kubernetes releases Kiln claims (the oldest and the newest, pinned in
# hack/k8s/<version>/): the CRDs and the API, the operator, each controller's main path and the
# chart, on control planes of those releases. Fails, never skips.
step "other Kubernetes releases (hack/test-k8s-versions.sh)"
if ! wait "$releases_pid"; then
  cat "$releases_log" >&2
  echo "building the other Kubernetes releases failed (log above)" >&2
  exit 1
fi
tail -n 3 "$releases_log" >&2
hack/test-k8s-versions.sh

step "all tests passed"
