#!/usr/bin/env python3
"""Runs the image the way deploy/ runs it, with podman, and checks what a user relies on.

Every container is started from the *rendered* manifests (`kubectl kustomize deploy/...`):
user and group, read-only root filesystem, dropped capabilities, no privilege escalation,
memory limit, command, args, env (ConfigMap + literal values + Secret keys) and exactly the
volumes it mounts. Kubernetes itself is not here, so this file plays the kubelet's part, and
says where: volumes are made the way the kubelet makes them (a fresh PVC is root's, with
lost+found, then fsGroup 0 makes it group-writable; an emptyDir is 0777; a Secret is files
with defaultMode), and containers start and stop in the kubelet's order. Two deviations,
both because podman has no pod network here: every container uses the host's network (to
reach moto on 127.0.0.1), so the sidecar's port comes from GWB_LISTEN set per pod; and the
Signal container is a stand-in (node + Signal's own SQLite driver, tests/node) with the
StatefulSet's user and mounts.

    pods.py hardened                # backup while Signal writes -> restore into a fresh volume
    pods.py lifecycle --size 256M   # blue/green switch; prints the switch downtime

Run through tests/container/run.sh, which builds the Signal stand-in image first.
"""

import argparse
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("GWB_IMAGE", "localhost/ghostwire-backup:dev")
SIGNAL_IMAGE = os.environ.get("GWB_SIGNAL_IMAGE", "localhost/ghostwire-signal-stand-in:test")
# The image name the manifests use, replaced by the image under test.
MANIFEST_IMAGE = "ghcr.io/ghostwire/ghostwire-backup:0.1.0"
HOME = "/home/kasm-user"
DB = f"{HOME}/.config/Signal/sql/db.sqlite"
MiB = 1 << 20



class Failure(Exception):
    pass


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def check(condition, message):
    if not condition:
        raise Failure(message)


def podman(*args, env=None, check_status=True):
    result = subprocess.run(["podman", *args], capture_output=True, text=True, env=env)
    if check_status and result.returncode != 0:
        raise Failure(f"podman {' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return result


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def k8s_quantity(text):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


# --------------------------------------------------------------------------- manifests --


def render(variant):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "deploy" / variant)],
                         check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs, kind, name=None):
    for doc in docs:
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise Failure(f"the render has no {kind} {name or ''}")


def home_volume(spec):
    """The volume Signal's container mounts at the home: the chart's claim template
    (`signal-data`), whatever the render calls it."""
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] == HOME:
                return mount["name"]
    raise Failure("no container of the pod mounts the home")


def pod_spec(workload):
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


# --------------------------------------------------------------------------- the cluster --


class S3Server:
    """moto's S3 server on 127.0.0.1 (as tests/common starts it)."""

    def __init__(self):
        moto = os.environ.get("GWB_TEST_MOTO_SERVER", str(ROOT / ".venv-s3/bin/moto_server"))
        self.port = free_port()
        self.process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while http_status(self.endpoint) is None:
            check(time.monotonic() < deadline, "moto did not start")
            time.sleep(0.1)

    def create_bucket(self, bucket):
        request = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT")
        with urllib.request.urlopen(request) as response:
            check(response.status == 200, f"bucket creation failed: {response.status}")

    def stop(self):
        self.process.kill()
        self.process.wait()


