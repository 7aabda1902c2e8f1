#!/usr/bin/env bash
# Renders every Kubernetes variant under deploy/ and checks it:
#   1. `kubectl kustomize deploy/<variant>` must succeed, and so must the overlay layout that
#      docs/kubernetes.md recommends (example-overlay, example-restore);
#   2. `kubernetes-validate --strict` against each of $K8S_VERSIONS (schemas bundled, offline);
#      only the CRD kinds we expect (Prometheus Operator, Flux) may lack a schema;
#   3. a Python check of what the validator cannot see: the CRD fields we rely on, the
#      agent's contract (commands, env, mounts, probes), cross-variant references, and the
#      security settings of every container of every workload. No Secret may be rendered.
#
# Needs: kubectl >= 1.27 (Kustomize 5) and python3 with venv. Creates .venv-deploy/ (PyPI:
# kubernetes-validate, PyYAML) on first use; reruns take a few seconds.
#
# Usage: scripts/check-deploy.sh            (env: K8S_VERSIONS, KUBECTL, GWB_DEPLOY_VENV)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GWB_DEPLOY_VENV:-$ROOT/.venv-deploy}"
KUBECTL="${KUBECTL:-kubectl}"
# Oldest supported (native sidecars need >= 1.29) and a current one.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.33.0}"
VARIANTS=(sidecar cronjob restore-job verify-cronjob monitoring flux helm-test)
# Kinds without a bundled schema that we check ourselves below.
CRD_KINDS_RE='^(ServiceMonitor|PrometheusRule|HelmRelease|HelmRepository)$'

die() { echo "check-deploy: FAIL: $*" >&2; exit 1; }

command -v "$KUBECTL" >/dev/null || die "kubectl not found (set KUBECTL=...); it renders the kustomizations"

if [[ ! -x "$VENV/bin/kubernetes-validate" ]] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  echo "check-deploy: creating $VENV (kubernetes-validate, PyYAML from PyPI)"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'PyYAML>=6,<7' || die "pip install into $VENV failed"
fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

render() { # name dir [extra kubectl args]
  local name="$1" dir="$2"; shift 2
  "$KUBECTL" kustomize "$@" "$dir" >"$OUT/$name.yaml" 2>"$OUT/$name.err" \
    || die "render of $name failed: $(cat "$OUT/$name.err")"
  [[ -s "$OUT/$name.yaml" ]] || die "render of $name is empty"
}

for v in "${VARIANTS[@]}"; do
  [[ -f "$ROOT/deploy/$v/kustomization.yaml" ]] || die "deploy/$v/kustomization.yaml is missing"
  render "$v" "$ROOT/deploy/$v"
done

# The layout docs/kubernetes.md recommends, built outside deploy/ the way a user's overlay is:
#  example-overlay: Ghostwire (the stand-in) + base + monitoring + the sidecar, verify-cronjob
#                   and irsa components + a ConfigMap patch;
#  example-restore: the restore-job component alone (uses the ConfigMap already applied).
EX="$OUT/examples"
mkdir -p "$EX/my-ghostwire" "$EX/restore-green"
REL="$("$VENV/bin/python" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$ROOT/deploy" "$EX/my-ghostwire")"
cat >"$EX/my-ghostwire/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: ghostwire
resources:
  - $REL/sidecar/stand-in
  - $REL/base
  - $REL/monitoring
components:
  - $REL/components/sidecar
  - $REL/components/verify-cronjob
  - $REL/components/irsa
patches:
  - target:
      version: v1
      kind: ConfigMap
      name: ghostwire-backup
    patch: |-
      - op: replace
        path: /data/GWB_REPO
        value: s3://example-ghostwire-backups/ghostwire
EOF
cat >"$EX/restore-green/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: ghostwire
components:
  - $REL/components/restore-job
