//! The URI forms of an Azure blob.

use crate::error::{IoError, Result};

/// An Azure blob named by a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureUri {
    /// The storage account, when the URI names it.
    pub account: Option<String>,
    /// The container.
    pub container: String,
    /// The blob's name in the container.
    pub key: String,
    /// A SAS token in the URI's query (`https://` form).
    pub sas: Option<String>,
}

/// Whether `uri` names an Azure blob: `az://`, `azure://`, `abfs://`,
/// `abfss://`, or `https://ACCOUNT.blob.core.windows.net/...`.
pub fn is_azure_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return false;
    };
    match scheme.to_ascii_lowercase().as_str() {
        "az" | "azure" | "abfs" | "abfss" => true,
        "https" => rest.split(['/', '?']).next().is_some_and(|host| {
            host.to_ascii_lowercase()
                .ends_with(".blob.core.windows.net")
        }),
        _ => false,
    }
}

/// Parses the Azure URI forms:
/// - `az://CONTAINER/KEY` (also `azure://`, `abfs(s)://`): the account
///   comes from the configuration;
/// - `az://CONTAINER@ACCOUNT.blob.core.windows.net/KEY`,
///   `abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/KEY`;
/// - `https://ACCOUNT.blob.core.windows.net/CONTAINER/KEY[?SAS]`.
pub fn parse_azure_uri(uri: &str) -> Result<AzureUri> {
    let bad = |why: &str| IoError::Unsupported {
        uri: uri.to_owned(),
        message: format!(
            "not an Azure blob URI ({why}); expected az://CONTAINER/KEY, \
             az://CONTAINER@ACCOUNT.blob.core.windows.net/KEY or \
             https://ACCOUNT.blob.core.windows.net/CONTAINER/KEY"
        ),
    };
    if !is_azure_uri(uri) {
        return Err(bad("unknown scheme or host"));
    }
    let (scheme, rest) = uri.split_once("://").expect("checked by is_azure_uri");
    let (rest, sas) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q.to_owned()).filter(|q| !q.is_empty())),
        None => (rest, None),
    };
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no key"))?;
    let account_of = |host: &str| -> Result<String> {
        host.split_once('.')
            .filter(|(a, domain)| !a.is_empty() && domain.contains(".core."))
            .map(|(a, _)| a.to_owned())
            .ok_or_else(|| bad("the host is not ACCOUNT.blob.core.windows.net"))
    };
    let (account, container, key) = if scheme.eq_ignore_ascii_case("https") {
        let (container, key) = path.split_once('/').ok_or_else(|| bad("no container"))?;
        (Some(account_of(authority)?), container, key)
    } else if let Some((container, host)) = authority.split_once('@') {
        (Some(account_of(host)?), container, path)
    } else {
        if sas.is_some() {
            return Err(bad(
                "a SAS token goes in --azure-sas-token, not an az:// URI",
            ));
        }
        (None, authority, path)
    };
    if container.is_empty() {
        return Err(bad("empty container name"));
    }
    if key.is_empty() || key.ends_with('/') {
        return Err(bad("the key names a folder, not a blob"));
    }
    Ok(AzureUri {
        account,
        container: container.to_owned(),
        key: key.to_owned(),
        sas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_uris() {
        let p = |u: &str| parse_azure_uri(u).unwrap();
        let plain = p("az://models/vllm/m/v1/model.tensors");
        assert_eq!(
            (plain.account, plain.container.as_str(), plain.key.as_str()),
            (None, "models", "vllm/m/v1/model.tensors")
        );
        let at = p("az://models@acct.blob.core.windows.net/m.tensors");
        assert_eq!(
            (at.account.as_deref(), at.container.as_str()),
            (Some("acct"), "models")
        );
        let dfs = p("abfss://fs@acct.dfs.core.windows.net/dir/m.tensors");
        assert_eq!(
            (dfs.account.as_deref(), dfs.key.as_str()),
            (Some("acct"), "dir/m.tensors")
        );
        let https = p("https://acct.blob.core.windows.net/models/m.tensors?sv=1&sig=x");
        assert_eq!(
            (
                https.account.as_deref(),
                https.container.as_str(),
                https.key.as_str(),
                https.sas.as_deref()
            ),
            (Some("acct"), "models", "m.tensors", Some("sv=1&sig=x"))
        );
        assert!(is_azure_uri("HTTPS://acct.blob.core.windows.net/c/k"));
        assert!(!is_azure_uri("https://example.com/c/k"));
        for bad in [
            "az://models",
            "az://models/",
            "az:///key",
            "az://c/dir/",
            "az://c@example.com/k",
            "https://acct.blob.core.windows.net/onlycontainer",
            "s3://b/k",
        ] {
            assert!(parse_azure_uri(bad).is_err(), "{bad}");
        }
    }
}
