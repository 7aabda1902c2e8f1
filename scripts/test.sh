#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs its real parts, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
if [ -x scripts/check-deploy.sh ]; then
  echo "== deploy/: render and validate every variant"
  scripts/check-deploy.sh
fi
echo "== cargo test"
cargo test --locked
