//! The Azure Blob client: an `object_store` client for one container, from
//! a resolved [`AzureConfig`].

use std::sync::Arc;

use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};

use super::{AzureConfig, AzureCredentials, AzureOptions, parse_azure_uri};
use crate::RetryPolicy;
use crate::cloud::{self, Object, PartRules, Service};
use crate::error::Result;

/// Block blobs: up to 50 000 blocks, no minimum block size.
const AZURE_PARTS: PartRules = PartRules {
    min: 1 << 20,
    default: 16 << 20,
    max_parts: 50_000,
    quantum: 1,
};

/// Resolves an Azure blob URI: account, credentials, endpoint, client.
pub(crate) fn object(
    uri: &str,
    options: &AzureOptions,
    policy: &RetryPolicy,
    trust: &crate::TrustOptions,
) -> Result<Object> {
    let parsed = parse_azure_uri(uri)?;
    let mut options = options.clone();
    if parsed.sas.is_some() && options.sas_token.is_none() {
        options.sas_token = parsed.sas.clone();
    }
    let config =
        AzureConfig::resolve(&options, parsed.account.as_deref()).map_err(cloud::for_uri(uri))?;
    let service = Service {
        name: "Azure Blob",
        endpoint: config.endpoint.clone(),
        addressing: format!("account {}, container {}", config.account, parsed.container),
        credentials_from: config.credentials_from.clone(),
        fix: "give the account key (--azure-access-key, AZURE_STORAGE_KEY), a SAS token \
              (--azure-sas-token, AZURE_STORAGE_SAS_TOKEN) or a connection string \
              (AZURE_STORAGE_CONNECTION_STRING) for this account; --azure-use-emulator for \
              Azurite"
            .into(),
        parts: AZURE_PARTS,
    };
    let secret = match &config.credentials {
        AzureCredentials::AccessKey(k) | AzureCredentials::Sas(k) => k.clone(),
        AzureCredentials::ClientSecret { secret, .. } => secret.clone(),
        _ => String::new(),
    };
    let cache_config = format!("{config:?}|{secret}|{trust:?}");
    let container = parsed.container;
    let store = || build_store(&container, &config, policy, trust).map_err(|e| e.to_string());
    Object::new(
        uri,
        service,
        (container.clone(), parsed.key),
        cache_config,
        options.part_size,
        policy,
        || {
            Ok((
                Arc::new(store()?) as Arc<dyn cloud::Store>,
                cloud::Upload::Multipart,
            ))
        },
    )
}

fn build_store(
    container: &str,
    config: &AzureConfig,
    policy: &RetryPolicy,
    trust: &crate::TrustOptions,
) -> object_store::Result<object_store::azure::MicrosoftAzure> {
    let builder = MicrosoftAzureBuilder::new()
        .with_account(&config.account)
        .with_container_name(container)
        // An explicit endpoint, Azurite's included: path-style URLs below it,
        // so tests can put a proxy in front of the emulator.
        .with_endpoint(config.endpoint.clone())
        .with_retry(cloud::retry_config(policy))
        .with_client_options(cloud::client_options(policy))
        .with_http_connector(crate::net::Connector::new(
            policy,
            &trust.for_url(&config.endpoint),
        ));
    match &config.credentials {
        AzureCredentials::AccessKey(key) => builder.with_access_key(key),
        AzureCredentials::Sas(sas) => builder.with_config(AzureConfigKey::SasKey, sas),
        AzureCredentials::ClientSecret {
            client_id,
            tenant_id,
            secret,
        } => builder.with_client_secret_authorization(client_id, secret, tenant_id),
        AzureCredentials::WorkloadIdentity {
            client_id,
            tenant_id,
            token_file,
        } => builder
            .with_client_id(client_id)
            .with_tenant_id(tenant_id)
            .with_federated_token_file(token_file),
        AzureCredentials::Anonymous => builder.with_skip_signature(true),
        AzureCredentials::ManagedIdentity { client_id } => {
            let b = builder.with_config(AzureConfigKey::CredentialType, "managed_identity");
            match client_id {
                Some(id) => b.with_client_id(id),
                None => b,
            }
        }
    }
    .build()
}
