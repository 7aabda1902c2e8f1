//! A repository in an S3 bucket (AWS, or any S3-compatible server through `--s3-endpoint`
//! and path-style addressing). Credentials come from the AWS default chain: environment,
//! web identity (IRSA on EKS), profile files, instance metadata.
//!
//! Every object goes up with one PUT (an archive as several, [`crate::parts`]) carrying
//! its CRC32, so S3 checks its bytes as it receives them: an object damaged on the way is
//! refused and sent again, not found at the next restore. Throttling, 5xx and
//! timeouts are retried by the SDK's standard retry strategy with exponential backoff; a
//! download whose connection drops mid-body resumes from where it stopped
//! ([`super::resume`]). Errors S3 answers with (no such bucket, access denied, a wrong
//! key) are turned into a sentence that says what to fix.

use std::time::Duration;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockMode};
use aws_smithy_http_client::tls;
use bytes::Bytes;

use super::resume::ResumingReader;
use super::{
    ObjectInfo, ObjectReader, Result, Retention, Store, StoreError, Unavailability, Unavailable,
    check_key, read_bounded, too_large,
};

/// How to reach the bucket; everything else comes from the AWS default chain.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// A custom endpoint such as `http://127.0.0.1:9000` (MinIO, Ceph, R2, moto).
    pub endpoint: Option<String>,
    /// Region; when unset, AWS_REGION or AWS_DEFAULT_REGION, else `us-east-1` (never the
    /// instance-metadata probe).
    pub region: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
    pub path_style: bool,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Parts uploaded at once; with the part size this bounds upload memory.
    pub parallel_parts: usize,
    /// S3 Object Lock retention for objects put with [`Retention::Retain`] (the parts of a
    /// snapshot), on a bucket with Object Lock.
    pub object_lock: Option<ObjectLock>,
}

#[derive(Debug, Clone)]
pub struct ObjectLock {
    /// GOVERNANCE or COMPLIANCE.
    pub mode: ObjectLockMode,
    pub days: u32,
}

pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    parallel_parts: usize,
    object_lock: Option<ObjectLock>,
}

/// Content-MD5, which S3 requires on every upload that carries a retention period.
fn content_md5(data: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

/// An object's CRC32 as S3 expects it in `x-amz-checksum-crc32`: base64 of the big-endian
/// value.
fn crc32(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(crc32fast::hash(data).to_be_bytes())
}

/// The region when neither --s3-region nor AWS_REGION says (README: "else us-east-1").
const DEFAULT_REGION: &str = "us-east-1";

fn env_region(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|region| !region.is_empty())
}

