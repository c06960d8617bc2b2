#!/usr/bin/env bash
# A real Kubernetes control plane as local processes, the way controller-runtime's envtest
# does it (no Docker, no kind): etcd, kube-apiserver and kube-controller-manager (garbage
# collector, namespace and service-account controllers), on free loopback ports, with every
# piece of state under one directory. Several control planes run side by side in different
# directories. See docs/testing.md.
#
#   hack/control-plane.sh start DIR    start; print DIR/kubeconfig on stdout once ready
#   hack/control-plane.sh stop DIR     stop (SIGTERM, wait, SIGKILL); idempotent
#   hack/control-plane.sh status DIR   exit 0 if all three run and the API server is ready
#   hack/control-plane.sh env DIR      print `export KUBECONFIG=...` lines for eval
#
# Binaries come from $KILN_K8S_BIN, or else from hack/k8s-binaries.sh (which builds them once).
# Environment:
#   KILN_ETCD_FSYNC=1         keep etcd's fsync on (benchmarks); tests run with --unsafe-no-fsync
#   KILN_CP_TIMEOUT=120       seconds each component may take to become ready
#   KILN_CP_STOP_TIMEOUT=15   seconds a component gets after SIGTERM before SIGKILL
#   KILN_CP_EXTRA_CONTROLLERS more kube-controller-manager controllers, comma-separated (the
#                             GitOps suite adds deployment-controller,replicaset-controller so
#                             that Deployments report status and Argo CD can judge their health)
#
# Layout of DIR: kubeconfig (cluster-admin, certificates embedded), ports (a sourceable env
# file), pids ("name pid" lines), pki/ (CA, serving and client certificates, the
# service-account key), etcd/ (etcd's data), logs/{etcd,kube-apiserver,kube-controller-manager}.log.
set -euo pipefail

hack=$(cd "$(dirname "$0")" && pwd)
components=(etcd kube-apiserver kube-controller-manager)

log() { echo "control-plane: $*" >&2; }

