//! Object stores — S3, Google Cloud Storage, Azure Blob — through
//! `object_store` (Apache Arrow), driven from synchronous code on a private
//! tokio runtime.
//!
//! One source and one sink serve every store: each backend module (`s3`,
//! `gcs`, `azure`) only resolves credentials and endpoints into an
//! [`Object`]. Reads are ranged GETs whose bodies are copied straight into
//! the caller's buffer as they arrive; writes are multipart uploads
//! committed at once or aborted (see [`ObjectSink`]). `object_store`
//! retries 5xx, 429 and connection errors with backoff and resumes broken
//! bodies; its limits come from our [`RetryPolicy`]. 4xx answers (wrong
//! credentials, no such bucket) fail on the first attempt.

mod sink;
mod source;

use std::ops::Range;
use std::sync::Arc;

use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

pub use sink::ObjectSink;
pub use source::ObjectSource;

use crate::error::{IoError, Result};
use crate::runtime::block;
use crate::{RetryPolicy, StorageOptions};

/// A store that can also upload in parts: every backend's client.
pub(crate) trait Store: ObjectStore + MultipartStore {}
impl<T: ObjectStore + MultipartStore> Store for T {}

/// The limits of a store's multipart uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartRules {
    /// Smallest part accepted (except the last).
    pub min: u64,
    /// Default part size: large enough for throughput, small enough to keep
    /// a few in memory per writer thread.
    pub default: u64,
    /// Most parts per upload.
    pub max_parts: u64,
    /// Every part but the last is a multiple of this.
    pub quantum: u64,
}

/// S3's multipart rules.
#[cfg(feature = "s3")]
pub(crate) const S3_PARTS: PartRules = PartRules {
    min: 5 << 20,
    default: 16 << 20,
    max_parts: 10_000,
    quantum: 1,
};

/// Which service an object lives in and how it is reached, resolved: what
/// every error message about it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `"S3"`, `"GCS"` or `"Azure Blob"`.
    pub name: &'static str,
    /// The base URL requests go to.
    pub endpoint: String,
    /// How the bucket or container goes into URLs.
    pub addressing: String,
    /// Where the credentials came from (`"--gcs-service-account"`,
    /// `"AZURE_STORAGE_CONNECTION_STRING"`, ...).
    pub credentials_from: String,
    /// What to set when the service denies access.
    pub fix: String,
    pub(crate) parts: PartRules,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {} ({}), credentials: {}",
            self.name, self.endpoint, self.addressing, self.credentials_from
        )
    }
}

/// One key in one bucket (or container) of one service.
#[derive(Clone)]
pub(crate) struct Object {
    pub uri: String,
    pub store: Arc<dyn Store>,
    pub path: ObjectPath,
    pub service: Service,
    /// The bucket or container, to tell whether two objects can be copied
    /// server-side.
    pub bucket: String,
    /// How new objects are uploaded.
    pub upload: Upload,
    /// The part size the caller asked for (`S3Options::part_size`, ...).
    pub part_size: Option<u64>,
}

/// Service, endpoint, bucket and key only: the store's client holds
/// credentials (object_store's Azure client prints its account key and SAS
/// signature), and the URI may carry a SAS query.
impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object")
            .field("uri", &crate::uri::redact(&self.uri))
            .field("service", &self.service.name)
            .field("endpoint", &crate::uri::redact(&self.service.endpoint))
            .field("bucket", &self.bucket)
            .field("path", &self.path.as_ref())
            .field("upload", &self.upload)
            .finish_non_exhaustive()
    }
}

/// How a store takes a new object in parts.
#[derive(Clone)]
pub(crate) enum Upload {
    /// `object_store`'s multipart API: parts in any order, in parallel.
    #[cfg_attr(
        all(feature = "gcs", not(any(feature = "s3", feature = "azure"))),
        allow(dead_code)
    )]
    Multipart,
    /// GCS's resumable uploads (JSON API): parts in order.
    #[cfg(feature = "gcs")]
    GcsResumable(Arc<crate::gcs::JsonApi>),
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upload::Multipart => f.write_str("Multipart"),
            #[cfg(feature = "gcs")]
            Upload::GcsResumable(_) => f.write_str("GcsResumable"),
        }
    }
}

