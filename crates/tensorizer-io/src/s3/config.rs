//! Where S3 credentials, endpoint and region come from, resolved the way
//! the Python library does (FORMAT.md §8), plus vLLM's variables.
//!
//! Precedence, first found wins, per field:
//! 1. explicit [`S3Options`] values (the CLI's `--s3-*` flags);
//! 2. vLLM's `S3_ACCESS_KEY_ID`, `S3_SECRET_ACCESS_KEY`, `S3_ENDPOINT_URL`
//!    (vLLM passes these to the Python library as explicit arguments);
//! 3. when a key is still missing: the s3cmd config (`config_path`, which
//!    must exist, or `~/.s3cfg`), section `[default]`: `access_key`,
//!    `secret_key`, `host_base` (endpoint), `use_https`;
//! 4. `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`;
//! 5. `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`, profile
//!    `AWS_PROFILE` or `default`);
//! 6. otherwise anonymous (unsigned) requests, as Python retries with; when
//!    a web-identity or container credential is configured, the AWS chain
//!    of `object_store` is used instead.
//!
//! Endpoint: explicit, `S3_ENDPOINT_URL`, `host_base`, `AWS_ENDPOINT_URL_S3`,
//! `AWS_ENDPOINT_URL`, else AWS itself. A scheme-less endpoint gets
//! `https://`, or `http://` when `force_http` (or `use_https = False`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::env::{Environment, ProcessEnvironment};
use crate::error::{IoError, Result};

/// How bucket names go into URLs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Addressing {
    /// Virtual-hosted for AWS and CoreWeave (`cwobject.com`, `cwlota.com`,
    /// which refuse path-style), path-style for other endpoints (local
    /// servers, MinIO, Ceph), as boto does with a custom endpoint.
    #[default]
    Auto,
    /// `https://endpoint/bucket/key`.
    Path,
    /// `https://bucket.endpoint/key`.
    VirtualHosted,
}

/// What the caller says about S3; `None` means "look it up".
#[derive(Clone, Default)]
pub struct S3Options {
    /// Access key id (`""` with an empty secret means anonymous).
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// Endpoint URL or host, for S3-compatible stores.
    pub endpoint: Option<String>,
    /// Region used for signing (default `us-east-1`).
    pub region: Option<String>,
    /// An s3cmd config file to use instead of `~/.s3cfg`; it must exist.
    pub config_path: Option<PathBuf>,
    /// Use `http://` for scheme-less endpoints.
    pub force_http: Option<bool>,
    /// Path-style or virtual-hosted URLs.
    pub addressing: Addressing,
    /// Bytes per multipart-upload part (default: 16 MiB, grown so that a
    /// file needs at most 10 000 parts; at least 5 MiB).
    pub part_size: Option<u64>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("config_path", &self.config_path)
            .field("force_http", &self.force_http)
            .field("addressing", &self.addressing)
            .field("part_size", &self.part_size)
            .finish()
    }
}

/// How requests are signed.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Unsigned requests (public buckets).
    Anonymous,
    /// A key pair, with a session token for temporary credentials.
    Keys {
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: String,
        /// Session token.
        session_token: Option<String>,
    },
    /// The AWS chain of `object_store` (web identity, container credentials).
    Ambient,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Ambient => f.write_str("Ambient"),
            Self::Keys { access_key_id, .. } => write!(f, "Keys({access_key_id}, <redacted>)"),
        }
    }
}

/// Everything needed to talk to one S3 service, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Signing.
    pub credentials: Credentials,
    /// Where the credentials came from, for messages (`"--s3-* flags"`, `"~/.s3cfg"`, ...).
    pub credentials_from: String,
    /// `scheme://host[:port]` of an S3-compatible service; `None` is AWS.
    pub endpoint: Option<String>,
    /// Signing region.
    pub region: String,
    /// Path-style or virtual-hosted, decided (never `Auto`).
    pub addressing: Addressing,
    /// Bytes per multipart part, if fixed by the caller.
    pub part_size: Option<u64>,
}

#[derive(Debug, Default)]
struct S3cmdConfig {
    access_key: Option<String>,
    secret_key: Option<String>,
    host_base: Option<String>,
    use_https: Option<bool>,
}

