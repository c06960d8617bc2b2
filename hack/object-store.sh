#!/usr/bin/env bash
# A real S3-compatible object store (MinIO) as a local process, for Kiln's tests, benchmarks
# and local runs with `--object-store`. No mock: what S3 decides (signatures, multipart,
# listings, presigned URLs) is decided by a real server.
#
#   hack/object-store.sh start DIR   build (once) and start; print DIR/s3.env once ready
#   hack/object-store.sh stop DIR    stop (SIGTERM, wait, SIGKILL); idempotent
#   hack/object-store.sh status DIR  exit 0 if the server runs and answers
#   hack/object-store.sh build       build (or find) the server; print its path
#
# The server is built from source through the Go module proxy at the version pinned by the
# wrapper module hack/object-store/go.mod (verified by the committed go.sum), and cached under
# ${KILN_CACHE:-$HOME/.cache/kiln}; a second run only checks the cache.
#
# `start` listens on 127.0.0.1 only (the S3 API on a free port; MinIO's console is turned off,
# and its listener, should it start, is bound to loopback too), turns off MinIO's update check
# and call-home, keeps every piece of state under DIR/data, creates the bucket `kiln`, and
# writes DIR/s3.env:
#
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP,
#   KILN_OBJECT_STORE=s3://kiln/<prefix>
#
# so that `set -a; . DIR/s3.env; set +a; kiln run` uses the store. Starting again after a stop
# reuses DIR's port, credentials and data: a client configured from s3.env reconnects (the
# tests stop and start the store to check that Kiln recovers).
set -euo pipefail

hack=$(cd "$(dirname "$0")" && pwd)
log() { echo "object-store: $*" >&2; }
usage() { echo "usage: $0 start|stop|status DIR | build" >&2; exit 2; }

bucket=kiln
region=us-east-1

