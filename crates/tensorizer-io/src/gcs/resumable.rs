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
#[derive(Clone)]
pub(crate) struct JsonApi {
    pub client: reqwest::Client,
    pub endpoint: String,
    pub bucket: String,
    /// `None` for unsigned requests.
    pub credentials: Option<GcpCredentialProvider>,
    pub policy: RetryPolicy,
}

/// Endpoint and bucket only: the credential provider holds tokens.
impl std::fmt::Debug for JsonApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonApi")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("signed", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a request failed: the message, the HTTP status if any.
pub(crate) type Failure = (String, Option<u16>);

impl JsonApi {
    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        signed: bool,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let Some(provider) = &self.credentials.as_ref().filter(|_| signed) else {
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
        signed: bool,
    ) -> Result<reqwest::Response, Failure> {
        let started = std::time::Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failure = match self.authorize(build(), signed).await?.send().await {
                Ok(response) if ok(response.status()) => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let body = read_bounded(response, MAX_ERROR_BODY)
                        .await
                        .unwrap_or_default();
                    let body = String::from_utf8_lossy(&body);
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
                true,
            )
            .await?;
        let session = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ("the upload session has no Location header".into(), None))?;
        check_session(&self.endpoint, &session)?;
        Ok(session)
    }

    /// Whether `session` is on the endpoint's origin: only there does the
    /// bearer token go (the session URL itself authorizes the upload).
    fn signs(&self, session: &str) -> bool {
        match (
            reqwest::Url::parse(session),
            reqwest::Url::parse(&self.endpoint),
        ) {
            (Ok(a), Ok(b)) => crate::net::same_origin(&a, &b),
            _ => false,
        }
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
            self.signs(session),
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
            self.signs(session),
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
        let started = std::time::Instant::now();
        let mut round = 0;
        loop {
            round += 1;
            if round > MAX_REWRITE_ROUNDS || started.elapsed() > MAX_REWRITE_TIME {
                return Err((
                    format!(
                        "copying on the server: not done after {} calls and {:?}",
                        round - 1,
                        started.elapsed()
                    ),
                    None,
                ));
            }
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
                    true,
                )
                .await?;
            let body = read_bounded(response, MAX_ANSWER)
                .await
                .map_err(|e| (format!("copying on the server: {e}"), None))?;
            let body: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| (format!("copying on the server: {e}"), None))?;
            match (body["done"].as_bool(), body["rewriteToken"].as_str()) {
                (Some(true), _) => return Ok(()),
                (Some(false), Some(next)) if !next.is_empty() => token = Some(next.to_owned()),
                _ => {
                    return Err((
                        "copying on the server: an answer without `done`, or not done \
                         without a `rewriteToken`"
                            .into(),
                        None,
                    ));
                }
            }
        }
    }
}

/// Never from https to http: the chunks are the model.
fn check_session(endpoint: &str, session: &str) -> Result<(), Failure> {
    if endpoint.starts_with("https://") && !session.starts_with("https://") {
        return Err((
            format!(
                "the upload session URL {} is not https while the endpoint is",
                crate::uri::redact(session)
            ),
            None,
        ));
    }
    Ok(())
}

