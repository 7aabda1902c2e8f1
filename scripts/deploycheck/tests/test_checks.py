"""The checker against small manifests: a valid one passes, and each kind of mistake a
person makes in deploy/ is reported with a message that names it.

The interface here is a small stand-in for `ghostwire-backup reference --json` (same shape,
fewer flags), so that the tests say which names they rely on.
"""

import copy
import json
import unittest

from deploycheck.checks import Checker, markdown_anchors
from deploycheck.interface import Interface


def flag(long, env, default=None, takes_value=True):
    return {"long": long, "env": env, "default": default, "default_description": None,
            "takes_value": takes_value, "required": False, "possible_values": [], "help": ""}


# The backup side signs; the commands that read snapshots take the verify key.
SIGNS = [flag("--signing-key", "GWB_SIGNING_KEY_FILE")]
TRUSTS = [flag("--verify-key", "GWB_VERIFY_KEY"), flag("--allow-unsigned", "GWB_ALLOW_UNSIGNED", "false", False)]
# The lease owner's parts: run and restore take them.
OWNER = [flag("--cluster-id", "GWB_CLUSTER_ID"), flag("--pod-namespace", "GWB_POD_NAMESPACE"),
         flag("--pod-name", "GWB_POD_NAME")]

REFERENCE = {
    "binary": "ghostwire-backup",
    "version": "0.0.0",
    "global": [flag("--repo", "GWB_REPO", "./backups"), flag("--s3-endpoint", "GWB_S3_ENDPOINT")],
    "environment": [{"name": "GWB_LOG", "default": "info", "help": ""}],
    "commands": [
        {"name": "backup", "about": "", "args": [flag("--staging-dir", "GWB_STAGING_DIR"), *SIGNS]},
        {"name": "restore", "about": "", "args": [
            flag("--snapshot", "GWB_SNAPSHOT", "latest"), flag("--identity", "GWB_IDENTITY_FILE"),
            flag("--target", "GWB_TARGET"), flag("--if-empty", "GWB_IF_EMPTY", "false", False),
            flag("--prestage", None, "false", False),
            flag("--require-snapshot", "GWB_REQUIRE_SNAPSHOT", "false", False), *TRUSTS, *OWNER]},
        {"name": "run", "about": "", "args": [
            flag("--staging-dir", "GWB_STAGING_DIR"), flag("--listen", "GWB_LISTEN", "0.0.0.0:9464"),
            flag("--final-snapshot", "GWB_FINAL_SNAPSHOT", "true"),
            flag("--final-deadline", "GWB_FINAL_DEADLINE", "90"), *SIGNS, *OWNER]},
        {"name": "prune", "about": "", "args": [flag("--keep-daily", "GWB_KEEP_DAILY", "0"), *TRUSTS]},
    ],
    "metrics": [
        {"name": "ghostwire_backup_failures", "type": "counter", "help": "",
         "series": ["ghostwire_backup_failures_total"]},
        {"name": "ghostwire_backup_last_success_timestamp_seconds", "type": "gauge", "help": "",
         "series": ["ghostwire_backup_last_success_timestamp_seconds"]},
        {"name": "ghostwire_backup_restore_gate_ok", "type": "gauge", "help": "",
         "series": ["ghostwire_backup_restore_gate_ok"]},
        {"name": "ghostwire_backup_handoff_missing", "type": "gauge", "help": "",
         "series": ["ghostwire_backup_handoff_missing"]},
    ],
}

SECURE = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 0, "allowPrivilegeEscalation": False,
          "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
          "seccompProfile": {"type": "RuntimeDefault"}}


def agent(name, args, env=(), mounts=()):
    return {
        "name": name,
        "image": "ghcr.io/ghostwire/ghostwire-backup:0.1.0",
        "command": ["/usr/local/bin/ghostwire-backup"],
        "args": list(args),
        "envFrom": [{"configMapRef": {"name": "ghostwire-backup"}}],
        "env": [{"name": k, "value": v} for k, v in env],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi", "ephemeral-storage": "1Gi"},
                      "limits": {"memory": "256Mi", "ephemeral-storage": "8Gi"}},
        "securityContext": copy.deepcopy(SECURE),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
    }


