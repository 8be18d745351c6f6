//! Where Azure Blob Storage credentials, account and endpoint come from,
//! resolved the way Azure's tools find them.
//!
//! Each field, first found wins: explicit [`AzureOptions`] (the CLI's
//! `--azure-*` flags), then the connection string (`--azure-connection-string`
//! or `AZURE_STORAGE_CONNECTION_STRING`: `AccountName`, `AccountKey`,
//! `SharedAccessSignature`, `BlobEndpoint`, `EndpointSuffix`,
//! `DefaultEndpointsProtocol`, or `UseDevelopmentStorage=true`), then the
//! variables `AZURE_STORAGE_ACCOUNT` (or `_ACCOUNT_NAME`),
//! `AZURE_STORAGE_KEY` (or `_ACCOUNT_KEY`, `_ACCESS_KEY`),
//! `AZURE_STORAGE_SAS_TOKEN`, `AZURE_STORAGE_ENDPOINT`.
//!
//! Credentials: an account key; else a SAS token; else Azurite's
//! well-known development key when the emulator is asked for
//! (`--azure-use-emulator`, `AZURE_STORAGE_USE_EMULATOR=true`,
//! `UseDevelopmentStorage=true`); else a service principal
//! (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_CLIENT_SECRET`); else
//! workload identity (`AZURE_FEDERATED_TOKEN_FILE` with the client and
//! tenant ids, as AKS injects them); else `--azure-anonymous` for public
//! containers; else the managed identity of the VM or pod (IMDS).
//!
//! Endpoint: explicit, `BlobEndpoint`, `AZURE_STORAGE_ENDPOINT`, Azurite's
//! (`AZURITE_BLOB_STORAGE_URL` or `http://127.0.0.1:10000`, plus
//! `/devstoreaccount1`), else `https://{account}.blob.core.windows.net`.

use std::collections::HashMap;

use crate::env::{Environment, ProcessEnvironment};
use crate::error::{IoError, Result};

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, documented by Microsoft).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// What the caller says about Azure; `None` means "look it up".
#[derive(Clone, Default)]
pub struct AzureOptions {
    /// Storage account name.
    pub account: Option<String>,
    /// Storage account key.
    pub access_key: Option<String>,
    /// A SAS token (`sv=...&sig=...`, with or without the leading `?`).
    pub sas_token: Option<String>,
    /// A connection string, as the Azure portal shows it.
    pub connection_string: Option<String>,
    /// Blob service URL, e.g. `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Option<String>,
    /// Talk to Azurite with its development account.
    pub use_emulator: bool,
    /// Unsigned requests, for public containers.
    pub anonymous: bool,
    /// Bytes per block of an upload (default 16 MiB).
    pub part_size: Option<u64>,
}

impl std::fmt::Debug for AzureOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("AzureOptions")
            .field("account", &self.account)
            .field("access_key", &redact(&self.access_key))
            .field("sas_token", &redact(&self.sas_token))
            .field("connection_string", &redact(&self.connection_string))
            .field("endpoint", &self.endpoint)
            .field("use_emulator", &self.use_emulator)
            .field("anonymous", &self.anonymous)
            .field("part_size", &self.part_size)
            .finish()
    }
}

/// How Azure requests are authorized.
#[derive(Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    /// Shared key signing with the account key.
    AccessKey(String),
    /// A SAS token appended to every request.
    Sas(String),
    /// A service principal's client secret.
    ClientSecret {
        /// Application (client) id.
        client_id: String,
        /// Directory (tenant) id.
        tenant_id: String,
        /// The secret.
        secret: String,
    },
    /// Workload identity: a federated token file (AKS).
    WorkloadIdentity {
        /// Application (client) id.
        client_id: String,
        /// Directory (tenant) id.
        tenant_id: String,
        /// The projected token file.
        token_file: String,
    },
    /// Unsigned requests (public containers).
    Anonymous,
    /// The managed identity of the VM or pod (IMDS), optionally a
    /// user-assigned one.
    ManagedIdentity {
        /// The user-assigned identity's client id.
        client_id: Option<String>,
    },
}

impl std::fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AccessKey(_) => f.write_str("AccessKey(<redacted>)"),
            Self::Sas(_) => f.write_str("Sas(<redacted>)"),
            Self::ClientSecret { client_id, .. } => {
                write!(f, "ClientSecret({client_id}, <redacted>)")
            }
            Self::WorkloadIdentity {
                client_id,
                token_file,
                ..
            } => {
                write!(f, "WorkloadIdentity({client_id}, {token_file})")
            }
            Self::Anonymous => f.write_str("Anonymous"),
            Self::ManagedIdentity { client_id } => write!(f, "ManagedIdentity({client_id:?})"),
        }
    }
}

