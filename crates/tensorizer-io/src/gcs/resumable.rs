//! GCS writes through the JSON API's resumable uploads: one session per
//! object, chunks sent in order, the object created when the last chunk
//! (the one that states the total size) arrives, and a `DELETE` of the
//! session to abandon it. Google's own clients upload this way, and unlike
//! the XML multipart API it is what GCS emulators implement.

use std::sync::Arc;

use object_store::gcp::GcpCredentialProvider;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, LOCATION};

use crate::RetryPolicy;

/// Chunks other than the last must be multiples of this.
pub(crate) const CHUNK_QUANTUM: u64 = 256 << 10;

/// How to reach one bucket's JSON API.
#[derive(Debug, Clone)]
pub(crate) struct JsonApi {
    pub client: reqwest::Client,
    pub endpoint: String,
    pub bucket: String,
    /// `None` for unsigned requests.
    pub credentials: Option<GcpCredentialProvider>,
    pub policy: RetryPolicy,
}

/// Why a request failed: the message, the HTTP status if any.
pub(crate) type Failure = (String, Option<u16>);

impl JsonApi {
    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let Some(provider) = &self.credentials else {
            return Ok(request);
        };
        let credential = provider
            .get_credential()
            .await
            .map_err(|e| (format!("cannot get a GCS access token: {e}"), None))?;
        Ok(request.header(AUTHORIZATION, format!("Bearer {}", credential.bearer)))
    }

    /// Sends the request `build` makes, retrying transport errors, 5xx and
    /// 429 within the policy; `ok` says which statuses are success.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
        ok: impl Fn(StatusCode) -> bool,
    ) -> Result<reqwest::Response, Failure> {
        let started = std::time::Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match self.authorize(build()).await?.send().await {
                Ok(response) if ok(response.status()) => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    let failure = (
                        format!("{what}: HTTP {status}: {}", body.trim()),
                        Some(status.as_u16()),
                    );
                    if !retry {
                        return Err(failure);
                    }
                    failure
                }
                Err(e) => (format!("{what}: {e}"), None),
            };
            if !self.policy.may_retry(attempts, started) {
                return Err((
                    format!("{} (gave up after {attempts} attempts)", failure.0),
                    failure.1,
                ));
            }
            tokio::time::sleep(self.policy.backoff(attempts)).await;
        }
    }

    /// Starts a resumable upload of `key`; returns the session URI.
    pub async fn start(&self, key: &str) -> Result<String, Failure> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}",
            self.endpoint,
            self.bucket,
            encode(key)
        );
        let response = self
            .send(
                "starting a resumable upload",
                || self.client.post(&url).header(CONTENT_LENGTH, 0),
                |s| s.is_success(),
            )
            .await?;
        response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ("the upload session has no Location header".into(), None))
    }

    /// Sends bytes `offset..offset + data.len()` of the object; `total` is
    /// the object's size when this is the last chunk.
    pub async fn put_chunk(
        &self,
        session: &str,
        offset: u64,
        data: bytes::Bytes,
        total: Option<u64>,
    ) -> Result<(), Failure> {
        let end = offset + data.len() as u64;
        let range = match (data.is_empty(), total) {
            (true, Some(total)) => format!("bytes */{total}"),
            (_, Some(total)) => format!("bytes {offset}-{}/{total}", end - 1),
            (_, None) => format!("bytes {offset}-{}/*", end - 1),
        };
        let last = total.is_some();
        self.send(
            "uploading a chunk",
            || {
                self.client
                    .put(session)
                    .header(CONTENT_RANGE, range.clone())
                    .body(data.clone())
            },
            // 308 "Resume Incomplete" acknowledges a middle chunk.
            |s| {
                if last {
                    s.is_success()
                } else {
                    s.as_u16() == 308 || s.is_success()
                }
            },
        )
        .await
        .map(|_| ())
    }

    /// Abandons an upload session: nothing is created.
    pub async fn cancel(&self, session: &str) -> Result<(), Failure> {
        // GCS answers 499 to a cancelled session.
        self.send(
            "cancelling the upload",
            || self.client.delete(session),
            |s| s.is_success() || s.as_u16() == 499 || s == StatusCode::NOT_FOUND,
        )
        .await
        .map(|_| ())
    }

    /// Copies `from` onto `to` in this bucket on the server (`rewriteTo`,
    /// repeated until the service says it is done).
    pub async fn rewrite(&self, from: &str, to: &str) -> Result<(), Failure> {
        let url = format!(
            "{}/storage/v1/b/{b}/o/{}/rewriteTo/b/{b}/o/{}",
            self.endpoint,
            encode(from),
            encode(to),
            b = self.bucket
        );
        let mut token: Option<String> = None;
        loop {
            let response = self
                .send(
                    "copying on the server",
                    || {
                        let url = match &token {
                            Some(t) => format!("{url}?rewriteToken={}", encode(t)),
                            None => url.clone(),
                        };
                        self.client.post(url).header(CONTENT_LENGTH, 0)
                    },
                    |s| s.is_success(),
                )
                .await?;
            let body = response
                .bytes()
                .await
                .map_err(|e| (format!("copying on the server: {e}"), None))?;
            let body: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| (format!("copying on the server: {e}"), None))?;
            if body["done"].as_bool().unwrap_or(true) {
                return Ok(());
            }
            token = body["rewriteToken"].as_str().map(str::to_owned);
        }
    }
}

/// Percent-encodes everything but unreserved characters, as object names
/// in JSON API paths and queries must be.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The JSON API of `store`'s bucket, sharing its credentials.
pub(crate) fn json_api(
    endpoint: &str,
    bucket: &str,
    credentials: Option<GcpCredentialProvider>,
    policy: &RetryPolicy,
) -> reqwest::Result<Arc<JsonApi>> {
    let client = reqwest::Client::builder()
        .connect_timeout(policy.connect_timeout)
        .timeout(policy.request_timeout)
        .build()?;
    Ok(Arc::new(JsonApi {
        client,
        endpoint: endpoint.to_owned(),
        bucket: bucket.to_owned(),
        credentials,
        policy: policy.clone(),
    }))
}
