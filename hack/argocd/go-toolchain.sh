# Sourced by hack/argocd.sh and hack/argocd/generate-go-mod.sh: sets $go to a Go toolchain
# new enough for the Argo CD release pinned in hack/argocd/go.mod (its `go` line).
#
# Argo CD v3.6 needs Go 1.27. When the Go on PATH is older, the go command itself fetches the
# pinned toolchain (golang.org/toolchain, a module served by the Go module proxy like any
# other, verified by the checksum database) into the module cache; we then call that
# toolchain's own `go` directly, so that the builds can run with GOSUMDB=off against the
# committed go.sum, which a toolchain switch does not allow.
go_toolchain_version=go1.27.3
go_toolchain() {
  local need have goroot
  need=$(awk '$1 == "go" {print $2; exit}' "$(dirname "${BASH_SOURCE[0]}")/go.mod")
  command -v go >/dev/null || { echo "Go is required (a Go toolchain on PATH; it fetches Go ${need} itself)" >&2; return 1; }
  have=$(GOTOOLCHAIN=local go env GOVERSION)
  have=${have#go}
  if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n 1)" = "$need" ]; then
    go=$(command -v go)
    return 0
  fi
  goroot=$(GOTOOLCHAIN=$go_toolchain_version go env GOROOT) || {
    echo "could not fetch Go toolchain $go_toolchain_version through the module proxy" >&2
    return 1
  }
  go=$goroot/bin/go
}
go_toolchain
export GOTOOLCHAIN=local
