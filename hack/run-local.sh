#!/usr/bin/env bash
# Runs Kiln locally, the way a newcomer first meets it: a real control plane (etcd,
# kube-apiserver, kube-controller-manager as local processes), Kiln's CRDs, the examples,
# and the operator. Shows the three examples with their status, then keeps running until
# Ctrl-C, which stops everything.
#
#   KILN_LOCAL_DIR   state directory (default: ~/.cache/kiln/local)
#   KILN_HTTP_ADDR   the operator's HTTP listener (default: 127.0.0.1:8080)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${KILN_LOCAL_DIR:-${KILN_CACHE:-$HOME/.cache/kiln}/local}
addr=${KILN_HTTP_ADDR:-127.0.0.1:8080}

KILN_K8S_BIN=$(hack/k8s-binaries.sh)
export KILN_K8S_BIN
kubectl() { "$KILN_K8S_BIN/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }

hack/control-plane.sh stop "$dir" >/dev/null 2>&1 || true
rm -rf "$dir"
hack/control-plane.sh start "$dir"

operator=
cleanup() {
  [ -n "$operator" ] && kill -TERM "$operator" 2>/dev/null && wait "$operator" 2>/dev/null
  hack/control-plane.sh stop "$dir" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "--- installing the CRDs and the examples" >&2
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established --timeout=60s crd/drafts.kiln.dev crd/jobs.kiln.dev crd/providerconfigs.kiln.dev
kubectl apply -f examples/

echo "--- building and starting the operator" >&2
cargo build --locked --quiet
mkdir -p "$dir/workspace"
KUBECONFIG="$dir/kubeconfig" RUST_LOG=${RUST_LOG:-info} ./target/debug/kiln run \
  --http-addr "$addr" --workspace-dir "$dir/workspace" --lease-namespace default \
  > "$dir/kiln.log" 2>&1 &
operator=$!
for _ in $(seq 1 300); do
  curl -fsS "http://$addr/readyz" >/dev/null 2>&1 && break
  kill -0 "$operator" 2>/dev/null || { cat "$dir/kiln.log"; exit 1; }
  sleep 0.2
done
sleep 3

echo
kubectl get kiln -o wide
cat <<MSG

Kiln is running.
  kubectl:   export KUBECONFIG=$dir/kubeconfig   (binaries in $KILN_K8S_BIN)
  see it:    kubectl get kiln; kubectl describe draft welcome-email; kubectl get cm
  HTTP:      http://$addr/metrics
  logs:      $dir/kiln.log
Press Ctrl-C to stop the operator and the control plane.
MSG
wait "$operator"
