//! Signing management calls with a static access key kept in AWS Secrets Manager (feature
//! `static-key`, on by default).
//!
//! A connection host verifies SigV4 only against the static access keys it is configured with,
//! so a function on Lambda cannot sign with its role's temporary credentials, whose key ID
//! changes with every session. Instead, the key lives in a Secrets Manager secret whose
//! `SecretString` is `{"accessKeyId": "...", "secretAccessKey": "..."}`; the host gets the
//! secret access key from the same secret (ECS task `Secrets`, into its `secret_env`), and the
//! function reads the whole secret once per process, signing that read with its role.
//!
//! [`Management::for_endpoint`](crate::Management::for_endpoint) does this when the
//! environment variable [`KEY_SECRET_ENV`](crate::management::KEY_SECRET_ENV)
//! (`APIGW_MANAGEMENT_KEY_SECRET`) holds the secret's ARN or name.

use aws_config::SdkConfig;
use aws_sdk_apigatewaymanagement::config::{Credentials, SharedCredentialsProvider};
use serde::Deserialize;
use std::time::Duration;

/// Environment variable overriding the Secrets Manager endpoint (the SDKs' standard name).
pub const ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL_SECRETS_MANAGER";

/// Why the key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StaticKeyError {
    /// The configuration has no region or no credentials to sign the read with.
    #[error("cannot read the management key: {0}")]
    Config(&'static str),
    /// The call to Secrets Manager failed (signing, network).
    #[error("reading the management key from Secrets Manager failed: {0}")]
    Request(String),
    /// Secrets Manager refused the call (e.g. `AccessDeniedException`, `ResourceNotFoundException`).
    #[error("Secrets Manager answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error body (its type and message; never the secret).
        body: String,
    },
    /// The secret is not `{"accessKeyId": "...", "secretAccessKey": "..."}`.
    #[error("the management key secret is not {{\"accessKeyId\", \"secretAccessKey\"}} JSON: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct GetSecretValueOutput {
    #[serde(rename = "SecretString")]
    secret_string: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Key {
    access_key_id: String,
    secret_access_key: String,
}

/// `shared` with, as its credentials, the static key read from the Secrets Manager secret
/// `secret_id` (ARN or name). The read is signed with `shared`'s own credentials (the function's
/// role) and goes to `endpoint`, else to [`ENDPOINT_ENV`], else to
/// `https://secretsmanager.{region}.amazonaws.com`.
pub async fn with_key_from_secret(
    shared: &SdkConfig,
    secret_id: &str,
    endpoint: Option<&str>,
) -> Result<SdkConfig, StaticKeyError> {
    let region = shared
        .region()
        .ok_or(StaticKeyError::Config("no region"))?
        .to_string();
    let role = shared.credentials_provider().ok_or(StaticKeyError::Config(
        "no credentials to read the secret with",
    ))?;
    let endpoint = match endpoint {
        Some(e) => e.to_string(),
        None => std::env::var(ENDPOINT_ENV)
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com")),
    };
    let failed = |e: &dyn std::fmt::Display| StaticKeyError::Request(e.to_string());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| failed(&e))?;
    let body = serde_json::json!({ "SecretId": secret_id }).to_string();
    let mut request = http
        .post(endpoint.trim_end_matches('/').to_string() + "/")
        .header(http::header::CONTENT_TYPE, "application/x-amz-json-1.1")
        .header("x-amz-target", "secretsmanager.GetSecretValue")
        .body(body)
        .build()
        .map_err(|e| failed(&e))?;
    crate::sigv4::sign_request(&role, &region, "secretsmanager", &mut request)
        .await
        .map_err(StaticKeyError::Request)?;
    let response = http.execute(request).await.map_err(|e| failed(&e))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| failed(&e))?;
    if !status.is_success() {
        return Err(StaticKeyError::Refused {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    // Errors below never quote the payload: it holds the secret.
    let output: GetSecretValueOutput = serde_json::from_slice(&bytes)
        .map_err(|_| StaticKeyError::Invalid("not a GetSecretValue answer".into()))?;
    let text = output
        .secret_string
        .ok_or_else(|| StaticKeyError::Invalid("no SecretString".into()))?;
    let key: Key = serde_json::from_str(&text)
        .map_err(|e| StaticKeyError::Invalid(format!("line {} column {}", e.line(), e.column())))?;
    let credentials = Credentials::new(
        key.access_key_id,
        key.secret_access_key,
        None,
        None,
        "secrets-manager-static-key",
    );
    Ok(shared
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build())
}
