#!/usr/bin/env bash
# A real Argo CD beside the test control plane, as local processes (no node, no image):
# Redis, the repo-server and the application controller, built from Argo CD's own source, plus
# a Git repository served to it over loopback. Kiln's GitOps suite (hack/test-gitops.sh) runs
# against it; people can use it to try Kiln under Argo CD. See docs/argocd.md and docs/testing.md.
#
#   hack/argocd.sh start DIR    build (once) and start on the control plane in DIR (started by
#                               hack/control-plane.sh); print DIR/argocd.env once ready
#   hack/argocd.sh stop DIR     stop (SIGTERM, wait, SIGKILL); idempotent
#   hack/argocd.sh status DIR   exit 0 if every process runs and answers
#   hack/argocd.sh build        build (or find) Argo CD; print the directory holding the binary
#                               (argocd), Argo CD's CRDs (crds/) and the helper scripts its
#                               image puts on PATH (bin/)
#
# Argo CD is built from source through the Go module proxy at the release pinned by the wrapper
# module hack/argocd/go.mod (verified by the committed go.sum; hack/argocd/generate-go-mod.sh
# regenerates both for another release), cached under ${KILN_CACHE:-$HOME/.cache/kiln}; a second
# run only checks the cache. Argo CD's CRDs come from the same module (manifests/crds/). Argo CD
# 3.6 needs Go 1.27: when the Go on PATH is older, the go command fetches that toolchain itself
# through the module proxy (hack/argocd/go-toolchain.sh).
#
# `start` installs those CRDs, creates the namespace `argocd` with `argocd-cm` (Kiln's health
# checks from deploy/argocd/health, installed by running the very command docs/argocd.md gives
# users), `argocd-secret` and the `default` AppProject, then starts:
#   - git daemon on 127.0.0.1, serving the bare repository DIR/argocd/git/kiln.git (pushes on);
#   - redis-server on 127.0.0.1 with a password;
#   - argocd-repo-server on 127.0.0.1 (plain gRPC; its metrics on 127.0.0.1 too);
#   - argocd-application-controller, with ARGOCD_FAKE_IN_CLUSTER=true so that the in-cluster
#     destination https://kubernetes.default.svc is the control plane of DIR/kubeconfig. Argo CD
#     binds its metrics listener to 0.0.0.0 (hard-coded); it serves metrics and /healthz only.
# and writes DIR/argocd.env (`. DIR/argocd.env` exports them):
#   ARGOCD_NAMESPACE       argocd
#   KILN_GITOPS_REPO_URL   the repository's URL, for an Application's spec.source.repoURL
#   KILN_GITOPS_REPO_DIR   a clone of it: commit and `git push` there, and Argo CD sees it
#   KILN_ARGOCD_REDIS, KILN_ARGOCD_REDIS_PASSWORD
#                          Argo CD's Redis, where the controller keeps each Application's
#                          resource tree (what argocd-server and its UI would show)
#
# The controller runs with --persist-resource-health, so each resource's health is in the
# Application's status.resources[] (without it, only argocd-server's API shows it).
#
# Environment:
#   KILN_ARGOCD_RESYNC=30   seconds between the controller's refreshes of each Application
#                           from Git (Argo CD's default is 120; tests also request refreshes)
#   KILN_ARGOCD_TIMEOUT=120 seconds each process may take to become ready
#   KILN_ARGOCD_STOP_TIMEOUT=15  seconds a process gets after SIGTERM before SIGKILL
#
# Layout of DIR/argocd: state (ports, Redis password), bin/ (links named after each component,
# which is how the multi-call binary knows what to run, and how `stop` recognises this DIR's
# processes), git/ (the bare repository), gitops/ (the clone), redis/, home/, tmp/, pids.
# Logs: DIR/logs/{git-daemon,redis,argocd-repo-server,argocd-application-controller}.log.
set -Eeuo pipefail
trap 'log "failed: line $LINENO: $BASH_COMMAND"' ERR

hack=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$hack/.." && pwd)
log() { echo "argocd: $*" >&2; }
usage() { echo "usage: $0 start|stop|status DIR | build" >&2; exit 2; }

namespace=argocd
repo_name=kiln.git
components=(argocd-application-controller argocd-repo-server redis git-daemon)