SIGNING_MOUNT = {"name": "signing", "mountPath": "/signing", "readOnly": True}
SIGNING_VOLUME = {"name": "signing", "secret": {"secretName": "ghostwire-backup-signing", "defaultMode": 0o440}}
# The lease owner's parts from the downward API (GWB_CLUSTER_ID comes from the ConfigMap).
LEASE_OWNER = [{"name": "GWB_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
               {"name": "GWB_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_VOLUME = {"name": "kube-api", "projected": {"sources": [
    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}
RUNBOOK = "https://example.invalid/docs/kubernetes.md#"
ANCHORS = {"ghostwirebackupstale", "ghostwirebackupfailing", "ghostwirebackuprestoregatefailed"}


def ghostwire_statefulset(name="ghostwire", namespace=None):
    """A Ghostwire StatefulSet as the chart renders it: its label, Signal on the claim template
    signal-data."""
    meta = {"name": name, "labels": {"app.kubernetes.io/name": "ghostwire"}}
    if namespace:
        meta["namespace"] = namespace
    signal = {"name": "signal", "image": "kasmweb/signal:1.17.0",
              "securityContext": {**SECURE, "readOnlyRootFilesystem": False},
              "volumeMounts": [{"name": "signal-data", "mountPath": "/home/kasm-user"}]}
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {**meta, "annotations": {"ghostwire-backup/stand-in": "true"}},
        "spec": {
            "replicas": 1,
            "volumeClaimTemplates": [{"metadata": {"name": "signal-data"}}],
            "template": {"metadata": {"labels": {"app.kubernetes.io/name": "ghostwire"}}, "spec": {
                "automountServiceAccountToken": False,
                "securityContext": {"fsGroup": 0, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [signal],
            }},
        },
    }


def sidecar_variant(name="ghostwire", namespace=None):
    """A Ghostwire StatefulSet with the restore init container and the native sidecar, as
    the `sidecar` variant renders it, plus the ConfigMap both read."""
    restore = agent("restore", ["restore", "--if-empty"],
                    env=[("GWB_TARGET", "/home/kasm-user"), ("GWB_IDENTITY_FILE", "/identity/identity.txt"),
                         ("GWB_SNAPSHOT", "handoff")],
                    mounts=[{"name": "signal-data", "mountPath": "/home/kasm-user"},
                            {"name": "identity", "mountPath": "/identity", "readOnly": True}])
    sidecar = agent("ghostwire-backup", ["run"],
                    env=[("GWB_LISTEN", "0.0.0.0:9464"), ("GWB_FINAL_SNAPSHOT", "true"),
                         ("GWB_FINAL_DEADLINE", "90"), ("GWB_STAGING_DIR", "/tmp/ghostwire-backup"),
                         ("GWB_SIGNING_KEY_FILE", "/signing/signing.key")],
                    mounts=[{"name": "signal-data", "mountPath": "/home/kasm-user"}, copy.deepcopy(SIGNING_MOUNT),
                            {"name": "kube-api", "mountPath": TOKEN_PATH, "readOnly": True}])
    for c in (restore, sidecar):
        c["env"] += copy.deepcopy(LEASE_OWNER)
    sidecar["resources"]["limits"]["cpu"] = "1"
    sidecar.update({
        "restartPolicy": "Always",
        "ports": [{"name": "metrics", "containerPort": 9464}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}},
        "startupProbe": {"httpGet": {"path": "/startupz", "port": "metrics"}, "periodSeconds": 5,
                         "failureThreshold": 150},
    })
    sts = ghostwire_statefulset(name, namespace)
    spec = sts["spec"]["template"]["spec"]
    spec["containers"][0]["livenessProbe"] = {"httpGet": {"path": "/leasez", "port": 9464}}
    sts["spec"]["template"]["metadata"]["annotations"] = {
        "ghostwire-backup/signal-stop-seconds": "25", "ghostwire-backup/final-margin-seconds": "5"}
    spec.update({
        "terminationGracePeriodSeconds": 120,
        "serviceAccountName": "ghostwire-backup",
        "initContainers": [restore, sidecar],
        "volumes": [{"name": "tmp", "emptyDir": {}},
                    {"name": "identity", "secret": {"secretName": "ghostwire-backup-identity", "defaultMode": 0o440}},
                    copy.deepcopy(SIGNING_VOLUME), copy.deepcopy(TOKEN_VOLUME)],
    })
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ghostwire-backup"},
          "data": {"GWB_REPO": "s3://bucket/ghostwire", "GWB_LOG": "info", "GWB_REQUIRE_SNAPSHOT": "true",
                   "GWB_CLUSTER_ID": "eu-prod",
                   "GWB_VERIFY_KEY": "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3"}}
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ghostwire-backup"},
          "automountServiceAccountToken": False}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "ghostwire-backup-own-pod"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "resourceNames": [f"{name}-0"],
                       "verbs": ["get", "delete"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "ghostwire-backup-own-pod"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ghostwire-backup-own-pod"},
               "subjects": [{"kind": "ServiceAccount", "name": "ghostwire-backup"}]}
    return [sts, cm, sa, role, binding]


def monitoring_variant():
    """The once-per-cluster half: the PrometheusRule and the dashboard."""
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "ghostwire-backup"},
            "spec": {"groups": [{"name": "g", "rules": [
                {"alert": "GhostwireBackupStale",
                 "expr": "time() - ghostwire_backup_last_success_timestamp_seconds > 7200"
                         " and ghostwire_backup_last_success_timestamp_seconds > 0"},
                {"alert": "GhostwireBackupNeverSucceeded", "anchor": "ghostwirebackupstale",
                 "expr": "ghostwire_backup_last_success_timestamp_seconds == 0"},
                {"alert": "GhostwireBackupFailing", "expr": "increase(ghostwire_backup_failures_total[1h]) > 0"},
                {"alert": "GhostwireBackupRestoreGateFailed",
                 "expr": "ghostwire_backup_restore_gate_ok == 0 and ghostwire_backup_last_success_timestamp_seconds > 0"},
                {"alert": "GhostwireBackupJobFailed", "anchor": "ghostwirebackupfailing",
                 "expr": "kube_job_status_failed > 0"},
                {"alert": "GhostwireBackupCronJobStale", "anchor": "ghostwirebackupstale",
                 "expr": "time() - kube_cronjob_status_last_successful_time > 7200 or (kube_cronjob_created"
                         " unless on (namespace, cronjob) kube_cronjob_status_last_successful_time)"},
                {"alert": "GhostwireBackupHandoffMissing", "anchor": "ghostwirebackupstale",
                 "expr": "ghostwire_backup_handoff_missing == 1 and on (namespace, pod) (time() - kube_pod_start_time < 3600)"},
                {"alert": "GhostwireDesktopStartBlocked", "anchor": "ghostwirebackupstale",
                 "expr": 'sum by (namespace, pod) (increase(kube_pod_init_container_status_restarts_total{container="restore"}[15m])) > 0'
                         ' unless on (namespace, pod) (kube_pod_status_ready{condition="true"} == 1)'},
                {"alert": "GhostwireDesktopNotReady", "anchor": "ghostwirebackupstale",
                 "expr": "kube_statefulset_replicas > 0 unless on (namespace, statefulset) kube_statefulset_status_replicas_ready > 0"},
            ]}]}}
    for r in rule["spec"]["groups"][0]["rules"]:
        anchor = r.pop("anchor", r["alert"].lower())
        r.update({"for": "2m" if r["alert"] == "GhostwireDesktopStartBlocked" else "10m", "labels": {"severity": "critical"},
                  "annotations": {"summary": r["alert"], "runbook_url": RUNBOOK + anchor}})
    sel = '{namespace=~"$namespace", pod=~"$pod"}'
    board = {"uid": "gwb", "title": "Ghostwire backup",
             "templating": {"list": [{"name": "namespace"}, {"name": "pod"}]},
             "panels": [{"id": i, "targets": [{"expr": e}]} for i, e in enumerate([
                 f"time() - ghostwire_backup_last_success_timestamp_seconds{sel}",
                 f"increase(ghostwire_backup_failures_total{sel}[24h])",
                 f"ghostwire_backup_restore_gate_ok{sel}", f"ghostwire_backup_handoff_missing{sel}"])]}
    dash = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ghostwire-backup-dashboard", "labels": {"grafana_dashboard": "1"}},
            "data": {"ghostwire-backup.json": json.dumps(board)}}
    return [rule, dash]