build() {
  local version recipe key cache out
  version=$(awk '$1 == "github.com/minio/minio" {print $2; exit}' "$hack/object-store/go.mod")
  # Bump when the build recipe (flags) changes, so binaries built the old way are not reused.
  recipe=1
  key=$( (echo "recipe $recipe"; cat "$hack/object-store/go.mod" "$hack/object-store/go.sum") | sha256sum | cut -c1-12)
  cache=${KILN_CACHE:-$HOME/.cache/kiln}
  out="$cache/minio-${version}-${key}"
  if [ -x "$out/minio" ]; then echo "$out/minio"; return 0; fi
  command -v go >/dev/null || { log "Go is required to build the server (apt-get install golang-go, or a Go toolchain >= 1.24)"; exit 1; }
  mkdir -p "$out"
  # One build at a time per cache entry; a concurrent caller waits and then finds it done.
  exec 8>"$out.lock"
  flock 8
  if [ -x "$out/minio" ]; then echo "$out/minio"; return 0; fi
  log "building MinIO $version into $out (a cold build downloads ~300 MiB of modules; minutes on 2 cores)"
  local start=$SECONDS
  # The committed go.sum verifies every module; -mod=readonly refuses anything not in it, so
  # the checksum database is never needed.
  (cd "$hack/object-store" \
    && GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath" CGO_ENABLED=0 GOSUMDB=off \
       go build -ldflags "-s -w" -o "$out/minio.tmp" github.com/minio/minio)
  mv "$out/minio.tmp" "$out/minio"
  log "built in $((SECONDS - start))s"
  echo "$out/minio"
}

# True if PID is alive and is this DIR's server (its command line names DIR/data exactly), so
# a reused pid or a neighbour's server is never signalled.
ours() {
  local pid=$1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$dir/data"
}

running_pid() {
  local pid
  [ -f "$dir/pid" ] || return 1
  pid=$(cat "$dir/pid")
  ours "$pid" && echo "$pid"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# 200 from MinIO's liveness endpoint (no credentials needed).
live() {
  curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/minio/health/live" 2>/dev/null
}

# A signed S3 request with curl's own SigV4 (curl >= 7.75): METHOD PATH [curl args...].
s3() {
  local method=$1 path=$2; shift 2
  curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -X "$method" \
    --aws-sigv4 "aws:amz:$region:s3" --user "$access_key:$secret_key" \
    "$@" "http://127.0.0.1:$port$path"
}

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

start() {
  command -v python3 >/dev/null || { log "python3 is required (apt-get install python3)"; exit 1; }
  command -v curl >/dev/null || { log "curl is required (apt-get install curl)"; exit 1; }
  local bin
  bin=$(build)
  if pid=$(running_pid) && [ -f "$dir/s3.env" ]; then
    # shellcheck source=/dev/null
    . "$dir/state"
    live && { log "already running (pid $pid)"; echo "$dir/s3.env"; return 0; }
  fi
  mkdir -p "$dir/data" "$dir/home"
  if [ -f "$dir/state" ]; then
    # shellcheck source=/dev/null
    . "$dir/state"
  else
    port=$(free_port)
    console_port=$(free_port)
    access_key="kiln$(random_hex 6)"
    secret_key=$(random_hex 20)
    prefix="test-$(random_hex 4)"
    umask 077
    cat >"$dir/state" <<EOF
port=$port
console_port=$console_port
access_key=$access_key
secret_key=$secret_key
prefix=$prefix
EOF
    umask 022
  fi
  # A clean environment: nothing from the caller's MINIO_* or proxy settings leaks in.
  # MINIO_UPDATE=off: no update check on start. MINIO_CALLHOME_ENABLE=off: no diagnostics
  # upload (off by default; pinned). MINIO_BROWSER=off: no web console.
  setsid env -i PATH=/usr/bin:/bin HOME="$dir/home" \
    MINIO_ROOT_USER="$access_key" MINIO_ROOT_PASSWORD="$secret_key" \
    MINIO_UPDATE=off MINIO_CALLHOME_ENABLE=off MINIO_BROWSER=off \
    MINIO_SITE_REGION="$region" MINIO_CI_CD=on \
    "$bin" server --quiet --anonymous \
      --address "127.0.0.1:$port" --console-address "127.0.0.1:$console_port" \
      "$dir/data" >>"$dir/minio.log" 2>&1 9>&- 8>&- &
  echo $! >"$dir/pid"
  local deadline=$((SECONDS + ${KILN_S3_TIMEOUT:-60}))
  until live; do
    if ! ours "$(cat "$dir/pid")"; then
      log "the server exited; last lines of $dir/minio.log:"; tail -20 "$dir/minio.log" >&2; exit 1
    fi
    [ $SECONDS -lt $deadline ] || { log "not ready after ${KILN_S3_TIMEOUT:-60}s; see $dir/minio.log"; exit 1; }
    sleep 0.2
  done
  local code
  code=$(s3 PUT "/$bucket")
  case $code in
    200|409) ;; # created, or there from an earlier start
    *) log "creating bucket $bucket failed: HTTP $code"; exit 1 ;;
  esac
  umask 077
  cat >"$dir/s3.env.tmp" <<EOF
# Written by hack/object-store.sh start; source with: set -a; . $dir/s3.env; set +a
AWS_ENDPOINT_URL=http://127.0.0.1:$port
AWS_ACCESS_KEY_ID=$access_key
AWS_SECRET_ACCESS_KEY=$secret_key
AWS_REGION=$region
AWS_ALLOW_HTTP=true
KILN_OBJECT_STORE=s3://$bucket/$prefix
EOF
  mv "$dir/s3.env.tmp" "$dir/s3.env"
  log "ready at http://127.0.0.1:$port (bucket $bucket, prefix $prefix)"
  echo "$dir/s3.env"
}

stop() {
  local pid deadline
  pid=$(running_pid) || return 0
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + ${KILN_S3_STOP_TIMEOUT:-15}))
  while ours "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  while ours "$pid"; do sleep 0.1; done
  rm -f "$dir/pid"
}

case ${1:-} in
  build) [ $# -eq 1 ] || usage; build ;;
  start|stop|status)
    [ $# -eq 2 ] && [ -n "$2" ] || usage
    dir=$2
    if [ "$1" != start ] && [ ! -d "$dir" ]; then [ "$1" = stop ] && exit 0; log "$dir does not exist"; exit 1; fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd -P)
    exec 9>"$dir/.lock"
    flock -w 300 9 || { log "timed out waiting for another start/stop on $dir"; exit 1; }
    case $1 in
      start) start ;;
      stop) stop ;;
      status)
        pid=$(running_pid) || { echo "minio: not running"; exit 1; }
        # shellcheck source=/dev/null
        . "$dir/state"
        if live; then echo "minio: running (pid $pid) at http://127.0.0.1:$port"; else echo "minio: not answering"; exit 1; fi
        ;;
    esac
    ;;
  *) usage ;;
esac