impl S3Config {
    /// Resolves `options` against the process environment.
    pub fn resolve(options: &S3Options) -> Result<Self> {
        Self::resolve_in(options, &ProcessEnvironment)
    }

    /// Resolves `options` against `env` (see the module docs for the order).
    pub fn resolve_in(options: &S3Options, env: &dyn Environment) -> Result<Self> {
        let nonempty = |name: &str| env.var(name).filter(|v| !v.is_empty());
        let mut from = Vec::new();
        let mut id = options.access_key_id.clone();
        let mut secret = options.secret_access_key.clone();
        let mut token = options.session_token.clone();
        if id.is_some() || secret.is_some() {
            from.push("explicit options");
        }
        if id.is_none() {
            id = nonempty("S3_ACCESS_KEY_ID").inspect(|_| from.push("S3_ACCESS_KEY_ID"));
        }
        if secret.is_none() {
            secret =
                nonempty("S3_SECRET_ACCESS_KEY").inspect(|_| from.push("S3_SECRET_ACCESS_KEY"));
        }
        let mut endpoint = options
            .endpoint
            .clone()
            .or_else(|| nonempty("S3_ENDPOINT_URL"));
        let mut force_http = options.force_http;

        if (id.is_none() || secret.is_none())
            && let Some((path, cfg)) = s3cmd_config(options.config_path.as_deref(), env)?
        {
            if id.is_none() && cfg.access_key.is_some() {
                id = cfg.access_key;
                from.push("s3cmd config");
            }
            if secret.is_none() && cfg.secret_key.is_some() {
                secret = cfg.secret_key;
                from.push("s3cmd config");
            }
            endpoint = endpoint.or(cfg.host_base);
            force_http = force_http.or(cfg.use_https.map(|https| !https));
            tracing::debug!(path = %path.display(), "read s3cmd config");
        }
        if id.is_none()
            && secret.is_none()
            && let (Some(i), Some(s)) = (
                nonempty("AWS_ACCESS_KEY_ID"),
                nonempty("AWS_SECRET_ACCESS_KEY"),
            )
        {
            (id, secret, token) = (Some(i), Some(s), token.or(nonempty("AWS_SESSION_TOKEN")));
            from.push("AWS_* environment");
        }
        if id.is_none()
            && secret.is_none()
            && let Some((i, s, t)) = aws_shared_credentials(env)
        {
            (id, secret, token) = (Some(i), Some(s), token.or(t));
            from.push("AWS shared credentials file");
        }
        from.dedup();

        let credentials = match (id, secret) {
            (Some(i), Some(s)) if i.is_empty() && s.is_empty() => Credentials::Anonymous,
            (Some(access_key_id), Some(secret_access_key)) => Credentials::Keys {
                access_key_id,
                secret_access_key,
                session_token: token,
            },
            (None, None) => {
                if nonempty("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
                    || nonempty("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
                    || nonempty("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
                {
                    from.push("AWS web identity / container credentials");
                    Credentials::Ambient
                } else {
                    from.push("none found: anonymous requests");
                    Credentials::Anonymous
                }
            }
            (Some(_), None) | (None, Some(_)) => {
                let (have, lack) =
                    if options.access_key_id.is_some() || env.var("S3_ACCESS_KEY_ID").is_some() {
                        ("an access key id", "secret access key")
                    } else {
                        ("a secret access key", "access key id")
                    };
                return Err(IoError::Unsupported {
                    uri: "s3://".into(),
                    message: format!(
                        "S3 credentials are incomplete: found {have} ({}) but no {lack}; \
                         give both (--s3-access-key-id/--s3-secret-access-key, \
                         S3_* or AWS_* variables, or ~/.s3cfg)",
                        from.join(", ")
                    ),
                });
            }
        };

        let endpoint = endpoint
            .or_else(|| nonempty("AWS_ENDPOINT_URL_S3"))
            .or_else(|| nonempty("AWS_ENDPOINT_URL"))
            .map(|e| normalize_endpoint(&e, force_http.unwrap_or(false)));
        let region = options
            .region
            .clone()
            .or_else(|| nonempty("AWS_REGION"))
            .or_else(|| nonempty("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let addressing = match options.addressing {
            Addressing::Auto => match &endpoint {
                None => Addressing::VirtualHosted,
                Some(e) if is_coreweave(e) => Addressing::VirtualHosted,
                Some(_) => Addressing::Path,
            },
            chosen => chosen,
        };
        Ok(Self {
            credentials,
            credentials_from: from.join(", "),
            endpoint,
            region,
            addressing,
            part_size: options.part_size,
        })
    }

    /// The base URL requests for `bucket` go to: the endpoint for
    /// path-style, the endpoint with the bucket as a subdomain for
    /// virtual-hosted, `None` for AWS (the client knows its URLs).
    pub fn bucket_endpoint(&self, bucket: &str) -> Option<String> {
        let endpoint = self.endpoint.as_ref()?;
        Some(match self.addressing {
            Addressing::VirtualHosted => match endpoint.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{bucket}.{host}"),
                None => format!("{bucket}.{endpoint}"),
            },
            _ => endpoint.clone(),
        })
    }
}

/// `host[:port]` → `https://host[:port]`; trailing slashes dropped.
fn normalize_endpoint(endpoint: &str, force_http: bool) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else if force_http {
        format!("http://{endpoint}")
    } else {
        format!("https://{endpoint}")
    }
}

/// CoreWeave's object storage answers virtual-hosted requests only.
fn is_coreweave(endpoint: &str) -> bool {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, h)| h)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    ["cwobject.com", "cwlota.com"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

/// The `[default]` section of the s3cmd config: `explicit` must exist; the
/// default `~/.s3cfg` is used when readable. Parse errors of an explicit
/// file are errors; of the default file, a warning (Python swallows them).
fn s3cmd_config(
    explicit: Option<&Path>,
    env: &dyn Environment,
) -> Result<Option<(PathBuf, S3cmdConfig)>> {
    let (path, required) = match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => match env.home() {
            Some(home) => (home.join(".s3cfg"), false),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if required => {
            return Err(IoError::Local {
                uri: path.display().to_string(),
                action: "reading the s3cmd config given".into(),
                source: e,
            });
        }
        Err(_) => return Ok(None),
    };
    match parse_s3cmd(&text) {
        Ok(cfg) => Ok(Some((path, cfg))),
        Err(message) if required => Err(IoError::Unsupported {
            uri: path.display().to_string(),
            message,
        }),
        Err(message) => {
            tracing::warn!(path = %path.display(), "ignoring unusable s3cmd config: {message}");
            Ok(None)
        }
    }
}

/// INI `[section]` → `key = value` pairs, as Python's configparser reads
/// the simple files s3cmd and the AWS CLI write.
fn ini_sections(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_owned());
            sections.entry(name.trim().to_owned()).or_default();
        } else if let (Some(section), Some((k, v))) = (
            &current,
            line.split_once('=').or_else(|| line.split_once(':')),
        ) {
            sections
                .get_mut(section)
                .expect("section inserted above")
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    sections
}

fn parse_s3cmd(text: &str) -> std::result::Result<S3cmdConfig, String> {
    let sections = ini_sections(text);
    let default = sections
        .get("default")
        .ok_or_else(|| "no [default] section".to_owned())?;
    let get = |k: &str| default.get(k).cloned().filter(|v| !v.is_empty());
    let use_https = match default.get("use_https").map(String::as_str) {
        None => None,
        Some("True") => Some(true),
        Some("False") => Some(false),
        Some(other) => return Err(format!("use_https must be True or False, not {other:?}")),
    };
    Ok(S3cmdConfig {
        access_key: get("access_key"),
        secret_key: get("secret_key"),
        host_base: get("host_base"),
        use_https,
    })
}

/// Keys of the AWS CLI's shared credentials file.
fn aws_shared_credentials(env: &dyn Environment) -> Option<(String, String, Option<String>)> {
    let path = env
        .var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| Some(env.home()?.join(".aws/credentials")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let profile = env.var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let sections = ini_sections(&text);
    let section = sections.get(&profile)?;
    Some((
        section.get("aws_access_key_id")?.clone(),
        section.get("aws_secret_access_key")?.clone(),
        section.get("aws_session_token").cloned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::table as env;

    fn keys(c: &S3Config) -> Option<(&str, &str)> {
        match &c.credentials {
            Credentials::Keys {
                access_key_id,
                secret_access_key,
                ..
            } => Some((access_key_id, secret_access_key)),
            _ => None,
        }
    }

    fn home_with(s3cfg: Option<&str>, aws: Option<&str>) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        if let Some(text) = s3cfg {
            std::fs::write(home.path().join(".s3cfg"), text).unwrap();
        }
        if let Some(text) = aws {
            std::fs::create_dir(home.path().join(".aws")).unwrap();
            std::fs::write(home.path().join(".aws/credentials"), text).unwrap();
        }
        home
    }

    const S3CFG: &str = "[default]\naccess_key = CFGID\nsecret_key = CFGSECRET\nhost_base = object.example.com:9000\nuse_https = False\n";

    #[test]
    #[allow(clippy::type_complexity, reason = "a table of cases")]
    fn precedence_table() {
        let home = home_with(
            Some(S3CFG),
            Some("[default]\naws_access_key_id = SHAREDID\naws_secret_access_key = SHAREDSECRET\n"),
        );
        let h = home.path().to_str().unwrap();
        let explicit = S3Options {
            access_key_id: Some("FLAGID".into()),
            secret_access_key: Some("FLAGSECRET".into()),
            ..Default::default()
        };
        // (options, env, expected keys, expected endpoint)
        let cases: Vec<(
            S3Options,
            HashMap<String, String>,
            Option<(&str, &str)>,
            Option<&str>,
        )> = vec![
            // Explicit keys: the s3cmd config is not read at all (host_base ignored).
            (
                explicit.clone(),
                env(&[
                    ("HOME", h),
                    ("AWS_ACCESS_KEY_ID", "E"),
                    ("AWS_SECRET_ACCESS_KEY", "S"),
                ]),
                Some(("FLAGID", "FLAGSECRET")),
                None,
            ),
            // vLLM variables count as explicit.
            (
                S3Options::default(),
                env(&[
                    ("HOME", h),
                    ("S3_ACCESS_KEY_ID", "VID"),
                    ("S3_SECRET_ACCESS_KEY", "VSECRET"),
                    ("S3_ENDPOINT_URL", "http://127.0.0.1:9"),
                ]),
                Some(("VID", "VSECRET")),
                Some("http://127.0.0.1:9"),
            ),
            // Nothing explicit: ~/.s3cfg, with host_base and use_https = False.
            (
                S3Options::default(),
                env(&[
                    ("HOME", h),
                    ("AWS_ACCESS_KEY_ID", "E"),
                    ("AWS_SECRET_ACCESS_KEY", "S"),
                ]),
                Some(("CFGID", "CFGSECRET")),
                Some("http://object.example.com:9000"),
            ),
            // One key explicit, the other from ~/.s3cfg.
            (
                S3Options {
                    access_key_id: Some("FLAGID".into()),
                    ..Default::default()
                },
                env(&[("HOME", h)]),
                Some(("FLAGID", "CFGSECRET")),
                Some("http://object.example.com:9000"),
            ),
            // An explicit endpoint beats host_base; use_https = False still applies.
            (
                S3Options {
                    endpoint: Some("minio.local".into()),
                    ..Default::default()
                },
                env(&[("HOME", h)]),
                Some(("CFGID", "CFGSECRET")),
                Some("http://minio.local"),
            ),
            // No s3cmd config: AWS_* env, endpoint from AWS_ENDPOINT_URL_S3 over AWS_ENDPOINT_URL.
            (
                S3Options::default(),
                env(&[
                    ("AWS_ACCESS_KEY_ID", "E"),
                    ("AWS_SECRET_ACCESS_KEY", "S"),
                    ("AWS_ENDPOINT_URL", "http://a:1"),
                    ("AWS_ENDPOINT_URL_S3", "http://b:2/"),
                ]),
                Some(("E", "S")),
                Some("http://b:2"),
            ),
            // Empty keys mean anonymous.
            (
                S3Options {
                    access_key_id: Some(String::new()),
                    secret_access_key: Some(String::new()),
                    ..Default::default()
                },
                env(&[("HOME", h)]),
                None,
                None,
            ),
            // Nothing anywhere: anonymous, AWS.
            (S3Options::default(), env(&[]), None, None),
        ];
        for (i, (options, env, want_keys, want_endpoint)) in cases.into_iter().enumerate() {
            let c = S3Config::resolve_in(&options, &env).unwrap();
            assert_eq!(keys(&c), want_keys, "case {i}: {c:?}");
            assert_eq!(c.endpoint.as_deref(), want_endpoint, "case {i}: {c:?}");
        }
    }

    #[test]
    fn shared_credentials_file_and_profile() {
        let home = home_with(
            None,
            Some(
                "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[prod]\naws_access_key_id = P\naws_secret_access_key = PS\naws_session_token = T\n",
            ),
        );
        let h = home.path().to_str().unwrap();
        let c = S3Config::resolve_in(&S3Options::default(), &env(&[("HOME", h)])).unwrap();
        assert_eq!(keys(&c), Some(("D", "DS")));
        let c = S3Config::resolve_in(
            &S3Options::default(),
            &env(&[("HOME", h), ("AWS_PROFILE", "prod")]),
        )
        .unwrap();
        assert_eq!(keys(&c), Some(("P", "PS")));
        assert!(
            matches!(c.credentials, Credentials::Keys { session_token: Some(ref t), .. } if t == "T")
        );
    }

    #[test]
    fn explicit_config_path_must_exist_and_parse() {
        let missing = S3Options {
            config_path: Some("/nonexistent/s3cfg".into()),
            ..Default::default()
        };
        let e = S3Config::resolve_in(&missing, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/s3cfg"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("cfg");
        std::fs::write(&bad, "[other]\naccess_key = x\n").unwrap();
        let e = S3Config::resolve_in(
            &S3Options {
                config_path: Some(bad),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[default]"), "{e}");

        // A broken default ~/.s3cfg is skipped, as in Python.
        let home = home_with(Some("[default]\nuse_https = yes\n"), None);
        let c = S3Config::resolve_in(
            &S3Options::default(),
            &env(&[("HOME", home.path().to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(c.credentials, Credentials::Anonymous);
    }

    #[test]
    fn half_a_key_pair_is_an_error_naming_the_missing_half() {
        let e = S3Config::resolve_in(
            &S3Options {
                access_key_id: Some("ID".into()),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no secret access key"), "{e}");
    }

    #[test]
    fn addressing_and_bucket_endpoints() {
        let resolve = |endpoint: Option<&str>, addressing| {
            S3Config::resolve_in(
                &S3Options {
                    endpoint: endpoint.map(Into::into),
                    addressing,
                    ..Default::default()
                },
                &env(&[]),
            )
            .unwrap()
        };
        let aws = resolve(None, Addressing::Auto);
        assert_eq!(aws.addressing, Addressing::VirtualHosted);
        assert_eq!(aws.bucket_endpoint("b"), None);
        let cw = resolve(Some("https://cwobject.com"), Addressing::Auto);
        assert_eq!(
            cw.bucket_endpoint("models").as_deref(),
            Some("https://models.cwobject.com")
        );
        let local = resolve(Some("http://127.0.0.1:9000"), Addressing::Auto);
        assert_eq!(local.addressing, Addressing::Path);
        assert_eq!(
            local.bucket_endpoint("b").as_deref(),
            Some("http://127.0.0.1:9000")
        );
        let forced = resolve(Some("http://localhost:9000"), Addressing::VirtualHosted);
        assert_eq!(
            forced.bucket_endpoint("b").as_deref(),
            Some("http://b.localhost:9000")
        );
        assert_eq!(
            resolve(Some("s3.example.com"), Addressing::Auto)
                .endpoint
                .as_deref(),
            Some("https://s3.example.com")
        );
        let region = S3Config::resolve_in(
            &S3Options::default(),
            &env(&[("AWS_DEFAULT_REGION", "eu-west-1")]),
        )
        .unwrap();
        assert_eq!(region.region, "eu-west-1");
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let o = S3Options {
            secret_access_key: Some("SUPERSECRET".into()),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains("SUPERSECRET"));
        let c = S3Config::resolve_in(
            &S3Options {
                access_key_id: Some("ID".into()),
                secret_access_key: Some("SUPERSECRET".into()),
                ..Default::default()
            },
            &env(&[]),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("SUPERSECRET"));
    }
}