impl S3Store {
    pub async fn connect(bucket: &str, prefix: &str, options: &S3Options) -> anyhow::Result<Self> {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client);
        // Always a region of our own choosing: left to the SDK, a missing one makes its
        // region chain probe instance metadata, which off EC2 means seconds of timeouts
        // and kilobytes of warnings before every command.
        let region = options
            .region
            .clone()
            .or_else(|| env_region("AWS_REGION"))
            .or_else(|| env_region("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        loader = loader.region(aws_config::Region::new(region));
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.path_style)
            // The SDK's default CRC trailers use aws-chunked uploads, which many S3-compatible
            // servers store or reject wrongly. Upload parts carry a CRC32 we compute ourselves
            // (`part_crc32`), sent as a plain header; end to end, integrity is ours anyway
            // (the manifest's SHA-256 and age's authentication).
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(options.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(10)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(60))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            );
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(Self {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            parallel_parts: options.parallel_parts.max(1),
            object_lock: options.object_lock.clone(),
        })
    }

    fn object_key(&self, key: &str) -> Result<String> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    /// The Object Lock settings for a new object, if it is to be retained and the bucket
    /// is configured for it: (mode, retain until).
    fn object_lock(
        &self,
        retention: Retention,
    ) -> Option<(ObjectLockMode, aws_sdk_s3::primitives::DateTime)> {
        let lock = self
            .object_lock
            .as_ref()
            .filter(|_| retention == Retention::Retain)?;
        let until = chrono::Utc::now() + chrono::Duration::days(lock.days.into());
        Some((
            lock.mode.clone(),
            aws_sdk_s3::primitives::DateTime::from_secs(until.timestamp()),
        ))
    }

    /// Wraps a download so that a connection dropped while the body streams is resumed
    /// from the bytes already read (the SDK only retries a request that fails before its
    /// answer), asking for the same version (`etag`) each time.
    fn resuming(
        &self,
        object: String,
        key: &str,
        first: ObjectReader,
        offset: u64,
        etag: Option<String>,
    ) -> ObjectReader {
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), key.to_string());
        Box::new(ResumingReader::new(
            self.describe(&object),
            first,
            offset,
            move |at| {
                let (client, bucket, object, key, etag) = (
                    client.clone(),
                    bucket.clone(),
                    object.clone(),
                    key.clone(),
                    etag.clone(),
                );
                Box::pin(async move {
                    let opened =
                        open_range(&client, &bucket, &object, &key, at, etag.as_deref()).await?;
                    Ok(opened.reader)
                })
            },
        ))
    }

    /// The multipart uploads open under the repository's prefix: (object key, upload id).
    async fn open_uploads(&self) -> Result<Vec<(String, String)>> {
        let prefix = match self.prefix.is_empty() {
            true => String::new(),
            false => format!("{}/", self.prefix),
        };
        let mut found = Vec::new();
        let (mut key_marker, mut upload_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(|e| sdk_error(e, "list multipart uploads", &self.bucket))
                .with_context(|| {
                    format!(
                        "cannot list the open uploads under s3://{}/{prefix}",
                        self.bucket
                    )
                })?;
            for upload in page.uploads() {
                if let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) {
                    found.push((key.to_string(), id.to_string()));
                }
            }
            if !page.is_truncated().unwrap_or(false) {
                return Ok(found);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && upload_marker.is_none() {
                return Ok(found);
            }
        }
    }

    fn describe(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// An SDK error as one readable line: first what to fix, when we know (no such bucket,
/// access denied, a wrong key, an unreachable endpoint), then what happened: the HTTP
/// status and S3's code and message, or the chain of causes, which the SDK's own
/// `Display` leaves out.
fn sdk_error<E>(err: SdkError<E, HttpResponse>, action: &str, bucket: &str) -> anyhow::Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let advice = match &err {
        // Credentials are loaded as the request is sent: a failure shows up as a dispatch
        // failure, which must not read as a network problem.
        SdkError::DispatchFailure(_) if has_cause::<CredentialsError>(&err) => Some(
            "no usable S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the \
             credentials Secret), or web identity (IRSA: AWS_ROLE_ARN and \
             AWS_WEB_IDENTITY_TOKEN_FILE), or AWS_PROFILE"
                .to_string(),
        ),
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Some(
            "no answer after every retry: is the S3 endpoint reachable? check --s3-endpoint / \
             GWB_S3_ENDPOINT and the network"
                .to_string(),
        ),
        SdkError::ResponseError(_) => Some(
            "the connection broke while S3 was answering, after every retry: the S3 server or \
             the network to it is failing"
                .to_string(),
        ),
        SdkError::ServiceError(_) => advice(err.code().unwrap_or(""), status, bucket),
        _ => None,
    };
    let details = match (&err, status) {
        (SdkError::ServiceError(_), Some(status)) => format!(
            "HTTP {status}, {}: {}",
            err.code().unwrap_or("no error code"),
            err.message().unwrap_or("no message")
        ),
        _ => causes(&err),
    };
    let message = match advice {
        Some(advice) => format!("S3 {action} failed: {advice} ({details})"),
        None => format!("S3 {action} failed: {details}"),
    };
    // Scripts tell an unreachable endpoint and a missing bucket apart by the exit code.
    match (&err, err.code()) {
        (SdkError::DispatchFailure(_), _) if has_cause::<CredentialsError>(&err) => {
            anyhow!(message)
        }
        (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_), _) => Unavailable {
            why: Unavailability::Unreachable,
            message,
        }
        .into(),
        (SdkError::ServiceError(_), Some("NoSuchBucket")) => Unavailable {
            why: Unavailability::NoSuchBucket,
            message,
        }
        .into(),
        _ => anyhow!(message),
    }
}

