#!/usr/bin/env bash
# Runs Kiln's tests against the other Kubernetes releases it claims: every release pinned in
# hack/k8s/<version>/ (the oldest and the newest; hack/test.sh runs the whole suite on the
# default release, hack/k8s/go.mod). On each release:
#
#   1. the binaries: KILN_K8S_VERSION=<version> hack/k8s-binaries.sh (built once, then cached),
#      and the API server must report that version;
#   2. the integration tests named in `subset` below, on a control plane of that release: the
#      CRDs and the API (all of tests/api.rs), the operator as a whole (all of
#      tests/operator.rs), and each controller's main path;
#   3. the Helm chart with that release's helm and kubectl (hack/test-chart.sh: lint, render,
#      install, upgrade, RBAC as Kiln and as users of the aggregated roles, uninstall).
#
#   hack/test-k8s-versions.sh                    every pinned release but the default
#   hack/test-k8s-versions.sh v1.33.13 [...]     these releases only
#   hack/test-k8s-versions.sh --build [...]      only build (or find) their binaries
#
# Every release is tried even when an earlier one fails; the exit status is 1 if anything
# failed, and a release without pinned modules, a build error or a test name that matches
# nothing is a failure, never a skip. Logs: $KILN_VERSIONS_LOG_DIR (default a temporary
# directory, kept and named at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

# test binary, then the tests to run in it (exact names); none means the whole binary.
subset=(
  "api"
  "operator"
  "draft valid_content_and_artifact_drafts_become_ready publishing_revisions_and_pruning
     edited_and_deleted_published_configmaps_are_repaired expired_draft_is_deleted_on_time_and_its_configmap_stays
     a_resync_of_settled_drafts_writes_nothing followers_of_a_published_config_roll_out_once_per_new_revision"
  "provider_config derived_objects_have_the_right_content_and_owner deleting_the_config_garbage_collects_derived_objects
     oldest_default_wins_and_the_other_reports_a_conflict rotating_a_key_updates_the_secret_fingerprint_and_rotation_time
     followers_roll_out_once_per_burst_and_never_on_create_or_restart"
  "job declared_files_of_every_source_land_on_disk complete_checks_the_plan_then_builds_a_deterministic_archive
     ttl_deletes_the_job_its_files_and_archive"
  "job_files write_batch_list_read_and_delete_with_a_role_bound_token a_token_without_the_role_is_403_and_writes_nothing"
)

build_only=
if [ "${1:-}" = --build ]; then build_only=1; shift; fi
if [ $# -gt 0 ]; then
  versions=("$@")
else
  versions=()
  for d in hack/k8s/v*/; do
    [ -f "$d/go.mod" ] && versions+=("$(basename "$d")")
  done
  if [ ${#versions[@]} -eq 0 ]; then
    echo "test-k8s-versions: no release is pinned in hack/k8s/<version>/ (hack/k8s/generate-go-mod.sh writes one)" >&2
    exit 1
  fi
fi

logs=
if [ -z "$build_only" ]; then
  logs=${KILN_VERSIONS_LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/kiln-k8s-versions.XXXXXX")}
  mkdir -p "$logs"
fi
start=$SECONDS
summary=()
failed=0

note() { printf '\n--- %s (%ds)\n' "$*" $((SECONDS - start)) >&2; }

# run_tests VERSION BIN: the subset against one release; returns non-zero if anything failed.
run_tests() {
  local version=$1 bin=$2 entry binary names log ran want rc=0
  for entry in "${subset[@]}"; do
    read -r -d '' -a names <<<"$entry" || true
    binary=${names[0]}
    names=("${names[@]:1}")
    log=$logs/$version-$binary.log
    note "$version: cargo test --test $binary ${names[*]:+(${#names[@]} tests)}"
    if [ ${#names[@]} -gt 0 ]; then
      KILN_K8S_BIN=$bin cargo test --locked --test "$binary" -- --test-threads=4 --exact "${names[@]}" 2>&1 | tee "$log" >&2 || rc=1
      want=${#names[@]}
    else
      KILN_K8S_BIN=$bin cargo test --locked --test "$binary" -- --test-threads=4 2>&1 | tee "$log" >&2 || rc=1
      want=any
    fi
    # A renamed test would otherwise match nothing and pass quietly.
    ran=$(sed -n 's/^running \([0-9][0-9]*\) tests\{0,1\}$/\1/p' "$log" | head -n1)
    if [ -z "$ran" ] || [ "$ran" -eq 0 ] || { [ "$want" != any ] && [ "$ran" -ne "$want" ]; }; then
      echo "test-k8s-versions: $version: tests/$binary.rs ran ${ran:-no} tests, expected $want: is a name in hack/test-k8s-versions.sh stale?" >&2
      rc=1
    fi
  done
  return $rc
}

for version in "${versions[@]}"; do
  note "Kubernetes $version: binaries"
  t=$SECONDS
  if ! bin=$(KILN_K8S_VERSION=$version hack/k8s-binaries.sh); then
    summary+=("$version: FAILED to build its binaries")
    failed=1
    continue
  fi
  reported=$("$bin/kube-apiserver" --version 2>&1 || true)
  if [ "$reported" != "Kubernetes $version" ]; then
    summary+=("$version: FAILED: $bin/kube-apiserver reports '$reported'")
    failed=1
    continue
  fi
  built=$((SECONDS - t))
  if [ -n "$build_only" ]; then
    summary+=("$version: binaries in $bin (${built}s)")
    continue
  fi

  t=$SECONDS
  tests=passed
  run_tests "$version" "$bin" || tests=FAILED
  tests_time=$((SECONDS - t))

  note "$version: hack/test-chart.sh"
  t=$SECONDS
  chart=passed
  KILN_K8S_BIN=$bin hack/test-chart.sh >"$logs/$version-chart.log" 2>&1 || chart=FAILED
  grep -E -A8 '^FAIL  ' "$logs/$version-chart.log" >&2 || true
  grep -E -A40 '^test-chart: ' "$logs/$version-chart.log" >&2 || true
  chart_time=$((SECONDS - t))

  summary+=("$version: binaries ${built}s, integration subset $tests (${tests_time}s), chart $chart (${chart_time}s)")
  [ "$tests" = passed ] && [ "$chart" = passed ] || failed=1
done

note "Kubernetes versions: summary${logs:+ (logs in $logs)}"
printf '  %s\n' "${summary[@]}" >&2
if [ "$failed" -ne 0 ]; then
  echo "test-k8s-versions: FAILED on at least one Kubernetes release (see above${logs:+ and $logs})" >&2
  exit 1
fi
