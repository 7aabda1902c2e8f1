"""What kubernetes-validate cannot see: the agent's contract, the CRD fields we rely on,
cross-variant references and the security settings of every container.

Names of commands, flags, environment variables and metrics come from the binary
(`Interface`); what is fixed here is how deploy/ chooses to run it (image, paths, Secrets,
ports) and what each variant is for.
"""

import ipaddress
import json
import re
from urllib.parse import urlsplit

import yaml

IMAGE = "ghcr.io/ghostwire/ghostwire-backup"
BINARY = "/usr/local/bin/ghostwire-backup"
ALLOWED_SECRETS = {"ghostwire-backup-s3", "ghostwire-backup-s3-readonly", "ghostwire-backup-s3-prune",
                   "ghostwire-backup-identity", "ghostwire-backup-signing"}
# The one ServiceAccount with a delete-capable role, and the read-only one (docs: IAM).
PRUNE_SA = "ghostwire-backup-prune"
READONLY_SA = "ghostwire-backup-readonly"
IDENTITY_SECRET = "ghostwire-backup-identity"
# The backup side's signing key: only the commands that sign (those with --signing-key) get it;
# the commands that read snapshots (those with --verify-key) get the public GWB_VERIFY_KEY.
SIGNING_SECRET = "ghostwire-backup-signing"
STAGING = "/tmp/ghostwire-backup"
METRICS_PORT = 9464
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "HelmRelease", "HelmRepository"}
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
# Renders that rely on the ServiceAccount/ConfigMap applied by another overlay.
EXTERNAL_REFS = set()
# The label the Ghostwire chart puts on its StatefulSet, whatever the release is called; the
# sidecar component and the Flux post-renderer select by it.
GHOSTWIRE_LABEL = ("app.kubernetes.io/name", "ghostwire")
HOME = "/home/kasm-user"
# Signal's container in the chart: the sidecar component finds it by this name (its liveness
# probe, and the home volume it mounts, read by Kustomize replacements).
SIGNAL_CONTAINER = "signal"
# Where Kubernetes clients look for the API token; only the sidecar may have one there.
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
# The lease owner's parts (cluster/namespace/pod), from the downward API and the ConfigMap.
OWNER_FIELDS = {"GWB_POD_NAME": "metadata.name", "GWB_POD_NAMESPACE": "metadata.namespace"}
# The shutdown budget's parts, as pod annotations (deploy/components/sidecar/statefulset-patch.yaml):
# terminationGracePeriodSeconds = signal stop + GWB_FINAL_DEADLINE + margin.
SIGNAL_STOP_ANNOTATION = "ghostwire-backup/signal-stop-seconds"
FINAL_MARGIN_ANNOTATION = "ghostwire-backup/final-margin-seconds"
ROLE = "ghostwire-backup-own-pod"
# Renders that must hold at least one Ghostwire StatefulSet, and the (namespace, name) it must have.
GHOSTWIRE_RENDERS = {"sidecar": None, "example-overlay": ("ghostwire", "ghostwire"),
                     "example-green": ("ghostwire-green", "ghostwire-green"),
                     "example-claim-name": ("ghostwire", "ghostwire"),
                     "flux-postrender": ("ghostwire-green", "ghostwire-green")}
# The claim template each of those renders' chart stand-in has: the agent must come out on it.
CHART_CLAIMS = {"sidecar": "signal-data", "example-overlay": "signal-data", "example-green": "signal-data",
                "example-claim-name": "profile", "flux-postrender": "signal-data"}
RUNBOOK_DOC = "docs/kubernetes.md"
# The `restricted` Pod Security Standard
# (https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted): the volume
# types it admits and the one capability a container may add.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
RESTRICTED_CAPS = {"NET_BIND_SERVICE"}
METRIC_NAME = re.compile(r"\bghostwire_backup_[a-z0-9_]*[a-z0-9]")


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


def has_args(args, *want):
    """`want` appears as a contiguous run in args."""
    n = len(want)
    return any(tuple(args[i:i + n]) == want for i in range(len(args) - n + 1))


def secret_names(volume):
    """The Secrets a volume holds: a `secret` volume's, or those of a `projected` one."""
    names = [(volume.get("secret") or {}).get("secretName")]
    names += [(src.get("secret") or {}).get("name")
              for src in (volume.get("projected") or {}).get("sources", []) or []]
    return {n for n in names if n}


def has_flag(args, flag):
    """`--flag` or `--flag=value` in args."""
    return any(a == flag or a.startswith(flag + "=") for a in args)


def volume_of(spec, mount):
    return next((v for v in spec.get("volumes", []) or [] if v["name"] == mount["name"]), {})


def metric_names(text):
    return set(METRIC_NAME.findall(text))


def markdown_anchors(text):
    """The anchors GitHub gives the headings of a Markdown page: lower case, punctuation other
    than `-` and `_` dropped, spaces as `-`."""
    anchors = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return anchors


