#!/usr/bin/env python3
"""The benchmark behind docs/benchmarks.md. Run it through bench/run.sh, which installs what
it needs; see `bench/run.sh --help` and docs/benchmarks.md for what it measures.

For each size it makes a Signal-like home with Signal's own driver, starts one moto S3
server on 127.0.0.1, and runs on the same data, one after the other:

  physical   tar -cf - | cat > /dev/null, and one large object up to / down from the server
  gwb        ghostwire-backup backup, and restore into an empty directory
  stock      tar -cf - | zstd -T0 -3 | age -r … | upload, and its reverse
  restic     Debian's restic: backup to the same server, restore
  changed    1% of the attachments and of the messages changed: gwb and restic again
  unchanged  nothing changed: gwb and restic again
  writer     writer.mjs commit latency idle, then while ghostwire-backup runs

With --heavy SIZES instead, for each database size: a heavy user's profile (the database is
nearly all of it), full, unchanged and 1%-changed backups, the restore of a delta chain,
`restore --update`, and the blue/green switch (final snapshot + catch-up), beside restic.

Every command runs under /usr/bin/time for its peak RSS (for a pipeline: the sum of its
stages' peaks, since they run at once). Bytes uploaded are what the bucket prefix grew by.
Restores include a syncfs of the target (`sync -f`), since ghostwire-backup's restore ends
with one: all three leave the data on disk.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
SIZES = {"256M": 256 * MiB, "2G": 2048 * MiB}
RESTIC_PASSWORD = "ghostwire-bench"
MARK_BEGIN = "<!-- bench/run.sh results: begin -->"
MARK_END = "<!-- bench/run.sh results: end -->"
HEAVY_BEGIN = "<!-- bench/run.sh --heavy results: begin -->"
HEAVY_END = "<!-- bench/run.sh --heavy results: end -->"
# The heavy run against s3s-fs goes into a section of its own, beside moto's.
HEAVY_S3S_BEGIN = "<!-- bench/run.sh --heavy --server s3s-fs results: begin -->"
HEAVY_S3S_END = "<!-- bench/run.sh --heavy --server s3s-fs results: end -->"


# The s3s-fs release bench/run.sh installs (the newest needs a newer rustc than 1.95).
S3S_FS_VERSION = "0.14.1"


def log(*args):
    print(f"[{datetime.datetime.now():%H:%M:%S}]", *args, file=sys.stderr, flush=True)


def parse_keygen(text):
    """`keygen --out … --signing-out …` prints exactly GWB_RECIPIENTS=age1… and
    GWB_VERIFY_KEY=RW…; anything else is an agent this bench does not know."""
    public = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if len(text.splitlines()) != 2 or sorted(public) != ["GWB_RECIPIENTS", "GWB_VERIFY_KEY"]:
        sys.exit(f"keygen printed {text!r}, not GWB_RECIPIENTS=… and GWB_VERIFY_KEY=…")
    return public


def parse_size(text):
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = {"K": 1 << 10, "M": MiB, "G": 1 << 30}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMG" else text
    return int(float(number) * unit)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.agent = Path(args.agent).resolve()
        self.procs = []
        self.env = dict(os.environ)
        for name in list(self.env):
            if name.startswith(("GWB_", "AWS_", "RESTIC_")):
                del self.env[name]
        self.env.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench-secret",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_DEFAULT_REGION="us-east-1",
            RESTIC_PASSWORD=RESTIC_PASSWORD,
            RESTIC_CACHE_DIR=str(self.work / "restic-cache"),
            GWB_LOG_FORMAT="json",
            GWB_S3_REGION="us-east-1",
            GWB_S3_PATH_STYLE="true",
            NO_COLOR="1",
        )

    # ------------------------------------------------------------------ services --

    def start_s3(self):
        port = free_port()
        # Both servers keep objects in files (moto: a temporary file each; s3s-fs: a tree).
        # On this disk their writes would compete with the writer's fsyncs, which a remote
        # S3 server's never do: use memory if it has room for the objects the run keeps at
        # once (about four archives).
        sizes = [SIZES.get(s) or parse_size(s) for s in self.args.sizes + self.args.heavy]
        shm = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
        base = Path("/dev/shm") if shm > 5 * max(sizes) else self.work
        server = self.args.server
        tmp = base / f"ghostwire-bench-{server}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.moto_tmp = tmp
        log(f"{server} keeps its objects in {tmp}")
        if server == "moto":
            argv, env = [self.args.moto, "-H", "127.0.0.1", "-p", str(port)], dict(self.env, TMPDIR=str(tmp))
        else:
            argv = [self.args.s3s_fs, "--host", "127.0.0.1", "--port", str(port), "--access-key", "bench",
                    "--secret-key", "bench-secret", str(tmp)]
            env = self.env
        # At lower CPU priority: it stands in for a remote server, whose CPU is not the one
        # Signal's writer runs on (unniced, moto alone doubles the writer's p99 latency here).
        moto = subprocess.Popen(
            ["nice", "-n", "10", *argv],
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / f"{server}.log", "w"),
            env=env,
        )
        self.procs.append(moto)
        self.moto = moto
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or moto.poll() is not None:
                    sys.exit(f"{server} did not start; see {self.work / (server + '.log')}")
                time.sleep(0.2)
        self.env.update(GWB_S3_ENDPOINT=self.endpoint, S3_ENDPOINT=self.endpoint)
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",
            config=Config(s3={"addressing_style": "path"}),
        )
        for bucket in ("gwb", "stock", "restic", "physical"):
            self.s3.create_bucket(Bucket=bucket)
        # A first multipart upload and download, untimed: moto loads its handlers lazily.
        warm = subprocess.run(["head", "-c", str(24 * MiB), "/dev/urandom"], stdout=subprocess.PIPE).stdout
        s3pipe = [sys.executable, str(ROOT / "bench/s3pipe.py")]
        subprocess.run([*s3pipe, "put", "physical", "warm-up"], input=warm, env=self.env, check=True)
        subprocess.run([*s3pipe, "get", "physical", "warm-up"], stdout=subprocess.DEVNULL, env=self.env, check=True)
        self.s3.delete_object(Bucket="physical", Key="warm-up")
        log(f"{server} S3 server on {self.endpoint}")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if getattr(self, "moto_tmp", None):
            shutil.rmtree(self.moto_tmp, ignore_errors=True)

    def bucket_bytes(self, bucket, prefix=""):
        total = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def empty_bucket(self, bucket, prefix=""):
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                self.s3.delete_object(Bucket=bucket, Key=o["Key"])

    # ------------------------------------------------------------------ running --

    def timed(self, name, stages, cwd=None, stdout=None, check=True):
        """Runs a pipeline of argv lists, each stage under /usr/bin/time; returns wall seconds
        and the summed peak RSS of its stages (they run at the same time)."""
        rss_files = [self.work / f"rss-{i}.txt" for i in range(len(stages))]
        parts = []
        for argv, rss in zip(stages, rss_files):
            parts.append(shlex.join(["/usr/bin/time", "-f", "%M", "-o", str(rss), "--", *argv]))
        command = "set -o pipefail; " + " | ".join(parts)
        if stdout:
            command += f" > {shlex.quote(str(stdout))}"
        logfile = self.work / "logs" / f"{name}.log"
        logfile.parent.mkdir(exist_ok=True)
        start = time.monotonic()
        with open(logfile, "w") as err:
            result = subprocess.run(["bash", "-c", command], cwd=cwd, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL if not stdout else None, stderr=err)
        wall = time.monotonic() - start
        if check and result.returncode != 0:
            sys.exit(f"{name} failed (exit {result.returncode}); see {logfile}:\n{logfile.read_text()[-3000:]}")
        peaks = []
        for rss in rss_files:
            lines = rss.read_text().split() if rss.exists() else []
            peaks.append(int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else 0)
        log(f"{name}: {wall:.2f} s, peak RSS {sum(peaks) / MiB:.1f} MiB")
        return {"wall": wall, "rss": sum(peaks), "rss_stages": peaks}

    def sync(self, path):
        start = time.monotonic()
        subprocess.run(["sync", "-f", str(path)], check=True)
        return time.monotonic() - start

    # ------------------------------------------------------------------ data --

    def make_profile(self, label, size):
        pristine = self.work / f"profile-{label}"
        summary_file = self.work / f"profile-{label}.json"
        if not (summary_file.exists() and pristine.exists()) or self.args.fresh:
            shutil.rmtree(pristine, ignore_errors=True)
            # About 6% of the home is the database (as users report: 1.1–1.5 GB next to
            # 17–25 GB of attachments); ~1 KiB per message.
            messages = max(2000, size // (16 * 1024))
            attachment_bytes = int(size * 0.93)
            log(f"making a {label} profile: {messages} messages, {attachment_bytes / MiB:.0f} MiB of attachments")
            out = subprocess.run(
                ["node", str(ROOT / "tests/node/make-profile.mjs"), str(pristine),
                 "--messages", str(messages), "--attachment-bytes", str(attachment_bytes),
                 "--compressible", "0.2", "--seed", f"bench-{label}"],
                check=True, stdout=subprocess.PIPE, env=self.env,
            ).stdout
            summary = json.loads(out)
            summary_file.write_text(json.dumps({k: summary[k] for k in ("key", "messages", "attachmentBytes")}
                                               | {"files": len(summary["attachments"])}))
        summary = json.loads(summary_file.read_text())
        # The run works on a copy: hard links for the attachments (never modified, only
        # added and deleted), real copies of the databases (modified in place).
        live = self.work / f"live-{label}"
        shutil.rmtree(live, ignore_errors=True)
        subprocess.run(["cp", "-al", str(pristine), str(live)], check=True)
        for sql in live.rglob("*"):
            if sql.is_file() and not sql.is_symlink() and "attachments.noindex" not in sql.parts:
                data = sql.read_bytes()
                sql.unlink()
                sql.write_bytes(data)
        summary["home"] = str(live)
        summary["bytes"] = tree_bytes(live)
        summary["db_bytes"] = tree_bytes(live / ".config/Signal/sql")
        return summary

    # ------------------------------------------------------------------ the run --

    def run_size(self, label, size):
        r = {"label": label}
        p = self.make_profile(label, size)
        home = Path(p["home"])
        r["profile"] = {k: p[k] for k in ("bytes", "db_bytes", "attachmentBytes", "files", "messages")}
        log(f"{label}: home {p['bytes'] / MiB:.0f} MiB, {p['files']} attachment files, DB {p['db_bytes'] / MiB:.0f} MiB")
        restore_root = self.work / "restore"
        scratch = self.work / "scratch"
        scratch.mkdir(exist_ok=True)
        ident, recipient = self.ident, self.recipient
        agent_env = {"GWB_REPO": f"s3://gwb/{label}", "GWB_STAGING_DIR": str(scratch)}
        self.env.update(agent_env)
        # The reference counts of the files a restore must bring back.
        expected = attachment_stats(home)

        def fresh_target(name):
            shutil.rmtree(restore_root, ignore_errors=True)
            restore_root.mkdir()
            return restore_root / name

        def check_restored(root, what):
            found = attachment_stats(root)
            if found != expected:
                sys.exit(f"{what}: restored attachments differ: {found} instead of {expected}")

        # Warm the page cache, so every tool reads the home from memory.
        self.timed(f"{label}-warmup", [["tar", "-cf", "-", "-C", str(home), "."], ["cat"]], stdout="/dev/null")
        # The catalog (what makes backups incremental) lives outside the home, so that every
        # tool archives the same files; the full rounds are forced full.
        catalog = self.work / f"catalog-{label}.sqlite"
        catalog.unlink(missing_ok=True)
        incremental = [str(self.agent), "backup", "--source", str(home), "--recipient", recipient,
                       "--catalog", str(catalog)]
        backup = [*incremental, "--full-every", "0"]
        s3pipe = [sys.executable, str(ROOT / "bench/s3pipe.py")]
        restic_repo = lambda i: f"s3:{self.endpoint}/restic/{label}/{i}"  # noqa: E731

        def gwb_backup(i, name="gwb-backup", command=backup):
            before = self.bucket_bytes("gwb", label)
            out = self.timed(f"{label}-{name}-{i}", [command])
            out["uploaded"] = self.bucket_bytes("gwb", label) - before
            return out

        def gwb_restore(i):
            target = fresh_target("gwb")
            out = self.timed(f"{label}-gwb-restore-{i}", [[str(self.agent), "restore", "--snapshot", "latest",
                                                           "--identity", str(ident), "--target", str(target)]])
            check_restored(target, "ghostwire-backup")
            return out

        def stock_backup(i):
            self.empty_bucket("stock", label)
            out = self.timed(f"{label}-stock-backup-{i}", [
                ["tar", "-cf", "-", "-C", str(home), "."],
                ["zstd", "-T0", "-3", "-q"],
                ["age", "-r", recipient],
                [*s3pipe, "put", "stock", f"{label}/home.tar.zst.age"],
            ])
            out["uploaded"] = self.bucket_bytes("stock", label)
            return out

        def stock_restore(i):
            target = fresh_target("stock")
            target.mkdir()
            out = self.timed(f"{label}-stock-restore-{i}", [
                [*s3pipe, "get", "stock", f"{label}/home.tar.zst.age"],
                ["age", "-d", "-i", str(ident)],
                ["zstd", "-d", "-q"],
                ["tar", "-xf", "-", "-C", str(target)],
            ])
            out["sync"] = self.sync(target)
            out["wall"] += out["sync"]
            check_restored(target, "stock pipeline")
            return out

        def restic_backup(i, name="restic-backup"):
            """A full backup into a new, empty repository (a new prefix, no local cache)."""
            self.empty_bucket("restic", label)
            shutil.rmtree(self.work / "restic-cache", ignore_errors=True)
            subprocess.run(["restic", "-r", restic_repo(i), "init", "--repository-version", "2"], check=True,
                           env=self.env, stdout=subprocess.DEVNULL)
            return restic_run(restic_repo(i), f"{name}-{i}")

        def restic_run(repo, name):
            before = self.bucket_bytes("restic", label)
            out = self.timed(f"{label}-{name}", [["restic", "-r", repo, "backup", "--quiet", "--host", "bench", "."]],
                             cwd=home)
            out["uploaded"] = self.bucket_bytes("restic", label) - before
            return out

        def restic_restore(i):
            target = fresh_target("restic")
            out = self.timed(f"{label}-restic-restore-{i}",
                             [["restic", "-r", restic_repo(last), "restore", "latest", "--target", str(target)]])
            out["sync"] = self.sync(target)
            out["wall"] += out["sync"]
            check_restored(target, "restic")
            return out

        def s3_put(i):
            self.empty_bucket("physical", label)
            out = self.timed(f"{label}-s3-put-{i}", [["cat", str(blob)], [*s3pipe, "put", "physical", f"{label}/blob"]])
            out["uploaded"] = self.bucket_bytes("physical", label)
            return out

        def s3_get(i):
            return self.timed(f"{label}-s3-get-{i}", [[*s3pipe, "get", "physical", f"{label}/blob"], ["cat"]],
                              stdout="/dev/null")

        def tar_null(i):
            return self.timed(f"{label}-tar-null-{i}", [["tar", "-cf", "-", "-C", str(home), "."], ["cat"]],
                              stdout="/dev/null")

        # The tools take turns, round after round, so that whatever else the machine does
        # (it is shared) falls on all of them alike; the median of the rounds counts.
        backups = {"gwb_backup": gwb_backup, "stock_backup": stock_backup, "restic_backup": restic_backup,
                   "tar_null": tar_null}
        runs = {k: [] for k in backups}
        last = self.args.repeat - 1
        for i in range(self.args.repeat):
            if i > 0:
                self.empty_bucket("gwb", label)
            for k, fn in backups.items():
                runs[k].append(fn(i))
        # One object the size of ghostwire-backup's archive: what the server itself can take.
        archive = runs["gwb_backup"][-1]["uploaded"]
        blob = self.work / "blob"
        with open(blob, "wb") as f:
            left = archive
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
        restores = {"gwb_restore": gwb_restore, "stock_restore": stock_restore, "restic_restore": restic_restore,
                    "s3_put": s3_put, "s3_get": s3_get}
        runs.update({k: [] for k in restores})
        for i in range(self.args.repeat):
            for k, fn in restores.items():
                runs[k].append(fn(i))
        for k, rs in runs.items():
            r[k] = median_of(rs)
        shutil.rmtree(restore_root, ignore_errors=True)
        self.empty_bucket("stock", label)
        self.empty_bucket("physical", label)
        blob.unlink()

        # 4. incrementals: 1% changed, then nothing changed
        key = p["key"]
        out = subprocess.run(["node", str(ROOT / "bench/change-profile.mjs"), str(home), key, "--share", "0.01"],
                             check=True, stdout=subprocess.PIPE, env=self.env).stdout
        r["change"] = json.loads(out)
        log(f"changed the profile: {r['change']}")
        # A backup skips Signal's database only if it was quiet for a moment before its
        # stamp (src/signal_db.rs); schedules are minutes apart, so wait that long here.
        time.sleep(1)
        r["gwb_changed"] = gwb_backup(0, "gwb-changed", incremental)
        r["restic_changed"] = restic_run(restic_repo(last), "restic-changed")
        r["gwb_unchanged"] = gwb_backup(0, "gwb-unchanged", incremental)
        r["restic_unchanged"] = restic_run(restic_repo(last), "restic-unchanged")
        # Restoring the newest snapshot now reads a chain: the full one and two incrementals.
        expected = attachment_stats(home)
        r["gwb_restore_chain"] = gwb_restore(0)
        r["restic_restore_chain"] = restic_restore(0)
        shutil.rmtree(restore_root, ignore_errors=True)
        self.empty_bucket("restic", label)

        # 5. the writer's view: commit latency idle, then while backups run
        self.empty_bucket("gwb", label)
        r["writer"] = self.writer_view(label, home, key, backup)
        self.empty_bucket("gwb", label)
        shutil.rmtree(home, ignore_errors=True)
        return r

    def writer_view(self, label, home, key, backup):
        db = home / ".config/Signal/sql/db.sqlite"
        seconds = self.args.writer_seconds
        writer = ["node", str(ROOT / "tests/node/writer.mjs"), str(db), key]

        def start(name, extra=()):
            ids = self.work / f"writer-{name}.ids"
            ids.unlink(missing_ok=True)
            return subprocess.Popen([*writer, str(ids), *extra], stdout=subprocess.PIPE, env=self.env)

        def report(proc):
            out, _ = proc.communicate(timeout=120)
            return json.loads(out.decode().strip().splitlines()[-1])

        log(f"writer idle for {seconds} s")
        idle = report(start(f"{label}-idle", ["--duration-s", str(seconds)]))
        log(f"writer idle: {idle}")
        proc = start(f"{label}-backup")
        time.sleep(0.5)  # opened and writing
        started = time.monotonic()
        backups = []
        while not backups or time.monotonic() - started < seconds:
            backups.append(self.timed(f"{label}-gwb-with-writer-{len(backups)}", [backup]))
            self.empty_bucket("gwb", label)
        proc.send_signal(signal.SIGTERM)
        during = report(proc)
        log(f"writer during backups: {during}")
        idle_after = report(start(f"{label}-idle-after", ["--duration-s", str(seconds)]))
        log(f"writer idle again: {idle_after}")
        return {"idle": idle, "during": during, "idle_after": idle_after, "backups": len(backups),
                "backup_wall": statistics.median(b["wall"] for b in backups),
                "backup_rss": max(b["rss"] for b in backups)}

    def contention(self, label, size):
        """Signal's writer against each way of backing up, in turns: its commit latency while
        the stock pipeline (tar | zstd -T0 | age | upload) runs, and while ghostwire-backup runs with 1, 2 and 8 compression
        threads (low priority, the default) and with 2 at normal priority. All upload to the
        same S3 server; each runs in a loop for --writer-seconds."""
        p = self.make_profile(label, size)
        home, key, recipient = Path(p["home"]), p["key"], self.recipient
        self.env["GWB_REPO"] = f"s3://gwb/{label}"
        self.env["GWB_STAGING_DIR"] = str(self.work / "scratch")
        (self.work / "scratch").mkdir(exist_ok=True)
        self.timed(f"{label}-warmup", [["tar", "-cf", "-", "-C", str(home), "."], ["cat"]], stdout="/dev/null")
        catalog = self.work / f"catalog-{label}.sqlite"
        s3pipe = [sys.executable, str(ROOT / "bench/s3pipe.py")]
        # GNU tar exits 1 when a file changed while it read it, as Signal's database does here.
        tar = f"tar -cf - -C {shlex.quote(str(home))} . ; [ $? -le 1 ]"
        stock = [["bash", "-c", tar], ["zstd", "-T0", "-3", "-q"], ["age", "-r", recipient],
                 [*s3pipe, "put", "stock", f"{label}/home.tar.zst.age"]]

        def gwb(*flags):
            return [[str(self.agent), "backup", "--source", str(home), "--recipient", recipient,
                     "--catalog", str(catalog), "--full-every", "0", *flags]]

        variants = {"stock pipeline": stock,
                    "gwb --threads 1": gwb("--threads", "1"),
                    "gwb --threads 2": gwb("--threads", "2"),
                    "gwb --threads 8": gwb("--threads", "8"),
                    "gwb --threads 2 --low-priority=false": gwb("--threads", "2", "--low-priority=false")}
        rows = {}
        for name, stages in variants.items():
            slug = re.sub(r"[^a-z0-9]+", "-", name)
            rows[name] = self.with_writer(label, home, key, slug, stages)
            self.empty_bucket("gwb", label)
            self.empty_bucket("stock", label)
        return {"label": label, "profile": {k: p[k] for k in ("bytes", "db_bytes", "files")}, "contention": rows}

    def with_writer(self, label, home, key, slug, stages):
        """Runs `stages` in a loop for --writer-seconds while Signal's writer commits."""
        db = home / ".config/Signal/sql/db.sqlite"
        ids = self.work / f"writer-{slug}.ids"
        ids.unlink(missing_ok=True)
        proc = subprocess.Popen(["node", str(ROOT / "tests/node/writer.mjs"), str(db), key, str(ids)],
                                stdout=subprocess.PIPE, env=self.env)
        time.sleep(0.5)
        started, runs = time.monotonic(), []
        while not runs or time.monotonic() - started < self.args.writer_seconds:
            runs.append(self.timed(f"{label}-{slug}-{len(runs)}", stages))
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        writer = json.loads(out.decode().strip().splitlines()[-1])
        row = {"p50_ms": writer["p50_ms"], "p99_ms": writer["p99_ms"], "busy": writer["busy"],
               "commits": writer["commits"], "runs": len(runs),
               "wall": statistics.median(r["wall"] for r in runs), "rss": max(r["rss"] for r in runs)}
        log(f"{slug}: {row}")
        return row

    def start(self):
        """The S3 server, and both key pairs made by the agent under test: every agent call
        signs (backup) or verifies (restore) through the environment, as deployed."""
        self.start_s3()
        self.ident = self.work / "identity.txt"
        signing_key = self.work / "signing.key"
        for key in (self.ident, signing_key):
            key.unlink(missing_ok=True)
        printed = subprocess.run([str(self.agent), "keygen", "--out", str(self.ident), "--signing-out",
                                  str(signing_key)], check=True, stdout=subprocess.PIPE, env=self.env).stdout
        public = parse_keygen(printed.decode())
        self.recipient = public["GWB_RECIPIENTS"]
        self.env.update(GWB_VERIFY_KEY=public["GWB_VERIFY_KEY"], GWB_SIGNING_KEY_FILE=str(signing_key))

    def main(self):
        if self.args.contention:
            return self.main_contention()
        if self.args.heavy:
            return self.main_heavy()
        try:
            self.start()
            results = {"machine": machine(self.args) | {"moto_objects": "in memory (/dev/shm)" if str(
                self.moto_tmp).startswith("/dev/shm") else "on disk"}, "sizes": [], "started": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds"), "loadavg_before": os.getloadavg()}
            for label in self.args.sizes:
                results["sizes"].append(self.run_size(label, SIZES.get(label) or parse_size(label)))
            results["loadavg_after"] = os.getloadavg()
        finally:
            self.stop()
        (self.work / "results.json").write_text(json.dumps(results, indent=2))
        text = render(results)
        (self.work / "results.md").write_text(text)
        print(text)
        if self.args.docs:
            chart(results, self.work, ROOT / "docs/benchmarks.png")
            update_docs(ROOT / "docs/benchmarks.md", text)
            log("updated docs/benchmarks.md and docs/benchmarks.png")


    # ------------------------------------------------------------------ heavy users --

    def heavy(self, label, db_size):
        """A heavy user's profile (a database of `db_size`, few attachments): what a backup
        and a blue/green switch cost when Signal's database dominates, beside restic."""
        r = {"label": label}
        summary_file = self.work / f"heavy-{label}.json"
        pristine = self.work / f"heavy-{label}"
        if not (summary_file.exists() and pristine.exists()) or self.args.fresh:
            shutil.rmtree(pristine, ignore_errors=True)
            # make-profile's messages average about 0.95 KiB of database each.
            messages = db_size // 975
            log(f"making a heavy {label} profile: {messages} messages")
            out = subprocess.run(
                ["node", str(ROOT / "tests/node/make-profile.mjs"), str(pristine), "--messages", str(messages),
                 "--attachment-bytes", str(64 * MiB), "--seed", f"heavy-{label}"],
                check=True, stdout=subprocess.PIPE, env=self.env).stdout
            summary_file.write_text(json.dumps({"key": json.loads(out)["key"]}))
        key = json.loads(summary_file.read_text())["key"]
        home = self.work / f"heavy-live-{label}"
        shutil.rmtree(home, ignore_errors=True)
        subprocess.run(["cp", "-a", str(pristine), str(home)], check=True)
        db = home / ".config/Signal/sql/db.sqlite"
        r["db_bytes"] = db.stat().st_size + (db.with_name("db.sqlite-wal").stat().st_size
                                             if db.with_name("db.sqlite-wal").exists() else 0)
        r["home_bytes"] = tree_bytes(home)
        log(f"heavy {label}: database {r['db_bytes'] / MiB:.0f} MiB, home {r['home_bytes'] / MiB:.0f} MiB")
        prefix = f"heavy-{label}"
        self.env.update(GWB_REPO=f"s3://gwb/{prefix}", GWB_STAGING_DIR=str(self.work / "scratch"))
        (self.work / "scratch").mkdir(exist_ok=True)
        catalog = self.work / f"catalog-heavy-{label}.sqlite"
        catalog.unlink(missing_ok=True)
        restic_repo = f"s3:{self.endpoint}/restic/{prefix}"
        self.empty_bucket("gwb", prefix)
        self.empty_bucket("restic", prefix)
        shutil.rmtree(self.work / "restic-cache", ignore_errors=True)
        subprocess.run(["restic", "-r", restic_repo, "init", "--repository-version", "2"], check=True,
                       env=self.env, stdout=subprocess.DEVNULL)
        targets = self.work / "heavy-targets"

        def gwb_backup(name, *extra):
            before = self.bucket_bytes("gwb", prefix)
            out = self.timed(f"{prefix}-gwb-{name}", [[str(self.agent), "backup", "--source", str(home),
                                                         "--recipient", self.recipient, "--catalog", str(catalog),
                                                         *extra]])
            out["uploaded"] = self.bucket_bytes("gwb", prefix) - before
            return out

        def restic_backup(name):
            before = self.bucket_bytes("restic", prefix)
            out = self.timed(f"{prefix}-restic-{name}",
                             [["restic", "-r", restic_repo, "backup", "--quiet", "--host", "bench", "."]], cwd=home)
            out["uploaded"] = self.bucket_bytes("restic", prefix) - before
            return out

        def gwb_restore(name, target, *extra):
            out = self.timed(f"{prefix}-gwb-{name}", [[str(self.agent), "restore", "--identity", str(self.ident),
                                                         "--target", str(target), *extra]])
            return out

        def restic_restore(name):
            shutil.rmtree(targets / "restic", ignore_errors=True)
            out = self.timed(f"{prefix}-restic-{name}", [["restic", "-r", restic_repo, "restore", "latest",
                                                            "--target", str(targets / "restic")]])
            out["sync"] = self.sync(targets)
            out["wall"] += out["sync"]
            return out

        def signal_writes(share):
            out = subprocess.run(["node", str(ROOT / "bench/change-profile.mjs"), str(home), key, "--share",
                                  str(share)], check=True, stdout=subprocess.PIPE, env=self.env).stdout
            time.sleep(1)  # quiet before the stamp, as between scheduled backups
            return json.loads(out)

        shutil.rmtree(targets, ignore_errors=True)
        targets.mkdir()
        # The floors for the database (page cache warm, as for the backups that follow): reading
        # its file once; reading and hashing it (OpenSSL's SHA-256 uses SHA-NI; coreutils'
        # sha256sum does not); and moving its bytes through this S3 server, up and down, with
        # the AWS CLI's transfer settings: what no tool that reads and uploads it can beat.
        r["floor_read"] = self.timed(f"{prefix}-floor-read", [["cat", str(db)]], stdout="/dev/null")
        r["floor_read_hash"] = self.timed(f"{prefix}-floor-sha256", [["openssl", "dgst", "-sha256", str(db)]])
        s3pipe = [sys.executable, str(ROOT / "bench/s3pipe.py")]
        self.empty_bucket("physical", prefix)
        r["floor_put"] = self.timed(f"{prefix}-floor-put", [["cat", str(db)],
                                                            [*s3pipe, "put", "physical", f"{prefix}/db"]])
        r["floor_get"] = self.timed(f"{prefix}-floor-get", [[*s3pipe, "get", "physical", f"{prefix}/db"], ["cat"]],
                                    stdout="/dev/null")
        self.empty_bucket("physical", prefix)
        r["gwb_full"] = gwb_backup("full")
        r["restic_full"] = restic_backup("full")
        first = json.loads(subprocess.run([str(self.agent), "snapshots", "--json"], check=True,
                                          stdout=subprocess.PIPE, env=self.env).stdout)[0]["id"]
        time.sleep(1)
        r["gwb_unchanged"] = gwb_backup("unchanged")
        r["restic_unchanged"] = restic_backup("unchanged")
        r["change"] = signal_writes(0.01)
        r["gwb_changed"] = gwb_backup("changed")
        r["restic_changed"] = restic_backup("changed")
        # The newest snapshot now rebuilds the database from the full copy and a delta.
        r["gwb_restore_chain"] = gwb_restore("restore-chain", targets / "fresh", "--snapshot", "latest")
        shutil.rmtree(targets / "fresh")
        r["restic_restore"] = restic_restore("restore")
        # restore --update: a volume at the first snapshot, brought to the newest.
        gwb_restore("prestage", targets / "green", "--snapshot", first)
        r["gwb_update"] = gwb_restore("update", targets / "green", "--update", "--snapshot", "latest")
        # The switch: blue's Signal wrote a little more; blue's final snapshot, then green's
        # catch-up from the pre-staged volume (restore --update, gate included).
        r["switch_change"] = signal_writes(0.001)
        r["gwb_final"] = gwb_backup("final", "--final")
        r["gwb_catch_up"] = gwb_restore("catch-up", targets / "green", "--update", "--snapshot", "latest")
        r["restic_final"] = restic_backup("final")
        r["restic_switch_restore"] = restic_restore("switch-restore")
        shutil.rmtree(targets, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        self.empty_bucket("gwb", prefix)
        self.empty_bucket("restic", prefix)
        return r

    def main_heavy(self):
        try:
            self.start()
            load_before = os.getloadavg()
            results = [self.heavy(label, SIZES.get(label) or parse_size(label)) for label in self.args.heavy]
            load_after = os.getloadavg()
        finally:
            self.stop()
        (self.work / "heavy.json").write_text(json.dumps(results, indent=2))
        text = render_heavy(results, load_before, load_after, server_name(self.args))
        print(text)
        if self.args.docs:
            begin, end = (HEAVY_BEGIN, HEAVY_END) if self.args.server == "moto" else (HEAVY_S3S_BEGIN, HEAVY_S3S_END)
            update_docs(ROOT / "docs/benchmarks.md", text, begin, end)
            log("updated docs/benchmarks.md (heavy users)")

    def main_contention(self):
        try:
            self.start()
            load_before = os.getloadavg()
            results = [self.contention(label, SIZES.get(label) or parse_size(label)) for label in self.args.sizes]
        finally:
            self.stop()
        print(f"\nSignal's writer during backups (p99 ratio: the stock pipeline's p99 / this one's; "
              f"> 1 is better than stock). {os.cpu_count()} CPUs, load before {load_before[0]:.1f}.")
        for r in results:
            rows = r["contention"]
            stock = rows["stock pipeline"]
            print(f"\n{r['label']} ({r['profile']['bytes'] / MiB:.0f} MiB home)\n")
            print("| backup | writer p50 | writer p99 | p99 ratio vs stock | SQLITE_BUSY | backup wall | peak RSS |")
            print("|---|---|---|---|---|---|---|")
            for name, row in rows.items():
                print(f"| {name} | {row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms | "
                      f"{stock['p99_ms'] / row['p99_ms']:.2f} | {row['busy']} | {row['wall']:.2f} s | "
                      f"{row['rss'] / MiB:.0f} MiB |")
        (self.work / "contention.json").write_text(json.dumps(results, indent=2))


def median_of(runs):
    """The median wall time of the rounds, the highest peak RSS, the first round's bytes."""
    out = dict(runs[0])
    out["wall"] = statistics.median(r["wall"] for r in runs)
    out["walls"] = [round(r["wall"], 3) for r in runs]
    out["rss"] = max(r["rss"] for r in runs)
    return out


def tree_bytes(root):
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            if os.path.isfile(path) and not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def attachment_stats(root):
    """(files, bytes) under every attachments.noindex below root."""
    files = size = 0
    for dirpath, _, names in os.walk(root):
        if "attachments.noindex" in Path(dirpath).parts:
            for name in names:
                files += 1
                size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


def version(argv):
    try:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False).stdout.decode()
        return out.strip().splitlines()[0]
    except OSError:
        return "?"


def machine(args):
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    fs = subprocess.run(["df", "--output=fstype", args.workdir], stdout=subprocess.PIPE).stdout.decode().split()[-1]
    return {
        "cpu": f"{os.cpu_count()} × {cpu}",
        "memory_gib": round(mem / (1 << 20), 1),
        "kernel": platform.release(),
        "filesystem": fs,
        "ghostwire-backup": version([args.agent, "--version"]),
        "restic": version(["restic", "version"]),
        "zstd": version(["zstd", "--version"]).strip("* ").split(",")[0],
        "age": version(["age", "--version"]),
        "tar": version(["tar", "--version"]),
        "node": version(["node", "--version"]),
        "moto": server_name(args),
    }


def server_name(args):
    """The S3 server and its version, as the reports name it."""
    if args.server == "s3s-fs":
        return "s3s-fs " + S3S_FS_VERSION
    return "moto " + version([str(Path(args.moto).with_name("python")), "-c", "import moto; print(moto.__version__)"])


# ---------------------------------------------------------------------- report --

ROWS = [
    ("ghostwire-backup", "backup", "gwb_backup", "gwb_backup"),
    ("stock tar│zstd│age│upload", "backup", "stock_backup", "gwb_backup"),
    ("restic", "backup", "restic_backup", "gwb_backup"),
    ("ghostwire-backup", "restore", "gwb_restore", "gwb_restore"),
    ("stock download│age│zstd│tar", "restore", "stock_restore", "gwb_restore"),
    ("restic", "restore", "restic_restore", "gwb_restore"),
    ("ghostwire-backup", "backup, 1% changed", "gwb_changed", "gwb_changed"),
    ("restic", "backup, 1% changed", "restic_changed", "gwb_changed"),
    ("ghostwire-backup", "backup, unchanged", "gwb_unchanged", "gwb_unchanged"),
    ("restic", "backup, unchanged", "restic_unchanged", "gwb_unchanged"),
    ("ghostwire-backup", "restore after both (a chain of 3)", "gwb_restore_chain", "gwb_restore_chain"),
    ("restic", "restore after both", "restic_restore_chain", "gwb_restore_chain"),
    ("physical: tar → /dev/null", "read the home", "tar_null", "gwb_backup"),
    ("physical: one object up", "S3 PUT (archive size)", "s3_put", "gwb_backup"),
    ("physical: one object down", "S3 GET (archive size)", "s3_get", "gwb_restore"),
]


def mib(n):
    return f"{n / MiB:.1f}"


def targets(s):
    w = s["writer"]
    g = lambda k: s[k]["wall"]  # noqa: E731
    rows = [
        ("full backup at least as fast as the stock pipeline", g("stock_backup") / g("gwb_backup") >= 1,
         f"stock/gwb = {g('stock_backup') / g('gwb_backup'):.2f}×"),
        ("full backup ≥ 2× restic", g("restic_backup") / g("gwb_backup") >= 2,
         f"restic/gwb = {g('restic_backup') / g('gwb_backup'):.2f}×"),
        ("restore ≥ 1.5× restic", g("restic_restore") / g("gwb_restore") >= 1.5,
         f"restic/gwb = {g('restic_restore') / g('gwb_restore'):.2f}×"),
        ("backup peak RSS ≤ 64 MiB", max(s["gwb_backup"]["rss"], w["backup_rss"]) <= 64 * MiB,
         f"{mib(max(s['gwb_backup']['rss'], w['backup_rss']))} MiB"),
        ("restore peak RSS ≤ 64 MiB", s["gwb_restore"]["rss"] <= 64 * MiB, f"{mib(s['gwb_restore']['rss'])} MiB"),
        ("writer p99 during backup ≤ 2× idle p99", w["during"]["p99_ms"] <= 2 * w["idle"]["p99_ms"],
         f"{w['during']['p99_ms']:.1f} ms vs {w['idle']['p99_ms']:.1f} ms idle "
         f"({w['during']['p99_ms'] / w['idle']['p99_ms']:.2f}×)"),
        ("zero SQLITE_BUSY for the writer", w["during"]["busy"] == 0 and w["idle"]["busy"] == 0,
         f"{w['during']['busy']} during, {w['idle']['busy']} idle"),
    ]
    return rows


def render(results):
    m = results["machine"]
    out = [f"Run of {results['started']} on {m['cpu']}, {m['memory_gib']} GiB RAM, Linux {m['kernel']}, "
           f"{m['filesystem']}; load average {results['loadavg_before'][0]:.2f} before, "
           f"{results['loadavg_after'][0]:.2f} after (the machine is shared: see below). "
           f"{m['ghostwire-backup']}; {m['restic']}; {m['zstd']}; age {m['age']}; {m['tar']}; node {m['node']}; "
           f"{m['moto']} (objects {m['moto_objects']}).", ""]
    for s in results["sizes"]:
        p = s["profile"]
        out += [f"### {s['label']}: home of {mib(p['bytes'])} MiB — {p['files']} attachment files "
                f"({mib(p['attachmentBytes'])} MiB), {p['messages']} messages, database {mib(p['db_bytes'])} MiB", ""]
        out += ["| tool | operation | wall s | time ÷ ghostwire-backup's | MiB/s | uploaded MiB | peak RSS MiB |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for tool, op, key, ref in ROWS:
            x = s[key]
            ratio = x["wall"] / s[ref]["wall"]
            runs = "" if len(x.get("walls", [])) < 2 else f" (median of {len(x['walls'])})"
            up = mib(x["uploaded"]) if "uploaded" in x else "—"
            out.append(f"| {tool} | {op} | {x['wall']:.2f}{runs} | {ratio:.2f} | {p['bytes'] / MiB / x['wall']:.0f} "
                       f"| {up} | {mib(x['rss'])} |")
        w = s["writer"]
        out += ["", "Writer (writer.mjs, Signal's driver, one message per transaction, synchronous=FULL):", "",
                "| | commits | p50 ms | p99 ms | max ms | SQLITE_BUSY | checkpoints blocked |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for name, v in (("idle", w["idle"]), (f"during {w['backups']} backup(s)", w["during"]),
                        ("idle again, after", w["idle_after"])):
            out.append(f"| {name} | {v['commits']} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['max_ms']:.1f} "
                       f"| {v['busy']} | {v['checkpointBusy']} |")
        out += ["", "| target | met? | measured |", "|---|---|---|"]
        out += [f"| {name} | {'**met**' if ok else '**not met**'} | {why} |" for name, ok, why in targets(s)]
        out.append("")
    return "\n".join(out)


def update_docs(path, text, begin=MARK_BEGIN, end=MARK_END):
    doc = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in doc or end not in doc:
        doc += f"\n{begin}\n{end}\n"
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def render_heavy(results, load_before, load_after, server):
    flag = "" if server.startswith("moto") else " --server s3s-fs"
    out = [f"Heavy users (`bench/run.sh --heavy {','.join(r['label'] for r in results)}{flag}`), {server}, run of "
           f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, load average "
           f"{load_before[0]:.2f} before, {load_after[0]:.2f} after. Ratios: restic's time ÷ ghostwire-backup's "
           f"(> 1: ghostwire-backup is faster).", ""]
    for r in results:
        db = r["db_bytes"]
        out += [f"#### Database {mib(db)} MiB (home {mib(r['home_bytes'])} MiB)", "",
                "| operation | ghostwire-backup s | uploaded MiB (% of DB) | restic s | uploaded MiB | restic ÷ gwb |",
                "|---|---:|---:|---:|---:|---:|"]
        for name, g, t in (("full backup", "gwb_full", "restic_full"),
                           ("backup, nothing changed", "gwb_unchanged", "restic_unchanged"),
                           (f"backup after 1% new messages ({r['change']['textMessages']} new, "
                            f"{r['change']['added']} replaced with their files)", "gwb_changed", "restic_changed")):
            x, y = r[g], r[t]
            out.append(f"| {name} | {x['wall']:.2f} | {mib(x['uploaded'])} ({100 * x['uploaded'] / db:.2f}%) | "
                       f"{y['wall']:.2f} | {mib(y['uploaded'])} | {y['wall'] / x['wall']:.2f} |")
        for name, g, t in (("restore of the newest snapshot (full copy + delta) into an empty volume",
                            "gwb_restore_chain", "restic_restore"),
                           ("`restore --update` from the first snapshot to the newest (restic: a full restore)",
                            "gwb_update", "restic_restore")):
            x, y = r[g], r[t]
            out.append(f"| {name} | {x['wall']:.2f} | — | {y['wall']:.2f} | — | {y['wall'] / x['wall']:.2f} |")
        out.append(f"| peak RSS, MiB: full backup / restore / final snapshot / catch-up | "
                   f"{mib(r['gwb_full']['rss'])} / {mib(r['gwb_restore_chain']['rss'])} / "
                   f"{mib(r['gwb_final']['rss'])} / {mib(r['gwb_catch_up']['rss'])} | — | "
                   f"{mib(r['restic_full']['rss'])} / {mib(r['restic_restore']['rss'])} | — | — |")
        if "floor_put" in r:
            out.append(f"| floor: reading the database file once (`cat`) / and hashing it (`openssl dgst "
                       f"-sha256`) | {r['floor_read']['wall']:.2f} / {r['floor_read_hash']['wall']:.2f} "
                       f"| — | — | — | — |")
            out.append(f"| floor: the database's bytes up / down as one object (boto3, the AWS CLI's "
                       f"settings) | {r['floor_put']['wall']:.2f} / {r['floor_get']['wall']:.2f} "
                       f"| {mib(r['db_bytes'])} | — | — | — |")
        gwb_switch = r["gwb_final"]["wall"] + r["gwb_catch_up"]["wall"]
        restic_switch = r["restic_final"]["wall"] + r["restic_switch_restore"]["wall"]
        out.append(f"| **switch downtime**: final snapshot {r['gwb_final']['wall']:.2f} s + green's catch-up "
                   f"and gate {r['gwb_catch_up']['wall']:.2f} s (restic: backup + full restore) | "
                   f"{gwb_switch:.2f} | {mib(r['gwb_final']['uploaded'])} | {restic_switch:.2f} | "
                   f"{mib(r['restic_final']['uploaded'])} | {restic_switch / gwb_switch:.2f} |")
        out.append("")
    return "\n".join(out)


def chart(results, work, png):
    """Throughput and peak RSS per tool (backup and restore), one group per size."""
    data = work / "chart.dat"
    lines = []
    titles = " ".join(f"{s['label']}-backup {s['label']}-restore" for s in results["sizes"])
    tools = [("ghostwire-backup", "gwb"), ("stock-pipeline", "stock"), ("restic", "restic")]
    for kind in ("thr", "rss"):
        for name, k in tools:
            vals = []
            for s in results["sizes"]:
                for op in ("backup", "restore"):
                    x = s[f"{k}_{op}"]
                    vals.append(s["profile"]["bytes"] / MiB / x["wall"] if kind == "thr" else x["rss"] / MiB)
            lines.append(f"{kind}-{name} " + " ".join(f"{v:.2f}" for v in vals))
    data.write_text("\n".join(lines) + "\n")
    ncol = 2 * len(results["sizes"])
    script = f"""
set terminal pngcairo size 960,380 font 'sans,9'
set output '{png}'
set multiplot layout 1,2
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left font 'sans,8'
set yrange [0:*]
set xrange [-0.6:{len(tools) - 0.4}]
set title 'Throughput (home bytes / wall time), higher is better'
set ylabel 'MiB/s'
plot for [i=2:{ncol + 1}] '< grep "^thr-" {data}' using i:xtic(stringcolumn(1)[5:]) title word('{titles}', i - 1)
set title 'Peak RSS (pipeline: sum of stages), lower is better'
set key top left
set ylabel 'MiB'
set arrow 1 from graph 0, first 64 to graph 1, first 64 nohead dt 2 lc rgb 'red'
set label 1 '64 MiB' at graph 0.01, first 64 left offset 0, 0.6 textcolor rgb 'red' font 'sans,8'
plot for [i=2:{ncol + 1}] '< grep "^rss-" {data}' using i:xtic(stringcolumn(1)[5:]) title word('{titles}', i - 1)
unset multiplot
"""
    (work / "chart.gp").write_text(script)
    subprocess.run(["gnuplot", str(work / "chart.gp")], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256M", help="comma-separated: 256M, 2G or any size (default 256M)")
    parser.add_argument("--workdir", default=os.environ.get("GWB_BENCH_DIR", "/var/tmp/ghostwire-bench"))
    parser.add_argument("--repeat", type=int, default=3, help="runs of each full backup/restore; the median counts")
    parser.add_argument("--writer-seconds", type=int, default=20)
    parser.add_argument("--fresh", action="store_true", help="make the profiles again even if the workdir has them")
    parser.add_argument("--no-docs", dest="docs", action="store_false",
                        help="leave docs/benchmarks.md and docs/benchmarks.png alone")
    parser.add_argument("--contention", action="store_true",
                        help="only Signal's writer against the stock pipeline and ghostwire-backup at 1/2/8 threads")
    parser.add_argument("--heavy", default="",
                        help="only the heavy-user run: comma-separated database sizes, e.g. 512M,1G")
    parser.add_argument("--agent", default=str(ROOT / "target/release/ghostwire-backup"))
    parser.add_argument("--moto", default=str(ROOT / ".venv-s3/bin/moto_server"))
    parser.add_argument("--server", choices=["moto", "s3s-fs"], default="moto",
                        help="the S3 server every tool uses (s3s-fs: a lighter one, in Rust; bench/run.sh installs it)")
    parser.add_argument("--s3s-fs", default=str(Path(os.environ.get("GWB_BENCH_TOOLS", "/var/tmp/ghostwire-bench/tools"))
                                                / "bin/s3s-fs"))
    args = parser.parse_args()
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.heavy = [s.strip() for s in args.heavy.split(",") if s.strip()]
    bench = Bench(args)
    try:
        bench.main()
    except KeyboardInterrupt:
        bench.stop()
        sys.exit(130)


if __name__ == "__main__":
    main()