/// Everything needed to talk to one Azure storage account, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureConfig {
    /// The storage account.
    pub account: String,
    /// Authorization.
    pub credentials: AzureCredentials,
    /// Where the credentials came from, for messages.
    pub credentials_from: String,
    /// Blob service URL, without a trailing slash; containers go below it.
    pub endpoint: String,
    /// Bytes per block, if fixed by the caller.
    pub part_size: Option<u64>,
}

/// The fields of a connection string this crate uses.
#[derive(Debug, Default)]
struct ConnectionString {
    account: Option<String>,
    key: Option<String>,
    sas: Option<String>,
    endpoint: Option<String>,
    emulator: bool,
}

fn parse_connection_string(text: &str) -> std::result::Result<ConnectionString, String> {
    let mut fields = HashMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not Key=Value"))?;
        fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let get = |k: &str| fields.get(k).cloned().filter(|v| !v.is_empty());
    if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(ConnectionString {
            emulator: true,
            ..Default::default()
        });
    }
    let account = get("accountname");
    let endpoint = get("blobendpoint").or_else(|| {
        let account = account.as_ref()?;
        let protocol = get("defaultendpointsprotocol").unwrap_or_else(|| "https".into());
        let suffix = get("endpointsuffix").unwrap_or_else(|| "core.windows.net".into());
        Some(format!("{protocol}://{account}.blob.{suffix}"))
    });
    let cs = ConnectionString {
        account,
        key: get("accountkey"),
        sas: get("sharedaccesssignature"),
        endpoint,
        emulator: false,
    };
    if cs.account.is_none() && cs.endpoint.is_none() {
        return Err("it names neither AccountName nor BlobEndpoint".into());
    }
    Ok(cs)
}

impl AzureConfig {
    /// Resolves `options` for an object whose URI names `uri_account` (if
    /// any) against the process environment.
    pub fn resolve(options: &AzureOptions, uri_account: Option<&str>) -> Result<Self> {
        Self::resolve_in(options, uri_account, &ProcessEnvironment)
    }