EOF
render example-overlay "$EX/my-ghostwire" --load-restrictor LoadRestrictionsNone
render example-restore "$EX/restore-green" --load-restrictor LoadRestrictionsNone
ALL=("${VARIANTS[@]}" example-overlay example-restore)

for v in "${ALL[@]}"; do
  : >"$OUT/$v.kv"
  for k in $K8S_VERSIONS; do
    if ! "$VENV/bin/kubernetes-validate" --strict --quiet -k "$k" "$OUT/$v.yaml" \
        >>"$OUT/$v.kv" 2>&1; then
      cat "$OUT/$v.kv" >&2
      die "kubernetes-validate --strict ($k) rejected $v"
    fi
  done
  # Only our expected CRD kinds may go unvalidated: a typo in a core apiVersion would
  # otherwise pass with a mere warning.
  while IFS= read -r kind; do
    [[ "$kind" =~ $CRD_KINDS_RE ]] || { cat "$OUT/$v.kv" >&2; die "$v: no schema for kind $kind (typo in apiVersion/kind?)"; }
  done < <(sed -n "s/.*Couldn't find schema for kind \([A-Za-z]*\) .*/\1/p" "$OUT/$v.kv")
  if grep -v "Couldn't find schema" "$OUT/$v.kv" | grep -q .; then
    cat "$OUT/$v.kv" >&2
    die "kubernetes-validate printed unexpected output for $v"
  fi
done

"$VENV/bin/python" - "$ROOT" "$OUT" "$K8S_VERSIONS" "${ALL[@]}" <<'PY'
import json, re, sys
import yaml

root, out, k8s_versions, variants = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]

IMAGE = "ghcr.io/ghostwire/ghostwire-backup"
BINARY = "/usr/local/bin/ghostwire-backup"
SUBCOMMANDS = {"run", "backup", "restore", "verify", "snapshots", "check"}
GWB_ENV = {
    "GWB_REPO", "GWB_S3_ENDPOINT", "GWB_S3_REGION", "GWB_S3_PATH_STYLE", "GWB_SOURCE",
    "GWB_RECIPIENTS", "GWB_RECIPIENTS_FILE", "GWB_IDENTITY_FILE", "GWB_TARGET", "GWB_SNAPSHOT",
    "GWB_CHOWN", "GWB_STAGING_DIR", "GWB_SCHEDULE", "GWB_LISTEN", "GWB_FINAL_SNAPSHOT",
    "GWB_FINAL_DEADLINE", "GWB_LOG_FORMAT",
}
METRICS = [
    "ghostwire_backup_last_success_timestamp_seconds",
    "ghostwire_backup_last_duration_seconds",
    "ghostwire_backup_uploaded_bytes_total",
    "ghostwire_backup_last_snapshot_size_bytes",
    "ghostwire_backup_failures_total",
    "ghostwire_backup_restore_gate_ok",
    "ghostwire_backup_running",
]
ALLOWED_SECRETS = {"ghostwire-backup-s3", "ghostwire-backup-identity"}
IDENTITY_SECRET = "ghostwire-backup-identity"
STAGING = "/tmp/ghostwire-backup"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "HelmRelease", "HelmRepository"}
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
# Renders that rely on the ServiceAccount/ConfigMap applied by another overlay.
EXTERNAL_REFS = {"example-restore"}

errors = []


def fail(variant, msg):
    errors.append(f"{variant}: {msg}")


def load(variant):
    with open(f"{out}/{variant}.yaml") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind
            and (name is None or d["metadata"]["name"] == name)]