def scrape_variant():
    """The per-namespace half: the metrics Service and its ServiceMonitor."""
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "ghostwire-backup-metrics", "labels": {"app": "gwb"}},
           "spec": {"selector": {"app": "ghostwire"}, "ports": [{"name": "metrics", "port": 9464, "targetPort": 9464}]}}
    sm = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
          "metadata": {"name": "ghostwire-backup"},
          "spec": {"selector": {"matchLabels": {"app": "gwb"}}, "endpoints": [{"port": "metrics"}]}}
    return [svc, sm]


def containers_of(docs):
    return {c["name"]: c for c in docs[0]["spec"]["template"]["spec"]["initContainers"]}


def set_env(container, name, value):
    container["env"] = [e for e in container["env"] if e["name"] != name]
    if value is not None:
        container["env"].append({"name": name, "value": value})


class CheckerTest(unittest.TestCase):
    def check(self, variant, docs):
        checker = Checker(Interface(REFERENCE), sidecar_patch=None, docs_anchors=ANCHORS)
        checker.check_all({variant: docs})
        return checker.errors

    def assertReports(self, errors, *fragments):
        for fragment in fragments:
            self.assertTrue(any(fragment in e for e in errors),
                            f"no error mentions {fragment!r}; got {errors}")

    def test_the_valid_manifests_pass(self):
        self.assertEqual(self.check("sidecar", sidecar_variant()), [])
        self.assertEqual(self.check("monitoring-rules", monitoring_variant()), [])
        self.assertEqual(self.check("monitoring", scrape_variant()), [])

    def test_a_sidecar_missing_its_env_is_reported(self):
        docs = sidecar_variant()
        sidecar = containers_of(docs)["ghostwire-backup"]
        set_env(sidecar, "GWB_FINAL_DEADLINE", None)
        set_env(sidecar, "GWB_STAGING_DIR", None)
        self.assertReports(self.check("sidecar", docs),
                           "sidecar GWB_FINAL_DEADLINE must be an integer number of seconds",
                           "container ghostwire-backup: GWB_STAGING_DIR must be /tmp/ghostwire-backup")

    def test_an_unknown_gwb_variable_is_reported_in_a_configmap_and_in_env(self):
        docs = sidecar_variant()
        docs[1]["data"]["GWB_REPOSITORY"] = "s3://bucket/x"
        set_env(containers_of(docs)["restore"], "GWB_SNAPSHOTS", "final")
        self.assertReports(self.check("sidecar", docs),
                           "ConfigMap/ghostwire-backup: unknown key GWB_REPOSITORY",
                           "container restore: unknown env var GWB_SNAPSHOTS")

    def test_a_variable_the_command_does_not_read_is_reported(self):
        docs = sidecar_variant()
        set_env(containers_of(docs)["ghostwire-backup"], "GWB_TARGET", "/home/kasm-user")
        self.assertReports(self.check("sidecar", docs),
                           "container ghostwire-backup: env GWB_TARGET is set but `run` does not read it")

    def test_unknown_commands_and_flags_are_reported(self):
        docs = sidecar_variant()
        containers_of(docs)["restore"]["args"] = ["restore", "--if-empty", "--snapshots=final"]
        self.assertReports(self.check("sidecar", docs), "container restore: `restore` has no flag --snapshots")
        containers_of(docs)["restore"]["args"] = ["restores"]
        self.assertReports(self.check("sidecar", docs),
                           "container restore: first arg must be a command of ['backup', 'prune', 'restore', 'run']")

    def test_the_identity_stays_with_the_commands_that_decrypt(self):
        docs = sidecar_variant()
        containers_of(docs)["ghostwire-backup"]["volumeMounts"].append(
            {"name": "identity", "mountPath": "/identity", "readOnly": True})
        containers_of(docs)["restore"]["volumeMounts"] = [
            m for m in containers_of(docs)["restore"]["volumeMounts"] if m["name"] != "identity"]
        self.assertReports(self.check("sidecar", docs),
                           "container ghostwire-backup: `run` must not mount the age identity Secret",
                           "container restore: `restore` needs the identity Secret mounted")

    def test_the_signing_key_given_to_the_restore_init_container_is_reported(self):
        # Mounted as a file, the same volume the sidecar uses.
        docs = sidecar_variant()
        restore = containers_of(docs)["restore"]
        restore["volumeMounts"].append(copy.deepcopy(SIGNING_MOUNT))
        set_env(restore, "GWB_SIGNING_KEY_FILE", "/signing/signing.key")
        self.assertReports(self.check("sidecar", docs),
                           "container restore: `restore` must not mount the signing key Secret",
                           "container restore: env GWB_SIGNING_KEY_FILE is set but `restore` does not read it")
        # Through a projected volume of its own.
        docs = sidecar_variant()
        docs[0]["spec"]["template"]["spec"]["volumes"].append(
            {"name": "keys", "projected": {"sources": [{"secret": {"name": "ghostwire-backup-signing"}}]}})
        containers_of(docs)["restore"]["volumeMounts"].append({"name": "keys", "mountPath": "/keys", "readOnly": True})
        self.assertReports(self.check("sidecar", docs), "container restore: `restore` must not mount the signing key Secret")
        # As an environment variable.
        docs = sidecar_variant()
        containers_of(docs)["restore"]["env"].append({"name": "SIGNING_KEY", "valueFrom": {
            "secretKeyRef": {"name": "ghostwire-backup-signing", "key": "signing.key"}}})
        self.assertReports(self.check("sidecar", docs),
                           "container restore: env SIGNING_KEY takes a key out of Secret ghostwire-backup-signing")

    def test_the_backup_side_needs_the_signing_key_read_only_and_private(self):
        docs = sidecar_variant()
        sidecar = containers_of(docs)["ghostwire-backup"]
        sidecar["volumeMounts"] = [m for m in sidecar["volumeMounts"] if m["name"] != "signing"]
        self.assertReports(self.check("sidecar", docs),
                           "container ghostwire-backup: `run` needs the signing key Secret mounted")
        docs = sidecar_variant()
        sidecar = containers_of(docs)["ghostwire-backup"]
        set_env(sidecar, "GWB_SIGNING_KEY_FILE", "/etc/signing.key")
        next(m for m in sidecar["volumeMounts"] if m["name"] == "signing")["readOnly"] = False
        del docs[0]["spec"]["template"]["spec"]["volumes"][2]["secret"]["defaultMode"]
        self.assertReports(self.check("sidecar", docs),
                           "GWB_SIGNING_KEY_FILE='/etc/signing.key' is not inside the signing key mount",
                           "container ghostwire-backup: signing key mount must be readOnly",
                           "container ghostwire-backup: the signing key Secret's defaultMode is 0o644; at most 0440")

    def test_a_pod_that_does_not_sign_must_not_hold_the_signing_key(self):
        # A verify Job: it reads snapshots, so it gets the verify key, never the signing key,
        # even as an unmounted volume.
        verify = agent("verify", ["restore", "--snapshot", "latest"],
                       env=[("GWB_IDENTITY_FILE", "/identity/identity.txt")],
                       mounts=[{"name": "identity", "mountPath": "/identity", "readOnly": True}])
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "verify"},
               "spec": {"template": {"spec": {
                   "automountServiceAccountToken": False, "containers": [verify],
                   "volumes": [{"name": "tmp", "emptyDir": {}},
                               {"name": "identity", "secret": {"secretName": "ghostwire-backup-identity",
                                                               "defaultMode": 0o440}}]}}}}
        cm = sidecar_variant()[1]
        self.assertEqual(self.check("verify-job", [job, cm]), [])
        job["spec"]["template"]["spec"]["volumes"].append(copy.deepcopy(SIGNING_VOLUME))
        self.assertReports(self.check("verify-job", [job, cm]),
                           "Job/verify: volume signing holds the signing key, but no container of this pod "
                           "signs (only backup, run do)")

    def test_every_container_that_reads_snapshots_needs_the_verify_key(self):
        docs = sidecar_variant()
        del docs[1]["data"]["GWB_VERIFY_KEY"]
        errors = self.check("sidecar", docs)
        self.assertReports(errors, "container restore: `restore` reads snapshots but gets no GWB_VERIFY_KEY")
        # The sidecar only writes (it checks its own chain with its signing key).
        self.assertFalse(any("ghostwire-backup: `run` reads snapshots" in e for e in errors), errors)
        # Given on the container itself, as a flag or as a literal, it counts.
        containers_of(docs)["restore"]["args"].append("--verify-key=RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3")
        self.assertEqual(self.check("sidecar", docs), [])

    def test_accepting_unsigned_snapshots_is_never_deployed(self):
        docs = sidecar_variant()
        docs[1]["data"]["GWB_ALLOW_UNSIGNED"] = "true"
        self.assertReports(self.check("sidecar", docs),
                           "container restore: GWB_ALLOW_UNSIGNED is set: it accepts unsigned snapshots")

    def test_a_rendered_secret_and_a_weak_container_are_reported(self):
        docs = sidecar_variant()
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "data": {"k": "dg=="}})
        containers_of(docs)["restore"]["securityContext"]["readOnlyRootFilesystem"] = False
        self.assertReports(self.check("sidecar", docs),
                           "renders Secret/s3: Secrets are created by hand, never rendered (and this one has inline data)",
                           "container restore: readOnlyRootFilesystem is not true")

    def test_an_alert_on_a_metric_the_binary_does_not_export_is_reported(self):
        docs = monitoring_variant()
        docs[0]["spec"]["groups"][0]["rules"].append(
            {"alert": "GhostwireBackupSlow", "expr": "ghostwire_backup_duration_seconds > 600",
             "labels": {"severity": "warning"}, "annotations": {"summary": "slow"}})
        self.assertReports(self.check("monitoring-rules", docs),
                           "alert GhostwireBackupSlow: the agent exports no metric ghostwire_backup_duration_seconds")

    def test_a_named_target_port_is_reported(self):
        docs = scrape_variant()
        docs[0]["spec"]["ports"][0]["targetPort"] = "metrics"
        self.assertReports(self.check("monitoring", docs),
                           "Service port metrics needs the numeric targetPort 9464, got 'metrics'")

    def test_alerts_installed_next_to_a_release_are_reported(self):
        # Blue's and green's namespaces would each evaluate every rule over both pods.
        self.assertReports(self.check("monitoring", scrape_variant() + monitoring_variant()),
                           "renders ['PrometheusRule/ghostwire-backup', 'ConfigMap/ghostwire-backup-dashboard'] next to "
                           "['Service/ghostwire-backup-metrics', 'ServiceMonitor/ghostwire-backup']")
        self.assertReports(self.check("sidecar", sidecar_variant() + monitoring_variant()[:1]),
                           "renders ['PrometheusRule/ghostwire-backup'] next to ['StatefulSet/ghostwire']")

    def test_handoff_missing_fires_once_per_start_and_a_blocked_start_pages_within_minutes(self):
        docs = monitoring_variant()
        rules = {r["alert"]: r for r in docs[0]["spec"]["groups"][0]["rules"]}
        rules["GhostwireBackupHandoffMissing"]["expr"] = "ghostwire_backup_handoff_missing == 1"
        rules["GhostwireDesktopStartBlocked"]["for"] = "30m"
        del rules["GhostwireDesktopNotReady"]["expr"]
        self.assertReports(self.check("monitoring-rules", docs),
                           "alert GhostwireBackupHandoffMissing: expr 'ghostwire_backup_handoff_missing == 1' does not "
                           "match and\\s+on",
                           "alert GhostwireDesktopStartBlocked waits 30m: a desktop that cannot start must page within minutes",
                           "missing alert GhostwireDesktopNotReady")

    def test_the_dashboard_shows_every_exported_metric_and_nothing_else(self):
        docs = monitoring_variant()
        board = json.loads(docs[1]["data"]["ghostwire-backup.json"])
        board["panels"][2]["targets"][0]["expr"] = 'ghostwire_backup_restore_gate{namespace=~"$namespace", pod=~"$pod"}'
        docs[1]["data"]["ghostwire-backup.json"] = json.dumps(board)
        self.assertReports(self.check("monitoring-rules", docs),
                           "dashboard has no panel for ghostwire_backup_restore_gate_ok",
                           "dashboard queries ghostwire_backup_restore_gate, which the agent does not export")


    def test_a_ghostwire_statefulset_without_the_agent_is_reported_whatever_its_name(self):
        # The design document's green release: its own name and namespace. A patch that
        # targeted the name `ghostwire` would leave it as the chart rendered it.
        docs = sidecar_variant() + [ghostwire_statefulset("ghostwire-green", "ghostwire-green")]
        self.assertReports(self.check("sidecar", docs),
                           "StatefulSet ghostwire-green/ghostwire-green lacks the agent: initContainers must "
                           "hold restore before the ghostwire-backup sidecar, got []")
        self.assertReports(self.check("example-green", [ghostwire_statefulset("ghostwire-green", "ghostwire-green")]),
                           "StatefulSet ghostwire-green/ghostwire-green lacks the agent")
        self.assertEqual(self.check("example-green", sidecar_variant("ghostwire-green", "ghostwire-green")), [])

    def test_signal_starts_only_with_the_lease_and_green_restores_the_handoff(self):
        docs = sidecar_variant()
        spec = docs[0]["spec"]["template"]["spec"]
        del containers_of(docs)["ghostwire-backup"]["startupProbe"]
        del spec["containers"][0]["livenessProbe"]
        set_env(containers_of(docs)["restore"], "GWB_SNAPSHOT", "final")
        docs[1]["data"]["GWB_REQUIRE_SNAPSHOT"] = "false"
        self.assertReports(self.check("sidecar", docs),
                           "sidecar startupProbe must be httpGet /startupz on 9464, got {}",
                           "the Signal container signal needs livenessProbe httpGet /leasez on 9464",
                           "restore must restore GWB_SNAPSHOT=handoff",
                           "restore needs GWB_REQUIRE_SNAPSHOT=true")
        docs = sidecar_variant()
        containers_of(docs)["ghostwire-backup"]["startupProbe"]["failureThreshold"] = 10
        self.assertReports(self.check("sidecar", docs), "sidecar startupProbe must wait at least 600 s")

    def test_a_render_meant_to_show_the_injection_must_hold_a_ghostwire_statefulset(self):
        docs = sidecar_variant()
        docs[0]["metadata"]["name"] = "ghostwire"
        self.assertReports(self.check("example-green", docs),
                           "expected Ghostwire StatefulSet ghostwire-green in namespace ghostwire-green")
        self.assertReports(self.check("flux-postrender", docs[1:]), "renders no Ghostwire StatefulSet")

    def test_the_lease_owner_is_cluster_namespace_and_pod_and_the_sidecar_needs_a_cpu_limit(self):
        docs = sidecar_variant()
        restore = containers_of(docs)["restore"]
        set_env(restore, "GWB_POD_NAMESPACE", "ghostwire")
        restore["env"].append({"name": "GWB_LEASE_OWNER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        del docs[1]["data"]["GWB_CLUSTER_ID"]
        del containers_of(docs)["ghostwire-backup"]["resources"]["limits"]["cpu"]
        self.assertReports(self.check("sidecar", docs),
                           "restore: GWB_POD_NAMESPACE must come from fieldRef metadata.namespace",
                           "restore: GWB_LEASE_OWNER is set: it would replace the cluster/namespace/pod owner",
                           "ghostwire-backup: GWB_CLUSTER_ID is empty",
                           "sidecar needs a CPU limit")

    def test_the_agent_follows_the_charts_claim_template_onto_signals_volume(self):
        # A chart whose claim template is called `profile`: the agent mounts `profile`.
        docs = sidecar_variant("ghostwire", "ghostwire")
        sts = docs[0]
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] = "profile"
        for _, c in [("main", c) for c in sts["spec"]["template"]["spec"]["containers"]] + \
                [("init", c) for c in sts["spec"]["template"]["spec"]["initContainers"]]:
            for m in c["volumeMounts"]:
                if m["name"] == "signal-data":
                    m["name"] = "profile"
        self.assertEqual(self.check("example-claim-name", docs), [])
        # The agent left on the old name mounts nothing Signal uses.
        next(m for m in containers_of(docs)["restore"]["volumeMounts"]
             if m["mountPath"] == "/home/kasm-user")["name"] = "signal-data"
        self.assertReports(self.check("example-claim-name", docs),
                           "restore mounts volume signal-data at /home/kasm-user, but Signal's container mounts ['profile']")
        # The render meant to show the chart's own name checks for it.
        self.assertReports(self.check("example-claim-name", sidecar_variant("ghostwire", "ghostwire")),
                           "mounts signal-data at /home/kasm-user, not the chart's claim template profile")

    def test_a_chart_init_container_writing_the_home_before_restore_is_reported(self):
        docs = sidecar_variant()
        spec = docs[0]["spec"]["template"]["spec"]
        spec["initContainers"].insert(0, {"name": "setup-tls", "image": "busybox", "securityContext": copy.deepcopy(SECURE),
                                          "volumeMounts": [{"name": "signal-data", "mountPath": "/home/kasm-user"}]})
        self.assertReports(self.check("sidecar", docs),
                           "init container setup-tls touches /home/kasm-user before `restore`")
        spec["initContainers"].append(spec["initContainers"].pop(0))
        self.assertEqual(self.check("sidecar", docs), [])

    def test_the_lease_probe_goes_to_signal_not_to_the_first_container(self):
        docs = sidecar_variant()
        spec = docs[0]["spec"]["template"]["spec"]
        proxy = {"name": "proxy", "image": "nginx", "securityContext": copy.deepcopy(SECURE),
                 "livenessProbe": {"httpGet": {"path": "/leasez", "port": 9464}}}
        del spec["containers"][0]["livenessProbe"]
        spec["containers"].insert(0, proxy)
        self.assertReports(self.check("sidecar", docs),
                           "the Signal container signal needs livenessProbe httpGet /leasez on 9464")

    def test_only_the_sidecar_gets_an_api_token_and_only_for_its_own_pod(self):
        docs = sidecar_variant()
        spec = docs[0]["spec"]["template"]["spec"]
        spec["containers"][0]["volumeMounts"].append({"name": "kube-api", "mountPath": TOKEN_PATH, "readOnly": True})
        containers_of(docs)["restore"]["volumeMounts"].append({"name": "kube-api", "mountPath": "/token"})
        docs[3]["rules"][0]["verbs"].append("list")
        docs[3]["rules"][0]["resourceNames"] = ["ghostwire-green-0"]
        docs[4]["subjects"].append({"kind": "ServiceAccount", "name": "default"})
        self.assertReports(self.check("sidecar", docs),
                           "container signal: mounts a Kubernetes API token; only the sidecar (`run`) may",
                           "container restore: mounts a Kubernetes API token",
                           "Role ghostwire-backup-own-pod must allow exactly get and delete on pods/ghostwire-0",
                           "RoleBinding ghostwire-backup-own-pod must bind Role ghostwire-backup-own-pod to "
                           "ServiceAccount ghostwire-backup alone")
        docs = sidecar_variant()
        sidecar = containers_of(docs)["ghostwire-backup"]
        sidecar["volumeMounts"] = [m for m in sidecar["volumeMounts"] if m["name"] != "kube-api"]
        self.assertReports(self.check("sidecar", docs),
                           "the sidecar needs a projected serviceAccountToken volume mounted read-only at " + TOKEN_PATH)

    def test_the_final_deadline_follows_the_grace_period(self):
        docs = sidecar_variant()
        docs[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 180
        self.assertReports(self.check("sidecar", docs),
                           "terminationGracePeriodSeconds 180 != ghostwire-backup/signal-stop-seconds 25 + "
                           "GWB_FINAL_DEADLINE 90 + ghostwire-backup/final-margin-seconds 5: set GWB_FINAL_DEADLINE to 150")
        del docs[0]["spec"]["template"]["metadata"]["annotations"]["ghostwire-backup/signal-stop-seconds"]
        self.assertReports(self.check("sidecar", docs), "the pod needs integer annotations")

    def test_the_backup_cronjob_beside_the_sidecar_is_reported(self):
        docs = sidecar_variant()
        cronjob = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "ghostwire-backup"},
                   "spec": {"jobTemplate": {"spec": {"template": {"spec": {
                       "automountServiceAccountToken": False, "containers": []}}}}}}
        self.assertReports(self.check("sidecar", docs + [cronjob]),
                           "renders both the backup CronJob and the sidecar: use one of them")

    def test_a_cronjob_tied_to_one_pod_name_or_off_the_desktop_pool_is_reported(self):
        backup = agent("backup", ["backup"], env=[("GWB_STAGING_DIR", "/tmp/ghostwire-backup"),
                                                  ("GWB_SIGNING_KEY_FILE", "/signing/signing.key")],
                       mounts=[{"name": "home", "mountPath": "/home/kasm-user"}, copy.deepcopy(SIGNING_MOUNT)])
        backup["resources"]["limits"]["cpu"] = "1"
        spec = {
            "automountServiceAccountToken": False,
            "securityContext": {"fsGroup": 0},
            "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app.kubernetes.io/name": "ghostwire"}},
                 "topologyKey": "kubernetes.io/hostname"}]}},
            "tolerations": [{"key": "workload", "operator": "Equal", "value": "desktop", "effect": "NoSchedule"}],
            "containers": [backup],
            "volumes": [{"name": "tmp", "emptyDir": {}},
                        {"name": "home", "persistentVolumeClaim": {"claimName": "signal-data-ghostwire-green-0"}},
                        copy.deepcopy(SIGNING_VOLUME)],
        }
        cronjob = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "ghostwire-backup"},
                   "spec": {"concurrencyPolicy": "Forbid",
                            "jobTemplate": {"spec": {"template": {"spec": spec}}}}}
        cm = sidecar_variant()[1]
        self.assertEqual(self.check("example-cronjob", [cronjob, cm]), [])
        spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"] = \
            {"matchLabels": {"statefulset.kubernetes.io/pod-name": "ghostwire-0"}}
        del spec["tolerations"]
        spec["volumes"][1]["persistentVolumeClaim"]["claimName"] = "signal-data-ghostwire-0"
        self.assertReports(self.check("example-cronjob", [cronjob, cm]),
                           "needs required podAffinity to the Ghostwire pod's label app.kubernetes.io/name=ghostwire",
                           "podAffinity must not name one pod",
                           "needs tolerations for the desktop pool",
                           "the documented claimName patch did not apply (got signal-data-ghostwire-0)")

    def test_alerts_need_for_and_a_runbook_that_exists(self):
        docs = monitoring_variant()
        rules = docs[0]["spec"]["groups"][0]["rules"]
        del rules[2]["for"]
        rules[3]["annotations"]["runbook_url"] = RUNBOOK + "no-such-section"
        del rules[0]["annotations"]["runbook_url"]
        self.assertReports(self.check("monitoring-rules", docs),
                           "alert GhostwireBackupFailing needs a `for:`",
                           "alert GhostwireBackupRestoreGateFailed: runbook_url anchor #no-such-section is not a heading",
                           "alert GhostwireBackupStale needs a runbook_url into docs/kubernetes.md#<anchor>")

    def test_gauge_alerts_wait_for_a_first_backup(self):
        docs = monitoring_variant()
        rules = docs[0]["spec"]["groups"][0]["rules"]
        rules[3]["expr"] = "ghostwire_backup_restore_gate_ok == 0"
        self.assertReports(self.check("monitoring-rules", docs),
                           "alert GhostwireBackupRestoreGateFailed: expr 'ghostwire_backup_restore_gate_ok == 0' "
                           "does not match ghostwire_backup_last_success_timestamp_seconds")

    def test_dashboard_queries_follow_the_namespace_and_pod_variables(self):
        docs = monitoring_variant()
        board = json.loads(docs[1]["data"]["ghostwire-backup.json"])
        board["templating"]["list"] = [{"name": "namespace"}]
        board["panels"][0]["targets"][0]["expr"] = "time() - ghostwire_backup_last_success_timestamp_seconds"
        docs[1]["data"]["ghostwire-backup.json"] = json.dumps(board)
        self.assertReports(self.check("monitoring-rules", docs),
                           "dashboard needs a `pod` template variable",
                           "dashboard panel 0: 'time() - ghostwire_backup_last_success_timestamp_seconds' ignores")

    def test_only_prune_runs_as_the_delete_capable_service_account(self):
        docs = sidecar_variant()
        docs[0]["spec"]["template"]["spec"]["serviceAccountName"] = "ghostwire-backup-prune"
        self.assertReports(self.check("sidecar", docs),
                           "runs ['restore', 'run'] as ghostwire-backup-prune, the only delete-capable ServiceAccount")