# --- build ---------------------------------------------------------------------------------
build() {
  local version recipe key cache out moddir
  version=$(awk '$1 == "github.com/argoproj/argo-cd/v3" {print $2; exit}' "$hack/argocd/go.mod")
  # Bump when the build recipe (flags) changes, so binaries built the old way are not reused.
  recipe=2
  key=$( (echo "recipe $recipe"; cat "$hack/argocd/go.mod" "$hack/argocd/go.sum") | sha256sum | cut -c1-12)
  cache=${KILN_CACHE:-$HOME/.cache/kiln}
  out="$cache/argocd-${version}-${key}"
  complete() { [ -x "$out/argocd" ] && [ -s "$out/crds/application-crd.yaml" ] && [ -x "$out/bin/git-verify-wrapper.sh" ]; }
  if complete; then echo "$out"; return 0; fi
  mkdir -p "$out"
  # One build at a time per cache entry; a concurrent caller waits and then finds it done.
  exec 8>"$out.lock"
  flock 8
  if complete; then echo "$out"; return 0; fi
  local go
  # shellcheck source=hack/argocd/go-toolchain.sh
  . "$hack/argocd/go-toolchain.sh"
  log "building Argo CD $version into $out with $("$go" env GOVERSION) (a cold build downloads ~2 GiB of modules and the Go toolchain; about 15 minutes on 2 cores)"
  local start=$SECONDS
  # The committed go.sum verifies every module; -mod=readonly refuses anything not in it, so
  # the checksum database is never needed. The version is stamped as Argo CD's release does.
  (
    cd "$hack/argocd"
    export GOFLAGS="-mod=readonly -trimpath" CGO_ENABLED=0 GOSUMDB=off
    # `go list -m` names the module's directory only once it is downloaded.
    "$go" mod download github.com/argoproj/argo-cd/v3
    moddir=$("$go" list -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)
    [ -n "$moddir" ] && [ -d "$moddir/manifests/crds" ] || { log "Argo CD's module has no manifests/crds"; exit 1; }
    pkg=github.com/argoproj/argo-cd/v3/common
    "$go" build -ldflags "-s -w -X $pkg.version=${version#v} -X $pkg.gitTag=${version} -X $pkg.gitTreeState=clean" \
      -o "$out/argocd.tmp" github.com/argoproj/argo-cd/v3/cmd
    rm -rf "$out/crds.tmp" "$out/bin.tmp"
    mkdir -p "$out/crds.tmp" "$out/bin.tmp"
    cp "$moddir"/manifests/crds/*-crd.yaml "$out/crds.tmp/"
    # The repo-server runs git-verify-wrapper.sh on every manifest generation (signed or not),
    # and gpg-wrapper.sh for GPG keys; Argo CD's image puts both on PATH.
    cp "$moddir"/hack/git-verify-wrapper.sh "$moddir"/hack/gpg-wrapper.sh "$out/bin.tmp/"
    chmod -R u+w "$out/crds.tmp" "$out/bin.tmp"
    chmod 755 "$out"/bin.tmp/*.sh
  )
  rm -rf "$out/crds" "$out/bin"
  mv "$out/crds.tmp" "$out/crds"
  mv "$out/bin.tmp" "$out/bin"
  mv "$out/argocd.tmp" "$out/argocd"
  log "built in $((SECONDS - start))s"
  echo "$out"
}

# --- processes -----------------------------------------------------------------------------
# True if PID is alive and is NAME of this DIR: Argo CD's components run through links in
# DIR/argocd/bin (argv[0]), git daemon serves DIR/argocd/git, and Redis runs in DIR/argocd/redis.
# Exact matches, so a reused pid or a neighbour's process is never signalled.
ours() { # pid name
  local pid=$1 name=$2
  [ -r "/proc/$pid/cmdline" ] || return 1
  case $name in
    argocd-*) [ "$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1)" = "$adir/bin/$name" ] ;;
    git-daemon) tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--base-path=$adir/git" ;;
    redis) [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$adir/redis" ] &&
      [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$(command -v redis-server)")" ] ;;
    *) return 1 ;;
  esac
}

pid_of() { # name
  local n p
  [ -f "$adir/pids" ] || return 1
  while read -r n p; do
    if [ "$n" = "$1" ] && ours "$p" "$1"; then echo "$p"; return 0; fi
  done <"$adir/pids"
  return 1
}

launch() { # name command...
  local name=$1; shift
  local logf=$dir/logs/$name.log
  printf '=== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$logf"
  setsid "$@" </dev/null >>"$logf" 2>&1 9>&- 8>&- &
  launched=$!
  echo "$name $launched" >>"$adir/pids"
}

fail() { # name message
  log "$2"
  if [ -f "$dir/logs/$1.log" ]; then
    log "last lines of $dir/logs/$1.log:"
    tail -n 40 "$dir/logs/$1.log" >&2
  fi
  exit 1
}

# True while PID runs (a zombie does not count). Used for a process just launched, which may
# not have exec'd the server yet, so `ours` cannot recognise it.
running() { local state; state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) && [ -n "$state" ] && [ "$state" != Z ]; }

wait_ready() { # name pid check...
  local name=$1 pid=$2; shift 2
  local deadline=$((SECONDS + ${KILN_ARGOCD_TIMEOUT:-120}))
  until "$@" >/dev/null 2>&1; do
    running "$pid" || fail "$name" "$name exited"
    [ $SECONDS -lt $deadline ] || fail "$name" "$name not ready after ${KILN_ARGOCD_TIMEOUT:-120}s"
    sleep 0.3
  done
}

terminate() { # name
  local pid deadline
  pid=$(pid_of "$1") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + ${KILN_ARGOCD_STOP_TIMEOUT:-15}))
  while ours "$pid" "$1" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if ours "$pid" "$1"; then
    log "$1 ($pid) did not exit after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  while ours "$pid" "$1"; do sleep 0.1; done
}

stop_all() {
  local c
  for c in "${components[@]}"; do terminate "$c"; done
  rm -f "$adir/pids"
}

free_ports() { # N
  python3 - "$1" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }
redis_ok() { REDISCLI_AUTH=$redis_password redis-cli -h 127.0.0.1 -p "$redis_port" ping | grep -qx PONG; }
git_ok() { git ls-remote "$repo_url" >/dev/null; }

kubectl() { "$KILN_K8S_BIN/kubectl" --kubeconfig "$dir/kubeconfig" --request-timeout=30s "$@"; }

# --- start ---------------------------------------------------------------------------------
prerequisites() {
  local missing=() c
  for c in git python3 curl flock; do command -v "$c" >/dev/null || missing+=("$c"); done
  command -v redis-server >/dev/null || missing+=("redis-server (apt-get install redis-server)")
  command -v redis-cli >/dev/null || missing+=("redis-cli (apt-get install redis-tools)")
  [ ${#missing[@]} -eq 0 ] || { log "missing: ${missing[*]}"; exit 1; }
  [ -s "$dir/kubeconfig" ] && [ -s "$dir/ports" ] ||
    { log "no control plane in $dir: run hack/control-plane.sh start $dir first"; exit 1; }
  # shellcheck source=/dev/null
  . "$dir/ports"
  [ -x "$KILN_K8S_BIN/kubectl" ] || { log "$KILN_K8S_BIN/kubectl is missing"; exit 1; }
}

load_state() {
  if [ ! -s "$adir/state" ]; then
    local ports
    read -r -a ports <<<"$(free_ports 5)"
    (
      umask 077
      cat >"$adir/state" <<EOF
git_port=${ports[0]}
redis_port=${ports[1]}
repo_port=${ports[2]}
repo_metrics_port=${ports[3]}
controller_metrics_port=${ports[4]}
redis_password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
EOF
    )
  fi
  # shellcheck source=/dev/null
  . "$adir/state"
  repo_url="git://127.0.0.1:$git_port/$repo_name"
}

# The bare repository Argo CD reads, and a clone of it to commit in. A first commit, so that
# the branch `main` (the repository's HEAD) exists before any Application asks for it.
init_git() {
  local bare=$adir/git/$repo_name clone=$adir/gitops
  if [ ! -d "$bare" ]; then
    git init -q --bare -b main "$bare"
    # Pushes arrive over git:// from the clone: let git daemon accept them.
    git -C "$bare" config daemon.receivepack true
  fi
  if [ ! -d "$clone/.git" ]; then
    rm -rf "$clone"
    git init -q -b main "$clone"
    git -C "$clone" config user.name "Kiln GitOps tests"
    git -C "$clone" config user.email "gitops@kiln.invalid"
    git -C "$clone" remote add origin "$repo_url"
    printf '# GitOps repository\n\nServed to Argo CD by hack/argocd.sh; commit and push here.\n' >"$clone/README.md"
    git -C "$clone" add README.md
    git -C "$clone" commit -q -m "Start the GitOps repository"
    git -C "$clone" push -q "$bare" main
    git -C "$clone" fetch -q "$bare" main:refs/remotes/origin/main
    git -C "$clone" branch -q -u origin/main main
  fi
  # The port is chosen once per DIR, but say so again in case the state was rewritten.
  git -C "$clone" remote set-url origin "$repo_url"
}

# Argo CD's CRDs, its namespace and the settings a controller reads. Kiln's health checks go
# into argocd-cm by running the command docs/argocd.md gives users, copied from that page, so
# the page is what gets tested.
install_argocd_objects() {
  local crds=$1 cmd
  kubectl apply --server-side --force-conflicts -f "$crds/" >/dev/null
  # Polled rather than `kubectl wait`, which errors out on a CRD whose status is still empty.
  local crd deadline=$((SECONDS + 60))
  for crd in applications appprojects applicationsets; do
    until [ "$(kubectl get crd "$crd.argoproj.io" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]; do
      [ $SECONDS -lt $deadline ] || { log "CRD $crd.argoproj.io not Established after 60s"; exit 1; }
      sleep 0.2
    done
  done
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: $namespace
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
---
apiVersion: v1
kind: Secret
metadata:
  name: argocd-secret
  namespace: $namespace
  labels:
    app.kubernetes.io/name: argocd-secret
    app.kubernetes.io/part-of: argocd
type: Opaque
---
# What argocd-server creates when it first starts (it does not run here).
apiVersion: argoproj.io/v1alpha1
kind: AppProject
metadata:
  name: default
  namespace: $namespace
spec:
  sourceRepos: ["*"]
  destinations:
    - server: "*"
      namespace: "*"
  clusterResourceWhitelist:
    - group: "*"
      kind: "*"
EOF
  cmd=$(awk '
    /python3 - <<.EOF. \| kubectl -n argocd patch configmap argocd-cm/ {p = 1}
    p {sub(/^  /, ""); print}
    p && /^ *EOF$/ {exit}' "$root/docs/argocd.md")
  [ -n "$cmd" ] || { log "docs/argocd.md no longer has the argocd-cm patch command this script runs"; exit 1; }
  (cd "$root" && PATH="$KILN_K8S_BIN:$PATH" KUBECONFIG="$dir/kubeconfig" bash -euo pipefail -c "$cmd") >/dev/null ||
    { log "the argocd-cm patch command from docs/argocd.md failed"; exit 1; }
  local kind
  for kind in Draft Job ProviderConfig; do
    [ -n "$(kubectl -n "$namespace" get configmap argocd-cm \
      -o "go-template={{index .data \"resource.customizations.health.kiln.dev_$kind\"}}")" ] ||
      { log "argocd-cm has no health check for $kind after the patch"; exit 1; }
  done
}

start() {
  prerequisites
  local out bin
  out=$(build)
  mkdir -p "$adir"/{bin,git,redis,home,tmp,tls,ssh,gpg,run/plugins} "$dir/logs"
  load_state
  if [ -s "$dir/argocd.env" ]; then
    local running=1 c
    for c in "${components[@]}"; do pid_of "$c" >/dev/null || running=0; done
    if [ $running = 1 ] && http_ok "http://127.0.0.1:$controller_metrics_port/healthz"; then
      log "already running"
      echo "$dir/argocd.env"
      return 0
    fi
  fi
  stop_all
  rm -f "$dir/argocd.env"
  trap 'stop_all' EXIT
  trap 'exit 130' INT TERM

  # The multi-call binary picks its component from argv[0]'s base name.
  for bin in argocd-repo-server argocd-application-controller; do
    ln -sfn "$out/argocd" "$adir/bin/$bin"
  done
  init_git

  launch git-daemon git daemon --reuseaddr --listen=127.0.0.1 --port="$git_port" \
    --base-path="$adir/git" --export-all --enable=receive-pack --informative-errors "$adir/git"
  wait_ready git-daemon "$launched" git_ok

  # Nothing written to disk; protected mode stays on; the password keeps out the neighbours
  # that share this loopback.
  # (It changes into --dir, which is how `stop` recognises it.)
  launch redis redis-server --bind 127.0.0.1 --port "$redis_port" \
    --requirepass "$redis_password" --save "" --appendonly no --dir "$adir/redis"
  wait_ready redis "$launched" redis_ok

  install_argocd_objects "$out/crds"

  # A clean environment: nothing from the caller's ARGOCD_*, KUBECONFIG or proxy settings.
  local base_env=(env -i PATH="$out/bin:/usr/local/bin:/usr/bin:/bin" HOME="$adir/home" TMPDIR="$adir/tmp"
    REDIS_PASSWORD="$redis_password" ARGOCD_TLS_DATA_PATH="$adir/tls" ARGOCD_SSH_DATA_PATH="$adir/ssh"
    ARGOCD_GNUPGHOME="$adir/gpg" ARGOCD_GPG_ENABLED=false GIT_CONFIG_NOSYSTEM=1
    ARGOCD_ASK_PASS_SOCK="$adir/run/askpass.sock" ARGOCD_PLUGINSOCKFILEPATH="$adir/run/plugins")

  launch argocd-repo-server "${base_env[@]}" "$adir/bin/argocd-repo-server" \
    --address 127.0.0.1 --port "$repo_port" \
    --metrics-address 127.0.0.1 --metrics-port "$repo_metrics_port" \
    --disable-tls --client-ca-path= --redis "127.0.0.1:$redis_port" --parallelismlimit 2 \
    --logformat text --loglevel info
  wait_ready argocd-repo-server "$launched" http_ok "http://127.0.0.1:$repo_metrics_port/healthz"

  # KUBECONFIG with ARGOCD_FAKE_IN_CLUSTER=true: the in-cluster destination is that cluster.
  launch argocd-application-controller "${base_env[@]}" KUBECONFIG="$dir/kubeconfig" ARGOCD_FAKE_IN_CLUSTER=true \
    "$adir/bin/argocd-application-controller" \
    --kubeconfig "$dir/kubeconfig" --namespace "$namespace" \
    --repo-server "127.0.0.1:$repo_port" --repo-server-plaintext \
    --redis "127.0.0.1:$redis_port" --metrics-port "$controller_metrics_port" \
    --app-resync "${KILN_ARGOCD_RESYNC:-30}" --app-resync-jitter 0 \
    --status-processors 4 --operation-processors 2 --persist-resource-health \
    --logformat text --loglevel info
  wait_ready argocd-application-controller "$launched" http_ok "http://127.0.0.1:$controller_metrics_port/healthz"

  (
    umask 077
    cat >"$dir/argocd.env.tmp" <<EOF
# Written by hack/argocd.sh start; source with: . $dir/argocd.env
export ARGOCD_NAMESPACE=$namespace
export KILN_GITOPS_REPO_URL=$repo_url
export KILN_GITOPS_REPO_DIR=$adir/gitops
export KILN_ARGOCD_REDIS=127.0.0.1:$redis_port
export KILN_ARGOCD_REDIS_PASSWORD=$redis_password
EOF
  )
  mv "$dir/argocd.env.tmp" "$dir/argocd.env"
  trap - EXIT INT TERM
  log "ready: Argo CD $(basename "$out" | cut -d- -f2) in namespace $namespace, repository $repo_url"
  echo "$dir/argocd.env"
}

case ${1:-} in
  build) [ $# -eq 1 ] || usage; build ;;
  start|stop|status)
    [ $# -eq 2 ] && [ -n "$2" ] || usage
    dir=$2
    if [ "$1" != start ] && [ ! -d "$dir" ]; then [ "$1" = stop ] && exit 0; log "$dir does not exist"; exit 1; fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    adir=$dir/argocd
    mkdir -p "$adir"
    exec 9>"$adir/.lock"
    flock -w 300 9 || { log "timed out waiting for another start/stop on $dir"; exit 1; }
    case $1 in
      start) start ;;
      stop) stop_all; rm -f "$dir/argocd.env" ;;
      status)
        ok=0
        for c in "${components[@]}"; do
          if p=$(pid_of "$c"); then echo "$c: running (pid $p)"; else echo "$c: not running"; ok=1; fi
        done
        if [ -s "$adir/state" ]; then
          load_state
          http_ok "http://127.0.0.1:$controller_metrics_port/healthz" 2>/dev/null ||
            { echo "argocd-application-controller: not answering"; ok=1; }
        fi
        exit $ok
        ;;
    esac
    ;;
  *) usage ;;
esac
