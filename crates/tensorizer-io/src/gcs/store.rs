//! The GCS client: an `object_store` client for one bucket, from a
//! resolved [`GcsConfig`].

use std::sync::Arc;

use object_store::StaticCredentialProvider;
use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder};

use super::resumable::{CHUNK_QUANTUM, json_api};
use super::{GcsConfig, GcsCredentials, GcsOptions};
use crate::RetryPolicy;
use crate::cloud::{self, Object, PartRules, Service, Upload};
use crate::error::Result;

/// Resumable uploads: chunks of 256 KiB multiples, any number of them.
const GCS_PARTS: PartRules = PartRules {
    min: 8 << 20,
    default: 16 << 20,
    max_parts: u64::MAX,
    quantum: CHUNK_QUANTUM,
};

/// `gs://bucket/key` (or `gcs://`) → (bucket, key).
pub fn parse_gcs_uri(uri: &str) -> Result<(String, String)> {
    cloud::parse_bucket_key(uri, &["gs", "gcs"], "GCS")
}

/// Resolves `gs://bucket/key`: credentials, endpoint, client.
pub(crate) fn object(
    uri: &str,
    options: &GcsOptions,
    policy: &RetryPolicy,
    trust: &crate::TrustOptions,
) -> Result<Object> {
    let (bucket, key) = parse_gcs_uri(uri)?;
    let config = GcsConfig::resolve(options).map_err(cloud::for_uri(uri))?;
    let service = Service {
        name: "GCS",
        endpoint: config.endpoint.clone(),
        addressing: format!("path-style, bucket {bucket}"),
        credentials_from: config.credentials_from.clone(),
        fix: "set GOOGLE_APPLICATION_CREDENTIALS (or --gcs-service-account) to a service-account \
              JSON key with storage access, run `gcloud auth application-default login`, or pass \
              --gcs-anonymous for a public bucket; STORAGE_EMULATOR_HOST (or --gcs-endpoint) \
              for an emulator"
            .into(),
        parts: GCS_PARTS,
    };
    let secret = match &config.credentials {
        GcsCredentials::ServiceAccountKey(key) => key.as_str(),
        _ => "",
    };
    let cache_config = format!("{config:?}|{secret}|{trust:?}");
    Object::new(
        uri,
        service,
        (bucket.clone(), key),
        cache_config,
        options.part_size,
        policy,
        || {
            let store = build_store(&bucket, &config, policy, trust).map_err(|e| e.to_string())?;
            let credentials = (config.credentials != GcsCredentials::Anonymous)
                .then(|| store.credentials().clone());
            let api = json_api(
                &config.endpoint,
                &bucket,
                credentials,
                policy,
                &trust.for_url(&config.endpoint),
            )
            .map_err(|e| e.to_string())?;
            Ok((
                Arc::new(store) as Arc<dyn cloud::Store>,
                Upload::GcsResumable(api),
            ))
        },
    )
}

fn build_store(
    bucket: &str,
    config: &GcsConfig,
    policy: &RetryPolicy,
    trust: &crate::TrustOptions,
) -> object_store::Result<object_store::gcp::GoogleCloudStorage> {
    let builder = GoogleCloudStorageBuilder::new()
        .with_bucket_name(bucket)
        .with_base_url(&config.endpoint)
        .with_retry(cloud::retry_config(policy))
        .with_client_options(cloud::client_options(policy))
        .with_http_connector(crate::net::Connector::new(
            policy,
            &trust.for_url(&config.endpoint),
        ));
    match &config.credentials {
        // Explicit empty credentials, so that no file is read at all.
        GcsCredentials::Anonymous => builder.with_skip_signature(true).with_credentials(Arc::new(
            StaticCredentialProvider::new(GcpCredential {
                bearer: String::new(),
            }),
        )),
        GcsCredentials::ServiceAccountFile(path) => {
            builder.with_service_account_path(path.to_string_lossy())
        }
        GcsCredentials::ServiceAccountKey(key) => builder.with_service_account_key(key),
        GcsCredentials::ApplicationDefault(path) => {
            builder.with_application_credentials(path.to_string_lossy())
        }
        GcsCredentials::MetadataServer => builder,
    }
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcs_uris() {
        assert_eq!(
            parse_gcs_uri("gs://bucket/vllm/m/v1/model.tensors").unwrap(),
            ("bucket".into(), "vllm/m/v1/model.tensors".into())
        );
        assert_eq!(
            parse_gcs_uri("gcs://b/k").unwrap(),
            ("b".into(), "k".into())
        );
        for bad in [
            "gs://bucket",
            "gs://bucket/",
            "gs:///key",
            "gs://b/dir/",
            "s3://b/k",
        ] {
            assert!(parse_gcs_uri(bad).is_err(), "{bad}");
        }
    }
}