class Cluster:
    """What the API server and the kubelet would provide: the ConfigMap (with the overlay's
    values), the Secrets, volumes, and a clean slate afterwards."""

    def __init__(self, configmap):
        self.run_id = f"gwbtest-{os.getpid()}"
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{self.run_id}-", dir="/var/tmp"))
        self.serial = itertools.count()
        self.containers = []
        self.s3 = S3Server()
        try:
            self.setup(configmap)
        except BaseException:
            self.cleanup()
            raise

    def setup(self, configmap):
        self.s3.create_bucket("ghostwire-backups")
        self.secrets = {
            "ghostwire-backup-s3": {"AWS_ACCESS_KEY_ID": "test-access-key",
                                    "AWS_SECRET_ACCESS_KEY": "test-secret-key"},
        }
        # The overlay's ConfigMap patch (docs/kubernetes.md, Install), pointed at moto.
        self.configmaps = {"ghostwire-backup": {
            **configmap["data"],
            "GWB_REPO": "s3://ghostwire-backups/ghostwire",
            "GWB_S3_ENDPOINT": self.s3.endpoint,
            "GWB_S3_PATH_STYLE": "true",
            "GWB_CLUSTER_ID": "container-tests",
        }}
        identity, signing_key, public = self.keygen()
        # As docs/kubernetes.md sets them up: the identity for the restore side, the signing
        # key for the backup side, the public halves in the ConfigMap for everyone.
        self.secrets["ghostwire-backup-identity"] = {"identity.txt": identity}
        self.secrets["ghostwire-backup-signing"] = {"signing.key": signing_key}
        self.configmaps["ghostwire-backup"].update(public)

    def keygen(self):
        """Both key pairs, made by the image itself (an operator's `keygen --out identity.txt
        --signing-out signing.key`): the two secret files, and the public halves from its
        stdout, exactly the two lines GWB_RECIPIENTS=age1… and GWB_VERIFY_KEY=RW…."""
        out = self.scratch / "keygen"
        out.mkdir(mode=0o777)
        out.chmod(0o777)
        result = podman("run", "--rm", "--network", "none", "--user", "1000:0", "--read-only",
                        "--cap-drop", "ALL", "--volume", f"{out}:/out", IMAGE,
                        "keygen", "--out", "/out/identity.txt", "--signing-out", "/out/signing.key")
        lines = result.stdout.splitlines()
        public = dict(line.split("=", 1) for line in lines if "=" in line)
        check(len(lines) == 2 and sorted(public) == ["GWB_RECIPIENTS", "GWB_VERIFY_KEY"]
              and public["GWB_RECIPIENTS"].startswith("age1") and public["GWB_VERIFY_KEY"].startswith("RW"),
              f"keygen printed {result.stdout!r}, not GWB_RECIPIENTS=age1… and GWB_VERIFY_KEY=RW…")
        identity = (out / "identity.txt").read_text()
        signing_key = (out / "signing.key").read_text()
        shutil.rmtree(out)
        return identity, signing_key, public

    # Volumes are host directories, bind-mounted: podman would chown a fresh named volume
    # to the container's user on first use, which the kubelet never does.

    def pvc(self, claim):
        """A fresh PersistentVolume as the kubelet hands it to a pod with fsGroup 0: a new
        filesystem (root's, with lost+found), made group-writable for gid 0 (on a fresh
        volume the root mismatches, so OnRootMismatch changes everything, recursively)."""
        root = self.scratch / f"pv-{claim}"
        root.mkdir()
        lost_found = root / "lost+found"
        lost_found.mkdir()
        for directory in (root, lost_found):
            os.chown(directory, 0, 0)
        # The kubelet's fsGroup change of a fresh volume is recursive: group 0 gets rwx and
        # setgid on directories (mkfs made lost+found 0700).
        root.chmod(0o2775)
        lost_found.chmod(0o2770)
        return str(root)

    def empty_dir(self, name):
        """An emptyDir: world-writable, as the kubelet makes it."""
        directory = self.scratch / f"empty-dir-{name}-{next(self.serial)}"
        directory.mkdir()
        directory.chmod(0o1777)
        return str(directory)

    def secret_volume(self, secret, mode):
        """A Secret volume: one file per key with defaultMode, group fsGroup (0)."""
        directory = self.scratch / f"secret-{secret}-{next(self.serial)}"
        directory.mkdir()
        for key, value in self.secrets[secret].items():
            path = directory / key
            path.write_text(value)
            os.chown(path, 0, 0)
            path.chmod(mode)
        return str(directory)

    def kube_api_volume(self, namespace):
        """The sidecar's projected Kubernetes API volume: a token, the cluster's CA and the
        namespace. There is no API server here: the token is a placeholder, and nothing in
        these tests reaches the API (the sidecar uses it only once another owner took its lease
        while it runs)."""
        directory = self.scratch / f"kube-api-{next(self.serial)}"
        directory.mkdir()
        for name, value in (("token", "no-api-server-in-these-tests"), ("ca.crt", ""), ("namespace", namespace)):
            (directory / name).write_text(value)
            (directory / name).chmod(0o644)
        return str(directory)

    def results_dir(self):
        """Where the Signal stand-in writes its committed ids (test instrumentation)."""
        directory = self.scratch / "results"
        directory.mkdir(exist_ok=True)
        directory.chmod(0o777)
        return directory

    def cleanup(self):
        for container in self.containers:
            podman("rm", "--force", "--time", "0", container, check_status=False)
        self.s3.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


