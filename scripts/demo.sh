#!/usr/bin/env bash
# Builds ghostwire-backup and runs the main job for real against the embedded default, a
# local-directory repository (demo/backups): keygen, backup, snapshots, restore, verify.
# It backs up $GWB_SOURCE if set, else a sample Signal profile made with Signal's own
# SQLite driver in demo/home. GWB_BIN=path/to/ghostwire-backup uses that binary instead of
# building one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${GWB_BIN:-}" ]; then
  bin=$GWB_BIN
else
  cargo build --release --locked
  bin=${CARGO_TARGET_DIR:-target}/release/ghostwire-backup
fi
mkdir -p demo
source=${GWB_SOURCE:-demo/home}
if [ -z "${GWB_SOURCE:-}" ] && [ ! -d demo/home ]; then
  [ -d tests/node/node_modules/@signalapp/sqlcipher ] || npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
  node tests/node/make-profile.mjs demo/home >/dev/null
  echo "made a sample Signal profile in demo/home"
fi
# Both key pairs: the identity decrypts (restore side), the signing key signs (backup side);
# demo/public.env holds their public halves, GWB_RECIPIENTS=age1… and GWB_VERIFY_KEY=RW….
if [ ! -f demo/identity.txt ]; then
  "$bin" keygen --out demo/identity.txt --signing-out demo/signing.key >demo/public.env
elif [ ! -f demo/signing.key ]; then # a demo/ from before signing: keep its identity
  { echo "GWB_RECIPIENTS=$(cat demo/recipient.txt)"; "$bin" keygen --signing-out demo/signing.key; } >demo/public.env
fi
set -a # export both public keys: backup encrypts to GWB_RECIPIENTS, the rest verify with GWB_VERIFY_KEY
# shellcheck source=/dev/null
. demo/public.env
set +a
export GWB_REPO=demo/backups GWB_LOG_FORMAT=text
"$bin" backup --source "$source" --signing-key demo/signing.key --staging-dir demo
"$bin" snapshots
rm -rf demo/restored
"$bin" restore --snapshot latest --identity demo/identity.txt --target demo/restored
"$bin" verify --snapshot latest --identity demo/identity.txt
echo "restored into demo/restored; the repository is demo/backups"
