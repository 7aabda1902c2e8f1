#!/usr/bin/env bash
# Installs what the test suite uses, idempotently: the real parts, not mocks.
#   - Debian's age and zstd (GNU tar is already there): the stock-tool recovery test;
#     Debian's minisign: the stock-tool signature check; GNU time: peak memory of a command.
#   - Signal's own SQLite driver (@signalapp/sqlcipher, from npm): fixtures and checks.
#   - moto's S3 server (PyPI) in .venv-s3: the real S3 server the tests start on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v age >/dev/null || ! command -v zstd >/dev/null || ! command -v minisign >/dev/null \
  || [ ! -x /usr/bin/time ]; then
  echo "== installing age, zstd, minisign and GNU time (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age zstd minisign time >/dev/null
fi

if [ ! -d tests/node/node_modules/@signalapp/sqlcipher ]; then
  echo "== installing Signal's SQLite driver (npm ci)"
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
fi

if [ ! -x .venv-s3/bin/moto_server ]; then
  echo "== installing moto's S3 server into .venv-s3"
  python3 -m venv .venv-s3
  .venv-s3/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.*'
fi