class Pod:
    """One pod of a rendered workload, its containers run with podman as the kubelet would."""

    def __init__(self, cluster, name, spec, volumes, listen_port=None, namespace="ghostwire"):
        self.cluster = cluster
        self.name = name
        self.namespace = namespace
        self.spec = spec
        self.volumes = volumes  # the pod's volume name -> host directory
        self.listen_port = listen_port

    def container_spec(self, name):
        for container in self.spec.get("initContainers", []) + self.spec["containers"]:
            if container["name"] == name:
                return container
        raise Failure(f"pod {self.name} has no container {name}")

    def podman_args(self, name, env_overrides=None, extra_volumes=()):
        """`podman run` options for one container, from its spec. Environment values travel
        in podman's own environment (`--env NAME`), never in its argv."""
        spec = self.container_spec(name)
        pod_security = self.spec.get("securityContext", {})
        security = {**pod_security, **spec.get("securityContext", {})}
        args = ["--network", "host", "--hostname", self.name,
                "--user", f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"]
        if "fsGroup" in pod_security:
            args += ["--group-add", str(pod_security["fsGroup"])]
        if security.get("readOnlyRootFilesystem"):
            # Podman would mount tmpfs on /tmp, /var/tmp and /run; the kubelet does not.
            args += ["--read-only", "--read-only-tmpfs=false"]
        if "ALL" in security.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", "ALL"]
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        # seccompProfile RuntimeDefault: podman's default seccomp profile applies.
        memory = spec.get("resources", {}).get("limits", {}).get("memory")
        if memory:
            args += ["--memory", str(k8s_quantity(memory))]

        env = {"HOSTNAME": self.name}
        for source in spec.get("envFrom", []):
            env.update(self.cluster.configmaps[source["configMapRef"]["name"]])
        for variable in spec.get("env", []):
            if "value" in variable:
                env[variable["name"]] = variable["value"]
                continue
            field = variable["valueFrom"].get("fieldRef")
            if field:  # the downward API: the manifests use the pod's name and namespace
                values = {"metadata.name": self.name, "metadata.namespace": self.namespace}
                check(field["fieldPath"] in values, f"{name}: unexpected fieldRef {field}")
                env[variable["name"]] = values[field["fieldPath"]]
                continue
            ref = variable["valueFrom"]["secretKeyRef"]
            value = self.cluster.secrets.get(ref["name"], {}).get(ref["key"])
            if value is None:
                check(ref.get("optional"), f"{name}: Secret {ref['name']}/{ref['key']} is missing")
                continue
            env[variable["name"]] = value
        if self.listen_port and "GWB_LISTEN" in env:
            env["GWB_LISTEN"] = f"127.0.0.1:{self.listen_port}"  # host network: see the top
        env.update(env_overrides or {})
        for variable in env:
            args += ["--env", variable]

        secrets = {v["name"] for v in self.spec.get("volumes", []) if "secret" in v}
        for mount in spec.get("volumeMounts", []):
            source = self.volumes[mount["name"]]
            read_only = mount.get("readOnly") or mount["name"] in secrets  # Secrets always are
            args += ["--volume", f"{source}:{mount['mountPath']}:{'ro' if read_only else 'rw'}"]
        for source, target in extra_volumes:
            args += ["--volume", f"{source}:{target}"]

        image = IMAGE if spec["image"] == MANIFEST_IMAGE else SIGNAL_IMAGE
        if "command" in spec and image == IMAGE:
            args += ["--entrypoint", json.dumps(spec["command"])]
        return args, image, {**os.environ, **env}

    def run(self, name, command=None, env_overrides=None, extra_volumes=(), must_succeed=True):
        """Runs a container to completion (an init container, a Job's container)."""
        args, image, env = self.podman_args(name, env_overrides, extra_volumes)
        command = command if command is not None else self.container_spec(name).get("args", [])
        started = time.monotonic()
        result = podman("run", "--rm", *args, image, *command, env=env, check_status=False)
        log(f"{self.name}/{name} exited {result.returncode} after {time.monotonic() - started:.1f} s")
        if result.returncode != 0 and must_succeed:
            raise Failure(f"{self.name}/{name} failed:\n{result.stderr}{result.stdout}")
        return result

    def start(self, name, command=None, env_overrides=None, extra_volumes=()):
        """Starts a long-running container (a sidecar, Signal); returns its podman name."""
        args, image, env = self.podman_args(name, env_overrides, extra_volumes)
        command = command if command is not None else self.container_spec(name).get("args", [])
        # Numbered: a pod started again runs a container of the same name next to the old one.
        container = f"{self.cluster.run_id}-{len(self.cluster.containers)}-{self.name}-{name}"
        self.cluster.containers.append(container)
        podman("run", "--detach", "--name", container, *args, image, *command, env=env)
        return container

    def wait_started(self, name, container):
        """The kubelet starts the next container once a sidecar has started: after its
        startupProbe succeeds if it has one, else as soon as it runs."""
        probe = self.container_spec(name).get("startupProbe")
        if probe is None:
            check(podman("inspect", "--format", "{{.State.Running}}", container).stdout.strip() == "true",
                  f"{container} is not running:\n{logs(container)}")
            return
        url = f"http://127.0.0.1:{self.listen_port}{probe['httpGet']['path']}"
        limit = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        deadline = time.monotonic() + limit
        while http_status(url) != 200:
            check(time.monotonic() < deadline, f"{name}'s startupProbe {url} failed for {limit} s:\n{logs(container)}")
            time.sleep(0.2)

    def stop(self, container, grace_s):
        """SIGTERM, then SIGKILL once the grace period is over, as the kubelet does; returns
        the exit code."""
        podman("kill", "--signal", "TERM", container)
        try:
            status = subprocess.run(["podman", "wait", container], capture_output=True, text=True,
                                    timeout=max(grace_s, 1)).stdout.strip()
        except subprocess.TimeoutExpired:
            podman("kill", "--signal", "KILL", container, check_status=False)
            raise Failure(f"{container} outlived its grace period of {grace_s:.0f} s:\n{logs(container)}")
        return int(status)


def logs(container):
    result = podman("logs", container, check_status=False)
    return result.stdout + result.stderr


# --------------------------------------------------------------------- Signal stand-in --


def make_profile(pod, size):
    """A Signal profile made by Signal's driver as uid 1000 (as Signal itself left it): about
    6 % database, the rest attachments, as bench/ makes them. make-profile.mjs sets the mode
    of the home itself, so it gets the volume's root for the time being; the root then goes
    back to root:0 2775, as the kubelet leaves a fresh volume for a pod with fsGroup 0."""
    root = Path(pod.volumes[home_volume(pod.spec)])
    os.chown(root, 1000, 0)
    messages = max(2000, size // (16 * 1024))
    attachment_bytes = int(size * 0.93)
    result = pod.run("signal", ["make-profile.mjs", HOME, "--messages", str(messages),
                                "--attachment-bytes", str(attachment_bytes), "--compressible", "0.2"])
    os.chown(root, 0, 0)
    root.chmod(0o2775)
    return json.loads(result.stdout)


def signal_writer(pod, key, results):
    """Signal running: Signal's driver commits messages, one per transaction, and lists the
    committed ids in results/ids.txt."""
    return pod.start("signal", ["writer.mjs", DB, key, "/results/ids.txt", "--sleep-ms", "5"],
                     extra_volumes=[(results, "/results")])


def committed(results):
    path = results / "ids.txt"
    return path.read_text().count("\n") if path.exists() else 0


def check_restored_volume(pod, volume, key, ids_file, results):
    """Uid 1000 owns everything restored, and Signal's driver opens the database with every
    row in ids_file, with the attachments it references."""
    root = Path(volume)
    wrong = []
    for path in [root, *root.rglob("*")]:
        if path.relative_to(root).parts[:1] == ("lost+found",):
            continue  # the filesystem's, not restored
        st = path.lstat()
        if path != root and (st.st_uid, st.st_gid) != (1000, 0):
            wrong.append(f"{path.relative_to(root)} {st.st_uid}:{st.st_gid}")
    check(not wrong, f"restored entries not owned by 1000:0: {wrong[:10]}")
    moved_aside = [p.name for p in root.glob(".ghostwire-backup-replaced-*")]
    check(not moved_aside, f"the restore moved entries of the fresh volume aside: {moved_aside}")
    result = pod.run("signal", ["check-db.mjs", DB, key, f"/results/{ids_file}"],
                     extra_volumes=[(results, "/results")])
    db = json.loads(result.stdout)
    check(db["integrity"] == "ok", f"integrity: {db['integrity']}")
    check(db["missingCount"] == 0, f"{db['missingCount']} committed rows missing: {db['missingIds']}")
    missing_files = [p for p in db["attachmentPaths"]
                     if not (root / ".config/Signal/attachments.noindex" / p).is_file()]
    check(not missing_files, f"attachments missing: {missing_files[:10]}")
    return db


# --------------------------------------------------------------------------- the tests --


def test_hardened(size):
    """A backup by the CronJob's container of a profile Signal is writing, then a restore by
    green's `restore` init container into its fresh volume: owned by uid 1000, opened by Signal."""
    sidecar_docs = render("sidecar")
    cronjob = find(render("cronjob"), "CronJob")
    cluster = Cluster(find(sidecar_docs, "ConfigMap", "ghostwire-backup"))
    try:
        results = cluster.results_dir()
        spec = pod_spec(find(sidecar_docs, "StatefulSet"))
        claim = home_volume(spec)
        home = cluster.pvc(f"{claim}-ghostwire-0")
        volumes = {claim: home, "dshm": cluster.empty_dir("dshm")}
        signal = Pod(cluster, "ghostwire-0", spec, volumes)
        profile = make_profile(signal, size)
        log(f"profile: {profile['messages']} messages, {profile['attachmentBytes'] / MiB:.0f} MiB of attachments, owned by uid 1000")

        writer = signal_writer(signal, profile["key"], results)
        wait_for_commits(results, 50, writer)
        before = (results / "ids.txt").read_text()
        backup = Pod(cluster, "ghostwire-backup-29000000-x1x1x", pod_spec(cronjob),
                     {"home": home, "tmp": cluster.empty_dir("tmp"),
                      "signing": cluster.secret_volume("ghostwire-backup-signing",
                                                       secret_mode(pod_spec(cronjob), "signing"))})
        backup.run("backup")
        (results / "before-backup.txt").write_text(before[: before.rfind("\n") + 1])
        during = committed(results)
        report = stop_signal(signal, writer)
        log(f"Signal committed {during} messages before the backup ended ({report})")

        green = Pod(cluster, "ghostwire-green-0", signal.spec, {
            claim: cluster.pvc(f"{claim}-ghostwire-green-0"),
            "ghostwire-backup-restore-tmp": cluster.empty_dir("restore-tmp"),
            "ghostwire-backup-identity": cluster.secret_volume(
                "ghostwire-backup-identity", secret_mode(signal.spec, "ghostwire-backup-identity")),
            "ghostwire-backup-signing": cluster.secret_volume(
                "ghostwire-backup-signing", secret_mode(signal.spec, "ghostwire-backup-signing")),
            "ghostwire-backup-kube-api": cluster.kube_api_volume("ghostwire-green"),
            "dshm": cluster.empty_dir("dshm"),
        }, namespace="ghostwire-green")
        # The CronJob variant holds no lease, so there is no handoff: as in the DR runbook,
        # the restore is told to take the newest snapshot.
        green.run("restore", env_overrides={"GWB_SNAPSHOT": "latest"})
        db = check_restored_volume(green, green.volumes[claim], profile["key"],
                                   "before-backup.txt", results)
        log(f"hardened: restored volume owned by 1000:0; Signal's driver opened it: {db['messages']} messages, "
            f"all {db['idsChecked']} committed before the backup present")
    finally:
        cluster.cleanup()


def test_lifecycle(size):
    """Blue/green with the sidecar patch, in the kubelet's order. Prints the switch downtime."""
    docs = render("sidecar")
    spec = pod_spec(find(docs, "StatefulSet"))
    grace = spec["terminationGracePeriodSeconds"]
    cluster = Cluster(find(docs, "ConfigMap", "ghostwire-backup"))
    # The overlay schedules backups every 10 s instead of hourly, so that blue has a backup
    # from before its shutdown, as a real sidecar has: the final snapshot is then incremental.
    cluster.configmaps["ghostwire-backup"]["GWB_SCHEDULE"] = "*/10 * * * * *"
    try:
        results = cluster.results_dir()
        identity = cluster.secret_volume("ghostwire-backup-identity", secret_mode(spec, "ghostwire-backup-identity"))
        signing = cluster.secret_volume("ghostwire-backup-signing", secret_mode(spec, "ghostwire-backup-signing"))

        claim = home_volume(spec)  # the chart's claim template: PVC <claim>-<StatefulSet>-0

        def volumes(statefulset, namespace):
            return {claim: cluster.pvc(f"{claim}-{statefulset}-0"), "ghostwire-backup-tmp": cluster.empty_dir("tmp"),
                    "ghostwire-backup-restore-tmp": cluster.empty_dir("restore-tmp"),
                    "ghostwire-backup-identity": identity, "ghostwire-backup-signing": signing,
                    "ghostwire-backup-kube-api": cluster.kube_api_volume(namespace),
                    "dshm": cluster.empty_dir("dshm")}

        blue = Pod(cluster, "ghostwire-0", spec, volumes("ghostwire", "ghostwire"), free_port())
        profile = make_profile(blue, size)
        log(f"blue's volume: {profile['messages']} messages, {profile['attachmentBytes'] / MiB:.0f} MiB of attachments, "
            "made by Signal's driver as uid 1000")

        # -- blue starts, in the kubelet's order: init containers one by one, the native
        #    sidecar (restartPolicy: Always) started before the next, then the containers.
        log("kubelet: blue ghostwire-0: init container restore (--if-empty: the volume is full, nothing to do)")
        blue.run("restore")
        log("kubelet: blue: native sidecar ghostwire-backup")
        blue_sidecar = blue.start("ghostwire-backup")
        blue.wait_started("ghostwire-backup", blue_sidecar)
        log("kubelet: blue: container signal (stand-in: Signal's driver writing as uid 1000)")
        blue_signal = signal_writer(blue, profile["key"], results)
        wait_for_scheduled_backup(blue, blue_sidecar)
        wait_for_commits(results, committed(results) + 50, blue_signal)

        # -- blue stops: the kubelet sends SIGTERM to the containers first and to native
        #    sidecars only after those have exited, all within terminationGracePeriodSeconds.
        log(f"kubelet: blue: SIGTERM to signal (grace period {grace} s)")
        switch_started = time.monotonic()
        report = stop_signal(blue, blue_signal, grace)
        signal_stopped = time.monotonic()
        log(f"blue's Signal stopped: {committed(results)} messages committed ({report})")
        log("kubelet: blue: SIGTERM to the sidecar ghostwire-backup (final snapshot)")
        status = blue.stop(blue_sidecar, grace - (signal_stopped - switch_started))
        final_done = time.monotonic()
        sidecar_log = logs(blue_sidecar)
        check(status == 0, f"blue's sidecar exited {status}:\n{sidecar_log}")
        check("final snapshot committed" in sidecar_log, f"blue's sidecar log shows no final snapshot:\n{sidecar_log}")
        log(f"blue's final snapshot took {final_done - signal_stopped:.1f} s")

        # -- green starts on a fresh volume, in the same order.
        green = Pod(cluster, "ghostwire-green-0", spec, volumes("ghostwire-green", "ghostwire-green"), free_port(),
                    namespace="ghostwire-green")
        restore_env = {e["name"]: e.get("value") for e in green.container_spec("restore").get("env", [])}
        check(restore_env.get("GWB_SNAPSHOT") == "handoff", "the restore init container does not restore GWB_SNAPSHOT=handoff")
        log("kubelet: green ghostwire-green-0: init container restore (--if-empty, GWB_SNAPSHOT=handoff) into the empty volume")
        restore_log = green.run("restore")
        handed_over = final_snapshot_id(sidecar_log)
        check(restore_log.stdout.strip() == handed_over,
              f"green restored {restore_log.stdout.strip()!r}, not blue's final snapshot {handed_over!r}")
        restored = time.monotonic()
        log("kubelet: green: native sidecar ghostwire-backup (startupProbe /startupz: 200 once it holds the lease)")
        green_sidecar = green.start("ghostwire-backup")
        green.wait_started("ghostwire-backup", green_sidecar)
        log("kubelet: green: container signal")
        switch_done = time.monotonic()
        db = check_restored_volume(green, green.volumes[claim], profile["key"], "ids.txt", results)
        log(f"green's Signal opened the database: {db['messages']} messages, all {db['idsChecked']} blue committed")
        green_signal = green.start("signal", ["writer.mjs", DB, profile["key"], "/results/green-ids.txt",
                                              "--max-commits", "20"], extra_volumes=[(results, "/results")])
        check(int(podman("wait", green_signal).stdout.strip()) == 0, f"green's Signal cannot write:\n{logs(green_signal)}")
        split_brain(blue)

        downtime = switch_done - switch_started
        print(json.dumps({
            "profile_mib": round(size / MiB),
            "switch_downtime_s": round(downtime, 1),
            "signal_stop_s": round(signal_stopped - switch_started, 1),
            "final_snapshot_s": round(final_done - signal_stopped, 1),
            "restore_s": round(restored - final_done, 1),
            "green_sidecar_start_s": round(switch_done - restored, 1),
        }), flush=True)
        log(f"lifecycle: switch downtime {downtime:.1f} s for a {size / MiB:.0f} MiB profile "
            "(blue's SIGTERM -> green's Signal start)")
    finally:
        cluster.cleanup()


def final_snapshot_id(sidecar_log):
    """The id of the final snapshot in a sidecar's JSON log."""
    for line in sidecar_log.splitlines():
        if "final snapshot committed" in line:
            event = json.loads(line)
            return event.get("fields", event).get("snapshot")
    raise Failure(f"no final snapshot in the sidecar's log:\n{sidecar_log}")


def split_brain(blue):
    """Blue's pod started again (Flux resumed before blue left Git) on its old, full volume
    while green holds the lease: neither its init container nor its sidecar lets the kubelet
    get to blue's Signal container."""
    log("split brain: kubelet starts blue ghostwire-0 again on its old volume while green holds the lease")
    result = blue.run("restore", must_succeed=False)
    check(result.returncode == 7 and "held by container-tests/ghostwire-green/ghostwire-green-0" in result.stderr,
          f"blue's restore init container did not refuse on green's lease:\n{result.stderr}{result.stdout}")
    log("split brain: blue's init container refused (exit 7); the kubelet would retry it, and Signal never starts")
    # Even without that init container, the sidecar's startupProbe keeps Signal from starting.
    sidecar = blue.start("ghostwire-backup")
    url = f"http://127.0.0.1:{blue.listen_port}/startupz"
    watched_until = time.monotonic() + 10
    answers = set()
    while time.monotonic() < watched_until:
        status = http_status(url)
        check(status != 200, f"blue's sidecar answered /startupz 200 while green holds the lease:\n{logs(sidecar)}")
        answers.add(status)
        time.sleep(0.25)
    check(503 in answers, f"blue's sidecar never answered /startupz: {answers}\n{logs(sidecar)}")
    status = blue.stop(sidecar, 30)
    check(status == 0, f"blue's waiting sidecar exited {status} on SIGTERM:\n{logs(sidecar)}")
    log("split brain: blue's sidecar answered /startupz 503 for 10 s (Signal not started), then stopped cleanly")


def secret_mode(spec, volume):
    for entry in spec["volumes"]:
        if entry["name"] == volume:
            return entry["secret"]["defaultMode"]
    raise Failure(f"no Secret volume {volume}")


def wait_for_commits(results, count, writer, timeout=60):
    deadline = time.monotonic() + timeout
    while committed(results) < count:
        check(time.monotonic() < deadline, f"Signal's writer committed only {committed(results)}:\n{logs(writer)}")
        time.sleep(0.1)


def wait_for_scheduled_backup(pod, container, timeout=300):
    url = f"http://127.0.0.1:{pod.listen_port}/metrics"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            text = ""
        for line in text.splitlines():
            if line.startswith("ghostwire_backup_last_success_timestamp_seconds ") and float(line.split()[1]) > 0:
                log("blue's sidecar finished a scheduled backup")
                return
        check(time.monotonic() < deadline, f"no scheduled backup within {timeout} s:\n{logs(container)}")
        time.sleep(0.5)


def stop_signal(pod, container, grace=30):
    status = pod.stop(container, grace)
    output = logs(container)
    check(status == 0, f"Signal's writer exited {status}:\n{output}")
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", nargs="+", choices=["hardened", "lifecycle"])
    parser.add_argument("--size", default="16M", help="profile size (16M, 256M, 2G)")
    args = parser.parse_args()
    size = parse_size(args.size)
    for test in args.tests:
        log(f"== container test: {test} ({args.size} profile)")
        try:
            {"hardened": test_hardened, "lifecycle": test_lifecycle}[test](size)
        except Failure as failure:
            print(f"FAILED: {test}: {failure}", file=sys.stderr)
            sys.exit(1)
        log(f"== {test}: ok")


if __name__ == "__main__":
    main()
