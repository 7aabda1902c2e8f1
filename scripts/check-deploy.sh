#!/usr/bin/env bash
# Renders every Kubernetes variant under deploy/ and checks it against the agent it deploys
# (the checker is the Python package scripts/deploycheck/; its docstring says what it checks):
#   1. deploycheck's own tests: small broken manifests, each reported with the right message;
#   2. `kubectl kustomize` of every variant and of the overlay layout docs/kubernetes.md
#      recommends; `kubernetes-validate --strict` of each for every version in $K8S_VERSIONS;
#   3. the agent's contract, security settings, CRD fields and cross-references. Commands,
#      flags, env vars and metric names come from the binary: `ghostwire-backup reference --json`.
#
# Needs: kubectl >= 1.27 (Kustomize 5), python3 with venv, and cargo (or GWB_BIN, a built
# binary). Creates .venv-deploy/ (PyPI: kubernetes-validate, PyYAML) on first use; reruns take
# a few seconds.
#
# Usage: scripts/check-deploy.sh            (env: K8S_VERSIONS, KUBECTL, GWB_DEPLOY_VENV, GWB_BIN)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GWB_DEPLOY_VENV:-$ROOT/.venv-deploy}"
KUBECTL="${KUBECTL:-kubectl}"
# Oldest supported (native sidecars need >= 1.29) and a current one.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.33.0}"

die() { echo "check-deploy: FAIL: $*" >&2; exit 1; }

command -v "$KUBECTL" >/dev/null || die "kubectl not found (set KUBECTL=...); it renders the kustomizations"

if [[ ! -x "$VENV/bin/kubernetes-validate" ]] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  echo "check-deploy: creating $VENV (kubernetes-validate, PyYAML from PyPI)"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'PyYAML>=6,<7' || die "pip install into $VENV failed"
fi
export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"

"$VENV/bin/python" -m unittest discover --quiet -s "$ROOT/scripts/deploycheck/tests" -t "$ROOT/scripts" \
  || die "deploycheck's own tests failed (scripts/deploycheck/tests)"

REFERENCE="$(mktemp)"
trap 'rm -f "$REFERENCE"' EXIT
if [[ -n "${GWB_BIN:-}" ]]; then
  "$GWB_BIN" reference --json >"$REFERENCE" || die "$GWB_BIN reference --json failed"
else
  (cd "$ROOT" && cargo run --quiet --locked -- reference --json) >"$REFERENCE" \
    || die "cargo run -- reference --json failed (or set GWB_BIN to a built ghostwire-backup)"
fi

"$VENV/bin/python" -m deploycheck --root "$ROOT" --reference "$REFERENCE" --kubectl "$KUBECTL" \
  --validator "$VENV/bin/kubernetes-validate" --k8s-versions "$K8S_VERSIONS"
