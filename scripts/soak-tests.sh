#!/usr/bin/env bash
# Runs the Rust test suite N times in a row while a CPU-heavy load runs beside it, and
# reports every failure with its test name. A test that waits for time instead of for the
# event it means fails here long before it fails a landing.
#
#   scripts/soak-tests.sh [N] [-- ARGS]   # N runs (default 5); ARGS go to `cargo test`
#
#   GWB_SOAK_LOAD   the load, a shell command run for the whole soak and killed after it
#                   (default: one busy loop per core, at the same priority as the tests;
#                   e.g. 'cargo build --release --manifest-path ../other/Cargo.toml')
#
# Logs of failed runs are kept in target/soak/. Ends with `soak: N passed, M failed`
# (runs), and exits non-zero if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
shift || true
[[ "${1:-}" == "--" ]] && shift
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "soak-tests: N must be a whole number ≥ 1, not '$runs'" >&2; exit 2; }

scripts/install-test-deps.sh
cargo test --locked --no-run "$@" 2>&1 | tail -1

default_load="for _ in \$(seq $(nproc)); do sha256sum /dev/zero & done; wait"
setsid bash -c "${GWB_SOAK_LOAD:-$default_load}" >/dev/null 2>&1 &
load=$!
trap 'kill -- -"$load" 2>/dev/null || true' EXIT
echo "soak: $runs runs beside the load: ${GWB_SOAK_LOAD:-one busy loop per core}"

mkdir -p target/soak
passed=0 failed=0
for run in $(seq "$runs"); do
  log="target/soak/run-$run.log"
  started=$SECONDS
  if cargo test --locked "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "run $run/$runs: passed in $((SECONDS - started)) s"
    rm -f "$log"
  else
    failed=$((failed + 1))
    echo "run $run/$runs: FAILED in $((SECONDS - started)) s (log: $log):"
    grep -E '^test .* \.\.\. FAILED$' "$log" | sed 's/^/  /' || echo "  (no test failed: the build or a harness did; see the log)"
  fi
done
echo "soak: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
