#!/usr/bin/env bash
# Runs Kiln's whole test suite, installing what it needs on a fresh Debian machine:
# formatting, the GitHub Actions workflows (actionlint, built from source like the other
# tools, with shellcheck), clippy, unit tests, integration tests against a real control plane
# (built from source by hack/k8s-binaries.sh and cached outside the repo; the object-store
# tests also against a real S3 server built by hack/object-store.sh), the Argo CD health
# checks, the Helm chart checks, the GitOps suite against a real Argo CD
# (hack/test-gitops.sh), the end-to-end suite on a real node (hack/test-e2e.sh), and a subset
# of the integration tests and the chart checks on the oldest and the newest Kubernetes
# release Kiln claims (hack/test-k8s-versions.sh).
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

# Every Go-built server and tool the steps below need, built from source (cached outside the
# repository; a warm run only checks the caches) in the background, one after the other in
# the order the steps need them, at a low CPU priority (nice 10). Cold, these builds take over an
# hour of CPU; this way they use what the Rust builds and the tests leave idle (module
# downloads, single-threaded link and codegen phases, tests waiting on timers and the API
# server) instead of adding their whole time. Each step still calls its own build script,
# which waits on the same lock or finds the build done: a failed background build is simply
# retried there, in the foreground, and fails that step. Its own session, so that it is
# stopped as a whole if this script ends first.
prebuild_log=$(mktemp "${TMPDIR:-/tmp}/kiln-prebuild.XXXXXX")
# setsid also starts a new scheduling autogroup (Linux, when autogroups are on), and nice
# only ranks processes within their group: the group itself is lowered first, or the chain
# would take half the CPU from the steps.
setsid nice -n 10 bash -c '
  echo 10 >/proc/self/autogroup 2>/dev/null || true
  hack/k8s-binaries.sh >/dev/null
  hack/object-store.sh build >/dev/null
  hack/argocd.sh build >/dev/null
  hack/node-binaries.sh >/dev/null
  hack/test-k8s-versions.sh --build
' >"$prebuild_log" 2>&1 &
prebuild_pid=$!
trap 'kill -- -"$prebuild_pid" 2>/dev/null || true; rm -f "$prebuild_log"' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "GitHub Actions workflows (actionlint)"
hack/lint-workflows.sh

step "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

# The test binaries compile while the background chain is still building the control plane
# (cold, both take minutes), instead of after it.
step "cargo test --no-run"
cargo test --locked --no-run

step "Kubernetes binaries and the S3-compatible object store (MinIO)"
KILN_K8S_BIN=$(hack/k8s-binaries.sh)
export KILN_K8S_BIN
echo "using $KILN_K8S_BIN" >&2
# Each object-store test starts its own server from this build.
hack/object-store.sh build >/dev/null

step "cargo test"
cargo test --locked -- --test-threads=4

# Every parser under random and hostile input for a bounded time (docs/reliability.md); the
# figures of a long run come from `hack/fuzz.sh 600`.
step "fuzz targets (20 s each)"
hack/fuzz.sh 20

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

# The other Kubernetes releases Kiln claims (the oldest and the newest, pinned in
# hack/k8s/<version>/): the CRDs and the API, the operator, each controller's main path and the
# chart, on control planes of those releases. Fails, never skips.
step "other Kubernetes releases (hack/test-k8s-versions.sh)"
hack/test-k8s-versions.sh
if ! wait "$prebuild_pid"; then
  # Everything passed, so the step that needed it built it again: report, do not fail.
  echo "note: the background build failed at first (its log follows); the steps rebuilt it" >&2
  cat "$prebuild_log" >&2
fi

step "all tests passed"
