#!/usr/bin/env bash
# A real node for the control plane of hack/control-plane.sh: containerd (with runc and the
# CNI plugins bridge, host-local, loopback and portmap), kubelet and kube-proxy, plus the
# pieces a control plane needs only once it has a node (kube-scheduler; the Deployment,
# ReplicaSet, EndpointSlice, root-CA publisher, pod GC and node lifecycle controllers in a
# second kube-controller-manager). Everything runs as local processes; all state is under
# DIR/node, logs in DIR/logs. See docs/testing.md.
#
#   hack/node.sh start DIR     join a node to the control plane started in DIR; returns once
#                              `kubectl get nodes` shows it Ready (needs root)
#   hack/node.sh stop DIR      stop it, remove its pods, mounts, network and firewall rules
#   hack/node.sh status DIR    exit 0 if the node's processes run and the node is Ready
#
# Network. Only addresses this script creates are ever used: a bridge (kiln0) that holds the
# node address 10.88.0.1/24 and the pods' veths (10.88.0.0/24); Services (10.0.0.0/24, the
# control plane's range) are routed to the bridge and translated by kube-proxy. A firewall
# chain drops anything forwarded between the bridge and any other interface, so no packet of
# a pod ever leaves this machine; pods get no DNS servers. The API server listens on loopback
# only; a relay (socat) on 10.88.0.1 carries pods' connections to it, and the `kubernetes`
# Service gets an EndpointSlice naming that relay. One node per machine at a time.
#
# Binaries: $KILN_NODE_BIN (else hack/node-binaries.sh builds them) and the control plane's.
# Environment: KILN_NODE_TIMEOUT=180 (seconds to wait for each step).
set -euo pipefail

hack=$(cd "$(dirname "$0")" && pwd)
node_name=kiln-node
bridge=kiln0
node_ip=10.88.0.1
pod_cidr=10.88.0.0/24
service_cidr=10.0.0.0/24 # hack/control-plane.sh's --service-cluster-ip-range
guard_chain=KILN-NODE-GUARD
cache=${KILN_CACHE:-$HOME/.cache/kiln}
timeout=${KILN_NODE_TIMEOUT:-180}

log() { echo "node: $*" >&2; }
usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2
[ -n "$dir" ] || usage

components=(containerd apiserver-relay kube-scheduler node-controllers kubelet kube-proxy)

resolve() {
  [ -d "$dir" ] || { log "$dir does not exist: start a control plane first (hack/control-plane.sh start $dir)"; exit 1; }
  dir=$(cd "$dir" && pwd -P)
  nd=$dir/node
  sock=$nd/run/containerd/containerd.sock
}

lock() {
  mkdir -p "$dir"
  exec 9>"$dir/.node.lock"
  flock -w 300 9 || { log "timed out waiting for another start/stop on $dir"; exit 1; }
}

# Processes of this node: recorded in DIR/node/pids ("name pid"), checked against their
# command line, which always names a path under DIR/node (no reused pid is ever killed).
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qF "$nd/"; }
pid_of() { # name
  local n p
  [ -f "$nd/pids" ] || return 0
  while read -r n p; do
    if [ "$n" = "$1" ] && ours "$p"; then echo "$p"; fi
  done <"$nd/pids"
}
alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

launch() { # name command...
  local name=$1; shift
  local logf=$dir/logs/$name.log
  printf '=== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$logf"
  setsid "$@" </dev/null >>"$logf" 2>&1 9>&- &
  launched=$!
  echo "$name $launched" >>"$nd/pids"
}

fail() { # name message
  log "$2"
  [ -f "$dir/logs/$1.log" ] && { log "last lines of $dir/logs/$1.log:"; tail -n 30 "$dir/logs/$1.log" >&2; }
  exit 1
}