usage() {
  echo "usage: $0 start|stop|status|env DIR" >&2
  exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
dir=$2
[ -n "$dir" ] || usage

# The absolute, symlink-free path: it is written into every process's command line, which is
# how `stop` recognises the processes of this DIR (and not those of a neighbour, or a reused pid).
resolve_dir() { dir=$(cd "$dir" && pwd -P); }

# Serialise start and stop on the same DIR (e.g. a test's reaper and a Ctrl-C). The lock fd is
# closed in every process we start, so the lock dies with this script. flock is util-linux,
# present on any Debian; without it we simply go unlocked.
lock_dir() {
  exec 9>"$dir/.lock"
  if command -v flock >/dev/null; then
    flock -w 300 9 || { log "timed out waiting for another start/stop on $dir"; exit 1; }
  fi
}

# True if PID is alive and is one of ours: it has one of the arguments that only this DIR's
# etcd, API server or controller manager have (exact matches, so a control plane in DIR/sub is
# not mistaken for DIR's). Guards against reused pids, and ignores zombies (empty cmdline).
ours() {
  local pid=$1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null \
    | grep -qxF -e "--data-dir=$dir/etcd" -e "--client-ca-file=$dir/pki/ca.crt" -e "--kubeconfig=$dir/kubeconfig"
}

# Pids of this DIR's processes: those recorded in DIR/pids, plus any process of ours that the
# file missed (a start killed between launching a process and recording it). The /proc scan
# matches only our three binaries, with arguments that point into this exact DIR.
pids_of() { # name
  local name=$1 n p comm
  {
    if [ -f "$dir/pids" ]; then
      while read -r n p; do
        if [ "$n" = "$name" ] && ours "$p"; then echo "$p"; fi
      done <"$dir/pids"
    fi
    for p in /proc/[0-9]*; do
      # comm is the executable's name cut to 15 characters; read with a builtin, because
      # this loop visits every process on the machine.
      read -r comm 2>/dev/null <"$p/comm" || continue
      if [ "$comm" = "${name:0:15}" ] && ours "${p#/proc/}"; then echo "${p#/proc/}"; fi
    done
  } | sort -u
}

alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

# Stop a set of components: SIGTERM, wait for them to exit, then SIGKILL what is left.
terminate() { # names...
  local pids=() name p deadline
  for name in "$@"; do
    while read -r p; do [ -n "$p" ] && pids+=("$p"); done < <(pids_of "$name")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  deadline=$((SECONDS + ${KILN_CP_STOP_TIMEOUT:-15}))
  while alive "${pids[@]}" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  for p in "${pids[@]}"; do
    if ours "$p"; then
      log "$p did not exit after SIGTERM; sending SIGKILL"
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}

stop_all() {
  # The API server (with the controller manager) first, etcd after it has exited: an API
  # server whose etcd is gone spends ~10s on shutdown (it deletes its identity lease, and
  # waits for that request to time out). Each takes 2-3s to stop gracefully.
  terminate kube-controller-manager kube-apiserver
  terminate etcd
  rm -f "$dir/pids"
}

# --- ports -------------------------------------------------------------------------------
# N distinct free loopback TCP ports. Picked at random BELOW the kernel's ephemeral range, so
# that the source port of some outgoing connection cannot take the port between now and the
# moment the server binds it; each is checked by binding it (all held at once, so distinct).
# Another process can still take a port in that window: the callers retry on "address already
# in use" with fresh ports.
free_ports() { # N
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
held, ports = [], []
candidates = random.sample(range(10000, low), min(500, low - 10000)) if low > 10100 else []
for p in candidates:
    if len(ports) == n:
        break
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(p)
while len(ports) < n:  # odd port ranges: let the kernel choose
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    ports.append(s.getsockname()[1])
print(" ".join(map(str, ports)))
PY
}

# --- certificates --------------------------------------------------------------------------
# A CA; the API server's serving certificate (127.0.0.1, localhost and the in-cluster names);
# the admin's client certificate in group system:masters, which RBAC's bootstrap policy binds
# to cluster-admin; an RSA key that signs service-account tokens. ECDSA P-256 for TLS (fast to
# generate, understood by Go, rustls and OpenSSL clients); RSA for the service-account key
# because RS256 is what every token consumer accepts. Kept across restarts of the same DIR.
gen_pki() {
  local pki=$dir/pki
  if [ -s "$pki/ca.crt" ] && [ -s "$pki/apiserver.crt" ] && [ -s "$pki/admin.crt" ] && [ -s "$pki/sa.pub" ]; then
    return 0
  fi
  command -v openssl >/dev/null || { log "openssl is required (apt-get install openssl)"; exit 1; }
  mkdir -p "$pki"
  # Our own config, so nothing depends on the system's openssl.cnf.
  cat >"$pki/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
  (
    umask 077
    cd "$pki"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc)
    openssl req -config openssl.cnf -x509 "${ec[@]}" -sha256 -days 3650 \
      -subj "/CN=kiln-ca" -extensions ca -keyout ca.key -out ca.crt 2>/dev/null
    leaf() { # name subject extensions
      openssl req -config openssl.cnf -new "${ec[@]}" -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
        -sha256 -days 3650 -extfile openssl.cnf -extensions "$3" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr"
    }
    leaf apiserver "/CN=kube-apiserver" server
    leaf admin "/O=system:masters/CN=kiln-admin" client
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
  ) || { log "generating certificates with openssl failed"; exit 1; }
}

b64() { base64 <"$1" | tr -d '\n'; }

write_kubeconfig() { # apiserver-port
  local pki=$dir/pki
  (umask 077 && cat >"$dir/kubeconfig.tmp") <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kiln
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: kiln-admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: kiln
  context:
    cluster: kiln
    user: kiln-admin
    namespace: default
current-context: kiln
EOF
  mv "$dir/kubeconfig.tmp" "$dir/kubeconfig"
}

