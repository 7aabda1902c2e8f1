#!/usr/bin/env bash
# Writes the generated parts of the docs from the binary's own description of its interface
# (`ghostwire-backup reference`, read from the clap definitions and the metrics registry):
# the README's flag/env table and its metric list. A generated region looks like
#
#   <!-- BEGIN GENERATED flags: scripts/gen-docs.sh writes this from `ghostwire-backup reference --section flags`; do not edit -->
#   ...
#   <!-- END GENERATED flags -->
#
# To change a row, change the flag's doc comment in src/cli/flags.rs (or the metric in
# src/metrics.rs) and run this script. It then checks that every GWB_* variable and
# ghostwire_backup_* metric that README.md and docs/kubernetes.md mention exists.
#
# Usage: scripts/gen-docs.sh [--check]
#   --check  change nothing; exit 1 with a diff when a region is stale (CI runs this)
#   env GWB_BIN=path/to/ghostwire-backup  (default: `cargo run --quiet --locked`)
set -euo pipefail
export LC_ALL=C  # one collation for sort, comm and Python's sorted()
cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: scripts/gen-docs.sh [--check]" >&2; exit 2 ;;
esac

die() { echo "gen-docs: FAIL: $*" >&2; exit 1; }

reference() {
  if [[ -n "${GWB_BIN:-}" ]]; then
    "$GWB_BIN" reference "$@"
  else
    cargo run --quiet --locked -- reference "$@"
  fi
}

DOCS=(README.md docs/kubernetes.md)
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# One file per section that some document asks for.
for name in $(sed -n 's/.*<!-- BEGIN GENERATED \([a-z]*\).*/\1/p' "${DOCS[@]}" | sort -u); do
  reference --section "$name" >"$TMP/$name.md" || die "\`ghostwire-backup reference --section $name\` failed"
done

stale=()
for doc in "${DOCS[@]}"; do
  awk -v dir="$TMP" '
    match($0, /<!-- BEGIN GENERATED [a-z]+/) {
      if (inside) { print FILENAME ":" FNR ": BEGIN inside a generated region" > "/dev/stderr"; exit 3 }
      print; print ""
      name = substr($0, RSTART + 21, RLENGTH - 21)
      file = dir "/" name ".md"
      while ((getline line < file) > 0) print line
      close(file)
      print ""
      inside = name; next
    }
    /<!-- END GENERATED/ {
      if ($0 !~ "<!-- END GENERATED " inside " ") { print FILENAME ":" FNR ": END without a matching BEGIN " inside > "/dev/stderr"; exit 3 }
      inside = ""
    }
    !inside { print }
    END { if (inside) { print FILENAME ": region " inside " has no END line" > "/dev/stderr"; exit 3 } }
  ' "$doc" >"$TMP/new" || die "$doc: broken generated region"
  if ! cmp -s "$doc" "$TMP/new"; then
    if $check; then
      diff -u "$doc" "$TMP/new" | sed "s|$TMP/new|$doc (generated)|" >&2 || true
      stale+=("$doc")
    else
      cp "$TMP/new" "$doc"
      echo "gen-docs: rewrote $doc"
    fi
  fi
done
[[ ${#stale[@]} -eq 0 ]] || die "${stale[*]}: generated regions are stale; run scripts/gen-docs.sh and commit"

# Names mentioned in prose must be ones the binary has.
reference --json >"$TMP/reference.json"
python3 - "$TMP/reference.json" >"$TMP/known" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
flags = r["global"] + [a for c in r["commands"] for a in c["args"]]
names = {f["env"] for f in flags if f["env"]} | {e["name"] for e in r["environment"]}
names |= {m["name"] for m in r["metrics"]} | {s for m in r["metrics"] for s in m["series"]}
print("\n".join(sorted(names)))
PY
grep -ohE 'GWB_[A-Z0-9_]*[A-Z0-9]|ghostwire_backup_[a-z0-9_]*[a-z0-9]' "${DOCS[@]}" | sort -u >"$TMP/mentioned"
unknown="$(comm -23 "$TMP/mentioned" "$TMP/known")"
[[ -z "$unknown" ]] || die "${DOCS[*]} mention names the binary does not have: $(echo $unknown)"
echo "gen-docs: ${DOCS[*]} are up to date"
