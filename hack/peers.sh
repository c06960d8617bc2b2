#!/usr/bin/env bash
# Builds, or finds already built, the peers Kiln's `peers` benchmarks compare it with:
#
#   hack/peers.sh build   print a directory holding
#                           external-secrets         External Secrets Operator's controller
#                           crds/bundle.yaml         its CRDs, from the same module
#                           VERSION                  the ESO version built
#
# (The other peer, Kubernetes' TTL-after-finished controller, is part of the
# kube-controller-manager that hack/k8s-binaries.sh builds.)
#
# ESO is built from source through the Go module proxy at the version pinned by the wrapper
# module hack/peers/eso/go.mod (verified by the committed go.sum), and cached under
# ${KILN_CACHE:-$HOME/.cache/kiln}; a second run only checks the cache. Progress goes to
# stderr; stdout is only the directory.
#
# Why v0.16.2 and not v1.x: from v1.0 on, ESO's root module needs its apis, runtime and
# providers/* submodules through `replace` directives to directories of its own repository;
# those submodules are not published as modules, and a dependency's `replace` directives do
# not apply to the module that requires it, so v1.x cannot be built through the module proxy.
# v0.16.2 is the newest release that is one module; it serves the same external-secrets.io/v1
# API. Its go.mod also replaces github.com/Masterminds/sprig/v3 by a fork that the proxy does
# not serve; the upstream sprig it is forked from is used instead (it only matters to
# templates, which the benchmark does not use).
#
# The caller's GOFLAGS are kept (after ours), so `GOFLAGS=-p=1 hack/peers.sh build` builds one
# package at a time on a busy machine.
set -euo pipefail

hack=$(cd "$(dirname "$0")" && pwd)
log() { echo "peers: $*" >&2; }
usage() { echo "usage: $0 build" >&2; exit 2; }

module=github.com/external-secrets/external-secrets

build() {
  local version recipe key cache out dir
  version=$(awk -v m="$module" '$1 == m {print $2; exit}' "$hack/peers/eso/go.mod")
  # Bump when the build recipe (flags, files copied) changes, so old builds are not reused.
  recipe=1
  key=$( (echo "recipe $recipe"; cat "$hack/peers/eso/go.mod" "$hack/peers/eso/go.sum") | sha256sum | cut -c1-12)
  cache=${KILN_CACHE:-$HOME/.cache/kiln}
  out="$cache/eso-${version}-${key}"
  complete() { [ -x "$out/external-secrets" ] && [ -s "$out/crds/bundle.yaml" ] && [ -s "$out/VERSION" ]; }
  if complete; then echo "$out"; return 0; fi
  command -v go >/dev/null || { log "Go is required to build ESO (apt-get install golang-go, or a Go toolchain >= 1.25)"; exit 1; }
  mkdir -p "$out"
  # One build at a time per cache entry; a concurrent caller waits and then finds it done.
  exec 8>"$out.lock"
  flock 8
  if complete; then echo "$out"; return 0; fi
  log "building External Secrets Operator $version into $out"
  log "a cold build downloads ~1 GiB of modules (every provider's SDK) and takes a while on 2 cores"
  local start=$SECONDS
  # The committed go.sum verifies every module; -mod=readonly refuses anything not in it, so
  # the checksum database is never needed.
  export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath${GOFLAGS:+ $GOFLAGS}" CGO_ENABLED=0 GOSUMDB=off
  (cd "$hack/peers/eso" && go build -ldflags "-s -w" -o "$out/external-secrets.tmp" "$module")
  # The CRDs come from the very module zip the binary was built from.
  dir=$(cd "$hack/peers/eso" && go list -m -f '{{.Dir}}' "$module")
  if [ ! -s "$dir/deploy/crds/bundle.yaml" ]; then
    log "no deploy/crds/bundle.yaml in $dir: has the module's layout changed? (see $hack/peers.sh)"
    exit 1
  fi
  mkdir -p "$out/crds"
  cp "$dir/deploy/crds/bundle.yaml" "$out/crds/bundle.yaml.tmp"
  chmod 644 "$out/crds/bundle.yaml.tmp"
  mv "$out/crds/bundle.yaml.tmp" "$out/crds/bundle.yaml"
  echo "$version" >"$out/VERSION"
  mv "$out/external-secrets.tmp" "$out/external-secrets"
  log "built in $((SECONDS - start))s"
  echo "$out"
}

case ${1:-} in
  build) [ $# -eq 1 ] || usage; build ;;
  *) usage ;;
esac