impl Object {
    /// `key` in `bucket` of `service`, on the process's client for this
    /// service, bucket, `config` (which must name every secret: `Debug`
    /// output redacts them, and a client made with other credentials is
    /// another client) and `policy`, made by `build` the first time.
    pub(crate) fn new(
        uri: &str,
        service: Service,
        (bucket, key): (String, String),
        config: String,
        part_size: Option<u64>,
        policy: &RetryPolicy,
        build: impl FnOnce() -> std::result::Result<(Arc<dyn Store>, Upload), String>,
    ) -> Result<Self> {
        // What messages show: a SAS query or userinfo never does.
        let uri = &crate::uri::redact(uri);
        let cache_key = format!("{service:?}|{config}|{policy:?}");
        let (store, upload) =
            crate::net::cached(cache_key, build).map_err(|e| IoError::Unsupported {
                uri: uri.to_owned(),
                message: format!(
                    "cannot configure the {} client: {e} [{service}]",
                    service.name
                ),
            })?;
        tracing::debug!(uri, %service, "object");
        Ok(Self {
            uri: uri.to_owned(),
            store,
            path: ObjectPath::from(key),
            service,
            bucket,
            upload,
            part_size,
        })
    }

    /// An `IoError` for a failed request on `range`, naming the service,
    /// endpoint and credential source, with what to do for the failures a
    /// user can fix.
    pub(crate) fn error(
        &self,
        range: Range<u64>,
        e: &object_store::Error,
        policy: &RetryPolicy,
    ) -> IoError {
        use object_store::Error as E;
        let status = match e {
            E::NotFound { .. } => Some(404),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Some(403),
            _ => None,
        };
        self.failure(range, (e.to_string(), status), policy)
    }

    /// An `IoError` for a request on `range` that failed with `message`
    /// and HTTP `status`. 4xx answers are not retried (by object_store nor
    /// by our own requests): they took one attempt.
    pub(crate) fn failure(
        &self,
        range: Range<u64>,
        (message, status): (String, Option<u16>),
        policy: &RetryPolicy,
    ) -> IoError {
        let hint = match status {
            Some(404) => format!(" (no such object, or no bucket {:?})", self.bucket),
            Some(401 | 403) => format!(" (access denied: check credentials; {})", self.service.fix),
            _ => String::new(),
        };
        let attempts = match status {
            Some(s) if (400..500).contains(&s) => 1,
            _ => policy.max_attempts,
        };
        IoError::Remote {
            uri: self.uri.clone(),
            start: range.start,
            end: range.end,
            message: format!("{message}{hint} [{}]", self.service),
            attempts,
            status,
        }
    }
}

/// `SCHEME://bucket/key` → (bucket, key), for any of `schemes`; `form`
/// names the expected form in the error.
#[cfg(any(feature = "s3", feature = "gcs"))]
pub(crate) fn parse_bucket_key(
    uri: &str,
    schemes: &[&str],
    form: &str,
) -> Result<(String, String)> {
    let bad = |why: &str| IoError::Unsupported {
        uri: uri.to_owned(),
        message: format!(
            "not a {form} URI ({why}); expected {}://bucket/key",
            schemes[0]
        ),
    };
    let rest = uri
        .split_once("://")
        .filter(|(s, _)| schemes.iter().any(|want| s.eq_ignore_ascii_case(want)))
        .ok_or_else(|| bad(&format!("scheme is not {}", schemes[0])))?
        .1;
    let (bucket, key) = rest.split_once('/').ok_or_else(|| bad("no key"))?;
    if bucket.is_empty() {
        return Err(bad("empty bucket name"));
    }
    if key.is_empty() || key.ends_with('/') {
        return Err(bad("the key names a folder, not an object"));
    }
    Ok((bucket.to_owned(), key.to_owned()))
}

/// A configuration error re-addressed to the URI being opened.
pub(crate) fn for_uri(uri: &str) -> impl FnOnce(IoError) -> IoError + '_ {
    move |e| match e {
        IoError::Unsupported { message, .. } => IoError::Unsupported {
            uri: uri.to_owned(),
            message,
        },
        other => other,
    }
}

/// Resolves a URI of any object-store scheme this build supports.
pub(crate) fn object(uri: &str, options: &StorageOptions) -> Result<Object> {
    let _ = options;
    match crate::scheme(uri).as_deref() {
        #[cfg(feature = "s3")]
        Some("s3") => crate::s3::object(uri, &options.s3, &options.retry, &options.trust),
        #[cfg(feature = "gcs")]
        Some("gs" | "gcs") => crate::gcs::object(uri, &options.gcs, &options.retry, &options.trust),
        #[cfg(feature = "azure")]
        Some(_) if crate::azure::is_azure_uri(uri) => {
            crate::azure::object(uri, &options.azure, &options.retry, &options.trust)
        }
        _ => Err(IoError::Unsupported {
            uri: uri.to_owned(),
            message: "not an object-store URI this build supports".into(),
        }),
    }
}