def agent_policies(s3_egress):
    """The agent-only pods' NetworkPolicies and the Ghostwire pod's, with the given S3 egress."""
    selector = {"matchLabels": {"app.kubernetes.io/name": "ghostwire-backup"}}
    dns = [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
            "ports": [{"protocol": "UDP", "port": 53}]}]

    def policy(name, spec):
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec}
    return [policy("ghostwire-backup-jobs", {"podSelector": selector, "policyTypes": ["Ingress", "Egress"],
                                             "ingress": [], "egress": dns}),
            policy("ghostwire-backup-jobs-s3", {"podSelector": selector, "policyTypes": ["Egress"], "egress": s3_egress}),
            policy("ghostwire-backup-metrics", {
                "podSelector": {"matchLabels": {"ghostwire-backup/sidecar": "true"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                             "ports": [{"protocol": "TCP", "port": 9464}]}]})]


PUBLIC_HTTPS = [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}}],
                 "ports": [{"protocol": "TCP", "port": 443}]}]


def prestage_variant():
    """Green's PVC and the Job that pre-stages it, with the read-only ServiceAccount (IRSA)."""
    prestage = agent("prestage", ["restore", "--prestage", "--snapshot", "latest"],
                     env=[("GWB_TARGET", "/home/kasm-user"), ("GWB_IDENTITY_FILE", "/identity/identity.txt")],
                     mounts=[{"name": "home", "mountPath": "/home/kasm-user"},
                             {"name": "identity", "mountPath": "/identity", "readOnly": True}])
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "ghostwire-backup-prestage"},
           "spec": {"template": {"spec": {
               "serviceAccountName": "ghostwire-backup-readonly", "automountServiceAccountToken": False,
               "securityContext": {"fsGroup": 0, "seccompProfile": {"type": "RuntimeDefault"}},
               "containers": [prestage],
               "volumes": [{"name": "tmp", "emptyDir": {}},
                           {"name": "home", "persistentVolumeClaim": {"claimName": "signal-data-ghostwire-green-0"}},
                           {"name": "identity", "secret": {"secretName": "ghostwire-backup-identity",
                                                           "defaultMode": 0o440}}]}}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "signal-data-ghostwire-green-0"},
           "spec": {"accessModes": ["ReadWriteOnce"]}}
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": "ghostwire-backup-readonly",
        "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/ro"}}}
    return [job, pvc, sa, sidecar_variant()[1]]


