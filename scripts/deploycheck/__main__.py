"""python -m deploycheck --root REPO --reference reference.json: render, validate, check.

Run it through scripts/check-deploy.sh, which sets up the venv and the binary's reference.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import yaml

from .checks import CRD_KINDS, Checker
from .interface import Interface

VARIANTS = ["sidecar", "cronjob", "restore-job", "verify-cronjob", "monitoring", "flux", "helm-test"]
# Oldest supported (native sidecars need >= 1.29) and a current one.
K8S_VERSIONS = ["1.30.0", "1.33.0"]

# The layout docs/kubernetes.md recommends, built outside deploy/ the way a user's overlay is:
#  example-overlay: Ghostwire (the stand-in) + base + monitoring + the sidecar, verify-cronjob
#                   and irsa components + a ConfigMap patch;
#  example-restore: the restore-job component alone (uses the ConfigMap already applied).
EXAMPLES = {
    "example-overlay": """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: ghostwire
resources:
  - {deploy}/sidecar/stand-in
  - {deploy}/base
  - {deploy}/monitoring
components:
  - {deploy}/components/sidecar
  - {deploy}/components/verify-cronjob
  - {deploy}/components/irsa
patches:
  - target:
      version: v1
      kind: ConfigMap
      name: ghostwire-backup
    patch: |-
      - op: replace
        path: /data/GWB_REPO
        value: s3://example-ghostwire-backups/ghostwire
""",
    "example-restore": """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: ghostwire
components:
  - {deploy}/components/restore-job
""",
}


class Failure(Exception):
    pass


def render(kubectl, directory, *extra):
    done = subprocess.run([kubectl, "kustomize", *extra, directory], capture_output=True, text=True)
    if done.returncode != 0:
        raise Failure(f"render of {directory} failed: {done.stderr.strip()}")
    if not done.stdout.strip():
        raise Failure(f"render of {directory} is empty")
    return done.stdout


def render_all(root, kubectl, scratch):
    """{variant: YAML text} for every variant and the documented overlays."""
    texts = {}
    for v in VARIANTS:
        if not os.path.isfile(f"{root}/deploy/{v}/kustomization.yaml"):
            raise Failure(f"deploy/{v}/kustomization.yaml is missing")
        texts[v] = render(kubectl, f"{root}/deploy/{v}")
    for name, kustomization in EXAMPLES.items():
        directory = os.path.join(scratch, name)
        os.makedirs(directory)
        deploy = os.path.relpath(f"{root}/deploy", directory)
        with open(f"{directory}/kustomization.yaml", "w") as f:
            f.write(kustomization.format(deploy=deploy))
        texts[name] = render(kubectl, directory, "--load-restrictor", "LoadRestrictionsNone")
    return texts


def validate(validator, variant, path, versions):
    """kubernetes-validate --strict for each version; only our CRD kinds may lack a schema
    (a typo in a core apiVersion would otherwise pass with a mere warning)."""
    for k in versions:
        done = subprocess.run([validator, "--strict", "--quiet", "-k", k, path],
                              capture_output=True, text=True)
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise Failure(f"kubernetes-validate --strict ({k}) rejected {variant}:\n{output}")
        for line in output.splitlines():
            if not line.strip():
                continue
            m = re.search(r"Couldn't find schema for kind ([A-Za-z]*) ", line)
            if not m:
                raise Failure(f"kubernetes-validate printed unexpected output for {variant}:\n{output}")
            if m.group(1) not in CRD_KINDS:
                raise Failure(f"{variant}: no schema for kind {m.group(1)} (typo in apiVersion/kind?)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m deploycheck", description=__doc__)
    p.add_argument("--root", required=True, help="the repository")
    p.add_argument("--reference", required=True, help="output of `ghostwire-backup reference --json`")
    p.add_argument("--kubectl", default="kubectl")
    p.add_argument("--validator", default="kubernetes-validate")
    p.add_argument("--k8s-versions", default=" ".join(K8S_VERSIONS))
    a = p.parse_args(argv)
    versions = a.k8s_versions.split()
    try:
        interface = Interface.load(a.reference)
        with tempfile.TemporaryDirectory() as scratch:
            texts = render_all(a.root, a.kubectl, scratch)
            for variant, text in texts.items():
                path = os.path.join(scratch, f"{variant}.yaml")
                with open(path, "w") as f:
                    f.write(text)
                validate(a.validator, variant, path, versions)
    except Failure as e:
        print(f"check-deploy: FAIL: {e}", file=sys.stderr)
        return 1
    rendered = {v: [d for d in yaml.safe_load_all(t) if d] for v, t in texts.items()}
    with open(f"{a.root}/deploy/components/sidecar/statefulset-patch.yaml") as f:
        sidecar_patch = yaml.safe_load(f)
    checker = Checker(interface, sidecar_patch)
    counts = checker.check_all(rendered)
    for variant, problems in counts.items():
        docs = rendered[variant]
        kinds = sorted({d["kind"] for d in docs})
        crds = sum(1 for d in docs if d["kind"] in CRD_KINDS)
        status = "ok  " if problems == 0 else "FAIL"
        print(f"{status} {variant:<15} {len(docs):>2} objects ({', '.join(kinds)}); schema-valid for {'/'.join(versions)}"
              + (f", {crds} CRD object(s) field-checked" if crds else "")
              + (f"; {problems} problem(s)" if problems else ""))
    for e in checker.errors:
        print(f"check-deploy: FAIL: {e}", file=sys.stderr)
    if checker.errors:
        return 1
    print(f"check-deploy: all {len(rendered)} renders passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
