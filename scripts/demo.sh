#!/usr/bin/env bash
# Builds ghostwire-backup and runs the main job for real against the embedded default, a
# local-directory repository (demo/backups): keygen, backup, snapshots, restore, verify.
# It backs up $GWB_SOURCE if set, else a sample Signal profile made with Signal's own
# SQLite driver in demo/home.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
bin=target/release/ghostwire-backup
mkdir -p demo
source=${GWB_SOURCE:-demo/home}
if [ -z "${GWB_SOURCE:-}" ] && [ ! -d demo/home ]; then
  [ -d tests/node/node_modules/@signalapp/sqlcipher ] || npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
  node tests/node/make-profile.mjs demo/home >/dev/null
  echo "made a sample Signal profile in demo/home"
fi
[ -f demo/identity.txt ] || "$bin" keygen --out demo/identity.txt >demo/recipient.txt
export GWB_REPO=demo/backups GWB_LOG_FORMAT=text
"$bin" backup --source "$source" --recipient "$(cat demo/recipient.txt)" --staging-dir demo
"$bin" snapshots
rm -rf demo/restored
"$bin" restore --snapshot latest --identity demo/identity.txt --target demo/restored
"$bin" verify --snapshot latest --identity demo/identity.txt
echo "restored into demo/restored; the repository is demo/backups"
