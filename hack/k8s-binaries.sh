#!/usr/bin/env bash
# Builds, or finds already built, the Kubernetes binaries Kiln's tests run against:
# etcd, kube-apiserver, kube-controller-manager, kubectl and helm, at the versions pinned by
# wrapper modules. They are built from source through the Go module proxy (no Docker, no
# release tarballs), cached outside the repository under ${KILN_CACHE:-$HOME/.cache/kiln},
# keyed by the pinned versions and go.sum, and the directory holding them is printed on
# stdout. A second run only checks the cache.
#
# Which Kubernetes release: the default is the one hack/k8s/go.mod pins (with helm from
# hack/helm/go.mod). KILN_K8S_VERSION=v1.X.Y picks another release that has its modules
# committed in hack/k8s/v1.X.Y/ (and hack/k8s/v1.X.Y/helm/); hack/k8s/generate-go-mod.sh
# writes them. etcd is always the version that release itself requires.
#
# Progress goes to stderr; stdout is only the directory, so callers can do
#   export KILN_K8S_BIN=$(hack/k8s-binaries.sh)
#   export KILN_K8S_BIN=$(KILN_K8S_VERSION=v1.33.13 hack/k8s-binaries.sh)
set -euo pipefail

hack=$(cd "$(dirname "$0")" && pwd)
default_version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$hack/k8s/go.mod")
k8s_dir=k8s helm_dir=helm
if [ -n "${KILN_K8S_VERSION:-}" ] && [ "$KILN_K8S_VERSION" != "$default_version" ]; then
  k8s_dir=k8s/$KILN_K8S_VERSION helm_dir=k8s/$KILN_K8S_VERSION/helm
  if [ ! -f "$hack/$k8s_dir/go.mod" ] || [ ! -f "$hack/$helm_dir/go.mod" ]; then
    {
      echo "k8s-binaries: no modules for Kubernetes $KILN_K8S_VERSION in hack/$k8s_dir/."
      echo "  pinned: $default_version (default)$(cd "$hack/k8s" && for d in v*/; do [ -f "$d/go.mod" ] && printf ', %s' "${d%/}"; done)"
      echo "  another release: hack/k8s/generate-go-mod.sh $KILN_K8S_VERSION (then commit hack/$k8s_dir/)"
    } >&2
    exit 1
  fi
fi
k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$hack/$k8s_dir/go.mod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' "$hack/$k8s_dir/go.mod")
helm_version=$(awk '$1 == "helm.sh/helm/v3" {print $2; exit}' "$hack/$helm_dir/go.mod")
# Bump when the build recipe (flags) changes, so caches built the old way are not reused.
recipe=2
key=$( (echo "recipe $recipe"; cat "$hack/$k8s_dir/go.mod" "$hack/$k8s_dir/go.sum" "$hack/$helm_dir/go.mod" "$hack/$helm_dir/go.sum") \
  | sha256sum | cut -c1-12)
cache=${KILN_CACHE:-$HOME/.cache/kiln}
out="$cache/k8s-${k8s_version}-etcd-${etcd_version}-helm-${helm_version}-${key}"
binaries=(etcd kube-apiserver kube-controller-manager kubectl helm)

complete() {
  local b
  for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done
}

if complete; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "k8s-binaries: Go is required to build the binaries (apt-get install golang-go, or a Go toolchain >= 1.25)" >&2; exit 1; }

mkdir -p "$out"
# Only one build at a time per cache entry; a concurrent caller waits and then finds it done.
exec 9>"$out.lock"
flock 9
if complete; then echo "$out"; exit 0; fi

# The committed go.sum files verify every module; -mod=readonly refuses anything not in them,
# so the checksum database is never needed.
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath" CGO_ENABLED=0 GOSUMDB=off

minor=${k8s_version#v1.}; minor=${minor%%.*}
build_date=$(date -u -d @"${SOURCE_DATE_EPOCH:-0}" +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=${k8s_version} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${build_date}"
done

build() { # module-dir output package [ldflags]
  local dir=$1 name=$2 pkg=$3 flags=${4:-"-s -w"}
  [ -x "$out/$name" ] && return 0
  echo "k8s-binaries: building $name ($pkg)" >&2
  local start=$SECONDS
  (cd "$hack/$dir" && go build -ldflags "$flags" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "k8s-binaries: built $name in $((SECONDS - start))s" >&2
}

echo "k8s-binaries: building Kubernetes ${k8s_version}, etcd ${etcd_version}, helm ${helm_version} into $out" >&2
echo "k8s-binaries: a cold build downloads ~1 GiB of modules and takes a while on 2 cores" >&2
build "$k8s_dir" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
build "$k8s_dir" kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$ldflags"
build "$k8s_dir" kubectl k8s.io/kubernetes/cmd/kubectl "$ldflags"
build "$k8s_dir" etcd go.etcd.io/etcd/server/v3 \
  "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${etcd_version}"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${helm_version}"
# Helm's idea of the cluster version when it cannot ask one (`helm template`, lint).
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${minor}"
done
build "$helm_dir" helm helm.sh/helm/v3/cmd/helm "$helm_ldflags"

complete
echo "$out"