    /// Resolves against `env` (see the module docs for the order).
    pub fn resolve_in(
        options: &AzureOptions,
        uri_account: Option<&str>,
        env: &dyn Environment,
    ) -> Result<Self> {
        let var = |name: &str| env.var(name).filter(|v| !v.is_empty());
        let first = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|n| var(n).map(|v| (v, (*n).to_owned())))
        };
        let error = |message: String| IoError::Unsupported {
            uri: "az://".into(),
            message,
        };
        let (cs, cs_from) = match (
            &options.connection_string,
            var("AZURE_STORAGE_CONNECTION_STRING"),
        ) {
            (Some(text), _) => (Some(text.clone()), "--azure-connection-string"),
            (None, Some(text)) => (Some(text), "AZURE_STORAGE_CONNECTION_STRING"),
            (None, None) => (None, ""),
        };
        let cs = match cs {
            Some(text) => parse_connection_string(&text).map_err(|why| {
                error(format!(
                    "the connection string from {cs_from} is unusable: {why}"
                ))
            })?,
            None => ConnectionString::default(),
        };
        let emulator = options.use_emulator
            || cs.emulator
            || var("AZURE_STORAGE_USE_EMULATOR")
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        let emulator_from = if options.use_emulator {
            "--azure-use-emulator"
        } else if cs.emulator {
            cs_from
        } else {
            "AZURE_STORAGE_USE_EMULATOR"
        };

        let account = uri_account
            .map(str::to_owned)
            .or_else(|| options.account.clone())
            .or(cs.account)
            .or_else(|| {
                first(&["AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_NAME"]).map(|(v, _)| v)
            })
            .or_else(|| emulator.then(|| AZURITE_ACCOUNT.to_owned()))
            .ok_or_else(|| {
                error(
                    "no Azure storage account: name it in the URI \
                     (az://CONTAINER@ACCOUNT.blob.core.windows.net/KEY), with --azure-account, \
                     AZURE_STORAGE_ACCOUNT or a connection string"
                        .into(),
                )
            })?;

        use AzureCredentials as C;
        let key = options
            .access_key
            .clone()
            .map(|k| (k, "--azure-access-key".to_owned()))
            .or_else(|| cs.key.map(|k| (k, cs_from.to_owned())))
            .or_else(|| {
                first(&[
                    "AZURE_STORAGE_KEY",
                    "AZURE_STORAGE_ACCOUNT_KEY",
                    "AZURE_STORAGE_ACCESS_KEY",
                ])
            });
        let sas = options
            .sas_token
            .clone()
            .map(|k| (k, "--azure-sas-token".to_owned()))
            .or_else(|| cs.sas.map(|k| (k, cs_from.to_owned())))
            .or_else(|| first(&["AZURE_STORAGE_SAS_TOKEN"]));
        let client = first(&["AZURE_CLIENT_ID"]).map(|(v, _)| v);
        let tenant = first(&["AZURE_TENANT_ID"]).map(|(v, _)| v);
        let (credentials, from) = if options.anonymous {
            (C::Anonymous, "--azure-anonymous".to_owned())
        } else if let Some((key, from)) = key {
            (C::AccessKey(key), from)
        } else if let Some((sas, from)) = sas {
            (C::Sas(sas.trim_start_matches('?').to_owned()), from)
        } else if emulator {
            (
                C::AccessKey(AZURITE_KEY.to_owned()),
                format!("Azurite's development key ({emulator_from})"),
            )
        } else if let (Some(client_id), Some(tenant_id), Some(secret)) =
            (client.clone(), tenant.clone(), var("AZURE_CLIENT_SECRET"))
        {
            (
                C::ClientSecret {
                    client_id,
                    tenant_id,
                    secret,
                },
                "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET".into(),
            )
        } else if let (Some(client_id), Some(tenant_id), Some(token_file)) =
            (client.clone(), tenant, var("AZURE_FEDERATED_TOKEN_FILE"))
        {
            (
                C::WorkloadIdentity {
                    client_id,
                    tenant_id,
                    token_file,
                },
                "workload identity (AZURE_FEDERATED_TOKEN_FILE)".into(),
            )
        } else {
            (
                C::ManagedIdentity { client_id: client },
                "none found: the managed identity (IMDS)".into(),
            )
        };

        let endpoint = options
            .endpoint
            .clone()
            .or(cs.endpoint)
            .or_else(|| var("AZURE_STORAGE_ENDPOINT"))
            .or_else(|| {
                emulator.then(|| {
                    let base = var("AZURITE_BLOB_STORAGE_URL")
                        .unwrap_or_else(|| "http://127.0.0.1:10000".into());
                    format!("{}/{account}", base.trim_end_matches('/'))
                })
            })
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"))
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            account,
            credentials,
            credentials_from: from,
            endpoint,
            part_size: options.part_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::table as env;

    #[test]
    #[allow(clippy::type_complexity, reason = "a table of cases")]
    fn credential_chain_table() {
        use AzureCredentials as C;
        let cases: Vec<(
            AzureOptions,
            Option<&str>,
            HashMap<String, String>,
            &str,
            C,
            &str,
            &str,
        )> = vec![
            // Account and key from the variables.
            (
                AzureOptions::default(),
                None,
                env(&[
                    ("AZURE_STORAGE_ACCOUNT", "acct"),
                    ("AZURE_STORAGE_KEY", "a2V5"),
                ]),
                "acct",
                C::AccessKey("a2V5".into()),
                "AZURE_STORAGE_KEY",
                "https://acct.blob.core.windows.net",
            ),
            // The URI's account wins; flags win over variables.
            (
                AzureOptions {
                    access_key: Some("ZmxhZw==".into()),
                    ..Default::default()
                },
                Some("fromuri"),
                env(&[
                    ("AZURE_STORAGE_ACCOUNT", "acct"),
                    ("AZURE_STORAGE_KEY", "a2V5"),
                ]),
                "fromuri",
                C::AccessKey("ZmxhZw==".into()),
                "--azure-access-key",
                "https://fromuri.blob.core.windows.net",
            ),
            // A connection string with its own endpoint suffix.
            (
                AzureOptions::default(),
                None,
                env(&[(
                    "AZURE_STORAGE_CONNECTION_STRING",
                    "DefaultEndpointsProtocol=https;AccountName=cn;AccountKey=Y24=;EndpointSuffix=core.chinacloudapi.cn",
                )]),
                "cn",
                C::AccessKey("Y24=".into()),
                "AZURE_STORAGE_CONNECTION_STRING",
                "https://cn.blob.core.chinacloudapi.cn",
            ),
            // A SAS connection string with a BlobEndpoint.
            (
                AzureOptions::default(),
                None,
                env(&[
                    (
                        "AZURE_STORAGE_CONNECTION_STRING",
                        "BlobEndpoint=https://sas.blob.core.windows.net/;SharedAccessSignature=sv=2022&sig=abc",
                    ),
                    ("AZURE_STORAGE_ACCOUNT", "sas"),
                ]),
                "sas",
                C::Sas("sv=2022&sig=abc".into()),
                "AZURE_STORAGE_CONNECTION_STRING",
                "https://sas.blob.core.windows.net",
            ),
            // A SAS token variable, leading '?' dropped.
            (
                AzureOptions::default(),
                None,
                env(&[
                    ("AZURE_STORAGE_ACCOUNT", "a"),
                    ("AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=x"),
                ]),
                "a",
                C::Sas("sv=1&sig=x".into()),
                "AZURE_STORAGE_SAS_TOKEN",
                "https://a.blob.core.windows.net",
            ),
            // Azurite: development account, key and endpoint.
            (
                AzureOptions::default(),
                None,
                env(&[(
                    "AZURE_STORAGE_CONNECTION_STRING",
                    "UseDevelopmentStorage=true",
                )]),
                AZURITE_ACCOUNT,
                C::AccessKey(AZURITE_KEY.into()),
                "Azurite's development key",
                "http://127.0.0.1:10000/devstoreaccount1",
            ),
            (
                AzureOptions {
                    use_emulator: true,
                    ..Default::default()
                },
                None,
                env(&[("AZURITE_BLOB_STORAGE_URL", "http://127.0.0.1:10010/")]),
                AZURITE_ACCOUNT,
                C::AccessKey(AZURITE_KEY.into()),
                "Azurite's development key (--azure-use-emulator)",
                "http://127.0.0.1:10010/devstoreaccount1",
            ),
            // A service principal, then workload identity, then managed identity.
            (
                AzureOptions::default(),
                Some("a"),
                env(&[
                    ("AZURE_CLIENT_ID", "cid"),
                    ("AZURE_TENANT_ID", "tid"),
                    ("AZURE_CLIENT_SECRET", "s"),
                    ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
                ]),
                "a",
                C::ClientSecret {
                    client_id: "cid".into(),
                    tenant_id: "tid".into(),
                    secret: "s".into(),
                },
                "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET",
                "https://a.blob.core.windows.net",
            ),
            (
                AzureOptions::default(),
                Some("a"),
                env(&[
                    ("AZURE_CLIENT_ID", "cid"),
                    ("AZURE_TENANT_ID", "tid"),
                    ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
                ]),
                "a",
                C::WorkloadIdentity {
                    client_id: "cid".into(),
                    tenant_id: "tid".into(),
                    token_file: "/var/run/token".into(),
                },
                "workload identity",
                "https://a.blob.core.windows.net",
            ),
            (
                AzureOptions::default(),
                Some("a"),
                env(&[("AZURE_CLIENT_ID", "cid")]),
                "a",
                C::ManagedIdentity {
                    client_id: Some("cid".into()),
                },
                "none found: the managed identity",
                "https://a.blob.core.windows.net",
            ),
            (
                AzureOptions {
                    anonymous: true,
                    endpoint: Some("http://127.0.0.1:9/a/".into()),
                    ..Default::default()
                },
                Some("a"),
                env(&[("AZURE_STORAGE_KEY", "a2V5")]),
                "a",
                C::Anonymous,
                "--azure-anonymous",
                "http://127.0.0.1:9/a",
            ),
        ];
        for (i, (options, uri_account, env, account, credentials, from, endpoint)) in
            cases.into_iter().enumerate()
        {
            let c = AzureConfig::resolve_in(&options, uri_account, &env).unwrap();
            assert_eq!(c.account, account, "case {i}");
            assert_eq!(c.credentials, credentials, "case {i}");
            assert!(
                c.credentials_from.starts_with(from),
                "case {i}: {}",
                c.credentials_from
            );
            assert_eq!(c.endpoint, endpoint, "case {i}");
        }
    }

    #[test]
    fn errors_say_what_to_set() {
        let e = AzureConfig::resolve_in(&AzureOptions::default(), None, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no Azure storage account") && e.contains("AZURE_STORAGE_ACCOUNT"),
            "{e}"
        );
        let e = AzureConfig::resolve_in(
            &AzureOptions::default(),
            None,
            &env(&[("AZURE_STORAGE_CONNECTION_STRING", "garbage")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("AZURE_STORAGE_CONNECTION_STRING is unusable"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let o = AzureOptions {
            access_key: Some("SECRETKEY".into()),
            sas_token: Some("SECRETSAS".into()),
            connection_string: Some("AccountName=a;AccountKey=SECRETCS".into()),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains("SECRET"));
        let c = AzureConfig::resolve_in(&o, Some("a"), &env(&[])).unwrap();
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
