#!/usr/bin/env bash
# The benchmark, in one command (docs/benchmarks.md says what it measures and what came out):
#
#   bench/run.sh                      # the 256 MiB profile (about 3 minutes on 2 cores)
#   bench/run.sh --sizes 256M,2G      # and the 2 GiB one (about 13 more minutes; 2.5 GB of
#                                     # disk, up to 8 GB in /dev/shm while it runs)
#
# Options (passed to bench/bench.py): --sizes, --repeat N (runs of each full backup and
# restore, median kept; default 3), --writer-seconds S, --workdir DIR (default
# /var/tmp/ghostwire-bench, or $GWB_BENCH_DIR), --fresh (remake the profiles), --no-docs
# (leave docs/benchmarks.md and docs/benchmarks.png alone), --contention (only Signal's writer
# during the stock pipeline and ghostwire-backup at 1/2/8 threads; prints a table), --heavy
# 512M,1G (only the heavy-user run: databases of those sizes; about 10 minutes per GiB),
# --server s3s-fs (every tool against s3s-fs, a lighter S3 server in Rust, instead of moto).
#
# Installs what it needs when missing: the test suite's parts (age, zstd, Signal's driver,
# moto in .venv-s3), Debian's restic, time and gnuplot, and for --server s3s-fs the s3s-fs
# binary (cargo install, once, into $GWB_BENCH_TOOLS, default /var/tmp/ghostwire-bench/tools;
# about 80 s on 2 cores); builds the agent in release.
# Everything runs on 127.0.0.1. Not part of the test suite: it is slow and asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;; esac

scripts/install-test-deps.sh
missing=()
command -v restic >/dev/null || missing+=(restic)
[ -x /usr/bin/time ] || missing+=(time)
command -v gnuplot >/dev/null || missing+=(gnuplot-nox)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

case " $* " in
  *" --server s3s-fs "*|*" --server=s3s-fs "*)
    tools="${GWB_BENCH_TOOLS:-/var/tmp/ghostwire-bench/tools}"
    if [ ! -x "$tools/bin/s3s-fs" ]; then
      echo "== installing s3s-fs 0.14.1 into $tools (once)"
      # 0.14.1: the newest release needs a newer rustc than this machine's.
      cargo install --locked --quiet s3s-fs@0.14.1 --features binary --root "$tools"
    fi
    ;;
esac

echo "== building ghostwire-backup (release)"
cargo build --release --locked --quiet
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
exec .venv-s3/bin/python bench/bench.py --agent "$CARGO_TARGET_DIR/release/ghostwire-backup" "$@"
