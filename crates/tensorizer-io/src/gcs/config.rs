//! Where Google Cloud Storage credentials and the endpoint come from,
//! resolved the way Google's client libraries find them.
//!
//! Credentials, first found wins:
//! 1. explicit [`GcsOptions`] (the CLI's `--gcs-anonymous`,
//!    `--gcs-service-account`, `--gcs-service-account-key`);
//! 2. `GOOGLE_SERVICE_ACCOUNT` or `GOOGLE_SERVICE_ACCOUNT_PATH` (a
//!    service-account JSON file), `GOOGLE_SERVICE_ACCOUNT_KEY` (its text);
//! 3. `GOOGLE_APPLICATION_CREDENTIALS` (a service-account or
//!    authorized-user JSON file; it must exist);
//! 4. with `STORAGE_EMULATOR_HOST` set and nothing above: unsigned
//!    requests, as Google's libraries send to an emulator;
//! 5. gcloud's application default credentials,
//!    `$CLOUDSDK_CONFIG/application_default_credentials.json` or
//!    `~/.config/gcloud/application_default_credentials.json`;
//! 6. otherwise the GCE metadata server (a VM's or GKE workload identity's
//!    service account).
//!
//! Endpoint: explicit (`host:port` gets `https://`), then
//! `STORAGE_EMULATOR_HOST` (`host:port` gets `http://`, as emulators speak
//! it), else `https://storage.googleapis.com`.

use std::path::PathBuf;

use crate::env::{Environment, ProcessEnvironment};
use crate::error::{IoError, Result};

/// Google's own endpoint.
pub const GCS_ENDPOINT: &str = "https://storage.googleapis.com";

/// What the caller says about GCS; `None` means "look it up".
#[derive(Clone, Default)]
pub struct GcsOptions {
    /// Unsigned requests, for public buckets.
    pub anonymous: bool,
    /// A service-account JSON key file.
    pub service_account_path: Option<PathBuf>,
    /// A service-account JSON key, as text.
    pub service_account_key: Option<String>,
    /// Base URL of a GCS-compatible endpoint or emulator.
    pub endpoint: Option<String>,
    /// Bytes per multipart-upload part (default 16 MiB; at least 5 MiB).
    pub part_size: Option<u64>,
    /// Allow signed (credentialed) requests over plain `http://` to a
    /// host other than loopback: the bearer token then crosses the network
    /// in the clear. Off by default.
    pub allow_plain_http: bool,
}

impl std::fmt::Debug for GcsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsOptions")
            .field("anonymous", &self.anonymous)
            .field("service_account_path", &self.service_account_path)
            .field(
                "service_account_key",
                &self.service_account_key.as_ref().map(|_| "<redacted>"),
            )
            .field("endpoint", &self.endpoint)
            .field("part_size", &self.part_size)
            .field("allow_plain_http", &self.allow_plain_http)
            .finish()
    }
}

/// How GCS requests are authorized.
#[derive(Clone, PartialEq, Eq)]
pub enum GcsCredentials {
    /// Unsigned requests (public buckets, emulators).
    Anonymous,
    /// A service-account JSON key file.
    ServiceAccountFile(PathBuf),
    /// A service-account JSON key, as text.
    ServiceAccountKey(String),
    /// An application-default-credentials file (service account or
    /// authorized user, as `gcloud auth application-default login` writes).
    ApplicationDefault(PathBuf),
    /// The GCE metadata server.
    MetadataServer,
}

impl std::fmt::Debug for GcsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::ServiceAccountFile(p) => write!(f, "ServiceAccountFile({})", p.display()),
            Self::ServiceAccountKey(_) => f.write_str("ServiceAccountKey(<redacted>)"),
            Self::ApplicationDefault(p) => write!(f, "ApplicationDefault({})", p.display()),
            Self::MetadataServer => f.write_str("MetadataServer"),
        }
    }
}

