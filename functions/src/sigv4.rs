//! SigV4 for the calls the management SDK client does not make itself: the groups rooms
//! backend's calls to the host, and the read of a static key from Secrets Manager.

use aws_sdk_apigatewaymanagement::config::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use std::time::SystemTime;

/// Adds the SigV4 headers (`Authorization`, `X-Amz-Date`, and `X-Amz-Security-Token` for
/// temporary credentials) for `service` in `region` to `request`, signing its body. The error is
/// the reason, for the caller's own error type.
pub(crate) async fn sign_request(
    credentials: &SharedCredentialsProvider,
    region: &str,
    service: &str,
    request: &mut reqwest::Request,
) -> Result<(), String> {
    let failed = |e: &dyn std::fmt::Display| e.to_string();
    let identity = credentials
        .provide_credentials()
        .await
        .map_err(|e| failed(&e))?
        .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let body = request
        .body()
        .and_then(reqwest::Body::as_bytes)
        .unwrap_or_default();
    let headers = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
    let signable = SignableRequest::new(
        request.method().as_str(),
        request.url().as_str(),
        headers,
        SignableBody::Bytes(body),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| failed(&e))?
        .into_parts();
    for (name, value) in instructions.headers() {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| failed(&e))?;
        let value = http::HeaderValue::from_str(value).map_err(|e| failed(&e))?;
        request.headers_mut().insert(name, value);
    }
    Ok(())
}
