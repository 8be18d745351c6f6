//! Which TLS certificates a client trusts beyond the system's: a CA file
//! or directory for S3-compatible stores and HTTP servers with an internal
//! CA (the library's `CAInfo(cafile=..)`, `CAInfo(capath=..)`), added to
//! the platform's roots, never replacing them; and, only when a caller asks
//! for it by name (the library's `CAInfo(allow_untrusted=True)`, curl's
//! `--insecure`), no verification at all, with a warning.

// Without a network feature nothing builds a client: the loading half is unused.
#![cfg_attr(
    not(any(feature = "http", feature = "object-store")),
    allow(dead_code, unused_imports)
)]

use std::path::PathBuf;

use crate::error::{IoError, Result};

/// Extra CA certificates every client of a load trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TrustOptions {
    /// A PEM file of one or more CA certificates (`SSL_CERT_FILE`,
    /// `AWS_CA_BUNDLE`, curl's `--cacert`).
    pub ca_file: Option<PathBuf>,
    /// A directory of PEM CA certificates (OpenSSL's `capath`, curl's
    /// `--capath`): every regular file in it that parses.
    pub ca_dir: Option<PathBuf>,
    /// Accept any certificate: anyone on the path can then read and change
    /// the bytes. Off unless asked for.
    pub accept_invalid_certs: bool,
}

/// Most bytes read from one CA file: bundles are kilobytes (Mozilla's, all
/// of it, is about 200 KiB).
const MAX_CA_FILE: u64 = 16 << 20;
/// Most files read from a CA directory.
const MAX_CA_DIR_FILES: usize = 10_000;

impl TrustOptions {
    /// True when nothing beyond the system's roots is trusted.
    pub fn is_default(&self) -> bool {
        self.ca_file.is_none() && self.ca_dir.is_none() && !self.accept_invalid_certs
    }

    /// The trust for requests to `url`: none beyond the defaults over plain
    /// `http://`, where no certificate is exchanged (a CA file named for
    /// https endpoints then need not exist, as with curl's `--cacert`).
    pub fn for_url(&self, url: &str) -> TrustOptions {
        let plain = url
            .split_once("://")
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("http"));
        if plain {
            TrustOptions::default()
        } else {
            self.clone()
        }
    }

    /// What the environment names, as OpenSSL, curl and the AWS CLI read
    /// it: `AWS_CA_BUNDLE`, else `SSL_CERT_FILE`; `SSL_CERT_DIR`.
    pub fn from_env(env: &dyn crate::Environment) -> Self {
        let var = |name: &str| env.var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        Self {
            ca_file: var("AWS_CA_BUNDLE").or_else(|| var("SSL_CERT_FILE")),
            ca_dir: var("SSL_CERT_DIR"),
            accept_invalid_certs: false,
        }
    }

    /// The certificates to add, PEM-parsed; a file named explicitly that is
    /// missing, unreadable or holds no certificate is an error naming it.
    #[cfg(any(feature = "http", feature = "object-store"))]
    pub(crate) fn certificates(&self) -> Result<Vec<reqwest::Certificate>> {
        let mut certs = Vec::new();
        if let Some(file) = &self.ca_file {
            let found = read_pem(file)?;
            if found.is_empty() {
                return Err(bad(file, "holds no PEM certificate"));
            }
            certs.extend(found);
        }
        if let Some(dir) = &self.ca_dir {
            let entries = std::fs::read_dir(dir).map_err(|e| bad(dir, &e.to_string()))?;
            let mut files = 0;
            for entry in entries.flatten() {
                let path = entry.path();
                if !path.is_file() {
                    continue;
                }
                files += 1;
                if files > MAX_CA_DIR_FILES {
                    return Err(bad(dir, &format!("holds over {MAX_CA_DIR_FILES} files")));
                }
                // OpenSSL's directories hold other files too (hash links
                // are files; a README is not a certificate): skipped.
                if let Ok(found) = read_pem(&path) {
                    certs.extend(found);
                }
            }
            if certs.is_empty() {
                return Err(bad(dir, "holds no PEM certificate"));
            }
        }
        Ok(certs)
    }
}

#[cfg(any(feature = "http", feature = "object-store"))]
fn read_pem(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| bad(path, &e.to_string()))?;
    if bytes.len() as u64 > MAX_CA_FILE {
        return Err(bad(path, &format!("is over {MAX_CA_FILE} bytes")));
    }
    reqwest::Certificate::from_pem_bundle(&bytes).map_err(|e| bad(path, &e.to_string()))
}

fn bad(path: &std::path::Path, why: &str) -> IoError {
    IoError::Unsupported {
        uri: path.display().to_string(),
        message: format!("CA certificates: {why}"),
    }
}