/// Everything needed to talk to GCS, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsConfig {
    /// Authorization.
    pub credentials: GcsCredentials,
    /// Where the credentials came from, for messages.
    pub credentials_from: String,
    /// Base URL, without a trailing slash.
    pub endpoint: String,
    /// Bytes per multipart part, if fixed by the caller.
    pub part_size: Option<u64>,
}

impl GcsConfig {
    /// Resolves `options` against the process environment.
    pub fn resolve(options: &GcsOptions) -> Result<Self> {
        Self::resolve_in(options, &ProcessEnvironment)
    }

    /// Resolves `options` against `env` (see the module docs for the order).
    pub fn resolve_in(options: &GcsOptions, env: &dyn Environment) -> Result<Self> {
        let var = |name: &str| env.var(name).filter(|v| !v.is_empty());
        let emulator = var("STORAGE_EMULATOR_HOST");
        // A scheme-less endpoint is https (bearer tokens never go in the
        // clear), except the emulator's `host:port`, which speaks http.
        let endpoint = match (&options.endpoint, &emulator) {
            (Some(e), _) => normalize_endpoint(e, "https"),
            (None, Some(e)) => normalize_endpoint(e, "http"),
            (None, None) => GCS_ENDPOINT.to_owned(),
        };

        use GcsCredentials as C;
        let (credentials, from) = if options.anonymous {
            (C::Anonymous, "--gcs-anonymous".to_owned())
        } else if let Some(path) = &options.service_account_path {
            (
                C::ServiceAccountFile(path.clone()),
                "--gcs-service-account".into(),
            )
        } else if let Some(key) = &options.service_account_key {
            (
                C::ServiceAccountKey(key.clone()),
                "--gcs-service-account-key".into(),
            )
        } else if emulator.is_some() && options.endpoint.is_none() {
            // As Google's clients do: with the emulator variable set, the
            // environment's credentials are not sent (to a plain-http
            // emulator, say); only credentials passed explicitly are.
            (
                C::Anonymous,
                "none: unsigned requests to the emulator (STORAGE_EMULATOR_HOST)".into(),
            )
        } else if let Some((name, path)) = ["GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH"]
            .iter()
            .find_map(|n| var(n).map(|v| (*n, v)))
        {
            (C::ServiceAccountFile(path.into()), name.to_owned())
        } else if let Some(key) = var("GOOGLE_SERVICE_ACCOUNT_KEY") {
            (
                C::ServiceAccountKey(key),
                "GOOGLE_SERVICE_ACCOUNT_KEY".into(),
            )
        } else if let Some(path) = var("GOOGLE_APPLICATION_CREDENTIALS") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(IoError::Unsupported {
                    uri: "gs://".into(),
                    message: format!(
                        "GOOGLE_APPLICATION_CREDENTIALS names {}, which is not a readable file",
                        path.display()
                    ),
                });
            }
            (
                C::ApplicationDefault(path),
                "GOOGLE_APPLICATION_CREDENTIALS".into(),
            )
        } else if emulator.is_some() {
            (
                C::Anonymous,
                "none: unsigned requests to the emulator (STORAGE_EMULATOR_HOST)".into(),
            )
        } else if let Some(path) = gcloud_adc(env).filter(|p| p.is_file()) {
            let from = format!(
                "gcloud application default credentials ({})",
                path.display()
            );
            (C::ApplicationDefault(path), from)
        } else {
            (
                C::MetadataServer,
                "none found: the GCE metadata server".into(),
            )
        };
        if credentials != C::Anonymous
            && !options.allow_plain_http
            && endpoint.starts_with("http://")
            && !is_loopback_url(&endpoint)
        {
            return Err(IoError::Unsupported {
                uri: "gs://".into(),
                message: format!(
                    "credentials from {from} would be sent in the clear to {endpoint}: use https, \
                     an anonymous endpoint (--gcs-anonymous), or allow it (--gcs-allow-http)"
                ),
            });
        }
        Ok(Self {
            credentials,
            credentials_from: from,
            endpoint,
            part_size: options.part_size,
        })
    }
}