fn has_cause<T: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause.is::<T>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An error and its sources, one after the other.
fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What to do about an error S3 answered with, for the codes a user can act on.
fn advice(code: &str, status: Option<u16>, bucket: &str) -> Option<String> {
    Some(match code {
        "NoSuchBucket" => format!(
            "the bucket {bucket:?} does not exist: check the bucket in --repo (GWB_REPO), \
             --s3-endpoint and --s3-region, or create the bucket"
        ),
        "AccessDenied" | "AllAccessDisabled" => format!(
            "access to the bucket {bucket:?} was denied: the credentials need s3:ListBucket on \
             the bucket and s3:GetObject and s3:PutObject on the repository prefix (docs/kubernetes.md has the policy; check it, the bucket policy, \
             and for IRSA the service account's role)"
        ),
        "InvalidAccessKeyId" => "the S3 server does not know this access key: check \
             AWS_ACCESS_KEY_ID (the credentials Secret), and that --s3-endpoint is the server \
             the key was made for"
            .into(),
        "SignatureDoesNotMatch" => "the secret key does not match the access key: check \
             AWS_SECRET_ACCESS_KEY (the credentials Secret)"
            .into(),
        "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" => "the session token has \
             expired or is invalid: refresh the credentials (AWS_SESSION_TOKEN, or the web \
             identity token)"
            .into(),
        "RequestTimeTooSkewed" => {
            "this machine's clock is too far off for S3 to accept the request: fix the clock (NTP)"
                .into()
        }
        "AuthorizationHeaderMalformed" | "PermanentRedirect" => {
            "the bucket is in another region: set --s3-region (GWB_S3_REGION)".into()
        }
        "PreconditionFailed" => "the object changed while it was being read".into(),
        _ if status.is_some_and(|s| s >= 500) || code == "SlowDown" => "the S3 server kept \
             failing after every retry (overloaded or unavailable): the next run tries again; \
             raise --s3-attempts for a flaky link"
            .into(),
        _ => return None,
    })
}

/// A download as it starts: the body, the object's version, and how many bytes the
/// server says follow (Content-Length).
struct Opened {
    reader: ObjectReader,
    etag: Option<String>,
    length: Option<u64>,
}

/// Starts a download of `object` from `offset`. Past byte 0 the answer must be the range
/// asked for, and of the version `if_match` names, so a resumed download never splices
/// two different objects together.
async fn open_range(
    client: &Client,
    bucket: &str,
    object: &str,
    key: &str,
    offset: u64,
    if_match: Option<&str>,
) -> Result<Opened> {
    let mut request = client.get_object().bucket(bucket).key(object);
    if offset > 0 {
        request = request.range(format!("bytes={offset}-"));
    }
    if let Some(etag) = if_match {
        request = request.if_match(etag);
    }
    let output = match request.send().await {
        Ok(output) => output,
        Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
            return Err(StoreError::NotFound(key.to_string()));
        }
        // Asked for the rest of an object we had read to its last byte.
        Err(err) if offset > 0 && err.code() == Some("InvalidRange") => {
            return Ok(Opened {
                reader: Box::new(tokio::io::empty()),
                etag: None,
                length: Some(0),
            });
        }
        Err(err) => {
            return Err(sdk_error(err, "get object", bucket)
                .context(format!("cannot read s3://{bucket}/{object}"))
                .into());
        }
    };
    if offset > 0
        && !output
            .content_range()
            .is_some_and(|range| range.starts_with(&format!("bytes {offset}-")))
    {
        return Err(anyhow!(
            "cannot resume reading s3://{bucket}/{object}: the server answered a request for \
             bytes {offset}- with {:?}",
            output.content_range()
        )
        .into());
    }
    Ok(Opened {
        etag: output.e_tag().map(str::to_string),
        length: output.content_length().and_then(|n| u64::try_from(n).ok()),
        reader: Box::new(output.body.into_async_read()),
    })
}

