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

from .checks import CRD_KINDS, Checker, markdown_anchors
from .interface import Interface

VARIANTS = ["sidecar", "cronjob", "verify-cronjob", "prune-cronjob", "monitoring", "monitoring-rules", "flux",
            "helm-test", "prestage"]
# Oldest supported (native sidecars need >= 1.29) and a current one.
K8S_VERSIONS = ["1.30.0", "1.33.0"]

# The layouts docs/kubernetes.md recommends, built outside deploy/ the way a user's overlay is:
#  example-overlay: Ghostwire (the stand-in) + base + monitoring + the sidecar, verify-cronjob,
#                   prune-cronjob, networkpolicy and irsa components + a ConfigMap patch;
#  example-green:   the design document's green release (`helm install ghostwire-green ./chart
#                   -n ghostwire-green`: StatefulSet ghostwire-green in namespace
#                   ghostwire-green) through the same sidecar component. Its stand-in is
#                   written by chart_stand_in() as the chart would render it, NOT renamed by a
#                   Kustomize patch (Kustomize matches patch targets by an object's original
#                   name too, which would hide a patch that targets the name `ghostwire`);
#  example-claim-name: the stand-in with its claim template called `profile` instead of the
#                   chart's `signal-data`: the agent must follow it onto `profile`;
#  example-in-cluster-s3: the agent's NetworkPolicies with S3 in the cluster (MinIO), set as
#                   docs/kubernetes.md shows: the S3 policy must admit the ConfigMap's endpoint;
#  example-cronjob: the cronjob component for the green release, its PVC name set in one place.
# And flux-postrender: the green stand-in through the HelmRelease's own post-renderer patches,
# as Flux would apply them (built in render_all from the rendered HelmRelease).
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
  - {deploy}/components/prune-cronjob
  - {deploy}/components/networkpolicy
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
      - op: replace
        path: /data/GWB_VERIFY_KEY
        value: RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3
      - op: replace
        path: /data/GWB_CLUSTER_ID
        value: eks-prod-eu-central-1
""",
    "example-green": """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: ghostwire-green
resources:
  - {green}
  - {deploy}/base
components:
  - {deploy}/components/sidecar
""",
    "example-claim-name": """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: ghostwire
resources:
  - {other_claim}
  - {deploy}/base
components:
  - {deploy}/components/sidecar
""",
    "example-in-cluster-s3": """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: ghostwire
resources:
  - {deploy}/base
components:
  - {deploy}/components/verify-cronjob
  - {deploy}/components/networkpolicy
patches:
  - target: {{version: v1, kind: ConfigMap, name: ghostwire-backup}}
    patch: |-
      - op: add
        path: /data/GWB_S3_ENDPOINT
        value: http://minio.minio.svc.cluster.local:9000
      - op: replace
        path: /data/GWB_S3_PATH_STYLE
        value: "true"
  - target: {{group: networking.k8s.io, version: v1, kind: NetworkPolicy, name: ghostwire-backup-jobs-s3}}
    patch: |-
      - op: replace
        path: /spec/egress
        value:
          - to:
              - namespaceSelector:
                  matchLabels:
                    kubernetes.io/metadata.name: minio
                podSelector:
                  matchLabels:
                    app: minio
            ports:
              - protocol: TCP
                port: 9000
""",
    "example-cronjob": """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: ghostwire-green
resources:
  - {deploy}/base
components:
  - {deploy}/components/cronjob
patches:
  - target:
      group: batch
      version: v1
      kind: CronJob
      name: ghostwire-backup
    patch: |-
      - op: replace
        path: /spec/jobTemplate/spec/template/spec/volumes/0/persistentVolumeClaim/claimName
        value: signal-data-ghostwire-green-0
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


GREEN = {"name": "ghostwire-green", "namespace": "ghostwire-green"}


