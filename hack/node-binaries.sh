#!/usr/bin/env bash
# Builds, or finds already built, the binaries of a real node for hack/node.sh: kubelet,
# kube-proxy and kube-scheduler (from the wrapper module hack/k8s, at the API server's
# release; the scheduler is only needed once there is a node), containerd,
# containerd-shim-runc-v2 and ctr (hack/node/containerd), runc (hack/node/runc) and the CNI
# plugins bridge, host-local, loopback and portmap (hack/node/cni). All are built from source
# through the Go module proxy at the versions pinned by those go.mod files, verified by their
# committed go.sum, and cached under ${KILN_CACHE:-$HOME/.cache/kiln}, keyed by the pins.
# The directory is printed on stdout (CNI plugins in its cni/ subdirectory); progress and the
# versions go to stderr. A second run only checks the cache.
#
#   export KILN_NODE_BIN=$(hack/node-binaries.sh)
#
# runc is the one cgo build: it links libseccomp (Debian: libseccomp-dev, gcc, pkg-config).
set -euo pipefail

hack=$(cd "$(dirname "$0")" && pwd)
ver() { awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit}' "$hack/$1/go.mod"; }
k8s_version=$(ver k8s k8s.io/kubernetes)
# The node is built for the default release only; a kubelet newer than the API server it
# joins is not supported, so refuse rather than mix releases.
if [ -n "${KILN_K8S_VERSION:-}" ] && [ "$KILN_K8S_VERSION" != "$k8s_version" ]; then
  echo "node-binaries: the node is built for the default release $k8s_version only, not KILN_K8S_VERSION=$KILN_K8S_VERSION" >&2
  exit 1
fi
containerd_version=$(ver node/containerd github.com/containerd/containerd/v2)
runc_version=$(ver node/runc github.com/opencontainers/runc)
cni_version=$(ver node/cni github.com/containernetworking/plugins)
# Bump when the build recipe (flags, tags) changes.
recipe=1
key=$( (echo "recipe $recipe"; cat "$hack/k8s/go.mod" "$hack/k8s/go.sum" \
  "$hack"/node/{containerd,runc,cni}/go.{mod,sum}) | sha256sum | cut -c1-12)
cache=${KILN_CACHE:-$HOME/.cache/kiln}
out="$cache/node-${k8s_version}-containerd-${containerd_version}-runc-${runc_version}-cni-${cni_version}-${key}"
binaries=(kubelet kube-proxy kube-scheduler containerd containerd-shim-runc-v2 ctr runc cni/bridge cni/host-local cni/loopback cni/portmap)

complete() {
  local b
  for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done
}
versions() {
  echo "node-binaries: kubelet/kube-proxy ${k8s_version}, containerd ${containerd_version}, runc ${runc_version}, CNI plugins ${cni_version}" >&2
}

if complete; then
  versions
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "node-binaries: Go is required (apt-get install golang-go, or a Go toolchain >= 1.26)" >&2; exit 1; }

mkdir -p "$out/cni"
exec 9>"$out.lock"
flock 9
if complete; then versions; echo "$out"; exit 0; fi

export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath" CGO_ENABLED=0 GOSUMDB=off

minor=${k8s_version#v1.}; minor=${minor%%.*}
build_date=$(date -u -d @"${SOURCE_DATE_EPOCH:-0}" +%Y-%m-%dT%H:%M:%SZ)
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=${k8s_version} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${build_date}"
done

build() { # module-dir output package ldflags [go build args...]
  local dir=$1 name=$2 pkg=$3 flags=$4
  shift 4
  [ -x "$out/$name" ] && return 0
  echo "node-binaries: building $name ($pkg)" >&2
  local start=$SECONDS
  (cd "$hack/$dir" && go build "$@" -ldflags "$flags" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "node-binaries: built $name in $((SECONDS - start))s" >&2
}

echo "node-binaries: building into $out" >&2
versions

cv=github.com/containerd/containerd/v2/version
c_ldflags="-s -w -X $cv.Version=${containerd_version} -X $cv.Revision=${containerd_version} -X $cv.Package=github.com/containerd/containerd/v2"
# Without cgo the btrfs snapshotter is left out by its own build constraints; the tags drop
# the other optional snapshotters this node does not use.
c_tags=(-tags "no_btrfs no_devmapper no_zfs no_aufs")
build node/containerd containerd github.com/containerd/containerd/v2/cmd/containerd "$c_ldflags" "${c_tags[@]}"
build node/containerd containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$c_ldflags" "${c_tags[@]}"
build node/containerd ctr github.com/containerd/containerd/v2/cmd/ctr "$c_ldflags" "${c_tags[@]}"

if ! pkg-config --exists libseccomp 2>/dev/null || ! command -v gcc >/dev/null; then
  echo "node-binaries: runc needs libseccomp and a C compiler: apt-get install libseccomp-dev gcc pkg-config" >&2
  exit 1
fi
CGO_ENABLED=1 build node/runc runc github.com/opencontainers/runc \
  "-s -w -X main.version=${runc_version#v} -X main.gitCommit=${runc_version}" -tags seccomp

for p in main/bridge main/loopback ipam/host-local meta/portmap; do
  build node/cni "cni/${p#*/}" "github.com/containernetworking/plugins/plugins/$p" \
    "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=${cni_version}"
done

# Last: they share most packages with the API server, so a warm build cache makes them quick.
build k8s kubelet k8s.io/kubernetes/cmd/kubelet "$k8s_ldflags"
build k8s kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$k8s_ldflags"
build k8s kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"

complete
echo "$out"