wait_for() { # pid what check...
  local pid=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 2
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

kubectl() { "$k8s_bin/kubectl" --kubeconfig "$dir/kubeconfig" --request-timeout=10s "$@"; }

# --- certificates and kubeconfigs, signed by the control plane's CA -------------------------
client_cert() { # name subject
  local pki=$nd/pki
  [ -s "$pki/$1.crt" ] && return 0
  mkdir -p "$pki"
  (
    umask 077
    cd "$pki"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc -subj "$2" \
      -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$dir/pki/ca.crt" -CAkey "$dir/pki/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  )
}
kubeconfig_for() { # name -> $nd/name.kubeconfig
  local server
  server=$(sed -n 's/^KILN_APISERVER_URL=//p' "$dir/ports")
  (umask 077 && cat >"$nd/$1.kubeconfig") <<EOF
apiVersion: v1
kind: Config
clusters: [{name: kiln, cluster: {server: "$server", certificate-authority: "$dir/pki/ca.crt"}}]
users: [{name: $1, user: {client-certificate: "$nd/pki/$1.crt", client-key: "$nd/pki/$1.key"}}]
contexts: [{name: kiln, context: {cluster: kiln, user: $1}}]
current-context: kiln
EOF
}

# --- network ----------------------------------------------------------------------------------
sysctl_set() { # key value: remember the first value seen, restored by stop
  local key=$1 value=$2 old
  old=$(sysctl -n "$key")
  grep -q "^$key " "$nd/sysctl.saved" 2>/dev/null || echo "$key $old" >>"$nd/sysctl.saved"
  [ "$old" = "$value" ] || sysctl -qw "$key=$value"
}

net_up() {
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
  fi
  ip addr replace "$node_ip/24" dev "$bridge"
  ip link set "$bridge" up
  # Service addresses never follow the default route: when no kube-proxy rule translates
  # one (yet), the packet goes to the bridge, where nothing answers.
  ip route replace "$service_cidr" dev "$bridge" src "$node_ip"
  # Pods reach each other and Services through the host: forwarding, limited by the guard.
  iptables -w -N "$guard_chain" 2>/dev/null || iptables -w -F "$guard_chain"
  iptables -w -A "$guard_chain" -i "$bridge" ! -o "$bridge" -j DROP
  iptables -w -A "$guard_chain" -o "$bridge" ! -i "$bridge" -j DROP
  iptables -w -C FORWARD -j "$guard_chain" 2>/dev/null || iptables -w -I FORWARD 1 -j "$guard_chain"
  sysctl_set net.ipv4.ip_forward 1
  # Replies between two pods on the bridge must pass conntrack, or a pod that reached a
  # Service address would see the answer come from the other pod's own address.
  sysctl_set net.bridge.bridge-nf-call-iptables 1
}

net_down() {
  ip route del "$service_cidr" dev "$bridge" 2>/dev/null || true
  ip link del "$bridge" 2>/dev/null || true
  while iptables -w -D FORWARD -j "$guard_chain" 2>/dev/null; do :; done
  iptables -w -F "$guard_chain" 2>/dev/null || true
  iptables -w -X "$guard_chain" 2>/dev/null || true
}

# --- images -----------------------------------------------------------------------------------
# No registry is reachable, so the sandbox ("pause") image is made here: busybox from Debian's
# busybox-static, sleeping. containerd pins it, so the kubelet's image GC never removes it.
pause_image=localhost/kiln-pause:busybox-1
bah() { buildah --root "$cache/buildah/storage" --runroot "$cache/buildah/run" --storage-driver vfs "$@"; }
import_pause_image() {
  local busybox archive c
  busybox=$(command -v busybox) || { log "busybox is required: apt-get install busybox-static"; exit 1; }
  if ldd "$busybox" >/dev/null 2>&1; then
    log "$busybox is linked dynamically; the sandbox image needs the static one: apt-get install busybox-static"
    exit 1
  fi
  command -v buildah >/dev/null || { log "buildah is required: apt-get install buildah"; exit 1; }
  mkdir -p "$cache/buildah"
  archive=$nd/pause.oci.tar
  (
    exec 8>"$cache/buildah/.lock"
    flock 8
    if ! bah inspect --type image "$pause_image" >/dev/null 2>&1; then
      c=$(bah from --quiet scratch)
      # busybox picks the applet by its own name, so it keeps the name busybox.
      bah copy --quiet "$c" "$busybox" /busybox >/dev/null
      bah config --entrypoint '["/busybox","sleep","2147483647"]' --user 65535:65535 "$c"
      bah commit --quiet --rm "$c" "$pause_image" >/dev/null
    fi
    rm -f "$archive"
    bah push --quiet "$pause_image" "oci-archive:$archive:$pause_image" >/dev/null
  )
  "$bin/ctr" --address "$sock" -n k8s.io images import --base-name "${pause_image%:*}" "$archive" >/dev/null
  rm -f "$archive"
}

# --- start ------------------------------------------------------------------------------------
start() {
  local t0=$SECONDS rc p
  [ "$(id -u)" -eq 0 ] || { log "a node needs root (kubelet, containerd and runc manage mounts, cgroups and network namespaces)"; exit 1; }
  [ -s "$dir/ports" ] && [ -s "$dir/pki/ca.key" ] || { log "no control plane in $dir: run hack/control-plane.sh start $dir first"; exit 1; }
  for p in ip iptables iptables-restore sysctl openssl socat buildah busybox mount; do
    command -v "$p" >/dev/null || { log "$p is required: apt-get install iproute2 iptables procps openssl socat buildah busybox-static mount"; exit 1; }
  done
  k8s_bin=$(sed -n 's/^KILN_K8S_BIN=//p' "$dir/ports")
  k8s_bin=${k8s_bin//\\/}
  bin=${KILN_NODE_BIN:-}
  [ -n "$bin" ] || bin=$("$hack/node-binaries.sh") || { log "hack/node-binaries.sh failed"; exit 1; }
  for p in kubelet kube-proxy kube-scheduler containerd containerd-shim-runc-v2 ctr runc cni/bridge cni/host-local cni/loopback cni/portmap; do
    [ -x "$bin/$p" ] || { log "$bin/$p is missing: export KILN_NODE_BIN=\$(hack/node-binaries.sh)"; exit 1; }
  done
  [ -x "$k8s_bin/kube-controller-manager" ] || { log "no kube-controller-manager in $k8s_bin"; exit 1; }
  local owner
  owner=$(cat "$cache/node.current" 2>/dev/null || true)
  if [ -n "$owner" ] && [ "$owner" != "$dir" ] && [ -d "$owner/node" ] && [ -n "$(dir=$owner; nd=$owner/node; pid_of kubelet)" ]; then
    log "a node of $owner runs on this machine (one at a time): hack/node.sh stop $owner"
    exit 1
  fi
  for p in "${components[@]}"; do
    [ -z "$(pid_of "$p")" ] || { log "$p already runs for $dir; run: $0 stop $dir"; exit 1; }
  done

  trap 'rc=$?; trap - EXIT; if [ $rc -ne 0 ]; then log "start failed; stopping what was started"; stop_all; fi; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  mkdir -p "$nd"/{run/containerd,containerd,kubelet,pod-logs,cni/net.d,cni/ipam,volume-plugins} "$dir/logs"
  rm -f "$nd/pids"
  mkdir -p "$cache"
  echo "$dir" >"$cache/node.current"
  "$bin/kube-proxy" --version >&2 2>/dev/null || true
  log "kubelet $("$bin/kubelet" --version 2>/dev/null | awk '{print $2}'), containerd $("$bin/containerd" --version | awk '{print $3}'), runc $("$bin/runc" --version | awk 'NR==1{print $3}'), CNI plugins $("$bin/cni/bridge" 2>&1 | awk '{print $NF; exit}')"

  net_up

  # containerd: CRI with runc (BinaryName), cgroupfs, CNI from the node's directories.
  # restrict_oom_score_adj: this machine's root may not lower oom_score_adj (no
  # CAP_SYS_RESOURCE); without it every sandbox fails in runc's nsexec.
  cat >"$nd/containerd.toml" <<EOF
version = 3
root = "$nd/containerd/root"
state = "$nd/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "$nd/containerd/opt"
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$pause_image"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$bin/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$bin/cni"]
      conf_dir = "$nd/cni/net.d"
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
EOF
  cat >"$nd/cni/net.d/10-kiln.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kiln",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$nd/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # The shim and runc are found on PATH (the shim) and through BinaryName (runc).
  launch containerd env PATH="$bin:$PATH" "$bin/containerd" --config "$nd/containerd.toml"
  rc=0; wait_for "$launched" containerd "$bin/ctr" --address "$sock" version || rc=$?
  [ $rc -eq 0 ] || fail containerd "containerd did not start (rc $rc)"
  import_pause_image

  # Control-plane pieces a node needs.
  local port
  port=$(sed -n 's/^KILN_APISERVER_PORT=//p' "$dir/ports")
  # (argv[0] names DIR/node, by which stop recognises it)
  launch apiserver-relay bash -c 'exec -a "$0" socat "$@"' "socat:$nd/relay" \
    "TCP-LISTEN:$port,bind=$node_ip,fork,reuseaddr" "TCP:127.0.0.1:$port"
  cp "$dir/kubeconfig" "$nd/admin.kubeconfig"
  launch kube-scheduler "$bin/kube-scheduler" --kubeconfig="$nd/admin.kubeconfig" \
    --authentication-kubeconfig="$nd/admin.kubeconfig" --authorization-kubeconfig="$nd/admin.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0
  launch node-controllers "$k8s_bin/kube-controller-manager" --kubeconfig="$nd/admin.kubeconfig" \
    --controllers=deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,endpointslice-controller,root-ca-certificate-publisher-controller,pod-garbage-collector-controller,node-lifecycle-controller,taint-eviction-controller \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 \
    --root-ca-file="$dir/pki/ca.crt" --use-service-account-credentials=false \
    --kube-api-qps=100 --kube-api-burst=200

  # Identities: the kubelet as system:node:<name> (group system:nodes), kube-proxy as
  # system:kube-proxy; the API server runs RBAC only (no Node authorizer), so they are bound
  # to the built-in system:node and system:node-proxier roles.
  client_cert kubelet "/O=system:nodes/CN=system:node:$node_name"
  client_cert kube-proxy "/CN=system:kube-proxy"
  kubeconfig_for kubelet
  kubeconfig_for kube-proxy
  kubectl apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kiln-node:kubelet"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:node:$node_name"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kiln-node:kube-proxy"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-proxier"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-proxy"}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-kiln-node
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: node.hack.kiln.dev
addressType: IPv4
endpoints: [{addresses: ["$node_ip"], conditions: {ready: true}}]
ports: [{name: https, port: $port, protocol: TCP}]
EOF

  # kubelet. What this machine needs (docs/testing.md): cgroup v1 (failCgroupV1: false),
  # cgroupfs, no QoS cgroups or node-allocatable enforcement, swap tolerated.
  cat >"$nd/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$dir/pki/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: "unix://$sock"
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
resolvConf: ""
podLogsDir: "$nd/pod-logs"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
evictionPressureTransitionPeriod: 10s
serializeImagePulls: false
maxPods: 50
EOF
  launch kubelet "$bin/kubelet" --config="$nd/kubelet.yaml" --kubeconfig="$nd/kubelet.kubeconfig" \
    --root-dir="$nd/kubelet" --cert-dir="$nd/kubelet/pki" --volume-plugin-dir="$nd/volume-plugins" \
    --hostname-override="$node_name" --node-ip="$node_ip" --v=2

  cat >"$nd/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$nd/kube-proxy.kubeconfig"}
hostnameOverride: $node_name
mode: iptables
clusterCIDR: $pod_cidr
nodePortAddresses: ["$node_ip/32"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {minSyncPeriod: 1s, syncPeriod: 30s}
EOF
  launch kube-proxy "$bin/kube-proxy" --config="$nd/kube-proxy.yaml" --v=1

  local kubelet_pid
  kubelet_pid=$(pid_of kubelet)
  rc=0; wait_for "$kubelet_pid" kubelet kubectl get node "$node_name" || rc=$?
  [ $rc -eq 0 ] || fail kubelet "the kubelet did not register node $node_name (rc $rc)"
  node_ready() { [ "$(kubectl get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
  rc=0; wait_for "$kubelet_pid" kubelet node_ready || rc=$?
  [ $rc -eq 0 ] || fail kubelet "node $node_name did not become Ready (rc $rc)"
  for p in "${components[@]}"; do
    [ -n "$(pid_of "$p")" ] || fail "$p" "$p exited"
  done
  trap - EXIT INT TERM
  log "node $node_name Ready in $((SECONDS - t0))s (address $node_ip, pods $pod_cidr, Services $service_cidr)"
}

# --- stop -------------------------------------------------------------------------------------
stop_all() {
  local bin=${KILN_NODE_BIN:-} p deadline pids=() name m
  [ -n "$bin" ] || bin=$("$hack/node-binaries.sh" 2>/dev/null) || bin=
  # kubelet and kube-proxy first, so nothing restarts the pods we remove.
  for name in kubelet kube-proxy kube-scheduler node-controllers apiserver-relay; do
    # Each runs in its own session (setsid): its process group holds it and its children.
    for p in $(pid_of "$name"); do kill -TERM -- "-$p" 2>/dev/null && pids+=("$p"); done
  done
  deadline=$((SECONDS + 15))
  while [ ${#pids[@]} -gt 0 ] && alive "${pids[@]}" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  for p in "${pids[@]}"; do ours "$p" && kill -KILL "$p" 2>/dev/null; done
  # The pods: containers first, then the sandboxes (their network namespaces and veths).
  if [ -S "$sock" ] && [ -n "$bin" ] && [ -x "$bin/ctr" ]; then
    local c
    for c in $("$bin/ctr" --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      "$bin/ctr" --address "$sock" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    sleep 1
    for c in $("$bin/ctr" --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      "$bin/ctr" --address "$sock" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
    done
    for c in $("$bin/ctr" --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
      "$bin/ctr" --address "$sock" -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  pids=()
  for p in $(pid_of containerd); do kill -TERM "$p" 2>/dev/null && pids+=("$p"); done
  deadline=$((SECONDS + 15))
  while [ ${#pids[@]} -gt 0 ] && alive "${pids[@]}" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  for p in "${pids[@]}"; do ours "$p" && kill -KILL "$p" 2>/dev/null; done
  # Shims (and their containers) that outlived containerd: they name its socket.
  for p in /proc/[0-9]*; do
    read -r name 2>/dev/null <"$p/comm" || continue
    case $name in containerd-shim*) ours "${p#/proc/}" && kill -KILL "${p#/proc/}" 2>/dev/null ;; esac
  done
  # Network namespaces of sandboxes that were not torn down cleanly.
  for m in /run/netns/cni-*; do
    [ -e "$m" ] || continue
    if ! ip netns pids "${m##*/}" 2>/dev/null | grep -q .; then ip netns del "${m##*/}" 2>/dev/null || true; fi
  done
  # Mounts under DIR/node (volumes, rootfs), deepest first.
  if [ -d "$nd" ]; then
    awk -v pre="$nd/" 'index($5, pre) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  if [ -n "$bin" ] && [ -x "$bin/kube-proxy" ]; then
    "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  # CNI portmap chains and the node's network.
  iptables -w -t nat -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^CNI-/ {print $2}' | while read -r m; do
    iptables -w -t nat -F "$m" 2>/dev/null || true
  done
  net_down
  if [ -f "$nd/sysctl.saved" ]; then
    while read -r name m; do sysctl -qw "$name=$m" 2>/dev/null || true; done <"$nd/sysctl.saved"
    rm -f "$nd/sysctl.saved"
  fi
  rm -f "$nd/pids"
  if [ "$(cat "$cache/node.current" 2>/dev/null)" = "$dir" ]; then rm -f "$cache/node.current"; fi
}

case $cmd in
  start)
    resolve
    lock
    start
    ;;
  stop)
    [ -d "$dir" ] || exit 0
    resolve
    lock
    stop_all
    ;;
  status)
    resolve
    ok=0
    for c in "${components[@]}"; do
      p=$(pid_of "$c" | tr '\n' ' ')
      if [ -n "$p" ]; then echo "$c: running (pid ${p% })"; else echo "$c: not running"; ok=1; fi
    done
    k8s_bin=$(sed -n 's/^KILN_K8S_BIN=//p' "$dir/ports" 2>/dev/null)
    k8s_bin=${k8s_bin//\\/}
    if [ "$(kubectl get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; then
      echo "node $node_name: Ready"
    else
      echo "node $node_name: not Ready"; ok=1
    fi
    exit $ok
    ;;
  *) usage ;;
esac
