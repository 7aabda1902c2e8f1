"""Listing many snapshots (issue 22, item 11): how long `snapshots` takes, and how long a
daemon (`run`) takes to answer /startupz 200, with N signed snapshots on a real S3 server
(moto on 127.0.0.1).

    .venv-s3/bin/python bench/many_snapshots.py --agent target/debug/ghostwire-backup --count 1000

One real backup of a small home (no Signal profile, --allow-no-signal) makes the first
snapshot, the repository's id and manifests.json; the other N-1 are its manifest under
older ids, each signed with the same signing key by the stock `minisign` tool, naming the
repository as the agent does (docs/format.md), uploaded with boto3, and added to a
manifests.json signed the same way (--no-list: left out of it, as in a repository from
before the list). Their archives are not copied: listing reads manifests and signatures
only. Prints the figures; asserts only that every snapshot is listed.
"""

import argparse
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3

BUCKET = "bench"
PREFIX = "many"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(venv_bin):
    port = free_port()
    proc = subprocess.Popen(
        [os.path.join(venv_bin, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.time() > deadline:
                sys.exit("moto did not start")
            time.sleep(0.1)


def agent_env(endpoint, keys):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GWB_", "AWS_"))}
    env.update(
        GWB_REPO=f"s3://{BUCKET}/{PREFIX}",
        GWB_S3_ENDPOINT=endpoint,
        GWB_S3_PATH_STYLE="true",
        GWB_S3_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_EC2_METADATA_DISABLED="true",
        GWB_SIGNING_KEY_FILE=keys["signing"],
        GWB_VERIFY_KEY=keys["verify"],
        GWB_LOG="warn",
    )
    return env


def keygen(agent, work):
    out = subprocess.run(
        [agent, "keygen", "--out", f"{work}/identity.txt", "--signing-out", f"{work}/signing.key"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {
        "signing": f"{work}/signing.key",
        "verify": values["GWB_VERIFY_KEY"],
        "recipient": values["GWB_RECIPIENTS"],
    }


def first_snapshot(agent, env, work, recipient):
    home = f"{work}/home"
    os.makedirs(f"{home}/.config", exist_ok=True)
    with open(f"{home}/.config/notes.txt", "w") as f:
        f.write("a small home\n")
    return subprocess.run(
        [agent, "backup", "--source", home, "--recipient", recipient,
         "--staging-dir", f"{work}/staging", "--allow-no-signal"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout.strip()


def get_json(s3, key):
    return json.loads(s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}")["Body"].read())


def sign(work, signing_key, data, comment):
    path = f"{work}/signed"
    with open(path, "wb") as f:
        f.write(data)
    subprocess.run(
        ["minisign", "-S", "-s", signing_key, "-m", path, "-t", comment, "-x", f"{path}.minisig"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, input=b"",
    )
    with open(f"{path}.minisig") as f:
        return f.read()


def list_manifests(s3, work, signing_key, planted):
    """manifests.json as the backup side writes it: the real backup's list plus every
    planted manifest, signed over its compact JSON (serde's field order) naming the
    repository."""
    repository = get_json(s3, "repository.json")["id"]
    record = get_json(s3, "manifests.json")
    entries = dict(record["entries"])
    for new_id, text, signature in planted:
        entries[new_id] = {
            "manifest": text,
            "manifest_size": len(text.encode()),
            "signature_size": len(signature.encode()),
        }
    unsigned = {"written_at": record["written_at"], "entries": dict(sorted(entries.items()))}
    data = json.dumps(unsigned, separators=(",", ":"), ensure_ascii=False).encode()
    unsigned["signature"] = sign(work, signing_key, data,
                                 f"ghostwire-backup manifests.json in repository {repository}")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/manifests.json", Body=json.dumps(unsigned).encode())


def plant(s3, work, signing_key, base_id, count, with_list):
    """count-1 copies of the base manifest under older ids, each signed for its name."""
    base = get_json(s3, f"snapshots/{base_id}.json")
    repository = get_json(s3, "repository.json")["id"]
    taken = datetime.datetime.strptime(base_id.split("-")[0], "%Y%m%dT%H%M%S.%fZ")
    text = json.dumps(base)
    planted = []
    for n in range(1, count):
        at = taken - datetime.timedelta(minutes=n)
        new_id = at.strftime("%Y%m%dT%H%M%S.") + f"{at.microsecond // 1000:03d}Z-{n:08x}"
        manifest = json.dumps(json.loads(text.replace(base_id, new_id)), indent=2) + "\n"
        comment = f"ghostwire-backup snapshots/{new_id}.json in repository {repository}"
        signature = sign(work, signing_key, manifest.encode(), comment)
        for ending, body in (("json.minisig", signature), ("json", manifest)):
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/snapshots/{new_id}.{ending}", Body=body.encode())
        planted.append((new_id, manifest, signature))
    if with_list:
        list_manifests(s3, work, signing_key, planted)


def time_snapshots(agent, env):
    start = time.monotonic()
    out = subprocess.run([agent, "snapshots", "--json"], check=True, capture_output=True, env=env).stdout
    return time.monotonic() - start, len(json.loads(out))


def time_startupz(agent, env, work):
    port = free_port()
    env = dict(env, GWB_LEASE_OWNER="bench-0", GWB_SOURCE=f"{work}/home", GWB_RECIPIENTS=env["BENCH_RECIPIENT"],
               GWB_STAGING_DIR=f"{work}/staging-run", GWB_SCHEDULE="0 0 1 1 *",
               GWB_LISTEN=f"127.0.0.1:{port}", GWB_FINAL_SNAPSHOT="false", GWB_ALLOW_NO_SIGNAL="true")
    start = time.monotonic()
    proc = subprocess.Popen([agent, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/startupz", timeout=5) as answer:
                    if answer.status == 200:
                        return time.monotonic() - start
            except OSError:
                pass
            if proc.poll() is not None:
                sys.exit(f"run exited with {proc.returncode} before /startupz answered 200")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-list", action="store_true",
                        help="leave the planted manifests out of manifests.json (as before it existed)")
    args = parser.parse_args()
    agent = os.path.abspath(args.agent)
    venv_bin = os.path.dirname(sys.executable)
    moto, endpoint = start_moto(venv_bin)
    try:
        with tempfile.TemporaryDirectory() as work:
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
            s3.create_bucket(Bucket=BUCKET)
            keys = keygen(agent, work)
            env = agent_env(endpoint, keys)
            env["BENCH_RECIPIENT"] = keys["recipient"]
            base_id = first_snapshot(agent, env, work, keys["recipient"])
            started = time.monotonic()
            plant(s3, work, keys["signing"], base_id, args.count, not args.no_list)
            print(f"planted {args.count - 1} signed manifests in {time.monotonic() - started:.1f} s")
            for run in range(args.repeat):
                seconds, listed = time_snapshots(agent, env)
                print(f"snapshots: {seconds:.2f} s ({listed} listed)")
                assert listed == args.count, f"listed {listed}, expected {args.count}"
            for run in range(args.repeat):
                print(f"run: /startupz 200 after {time_startupz(agent, env, work):.2f} s")
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
