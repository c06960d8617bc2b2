#!/usr/bin/env bash
# GitOps suite: Kiln synced by a real Argo CD, not by assumptions about it. A control plane
# (hack/control-plane.sh, plus the deployment and replicaset controllers so that Deployments
# report status), Argo CD beside it as processes (hack/argocd.sh: repo-server, application
# controller, Redis, a Git repository served over loopback), and the operator as a local
# process. Applications sync Kiln's CRDs, examples/ and followers from that repository with
# automated sync, prune and self-heal, and every check reads what Argo CD itself reports (the
# Application's status) or the live objects. See docs/argocd.md and docs/testing.md.
#
# Every check counts; the run fails (exit 1) if any failed, and a missing prerequisite fails
# it with a message saying how to get it. Nothing is skipped.
#
#   KILN_GITOPS_DIR=DIR   state directory (default: a new one under /tmp); kept when
#                         KILN_GITOPS_KEEP=1 or when a check failed
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
step() { printf '\n=== gitops: %s (%ds)\n' "$*" $((SECONDS - start)) >&2; }

passed=0
failed=()
pass() { passed=$((passed + 1)); echo "ok   - $1"; }
fail() {
  failed+=("$1")
  echo "FAIL - $1"
  [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/       /' | tail -n 40
}
check() { # description command...
  local desc=$1 out
  shift
  if out=$("$@" 2>&1); then pass "$desc"; else fail "$desc" "$out"; fi
}
# Poll a command until it succeeds or TIMEOUT seconds pass; its last output is kept.
eventually() { # timeout command...
  local t=$1 deadline out
  shift
  deadline=$((SECONDS + t))
  while :; do
    if out=$("$@" 2>&1); then printf '%s' "$out"; return 0; fi
    [ $SECONDS -lt $deadline ] || { printf '%s' "$out"; return 1; }
    sleep 1
  done
}
check_eventually() { # timeout description command...
  local t=$1 desc=$2 out
  shift 2
  if out=$(eventually "$t" "$@"); then pass "$desc"; else fail "$desc" "$out"; fi
}
summary() {
  echo
  echo "test-gitops: took $((SECONDS - start))s"
  [ ${#failed[@]} -eq 0 ] || printf 'FAILED: %s\n' "${failed[@]}"
  # The closing line, alone: "test-gitops: N passed, N failed".
  echo "test-gitops: $passed passed, ${#failed[@]} failed"
}
die() { # a prerequisite is missing or the environment could not start: fail loudly
  fail "$1" "${2:-}"
  summary
  exit 1
}

# --- prerequisites -----------------------------------------------------------------------------
step "prerequisites"
missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need git git
need jq jq
need curl curl
need python3 python3
need openssl openssl
need flock util-linux
need redis-server redis-server
need redis-cli redis-tools
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "prerequisites" "missing: ${missing[*]} (apt-get install ${missing[*]})"
  echo "installing ${missing[*]}" >&2
  apt-get update -qq >&2 || die "apt-get update" "could not update the package lists; install by hand: apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]}" "install them by hand"
fi
command -v go >/dev/null || die "Go toolchain" "Go is needed to build Kubernetes and Argo CD (a Go toolchain on PATH)"
command -v cargo >/dev/null || die "Rust toolchain" "cargo and rustc are needed (https://rustup.rs)"

step "binaries"
KILN_K8S_BIN=$(hack/k8s-binaries.sh) || die "hack/k8s-binaries.sh" "building the control plane's binaries failed"
export KILN_K8S_BIN
argocd_dir=$(hack/argocd.sh build) || die "hack/argocd.sh build" "building Argo CD failed"
argocd_version=$(basename "$argocd_dir" | cut -d- -f2)
cargo build --locked --quiet --bin kiln || die "cargo build --bin kiln" "see the output above"
kiln=${CARGO_TARGET_DIR:-target}/debug/kiln
[ -x "$kiln" ] || die "the kiln binary" "$kiln is missing after cargo build"
kiln=$(cd "$(dirname "$kiln")" && pwd)/kiln

dir=${KILN_GITOPS_DIR:-$(mktemp -d /tmp/kiln-gitops.XXXXXX)}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
operator=
cleanup() {
  local rc=$?
  if [ -n "$operator" ] && kill -0 "$operator" 2>/dev/null; then
    kill -TERM "$operator" 2>/dev/null || true
    wait "$operator" 2>/dev/null || true
  fi
  hack/argocd.sh stop "$dir" >/dev/null 2>&1 || true
  hack/control-plane.sh stop "$dir" >/dev/null 2>&1 || true
  if [ "${KILN_GITOPS_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    echo "gitops: state and logs kept in $dir" >&2
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "control plane"
KILN_CP_EXTRA_CONTROLLERS=deployment-controller,replicaset-controller \
  hack/control-plane.sh start "$dir" >/dev/null || die "hack/control-plane.sh start" "see $dir/logs"
kubectl() { "$KILN_K8S_BIN/kubectl" --kubeconfig "$dir/kubeconfig" --request-timeout=30s "$@"; }

step "Argo CD $argocd_version"
env_file=$(hack/argocd.sh start "$dir") || die "hack/argocd.sh start" "see $dir/logs/argocd-*.log"
# shellcheck source=/dev/null
. "$env_file"
for v in ARGOCD_NAMESPACE KILN_GITOPS_REPO_URL KILN_GITOPS_REPO_DIR KILN_ARGOCD_REDIS KILN_ARGOCD_REDIS_PASSWORD; do
  [ -n "${!v:-}" ] || die "$env_file exports $v" "$(cat "$env_file")"
done
pass "hack/argocd.sh start wrote $env_file (repository $KILN_GITOPS_REPO_URL)"
health_checks_installed() {
  local k
  for k in Draft Job ProviderConfig; do
    kubectl -n "$ARGOCD_NAMESPACE" get cm argocd-cm -o json |
      jq -j --arg k "resource.customizations.health.kiln.dev_$k" '.data[$k]' |
      diff - "deploy/argocd/health/kiln.dev/$k/health.lua" >/dev/null || { echo "$k differs or is missing"; return 1; }
  done
}
check "argocd-cm holds Kiln's three health checks, byte for byte the files in deploy/argocd/health" health_checks_installed


ns=kiln-gitops
repo=$KILN_GITOPS_REPO_DIR
argo() { kubectl -n "$ARGOCD_NAMESPACE" "$@"; }
# One jq filter over an Application.
app() { argo get application "$1" -o json | jq -r "$2"; }
# Commit everything in the clone, push it, and ask Argo CD to look at the Applications given
# (what a webhook from a Git host would do). Prints the new commit.
push() { # message apps...
  local msg=$1 a
  shift
  git -C "$repo" add -A
  git -C "$repo" commit -q -m "$msg"
  git -C "$repo" push -q origin main
  for a in "$@"; do argo annotate application "$a" argocd.argoproj.io/refresh=normal --overwrite >/dev/null; done
  git -C "$repo" rev-parse HEAD
}
all_apps=(kiln)
push_all() { push "$1" "${all_apps[@]}"; }
# The Application is Synced at REVISION, its last sync (of that revision) succeeded, and its
# health is HEALTH (any, if not given).
synced_at() { # app revision [health]
  local got want="Synced $2 Succeeded $2"
  got=$(app "$1" '[.status.sync.status, .status.sync.revision, .status.operationState.phase, .status.operationState.syncResult.revision, .status.health.status] | map(. // "-") | join(" ")')
  if [ -n "${3:-}" ]; then [ "$got" = "$want $3" ]; else [[ $got == "$want "* ]]; fi && return 0
  echo "want: $want ${3:-<any health>}"
  echo "got:  $got"
  app "$1" '.status.conditions // empty, .status.operationState.message // empty'
  return 1
}
# "sync-status health|message" of one resource, as the Application's status has it.
resource_state() { # app kind name
  app "$1" ".status.resources[] | select(.kind == \"$2\" and .name == \"$3\") | \"\(.status) \(.health.status // \"-\")|\(.health.message // \"\")\""
}
synced_healthy_resource() { # app kind name
  local got
  got=$(resource_state "$1" "$2" "$3")
  [[ $got == "Synced Healthy|"* ]] || { echo "$2/$3 in $1: $got"; return 1; }
}
# What health.lua promises for a live Kiln object, by its rules: "status|message".
expected_health() { # kind name
  kubectl -n "$ns" get "$1.kiln.dev" "$2" -o json | jq -r '
    def cond($t): (.status.conditions // []) | map(select(.type == $t)) | first;
    def describe($c): [$c.reason, $c.message] | map(select(. != null and . != "")) | join(": ");
    if .status == null or ((.status.observedGeneration // -1) < .metadata.generation) then
      "Progressing|Waiting for Kiln to observe generation \(.metadata.generation)"
    elif .status.phase == "Expired" or (cond("Expired").status == "True") then "Suspended|\(cond("Expired").message)"
    elif .kind == "Job" and .status.phase == "Failed" then "Degraded|Failed: \(.status.message)"
    elif cond("Stalled").status == "True" then "Degraded|\(describe(cond("Stalled")))"
    elif cond("Ready").status == "True" then
      "Healthy|\(cond("Ready").message)" +
      (if cond("ExpiringSoon").status == "True" then "; expiring soon: \(cond("ExpiringSoon").message)" else "" end)
    else "Other|(not covered here) \(.status | tostring)" end'
}
# Argo CD reports for a Kiln object the health that health.lua promises, and it is Synced.
health_matches() { # app kind name want-status
  local got want
  got=$(resource_state "$1" "$2" "$3")
  want=$(expected_health "$2" "$3")
  [ "${got%% *}" = Synced ] || { echo "$2/$3 is not Synced in $1: $got"; return 1; }
  [ "${got#* }" = "$want" ] || { echo "$2/$3 in $1: Argo CD says '${got#* }', health.lua promises '$want'"; return 1; }
  [ "${want%%|*}" = "$4" ] || { echo "$2/$3: $want; want $4"; return 1; }
  echo "${got#* }"
}
# The resource tree the controller keeps for an Application in Redis (gzipped JSON): what
# argocd-server, and so the UI and `argocd app resources`, show.
tree() { # app
  local key
  key=$(REDISCLI_AUTH=$KILN_ARGOCD_REDIS_PASSWORD redis-cli -h "${KILN_ARGOCD_REDIS%:*}" -p "${KILN_ARGOCD_REDIS##*:}" \
    --scan --pattern "app|resources-tree|$1|*" | head -n 1)
  [ -n "$key" ] || { echo "no resource tree for $1 in Redis"; return 1; }
  REDISCLI_AUTH=$KILN_ARGOCD_REDIS_PASSWORD redis-cli -h "${KILN_ARGOCD_REDIS%:*}" -p "${KILN_ARGOCD_REDIS##*:}" --raw GET "$key" |
    head -c -1 | if [[ $key == *.gz ]]; then gunzip; else cat; fi
}
# The health of a Kiln object in the resource tree is what health.lua promises.
tree_health_matches() { # app kind name want-status
  local got want
  got=$(tree "$1" | jq -r ".nodes[] | select(.kind == \"$2\" and .name == \"$3\") | \"\(.health.status)|\(.health.message)\"") ||
    { echo "$got"; return 1; }
  want=$(expected_health "$2" "$3")
  [ "$got" = "$want" ] || { echo "$2/$3 in $1's resource tree: '$got', health.lua promises '$want'"; return 1; }
  [ "${want%%|*}" = "$4" ] || { echo "$2/$3: $want; want $4"; return 1; }
  echo "$got"
}
# The last sync operation: when it started, of what, and whether self-heal started it.
last_op() { app "$1" '"\(.status.operationState.startedAt) \(.status.operationState.operation.sync.revision // "") autoHealAttempts=\(.status.operationState.operation.sync.autoHealAttemptsCount // 0)"'; }
same() { # what before after
  [ "$2" = "$3" ] || { echo "$1 before: $2"; echo "$1 after:  $3"; return 1; }
}
annotation() { # kind name key [template]
  local path=.metadata.annotations
  [ -z "${4:-}" ] || path=.spec.template.metadata.annotations
  kubectl -n "$ns" get "$1" "$2" -o json | jq -r --arg k "$3" "$path[\$k] // empty"
}
# Sample an Application's sync and health status every 2s until FILE.stop exists.
watch_app() { # app file
  while [ ! -e "$2.stop" ]; do
    app "$1" '"\(now | todate) \(.status.sync.status) \(.status.health.status)"' >>"$2" 2>/dev/null || true
    sleep 2
  done
}
watched_steady() { # file min-samples want
  local n bad
  n=$(wc -l <"$1")
  bad=$(grep -vc " $3\$" "$1" || true)
  [ "$n" -ge "$2" ] && [ "$bad" -eq 0 ] && { echo "$n samples"; return 0; }
  grep -v " $3\$" "$1" | head -n 10
  echo "$n samples (want >= $2), $bad not '$3'"
  return 1
}
# The Application compared itself with REVISION and is Synced (when the commit changed nothing
# under its path, Argo CD has nothing to sync, and its last sync stays the earlier one).
compared_at() { # app revision health
  local got want="Synced $2 $3"
  got=$(app "$1" '[.status.sync.status, .status.sync.revision, .status.health.status] | map(. // "-") | join(" ")')
  [ "$got" = "$want" ] || { echo "want: $want"; echo "got:  $got"; return 1; }
}
diagnose() { # app
  echo "--- Application $1:"
  argo get application "$1" -o json | jq '{sync: .status.sync, health: .status.health, conditions: .status.conditions,
    operationState: (.status.operationState | {phase, message, startedAt, operation}),
    resources: [.status.resources[] | {kind, name, status, health}]}' || true
}

# --- the repository --------------------------------------------------------------------------
step "the GitOps repository"
follower() { # name [hash declared in Git] -> a Deployment following openai-main. No node runs
  # its pods; replicas: 0 so that the deployment controller still reports a real, complete status.
  local pinned=
  [ -z "${2:-}" ] || pinned="
        kiln.dev/credentials-hash-openai-main: $2"
  cat <<EOF
# Follows the ProviderConfig openai-main: Kiln restarts it when the credentials change.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $1
  annotations:
    kiln.dev/follow: openai-main
spec:
  replicas: 0
  selector:
    matchLabels:
      app: $1
  template:
    metadata:
      labels:
        app: $1
      # Git's own pod-template annotation, beside the one Kiln adds on a rollout.
      annotations:
        example.com/team: growth$pinned
    spec:
      containers:
        - name: app
          image: app:1
          envFrom:
            - secretRef:
                name: openai-main-credentials
EOF
}
mkdir -p "$repo/kiln/crds" "$repo/kiln/examples" "$repo/kiln/workloads" "$repo/ssa" "$repo/expiry" \
  "$repo/pinned" "$repo/pinned-ignored"
cp crds/*.yaml "$repo/kiln/crds/"
cp examples/*.yaml "$repo/kiln/examples/"
follower follower >"$repo/kiln/workloads/follower.yaml"
follower follower-ssa >"$repo/ssa/follower-ssa.yaml"
# A follower of the published config: rolled out when welcome-email gets revision 2.
follower config-follower | sed 's|kiln.dev/follow: openai-main|kiln.dev/follow-config: welcome-email-content|' \
  >"$repo/kiln/workloads/config-follower.yaml"
# Followers whose Git manifest declares Kiln's annotation itself (what not to do), once with
# Argo CD's defaults and once with ignoreDifferences.managedFieldsManagers and
# RespectIgnoreDifferences: is that configuration needed, and does it work?
follower follower-pinned pinned-in-git >"$repo/pinned/follower-pinned.yaml"
follower follower-pinned-ignored pinned-in-git >"$repo/pinned-ignored/follower-pinned-ignored.yaml"
# A Draft that runs out while the suite runs. No spec.expiration: Kiln must choose MarkExpired
# because Argo CD tracks it.
expiry_retention=120
cat >"$repo/expiry/short-lived.yaml" <<EOF
apiVersion: kiln.dev/v1alpha1
kind: Draft
metadata:
  name: short-lived
spec:
  configType: content
  retention: ${expiry_retention}s
  config:
    id: short-lived
    generation:
      patterns:
        - type: template
          template: Hello
EOF
rev1=$(push "Kiln's CRDs, the examples and two followers")
pass "pushed $rev1 to $KILN_GITOPS_REPO_URL"

application() { # name path [annotations yaml] [more sync options yaml] [more spec yaml]
  argo apply -f - >/dev/null <<EOF
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: $1
  namespace: $ARGOCD_NAMESPACE
${3:-}
spec:
  project: default
  source:
    repoURL: $KILN_GITOPS_REPO_URL
    targetRevision: main
    path: $2
    directory:
      recurse: true
  destination:
    server: https://kubernetes.default.svc
    namespace: $ns
  syncPolicy:
    automated:
      prune: true
      selfHeal: true
    syncOptions:
      - CreateNamespace=true
${4:-}
${5:-}
EOF
}

# --- 1. Synced and Healthy --------------------------------------------------------------------
step "1. an Application syncs Kiln's CRDs, the examples and a follower"
application kiln kiln
check_eventually 120 "Argo CD created Kiln's CRDs from the repository" \
  kubectl wait --for=condition=Established --timeout=5s crd/drafts.kiln.dev crd/jobs.kiln.dev crd/providerconfigs.kiln.dev

step "the operator (a local process; rollout debounce 5s)"
http_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$dir/workspace"
KUBECONFIG="$dir/kubeconfig" RUST_LOG=info KILN_ROLLOUT_DEBOUNCE=5s \
  "$kiln" run --http-addr "127.0.0.1:$http_port" --workspace-dir "$dir/workspace" --lease-namespace default \
  >"$dir/logs/kiln.log" 2>&1 &
operator=$!
eventually 120 curl -fsS -o /dev/null "http://127.0.0.1:$http_port/readyz" >/dev/null ||
  die "the operator becomes ready" "$(tail -n 30 "$dir/logs/kiln.log")"
pass "the operator is ready"

check_eventually 180 "Application kiln is Synced at $rev1 and Healthy" synced_at kiln "$rev1" Healthy
check_eventually 30 "Draft welcome-email: Argo CD reports what health.lua promises (Healthy, Ready's message)" \
  health_matches kiln Draft welcome-email Healthy
check_eventually 30 "Job hello-world: Argo CD reports what health.lua promises (Healthy, Ready's message)" \
  health_matches kiln Job hello-world Healthy
check_eventually 30 "ProviderConfig openai-main: Argo CD reports what health.lua promises (Healthy, Ready's message)" \
  health_matches kiln ProviderConfig openai-main Healthy
for r in "Draft welcome-email" "Job hello-world" "ProviderConfig openai-main"; do
  # shellcheck disable=SC2086 # two words: kind and name
  check_eventually 30 "$r: the same health in the Application's resource tree" tree_health_matches kiln $r Healthy
done
owned_in_tree() {
  local got
  got=$(tree kiln | jq -r '.nodes[] | select((.parentRefs // []) | any(.kind == "ProviderConfig" and .name == "openai-main")) | "\(.kind)/\(.name)"' | sort | tr '\n' ' ')
  [ "$got" = "ConfigMap/default-openai-provider ConfigMap/openai-main-provider Secret/default-openai-credentials Secret/openai-main-credentials " ] ||
    { echo "children of ProviderConfig/openai-main: $got"; return 1; }
  echo "$got"
}
check_eventually 30 "the resource tree shows openai-main's ConfigMaps and Secrets (its own and the default aliases) under it" owned_in_tree
published_not_in_tree() {
  local got
  got=$(tree kiln | jq -r '.nodes[] | select(.name | startswith("welcome-email-content")) | "\(.kind)/\(.name)"')
  [ -z "$got" ] || { echo "in the tree: $got"; return 1; }
}
check "the published ConfigMap is not in the resource tree" published_not_in_tree
derived_not_in_app() {
  local found
  found=$(app kiln '.status.resources[] | select(.name | test("-content|-provider$|-credentials$")) | "\(.kind)/\(.name)"')
  [ -z "$found" ] || { echo "in the Application: $found"; return 1; }
}
check "Kiln's derived and published objects are not part of the Application" derived_not_in_app
untracked() { # kind name
  local found
  found=$(kubectl -n "$ns" get "$1" "$2" -o json |
    jq -r '(.metadata.annotations // {} | keys[]), (.metadata.labels // {} | keys[]) | select(startswith("argocd.argoproj.io/") or . == "app.kubernetes.io/instance")')
  [ -z "$found" ] || { echo "$1/$2 carries $found"; return 1; }
}
check "the published ConfigMap carries no Argo CD tracking annotation or label" untracked cm welcome-email-content
check "the derived Secret carries no Argo CD tracking annotation or label" untracked secret openai-main-credentials

# The two other Applications, once the CRDs exist: a follower synced with server-side apply
# and compared with server-side diff, and a Draft that expires while the suite runs.
application kiln-ssa ssa "  annotations:
    argocd.argoproj.io/compare-options: ServerSideDiff=true" "      - ServerSideApply=true"
application kiln-expiry expiry
application kiln-pinned pinned
application kiln-pinned-ignored pinned-ignored "" "      - RespectIgnoreDifferences=true" "  ignoreDifferences:
    - group: apps
      kind: Deployment
      managedFieldsManagers:
        - kiln/rollout"
all_apps=(kiln kiln-ssa kiln-expiry kiln-pinned kiln-pinned-ignored)
check_eventually 120 "Application kiln-ssa (ServerSideApply=true, ServerSideDiff=true) is Synced at $rev1 and Healthy" \
  synced_at kiln-ssa "$rev1" Healthy
check_eventually 120 "Application kiln-expiry is Synced at $rev1 and Healthy" synced_at kiln-expiry "$rev1" Healthy
check_eventually 120 "Application kiln-pinned is Synced at $rev1 and Healthy" synced_at kiln-pinned "$rev1" Healthy
check_eventually 120 "Application kiln-pinned-ignored (managedFieldsManagers, RespectIgnoreDifferences) is Synced at $rev1 and Healthy" \
  synced_at kiln-pinned-ignored "$rev1" Healthy
expiry_created=$(kubectl -n "$ns" get draft short-lived -o jsonpath='{.metadata.creationTimestamp}')
expiry_uid=$(kubectl -n "$ns" get draft short-lived -o jsonpath='{.metadata.uid}')

# --- 2. no diff caused by Kiln ------------------------------------------------------------------
step "2. Kiln reconciles; Argo CD sees no diff"
op_before=$(last_op kiln)
watch_app kiln "$dir/watch-drift" &
watcher=$!
# Drift repair: edit the published ConfigMap (not in Git: Argo CD does not track it).
published=$(kubectl -n "$ns" get cm welcome-email-content -o jsonpath='{.data}')
kubectl -n "$ns" patch cm welcome-email-content --type merge -p '{"data":{"welcome-email-content.json":"{}"}}' >/dev/null
restored() {
  [ "$(kubectl -n "$ns" get cm welcome-email-content -o jsonpath='{.data}')" = "$published" ] || { echo "not restored"; return 1; }
  kubectl -n "$ns" get events --field-selector reason=DriftCorrected -o name | grep -q . || { echo "no DriftCorrected Event"; return 1; }
}
check_eventually 30 "Kiln restores the edited published ConfigMap (DriftCorrected)" restored
sleep 20
touch "$dir/watch-drift.stop"
wait "$watcher" || true
check "Application kiln stayed Synced and Healthy through drift repair and status writes (sampled every 2s)" \
  watched_steady "$dir/watch-drift" 8 "Synced Healthy"
check "no sync ran meanwhile (no self-heal)" same "last operation" "$op_before" "$(last_op kiln)"

# A new revision: a commit changes the Draft's config; Kiln publishes revision 2.
sed -i 's/Write a short, friendly welcome email./Write a short, warm welcome email./' "$repo/kiln/examples/draft.yaml"
rev2=$(push_all "welcome-email: warmer instructions")
check_eventually 90 "Application kiln syncs $rev2" synced_at kiln "$rev2"
published_revision() {
  local r
  r=$(kubectl -n "$ns" get draft welcome-email -o jsonpath='{.status.published.revision}')
  [ "$r" = "$1" ] || { echo "published revision: $r"; return 1; }
}
check_eventually 60 "Kiln publishes revision 2 of welcome-email" published_revision 2
changed_by_argocd() {
  local got
  got=$(kubectl -n "$ns" get draft welcome-email -o json | jq -r '.status.history[] | "\(.revision):\(.changedBy)"' | tr '\n' ' ')
  [ "$got" = "1:argocd-controller 2:argocd-controller " ] || { echo "history: $got"; return 1; }
}
check "the Draft's history names Argo CD (argocd-controller) as the author of both revisions" changed_by_argocd
config_rolled() {
  local got
  got="$(annotation deployment config-follower kiln.dev/config-revision-welcome-email-content template) $(annotation deployment config-follower deployment.kubernetes.io/revision)"
  [ "$got" = "2 2" ] || { echo "config revision in the pod template, Deployment revision: $got"; return 1; }
}
check_eventually 60 "config-follower (kiln.dev/follow-config): rolled out by Kiln to revision 2 (Deployment revision 2)" config_rolled
check_eventually 30 "Application kiln is Healthy at $rev2" synced_at kiln "$rev2" Healthy
op_rev2=$(last_op kiln)
watch_app kiln "$dir/watch-revision" &
watcher=$!
sleep 45
touch "$dir/watch-revision.stop"
wait "$watcher" || true
check "after the new revision, Application kiln stayed Synced and Healthy for 45s (sampled every 2s)" \
  watched_steady "$dir/watch-revision" 12 "Synced Healthy"
check "no sync ran after the one of $rev2 (no self-heal)" same "last operation" "$op_rev2" "$(last_op kiln)"
check "config-follower: still at config revision 2, Deployment revision 2 (not reverted)" config_rolled
check "config-follower: Argo CD reports it Synced" synced_healthy_resource kiln Deployment config-follower
no_repeated_sync() {
  local dup
  dup=$(app kiln '.status.history[].revision' | sort | uniq -d)
  [ -z "$dup" ] || { echo "synced more than once: $dup"; return 1; }
}
check "every sync in Application kiln's history is of a different commit" no_repeated_sync
check "revision 1's and revision 2's ConfigMaps both exist after syncs with prune" \
  kubectl -n "$ns" get cm welcome-email-content-r1 welcome-email-content-r2 welcome-email-content

# --- 3. Degraded with the reason, and back --------------------------------------------------------
step "3. an invalid Draft turns the Application Degraded; the fix turns it back"
cp "$repo/kiln/examples/draft.yaml" "$dir/draft-good.yaml"
# Drop `generation` and its block from the config: valid YAML, an invalid content config.
awk '/^    generation:/ {skip = 1; next} skip && /^      / {next} {skip = 0; print}' \
  "$dir/draft-good.yaml" >"$repo/kiln/examples/draft.yaml"
rev3=$(push_all "welcome-email: drop generation (invalid)")
check_eventually 90 "Application kiln syncs $rev3 and turns Degraded" synced_at kiln "$rev3" Degraded
degraded_with_reason() {
  local out
  out=$(health_matches kiln Draft welcome-email Degraded) || { echo "$out"; return 1; }
  [ "$out" = 'Degraded|SchemaViolation: 1 schema violation(s); first: /generation: "generation" is a required property' ] ||
    { echo "$out"; return 1; }
  echo "$out"
}
check_eventually 30 "Draft welcome-email: Degraded, with the reason and the JSON pointer (SchemaViolation, /generation)" \
  degraded_with_reason
app_health_cause() {
  local got
  got=$(app kiln '"\(.status.health.status)|\(.status.health.message)"')
  [ "$got" = "Degraded|Caused by kiln.dev/Draft:$ns/welcome-email" ] || { echo "$got"; return 1; }
}
check "Application kiln's health names the Draft as the cause" app_health_cause
check_eventually 30 "Draft welcome-email: the same health in the resource tree" tree_health_matches kiln Draft welcome-email Degraded
cp "$dir/draft-good.yaml" "$repo/kiln/examples/draft.yaml"
rev4=$(push_all "welcome-email: restore generation")
check_eventually 90 "the fix ($rev4) turns Application kiln Healthy again" synced_at kiln "$rev4" Healthy
check_eventually 30 "Draft welcome-email: Healthy again" health_matches kiln Draft welcome-email Healthy

# --- 4. followers: Kiln's rollout and Argo CD's self-heal ---------------------------------------
step "4. key rotation: Kiln rolls the followers out; self-heal leaves them"
no_hash() {
  local h
  h=$(annotation deployment "$1" kiln.dev/credentials-hash-openai-main template)
  [ -z "$h" ] || { echo "found $h"; return 1; }
}
for d in follower follower-ssa; do
  check "$d: no credentials hash before any rotation" no_hash "$d"
done
gen_before=$(kubectl -n "$ns" get deployment follower -o jsonpath='{.metadata.generation}')
# The baseline of kiln-pinned-ignored is taken here, not at its first sync: Argo CD may
# self-heal once right after creating the Deployment (its cache lagging its own create),
# long before Kiln touches anything.
op_pinned_ignored=$(last_op kiln-pinned-ignored)
sed -i 's/primary: sk-example-not-a-real-key/primary: sk-example-rotated-key/' "$repo/kiln/examples/providerconfig.yaml"
rev5=$(push_all "openai-keys: rotate the primary key")
check_eventually 90 "Application kiln syncs the rotated Secret ($rev5)" synced_at kiln "$rev5" Healthy
rolled() { # deployment
  local h r
  h=$(annotation deployment "$1" kiln.dev/credentials-hash-openai-main template)
  r=$(annotation deployment "$1" deployment.kubernetes.io/revision)
  [ -n "$h" ] && [ "$r" = 2 ] || { echo "hash '$h', deployment revision '$r'"; return 1; }
  echo "$h"
}
for d in follower follower-ssa; do
  check_eventually 60 "$d: rolled out by Kiln (credentials hash in its pod template; Deployment revision 2)" rolled "$d"
done
hash_rolled=$(annotation deployment follower kiln.dev/credentials-hash-openai-main template)
state_of() { # deployment -> what a revert would change
  echo "$(annotation deployment "$1" kiln.dev/credentials-hash-openai-main template) $(annotation deployment "$1" kiln.dev/rolled-out-at) $(annotation deployment "$1" deployment.kubernetes.io/revision)"
}
rolled_state=$(state_of follower)
rolled_state_ssa=$(state_of follower-ssa)
ops_rolled="$(last_op kiln) / $(last_op kiln-ssa)"
# Self-heal acts within seconds of a diff (its first retry comes after 2s); give it ample time.
sleep 30
check "follower: still rolled out 30s later (hash, rollout time, revision)" same "follower" "$rolled_state" "$(state_of follower)"
check "follower-ssa: still rolled out 30s later (hash, rollout time, revision)" same "follower-ssa" "$rolled_state_ssa" "$(state_of follower-ssa)"
check "follower: Argo CD reports it Synced and Healthy (client-side diff)" synced_healthy_resource kiln Deployment follower
check "follower-ssa: Argo CD reports it Synced and Healthy (server-side diff)" synced_healthy_resource kiln-ssa Deployment follower-ssa
check "Application kiln: Synced and Healthy at $rev5" synced_at kiln "$rev5" Healthy
check_eventually 30 "Application kiln-ssa: Synced and Healthy at $rev5" compared_at kiln-ssa "$rev5" Healthy
check "no sync since the rotation (self-heal never fired)" same "last operations" "$ops_rolled" "$(last_op kiln) / $(last_op kiln-ssa)"
generation_once() {
  local g
  g=$(kubectl -n "$ns" get deployment follower -o jsonpath='{.metadata.generation}')
  [ "$g" = $((gen_before + 1)) ] || { echo "generation $g, before the rotation $gen_before"; return 1; }
}
check "follower's generation moved exactly once (the rollout; no revert, no second rollout)" generation_once

# Git itself declares the annotation: Argo CD's defaults revert Kiln's rollout (self-heal);
# with managedFieldsManagers and RespectIgnoreDifferences the rollout stays.
reverted_by_self_heal() {
  local got
  got="$(annotation deployment follower-pinned kiln.dev/credentials-hash-openai-main template) $(annotation deployment follower-pinned deployment.kubernetes.io/revision) $(app kiln-pinned '.status.operationState.operation.sync.autoHealAttemptsCount // 0')"
  [ -n "$(annotation deployment follower-pinned kiln.dev/rolled-out-at)" ] || { echo "Kiln has not rolled it out"; return 1; }
  [[ $got == "pinned-in-git 3 "[1-9]* ]] || { echo "hash, deployment revision, self-heal attempts: $got"; return 1; }
  echo "$got"
}
check_eventually 60 "follower-pinned (Git declares the hash; Argo CD's defaults): Kiln rolled it out, and self-heal put Git's value back (Deployment revision 3)" \
  reverted_by_self_heal
followers_reported() {
  local got
  got=$(kubectl -n "$ns" get providerconfig openai-main -o json |
    jq -r '"\(.status.followersBehind) " + ([.status.followers[] | select(.name | startswith("follower-pinned")) | "\(.name)=\(.behind)"] | sort | join(" "))')
  [ "$got" = "1 follower-pinned-ignored=false follower-pinned=true" ] || { echo "followersBehind and pinned followers: $got"; return 1; }
}
check_eventually 30 "Kiln reports follower-pinned behind (followersBehind 1), follower-pinned-ignored not" followers_reported
check "Kiln does not roll follower-pinned again by itself: no restart fight (still Deployment revision 3)" \
  same "revision" 3 "$(annotation deployment follower-pinned deployment.kubernetes.io/revision)"
check "follower-pinned-ignored (managedFieldsManagers: kiln/rollout, RespectIgnoreDifferences): Kiln's rollout stays" \
  same "hash" "$hash_rolled" "$(annotation deployment follower-pinned-ignored kiln.dev/credentials-hash-openai-main template)"
check "follower-pinned-ignored: still Deployment revision 2" same "revision" 2 "$(annotation deployment follower-pinned-ignored deployment.kubernetes.io/revision)"
check "Application kiln-pinned-ignored: Synced and Healthy, no sync since the rotation (no self-heal)" \
  same "sync, health, last operation" "Synced Healthy $op_pinned_ignored" "$(app kiln-pinned-ignored '"\(.status.sync.status) \(.status.health.status)"') $(last_op kiln-pinned-ignored)"

# Git changes the followers' pod templates: Argo CD syncs them; Kiln's annotations stay.
sed -i 's/^          image: app:1$/          image: app:2/' "$repo/kiln/workloads/follower.yaml" "$repo/ssa/follower-ssa.yaml"
rev6=$(push_all "followers: app:2")
kept() { # deployment
  local got
  got="$(kubectl -n "$ns" get deployment "$1" -o jsonpath='{.spec.template.spec.containers[0].image}') $(annotation deployment "$1" kiln.dev/credentials-hash-openai-main template) $(annotation deployment "$1" example.com/team template)"
  [ "$got" = "app:2 $hash_rolled growth" ] || { echo "image, Kiln's hash, Git's annotation: $got; want app:2 $hash_rolled growth"; return 1; }
}
check_eventually 90 "Application kiln syncs $rev6 (a change to follower's pod template)" synced_at kiln "$rev6" Healthy
check "follower: Argo CD applied app:2 and kept Kiln's hash beside Git's own annotation (client-side apply)" kept follower
check_eventually 90 "Application kiln-ssa syncs $rev6 (a change to follower-ssa's pod template)" synced_at kiln-ssa "$rev6" Healthy
check "follower-ssa: Argo CD applied app:2 and kept Kiln's hash beside Git's own annotation (server-side apply)" kept follower-ssa

# --- 5. expiry under Argo CD ----------------------------------------------------------------------
step "5. a tracked Draft runs out: MarkExpired, and Argo CD leaves it"
expired() {
  local out
  out=$(kubectl -n "$ns" get draft short-lived -o json | jq -r '"\(.status.phase) \(.status.expiration) \(.metadata.uid)"')
  [ "$out" = "Expired MarkExpired $expiry_uid" ] || { echo "phase, expiration, uid: $out; want Expired MarkExpired $expiry_uid"; return 1; }
}
remaining=$(($(date -d "$expiry_created" +%s) + expiry_retention - $(date +%s)))
[ $remaining -le 0 ] || echo "gitops: short-lived expires in ${remaining}s" >&2
check_eventually $((remaining > 0 ? remaining + 60 : 60)) \
  "Draft short-lived (tracked, no spec.expiration) is Expired with MarkExpired, the same object" expired
check_eventually 30 "Draft short-lived: Suspended in Argo CD, with the Expired condition's message" \
  health_matches kiln-expiry Draft short-lived Suspended
op_expired=$(last_op kiln-expiry)
sleep 30
check "30s later: the same Draft, still Expired: neither deleted nor recreated" expired
check "Application kiln-expiry: no sync since (no self-heal)" same "last operation" "$op_expired" "$(last_op kiln-expiry)"
check "Application kiln-expiry: Synced, Suspended" compared_at kiln-expiry "$rev6" Suspended

# --- 6. prune: published ConfigMaps outlive their Draft ------------------------------------------
step "6. removing the Draft from Git: Argo CD prunes it, not what it published"
git -C "$repo" rm -q kiln/examples/draft.yaml
rev7=$(push_all "remove the welcome-email Draft")
check_eventually 90 "Application kiln syncs $rev7" synced_at kiln "$rev7" Healthy
gone() { ! kubectl -n "$ns" get "$1" "$2" >/dev/null 2>&1 || { echo "$1/$2 still exists"; return 1; }; }
check_eventually 60 "Argo CD pruned Draft welcome-email" gone draft welcome-email
sleep 10
check "the published ConfigMaps (current and one per revision) are still there, unowned" \
  kubectl -n "$ns" get cm welcome-email-content welcome-email-content-r1 welcome-email-content-r2

if [ ${#failed[@]} -gt 0 ]; then
  for a in "${all_apps[@]}"; do diagnose "$a"; done >"$dir/applications.txt" 2>&1
  echo "gitops: the Applications' status is in $dir/applications.txt" >&2
fi
summary
[ ${#failed[@]} -eq 0 ]
