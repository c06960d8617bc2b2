#!/usr/bin/env bash
# Runs Kiln locally, the way a newcomer first meets it: a real control plane (etcd,
# kube-apiserver, kube-controller-manager as local processes), Kiln's CRDs, the examples,
# and the operator. Shows the three examples with their status, then keeps running until
# Ctrl-C, which stops everything.
#
#   hack/run-local.sh                the operator as a local process
#   hack/run-local.sh --in-cluster   the operator as a pod, as users run it (needs root): a real
#                                    node joins the control plane (hack/node.sh), the image is
#                                    built from the Dockerfile (hack/image.sh) and installed
#                                    with the Helm chart
#
#   KILN_LOCAL_DIR   state directory (default: ~/.cache/kiln/local)
#   KILN_HTTP_ADDR   the operator's HTTP listener (default: 127.0.0.1:8080; local mode only)
set -euo pipefail
cd "$(dirname "$0")/.."

in_cluster=0
case ${1:-} in
  "") ;;
  --in-cluster) in_cluster=1 ;;
  *) echo "usage: $0 [--in-cluster]" >&2; exit 2 ;;
esac

dir=${KILN_LOCAL_DIR:-${KILN_CACHE:-$HOME/.cache/kiln}/local}
addr=${KILN_HTTP_ADDR:-127.0.0.1:8080}

KILN_K8S_BIN=$(hack/k8s-binaries.sh)
export KILN_K8S_BIN
kubectl() { "$KILN_K8S_BIN/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }

if [ $in_cluster = 1 ] && [ "$(id -u)" -ne 0 ]; then
  echo "--in-cluster starts a kubelet, containerd and runc: run it as root" >&2
  exit 1
fi
hack/node.sh stop "$dir" >/dev/null 2>&1 || true
hack/control-plane.sh stop "$dir" >/dev/null 2>&1 || true
rm -rf "$dir"
hack/control-plane.sh start "$dir"

operator=
cleanup() {
  [ -n "$operator" ] && kill -TERM "$operator" 2>/dev/null && wait "$operator" 2>/dev/null
  [ $in_cluster = 0 ] || hack/node.sh stop "$dir" >/dev/null 2>&1 || true
  hack/control-plane.sh stop "$dir" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ $in_cluster = 1 ]; then
  echo "--- joining a node (kubelet, containerd, runc, CNI, kube-proxy)" >&2
  hack/node.sh start "$dir"
  echo "--- building Kiln's image (buildah) and loading it into the node" >&2
  image=$(hack/image.sh "$dir" | tail -n 1)
  echo "--- helm install kiln ($image)" >&2
  "$KILN_K8S_BIN/helm" --kubeconfig "$dir/kubeconfig" install kiln charts/kiln -n kiln-system --create-namespace \
    --set "image.repository=${image%:*}" --set "image.tag=${image##*:}" --set image.pullPolicy=Never \
    --wait --timeout 5m
  kubectl apply -f examples/
  kubectl wait --for=condition=Ready --timeout=120s draft/welcome-email job.kiln.dev/hello-world providerconfig/openai-main || true
  echo
  kubectl get nodes -o wide
  kubectl -n kiln-system get pods -o wide
  kubectl get kiln -o wide
  cat <<MSG

Kiln runs as a pod (image $image) on node kiln-node.
  kubectl:   export KUBECONFIG=$dir/kubeconfig   (binaries in $KILN_K8S_BIN)
  see it:    kubectl -n kiln-system logs deploy/kiln; kubectl get kiln
  logs:      $dir/logs (control plane, containerd, kubelet, kube-proxy)
Press Ctrl-C to stop the node and the control plane.
MSG
  while :; do sleep 3600 & wait $!; done # wait: a signal interrupts it, sleep would not
fi

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