/// True for `http://localhost…`, `http://127.x.x.x…` and `http://[::1]…`:
/// a token sent there does not leave the machine.
pub(crate) fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where `gcloud auth application-default login` writes its file.
fn gcloud_adc(env: &dyn Environment) -> Option<PathBuf> {
    let dir = match env.var("CLOUDSDK_CONFIG").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => env.home()?.join(".config/gcloud"),
    };
    Some(dir.join("application_default_credentials.json"))
}

/// `host:port` → `{scheme}://host:port`; trailing slashes dropped.
fn normalize_endpoint(endpoint: &str, scheme: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("{scheme}://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::env::table as env;

    #[test]
    #[allow(clippy::type_complexity, reason = "a table of cases")]
    fn credential_chain_table() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path().to_str().unwrap();
        let gcloud = home.path().join(".config/gcloud");
        std::fs::create_dir_all(&gcloud).unwrap();
        let adc = gcloud.join("application_default_credentials.json");
        std::fs::write(&adc, r#"{"type":"authorized_user"}"#).unwrap();
        let sa = home.path().join("sa.json");
        std::fs::write(&sa, "{}").unwrap();
        let sa_s = sa.to_str().unwrap();
        let flags = GcsOptions {
            service_account_path: Some("/flag/sa.json".into()),
            ..Default::default()
        };
        use GcsCredentials as C;
        let cases: Vec<(GcsOptions, HashMap<String, String>, C, &str, &str)> = vec![
            // Flags win over every variable.
            (
                flags.clone(),
                env(&[("HOME", h), ("GOOGLE_APPLICATION_CREDENTIALS", sa_s)]),
                C::ServiceAccountFile("/flag/sa.json".into()),
                "--gcs-service-account",
                GCS_ENDPOINT,
            ),
            (
                GcsOptions {
                    anonymous: true,
                    ..flags.clone()
                },
                env(&[("HOME", h)]),
                C::Anonymous,
                "--gcs-anonymous",
                GCS_ENDPOINT,
            ),
            // object_store's variables, then Google's.
            (
                GcsOptions::default(),
                env(&[
                    ("HOME", h),
                    ("GOOGLE_SERVICE_ACCOUNT", "/env/sa.json"),
                    ("GOOGLE_APPLICATION_CREDENTIALS", sa_s),
                ]),
                C::ServiceAccountFile("/env/sa.json".into()),
                "GOOGLE_SERVICE_ACCOUNT",
                GCS_ENDPOINT,
            ),
            (
                GcsOptions::default(),
                env(&[("HOME", h), ("GOOGLE_SERVICE_ACCOUNT_KEY", "{\"k\":1}")]),
                C::ServiceAccountKey("{\"k\":1}".into()),
                "GOOGLE_SERVICE_ACCOUNT_KEY",
                GCS_ENDPOINT,
            ),
            (
                GcsOptions::default(),
                env(&[("HOME", h), ("GOOGLE_APPLICATION_CREDENTIALS", sa_s)]),
                C::ApplicationDefault(sa.clone()),
                "GOOGLE_APPLICATION_CREDENTIALS",
                GCS_ENDPOINT,
            ),
            // An emulator without credentials: unsigned, plain HTTP.
            (
                GcsOptions::default(),
                env(&[("HOME", h), ("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")]),
                C::Anonymous,
                "none: unsigned requests to the emulator (STORAGE_EMULATOR_HOST)",
                "http://127.0.0.1:4443",
            ),
            // gcloud's file under HOME, or CLOUDSDK_CONFIG.
            (
                GcsOptions::default(),
                env(&[("HOME", h)]),
                C::ApplicationDefault(adc.clone()),
                "gcloud application default credentials",
                GCS_ENDPOINT,
            ),
            (
                GcsOptions::default(),
                env(&[
                    ("HOME", "/nonexistent"),
                    ("CLOUDSDK_CONFIG", gcloud.to_str().unwrap()),
                ]),
                C::ApplicationDefault(adc.clone()),
                "gcloud application default credentials",
                GCS_ENDPOINT,
            ),
            // A scheme-less endpoint given explicitly: https.
            (
                GcsOptions {
                    endpoint: Some("gcs.example.com:8443".into()),
                    ..Default::default()
                },
                env(&[("HOME", "/nonexistent")]),
                C::MetadataServer,
                "none found: the GCE metadata server",
                "https://gcs.example.com:8443",
            ),
            // Nothing at all: the metadata server.
            (
                GcsOptions {
                    endpoint: Some("https://gcs.example.com/".into()),
                    ..Default::default()
                },
                env(&[("HOME", "/nonexistent")]),
                C::MetadataServer,
                "none found: the GCE metadata server",
                "https://gcs.example.com",
            ),
        ];
        for (i, (options, env, credentials, from, endpoint)) in cases.into_iter().enumerate() {
            let c = GcsConfig::resolve_in(&options, &env).unwrap();
            assert_eq!(c.credentials, credentials, "case {i}");
            assert!(
                c.credentials_from.starts_with(from),
                "case {i}: {}",
                c.credentials_from
            );
            assert_eq!(c.endpoint, endpoint, "case {i}");
        }
    }

    /// With `STORAGE_EMULATOR_HOST` set, credentials of the environment are
    /// not sent (Google's clients go anonymous); credentials passed
    /// explicitly are, but never over plain http to a host that is not
    /// loopback without `allow_plain_http`.
    #[test]
    fn emulators_get_no_token_and_plain_http_gets_none_without_a_flag() {
        let home = tempfile::tempdir().unwrap();
        let sa = home.path().join("sa.json");
        std::fs::write(&sa, "{}").unwrap();
        let sa = sa.to_str().unwrap();
        for emulator in ["127.0.0.1:4443", "gcs-emulator.internal:4443"] {
            let c = GcsConfig::resolve_in(
                &GcsOptions::default(),
                &env(&[
                    ("STORAGE_EMULATOR_HOST", emulator),
                    ("GOOGLE_APPLICATION_CREDENTIALS", sa),
                    ("GOOGLE_SERVICE_ACCOUNT_KEY", "{\"k\":1}"),
                ]),
            )
            .unwrap();
            assert_eq!(c.credentials, GcsCredentials::Anonymous, "{emulator}");
        }
        let explicit = |endpoint: &str, allow: bool| {
            GcsConfig::resolve_in(
                &GcsOptions {
                    service_account_key: Some("{}".into()),
                    allow_plain_http: allow,
                    ..Default::default()
                },
                &env(&[("STORAGE_EMULATOR_HOST", endpoint)]),
            )
        };
        // Loopback: the token stays on the machine.
        for loopback in ["127.0.0.1:4443", "localhost:4443", "http://[::1]:4443"] {
            let c = explicit(loopback, false).unwrap();
            assert!(matches!(
                c.credentials,
                GcsCredentials::ServiceAccountKey(_)
            ));
        }
        let e = explicit("gcs.internal:4443", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in the clear to http://gcs.internal:4443"),
            "{e}"
        );
        assert!(explicit("gcs.internal:4443", true).is_ok());
        // An explicit https endpoint is fine.
        let c = GcsConfig::resolve_in(
            &GcsOptions {
                service_account_key: Some("{}".into()),
                endpoint: Some("https://gcs.internal".into()),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap();
        assert_eq!(c.endpoint, "https://gcs.internal");
    }

    #[test]
    fn a_missing_application_credentials_file_is_named() {
        let e = GcsConfig::resolve_in(
            &GcsOptions::default(),
            &env(&[("GOOGLE_APPLICATION_CREDENTIALS", "/no/such.json")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("GOOGLE_APPLICATION_CREDENTIALS names /no/such.json"),
            "{e}"
        );
    }

    #[test]
    fn keys_are_not_debug_printed() {
        let o = GcsOptions {
            service_account_key: Some("SECRET-KEY".into()),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains("SECRET"));
        assert!(
            !format!("{:?}", GcsCredentials::ServiceAccountKey("SECRET".into())).contains("SECRET")
        );
    }
}