#[async_trait]
impl Store for S3Store {
    async fn put(&self, key: &str, data: Bytes, retention: Retention) -> Result<()> {
        let object = self.object_key(key)?;
        let (mode, until) = self.object_lock(retention).unzip();
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .set_object_lock_mode(mode)
            .set_object_lock_retain_until_date(until)
            .set_content_md5(self.object_lock.is_some().then(|| content_md5(&data)))
            // Checked by S3 on receipt: a part of an archive damaged on the way is refused
            // (and sent again by the SDK's retry), not stored.
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .checksum_crc32(crc32(&data))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| sdk_error(e, "put object", &self.bucket))
            .with_context(|| format!("cannot write {}", self.describe(&object)))?;
        Ok(())
    }

    fn parallel_writes(&self) -> usize {
        self.parallel_parts
    }

    async fn get(&self, key: &str, offset: u64) -> Result<ObjectReader> {
        let object = self.object_key(key)?;
        let opened = open_range(&self.client, &self.bucket, &object, key, offset, None).await?;
        Ok(self.resuming(object, key, opened.reader, offset, opened.etag))
    }

    async fn get_bounded(&self, key: &str, limit: u64) -> Result<Bytes> {
        match self.get_versioned(key, limit).await? {
            Some((bytes, _)) => Ok(bytes),
            None => Err(StoreError::NotFound(key.to_string())),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = full_prefix.len() - prefix.len();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| sdk_error(e, "list objects", &self.bucket))
                .with_context(|| format!("cannot list s3://{}/{full_prefix}", self.bucket))?;
            for object in page.contents.unwrap_or_default() {
                let Some(key) = object.key else { continue };
                found.push(ObjectInfo {
                    key: key[strip..].to_string(),
                    size: object.size.unwrap_or(0).max(0) as u64,
                });
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn get_versioned(&self, key: &str, limit: u64) -> Result<Option<(Bytes, String)>> {
        let object = self.object_key(key)?;
        let opened = match open_range(&self.client, &self.bucket, &object, key, 0, None).await {
            Ok(opened) => opened,
            Err(StoreError::NotFound(_)) => return Ok(None),
            Err(err) => return Err(err),
        };
        // The stated size first (the body is then dropped unread), and the bytes as they
        // come: a server may not state it, or state it wrongly.
        if opened.length.is_some_and(|length| length > limit) {
            return Err(too_large(key, limit));
        }
        let etag = opened.etag.clone();
        let body = self.resuming(object, key, opened.reader, 0, opened.etag);
        let bytes = read_bounded(body, key, limit).await?;
        Ok(Some((bytes, etag.unwrap_or_default())))
    }

    async fn put_if(&self, key: &str, data: Bytes, expected: Option<&str>) -> Result<String> {
        // S3 conditional writes: If-None-Match for "only if absent", If-Match for "only if
        // unchanged". A server without them ignores the headers; the lease then degrades
        // to last-writer-wins, which the lease's own owner check still mostly covers.
        let object = self.object_key(key)?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .body(ByteStream::from(data.clone()));
        request = match expected {
            Some(version) => request.if_match(version),
            None => request.if_none_match("*"),
        };
        match request.send().await {
            Ok(output) => Ok(output.e_tag.unwrap_or_default()),
            // 412: the condition failed; 409: a concurrent conditional write won; 404: the
            // object to swap is gone.
            Err(err)
                if matches!(
                    (err.raw_response().map(|r| r.status().as_u16()), expected),
                    (Some(412 | 409), _) | (Some(404), Some(_))
                ) =>
            {
                // The SDK retries a write whose answer was lost, and the retry then finds
                // the object changed: by that very write. Our bytes there mean ours landed
                // (a lease carries its owner and times to the nanosecond, so another
                // writer's are never the same).
                match self.get_versioned(key, data.len() as u64).await {
                    Ok(Some((current, version))) if current == data => {
                        tracing::debug!(
                            key,
                            "a conditional write's answer was lost; it had landed"
                        );
                        Ok(version)
                    }
                    Ok(_) | Err(StoreError::TooLarge { .. }) => {
                        Err(StoreError::Conflict(key.to_string()))
                    }
                    Err(err) => Err(err),
                }
            }
            Err(err) => Err(sdk_error(err, "put object", &self.bucket)
                .context(format!("cannot write {}", self.describe(&object)))
                .into()),
        }
    }

    async fn abort_open_uploads(&self) -> Result<u64> {
        let mut aborted = 0;
        for (object, upload_id) in self.open_uploads().await? {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&object)
                .upload_id(&upload_id)
                .send()
                .await;
            match abort {
                Ok(_) => aborted += 1,
                // Completed or aborted since the listing.
                Err(err) if err.code() == Some("NoSuchUpload") => {}
                Err(err) => {
                    return Err(sdk_error(err, "abort multipart upload", &self.bucket)
                        .context(format!(
                            "cannot abort the upload of {}",
                            self.describe(&object)
                        ))
                        .into());
                }
            }
        }
        Ok(aborted)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let object = self.object_key(key)?;
        // Ask first: a retained object's delete would only fail with AccessDenied (or, on
        // a versioned bucket, hide it behind a delete marker). Any object may be retained,
        // whoever wrote it, so every delete asks.
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
        {
            Ok(head) => {
                if let Some(until) = head.object_lock_retain_until_date
                    && until.secs() > chrono::Utc::now().timestamp()
                {
                    let until =
                        chrono::DateTime::from_timestamp(until.secs(), 0).unwrap_or_default();
                    return Err(StoreError::Retained {
                        key: key.to_string(),
                        until: until.to_rfc3339(),
                    });
                }
            }
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {
                return Ok(());
            }
            Err(err) => {
                return Err(sdk_error(err, "head object", &self.bucket)
                    .context(format!("cannot delete {}", self.describe(&object)))
                    .into());
            }
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| sdk_error(e, "delete object", &self.bucket))
            .with_context(|| format!("cannot delete {}", self.describe(&object)))?;
        Ok(())
    }
}