/// Bytes of an error body kept for the message.
const MAX_ERROR_BODY: usize = 4 << 10;
/// Largest JSON answer read (a rewrite status is a few hundred bytes).
const MAX_ANSWER: usize = 64 << 10;
/// A server-side copy gives up after this many calls...
#[cfg(not(test))]
const MAX_REWRITE_ROUNDS: u32 = 10_000;
#[cfg(test)]
const MAX_REWRITE_ROUNDS: u32 = 40;
/// ...or this long.
const MAX_REWRITE_TIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// At most `max` bytes of `response`'s body (a server may send an endless
/// one: what is past `max` is never read).
async fn read_bounded(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        let room = max - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= max {
            break;
        }
    }
    Ok(out)
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
    trust: &crate::TrustOptions,
) -> crate::Result<Arc<JsonApi>> {
    let client = crate::net::client_builder(policy, trust)?
        .build()
        .map_err(|e| crate::IoError::Protocol {
            uri: format!("{endpoint}/{bucket}"),
            message: format!("cannot build an HTTP client: {e}"),
        })?;
    Ok(Arc::new(JsonApi {
        client,
        endpoint: endpoint.to_owned(),
        bucket: bucket.to_owned(),
        credentials,
        policy: policy.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A loopback server answering every request with `answer(n)` (n: the
    /// request's number), recording each request's head.
    fn server(
        answer: impl Fn(usize, &mut std::net::TcpStream) + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let count = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for con in listener.incoming() {
                let Ok(mut con) = con else { return };
                let (seen, count, answer) = (seen.clone(), count.clone(), answer.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(con.try_clone().unwrap());
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            head.push_str(&line);
                        }
                        seen.lock().unwrap().push(head);
                        answer(count.fetch_add(1, Ordering::SeqCst), &mut con);
                    }
                });
            }
        });
        (url, heads)
    }

    fn api(endpoint: &str) -> JsonApi {
        let policy = RetryPolicy {
            max_attempts: 1,
            deadline: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        JsonApi {
            client: crate::net::client_builder(&policy, &Default::default())
                .unwrap()
                .build()
                .unwrap(),
            endpoint: endpoint.to_owned(),
            bucket: "b".into(),
            credentials: None,
            policy,
        }
    }

    fn json(con: &mut std::net::TcpStream, body: &str) {
        let _ = write!(
            con,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }

    #[test]
    fn an_endless_error_body_is_read_only_a_few_kib() {
        let (url, _) = server(|_, con| {
            let _ = con.write_all(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n");
            let chunk = format!("{:x}\r\n{}\r\n", 1 << 16, "x".repeat(1 << 16));
            // Endless, until the client hangs up.
            while con.write_all(chunk.as_bytes()).is_ok() {}
        });
        let api = api(&url);
        let started = std::time::Instant::now();
        let (message, status) = crate::runtime::block(async move { api.start("k").await }, &url)
            .unwrap()
            .unwrap_err();
        assert_eq!(status, Some(500));
        assert!(
            message.len() < 2 * MAX_ERROR_BODY,
            "{} bytes",
            message.len()
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn rewrites_are_bounded_and_malformed_answers_are_errors() {
        let (url, heads) = server(|_, con| json(con, r#"{"done": false, "rewriteToken": "t"}"#));
        let (message, _) = crate::runtime::block(api_rewrite(url.clone()), &url)
            .unwrap()
            .unwrap_err();
        assert!(message.contains("not done after 40 calls"), "{message}");
        assert_eq!(heads.lock().unwrap().len(), 40);
        for body in [r#"{}"#, r#"{"done": false}"#, r#"[1]"#] {
            let body = body.to_owned();
            let (url, _) = server(move |_, con| json(con, &body));
            let err = crate::runtime::block(api_rewrite(url.clone()), &url)
                .unwrap()
                .unwrap_err();
            assert!(err.0.contains("without"), "{}", err.0);
        }
        let (url, _) = server(|_, con| json(con, r#"{"done": true}"#));
        assert!(
            crate::runtime::block(api_rewrite(url.clone()), &url)
                .unwrap()
                .is_ok()
        );
    }

    async fn api_rewrite(url: String) -> Result<(), Failure> {
        api(&url).rewrite("a", "b").await
    }

    #[test]
    fn the_token_goes_only_to_the_endpoint_origin() {
        let api = api("https://storage.googleapis.com");
        assert!(api.signs("https://storage.googleapis.com/upload/x?upload_id=1"));
        assert!(!api.signs("https://evil.example/upload?upload_id=1"));
        assert!(!api.signs("http://storage.googleapis.com/upload?upload_id=1"));
        assert!(!api.signs("not a url"));
    }

    #[test]
    fn a_session_that_leaves_https_is_refused() {
        let endpoint = "https://storage.googleapis.com";
        assert!(check_session(endpoint, "https://storage.googleapis.com/u?id=1").is_ok());
        let (message, _) =
            check_session(endpoint, "http://storage.googleapis.com/u?id=SECRET").unwrap_err();
        assert!(
            message.contains("not https") && !message.contains("SECRET"),
            "{message}"
        );
        assert!(check_session("http://127.0.0.1:4443", "http://127.0.0.1:4443/u").is_ok());
    }
}
