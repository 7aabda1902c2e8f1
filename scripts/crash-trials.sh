#!/usr/bin/env bash
# The long reliability runs, too slow for every CI run (docs/reliability.md has results):
#  1. crash consistency (tests/it/crash.rs): SIGKILLs the agent at random moments of backups
#     and restores, against a local repository and a real S3 server, and checks after every
#     kill that every listed snapshot verifies, the next backup succeeds, the live profile is
#     untouched, and `restore --if-empty` completes a killed restore;
#  2. a fault soak (tests/it/s3_faults.rs): rounds of backup + restore through a proxy that
#     fails a share of S3 requests at random.
#
# Usage: scripts/crash-trials.sh [TRIALS]     (default 50 backups + 50 restores)
#   env: GWB_CRASH_SEED=N replays a crash run; GWB_FAULT_ROUNDS (20), GWB_FAULT_RATE (0.10)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
GWB_CRASH_TRIALS="${1:-${GWB_CRASH_TRIALS:-50}}" \
  cargo test --locked --test it -- --ignored --nocapture crash::crash_trials_long
cargo test --locked --test it -- --ignored --nocapture s3_faults::fault_soak