# --- processes -----------------------------------------------------------------------------
# Start NAME in its own session (setsid), detached from our stdio and from the lock fd, so
# that this script can return, a Ctrl-C aimed at the caller's terminal does not reach it, and
# no caller waiting on a pipe hangs. setsid execs in place here (a background job of a
# non-interactive shell is not a process-group leader), so $! is the server's own pid.
launched=
launch() { # name command...
  local name=$1; shift
  local logf=$dir/logs/$name.log
  printf '=== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$logf"
  log_offset=$(wc -l <"$logf")
  setsid "$@" </dev/null >>"$logf" 2>&1 9>&- &
  launched=$!
  echo "$name $launched" >>"$dir/pids"
}

# The lines of NAME's log written since the last launch.
this_log() { tail -n +"$((log_offset + 1))" "$dir/logs/$1.log"; }

fail() { # name message
  log "$2"
  if [ -f "$dir/logs/$1.log" ]; then
    log "last lines of $dir/logs/$1.log:"
    this_log "$1" | tail -n 40 >&2
  fi
  exit 1
}

# Poll CHECK until it succeeds (0), PID dies (2), or the timeout passes (1).
wait_for() { # pid check...
  local pid=$1; shift
  local deadline=$((SECONDS + ${KILN_CP_TIMEOUT:-120}))
  while :; do
    if "$@" >/dev/null 2>&1; then
      kill -0 "$pid" 2>/dev/null && return 0
      return 2
    fi
    kill -0 "$pid" 2>/dev/null || return 2
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

# GET a URL; succeed on HTTP 200. Python rather than curl: python3 is needed for the ports
# anyway, and curl is not on every minimal image.
http_ok() { # url [cafile certfile keyfile]
  python3 - "$@" <<'PY'
import ssl, sys, urllib.request
ctx = None
if len(sys.argv) > 2:
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
with urllib.request.urlopen(sys.argv[1], timeout=2, context=ctx) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

# etcd speaks plain HTTP, so a /health answer alone could come from someone else's etcd that
# took the port first; its own log saying it serves proves the port is ours. (The API server
# needs no such care: nobody else's server has a certificate from this DIR's CA.)
etcd_ready() { # client-port
  this_log etcd | grep -q '"ready to serve client requests"' && http_ok "http://127.0.0.1:$1/health"
}

kubectl() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" --request-timeout=5s "$@"; }

# --- start ---------------------------------------------------------------------------------
# The API server stays on loopback. For a node (hack/node.sh) it reaches kubelets by their
# InternalIP (there is no DNS for node names) with the admin's client certificate (kubectl
# logs/exec); hack/node.sh relays pods' connections to it and names that relay in the
# `kubernetes` Service's EndpointSlice (the endpoint reconciler is off: with no node there is
# no address a pod could use). Without a node these flags change nothing.
start() {
  local t0=$SECONDS attempt rc pki=$dir/pki
  bin=${KILN_K8S_BIN:-}
  if [ -z "$bin" ]; then
    bin=$("$hack/k8s-binaries.sh") || { log "hack/k8s-binaries.sh failed"; exit 1; }
  fi
  local b
  for b in "${components[@]}" kubectl; do
    [ -x "$bin/$b" ] || { log "$bin/$b is missing: export KILN_K8S_BIN=\$(hack/k8s-binaries.sh)"; exit 1; }
  done
  command -v python3 >/dev/null || { log "python3 is required (apt-get install python3)"; exit 1; }

  for b in "${components[@]}"; do
    if [ -n "$(pids_of "$b")" ]; then
      log "$b is already running for $dir; run: $0 stop $dir"
      exit 1
    fi
  done
  rm -f "$dir/pids"
  mkdir -p "$dir/logs"
  # From here on, any failure (or Ctrl-C) stops whatever this start launched.
  trap 'rc=$?; trap - EXIT; if [ $rc -ne 0 ]; then log "start failed; stopping what was started"; stop_all; fi; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  gen_pki

  # etcd. Plain HTTP on loopback: only this machine's users can reach it (test data only).
  local etcd_client etcd_peer fsync=(--unsafe-no-fsync)
  [ "${KILN_ETCD_FSYNC:-0}" = 1 ] && fsync=()
  for attempt in 1 2 3 4 5; do
    read -r etcd_client etcd_peer < <(free_ports 2) || true
    [ -n "${etcd_peer:-}" ] || fail etcd "could not find free ports"
    launch etcd "$bin/etcd" \
      --name=kiln \
      --data-dir="$dir/etcd" \
      --listen-client-urls="http://127.0.0.1:$etcd_client" \
      --advertise-client-urls="http://127.0.0.1:$etcd_client" \
      --listen-peer-urls="http://127.0.0.1:$etcd_peer" \
      --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
      --initial-cluster="kiln=http://127.0.0.1:$etcd_peer" \
      --initial-cluster-state=new \
      --log-outputs=stderr \
      "${fsync[@]}"
    rc=0; wait_for "$launched" etcd_ready "$etcd_client" || rc=$?
    [ $rc -eq 0 ] && break
    if [ $rc -eq 2 ] && this_log etcd | grep -q 'address already in use' && [ $attempt -lt 5 ]; then
      log "etcd: port taken meanwhile; retrying with other ports"
      continue
    fi
    [ $rc -eq 2 ] && fail etcd "etcd exited before becoming healthy"
    fail etcd "etcd did not become healthy in ${KILN_CP_TIMEOUT:-120}s"
  done

  # kube-apiserver.
  local apiserver
  for attempt in 1 2 3 4 5; do
    read -r apiserver < <(free_ports 1) || true
    [ -n "${apiserver:-}" ] || fail kube-apiserver "could not find a free port"
    write_kubeconfig "$apiserver"
    write_ports "$etcd_client" "$etcd_peer" "$apiserver"
    launch kube-apiserver "$bin/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$etcd_client" \
      --bind-address=127.0.0.1 \
      --advertise-address=127.0.0.1 \
      --secure-port="$apiserver" \
      --tls-cert-file="$pki/apiserver.crt" \
      --tls-private-key-file="$pki/apiserver.key" \
      --client-ca-file="$pki/ca.crt" \
      --authorization-mode=RBAC \
      --service-cluster-ip-range=10.0.0.0/24 \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --api-audiences=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$pki/sa.pub" \
      --service-account-signing-key-file="$pki/sa.key" \
      --endpoint-reconciler-type=none \
      --kubelet-preferred-address-types=InternalIP \
      --kubelet-client-certificate="$pki/admin.crt" \
      --kubelet-client-key="$pki/admin.key"
    rc=0
    wait_for "$launched" http_ok "https://127.0.0.1:$apiserver/readyz" "$pki/ca.crt" "$pki/admin.crt" "$pki/admin.key" || rc=$?
    [ $rc -eq 0 ] && break
    if [ $rc -eq 2 ] && this_log kube-apiserver | grep -q 'address already in use' && [ $attempt -lt 5 ]; then
      log "kube-apiserver: port taken meanwhile; retrying with another port"
      continue
    fi
    [ $rc -eq 2 ] && fail kube-apiserver "kube-apiserver exited before becoming ready"
    fail kube-apiserver "kube-apiserver did not become ready (/readyz) in ${KILN_CP_TIMEOUT:-120}s"
  done
  local apiserver_pid=$launched
  # The API server creates the default namespace from a controller of its own, moments after
  # /readyz; callers create things in it right away.
  rc=0; wait_for "$apiserver_pid" kubectl get namespace default || rc=$?
  [ $rc -eq 0 ] || fail kube-apiserver "the default namespace did not appear"

  # kube-controller-manager: started once the API server is ready, because it gives up if
  # the API server is not healthy within 10s of its own start. --secure-port=0: it serves
  # nothing (no port to pick, no serving cert); we judge it by its work instead.
  launch kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$dir/kubeconfig" \
    --controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller${KILN_CP_EXTRA_CONTROLLERS:+,$KILN_CP_EXTRA_CONTROLLERS} \
    --leader-elect=false \
    --bind-address=127.0.0.1 \
    --secure-port=0 \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --use-service-account-credentials=false \
    --kube-api-qps=100 \
    --kube-api-burst=200
  # Its serviceaccount controller creating default/default shows it is up and working, and
  # the ServiceAccount admission plugin (left on, as in a real cluster) needs that account
  # before any Pod can be created in the namespace.
  rc=0; wait_for "$launched" kubectl -n default get serviceaccount default || rc=$?
  [ $rc -eq 2 ] && fail kube-controller-manager "kube-controller-manager exited"
  [ $rc -eq 0 ] || fail kube-controller-manager "kube-controller-manager did not create default/default ServiceAccount in ${KILN_CP_TIMEOUT:-120}s"
  alive "$apiserver_pid" || fail kube-apiserver "kube-apiserver exited"

  trap - EXIT INT TERM
  log "ready in $((SECONDS - t0))s: https://127.0.0.1:$apiserver (etcd 127.0.0.1:$etcd_client); export KUBECONFIG=$dir/kubeconfig"
  echo "$dir/kubeconfig"
}

write_ports() { # etcd-client etcd-peer apiserver
  cat >"$dir/ports.tmp" <<EOF
# Written by hack/control-plane.sh start; sourceable.
KILN_ETCD_CLIENT_PORT=$1
KILN_ETCD_PEER_PORT=$2
KILN_APISERVER_PORT=$3
KILN_ETCD_URL=http://127.0.0.1:$1
KILN_APISERVER_URL=https://127.0.0.1:$3
KILN_K8S_BIN=$(printf %q "$bin")
KUBECONFIG=$(printf %q "$dir/kubeconfig")
EOF
  mv "$dir/ports.tmp" "$dir/ports"
}

case $cmd in
  start)
    mkdir -p "$dir"
    resolve_dir
    lock_dir
    start
    ;;
  stop)
    [ -d "$dir" ] || exit 0
    resolve_dir
    lock_dir
    stop_all
    ;;
  status)
    [ -d "$dir" ] || { log "$dir does not exist"; exit 1; }
    resolve_dir
    ok=0
    for c in "${components[@]}"; do
      p=$(pids_of "$c" | tr '\n' ' ')
      if [ -n "$p" ]; then echo "$c: running (pid ${p% })"; else echo "$c: not running"; ok=1; fi
    done
    if [ -f "$dir/ports" ]; then
      # shellcheck source=/dev/null
      . "$dir/ports"
      if http_ok "$KILN_APISERVER_URL/readyz" "$dir/pki/ca.crt" "$dir/pki/admin.crt" "$dir/pki/admin.key" 2>/dev/null; then
        echo "kube-apiserver: ready at $KILN_APISERVER_URL"
      else
        echo "kube-apiserver: not ready"; ok=1
      fi
    fi
    exit $ok
    ;;
  env)
    [ -f "$dir/kubeconfig" ] || { log "$dir/kubeconfig does not exist; run: $0 start $dir"; exit 1; }
    resolve_dir
    echo "export KUBECONFIG=$(printf %q "$dir/kubeconfig")"
    if [ -f "$dir/ports" ]; then
      # shellcheck source=/dev/null
      . "$dir/ports"
      echo "export KILN_K8S_BIN=$(printf %q "$KILN_K8S_BIN")"
      echo "export PATH=$(printf %q "$KILN_K8S_BIN"):\$PATH"
    fi
    ;;
  *) usage ;;
esac
