#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs its real parts, then runs every test:
# the deploy/ checks, the container tests (the image from the Containerfile, run as deploy/
# runs it, and the blue/green pod lifecycle), then cargo test. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
echo "== deploy/: render and validate every variant"
scripts/check-deploy.sh
echo "== the container image, and the container tests"
scripts/container-image.sh
tests/container/run.sh
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked 2>&1 | tee "$log"
# cargo prints one "test result" line per test binary; add them up.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
