#!/usr/bin/env bash
# The long crash-consistency run: SIGKILLs the agent at random moments of backups and
# restores, against a local repository and a real S3 server, and checks after every kill
# that every listed snapshot verifies, the next backup succeeds, the live profile is
# untouched, and `restore --if-empty` completes a killed restore (tests/crash.rs).
#
# Usage: scripts/crash-trials.sh [TRIALS]     (default 50 backups + 50 restores)
#        GWB_CRASH_SEED=N scripts/crash-trials.sh   replays a run
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
GWB_CRASH_TRIALS="${1:-${GWB_CRASH_TRIALS:-50}}" \
  cargo test --locked --test crash -- --ignored --nocapture crash_trials_long
