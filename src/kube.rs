//! The one Kubernetes API call the agent makes: the sidecar deleting its own pod when
//! another instance took the lease over ([`crate::lease::Fence`]). A Signal container the
//! kubelet restarts in the same pod skips every gate (a native sidecar's startupProbe is
//! not consulted again), so only a new pod — which goes back through its `restore` init
//! container, refusing while the other owner holds the lease — keeps Signal down for good.
//!
//! In-cluster configuration only, as every pod has it: `KUBERNETES_SERVICE_HOST` and
//! `KUBERNETES_SERVICE_PORT`, and the ServiceAccount's token and `ca.crt` under
//! `/var/run/secrets/kubernetes.io/serviceaccount` (`--kube-serviceaccount-dir`). The
//! deploy side grants a Role allowing `delete` on exactly this pod's name. The token is read
//! for each call: projected tokens are rotated by the kubelet.
//!
//! One request on one connection (hyper's HTTP/1 client over rustls, both already built for
//! the AWS SDK), verified against the cluster's CA only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Where Kubernetes mounts a pod's ServiceAccount token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How long one API call may take, connection and TLS included.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// This pod and the API server that can delete it.
#[derive(Debug, Clone)]
pub struct OwnPod {
    pub namespace: String,
    pub name: String,
    host: String,
    port: u16,
    service_account: PathBuf,
}

impl OwnPod {
    /// From the pod's environment: `Ok(None)` outside a cluster (no
    /// `KUBERNETES_SERVICE_HOST`) or without the pod's name and namespace; an error when the
    /// API is announced but unusable.
    pub fn from_env(
        namespace: Option<&str>,
        name: Option<&str>,
        service_account: &Path,
    ) -> Result<Option<Self>> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
        let (Some(namespace), Some(name), false) = (namespace, name, host.is_empty()) else {
            return Ok(None);
        };
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .unwrap_or_else(|_| "443".into())
            .parse()
            .context("KUBERNETES_SERVICE_PORT is not a port number")?;
        Ok(Some(Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            host,
            port,
            service_account: service_account.to_path_buf(),
        }))
    }

    /// `DELETE /api/v1/namespaces/{namespace}/pods/{name}`. A pod already gone (404) or
    /// being deleted counts as done.
    pub async fn delete(&self) -> Result<()> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_delete())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {CALL_TIMEOUT:?}"))?
            .with_context(|| {
                format!(
                    "cannot delete pod {}/{} through the Kubernetes API at {}:{}",
                    self.namespace, self.name, self.host, self.port
                )
            })
    }

    async fn call_delete(&self) -> Result<()> {
        let token = std::fs::read_to_string(self.service_account.join("token"))
            .context("cannot read the ServiceAccount token (is it mounted?)")?;
        let stream = self.connect().await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::delete(format!(
            "/api/v1/namespaces/{}/pods/{}",
            self.namespace, self.name
        ))
        .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()),
        )
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        if status.is_success() || status == hyper::StatusCode::NOT_FOUND {
            return Ok(());
        }
        let body = response.into_body().collect().await?.to_bytes();
        let said = String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
        bail!(
            "the API answered {status}: {said}{}",
            if status == hyper::StatusCode::FORBIDDEN {
                " (the pod's ServiceAccount needs a Role allowing `delete` on pods named \
                 after this pod: see docs/kubernetes.md, \"Lease loss\")"
            } else {
                ""
            }
        )
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let ca = self.service_account.join("ca.crt");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca)
            .with_context(|| format!("cannot read the cluster's CA {}", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("{} is not PEM", ca.display()))?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(self.host.clone())
            .with_context(|| format!("{} is not a host name or address", self.host))?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        Ok(tls.connect(server_name, tcp).await?)
    }
}