def pod_spec(doc):
    """The pod template's spec of a workload (or a partial StatefulSet patch)."""
    kind = doc["kind"]
    if kind == "Pod":
        return doc["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def containers(spec):
    return [("init", c) for c in spec.get("initContainers", []) or []] + \
           [("main", c) for c in spec.get("containers", []) or []]


def is_agent(c):
    return c.get("image", "").startswith(IMAGE + ":")


def env_of(c, docs):
    """Effective environment: ConfigMap envFrom first, explicit env wins."""
    env = {}
    for ef in c.get("envFrom", []) or []:
        ref = ef.get("configMapRef")
        if ref:
            for cm in find(docs, "ConfigMap", ref["name"]):
                env.update(cm.get("data", {}) or {})
    for e in c.get("env", []) or []:
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def check_security(variant, where, spec, c, stand_in, partial):
    psc = spec.get("securityContext", {}) or {}
    csc = c.get("securityContext", {}) or {}

    def eff(key):
        return csc.get(key, None if partial else psc.get(key))

    name = f"{where} container {c['name']}"
    if eff("runAsNonRoot") is not True:
        fail(variant, f"{name}: runAsNonRoot is not true")
    uid = eff("runAsUser")
    if is_agent(c) and uid != 1000:
        fail(variant, f"{name}: runAsUser is {uid}, want 1000")
    if uid == 0:
        fail(variant, f"{name}: runs as uid 0")
    if is_agent(c) and eff("runAsGroup") != 0:
        fail(variant, f"{name}: runAsGroup is {eff('runAsGroup')}, want 0 (Kasm's)")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail(variant, f"{name}: allowPrivilegeEscalation is not false")
    if csc.get("readOnlyRootFilesystem") is not True and not (stand_in and not is_agent(c)):
        fail(variant, f"{name}: readOnlyRootFilesystem is not true")
    caps = (csc.get("capabilities") or {})
    if caps.get("drop") != ["ALL"] or caps.get("add"):
        fail(variant, f"{name}: capabilities must drop [ALL] and add nothing, got {caps}")
    sp = eff("seccompProfile") or {}
    if sp.get("type") != "RuntimeDefault":
        fail(variant, f"{name}: seccompProfile is not RuntimeDefault")
    if csc.get("privileged"):
        fail(variant, f"{name}: privileged")


def check_agent(variant, where, spec, c, docs):
    name = f"{where} container {c['name']}"
    if c.get("command") != [BINARY]:
        fail(variant, f"{name}: command must be [{BINARY}], got {c.get('command')}")
    args = c.get("args") or []
    if not args or args[0] not in SUBCOMMANDS:
        fail(variant, f"{name}: first arg must be a subcommand of {sorted(SUBCOMMANDS)}, got {args}")
    res = c.get("resources") or {}
    for path in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
        if not (res.get(path[0]) or {}).get(path[1]):
            fail(variant, f"{name}: resources.{'.'.join(path)} missing")
    env = env_of(c, docs)
    for k in env:
        if k.startswith("GWB_") and k not in GWB_ENV:
            fail(variant, f"{name}: unknown env var {k} (not in the agent's contract)")
    for e in c.get("env", []) or []:
        if e["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") and "value" in e:
            fail(variant, f"{name}: {e['name']} has an inline value; use secretKeyRef")
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref and ref["name"] not in ALLOWED_SECRETS:
            fail(variant, f"{name}: env {e['name']} refers to unknown Secret {ref['name']}")
    if env.get("GWB_STAGING_DIR") != STAGING:
        fail(variant, f"{name}: GWB_STAGING_DIR must be {STAGING}")
    vols = {v["name"]: v for v in spec.get("volumes", []) or []}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", []) or []}
    tmp = mounts.get("/tmp")
    if not tmp or "emptyDir" not in vols.get(tmp["name"], {}):
        fail(variant, f"{name}: /tmp must be an emptyDir (read-only root filesystem)")
    # The identity (private key) belongs to the restore side only.
    identity_mounts = [m for m in mounts.values()
                       if (vols.get(m["name"], {}).get("secret") or {}).get("secretName") == IDENTITY_SECRET]
    sub = args[0] if args else None
    if sub in ("run", "backup", "check", "snapshots") and identity_mounts:
        fail(variant, f"{name}: `{sub}` must not mount the age identity Secret")
    if sub in ("restore", "verify"):
        if not identity_mounts:
            fail(variant, f"{name}: `{sub}` needs the identity Secret mounted")
        else:
            idf = env.get("GWB_IDENTITY_FILE", "")
            if not any(idf.startswith(m["mountPath"].rstrip("/") + "/") for m in identity_mounts):
                fail(variant, f"{name}: GWB_IDENTITY_FILE={idf!r} is not inside the identity mount")
            if not all(m.get("readOnly") for m in identity_mounts):
                fail(variant, f"{name}: identity mount must be readOnly")
    return args, env, mounts


def check_workload(variant, doc, docs, partial=False):
    partial_refs = partial or variant in EXTERNAL_REFS
    """Security and contract checks of one workload; returns its agent containers."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    stand_in = (doc["metadata"].get("annotations") or {}).get("ghostwire-backup/stand-in") == "true"
    spec = pod_spec(doc)
    where = f"{kind}/{name}"
    if spec.get("automountServiceAccountToken") is not False:
        fail(variant, f"{where}: automountServiceAccountToken must be false")
    if not partial_refs:
        sa = spec.get("serviceAccountName")
        if sa and not find(docs, "ServiceAccount", sa):
            fail(variant, f"{where}: ServiceAccount {sa} is not rendered")
    if not partial:
        has_pvc = any("persistentVolumeClaim" in v for v in spec.get("volumes", []) or []) or \
            (kind == "StatefulSet" and doc["spec"].get("volumeClaimTemplates"))
        if has_pvc and "fsGroup" not in (spec.get("securityContext") or {}):
            fail(variant, f"{where}: mounts a PVC but sets no fsGroup")
    for v in spec.get("volumes", []) or []:
        s = v.get("secret")
        if s and s["secretName"] not in ALLOWED_SECRETS:
            fail(variant, f"{where}: volume {v['name']} uses unknown Secret {s['secretName']}")
    agents = []
    for phase, c in containers(spec):
        check_security(variant, where, spec, c, stand_in, partial)
        if is_agent(c):
            for ef in c.get("envFrom", []) or []:
                ref = ef.get("configMapRef")
                if ref and not partial_refs and not find(docs, "ConfigMap", ref["name"]):
                    fail(variant, f"{where} container {c['name']}: ConfigMap {ref['name']} is not rendered")
            args, env, mounts = check_agent(variant, where, spec, c, docs)
            agents.append((phase, c, args, env, mounts))
    return agents


def one(variant, docs, kind, name):
    found = find(docs, kind, name)
    if len(found) != 1:
        fail(variant, f"expected exactly one {kind}/{name}, found {len(found)}")
        return None
    return found[0]


def has_args(args, *want):
    """`want` appears as a contiguous run in args."""
    n = len(want)
    return any(tuple(args[i:i + n]) == want for i in range(len(args) - n + 1))


def volume_of(spec, mount):
    return next((v for v in spec.get("volumes", []) or [] if v["name"] == mount["name"]), {})


rendered = {v: load(v) for v in variants}
with open(f"{root}/deploy/components/sidecar/statefulset-patch.yaml") as f:
    SIDECAR_PATCH = yaml.safe_load(f)

counts = {}
for variant, docs in rendered.items():
    before = len(errors)
    for d in docs:
        if d.get("kind") == "Secret":
            fail(variant, f"renders Secret/{d['metadata']['name']}: Secrets are created by hand, never rendered"
                 + (" (and this one has inline data)" if d.get("data") or d.get("stringData") else ""))
        if d.get("kind") in WORKLOAD_KINDS:
            check_workload(variant, d, docs)
        if d.get("kind") == "ConfigMap":
            for k in (d.get("data") or {}):
                if k.startswith("GWB_") and k not in GWB_ENV:
                    fail(variant, f"ConfigMap/{d['metadata']['name']}: unknown key {k}")
                if k.startswith("AWS_SECRET") or k == "GWB_IDENTITY":
                    fail(variant, f"ConfigMap/{d['metadata']['name']}: secret material {k} in a ConfigMap")

    if variant in ("sidecar", "example-overlay"):
        sts = one(variant, docs, "StatefulSet", "ghostwire")
        if sts:
            spec = pod_spec(sts)
            inits = spec.get("initContainers") or []
            names = [c["name"] for c in inits]
            if "restore" not in names or "ghostwire-backup" not in names \
                    or names.index("restore") > names.index("ghostwire-backup"):
                fail(variant, f"initContainers must hold restore before ghostwire-backup, got {names}")
            else:
                restore = inits[names.index("restore")]
                sidecar = inits[names.index("ghostwire-backup")]
                if restore.get("restartPolicy"):
                    fail(variant, "restore must be a plain init container (no restartPolicy)")
                if not has_args(restore.get("args", []), "restore", "--if-empty"):
                    fail(variant, "restore init container must run `restore --if-empty`")
                if sidecar.get("restartPolicy") != "Always":
                    fail(variant, "ghostwire-backup must be a native sidecar (restartPolicy: Always)")
                if sidecar.get("args") != ["run"]:
                    fail(variant, "the sidecar must run `run`")
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    hg = (sidecar.get(probe) or {}).get("httpGet") or {}
                    if hg.get("path") != path or hg.get("port") not in (9464, "metrics"):
                        fail(variant, f"sidecar {probe} must be httpGet {path} on 9464, got {hg}")
                ports = {p.get("name"): p["containerPort"] for p in sidecar.get("ports", [])}
                if ports.get("metrics") != 9464:
                    fail(variant, "sidecar must expose containerPort 9464 named metrics")
                env = env_of(sidecar, docs)
                if env.get("GWB_LISTEN") != "0.0.0.0:9464":
                    fail(variant, "sidecar GWB_LISTEN must be 0.0.0.0:9464")
                if env.get("GWB_FINAL_SNAPSHOT") != "true":
                    fail(variant, "sidecar GWB_FINAL_SNAPSHOT must be true")
                grace = spec.get("terminationGracePeriodSeconds", 30)
                try:
                    deadline = int(env.get("GWB_FINAL_DEADLINE", ""))
                except ValueError:
                    fail(variant, "sidecar GWB_FINAL_DEADLINE must be an integer number of seconds")
                    deadline = grace
                if grace < deadline + 20:
                    fail(variant, f"terminationGracePeriodSeconds {grace} leaves under 20 s beyond "
                                  f"GWB_FINAL_DEADLINE {deadline} for Signal to stop")
                for c in (restore, sidecar):
                    m = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == "/home/kasm-user"), None)
                    if not m or m["name"] != "home" or m.get("readOnly"):
                        fail(variant, f"{c['name']} must mount volume `home` read-write at /home/kasm-user")
            claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
            if "home" not in claims:
                fail(variant, "stand-in StatefulSet must have volumeClaimTemplate `home`")
            if sts["spec"].get("replicas", 1) != 1:
                fail(variant, "Ghostwire must run exactly one replica")
            # The metrics Service must select this pod.
            svc = find(rendered.get("monitoring", []), "Service", "ghostwire-backup-metrics")
            labels = sts["spec"]["template"]["metadata"].get("labels") or {}
            if svc and not all(labels.get(k) == v for k, v in svc[0]["spec"]["selector"].items()):
                fail(variant, f"monitoring Service selector {svc[0]['spec']['selector']} does not "
                              f"match the pod labels {labels}")
        if variant == "example-overlay":
            cm = one(variant, docs, "ConfigMap", "ghostwire-backup")
            if cm and cm["data"].get("GWB_REPO") != "s3://example-ghostwire-backups/ghostwire":
                fail(variant, "the documented ConfigMap patch did not apply")
            if not find(docs, "CronJob", "ghostwire-backup-verify") or not find(docs, "ServiceMonitor"):
                fail(variant, "the documented overlay lost the verify CronJob or the monitoring objects")
            sa = one(variant, docs, "ServiceAccount", "ghostwire-backup")
            arn = ((sa or {}).get("metadata", {}).get("annotations") or {}).get("eks.amazonaws.com/role-arn", "")
            if not arn.startswith("arn:aws:iam::"):
                fail(variant, "IRSA component did not annotate the ServiceAccount with a role ARN")
            if sts and pod_spec(sts).get("serviceAccountName") != "ghostwire-backup":
                fail(variant, "the Ghostwire pod must run as the annotated ServiceAccount")

    elif variant == "cronjob":
        cj = one(variant, docs, "CronJob", "ghostwire-backup")
        if cj:
            if cj["spec"].get("concurrencyPolicy") != "Forbid":
                fail(variant, "concurrencyPolicy must be Forbid")
            spec = pod_spec(cj)
            terms = (((spec.get("affinity") or {}).get("podAffinity") or {})
                     .get("requiredDuringSchedulingIgnoredDuringExecution") or [])
            if not any((t.get("labelSelector") or {}).get("matchLabels", {})
                       .get("statefulset.kubernetes.io/pod-name") == "ghostwire-0"
                       and t.get("topologyKey") == "kubernetes.io/hostname" for t in terms):
                fail(variant, "needs required podAffinity to pod-name ghostwire-0 on kubernetes.io/hostname")
            agents = [c for _, c in containers(spec) if is_agent(c)]
            if len(agents) != 1 or agents[0].get("args") != ["backup"]:
                fail(variant, "must run exactly one agent container with `backup`")
            else:
                m = next((m for m in agents[0].get("volumeMounts", []) if m["mountPath"] == "/home/kasm-user"), None)
                v = volume_of(spec, m) if m else {}
                if (v.get("persistentVolumeClaim") or {}).get("claimName") != "home-ghostwire-0":
                    fail(variant, "must mount PVC home-ghostwire-0 at /home/kasm-user")
                if m and (m.get("readOnly") or (v.get("persistentVolumeClaim") or {}).get("readOnly")):
                    fail(variant, "home-ghostwire-0 must be mounted read-write (SQLite WAL needs -shm)")

    elif variant in ("restore-job", "example-restore"):
        pvc = one(variant, docs, "PersistentVolumeClaim", "home-ghostwire-green-0")
        job = one(variant, docs, "Job", "ghostwire-restore-green")
        if pvc and "ReadWriteOnce" not in pvc["spec"].get("accessModes", []):
            fail(variant, "green PVC should be ReadWriteOnce like the StatefulSet's")
        if job:
            spec = pod_spec(job)
            agents = [c for _, c in containers(spec) if is_agent(c)]
            a = agents[0] if len(agents) == 1 else {}
            args = a.get("args", [])
            for want in (("restore",), ("--snapshot", "final"), ("--target", "/restore"), ("--chown", "1000:0")):
                if not has_args(args, *want):
                    fail(variant, f"restore Job args {args} lack {' '.join(want)}")
            m = next((m for m in a.get("volumeMounts", []) if m["mountPath"] == "/restore"), None)
            if not m or (volume_of(spec, m).get("persistentVolumeClaim") or {}).get("claimName") != "home-ghostwire-green-0":
                fail(variant, "restore Job must mount PVC home-ghostwire-green-0 at /restore")
            if job["spec"].get("backoffLimit", 6) != 0:
                fail(variant, "restore Job should not retry (backoffLimit 0)")

    elif variant == "verify-cronjob":
        cj = one(variant, docs, "CronJob", "ghostwire-backup-verify")
        if cj:
            if cj["spec"].get("concurrencyPolicy") != "Forbid":
                fail(variant, "concurrencyPolicy must be Forbid")
            agents = [c for _, c in containers(pod_spec(cj)) if is_agent(c)]
            if len(agents) != 1 or not has_args(agents[0].get("args", []), "verify", "--snapshot", "latest"):
                fail(variant, "must run `verify --snapshot latest`")

    elif variant == "helm-test":
        pod = one(variant, docs, "Pod", "ghostwire-backup-test")
        if pod:
            if (pod["metadata"].get("annotations") or {}).get("helm.sh/hook") != "test":
                fail(variant, "test Pod needs annotation helm.sh/hook: test")
            if pod["spec"].get("restartPolicy") != "Never":
                fail(variant, "test Pod needs restartPolicy Never")
            agents = [c for _, c in containers(pod["spec"]) if is_agent(c)]
            if len(agents) != 1 or not has_args(agents[0].get("args", []), "check", "--max-age", "2h"):
                fail(variant, "test Pod must run `check --max-age 2h`")

    if variant in ("monitoring", "example-overlay"):
        svc = one(variant, docs, "Service", "ghostwire-backup-metrics")
        sm = one(variant, docs, "ServiceMonitor", "ghostwire-backup")
        rule = one(variant, docs, "PrometheusRule", "ghostwire-backup")
        dash = one(variant, docs, "ConfigMap", "ghostwire-backup-dashboard")
        if svc:
            ports = {p.get("name"): p for p in svc["spec"].get("ports", [])}
            if "metrics" not in ports or ports["metrics"]["port"] != 9464:
                fail(variant, "Service needs port 9464 named metrics")
            if not svc["spec"].get("selector"):
                fail(variant, "Service needs a selector")
        if sm:
            if sm.get("apiVersion") != "monitoring.coreos.com/v1":
                fail(variant, f"ServiceMonitor apiVersion {sm.get('apiVersion')}")
            sel = (sm["spec"].get("selector") or {}).get("matchLabels") or {}
            if not sel:
                fail(variant, "ServiceMonitor needs selector.matchLabels")
            if svc and not all((svc["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items()):
                fail(variant, f"ServiceMonitor selector {sel} does not match Service labels")
            eps = sm["spec"].get("endpoints") or []
            if not eps or any(e.get("port") != "metrics" or e.get("path", "/metrics") != "/metrics" for e in eps):
                fail(variant, "ServiceMonitor endpoints must scrape port `metrics` at /metrics")
        if rule:
            if rule.get("apiVersion") != "monitoring.coreos.com/v1":
                fail(variant, f"PrometheusRule apiVersion {rule.get('apiVersion')}")
            rules = [r for g in rule["spec"].get("groups", []) for r in g.get("rules", [])]
            by_alert = {r.get("alert"): r for r in rules}
            for r in rules:
                if not r.get("alert") or not r.get("expr"):
                    fail(variant, f"rule without alert/expr: {r}")
                if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                    fail(variant, f"alert {r.get('alert')} needs labels.severity")
                if not (r.get("annotations") or {}).get("summary"):
                    fail(variant, f"alert {r.get('alert')} needs annotations.summary")
                if r.get("for") and not re.fullmatch(r"\d+[smh]", r["for"]):
                    fail(variant, f"alert {r.get('alert')}: bad `for` {r['for']}")
            want = {
                "GhostwireBackupStale": [r"time\(\)\s*-\s*ghostwire_backup_last_success_timestamp_seconds\s*>\s*(7200|2\s*\*\s*3600)\b"],
                "GhostwireBackupFailing": [r"increase\(ghostwire_backup_failures_total\[1h\]\)\s*>\s*0"],
                "GhostwireBackupRestoreGateFailed": [r"ghostwire_backup_restore_gate_ok\s*==\s*0"],
            }
            for alert, patterns in want.items():
                expr = (by_alert.get(alert) or {}).get("expr", "")
                if not expr:
                    fail(variant, f"missing alert {alert}")
                for p in patterns:
                    if expr and not re.search(p, expr):
                        fail(variant, f"alert {alert}: expr {expr!r} does not match {p}")
        if dash:
            if (dash["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
                fail(variant, "dashboard ConfigMap needs label grafana_dashboard: \"1\"")
            data = dash.get("data") or {}
            if len(data) != 1 or not next(iter(data)).endswith(".json"):
                fail(variant, "dashboard ConfigMap must hold exactly one *.json")
            for key, text in data.items():
                try:
                    board = json.loads(text)
                except ValueError as e:
                    fail(variant, f"dashboard {key} is not JSON: {e}")
                    continue
                exprs = " ".join(t.get("expr", "") for p in board.get("panels", []) for t in p.get("targets", []))
                for m in METRICS:
                    if m not in exprs:
                        fail(variant, f"dashboard has no panel for {m}")
                ids = [p.get("id") for p in board.get("panels", [])]
                if len(ids) != len(set(ids)):
                    fail(variant, "dashboard panel ids are not unique")
                if not board.get("uid") or not board.get("title"):
                    fail(variant, "dashboard needs uid and title")

    if variant == "flux":
        for repo in find(docs, "HelmRepository"):
            if repo.get("apiVersion") != "source.toolkit.fluxcd.io/v1" or not repo["spec"].get("url") \
                    or not repo["spec"].get("interval"):
                fail(variant, f"HelmRepository/{repo['metadata']['name']} needs source.toolkit.fluxcd.io/v1, url, interval")
        hr = one(variant, docs, "HelmRelease", "ghostwire")
        if hr:
            if hr.get("apiVersion") != "helm.toolkit.fluxcd.io/v2":
                fail(variant, f"HelmRelease apiVersion {hr.get('apiVersion')}, want helm.toolkit.fluxcd.io/v2")
            ref = hr["spec"].get("chart", {}).get("spec", {}).get("sourceRef", {})
            if not find(docs, ref.get("kind"), ref.get("name")):
                fail(variant, f"HelmRelease sourceRef {ref} is not rendered")
            patches = [p for pr in hr["spec"].get("postRenderers", [])
                       for p in (pr.get("kustomize") or {}).get("patches", [])]
            sts_patches = [p for p in patches if (p.get("target") or {}).get("kind") == "StatefulSet"
                           and p["target"].get("name") == "ghostwire"]
            if len(sts_patches) != 1:
                fail(variant, "HelmRelease needs one postRenderers kustomize patch targeting StatefulSet ghostwire")
            else:
                body = yaml.safe_load(sts_patches[0]["patch"])
                if body != SIDECAR_PATCH:
                    fail(variant, "the HelmRelease patch differs from deploy/components/sidecar/statefulset-patch.yaml")
                if body.get("kind") != "StatefulSet":
                    fail(variant, "the HelmRelease patch is not a StatefulSet patch")
                else:
                    check_workload(variant, body, docs, partial=True)

    counts[variant] = (len(docs), len(errors) - before)

# The sidecar patch itself, on its own terms (a user applies it to their own StatefulSet).
check_workload("sidecar-patch", SIDECAR_PATCH, rendered["sidecar"], partial=True)

for variant, (n, nerr) in counts.items():
    kinds = sorted({d["kind"] for d in rendered[variant]})
    crds = sum(1 for d in rendered[variant] if d["kind"] in CRD_KINDS)
    status = "ok  " if nerr == 0 else "FAIL"
    print(f"{status} {variant:<15} {n:>2} objects ({', '.join(kinds)}); schema-valid for {'/'.join(k8s_versions)}"
          + (f", {crds} CRD object(s) field-checked" if crds else "")
          + (f"; {nerr} problem(s)" if nerr else ""))
for e in errors:
    print(f"check-deploy: FAIL: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
echo "check-deploy: all ${#ALL[@]} renders passed"
