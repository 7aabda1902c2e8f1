//! A stand-in for the Kubernetes API server on 127.0.0.1: no cluster exists on the machines
//! these tests run on. It speaks HTTPS with a certificate from a CA of its own (the
//! ServiceAccount's `ca.crt`, as in a pod), checks the bearer token, and answers a `DELETE`
//! of a pod as the API does (200 with the Pod), writing each request it got to a log, so a
//! test can wait for the sidecar's call and then play the kubelet's part itself. It does
//! not stop any process: the test does that, in the kubelet's order.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::{Part, Spawned, TestCommand, require, wait_for};

pub struct KubeApi {
    _process: Spawned,
    pub port: u16,
    /// What a pod finds at /var/run/secrets/kubernetes.io/serviceaccount.
    pub service_account: PathBuf,
    log: PathBuf,
}

impl KubeApi {
    pub fn start(dir: &Path) -> Self {
        let dir = dir.join("kube-api");
        let service_account = dir.join("serviceaccount");
        std::fs::create_dir_all(&service_account).unwrap();
        make_certificates(&dir, &service_account);
        std::fs::write(
            service_account.join("token"),
            "stand-in-service-account-token\n",
        )
        .unwrap();
        let script = dir.join("kube_api.py");
        std::fs::write(&script, KUBE_API).unwrap();
        let port_file = dir.join("port");
        let log = dir.join("requests.log");
        let python = require(Part::Moto).with_file_name("python");
        let process = TestCommand::new(python)
            .arg(&script)
            .arg(&port_file)
            .arg(&dir)
            .arg(service_account.join("token"))
            .arg(&log)
            .spawn(Stdio::null(), Stdio::inherit());
        let port = wait_for(
            "the Kubernetes API stand-in to listen",
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(&port_file)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            },
        );
        Self {
            _process: process,
            port,
            service_account,
            log,
        }
    }

    /// Makes `agent` a container of the pod `namespace/pod` in cluster `cluster` that can
    /// reach this API (KUBERNETES_SERVICE_HOST/PORT, the ServiceAccount directory).
    pub fn configure(&self, agent: &mut TestCommand, cluster: &str, namespace: &str, pod: &str) {
        agent
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", self.port.to_string())
            .env("GWB_KUBE_SERVICEACCOUNT_DIR", &self.service_account)
            .env("GWB_CLUSTER_ID", cluster)
            .env("GWB_POD_NAMESPACE", namespace)
            .env("GWB_POD_NAME", pod);
    }

    /// Every request so far, one line each: `METHOD PATH authorized|unauthorized`.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A CA (the ServiceAccount's ca.crt) and a server certificate it signed for 127.0.0.1.
fn make_certificates(dir: &Path, service_account: &Path) {
    TestCommand::new("bash")
        .arg("-c")
        .arg(
            "set -euo pipefail; cd \"$1\"
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
                -subj /CN=stand-in-cluster-ca -keyout ca.key -out ca.crt 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -subj /CN=kubernetes -keyout server.key -out server.csr 2>/dev/null
            printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
                -extfile ext -out server.crt 2>/dev/null
            cp ca.crt \"$2\"/ca.crt",
        )
        .arg("sh")
        .arg(dir)
        .arg(service_account)
        .ok();
}

const KUBE_API: &str = r#"
import http.server, json, ssl, sys

port_file, certs, token_file, log = sys.argv[1:5]
token = open(token_file).read().strip()

class Api(http.server.BaseHTTPRequestHandler):
    def do_DELETE(self):
        authorized = self.headers.get("Authorization") == "Bearer " + token
        with open(log, "a") as out:
            out.write(f"{self.command} {self.path} {'authorized' if authorized else 'unauthorized'}\n")
        parts = self.path.split("/")
        if not authorized:
            self.answer(401, {"kind": "Status", "status": "Failure", "code": 401})
        elif len(parts) == 7 and parts[1:4] == ["api", "v1", "namespaces"] and parts[5] == "pods":
            self.answer(200, {"kind": "Pod", "apiVersion": "v1",
                              "metadata": {"namespace": parts[4], "name": parts[6],
                                           "deletionTimestamp": "now"}})
        else:
            self.answer(404, {"kind": "Status", "status": "Failure", "code": 404})

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(f"{certs}/server.crt", f"{certs}/server.key")
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as out:
    out.write(str(server.server_address[1]))
import os; os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"#;