def is_ghostwire(doc):
    """A Ghostwire StatefulSet: the chart's label, or a non-agent container with the home
    volume (so a StatefulSet that lost the label is still found, and reported)."""
    if doc.get("kind") != "StatefulSet":
        return False
    k, v = GHOSTWIRE_LABEL
    labels = {**(doc["metadata"].get("labels") or {}),
              **(((doc["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {})}
    if labels.get(k) == v:
        return True
    return any(not is_agent(c) and any(m.get("mountPath") == HOME for m in c.get("volumeMounts", []) or [])
               for _, c in containers(pod_spec(doc)))


def signal_containers(spec):
    """The app containers that mount the desktop's home: Signal (Kasm), whatever the chart
    calls them."""
    return [c for c in spec.get("containers", []) or []
            if not is_agent(c) and any(m.get("mountPath") == HOME for m in c.get("volumeMounts", []) or [])]


def home_volume(c):
    return next((m["name"] for m in c.get("volumeMounts", []) or [] if m.get("mountPath") == HOME), None)


def token_volumes(spec):
    """Names of the pod's volumes that project a ServiceAccount token."""
    return {v["name"] for v in spec.get("volumes", []) or []
            if any("serviceAccountToken" in src for src in (v.get("projected") or {}).get("sources", []) or [])}


def field_ref(env_entry):
    return (((env_entry or {}).get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")


class Checker:
    """Collects problems as "variant: message" lines in `errors`."""

    def __init__(self, interface, sidecar_patch, docs_anchors=None, liveness_patch=None):
        self.interface = interface
        self.sidecar_patch = sidecar_patch
        self.liveness_patch = liveness_patch
        # Anchors of docs/kubernetes.md, for the alerts' runbook_url (None: not checked).
        self.docs_anchors = docs_anchors
        self.errors = []
        self.rendered = {}

    def fail(self, variant, msg):
        self.errors.append(f"{variant}: {msg}")

    def one(self, variant, docs, kind, name):
        found = find(docs, kind, name)
        if len(found) != 1:
            self.fail(variant, f"expected exactly one {kind}/{name}, found {len(found)}")
            return None
        return found[0]

    # --- every workload -------------------------------------------------------------------

    def check_security(self, variant, where, spec, c, stand_in, partial):
        psc = spec.get("securityContext", {}) or {}
        csc = c.get("securityContext", {}) or {}

        def eff(key):
            return csc.get(key, None if partial else psc.get(key))

        name = f"{where} container {c['name']}"
        if eff("runAsNonRoot") is not True:
            self.fail(variant, f"{name}: runAsNonRoot is not true")
        uid = eff("runAsUser")
        if is_agent(c) and uid != 1000:
            self.fail(variant, f"{name}: runAsUser is {uid}, want 1000")
        if uid == 0:
            self.fail(variant, f"{name}: runs as uid 0")
        if is_agent(c) and eff("runAsGroup") != 0:
            self.fail(variant, f"{name}: runAsGroup is {eff('runAsGroup')}, want 0 (Kasm's)")
        if csc.get("allowPrivilegeEscalation") is not False:
            self.fail(variant, f"{name}: allowPrivilegeEscalation is not false")
        if csc.get("readOnlyRootFilesystem") is not True and not (stand_in and not is_agent(c)):
            self.fail(variant, f"{name}: readOnlyRootFilesystem is not true")
        caps = (csc.get("capabilities") or {})
        if caps.get("drop") != ["ALL"] or caps.get("add"):
            self.fail(variant, f"{name}: capabilities must drop [ALL] and add nothing, got {caps}")
        sp = eff("seccompProfile") or {}
        if sp.get("type") != "RuntimeDefault":
            self.fail(variant, f"{name}: seccompProfile is not RuntimeDefault")
        if csc.get("privileged"):
            self.fail(variant, f"{name}: privileged")

    def check_restricted(self, variant, where, spec):
        """The `restricted` Pod Security Standard, as the admission controller judges a pod:
        what every agent-only workload must pass in a namespace that enforces it."""
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                self.fail(variant, f"{where}: {key} is not allowed by the restricted profile")
        for v in spec.get("volumes", []) or []:
            kinds = set(v) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                self.fail(variant, f"{where}: volume {v['name']} is {sorted(kinds)}, not allowed by the restricted profile")
        psc = spec.get("securityContext") or {}
        for _, c in containers(spec):
            csc = c.get("securityContext") or {}
            name = f"{where} container {c['name']}"
            if csc.get("allowPrivilegeEscalation") is not False:
                self.fail(variant, f"{name}: restricted profile needs allowPrivilegeEscalation: false")
            if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True or \
                    csc.get("runAsUser", psc.get("runAsUser")) == 0:
                self.fail(variant, f"{name}: restricted profile needs runAsNonRoot and a non-zero runAsUser")
            seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                self.fail(variant, f"{name}: restricted profile needs seccompProfile RuntimeDefault (or Localhost), "
                                   f"got {seccomp}")
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - RESTRICTED_CAPS:
                self.fail(variant, f"{name}: restricted profile needs capabilities drop [ALL], adding at most "
                                   f"NET_BIND_SERVICE, got {caps}")
            if any(p.get("hostPort") for p in c.get("ports", []) or []):
                self.fail(variant, f"{name}: hostPort is not allowed by the restricted profile")

    def check_agent(self, variant, where, spec, c, docs, partial=False):
        """The agent's contract: a command it has, flags and env vars that command reads,
        the mounts it needs, and each key only where it is used."""
        name = f"{where} container {c['name']}"
        iface = self.interface
        if c.get("command") != [BINARY]:
            self.fail(variant, f"{name}: command must be [{BINARY}], got {c.get('command')}")
        args = c.get("args") or []
        sub = args[0] if args and args[0] in iface.commands else None
        if sub is None:
            self.fail(variant, f"{name}: first arg must be a command of {sorted(iface.commands)}, got {args}")
        else:
            for arg in args[1:]:
                flag = arg.split("=", 1)[0]
                if flag.startswith("--") and flag not in iface.flags[sub]:
                    self.fail(variant, f"{name}: `{sub}` has no flag {flag}")
        res = c.get("resources") or {}
        for path in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
            if not (res.get(path[0]) or {}).get(path[1]):
                self.fail(variant, f"{name}: resources.{'.'.join(path)} missing")
        env = env_of(c, docs)
        for k in env:
            if k.startswith("GWB_") and k not in iface.env:
                self.fail(variant, f"{name}: unknown env var {k} (the agent does not read it)")
        reads = iface.env_of(sub) if sub else iface.env
        for e in c.get("env", []) or []:
            k = e["name"]
            if k.startswith("GWB_") and k in iface.env and k not in reads:
                self.fail(variant, f"{name}: env {k} is set but `{sub}` does not read it")
            if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") and "value" in e:
                self.fail(variant, f"{name}: {k} has an inline value; use secretKeyRef")
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["name"] not in ALLOWED_SECRETS:
                self.fail(variant, f"{name}: env {k} refers to unknown Secret {ref['name']}")
            elif ref and ref["name"] in (IDENTITY_SECRET, SIGNING_SECRET):
                self.fail(variant, f"{name}: env {k} takes a key out of Secret {ref['name']}: mount it as a file "
                                   f"(environment variables show up in `kubectl describe` and crash reports)")
        if "GWB_STAGING_DIR" in reads and env.get("GWB_STAGING_DIR") != STAGING:
            self.fail(variant, f"{name}: GWB_STAGING_DIR must be {STAGING}")
        vols = {v["name"]: v for v in spec.get("volumes", []) or []}
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", []) or []}
        tmp = mounts.get("/tmp")
        if not tmp or "emptyDir" not in vols.get(tmp["name"], {}):
            self.fail(variant, f"{name}: /tmp must be an emptyDir (read-only root filesystem)")
        elif not ((res.get("requests") or {}).get("ephemeral-storage")
                  and (res.get("limits") or {}).get("ephemeral-storage")):
            self.fail(variant, f"{name}: resources need ephemeral-storage requests and limits for the "
                               f"scratch emptyDir at /tmp")
        # The identity (private key) belongs to the commands that decrypt: those with --identity.
        self.check_key_file(variant, name, sub, env, mounts, vols, IDENTITY_SECRET, "--identity",
                            "GWB_IDENTITY_FILE", "the age identity Secret", "identity")
        # The signing key belongs to the commands that sign: those with --signing-key.
        self.check_key_file(variant, name, sub, env, mounts, vols, SIGNING_SECRET, "--signing-key",
                            "GWB_SIGNING_KEY_FILE", "the signing key Secret", "signing key")
        self.check_verify_key(variant, name, c, sub, env, docs, partial)
        if str(env.get("GWB_ALLOW_UNSIGNED", "")).lower() in ("true", "1", "yes", "on"):
            self.fail(variant, f"{name}: GWB_ALLOW_UNSIGNED is set: it accepts unsigned snapshots (anyone's); "
                               f"migration only, by hand (docs/format.md), never in deploy/")
        return args, env, mounts

    def check_key_file(self, variant, name, sub, env, mounts, vols, secret, flag, env_name, what, short):
        """A secret key file reaches exactly the commands that use it (those with `flag`),
        read-only, from a Secret volume no other user can read, at the path `env_name` names."""
        key_mounts = [m for m in mounts.values() if secret in secret_names(vols.get(m["name"], {}))]
        uses = sub is not None and flag in self.interface.flags[sub]
        if sub and not uses and key_mounts:
            self.fail(variant, f"{name}: `{sub}` must not mount {what}")
        if not uses:
            return
        if not key_mounts:
            self.fail(variant, f"{name}: `{sub}` needs the {short} Secret mounted")
            return
        path = env.get(env_name, "")
        if not any(str(path).startswith(m["mountPath"].rstrip("/") + "/") for m in key_mounts):
            self.fail(variant, f"{name}: {env_name}={path!r} is not inside the {short} mount")
        if not all(m.get("readOnly") for m in key_mounts):
            self.fail(variant, f"{name}: {short} mount must be readOnly")
        for m in key_mounts:
            # Unset, the kubelet writes Secret files 0644: readable by every user in the pod.
            mode = (vols[m["name"]].get("secret") or vols[m["name"]].get("projected") or {}).get("defaultMode", 0o644)
            if mode & 0o137:
                self.fail(variant, f"{name}: the {short} Secret's defaultMode is {mode:#o}; at most 0440 "
                                   f"(no write, nothing for other users)")

    def check_verify_key(self, variant, name, c, sub, env, docs, partial):
        """The commands that read snapshots trust only what the verify key verifies: they exit
        2 without GWB_VERIFY_KEY. Where a ConfigMap it reads is not in this render (a partial
        patch), the key cannot be seen, so only a render with all of them is judged."""
        if sub is None or "--verify-key" not in self.interface.flags[sub] or has_flag(c.get("args") or [], "--verify-key"):
            return
        refs = [ef["configMapRef"]["name"] for ef in c.get("envFrom", []) or [] if ef.get("configMapRef")]
        if partial and not all(find(docs, "ConfigMap", r) for r in refs):
            return
        if not env.get("GWB_VERIFY_KEY"):
            self.fail(variant, f"{name}: `{sub}` reads snapshots but gets no GWB_VERIFY_KEY (put the RW… key "
                               f"`keygen` printed in the ConfigMap): it exits 2 without one")

    def check_workload(self, variant, doc, docs, partial=False):
        """Security and contract checks of one workload; returns its agent containers."""
        partial_refs = partial or variant in EXTERNAL_REFS
        kind, name = doc["kind"], doc["metadata"]["name"]
        stand_in = (doc["metadata"].get("annotations") or {}).get("ghostwire-backup/stand-in") == "true"
        spec = pod_spec(doc)
        where = f"{kind}/{name}"
        if spec.get("automountServiceAccountToken") is not False:
            self.fail(variant, f"{where}: automountServiceAccountToken must be false")
        if not partial_refs:
            sa = spec.get("serviceAccountName")
            if sa and not find(docs, "ServiceAccount", sa):
                self.fail(variant, f"{where}: ServiceAccount {sa} is not rendered")
        if not partial:
            has_pvc = any("persistentVolumeClaim" in v for v in spec.get("volumes", []) or []) or \
                (kind == "StatefulSet" and doc["spec"].get("volumeClaimTemplates"))
            if has_pvc and "fsGroup" not in (spec.get("securityContext") or {}):
                self.fail(variant, f"{where}: mounts a PVC but sets no fsGroup")
        signers = self.interface.commands_with("--signing-key")
        for v in spec.get("volumes", []) or []:
            for secret in sorted(secret_names(v) - ALLOWED_SECRETS):
                self.fail(variant, f"{where}: volume {v['name']} uses unknown Secret {secret}")
            # A pod whose agents do not sign has no business holding the signing key, mounted or not.
            if SIGNING_SECRET in secret_names(v) and not partial and not any(
                    is_agent(c) and (c.get("args") or [None])[0] in signers for _, c in containers(spec)):
                self.fail(variant, f"{where}: volume {v['name']} holds the signing key, but no container "
                                   f"of this pod signs (only {', '.join(sorted(signers))} do)")
        if kind != "StatefulSet" and not partial:
            self.check_restricted(variant, where, spec)
        tokens = token_volumes(spec)
        agents = []
        for phase, c in containers(spec):
            mounts_token = any(m["name"] in tokens or m.get("mountPath", "").rstrip("/") == TOKEN_PATH
                               for m in c.get("volumeMounts", []) or [])
            if mounts_token and not (is_agent(c) and (c.get("args") or [None])[0] == "run"
                                     and c.get("restartPolicy") == "Always"):
                self.fail(variant, f"{where} container {c['name']}: mounts a Kubernetes API token; only the "
                                   f"sidecar (`run`) may (it deletes its own pod when the lease is lost)")
            self.check_security(variant, where, spec, c, stand_in, partial)
            if is_agent(c):
                for ef in c.get("envFrom", []) or []:
                    ref = ef.get("configMapRef")
                    if ref and not partial_refs and not find(docs, "ConfigMap", ref["name"]):
                        self.fail(variant, f"{where} container {c['name']}: ConfigMap {ref['name']} is not rendered")
                args, env, mounts = self.check_agent(variant, where, spec, c, docs, partial)
                agents.append((phase, c, args, env, mounts))
        return agents

    def check_objects(self, variant, docs):
        for d in docs:
            if d.get("kind") == "Secret":
                self.fail(variant, f"renders Secret/{d['metadata']['name']}: Secrets are created by hand, never rendered"
                          + (" (and this one has inline data)" if d.get("data") or d.get("stringData") else ""))
            if d.get("kind") in WORKLOAD_KINDS:
                self.check_workload(variant, d, docs)
            if d.get("kind") == "ConfigMap":
                for k in (d.get("data") or {}):
                    if k.startswith("GWB_") and k not in self.interface.env:
                        self.fail(variant, f"ConfigMap/{d['metadata']['name']}: unknown key {k} (the agent does not read it)")
                    if k.startswith("AWS_SECRET") or k in ("GWB_IDENTITY", "GWB_SIGNING_KEY"):
                        self.fail(variant, f"ConfigMap/{d['metadata']['name']}: secret material {k} in a ConfigMap")

    # --- what each variant is for ---------------------------------------------------------

    def check_ghostwire(self, variant, docs):
        """Every Ghostwire StatefulSet in the render carries the agent, whatever its name and
        namespace; renders that exist to show the injection must hold one. Returns the first."""
        found = [d for d in docs if is_ghostwire(d)]
        if variant in GHOSTWIRE_RENDERS and not found:
            self.fail(variant, "renders no Ghostwire StatefulSet")
        want = GHOSTWIRE_RENDERS.get(variant)
        if want and not any((d["metadata"].get("namespace"), d["metadata"]["name"]) == want for d in found):
            got = [(d["metadata"].get("namespace"), d["metadata"]["name"]) for d in found]
            self.fail(variant, f"expected Ghostwire StatefulSet {want[1]} in namespace {want[0]}, got {got}")
        for sts in found:
            self.check_agent_injected(variant, sts, docs)
        return found[0] if found else None

    def check_agent_injected(self, variant, sts, docs):
        where = f"StatefulSet {sts['metadata'].get('namespace') or '(no namespace)'}/{sts['metadata']['name']}"
        spec = pod_spec(sts)
        inits = spec.get("initContainers") or []
        names = [c["name"] for c in inits]
        if "restore" not in names or "ghostwire-backup" not in names \
                or names.index("restore") > names.index("ghostwire-backup"):
            self.fail(variant, f"{where} lacks the agent: initContainers must hold restore before "
                               f"the ghostwire-backup sidecar, got {names}")
        else:
            restore = inits[names.index("restore")]
            sidecar = inits[names.index("ghostwire-backup")]
            if restore.get("restartPolicy"):
                self.fail(variant, "restore must be a plain init container (no restartPolicy)")
            if not has_args(restore.get("args", []), "restore", "--if-empty"):
                self.fail(variant, "restore init container must run `restore --if-empty`")
            if sidecar.get("restartPolicy") != "Always":
                self.fail(variant, "ghostwire-backup must be a native sidecar (restartPolicy: Always)")
            if sidecar.get("args") != ["run"]:
                self.fail(variant, "the sidecar must run `run`")
            # The lease gates Signal's start: the kubelet starts the next container only once a
            # native sidecar's startupProbe succeeded.
            startup = sidecar.get("startupProbe") or {}
            hg = startup.get("httpGet") or {}
            if hg.get("path") != "/startupz" or hg.get("port") not in (METRICS_PORT, "metrics"):
                self.fail(variant, f"sidecar startupProbe must be httpGet /startupz on {METRICS_PORT}, got {hg}")
            elif startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < 600:
                self.fail(variant, "sidecar startupProbe must wait at least 600 s (an unreleased lease expires after 10 min)")
            renv = env_of(restore, docs)
            if renv.get("GWB_SNAPSHOT") != "handoff":
                self.fail(variant, "restore must restore GWB_SNAPSHOT=handoff (exactly what the last instance released)")
            if find(docs, "ConfigMap", "ghostwire-backup") and renv.get("GWB_REQUIRE_SNAPSHOT") != "true":
                self.fail(variant, "restore needs GWB_REQUIRE_SNAPSHOT=true (an empty repository must not start Signal)")
            self.check_signal_probe(variant, where, spec)
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                hg = (sidecar.get(probe) or {}).get("httpGet") or {}
                if hg.get("path") != path or hg.get("port") not in (METRICS_PORT, "metrics"):
                    self.fail(variant, f"sidecar {probe} must be httpGet {path} on {METRICS_PORT}, got {hg}")
            ports = {p.get("name"): p["containerPort"] for p in sidecar.get("ports", [])}
            if ports.get("metrics") != METRICS_PORT:
                self.fail(variant, f"sidecar must expose containerPort {METRICS_PORT} named metrics")
            env = env_of(sidecar, docs)
            if env.get("GWB_LISTEN") != f"0.0.0.0:{METRICS_PORT}":
                self.fail(variant, f"sidecar GWB_LISTEN must be 0.0.0.0:{METRICS_PORT}")
            if env.get("GWB_FINAL_SNAPSHOT") != "true":
                self.fail(variant, "sidecar GWB_FINAL_SNAPSHOT must be true")
            # zstd sizes its pool from the cgroup CPU quota: without a limit, every core of the node.
            if not ((sidecar.get("resources") or {}).get("limits") or {}).get("cpu"):
                self.fail(variant, "sidecar needs a CPU limit (the compressor's threads follow the cgroup quota)")
            for c in (restore, sidecar):
                self.check_lease_owner(variant, c, docs)
            self.check_grace(variant, sts, env)
            self.check_home_mounts(variant, where, sts, (restore, sidecar))
            self.check_api_access(variant, where, sts, sidecar, docs)
        if sts["spec"].get("replicas", 1) != 1:
            self.fail(variant, "Ghostwire must run exactly one replica")
        # The metrics Service must select this pod.
        svc = find(self.rendered.get("monitoring", []), "Service", "ghostwire-backup-metrics")
        labels = sts["spec"]["template"]["metadata"].get("labels") or {}
        if svc and not all(labels.get(k) == v for k, v in svc[0]["spec"]["selector"].items()):
            self.fail(variant, f"monitoring Service selector {svc[0]['spec']['selector']} does not "
                               f"match the pod labels {labels}")

    def check_signal_probe(self, variant, where, spec):
        """Signal's container, found by what it is (the app container on the home volume), is
        stopped by the sidecar's /leasez: not whichever container happens to come first."""
        signals = signal_containers(spec)
        if not signals:
            self.fail(variant, f"{where}: no app container mounts {HOME} (Signal's container is missing)")
        for c in signals:
            hg = (c.get("livenessProbe") or {}).get("httpGet") or {}
            if hg.get("path") != "/leasez" or hg.get("port") not in (METRICS_PORT, "metrics"):
                self.fail(variant, f"{where}: the Signal container {c['name']} needs livenessProbe httpGet /leasez "
                                   f"on {METRICS_PORT} (it stops a Signal whose pod lost the lease), got {hg}")

    def check_lease_owner(self, variant, c, docs):
        """The owner is cluster/namespace/pod: the pod's name and namespace from the API, the
        cluster's name from the ConfigMap; nothing may override it with a bare name."""
        entries = {e["name"]: e for e in c.get("env", []) or []}
        for name, path in OWNER_FIELDS.items():
            if field_ref(entries.get(name)) != path:
                self.fail(variant, f"{c['name']}: {name} must come from fieldRef {path} (the lease owner is "
                                   f"cluster/namespace/pod; HOSTNAME can be set by the chart)")
        if "GWB_LEASE_OWNER" in entries:
            self.fail(variant, f"{c['name']}: GWB_LEASE_OWNER is set: it would replace the cluster/namespace/pod "
                               f"owner with one name that another namespace or cluster can share")
        if find(docs, "ConfigMap", "ghostwire-backup") and not env_of(c, docs).get("GWB_CLUSTER_ID"):
            self.fail(variant, f"{c['name']}: GWB_CLUSTER_ID is empty: set the cluster's name in the ConfigMap")

    def check_grace(self, variant, sts, env):
        """terminationGracePeriodSeconds = Signal's stop + the final snapshot's deadline + margin,
        each stated in the pod spec: the deadline follows the grace period."""
        template = sts["spec"]["template"]
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        grace = template["spec"].get("terminationGracePeriodSeconds", 30)
        try:
            deadline = int(env.get("GWB_FINAL_DEADLINE", ""))
            stop = int(annotations[SIGNAL_STOP_ANNOTATION])
            margin = int(annotations[FINAL_MARGIN_ANNOTATION])
        except (KeyError, ValueError):
            self.fail(variant, f"sidecar GWB_FINAL_DEADLINE must be an integer number of seconds, and the pod needs "
                               f"integer annotations {SIGNAL_STOP_ANNOTATION} and {FINAL_MARGIN_ANNOTATION}")
            return
        if stop <= 0 or margin <= 0 or deadline <= 0:
            self.fail(variant, f"the shutdown budget's parts must be positive: Signal's stop {stop} s, "
                               f"final deadline {deadline} s, margin {margin} s")
        if grace != stop + deadline + margin:
            self.fail(variant, f"terminationGracePeriodSeconds {grace} != {SIGNAL_STOP_ANNOTATION} {stop} + "
                               f"GWB_FINAL_DEADLINE {deadline} + {FINAL_MARGIN_ANNOTATION} {margin}: set "
                               f"GWB_FINAL_DEADLINE to {grace - stop - margin} (or the grace period to "
                               f"{stop + deadline + margin})")

    def check_home_mounts(self, variant, where, sts, agents):
        """The agent mounts, read-write at HOME, the very volume Signal's container mounts
        there, and that volume is one of the StatefulSet's claim templates."""
        spec = pod_spec(sts)
        first = next((c for c in spec.get("initContainers") or [] if home_volume(c)), None)
        if first and first["name"] != "restore":
            self.fail(variant, f"{where}: init container {first['name']} touches {HOME} before `restore`, whose "
                               f"--if-empty would then find a fresh volume not empty")
        homes = {home_volume(c) for c in signal_containers(spec)}
        claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", []) or []]
        want = CHART_CLAIMS.get(variant)
        for c in agents:
            m = next((m for m in c.get("volumeMounts", []) or [] if m["mountPath"] == HOME), None)
            if not m or m.get("readOnly"):
                self.fail(variant, f"{c['name']} must mount Signal's home volume read-write at {HOME}")
            elif m["name"] not in homes:
                self.fail(variant, f"{c['name']} mounts volume {m['name']} at {HOME}, but Signal's container "
                                   f"mounts {sorted(h for h in homes if h)} there")
            elif m["name"] not in claims:
                self.fail(variant, f"{c['name']} mounts {m['name']} at {HOME}, which is not a volumeClaimTemplate "
                                   f"of {where} (it has {claims})")
            elif want and m["name"] != want:
                self.fail(variant, f"{c['name']} mounts {m['name']} at {HOME}, not the chart's claim template {want}")

    def check_api_access(self, variant, where, sts, sidecar, docs):
        """The sidecar, and only it, reaches the API (check_workload), at the standard token path,
        as the agent's ServiceAccount, whose Role lets it get and delete this one pod."""
        spec = pod_spec(sts)
        tokens = token_volumes(spec)
        mount = next((m for m in sidecar.get("volumeMounts", []) or [] if m["name"] in tokens), None)
        if not mount or mount["mountPath"].rstrip("/") != TOKEN_PATH or not mount.get("readOnly"):
            self.fail(variant, f"{where}: the sidecar needs a projected serviceAccountToken volume mounted "
                               f"read-only at {TOKEN_PATH} (it deletes its own pod when the lease is lost)")
        else:
            sources = (next(v for v in spec["volumes"] if v["name"] == mount["name"])["projected"] or {}).get("sources", [])
            if not any((src.get("configMap") or {}).get("name") == "kube-root-ca.crt" for src in sources) or \
                    not any(item.get("path") == "namespace" for src in sources
                            for item in (src.get("downwardAPI") or {}).get("items", []) or []):
                self.fail(variant, f"{where}: the sidecar's token volume needs the kube-root-ca.crt ConfigMap and "
                                   f"the namespace (downwardAPI), as the automounted one has")
        if not find(docs, "Role") and not find(docs, "RoleBinding"):
            return  # a partial render (the StatefulSet alone): the Role comes with the component
        self.check_own_pod_role(variant, docs, spec.get("serviceAccountName"), f"{sts['metadata']['name']}-0")

    def check_own_pod_role(self, variant, docs, service_account, pod):
        role = self.one(variant, docs, "Role", ROLE)
        binding = self.one(variant, docs, "RoleBinding", ROLE)
        if role:
            rules = role.get("rules") or []
            want = [{"apiGroups": [""], "resources": ["pods"], "resourceNames": [pod]}]
            got = [{k: r.get(k) for k in ("apiGroups", "resources", "resourceNames")} for r in rules]
            if got != want or any(sorted(r.get("verbs") or []) != ["delete", "get"] for r in rules):
                self.fail(variant, f"Role {ROLE} must allow exactly get and delete on pods/{pod}, got {rules}")
        if binding:
            subjects = binding.get("subjects") or []
            if (binding.get("roleRef") or {}).get("name") != ROLE or (binding.get("roleRef") or {}).get("kind") != "Role" \
                    or [(x.get("kind"), x.get("name")) for x in subjects] != [("ServiceAccount", service_account)]:
                self.fail(variant, f"RoleBinding {ROLE} must bind Role {ROLE} to ServiceAccount {service_account} "
                                   f"alone, got {binding.get('roleRef')} {subjects}")

    def check_example_overlay(self, variant, docs, sts):
        cm = self.one(variant, docs, "ConfigMap", "ghostwire-backup")
        if cm and (cm["data"].get("GWB_REPO") != "s3://example-ghostwire-backups/ghostwire"
                   or cm["data"].get("GWB_CLUSTER_ID") in (None, "", "CHANGE-ME")):
            self.fail(variant, "the documented ConfigMap patch did not apply (GWB_REPO, GWB_CLUSTER_ID)")
        if not find(docs, "CronJob", "ghostwire-backup-verify") or not find(docs, "ServiceMonitor"):
            self.fail(variant, "the documented overlay lost the verify CronJob or the monitoring objects")
        sa = self.one(variant, docs, "ServiceAccount", "ghostwire-backup")
        arn = ((sa or {}).get("metadata", {}).get("annotations") or {}).get("eks.amazonaws.com/role-arn", "")
        if not arn.startswith("arn:aws:iam::"):
            self.fail(variant, "IRSA component did not annotate the ServiceAccount with a role ARN")
        if sts and pod_spec(sts).get("serviceAccountName") != "ghostwire-backup":
            self.fail(variant, "the Ghostwire pod must run as the annotated ServiceAccount")
        if sts:
            # IRSA's webhook injects the role into every container it is not told to skip.
            skipped = set(((sts["spec"]["template"].get("metadata") or {}).get("annotations") or {})
                          .get("eks.amazonaws.com/skip-containers", "").split(","))
            spec = pod_spec(sts)
            signals = {c["name"] for c in signal_containers(spec)}
            agents = {c["name"] for _, c in containers(spec) if is_agent(c)}
            if not signals <= skipped or agents & skipped:
                self.fail(variant, f"with IRSA, eks.amazonaws.com/skip-containers must name Signal's container(s) "
                                   f"{sorted(signals)} and no agent container, got {sorted(skipped - {''})}")

    def check_cronjob(self, variant, docs):
        cj = self.one(variant, docs, "CronJob", "ghostwire-backup")
        if not cj:
            return
        if cj["spec"].get("concurrencyPolicy") != "Forbid":
            self.fail(variant, "concurrencyPolicy must be Forbid")
        spec = pod_spec(cj)
        terms = (((spec.get("affinity") or {}).get("podAffinity") or {})
                 .get("requiredDuringSchedulingIgnoredDuringExecution") or [])
        k, v = GHOSTWIRE_LABEL
        if not any((t.get("labelSelector") or {}).get("matchLabels", {}).get(k) == v
                   and t.get("topologyKey") == "kubernetes.io/hostname" for t in terms):
            self.fail(variant, f"needs required podAffinity to the Ghostwire pod's label {k}={v} "
                               f"on kubernetes.io/hostname (the home PVC is ReadWriteOnce)")
        if any("statefulset.kubernetes.io/pod-name" in (t.get("labelSelector") or {}).get("matchLabels", {})
               for t in terms):
            self.fail(variant, "podAffinity must not name one pod: select the chart's label")
        if not spec.get("tolerations"):
            self.fail(variant, "needs tolerations for the desktop pool the Ghostwire pod runs in")
        agents = [c for _, c in containers(spec) if is_agent(c)]
        if len(agents) != 1 or agents[0].get("args") != ["backup"]:
            self.fail(variant, "must run exactly one agent container with `backup`")
        else:
            m = next((m for m in agents[0].get("volumeMounts", []) if m["mountPath"] == HOME), None)
            v = volume_of(spec, m) if m else {}
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim or not claim.endswith("-0"):
                self.fail(variant, f"must mount the Ghostwire pod's PVC (<claim template>-<statefulset>-0) at {HOME}, "
                                   f"got {claim}")
            if variant == "example-cronjob" and claim != "signal-data-ghostwire-green-0":
                self.fail(variant, f"the documented claimName patch did not apply (got {claim})")
            if m and (m.get("readOnly") or (v.get("persistentVolumeClaim") or {}).get("readOnly")):
                self.fail(variant, "the home PVC must be mounted read-write (SQLite WAL needs -shm)")

    def check_not_both(self, variant, docs):
        """The backup CronJob is the alternative to the sidecar: one render never holds both
        (two schedules would back up the same profile, and nothing at run time stops it)."""
        if find(docs, "CronJob", "ghostwire-backup") and any(is_ghostwire(d) and any(
                c["name"] == "ghostwire-backup" for c in pod_spec(d).get("initContainers") or [])
                for d in docs):
            self.fail(variant, "renders both the backup CronJob and the sidecar: use one of them")

    def check_verify_cronjob(self, variant, docs):
        cj = self.one(variant, docs, "CronJob", "ghostwire-backup-verify")
        if cj:
            if cj["spec"].get("concurrencyPolicy") != "Forbid":
                self.fail(variant, "concurrencyPolicy must be Forbid")
            agents = [c for _, c in containers(pod_spec(cj)) if is_agent(c)]
            if len(agents) != 1 or not has_args(agents[0].get("args", []), "verify", "--snapshot", "latest"):
                self.fail(variant, "must run `verify --snapshot latest`")
            if pod_spec(cj).get("serviceAccountName") != READONLY_SA:
                self.fail(variant, f"verify must run as the read-only ServiceAccount {READONLY_SA}")

    def check_prestage(self, variant, docs):
        """The pre-staged switch: green's PVC under the name its StatefulSet will use, and a
        Job that fills exactly that claim with `restore --prestage`, read-only."""
        claims = find(docs, "PersistentVolumeClaim")
        if len(claims) != 1:
            self.fail(variant, f"expected one PersistentVolumeClaim, found {len(claims)}")
        pvc = claims[0] if len(claims) == 1 else None
        job = self.one(variant, docs, "Job", "ghostwire-backup-prestage")
        if not pvc or not job:
            return
        name = pvc["metadata"]["name"]
        if not re.fullmatch(r"[a-z0-9-]+-0", name):
            self.fail(variant, f"PVC {name} is not named <claim template>-<StatefulSet>-0: the StatefulSet would not use it")
        if "ReadWriteOnce" not in (pvc["spec"].get("accessModes") or []):
            self.fail(variant, f"PVC {name} must be ReadWriteOnce, as the chart's claim template")
        spec = pod_spec(job)
        agents = [c for _, c in containers(spec) if is_agent(c)]
        if len(agents) != 1 or not has_args(agents[0].get("args", []), "restore", "--prestage"):
            self.fail(variant, "the Job must run one agent container with `restore --prestage`")
        else:
            m = next((m for m in agents[0].get("volumeMounts", []) or [] if m["mountPath"] == HOME), None)
            claim = (volume_of(spec, m).get("persistentVolumeClaim") or {}).get("claimName") if m else None
            if claim != name:
                self.fail(variant, f"the Job fills {claim} at {HOME}, not the PVC {name} it pre-stages")
        if spec.get("serviceAccountName") != READONLY_SA:
            self.fail(variant, f"the Job must run as the read-only ServiceAccount {READONLY_SA}")
        sa = self.one(variant, docs, "ServiceAccount", READONLY_SA)
        if sa and not ((sa["metadata"].get("annotations") or {}).get("eks.amazonaws.com/role-arn", "")
                       .startswith("arn:aws:iam::")):
            self.fail(variant, f"the example must show IRSA on {READONLY_SA} (eks.amazonaws.com/role-arn)")

    def check_prune_cronjob(self, variant, docs):
        cj = self.one(variant, docs, "CronJob", "ghostwire-backup-prune")
        if cj:
            if cj["spec"].get("concurrencyPolicy") != "Forbid":
                self.fail(variant, "concurrencyPolicy must be Forbid")
            agents = [c for _, c in containers(pod_spec(cj)) if is_agent(c)]
            args = agents[0].get("args", []) if len(agents) == 1 else []
            if not args or args[0] != "prune" or not any(a.startswith("--keep-") for a in args):
                self.fail(variant, f"must run `prune` with a --keep-* retention, got {args}")
            if "--dry-run" in args:
                self.fail(variant, "prune runs with --dry-run: it would never delete anything")

    def check_service_accounts(self, variant, docs):
        """Only prune runs as the delete-capable ServiceAccount."""
        for d in docs:
            if d.get("kind") not in WORKLOAD_KINDS:
                continue
            args = [c.get("args", [None])[0] for _, c in containers(pod_spec(d)) if is_agent(c)]
            sa = pod_spec(d).get("serviceAccountName")
            if sa == PRUNE_SA and set(args) != {"prune"}:
                self.fail(variant, f"{d['kind']}/{d['metadata']['name']} runs {args} as {PRUNE_SA}, "
                                   f"the only delete-capable ServiceAccount (prune only)")
            if "prune" in args and sa != PRUNE_SA:
                self.fail(variant, f"{d['kind']}/{d['metadata']['name']}: prune must run as {PRUNE_SA}")

    def check_network_policies(self, variant, docs):
        pols = {d["metadata"]["name"]: d for d in find(docs, "NetworkPolicy")}
        metrics = pols.get("ghostwire-backup-metrics")
        if not metrics or not pols.get("ghostwire-backup-jobs"):
            self.fail(variant, "the documented overlay lost the NetworkPolicies")
            return
        self.check_s3_egress(variant, docs)
        if "Egress" in metrics["spec"].get("policyTypes", []):
            self.fail(variant, "the Ghostwire pod's NetworkPolicy must not restrict egress (Signal needs it)")
        if not any(p.get("port") == METRICS_PORT and any("namespaceSelector" in f for f in r.get("from", []))
                   for r in metrics["spec"].get("ingress", []) for p in r.get("ports", [])):
            self.fail(variant, f"NetworkPolicy must admit port {METRICS_PORT} from the monitoring namespace")

    def check_s3_egress(self, variant, docs):
        """The agent-only pods' egress admits the S3 endpoint the ConfigMap names: AWS S3 (no
        GWB_S3_ENDPOINT) over HTTPS to public addresses; an address, by an ipBlock holding it; a
        Service in the cluster (NAME.NAMESPACE.svc...), by a selector of its namespace."""
        cm = next(iter(find(docs, "ConfigMap", "ghostwire-backup")), None)
        endpoint = ((cm or {}).get("data") or {}).get("GWB_S3_ENDPOINT") or "https://s3.amazonaws.com"
        url = urlsplit(endpoint)
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        k, v = "app.kubernetes.io/name", "ghostwire-backup"
        rules = [r for d in find(docs, "NetworkPolicy")
                 if ((d["spec"].get("podSelector") or {}).get("matchLabels") or {}).get(k) == v
                 for r in d["spec"].get("egress", []) or []]
        on_port = [r for r in rules if not r.get("ports") or any(p.get("port") == port for p in r["ports"])]
        peers = [peer for r in on_port for peer in (r.get("to") or [{}])]
        labels = host.split(".")
        if len(labels) >= 3 and labels[2] == "svc":
            namespace = labels[1]
            ok = any(((peer.get("namespaceSelector") or {}).get("matchLabels") or {})
                     .get("kubernetes.io/metadata.name") == namespace for peer in peers)
            what = f"pods in namespace {namespace} (a namespaceSelector)"
        else:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                # AWS S3's own names: one of its public addresses stands for them (any public
                # ipBlock that holds it admits S3 as the internet or a gateway endpoint routes it).
                address = ipaddress.ip_address("52.216.0.1") if host.endswith("amazonaws.com") else None
            ok = any(peer == {} or self.block_holds(peer.get("ipBlock"), address) for peer in peers)
            what = f"{address or host} (an ipBlock)"
        if not ok:
            self.fail(variant, f"the agent's NetworkPolicies do not admit the S3 endpoint {endpoint}: no egress rule "
                               f"to {what} on port {port} (patch ghostwire-backup-jobs-s3)")

    @staticmethod
    def block_holds(block, address):
        """An ipBlock admits the address (any non-private address, for a name we cannot resolve)."""
        if not block:
            return False
        cidr = ipaddress.ip_network(block["cidr"])
        excepted = [ipaddress.ip_network(e) for e in block.get("except", []) or []]
        if address is None:
            return True  # a host name outside the cluster: its addresses are the user's to know
        return address.version == cidr.version and address in cidr and not any(
            address in e for e in excepted if e.version == address.version)

    def check_helm_test(self, variant, docs):
        pod = self.one(variant, docs, "Pod", "ghostwire-backup-test")
        if pod:
            if (pod["metadata"].get("annotations") or {}).get("helm.sh/hook") != "test":
                self.fail(variant, "test Pod needs annotation helm.sh/hook: test")
            if pod["spec"].get("restartPolicy") != "Never":
                self.fail(variant, "test Pod needs restartPolicy Never")
            agents = [c for _, c in containers(pod["spec"]) if is_agent(c)]
            if len(agents) != 1 or not has_args(agents[0].get("args", []), "check", "--max-age", "2h"):
                self.fail(variant, "test Pod must run `check --max-age 2h`")

    def check_rules_once(self, variant, docs):
        """The alerts and the dashboard are installed once per cluster, never next to a release
        (a PrometheusRule in blue's and in green's namespace evaluates every rule twice)."""
        per_release = [f"{d['kind']}/{d['metadata']['name']}" for d in docs
                       if is_ghostwire(d) or d.get("kind") in ("Service", "ServiceMonitor")]
        shared = [f"{d['kind']}/{d['metadata']['name']}" for d in docs
                  if d.get("kind") == "PrometheusRule"
                  or (d.get("kind") == "ConfigMap" and (d["metadata"].get("labels") or {}).get("grafana_dashboard"))]
        if per_release and shared:
            self.fail(variant, f"renders {shared} next to {per_release}: the alerts and the dashboard are installed "
                               f"once per cluster (deploy/monitoring-rules), or blue and green get every alert twice")

    def check_scrape(self, variant, docs):
        svc = self.one(variant, docs, "Service", "ghostwire-backup-metrics")
        sm = self.one(variant, docs, "ServiceMonitor", "ghostwire-backup")
        if svc:
            ports = {p.get("name"): p for p in svc["spec"].get("ports", [])}
            if "metrics" not in ports or ports["metrics"]["port"] != METRICS_PORT:
                self.fail(variant, f"Service needs port {METRICS_PORT} named metrics")
            elif ports["metrics"].get("targetPort") != METRICS_PORT:
                self.fail(variant, f"Service port metrics needs the numeric targetPort {METRICS_PORT}, got "
                                   f"{ports['metrics'].get('targetPort')!r}: a named port on a native sidecar "
                                   f"resolves only from Kubernetes 1.32")
            if not svc["spec"].get("selector"):
                self.fail(variant, "Service needs a selector")
        if sm:
            if sm.get("apiVersion") != "monitoring.coreos.com/v1":
                self.fail(variant, f"ServiceMonitor apiVersion {sm.get('apiVersion')}")
            sel = (sm["spec"].get("selector") or {}).get("matchLabels") or {}
            if not sel:
                self.fail(variant, "ServiceMonitor needs selector.matchLabels")
            if svc and not all((svc["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items()):
                self.fail(variant, f"ServiceMonitor selector {sel} does not match Service labels")
            eps = sm["spec"].get("endpoints") or []
            if not eps or any(e.get("port") != "metrics" or e.get("path", "/metrics") != "/metrics" for e in eps):
                self.fail(variant, "ServiceMonitor endpoints must scrape port `metrics` at /metrics")

    def check_rules(self, variant, docs):
        rule = self.one(variant, docs, "PrometheusRule", "ghostwire-backup")
        dash = self.one(variant, docs, "ConfigMap", "ghostwire-backup-dashboard")
        exported = self.interface.metric_series
        if rule:
            if rule.get("apiVersion") != "monitoring.coreos.com/v1":
                self.fail(variant, f"PrometheusRule apiVersion {rule.get('apiVersion')}")
            rules = [r for g in rule["spec"].get("groups", []) for r in g.get("rules", [])]
            by_alert = {r.get("alert"): r for r in rules}
            for r in rules:
                if not r.get("alert") or not r.get("expr"):
                    self.fail(variant, f"rule without alert/expr: {r}")
                if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                    self.fail(variant, f"alert {r.get('alert')} needs labels.severity")
                if not (r.get("annotations") or {}).get("summary"):
                    self.fail(variant, f"alert {r.get('alert')} needs annotations.summary")
                if not r.get("for"):
                    self.fail(variant, f"alert {r.get('alert')} needs a `for:` (no page on one scrape or a fresh pod)")
                elif not re.fullmatch(r"\d+[smh]", r["for"]):
                    self.fail(variant, f"alert {r.get('alert')}: bad `for` {r['for']}")
                self.check_runbook(variant, r)
                for m in sorted(metric_names(str(r.get("expr", ""))) - exported):
                    self.fail(variant, f"alert {r.get('alert')}: the agent exports no metric {m}")
            # A fresh process exports 0 for the gauges: rules on them must only judge a pod
            # once a backup ran in it (last_success > 0), and one rule catches the pod that
            # never gets there.
            ran = r"ghostwire_backup_last_success_timestamp_seconds\s*>\s*0"
            want = {
                "GhostwireBackupStale": [r"time\(\)\s*-\s*ghostwire_backup_last_success_timestamp_seconds\s*>\s*(7200|2\s*\*\s*3600)\b", ran],
                "GhostwireBackupNeverSucceeded": [r"ghostwire_backup_last_success_timestamp_seconds\s*==\s*0"],
                "GhostwireBackupFailing": [r"increase\(ghostwire_backup_failures_total\[1h\]\)\s*>\s*0"],
                "GhostwireBackupRestoreGateFailed": [r"ghostwire_backup_restore_gate_ok\s*==\s*0", ran],
                "GhostwireBackupJobFailed": [r"kube_job_status_failed"],
                "GhostwireBackupCronJobStale": [r"kube_cronjob_status_last_successful_time",
                                                r"unless\s+on\s*\(namespace,\s*cronjob\)\s*kube_cronjob_status_last_successful_time"],
                # Once per start, not for the pod's whole life.
                "GhostwireBackupHandoffMissing": [r"ghostwire_backup_handoff_missing\s*==\s*1",
                                                  r"and\s+on\s*\(namespace,\s*pod\)\s*\(\s*time\(\)\s*-\s*kube_pod_start_time\s*<"],
                # The desktop that cannot start: no sidecar runs, so kube-state-metrics tells.
                "GhostwireDesktopStartBlocked": [r'kube_pod_init_container_status_restarts_total\{container="restore"\}',
                                                 r'kube_pod_status_ready\{condition="true"\}'],
                "GhostwireDesktopNotReady": [r"kube_statefulset_status_replicas_ready"],
            }
            for alert, patterns in want.items():
                expr = (by_alert.get(alert) or {}).get("expr", "")
                if not expr:
                    self.fail(variant, f"missing alert {alert}")
                for p in patterns:
                    if expr and not re.search(p, expr):
                        self.fail(variant, f"alert {alert}: expr {expr!r} does not match {p}")
            blocked = str((by_alert.get("GhostwireDesktopStartBlocked") or {}).get("for", ""))
            if re.fullmatch(r"\d+[smh]", blocked) and int(blocked[:-1]) * {"s": 1, "m": 60, "h": 3600}[blocked[-1]] > 300:
                self.fail(variant, f"alert GhostwireDesktopStartBlocked waits {blocked}: a desktop that cannot start "
                                   f"must page within minutes (for: 5m at most)")
        if dash:
            self.check_dashboard(variant, dash)

    def check_dashboard(self, variant, dash):
        exported = self.interface.metric_series
        if (dash["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
            self.fail(variant, "dashboard ConfigMap needs label grafana_dashboard: \"1\"")
        data = dash.get("data") or {}
        if len(data) != 1 or not next(iter(data)).endswith(".json"):
            self.fail(variant, "dashboard ConfigMap must hold exactly one *.json")
        for key, text in data.items():
            try:
                board = json.loads(text)
            except ValueError as e:
                self.fail(variant, f"dashboard {key} is not JSON: {e}")
                continue
            exprs = " ".join(t.get("expr", "") for p in board.get("panels", []) for t in p.get("targets", []))
            for m in sorted(exported):
                if m not in metric_names(exprs):
                    self.fail(variant, f"dashboard has no panel for {m}")
            for m in sorted(metric_names(exprs) - exported):
                self.fail(variant, f"dashboard queries {m}, which the agent does not export")
            ids = [p.get("id") for p in board.get("panels", [])]
            if len(ids) != len(set(ids)):
                self.fail(variant, "dashboard panel ids are not unique")
            if not board.get("uid") or not board.get("title"):
                self.fail(variant, "dashboard needs uid and title")
            variables = {v.get("name") for v in (board.get("templating") or {}).get("list", [])}
            for want_var in ("namespace", "pod"):
                if want_var not in variables:
                    self.fail(variant, f"dashboard needs a `{want_var}` template variable")
            for p in board.get("panels", []):
                for t in p.get("targets", []):
                    e = t.get("expr", "")
                    if metric_names(e) and not ("$namespace" in e and "$pod" in e):
                        self.fail(variant, f"dashboard panel {p.get('id')}: {e!r} ignores $namespace/$pod")

    def check_runbook(self, variant, rule):
        url = (rule.get("annotations") or {}).get("runbook_url", "")
        alert = rule.get("alert")
        m = re.search(re.escape(RUNBOOK_DOC) + r"#([\w-]+)$", url)
        if not m:
            self.fail(variant, f"alert {alert} needs a runbook_url into {RUNBOOK_DOC}#<anchor>, got {url!r}")
        elif self.docs_anchors is not None and m.group(1) not in self.docs_anchors:
            self.fail(variant, f"alert {alert}: runbook_url anchor #{m.group(1)} is not a heading of {RUNBOOK_DOC}")

    def check_flux(self, variant, docs):
        for repo in find(docs, "HelmRepository"):
            if repo.get("apiVersion") != "source.toolkit.fluxcd.io/v1" or not repo["spec"].get("url") \
                    or not repo["spec"].get("interval"):
                self.fail(variant, f"HelmRepository/{repo['metadata']['name']} needs source.toolkit.fluxcd.io/v1, url, interval")
        hr = self.one(variant, docs, "HelmRelease", "ghostwire-green")
        if not hr:
            return
        if hr["spec"].get("releaseName") != "ghostwire-green" or hr["metadata"].get("namespace") != "ghostwire-green":
            self.fail(variant, "the example HelmRelease is the design document's green release: "
                               "releaseName ghostwire-green in namespace ghostwire-green")
        if hr.get("apiVersion") != "helm.toolkit.fluxcd.io/v2":
            self.fail(variant, f"HelmRelease apiVersion {hr.get('apiVersion')}, want helm.toolkit.fluxcd.io/v2")
        self.check_own_pod_role(variant, docs, "ghostwire-backup", f"{hr['spec'].get('releaseName')}-0")
        ref = hr["spec"].get("chart", {}).get("spec", {}).get("sourceRef", {})
        if not find(docs, ref.get("kind"), ref.get("name")):
            self.fail(variant, f"HelmRelease sourceRef {ref} is not rendered")
        patches = [p for pr in hr["spec"].get("postRenderers", [])
                   for p in (pr.get("kustomize") or {}).get("patches", [])]
        sts_patches = [p for p in patches if (p.get("target") or {}).get("kind") == "StatefulSet"]
        if len(sts_patches) != 2:
            self.fail(variant, "HelmRelease needs two postRenderers kustomize patches targeting the "
                               "StatefulSet: the agent, and the Signal container's /leasez liveness")
            return
        for p in sts_patches:
            target = p["target"]
            if target.get("name") or target.get("labelSelector") != "=".join(GHOSTWIRE_LABEL):
                self.fail(variant, f"the post-renderer patches must select the StatefulSet by labelSelector "
                                   f"{'='.join(GHOSTWIRE_LABEL)}, not by name (the chart names it after the release)")
        bodies = [yaml.safe_load(p["patch"]) for p in sts_patches]
        if self.liveness_patch not in bodies:
            self.fail(variant, "the HelmRelease lacks deploy/components/sidecar/signal-liveness-patch.yaml verbatim")
        body = next((b for b in bodies if isinstance(b, dict)), {})
        if body != self.sidecar_patch:
            self.fail(variant, "the HelmRelease patch differs from deploy/components/sidecar/statefulset-patch.yaml")
        if body.get("kind") != "StatefulSet":
            self.fail(variant, "the HelmRelease patch is not a StatefulSet patch")
        else:
            self.check_workload(variant, body, docs, partial=True)

    # --- all of it ------------------------------------------------------------------------

    def check_variant(self, variant, docs):
        """Checks one render; returns the number of problems found in it."""
        before = len(self.errors)
        self.check_objects(variant, docs)
        sts = self.check_ghostwire(variant, docs)
        self.check_not_both(variant, docs)
        self.check_service_accounts(variant, docs)
        if variant == "example-overlay":
            self.check_example_overlay(variant, docs, sts)
        if find(docs, "NetworkPolicy") or variant == "example-overlay":
            self.check_network_policies(variant, docs)
        if variant == "example-overlay":
            self.check_prune_cronjob(variant, docs)
        elif variant in ("cronjob", "example-cronjob"):
            self.check_cronjob(variant, docs)
        elif variant == "verify-cronjob":
            self.check_verify_cronjob(variant, docs)
        elif variant == "prune-cronjob":
            self.check_prune_cronjob(variant, docs)
        elif variant == "helm-test":
            self.check_helm_test(variant, docs)
        elif variant == "prestage":
            self.check_prestage(variant, docs)
        self.check_rules_once(variant, docs)
        if variant in ("monitoring", "example-overlay"):
            self.check_scrape(variant, docs)
        if variant == "monitoring-rules":
            self.check_rules(variant, docs)
        if variant == "flux":
            self.check_flux(variant, docs)
        return len(self.errors) - before

    def check_all(self, rendered):
        """Checks every render and the sidecar patch on its own terms (a user applies it to
        their own StatefulSet); returns {variant: problems}."""
        self.rendered = rendered
        counts = {variant: self.check_variant(variant, docs) for variant, docs in rendered.items()}
        if self.sidecar_patch is not None:
            self.check_workload("sidecar-patch", self.sidecar_patch, rendered.get("sidecar", []), partial=True)
        return counts
