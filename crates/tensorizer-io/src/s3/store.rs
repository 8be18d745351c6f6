//! The S3 client: an `object_store` client for one bucket, from a
//! resolved [`S3Config`].

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;

use super::{Addressing, Credentials, S3Config, S3Options};
use crate::RetryPolicy;
use crate::cloud::{self, Object, S3_PARTS, Service};
use crate::error::Result;

/// `s3://bucket/key` → (bucket, key).
pub fn parse_s3_uri(uri: &str) -> Result<(String, String)> {
    cloud::parse_bucket_key(uri, &["s3"], "S3")
}

/// Resolves `s3://bucket/key`: credentials, endpoint, addressing, client.
pub(crate) fn object(
    uri: &str,
    options: &S3Options,
    policy: &RetryPolicy,
    trust: &crate::TrustOptions,
) -> Result<Object> {
    let (bucket, key) = parse_s3_uri(uri)?;
    let config = S3Config::resolve(options).map_err(cloud::for_uri(uri))?;
    let service = service(&bucket, &config);
    let secret = match &config.credentials {
        Credentials::Keys {
            secret_access_key,
            session_token,
            ..
        } => format!("{secret_access_key}|{session_token:?}"),
        _ => String::new(),
    };
    let cache_config = format!("{config:?}|{secret}|{bucket}|{trust:?}");
    let store = || build_store(&bucket, &config, policy, trust).map_err(|e| e.to_string());
    Object::new(
        uri,
        service,
        (bucket.clone(), key),
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

/// A presigned GET URL of `s3://bucket/key`, valid for `expires_in`,
/// signed with the store's own signer (SigV4); with no credentials
/// (anonymous), the object's plain URL. The URL is a credential: shown
/// only through [`crate::ShownUri`].
pub fn presigned_get_url(
    uri: &str,
    options: &S3Options,
    policy: &RetryPolicy,
    trust: &crate::TrustOptions,
    expires_in: std::time::Duration,
) -> Result<String> {
    use object_store::signer::Signer;
    let (bucket, key) = parse_s3_uri(uri)?;
    let config = S3Config::resolve(options).map_err(cloud::for_uri(uri))?;
    let store =
        build_store(&bucket, &config, policy, trust).map_err(|e| crate::IoError::Unsupported {
            uri: crate::uri::redact(uri),
            message: format!("cannot build an S3 client: {e}"),
        })?;
    if matches!(config.credentials, Credentials::Anonymous) {
        return Ok(match config.bucket_endpoint(&bucket) {
            Some(base) if config.addressing != Addressing::VirtualHosted => {
                format!("{}/{bucket}/{key}", base.trim_end_matches('/'))
            }
            Some(base) => format!("{}/{key}", base.trim_end_matches('/')),
            None => format!("https://{bucket}.s3.{}.amazonaws.com/{key}", config.region),
        });
    }
    let path = object_store::path::Path::from(key);
    let signed = crate::runtime::block(
        async move {
            store
                .signed_url(object_store::signer::Method::GET, &path, expires_in)
                .await
        },
        uri,
    )?
    .map_err(|e| crate::IoError::Unsupported {
        uri: crate::uri::redact(uri),
        message: format!("cannot presign: {e}"),
    })?;
    Ok(signed.to_string())
}

fn service(bucket: &str, config: &S3Config) -> Service {
    Service {
        name: "S3",
        endpoint: config
            .bucket_endpoint(bucket)
            .unwrap_or_else(|| format!("https://{bucket}.s3.{}.amazonaws.com", config.region)),
        addressing: match config.addressing {
            Addressing::VirtualHosted => "virtual-hosted".into(),
            _ => "path-style".into(),
        },
        credentials_from: config.credentials_from.clone(),
        fix: "give keys with --s3-access-key-id/--s3-secret-access-key, S3_ACCESS_KEY_ID/\
              S3_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.s3cfg, \
              and the endpoint with --s3-endpoint or S3_ENDPOINT_URL"
            .into(),
        parts: S3_PARTS,
    }
}

fn build_store(
    bucket: &str,
    config: &S3Config,
    policy: &RetryPolicy,
    trust: &crate::TrustOptions,
) -> object_store::Result<object_store::aws::AmazonS3> {
    let mut builder = match config.credentials {
        // The AWS chain (web identity, container credentials) from the environment.
        Credentials::Ambient => AmazonS3Builder::from_env(),
        _ => AmazonS3Builder::new(),
    }
    .with_bucket_name(bucket)
    .with_region(&config.region)
    .with_retry(cloud::retry_config(policy))
    .with_client_options(cloud::client_options(policy))
    .with_http_connector(crate::net::Connector::new(
        policy,
        &trust.for_url(&config.bucket_endpoint(bucket).unwrap_or_default()),
    ))
    .with_virtual_hosted_style_request(config.addressing == Addressing::VirtualHosted);
    if let Some(endpoint) = config.bucket_endpoint(bucket) {
        builder = builder.with_endpoint(endpoint);
    }
    builder = match &config.credentials {
        Credentials::Anonymous => builder.with_skip_signature(true),
        Credentials::Keys {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let b = builder
                .with_access_key_id(access_key_id)
                .with_secret_access_key(secret_access_key);
            match session_token {
                Some(t) => b.with_token(t),
                None => b,
            }
        }
        Credentials::Ambient => builder,
    };
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris() {
        assert_eq!(
            parse_s3_uri("s3://bucket/vllm/m/v1/model.tensors").unwrap(),
            ("bucket".into(), "vllm/m/v1/model.tensors".into())
        );
        assert_eq!(parse_s3_uri("S3://b/k").unwrap(), ("b".into(), "k".into()));
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://b/dir/",
            "http://b/k",
        ] {
            assert!(parse_s3_uri(bad).is_err(), "{bad}");
        }
    }
}