class PrestageTest(unittest.TestCase):
    def check(self, docs):
        checker = Checker(Interface(REFERENCE), sidecar_patch=None, docs_anchors=ANCHORS)
        checker.check_all({"prestage": docs})
        return checker.errors

    def test_the_prestage_job_passes_the_restricted_profile_and_fills_its_pvc(self):
        self.assertEqual(self.check(prestage_variant()), [])

    def test_a_job_the_restricted_profile_rejects_is_reported(self):
        docs = prestage_variant()
        spec = docs[0]["spec"]["template"]["spec"]
        del spec["securityContext"]["seccompProfile"]
        del spec["containers"][0]["securityContext"]["seccompProfile"]
        spec["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
        spec["volumes"].append({"name": "host", "hostPath": {"path": "/var"}})
        errors = self.check(docs)
        for fragment in ("container prestage: restricted profile needs seccompProfile RuntimeDefault",
                         "restricted profile needs capabilities drop [ALL], adding at most NET_BIND_SERVICE",
                         "volume host is ['hostPath'], not allowed by the restricted profile"):
            self.assertTrue(any(fragment in e for e in errors), f"{fragment!r} not in {errors}")

    def test_a_job_filling_another_claim_or_writing_with_the_backup_role_is_reported(self):
        docs = prestage_variant()
        docs[0]["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"] = "signal-data-ghostwire-0"
        docs[0]["spec"]["template"]["spec"]["serviceAccountName"] = "ghostwire-backup"
        errors = self.check(docs)
        for fragment in ("the Job fills signal-data-ghostwire-0 at /home/kasm-user, not the PVC signal-data-ghostwire-green-0",
                         "the Job must run as the read-only ServiceAccount ghostwire-backup-readonly"):
            self.assertTrue(any(fragment in e for e in errors), f"{fragment!r} not in {errors}")


class NetworkPolicyTest(unittest.TestCase):
    def check(self, endpoint, s3_egress):
        cm = sidecar_variant()[1]
        if endpoint:
            cm["data"]["GWB_S3_ENDPOINT"] = endpoint
        checker = Checker(Interface(REFERENCE), sidecar_patch=None, docs_anchors=ANCHORS)
        checker.check_all({"policies": [cm, *agent_policies(s3_egress)]})
        return checker.errors

    def test_aws_s3_passes_the_public_https_rule(self):
        self.assertEqual(self.check(None, PUBLIC_HTTPS), [])

    def test_s3_in_the_cluster_needs_its_namespace_and_pod_port(self):
        endpoint = "http://minio.minio.svc.cluster.local:9000"
        errors = self.check(endpoint, PUBLIC_HTTPS)
        self.assertTrue(any("do not admit the S3 endpoint http://minio.minio.svc.cluster.local:9000: no egress rule "
                            "to pods in namespace minio (a namespaceSelector) on port 9000" in e for e in errors), errors)
        minio = [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}],
                  "ports": [{"protocol": "TCP", "port": 9000}]}]
        self.assertEqual(self.check(endpoint, minio), [])

    def test_an_endpoint_address_must_be_inside_an_ip_block_and_not_excepted(self):
        # An interface VPC endpoint's private address: the public rule excepts it.
        errors = self.check("https://10.0.64.12", PUBLIC_HTTPS)
        self.assertTrue(any("no egress rule to 10.0.64.12 (an ipBlock) on port 443" in e for e in errors), errors)
        subnet = [{"to": [{"ipBlock": {"cidr": "10.0.64.0/20"}}], "ports": [{"protocol": "TCP", "port": 443}]}]
        self.assertEqual(self.check("https://10.0.64.12", subnet), [])