def chart_stand_in(root, scratch, directory, release=None, claim=None):
    """deploy/sidecar/stand-in's StatefulSet as another render of the chart: named after the
    release, in its namespace, with the release's instance label (release = GREEN), and/or
    with its claim template called `claim` (Signal's mount renamed with it). Written as the
    chart would render it, not renamed by a Kustomize patch (Kustomize matches patch targets
    by an object's original name too, which would hide a patch that targets the name
    `ghostwire`). Returns its directory."""
    with open(f"{root}/deploy/sidecar/stand-in/ghostwire-statefulset.yaml") as f:
        sts = yaml.safe_load(f)
    if release:
        sts["metadata"].update(release)
        sts["spec"]["serviceName"] = release["name"]
        for labels in (sts["metadata"].setdefault("labels", {}), sts["spec"]["selector"]["matchLabels"],
                       sts["spec"]["template"]["metadata"]["labels"]):
            labels["app.kubernetes.io/instance"] = release["name"]
    if claim:
        template = sts["spec"]["volumeClaimTemplates"][0]["metadata"]
        pod = sts["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] == template["name"]:
                    m["name"] = claim
        template["name"] = claim
    directory = os.path.join(scratch, directory)
    os.makedirs(directory)
    with open(f"{directory}/statefulset.yaml", "w") as f:
        yaml.safe_dump(sts, f)
    with open(f"{directory}/kustomization.yaml", "w") as f:
        yaml.safe_dump({"resources": ["statefulset.yaml"]}, f)
    return directory


def render_all(root, kubectl, scratch):
    """{variant: YAML text} for every variant and the documented overlays."""
    texts = {}
    green = chart_stand_in(root, scratch, "green-stand-in", release=GREEN)
    other_claim = chart_stand_in(root, scratch, "claim-stand-in", claim="profile")
    for v in VARIANTS:
        if not os.path.isfile(f"{root}/deploy/{v}/kustomization.yaml"):
            raise Failure(f"deploy/{v}/kustomization.yaml is missing")
        texts[v] = render(kubectl, f"{root}/deploy/{v}")
    for name, kustomization in EXAMPLES.items():
        directory = os.path.join(scratch, name)
        os.makedirs(directory)
        deploy = os.path.relpath(f"{root}/deploy", directory)
        with open(f"{directory}/kustomization.yaml", "w") as f:
            f.write(kustomization.format(deploy=deploy, green=os.path.relpath(green, directory),
                                         other_claim=os.path.relpath(other_claim, directory)))
        texts[name] = render(kubectl, directory, "--load-restrictor", "LoadRestrictionsNone")
    texts["flux-postrender"] = render_post_renderer(root, kubectl, scratch, green, texts["flux"])
    return texts


def render_post_renderer(root, kubectl, scratch, green, flux_text):
    """The green stand-in StatefulSet with the HelmRelease's post-renderer patches applied,
    the way Flux runs them over the chart's output (a Kustomize `patches` list)."""
    releases = [d for d in yaml.safe_load_all(flux_text) if d and d.get("kind") == "HelmRelease"]
    if len(releases) != 1:
        raise Failure(f"deploy/flux renders {len(releases)} HelmReleases, want 1")
    patches = [p for pr in releases[0]["spec"].get("postRenderers", [])
               for p in (pr.get("kustomize") or {}).get("patches", [])]
    directory = os.path.join(scratch, "flux-postrender")
    os.makedirs(directory)
    deploy = os.path.relpath(f"{root}/deploy", directory)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": releases[0]["spec"].get("targetNamespace") or releases[0]["metadata"].get("namespace"),
        "resources": [os.path.relpath(green, directory), f"{deploy}/base"],
        "patches": patches,
    }
    with open(f"{directory}/kustomization.yaml", "w") as f:
        yaml.safe_dump(kustomization, f)
    return render(kubectl, directory, "--load-restrictor", "LoadRestrictionsNone")


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
    with open(f"{a.root}/deploy/components/sidecar/signal-liveness-patch.yaml") as f:
        liveness_patch = yaml.safe_load(f)
    with open(f"{a.root}/docs/kubernetes.md") as f:
        anchors = markdown_anchors(f.read())
    checker = Checker(interface, sidecar_patch, docs_anchors=anchors, liveness_patch=liveness_patch)
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
