#!/usr/bin/env bash
# Runs every fuzz target of Kiln for a bounded time and prints its figures.
#
#   hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default 30 s, every target
#
# Targets (property tests with proptest, in the library's unit tests; see src/fuzz/mod.rs):
#
#   workspace-path  JobPath validation and job keys: accepted paths never leave the job's
#                   directory, on paper (std::path) and on a real filesystem
#   duration        the duration parser against the CRD pattern, an independent calculation
#                   of the value, and `format` round trips
#   template        hostile templates: fuel and output limits hold, errors name the file,
#                   rendering is deterministic
#   archive         archives of odd trees list exactly the files, with their bytes and sha256
#   file-api        the file API's request handling: URL paths through axum's router, batch
#                   JSON, body limits, list paging, response headers
#
# A target with several properties splits its time between them. Each prints one line per
# property, `fuzz <property>: <cases> cases in <s> s (<rate>/s), 0 failures, seed <seed>`;
# the summary adds them up per target. A failure prints the minimal input and the seed
# (KILN_FUZZ_SEED=<seed> replays it) and makes the script exit 1; the fix gets a regression
# test next to the code it fixes. CI runs a short budget; the figures in docs/reliability.md
# come from `hack/fuzz.sh 600`.
set -euo pipefail

cd "$(dirname "$0")/.."
log() { echo "fuzz: $*" >&2; }

seconds=${1:-30}
shift || true
case $seconds in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;;
esac

# target:filter:properties
all="workspace-path:fuzz::path:::2 duration:fuzz::duration:::3 template:fuzz::template:::1 archive:fuzz::archive:::1 file-api:http::fuzz:::5"
selected=()
if [ $# -eq 0 ]; then
  read -r -a selected <<<"$all"
else
  for want in "$@"; do
    found=
    for t in $all; do [ "${t%%:*}" = "$want" ] && selected+=("$t") && found=1; done
    [ -n "$found" ] || { echo "unknown target $want; targets: workspace-path duration template archive file-api" >&2; exit 2; }
  done
fi

logs=${KILN_FUZZ_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/kiln-fuzz.XXXXXX")}
mkdir -p "$logs"
log "building the test binary"
cargo test --lib --locked --no-run -q 2>&1 | tail -n 20 >&2

summary=()
failed=0
for t in "${selected[@]}"; do
  name=${t%%:*}
  rest=${t#*:}
  props=${rest##*:}
  filter=${rest%:*}
  per=$(( (seconds + props - 1) / props ))
  log "$name: $props properties, ${per}s each"
  start=$SECONDS
  status=0
  KILN_FUZZ_SECONDS=$per cargo test --lib --locked -q -- "$filter" --test-threads=1 --nocapture \
    >"$logs/$name.log" 2>&1 || status=$?
  took=$((SECONDS - start))
  # The test harness prints progress dots on the same line: match anywhere in a line.
  figures=$(grep -oE 'fuzz [a-z-]+: [0-9]+ cases in .*|fuzz template outcomes.*' "$logs/$name.log" || true)
  [ -z "$figures" ] || echo "$figures" >&2
  cases=$(echo "$figures" | awk '$3 ~ /^[0-9]+$/ && $4 == "cases" {n += $3} END {print n + 0}')
  ran=$(echo "$figures" | awk '$3 ~ /^[0-9]+$/ && $4 == "cases"' | wc -l)
  if [ "$status" -ne 0 ] || [ "$ran" -ne "$props" ]; then
    failed=1
    summary+=("$(printf '%-15s %6ss %12s cases  FAILED (see %s)' "$name" "$took" "$cases" "$logs/$name.log")")
    grep -E -A40 'property failed|aborted in round|panicked' "$logs/$name.log" | head -n 60 >&2 || tail -n 40 "$logs/$name.log" >&2
  else
    summary+=("$(printf '%-15s %6ss %12s cases  0 failures' "$name" "$took" "$cases")")
  fi
done

echo "target          time          cases  result"
printf '%s\n' "${summary[@]}"
log "logs in $logs"
exit "$failed"
