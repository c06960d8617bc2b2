#!/usr/bin/env bash
# End-to-end suite: Kiln as users run it. A control plane (hack/control-plane.sh), a real node
# (hack/node.sh: kubelet, containerd, runc, CNI, kube-proxy), Kiln's image built from the
# Dockerfile (hack/image.sh) and installed with its Helm chart; then the chart's probes,
# security context, Service, emptyDir and its sizeLimit are exercised against the running pod.
# Needs root (a node manages mounts, cgroups and network namespaces). See docs/testing.md.
#
# Every check counts; the run fails (exit 1) if any failed, and a missing prerequisite fails
# it with a message saying how to get it. Nothing is skipped.
#
#   KILN_E2E_DIR=DIR   state directory (default: a new one under /tmp); kept when KILN_E2E_KEEP=1
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
step() { printf '\n=== e2e: %s (%ds)\n' "$*" $((SECONDS - start)) >&2; }

passed=0
failed=()
pass() { passed=$((passed + 1)); echo "ok   - $1"; }
fail() {
  failed+=("$1")
  echo "FAIL - $1"
  [ -z "${2:-}" ] || printf '%s\n' "$2" | sed 's/^/       /' | tail -n 30
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
summary() {
  echo
  echo "test-e2e: took $((SECONDS - start))s"
  [ ${#failed[@]} -eq 0 ] || printf 'FAILED: %s\n' "${failed[@]}"
  # The closing line, alone: "test-e2e: N passed, N failed".
  echo "test-e2e: $passed passed, ${#failed[@]} failed"
}
die() { # a prerequisite is missing: fail loudly, with what to do
  fail "$1" "${2:-}"
  summary
  exit 1
}

# --- prerequisites -----------------------------------------------------------------------------
step "prerequisites"
[ "$(id -u)" -eq 0 ] || die "run as root" "the e2e suite starts a kubelet, containerd and runc: run it as root (sudo hack/test-e2e.sh)"
missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need buildah buildah
need mmdebstrap mmdebstrap
need iptables iptables
need socat socat
need openssl openssl
need python3 python3
need curl curl
need flock util-linux
need gcc gcc
need pkg-config pkg-config
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || missing+=(busybox-static)
[ -e /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq >&2 || die "apt-get update" "could not update the package lists; install by hand: apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]}" "install them by hand"
fi
command -v go >/dev/null || die "Go toolchain" "Go >= 1.26 is needed to build the node's binaries (apt-get install golang-go, or a newer Go on PATH)"
command -v cargo >/dev/null || die "Rust toolchain" "cargo and rustc are needed (https://rustup.rs)"

step "binaries"
KILN_K8S_BIN=$(hack/k8s-binaries.sh) || die "hack/k8s-binaries.sh" "building the control plane's binaries failed"
KILN_NODE_BIN=$(hack/node-binaries.sh) || die "hack/node-binaries.sh" "building the node's binaries failed"
export KILN_K8S_BIN KILN_NODE_BIN
export PATH=$KILN_K8S_BIN:$PATH

dir=${KILN_E2E_DIR:-$(mktemp -d /tmp/kiln-e2e.XXXXXX)}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
cleanup() {
  local rc=$?
  hack/node.sh stop "$dir" >/dev/null 2>&1 || true
  hack/control-plane.sh stop "$dir" >/dev/null 2>&1 || true
  if [ "${KILN_E2E_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
    echo "e2e: state and logs kept in $dir" >&2
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "control plane"
hack/control-plane.sh start "$dir" >/dev/null || die "hack/control-plane.sh start" "see $dir/logs"
export KUBECONFIG=$dir/kubeconfig
k() { kubectl --request-timeout=30s "$@"; }

step "node"
t=$SECONDS
hack/node.sh start "$dir" || die "hack/node.sh start: the node becomes Ready" "see $dir/logs/{containerd,kubelet,kube-proxy}.log"
node_start=$((SECONDS - t))
pass "hack/node.sh start: node Ready in ${node_start}s"
check "kubectl get nodes shows kiln-node Ready" \
  bash -c "kubectl get nodes --no-headers | grep -E '^kiln-node +Ready '"

step "image"
t=$SECONDS
image=$(hack/image.sh "$dir" | tail -n 1) || die "hack/image.sh builds the Dockerfile and loads the image" "see the output above"
image_time=$((SECONDS - t))
[[ $image == *:* ]] || die "hack/image.sh prints repository:tag last" "it printed: $image"
pass "hack/image.sh built and loaded $image in ${image_time}s"
bah() { buildah --root "${KILN_CACHE:-$HOME/.cache/kiln}/buildah/storage" --runroot "${KILN_CACHE:-$HOME/.cache/kiln}/buildah/run" --storage-driver vfs "$@"; }
image_size=$(bah images --noheading --format '{{.Size}}' "$image" | head -n1)
image_bytes=$(numfmt --from=si "$(tr -d ' B' <<<"$image_size")" 2>/dev/null || echo 0)
if [ "$image_bytes" -gt 0 ] && [ "$image_bytes" -le 40000000 ]; then
  pass "image size $image_bytes bytes <= 40 MB"
else
  fail "image size <= 40 MB" "measured: $image_bytes bytes"
fi
client_image=localhost/kiln-e2e/client:bookworm
ctr_() { "$KILN_NODE_BIN/ctr" --address "$dir/node/run/containerd/containerd.sock" -n k8s.io "$@"; }
check "the node's containerd holds $image and $client_image" \
  bash -c "'$KILN_NODE_BIN/ctr' --address '$dir/node/run/containerd/containerd.sock' -n k8s.io images ls -q | grep -qx '$image' && '$KILN_NODE_BIN/ctr' --address '$dir/node/run/containerd/containerd.sock' -n k8s.io images ls -q | grep -qx '$client_image'"

# --- helm install ------------------------------------------------------------------------------
step "helm install"
ns=kiln-system
repo=${image%:*}
tag=${image##*:}
# A small workspace (64Mi emptyDir; Kiln's budget is 90% of it) so that the limit test fills
# it quickly; a short rollout debounce so that the follow test need not wait 30s.
helm_values=(--set "image.repository=$repo" --set "image.tag=$tag" --set image.pullPolicy=Never
  --set workspace.sizeLimit=64Mi --set limits.maxJobBytes=40Mi --set rolloutDebounce=5s --set logFormat=text)
t=$SECONDS
check "helm install kiln (image $image, imagePullPolicy Never)" \
  helm install kiln charts/kiln -n "$ns" --create-namespace "${helm_values[@]}"
kiln_pod() { k -n "$ns" get pods -l app.kubernetes.io/name=kiln --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}'; }
pod_ready() { # pod
  [ "$(k -n "$ns" get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
wait_kiln_ready() { # [not-this-uid] -> prints the pod name
  local p uid
  p=$(kiln_pod) || return 1
  [ -n "$p" ] || return 1
  uid=$(k -n "$ns" get pod "$p" -o jsonpath='{.metadata.uid}')
  [ -z "${1:-}" ] || [ "$uid" != "$1" ] || return 1
  pod_ready "$p" || return 1
  echo "$p"
}
if pod=$(eventually 240 wait_kiln_ready); then
  ready_time=$((SECONDS - t))
  pass "the operator pod $pod is Ready (readiness probe /readyz) ${ready_time}s after helm install"
else
  k -n "$ns" describe pods >"$dir/describe-kiln.txt" 2>&1 || true
  die "the operator pod becomes Ready" "$(tail -n 30 "$dir/describe-kiln.txt")"
fi
created=$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.creationTimestamp}')
readyat=$(k -n "$ns" get pod "$pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].lastTransitionTime}')
pod_ready_s=$(($(date -d "$readyat" +%s) - $(date -d "$created" +%s)))
echo "e2e: pod created $created, Ready $readyat (${pod_ready_s}s)" >&2
check "the readiness probe is the chart's (/readyz over HTTPS)" \
  bash -c "[ \"\$(kubectl -n $ns get pod $pod -o jsonpath='{.spec.containers[0].readinessProbe.httpGet.path} {.spec.containers[0].readinessProbe.httpGet.scheme}')\" = '/readyz HTTPS' ]"
check "the image ran is $image, pulled never" \
  bash -c "[ \"\$(kubectl -n $ns get pod $pod -o jsonpath='{.spec.containers[0].image} {.spec.containers[0].imagePullPolicy}')\" = '$image Never' ]"

step "examples"
k create namespace team-a >/dev/null
k apply -n team-a -f examples/ >/dev/null
check "the examples become Ready (Draft, Job, ProviderConfig)" \
  k -n team-a wait --for=condition=Ready --timeout=120s draft/welcome-email job.kiln.dev/hello-world providerconfig/openai-main

# --- the container's security context, on the running process ----------------------------------
step "security context of the running container"
container_pid() { # pod -> host pid of the kiln container's process
  local cid
  cid=$(k -n "$ns" get pod "$1" -o jsonpath='{.status.containerStatuses[0].containerID}')
  cid=${cid#containerd://}
  [ -n "$cid" ] || return 1
  ctr_ tasks ls | awk -v c="$cid" '$1 == c {print $2}'
}
kpid=$(container_pid "$pod")
status_field() { awk -v f="$1:" '$1 == f {$1=""; print substr($0, 2)}' "/proc/$kpid/status"; }
if [ -n "$kpid" ] && [ -r "/proc/$kpid/status" ]; then
  pass "found the operator's process on the node (pid $kpid: $(tr '\0' ' ' <"/proc/$kpid/cmdline"))"
  [ "$(status_field Uid | tr -s '\t ' ' ')" = "65532 65532 65532 65532" ] && pass "runs as uid 65532 (real, effective, saved, fs)" || fail "runs as uid 65532" "Uid: $(status_field Uid)"
  [ "$(status_field Gid | tr -s '\t ' ' ')" = "65532 65532 65532 65532" ] && pass "runs as gid 65532" || fail "runs as gid 65532" "Gid: $(status_field Gid)"
  caps_ok=1
  for c in CapInh CapPrm CapEff CapBnd CapAmb; do
    [ "$(status_field $c)" = 0000000000000000 ] || { caps_ok=0; fail "no capabilities: $c is empty" "$c: $(status_field $c)"; }
  done
  [ $caps_ok = 1 ] && pass "no capabilities (inheritable, permitted, effective, bounding, ambient all 0)"
  [ "$(status_field NoNewPrivs)" = 1 ] && pass "no privilege escalation (NoNewPrivs 1)" || fail "NoNewPrivs is 1" "NoNewPrivs: $(status_field NoNewPrivs)"
  [ "$(status_field Seccomp)" = 2 ] && pass "seccomp filter active (RuntimeDefault)" || fail "seccomp filter active" "Seccomp: $(status_field Seccomp)"
  rootopts=$(awk '$5 == "/" {print $6}' "/proc/$kpid/mountinfo")
  [[ ,$rootopts, == *,ro,* ]] && pass "root filesystem mounted read-only ($rootopts)" || fail "root filesystem read-only" "mount options of /: $rootopts"
  wsopts=$(awk '$5 == "/var/lib/kiln/workspace" {print $6}' "/proc/$kpid/mountinfo")
  [[ ,$wsopts, == *,rw,* ]] && pass "the workspace emptyDir is the writable mount ($wsopts)" || fail "the workspace is mounted read-write" "$wsopts"
  # Through the process's own root (/proc/PID/root): even the host's root gets EROFS there.
  if touch "/proc/$kpid/root/kiln-e2e-probe" 2>"$dir/rofs.err"; then
    rm -f "/proc/$kpid/root/kiln-e2e-probe"
    fail "writing the container's root filesystem fails" "the write succeeded"
  elif grep -q 'Read-only file system' "$dir/rofs.err"; then
    pass "writing the container's root filesystem fails with EROFS, even for the host's root"
  else
    fail "writing the container's root filesystem fails with EROFS" "$(cat "$dir/rofs.err")"
  fi
else
  fail "found the operator's process on the node" "no task for the pod's container"
fi

# --- the file API through the Service, from another namespace ---------------------------------
step "file API through the Service from a client pod"
k create namespace clients >/dev/null
k -n clients create serviceaccount uploader >/dev/null
k -n clients create serviceaccount stranger >/dev/null
k -n team-a create rolebinding uploader-edit --clusterrole=edit --serviceaccount=clients:uploader >/dev/null
k -n clients create configmap kiln-ca --from-literal=ca.crt="$(k -n "$ns" get secret kiln-tls -o jsonpath='{.data.ca\.crt}' | base64 -d)" >/dev/null
svc_ip=$(k -n "$ns" get service kiln -o jsonpath='{.spec.clusterIP}')
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: clients}
spec:
  serviceAccountName: uploader
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: $client_image
      imagePullPolicy: Never
      command: [sleep, infinity]
      volumeMounts: [{name: ca, mountPath: /ca}]
  volumes: [{name: ca, configMap: {name: kiln-ca}}]
EOF
check "the client pod (namespace clients, ServiceAccount uploader) is Ready" \
  k -n clients wait --for=condition=Ready --timeout=120s pod/client
base=https://kiln.kiln-system.svc:8080
# curl in the client pod: the Service's name resolves to its ClusterIP (no cluster DNS here),
# the certificate is checked against the chart's CA.
api() { # method path [curl args...] -> "STATUS BODY"
  local m=$1 p=$2
  shift 2
  k -n clients exec client -- curl -sS --max-time 20 --cacert /ca/ca.crt --resolve "kiln.kiln-system.svc:8080:$svc_ip" \
    -X "$m" -w '\n%{http_code}' "$@" "$base$p"
}
token='-H "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)"'
apit() { # method path [curl args...]: with the pod's ServiceAccount token
  local m=$1 p=$2
  shift 2
  local args=
  [ $# -eq 0 ] || args=$(printf ' %q' "$@")
  k -n clients exec client -- sh -c "curl -sS --max-time 60 --cacert /ca/ca.crt --resolve kiln.kiln-system.svc:8080:$svc_ip $token -X $m -w '\n%{http_code}'$args $base$p"
}
code_of() { tail -n 1 <<<"$1"; }
expect() { # description expected-code output
  local got
  got=$(code_of "$3")
  if [ "$got" = "$2" ]; then pass "$1 -> $2"; else fail "$1 -> $2" "got $got: $(head -c 600 <<<"$3")"; fi
}

k apply -n team-a -f - >/dev/null <<'EOF'
apiVersion: kiln.dev/v1alpha1
kind: Job
metadata: {name: uploads}
spec:
  projectName: uploads
  plan:
    tasks: [{name: all, files: [docs/guide.md, README.md]}]
  files:
    - path: README.md
      content: "# uploads\n"
EOF
check "job uploads is reconciled" eventually 60 bash -c "[ -n \"\$(kubectl -n team-a get job.kiln.dev uploads -o jsonpath='{.status.phase}')\" ]"
out=$(apit POST /api/v1/namespaces/team-a/jobs/uploads/files -H 'Content-Type: application/json' -d '{"path":"docs/guide.md","content":"uploaded through the Service\n"}' || true)
expect "POST a file with the uploader's token (aggregated edit role)" 201 "$out"
out=$(apit GET /api/v1/namespaces/team-a/jobs/uploads/files/docs/guide.md || true)
expect "GET it back" 200 "$out"
[[ $out == "uploaded through the Service"* ]] && pass "the content read back is what was written" || fail "the content read back is what was written" "$out"
out=$(apit GET /api/v1/namespaces/team-a/jobs/uploads/files || true)
expect "list the job's files" 200 "$out"
[[ $out == *docs/guide.md* && $out == *README.md* ]] && pass "the list holds the uploaded and the declared file" || fail "the list holds both files" "$out"
out=$(api GET /api/v1/namespaces/team-a/jobs/uploads/files || true)
expect "no token" 401 "$out"
stranger=$(k -n clients create token stranger --duration=1h)
out=$(api GET /api/v1/namespaces/team-a/jobs/uploads/files -H "Authorization: Bearer $stranger" || true)
expect "a ServiceAccount without a role in team-a" 403 "$out"
out=$(apit POST /api/v1/namespaces/clients/jobs/uploads/files -H 'Content-Type: application/json' -d '{"path":"x","content":"x"}' || true)
expect "the uploader writing in a namespace where it has no role" 403 "$out"
out=$(apit GET /api/v1/stats || true)
expect "GET /api/v1/stats as the uploader (no cluster-wide list of jobs)" 403 "$out"
k -n clients create serviceaccount watcher >/dev/null
k create clusterrolebinding clients-watcher-view --clusterrole=view --serviceaccount=clients:watcher >/dev/null
watcher=$(k -n clients create token watcher --duration=1h)
out=$(api GET /api/v1/stats -H "Authorization: Bearer $watcher" || true)
expect "GET /api/v1/stats with the built-in view role cluster-wide" 200 "$out"

# --- liveness: a hung operator is restarted ----------------------------------------------------
step "liveness probe restarts a stopped (SIGSTOP) operator"
restarts() { k -n "$ns" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
r0=$(restarts)
kpid=$(container_pid "$pod")
if [ -n "$kpid" ] && kill -STOP "$kpid"; then
  pass "SIGSTOP sent to the operator (pid $kpid)"
  t=$SECONDS
  restarted() { [ "$(restarts)" -gt "$r0" ] && pod_ready "$pod"; }
  if eventually 200 restarted >/dev/null; then
    pass "the kubelet restarted the container after failed liveness probes and it is Ready again ($((SECONDS - t))s)"
  else
    fail "the kubelet restarts the hung container" "restartCount $(restarts); $(k -n "$ns" describe pod "$pod" | tail -n 15)"
  fi
  check "an Event records the failed liveness probe" \
    bash -c "kubectl -n $ns get events --field-selector involvedObject.name=$pod -o jsonpath='{.items[*].message}' | grep -q 'Liveness probe failed'"
  out=$(apit GET /api/v1/namespaces/team-a/jobs/uploads/files/docs/guide.md || true)
  expect "after a container restart the emptyDir still holds the uploaded file" 200 "$out"
else
  fail "SIGSTOP the operator" "no process found"
fi

# --- key rotation rolls a following Deployment once --------------------------------------------
step "key rotation on a ProviderConfig rolls a following Deployment, once"
k apply -n team-a -f - >/dev/null <<EOF
apiVersion: v1
kind: Secret
metadata: {name: rotating-key}
stringData: {key: first-value}
---
apiVersion: kiln.dev/v1alpha1
kind: ProviderConfig
metadata: {name: rotating}
spec:
  providerType: example
  apiKeys: [{name: main, secretRef: {name: rotating-key, key: key}}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: follower
  annotations: {kiln.dev/follow: rotating}
spec:
  replicas: 2
  selector: {matchLabels: {app: follower}}
  template:
    metadata: {labels: {app: follower}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: $client_image
          imagePullPolicy: Never
          command: [sleep, infinity]
          envFrom: [{secretRef: {name: rotating-credentials}}]
EOF
check "ProviderConfig rotating is Ready" k -n team-a wait --for=condition=Ready --timeout=60s providerconfig/rotating
check "Deployment follower is available" k -n team-a rollout status deployment/follower --timeout=120s
follower_uids() { k -n team-a get pods -l app=follower -o jsonpath='{range .items[*]}{.metadata.uid}{"\n"}{end}' | sort; }
revision() { k -n team-a get deployment follower -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}'; }
sleep 8 # longer than the debounce: creating the Secret must not roll anything
rev0=$(revision)
uids0=$(follower_uids)
[ "$rev0" = 1 ] && pass "no rollout when the credentials are first created (revision 1)" || fail "no rollout at creation" "revision $rev0"
k -n team-a patch secret rotating-key -p '{"stringData":{"key":"second-value"}}' >/dev/null
rolled() { [ "$(revision)" = 2 ]; }
check "rotating the key rolls the Deployment (revision 2)" eventually 60 rolled
check "the rollout completes" k -n team-a rollout status deployment/follower --timeout=120s
gone_and_new() {
  local now
  now=$(follower_uids)
  [ "$(wc -l <<<"$now")" -eq 2 ] || return 1
  ! comm -12 <(echo "$uids0") <(echo "$now") | grep -q .
}
check "the follower's pods were all replaced (new UIDs, old ones gone)" eventually 60 gone_and_new
sleep 12 # two debounce windows: no second rollout follows
[ "$(revision)" = 2 ] && pass "exactly one rollout for one rotation" || fail "exactly one rollout" "revision $(revision)"

# --- the workspace limit: Kiln answers 413 before the kubelet would evict ----------------------
step "workspace limit (413) before the emptyDir sizeLimit eviction"
# Two 10 MiB parts per job (each job stays under its 40Mi limit), until the workspace budget
# (90% of 64Mi) is reached: the sixth part must be refused, whichever job it is for.
for j in 1 2 3 4; do
  printf 'apiVersion: kiln.dev/v1alpha1\nkind: Job\nmetadata: {name: filler-%s}\nspec: {projectName: filler-%s}\n' "$j" "$j"
  echo ---
done | k apply -n team-a -f - >/dev/null
eventually 60 bash -c "[ -n \"\$(kubectl -n team-a get job.kiln.dev filler-4 -o jsonpath='{.status.phase}')\" ]" >/dev/null || true
k -n clients exec client -- sh -c 'head -c 10485760 /dev/urandom > /tmp/10m'
codes=()
last413=
for i in 1 2 3 4 5 6 7 8; do
  # HTTP/1.1: over HTTP/2 a refusal sent before the body is read reaches curl 7.88 as a
  # stream reset, not as the 413 (docs/testing.md).
  out=$(apit PUT "/api/v1/namespaces/team-a/jobs/filler-$(((i + 1) / 2))/files/part-$i.bin" --http1.1 --data-binary @/tmp/10m || true)
  codes+=("$(code_of "$out")")
  if [ "$(code_of "$out")" = 413 ]; then last413=$out; break; fi
done
echo "e2e: PUT 10 MiB parts: ${codes[*]}" >&2
if [ "${codes[-1]}" = 413 ] && [ "${codes[*]}" = "201 201 201 201 201 413" ]; then
  pass "Kiln stores parts while its workspace budget holds and refuses the sixth with 413 (${codes[*]})"
  [[ $last413 == *payload_too_large* ]] && pass "the 413 body is {\"error\":{\"code\":\"payload_too_large\"}}: $(head -n 1 <<<"$last413" | head -c 300)" ||
    fail "413 body names payload_too_large" "$last413"
else
  fail "writes over the workspace budget get 413 (expected 201 x5 then 413)" "codes: ${codes[*]}; last: $(head -c 400 <<<"$out")"
fi
uid_before=$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid}')
sleep 25 # the kubelet's eviction manager checks emptyDir usage every 10s
check "the kubelet did not evict the operator (same pod, Running and Ready)" \
  bash -c "[ \"\$(kubectl -n $ns get pod $pod -o jsonpath='{.metadata.uid} {.status.phase}')\" = '$uid_before Running' ]"
out=$(apit DELETE /api/v1/namespaces/team-a/jobs/filler-1/files/part-1.bin || true)
[[ $(code_of "$out") == 20? ]] && pass "deleting a part frees budget ($(code_of "$out"))" || fail "delete a part" "$out"

# --- a new pod: declared files rebuilt, uploaded ones reported lost ----------------------------
step "kubectl delete pod: a new pod rebuilds declared files, reports lost uploads"
old_uid=$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid}')
check "kubectl delete pod $pod" k -n "$ns" delete pod "$pod" --wait=true --timeout=90s
if pod=$(eventually 180 wait_kiln_ready "$old_uid"); then
  pass "a new operator pod $pod is Ready"
else
  die "a new operator pod becomes Ready" "$(k -n "$ns" get pods -o wide 2>&1)"
fi
lost() { [ "$(k -n team-a get job.kiln.dev uploads -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')" = WorkspaceLost ]; }
check "job uploads (an uploaded file lost with the pod) reports WorkspaceLost" eventually 90 lost
msg=$(k -n team-a get job.kiln.dev uploads -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}')
[[ $msg == *"1 uploaded file"* ]] && pass "the WorkspaceLost message counts the lost upload: $msg" || fail "WorkspaceLost counts 1 lost upload" "$msg"
rebuilt() {
  local o
  o=$(apit GET /api/v1/namespaces/team-a/jobs/hello-world/files) || return 1
  [ "$(code_of "$o")" = 200 ] && [[ $o == *README.md* && $o == *src/main.py* && $o == *plan.json* ]] || { echo "$o"; return 1; }
}
check "job hello-world's declared files and plan.json are rebuilt in the new workspace" eventually 90 rebuilt
out=$(apit GET /api/v1/namespaces/team-a/jobs/hello-world/files/src/main.py || true)
[[ $out == *'print("hello, world")'* ]] && pass "the rebuilt template output is right" || fail "rebuilt src/main.py" "$out"
check "job hello-world is Ready again (Complete, archive rebuilt)" \
  k -n team-a wait --for=condition=Ready --timeout=90s job.kiln.dev/hello-world

# --- the sizeLimit is real: past it, the kubelet evicts -----------------------------------------
step "the emptyDir sizeLimit: written past it behind Kiln's back, the kubelet evicts the pod"
uid=$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid}')
ws=$dir/node/kubelet/pods/$uid/volumes/kubernetes.io~empty-dir/workspace
if [ -d "$ws" ]; then
  # 70 MiB into the 64Mi emptyDir from the node, where Kiln cannot refuse it.
  dd if=/dev/zero of="$ws/e2e-overflow" bs=1M count=70 status=none
  # The kubelet's Event is the record: the pod's own status may end as Succeeded (Kiln exits 0
  # on the SIGTERM of the eviction) without reason Evicted (docs/testing.md).
  evicted() {
    k -n "$ns" get events --field-selector "involvedObject.name=$pod,reason=Evicted" \
      -o jsonpath='{.items[*].message}' | grep -q .
  }
  t=$SECONDS
  if eventually 120 evicted >/dev/null; then
    pass "the kubelet evicted the pod $((SECONDS - t))s after its workspace passed the 64Mi sizeLimit: $(k -n "$ns" get events --field-selector "involvedObject.name=$pod,reason=Evicted" -o jsonpath='{.items[0].message}')"
    gone_pod() { [ "$(k -n "$ns" get pod "$pod" -o jsonpath='{.status.phase}' 2>/dev/null)" != Running ]; }
    check "the evicted pod no longer runs (phase $(k -n "$ns" get pod "$pod" -o jsonpath='{.status.phase}{" "}{.status.reason}' 2>/dev/null))" eventually 60 gone_pod
  else
    fail "the kubelet evicts a pod whose emptyDir passes its sizeLimit" "$(k -n "$ns" get pod "$pod" -o jsonpath='{.status}')"
  fi
  if pod=$(eventually 180 wait_kiln_ready "$uid"); then
    pass "the Deployment replaced the evicted pod: $pod is Ready"
  else
    die "a new operator pod replaces the evicted one" "$(k -n "$ns" get pods -o wide 2>&1)"
  fi
else
  fail "found the workspace emptyDir of $pod on the node" "no directory $ws"
fi

# --- helm upgrade and uninstall keep the CRDs and users' objects -------------------------------
step "helm upgrade and helm uninstall"
objects() {
  {
    k -n team-a get drafts.kiln.dev,jobs.kiln.dev,providerconfigs.kiln.dev \
      -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}={.metadata.uid}{"\n"}{end}'
    k -n team-a get configmap/welcome-email-content secret/openai-main-credentials \
      -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}={.metadata.uid}{"\n"}{end}'
  } | sort
}
objs0=$(objects)
crd_uids() { k get crd drafts.kiln.dev jobs.kiln.dev providerconfigs.kiln.dev -o jsonpath='{.items[*].metadata.uid}'; }
crds0=$(crd_uids)
old_uid=$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid}')
check "helm upgrade kiln --set resync=5m (a changed value)" \
  helm upgrade kiln charts/kiln -n "$ns" "${helm_values[@]}" --set resync=5m
check "the Deployment carries the changed value (KILN_RESYNC=5m)" \
  bash -c "kubectl -n $ns get deployment kiln -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name==\"KILN_RESYNC\")].value}' | grep -qx 5m"
if pod=$(eventually 180 wait_kiln_ready "$old_uid"); then
  pass "the upgraded operator pod $pod is Ready"
else
  fail "the upgraded operator pod becomes Ready" "$(k -n "$ns" get pods 2>&1)"
fi
check "the examples are Ready after the upgrade" \
  k -n team-a wait --for=condition=Ready --timeout=90s draft/welcome-email providerconfig/openai-main
[ "$(crd_uids)" = "$crds0" ] && pass "helm upgrade kept the CRDs (same UIDs)" || fail "helm upgrade kept the CRDs" "$(crd_uids)"
[ "$(objects)" = "$objs0" ] && pass "helm upgrade kept the users' objects (same UIDs)" || fail "helm upgrade kept the users' objects" "$(diff <(echo "$objs0") <(objects))"
check "helm uninstall kiln" helm uninstall kiln -n "$ns" --wait --timeout 120s
gone() { ! k -n "$ns" get deployment kiln >/dev/null 2>&1 && [ -z "$(k -n "$ns" get pods -l app.kubernetes.io/name=kiln -o name)" ]; }
check "uninstall removed the operator's Deployment and pod" eventually 90 gone
[ "$(crd_uids)" = "$crds0" ] && pass "helm uninstall kept the CRDs (helm.sh/resource-policy: keep)" || fail "helm uninstall kept the CRDs" "$(crd_uids)"
[ "$(objects)" = "$objs0" ] && pass "helm uninstall kept the users' objects (same UIDs)" || fail "helm uninstall kept the users' objects" "$(diff <(echo "$objs0") <(objects))"

step "done"
cat >&2 <<EOF
e2e timings: node Ready ${node_start}s; image built and loaded ${image_time}s ($image_bytes bytes);
  operator pod Ready ${ready_time}s after helm install (pod created -> Ready ${pod_ready_s}s)
EOF
summary
[ ${#failed[@]} -eq 0 ] && [ "$passed" -gt 0 ]