/// `object_store`'s retry and timeout settings from ours.
pub(crate) fn retry_config(policy: &RetryPolicy) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: policy.base_delay,
            max_backoff: policy.max_delay,
            base: 2.0,
        },
        max_retries: policy.max_attempts.saturating_sub(1) as usize,
        retry_timeout: policy.deadline,
    }
}

/// HTTP client settings shared by every store: our timeouts, warm
/// connections kept for the whole load, `http://` allowed for emulators
/// and private endpoints.
pub(crate) fn client_options(policy: &RetryPolicy) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(true)
        .with_connect_timeout(policy.connect_timeout)
        .with_timeout(policy.request_timeout)
        .with_pool_max_idle_per_host(64)
}

/// A create-only put of `data` (`If-None-Match: *`): an error if the
/// object exists.
pub(crate) fn create_new(uri: &str, data: &[u8], options: &StorageOptions) -> Result<()> {
    let object = object(uri, options)?;
    let (store, path) = (object.store.clone(), object.path.clone());
    let payload = object_store::PutPayload::from(data.to_vec());
    let put = async move {
        store
            .put_opts(
                &path,
                payload,
                object_store::PutOptions {
                    mode: object_store::PutMode::Create,
                    ..Default::default()
                },
            )
            .await
    };
    match block(put, &object.uri)? {
        Ok(_) => Ok(()),
        Err(object_store::Error::AlreadyExists { .. }) => Err(IoError::Protocol {
            uri: object.uri.clone(),
            message: "already exists, and is never replaced".into(),
        }),
        Err(e) => Err(object.error(0..data.len() as u64, &e, &options.retry)),
    }
}

/// Whether the object exists (one HEAD request; 404 is `false`).
pub(crate) fn exists(uri: &str, options: &StorageOptions) -> Result<bool> {
    let object = object(uri, options)?;
    let (store, path) = (object.store.clone(), object.path.clone());
    match block(async move { store.head(&path).await }, uri)? {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(object.error(0..0, &e, &options.retry)),
    }
}

/// The objects under `prefix` (a key ending in `/` or not): directly
/// under it, or every one below it with `recursive`; their names below it
/// and sizes, sorted, at most [`crate::MAX_LISTED`].
pub(crate) fn list(
    prefix: &str,
    recursive: bool,
    options: &StorageOptions,
) -> Result<Vec<(String, u64)>> {
    use futures_util::StreamExt;
    // `object` parses bucket and key (the directory's, without its `/`).
    let object = object(prefix.trim_end_matches('/'), options)?;
    let (store, path) = (object.store.clone(), object.path.clone());
    let listed = block(
        async move {
            if !recursive {
                return store
                    .list_with_delimiter(Some(&path))
                    .await
                    .map(|l| l.objects);
            }
            let mut objects = Vec::new();
            let mut stream = store.list(Some(&path));
            while let Some(meta) = stream.next().await {
                objects.push(meta?);
                if objects.len() > crate::MAX_LISTED {
                    break;
                }
            }
            Ok(objects)
        },
        prefix,
    )?
    .map_err(|e| object.error(0..0, &e, &options.retry))?;
    if listed.len() > crate::MAX_LISTED {
        return Err(IoError::Protocol {
            uri: object.uri.clone(),
            message: format!(
                "lists more than the {} objects a model directory may hold",
                crate::MAX_LISTED
            ),
        });
    }
    let base = object.path.as_ref().trim_end_matches('/').to_owned();
    let mut out: Vec<(String, u64)> = listed
        .into_iter()
        .filter_map(|meta| {
            let name = meta
                .location
                .as_ref()
                .strip_prefix(&base)?
                .strip_prefix('/')?
                .to_owned();
            (!name.is_empty()).then_some((name, meta.size))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Server-side copy of one object onto another in the same bucket: the
/// bytes never pass through this process. `None` when the two objects are
/// not in one bucket of one service (the caller streams instead).
pub(crate) fn copy(from: &str, to: &str, options: &StorageOptions) -> Result<Option<()>> {
    let source = object(from, options)?;
    let dest = object(to, options)?;
    if source.service != dest.service || source.bucket != dest.bucket {
        return Ok(None);
    }
    let (store, from_path, to_path) = (dest.store.clone(), source.path.clone(), dest.path.clone());
    #[cfg(feature = "gcs")]
    if let Upload::GcsResumable(api) = &dest.upload {
        let api = api.clone();
        return block(
            async move { api.rewrite(from_path.as_ref(), to_path.as_ref()).await },
            to,
        )?
        .map_err(|f| dest.failure(0..0, f, &options.retry))
        .map(Some);
    }
    block(async move { store.copy(&from_path, &to_path).await }, to)?
        .map_err(|e| dest.error(0..0, &e, &options.retry))
        .map(Some)
}
