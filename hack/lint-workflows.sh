#!/usr/bin/env bash
# Checks the GitHub Actions workflows (.github/workflows/*.yml) with actionlint: their syntax,
# every `${{ }}` expression and its type, job dependencies and outputs, runner labels, the
# inputs of well-known actions, permissions, and the shell of every `run:` step (through
# shellcheck). Any finding fails the run (exit 1), and so does a missing tool: nothing is skipped.
#
#   hack/lint-workflows.sh          lint every workflow
#   hack/lint-workflows.sh build    build (or find) actionlint; print its path
#
# actionlint is built from source through the Go module proxy at the version pinned by the
# wrapper module hack/actionlint/go.mod (go.sum verifies it) and cached under
# ${KILN_CACHE:-$HOME/.cache/kiln}; a second run only checks the cache. shellcheck is Debian's
# (apt-get install shellcheck; hack/test.sh installs it).
#
# Before the real workflows, a broken one must fail: a linter that finds nothing because it
# read nothing, or lost shellcheck on the way, would otherwise pass every change.
set -euo pipefail
cd "$(dirname "$0")/.."
hack=$(pwd)/hack
log() { echo "lint-workflows: $*" >&2; }
die() { log "$*"; exit 1; }

build() {
  local version recipe key cache out
  version=$(awk '$1 == "github.com/rhysd/actionlint" {print $2; exit}' "$hack/actionlint/go.mod")
  [ -n "$version" ] || die "hack/actionlint/go.mod pins no github.com/rhysd/actionlint"
  # Bump when the build recipe (flags) changes, so binaries built the old way are not reused.
  recipe=1
  key=$( (echo "recipe $recipe"; cat "$hack/actionlint/go.mod" "$hack/actionlint/go.sum") | sha256sum | cut -c1-12)
  cache=${KILN_CACHE:-$HOME/.cache/kiln}
  out="$cache/actionlint-${version}-${key}"
  if [ -x "$out/actionlint" ]; then echo "$out/actionlint"; return 0; fi
  command -v go >/dev/null || die "Go is required to build actionlint (apt-get install golang-go, or a Go toolchain >= 1.25)"
  mkdir -p "$out"
  # One build at a time per cache entry; a concurrent caller waits and then finds it done.
  exec 8>"$out.lock"
  flock 8
  if [ -x "$out/actionlint" ]; then echo "$out/actionlint"; return 0; fi
  log "building actionlint $version into $out (once; well under a minute)"
  local start=$SECONDS
  # The committed go.sum verifies every module; -mod=readonly refuses anything not in it, so
  # the checksum database is never needed.
  (cd "$hack/actionlint" \
    && GOTOOLCHAIN=local GOFLAGS="-mod=readonly -trimpath" CGO_ENABLED=0 GOSUMDB=off \
       go build -ldflags "-s -w -X github.com/rhysd/actionlint.version=$version" \
       -o "$out/actionlint.tmp" github.com/rhysd/actionlint/cmd/actionlint)
  mv "$out/actionlint.tmp" "$out/actionlint"
  log "built in $((SECONDS - start))s"
  echo "$out/actionlint"
}

case ${1:-lint} in
  build) build; exit 0 ;;
  lint) ;;
  *) echo "usage: $0 [build]" >&2; exit 2 ;;
esac

actionlint=$(build)
shellcheck=$(command -v shellcheck) || die "shellcheck is required: apt-get install shellcheck"
lint() { "$actionlint" -no-color -shellcheck="$shellcheck" -pyflakes= "$@"; }
log "$("$actionlint" -version | head -n 1), $("$shellcheck" --version | awk '/^version:/ {print "shellcheck " $2}')"

# --- the canary: a workflow with one mistake of each kind must fail --------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-lint-workflows.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/.github/workflows"
cat >"$work/.github/workflows/canary.yml" <<'YAML'
on: push
jobs:
  a:
    runs-on: ubuntu-24.04
    needs: no-such-job
    steps:
      - run: echo "${{ github.no_such_property }}"
      - run: rm -rf $DIR/*
YAML
canary=$(cd "$work" && lint .github/workflows/canary.yml 2>&1) &&
  die "actionlint passed a broken workflow: the check is not working"$'\n'"$canary"
for expect in '\[job-needs\]' '\[expression\]' 'SC2115|SC2086'; do
  grep -Eq -- "$expect" <<<"$canary" ||
    die "actionlint missed a mistake in the canary workflow (expected $expect):"$'\n'"$canary"
done

# --- the repository's workflows -------------------------------------------------------------
shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
[ ${#workflows[@]} -gt 0 ] || die "no workflows in .github/workflows"
if lint "${workflows[@]}"; then
  log "${#workflows[@]} workflows pass: ${workflows[*]}"
else
  die "actionlint found problems in the workflows (above)"
fi
