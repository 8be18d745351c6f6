//! The one way this crate builds HTTP clients (the HTTP source, GCS's JSON
//! API, and object_store's S3, GCS and Azure clients through
//! [`Connector`]): our timeouts, warm connections, no `Referer`, and
//! redirects followed only within the origin a request went to.
//!
//! reqwest's defaults follow redirects to any host and send the previous
//! URL, query included, as `Referer`: a presigned S3 URL or an Azure SAS
//! signature reached the redirect's host that way. Here a redirect to
//! another scheme, host or port is not followed (the 3xx answer is the
//! answer), and nothing is ever sent as `Referer`.

use reqwest::redirect::{Attempt, Policy};

use crate::RetryPolicy;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// Scheme, host and port equal (the port as the scheme defaults it).
pub(crate) fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn follow_within_origin(attempt: Attempt<'_>) -> reqwest::redirect::Action {
    if attempt.previous().len() > MAX_REDIRECTS {
        return attempt.error("too many redirects");
    }
    let allowed = attempt
        .previous()
        .first()
        .is_some_and(|first| same_origin(first, attempt.url()));
    if allowed {
        attempt.follow()
    } else {
        attempt.stop()
    }
}

/// A client builder with this crate's settings.
pub(crate) fn client_builder(
    policy: &RetryPolicy,
    trust: &crate::TrustOptions,
) -> crate::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder();
    for cert in trust.certificates()? {
        builder = builder.add_root_certificate(cert);
    }
    if trust.accept_invalid_certs {
        tracing::warn!(
            "TLS certificates are not verified (asked for): anyone on the path can read and change the bytes"
        );
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder
        .connect_timeout(policy.connect_timeout)
        .timeout(policy.request_timeout)
        .pool_max_idle_per_host(64)
        .user_agent(concat!("tensorizer-rs/", env!("CARGO_PKG_VERSION")))
        .referer(false)
        .redirect(Policy::custom(follow_within_origin)))
}

/// One client per store, configuration and policy for the life of the
/// process, so that connections stay warm from one file to the next (a
/// model's shards, a vLLM rank's files).
pub(crate) fn cached<T: Clone + Send + 'static, E>(
    key: String,
    build: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    use std::any::Any;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::OnceLock;
    type Cache = Mutex<HashMap<String, Box<dyn Any + Send>>>;
    static CLIENTS: OnceLock<Cache> = OnceLock::new();
    let clients = CLIENTS.get_or_init(Default::default);
    if let Some(client) = clients
        .lock()
        .expect("client cache lock")
        .get(&key)
        .and_then(|c| c.downcast_ref::<T>())
    {
        return Ok(client.clone());
    }
    let client = build()?;
    clients
        .lock()
        .expect("client cache lock")
        .insert(key, Box::new(client.clone()));
    Ok(client)
}

/// object_store's clients, built as ours are (its own connector follows
/// redirects anywhere and sends `Referer`).
#[cfg(feature = "object-store")]
#[derive(Debug)]
pub(crate) struct Connector {
    policy: RetryPolicy,
    trust: crate::TrustOptions,
}

#[cfg(feature = "object-store")]
impl Connector {
    pub(crate) fn new(policy: &RetryPolicy, trust: &crate::TrustOptions) -> Self {
        Self {
            policy: policy.clone(),
            trust: trust.clone(),
        }
    }
}

#[cfg(feature = "object-store")]
impl object_store::client::HttpConnector for Connector {
    fn connect(
        &self,
        _options: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        let generic = |e: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
            store: "HTTP",
            source: e,
        };
        let client = client_builder(&self.policy, &self.trust)
            .map_err(|e| generic(Box::new(e)))?
            .build()
            .map_err(|e| generic(Box::new(e)))?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(same_origin(&u("https://h/a?x"), &u("https://h:443/b")));
        assert!(!same_origin(&u("https://h/a"), &u("http://h/a")));
        assert!(!same_origin(&u("https://h/a"), &u("https://h2/a")));
        assert!(!same_origin(&u("http://h:80/a"), &u("http://h:8080/a")));
    }
}