class MarkdownAnchorsTest(unittest.TestCase):
    def test_headings_become_github_anchors_and_code_blocks_do_not(self):
        text = "# Running it\n## Blue/green: moving Signal\n```sh\n# not a heading\n```\n### GhostwireBackupStale\n"
        self.assertEqual(markdown_anchors(text),
                         {"running-it", "bluegreen-moving-signal", "ghostwirebackupstale"})


class InterfaceTest(unittest.TestCase):
    def test_a_command_reads_its_own_and_the_global_variables(self):
        iface = Interface(REFERENCE)
        self.assertEqual(iface.env_of("restore"),
                         {"GWB_REPO", "GWB_S3_ENDPOINT", "GWB_LOG", "GWB_SNAPSHOT", "GWB_IDENTITY_FILE", "GWB_TARGET", "GWB_IF_EMPTY", "GWB_REQUIRE_SNAPSHOT",
                          "GWB_VERIFY_KEY", "GWB_ALLOW_UNSIGNED", "GWB_CLUSTER_ID", "GWB_POD_NAMESPACE", "GWB_POD_NAME"})
        self.assertEqual(iface.commands_with("--signing-key"), {"backup", "run"})
        self.assertEqual(iface.default("run", "--listen"), "0.0.0.0:9464")
        self.assertIn("ghostwire_backup_failures_total", iface.metric_series)


if __name__ == "__main__":
    unittest.main()
