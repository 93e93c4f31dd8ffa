//! Pushing back to clients: the `@connections` management API, through the official
//! `aws-sdk-apigatewaymanagement` client.
//!
//! The endpoint is `https://{domainName}/{stage}`, taken from the event, unless the environment
//! variable [`ENDPOINT_ENV`] (`APIGW_MANAGEMENT_ENDPOINT`) names another one: the local connection
//! host sets it for the functions it runs, and an API behind a custom domain needs it (there the
//! endpoint is `https://{custom-domain}/{base-path}`, which the event does not tell).

use crate::context::WebSocketEvent;
use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::config::SharedCredentialsProvider;
use aws_sdk_apigatewaymanagement::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_apigatewaymanagement::primitives::Blob;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// Environment variable overriding the management endpoint: a full URL including the stage
/// (or custom-domain base path), e.g. `http://127.0.0.1:8080/dev`.
pub const ENDPOINT_ENV: &str = "APIGW_MANAGEMENT_ENDPOINT";

/// Environment variable naming (by ARN or name) an AWS Secrets Manager secret that holds the
/// static access key to sign management calls with, as `{"accessKeyId": "...",
/// "secretAccessKey": "..."}`: a self-hosted connection host verifies static keys only, never a
/// Lambda role's temporary credentials. Read by [`Management::for_endpoint`] once per process
/// and endpoint; needs the feature `static-key` (see `ws_handler::static_key`).
pub const KEY_SECRET_ENV: &str = "APIGW_MANAGEMENT_KEY_SECRET";

/// The header naming a post for [`Management::post_with_key`].
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The management endpoint for `event`: [`ENDPOINT_ENV`] when set and not empty, otherwise
/// `https://{domainName}/{stage}`.
pub fn endpoint_for(event: &WebSocketEvent<'_>) -> String {
    resolve_endpoint(std::env::var(ENDPOINT_ENV).ok().as_deref(), event)
}

fn resolve_endpoint(override_url: Option<&str>, event: &WebSocketEvent<'_>) -> String {
    match override_url.map(str::trim).filter(|url| !url.is_empty()) {
        // The SDK appends `/@connections/...` itself; a trailing slash would double it.
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("https://{}/{}", event.domain_name(), event.stage()),
    }
}

/// Why a management API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// `GoneException` (410): the connection is closed, never existed, or is still in its
    /// `$connect`. Expected in normal operation; callers usually drop the connection ID.
    #[error("GoneException: the connection no longer exists")]
    Gone,
    /// `ForbiddenException` (403): the caller may not manage connections of this API, or the
    /// endpoint is wrong (e.g. a missing stage).
    #[error("ForbiddenException: not allowed to manage this connection")]
    Forbidden,
    /// `LimitExceededException` (429): too many calls, or the client's outbound buffer is full.
    #[error("LimitExceededException: too many requests or the client's buffer is full")]
    LimitExceeded,
    /// `PayloadTooLargeException` (413): more than 128 KiB of data.
    #[error("PayloadTooLargeException: the data exceeds 128 KiB")]
    PayloadTooLarge,
    /// `IdempotencyKeyReusedException` (422, connection-host): the key given to
    /// [`Management::post_with_key`] was already used for another body to this connection.
    #[error("IdempotencyKeyReusedException: the key was already used for another body")]
    KeyReused,
    /// The key given to [`Management::post_with_key`] is not 1 to 128 printable ASCII
    /// characters (nothing was sent).
    #[error("invalid idempotency key: it must be 1 to 128 printable ASCII characters")]
    InvalidKey,
    /// The value to post could not be serialized as JSON.
    #[error("could not serialize the message as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Any other failure (network, credentials, an unexpected status), with the SDK's details.
    #[error("management API call failed: {0}")]
    Other(String),
}

impl ManagementError {
    /// True for [`ManagementError::Gone`].
    pub fn is_gone(&self) -> bool {
        matches!(self, ManagementError::Gone)
    }

    fn from_sdk<E>(error: SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match error.code() {
            Some("GoneException") => return ManagementError::Gone,
            Some("ForbiddenException") => return ManagementError::Forbidden,
            Some("LimitExceededException") => return ManagementError::LimitExceeded,
            Some("PayloadTooLargeException") => return ManagementError::PayloadTooLarge,
            Some("IdempotencyKeyReusedException") => return ManagementError::KeyReused,
            _ => {}
        }
        // A server that answers 410 without `x-amzn-ErrorType` still means Gone.
        if error.raw_response().map(|r| r.status().as_u16()) == Some(410) {
            return ManagementError::Gone;
        }
        ManagementError::Other(DisplayErrorContext(&error).to_string())
    }
}

/// What `GetConnection` tells about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// When the connection was opened, in epoch milliseconds.
    pub connected_at: Option<i64>,
    /// When the connection last carried a message, in epoch milliseconds.
    pub last_active_at: Option<i64>,
    /// The client's IP address.
    pub source_ip: Option<String>,
    /// The client's `User-Agent`, when it sent one.
    pub user_agent: Option<String>,
}

/// Sending data to one connection: what handlers need from the management API to reply, as a
/// trait so handler logic can be unit-tested with a recording double.
#[async_trait]
pub trait PostToConnection: Send + Sync {
    /// Sends `data` to `connection_id` as one message.
    async fn post_to_connection(
        &self,
        connection_id: &str,
        data: &[u8],
    ) -> Result<(), ManagementError>;
}

/// SDK clients by endpoint, built once per process: a Lambda process handles many events, and
/// building a client (credentials chain, HTTP connector) per event would waste most of each.
static CLIENTS: LazyLock<Mutex<HashMap<String, Management>>> = LazyLock::new(Default::default);

/// A management API client for one endpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Management {
    client: Client,
    endpoint: Arc<str>,
    /// The credentials and region the client signs with, for the calls the SDK does not model
    /// (the groups rooms backend); `None` when built from a bare client.
    signing: Option<(SharedCredentialsProvider, String)>,
}

impl Management {
    /// The client for the endpoint of `event` (see [`endpoint_for`]).
    pub async fn for_event(event: &WebSocketEvent<'_>) -> Self {
        Self::for_endpoint(&endpoint_for(event)).await
    }

    /// The client for `endpoint` (`https://{domainName}/{stage}` or a full override URL), built
    /// from the standard AWS configuration (region, credentials) on first use and reused after.
    /// With [`KEY_SECRET_ENV`] set, it signs with the static key in that secret instead; when
    /// the secret cannot be read, the error is logged, the client signs with the standard
    /// credentials (which a connection host refuses), and the next call tries the secret again.
    pub async fn for_endpoint(endpoint: &str) -> Self {
        let cached = CLIENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(endpoint)
            .cloned();
        if let Some(management) = cached {
            return management;
        }
        let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let key_secret = std::env::var(KEY_SECRET_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty());
        #[cfg(feature = "static-key")]
        let shared = match key_secret {
            None => shared,
            Some(secret) => {
                match crate::static_key::with_key_from_secret(&shared, secret.trim(), None).await {
                    Ok(keyed) => keyed,
                    Err(e) => {
                        tracing::error!(error = %e, "management key not read; signing with the default credentials");
                        return Self::from_sdk_config(&shared, endpoint);
                    }
                }
            }
        };
        #[cfg(not(feature = "static-key"))]
        if key_secret.is_some() {
            tracing::error!(
                "{KEY_SECRET_ENV} is set, but ws-handler was built without the static-key feature"
            );
        }
        let management = Self::from_sdk_config(&shared, endpoint);
        // Two events racing here each build a client; the first one stored wins.
        CLIENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(endpoint.to_string())
            .or_insert(management)
            .clone()
    }

    /// The client for `endpoint` with the region and credentials of `shared`; every call made
    /// through it, the groups rooms backend's included, is signed with them.
    pub fn from_sdk_config(shared: &aws_config::SdkConfig, endpoint: &str) -> Self {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(shared)
            .endpoint_url(endpoint)
            .build();
        let signing = shared.credentials_provider().map(|credentials| {
            let region = shared
                .region()
                .map_or_else(|| "us-east-1".to_string(), ToString::to_string);
            (credentials, region)
        });
        Self {
            signing,
            ..Self::from_client(Client::from_conf(config), endpoint)
        }
    }

    /// Wraps an SDK client configured by the caller; `endpoint` is only reported by
    /// [`Management::endpoint`]. The SDK does not hand a client's credentials back, so the groups
    /// rooms backend opened with this sends unsigned calls: use [`Self::from_sdk_config`] for a
    /// host that requires signatures.
    pub fn from_client(client: Client, endpoint: &str) -> Self {
        Self {
            client,
            endpoint: endpoint.into(),
            signing: None,
        }
    }

    /// The credentials provider and region calls are signed with, if known.
    pub(crate) fn signing(&self) -> Option<&(SharedCredentialsProvider, String)> {
        self.signing.as_ref()
    }

    /// The endpoint this client calls.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The underlying SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `PostToConnection`: sends `data` to `connection_id` as one message.
    pub async fn post(
        &self,
        connection_id: &str,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), ManagementError> {
        self.client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(data))
            .send()
            .await
            .map_err(ManagementError::from_sdk)?;
        Ok(())
    }

    /// `PostToConnection` with an `Idempotency-Key` (a connection-host extension, PROTOCOL.md
    /// section 3): posting the same `key` and `data` again, e.g. after a 503 that may have come
    /// after the post was kept, reaches a reliable client once. API Gateway ignores the header.
    pub async fn post_with_key(
        &self,
        connection_id: &str,
        key: &str,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), ManagementError> {
        let valid =
            (1..=128).contains(&key.len()) && key.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !valid {
            return Err(ManagementError::InvalidKey);
        }
        let key = key.to_string();
        self.client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(data))
            .customize()
            // Before signing, so the header is signed with the rest of the request.
            .mutate_request(move |request| {
                request.headers_mut().insert(IDEMPOTENCY_KEY, key.clone());
            })
            .send()
            .await
            .map_err(ManagementError::from_sdk)?;
        Ok(())
    }

    /// Sends `text` to `connection_id`.
    pub async fn post_text(&self, connection_id: &str, text: &str) -> Result<(), ManagementError> {
        self.post(connection_id, text.as_bytes()).await
    }

    /// Sends `value` serialized as JSON to `connection_id`.
    pub async fn post_json<T: Serialize + ?Sized>(
        &self,
        connection_id: &str,
        value: &T,
    ) -> Result<(), ManagementError> {
        self.post(connection_id, serde_json::to_vec(value)?).await
    }

    /// `DeleteConnection`: closes the connection (the client sees close code 1000).
    pub async fn delete(&self, connection_id: &str) -> Result<(), ManagementError> {
        self.client
            .delete_connection()
            .connection_id(connection_id)
            .send()
            .await
            .map_err(ManagementError::from_sdk)?;
        Ok(())
    }

    /// `GetConnection`: when the connection opened, when it was last active, and who it is.
    pub async fn get(&self, connection_id: &str) -> Result<ConnectionInfo, ManagementError> {
        let output = self
            .client
            .get_connection()
            .connection_id(connection_id)
            .send()
            .await
            .map_err(ManagementError::from_sdk)?;
        let millis = |t: Option<&aws_sdk_apigatewaymanagement::primitives::DateTime>| {
            t.and_then(|t| t.to_millis().ok())
        };
        Ok(ConnectionInfo {
            connected_at: millis(output.connected_at()),
            last_active_at: millis(output.last_active_at()),
            source_ip: output
                .identity()
                .and_then(|i| i.source_ip())
                .map(str::to_string),
            // `userAgent` is modelled as required, so the SDK fills an absent one with "".
            user_agent: output
                .identity()
                .and_then(|i| i.user_agent())
                .filter(|ua| !ua.is_empty())
                .map(str::to_string),
        })
    }
}

#[async_trait]
impl PostToConnection for Management {
    async fn post_to_connection(
        &self,
        connection_id: &str,
        data: &[u8],
    ) -> Result<(), ManagementError> {
        self.post(connection_id, data).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture_request;

    #[test]
    fn endpoint_comes_from_the_event() {
        let request = fixture_request("apiGatewayWebSocketApiMessage.json");
        let event = WebSocketEvent::from_request(&request).unwrap();
        assert_eq!(
            resolve_endpoint(None, &event),
            "https://asasasas.execute-api.us-east-1.amazonaws.com/prod"
        );
        assert_eq!(
            resolve_endpoint(Some("  "), &event),
            "https://asasasas.execute-api.us-east-1.amazonaws.com/prod"
        );
    }

    #[test]
    fn the_environment_overrides_the_endpoint() {
        let request = fixture_request("apiGatewayWebSocketApiMessage.json");
        let event = WebSocketEvent::from_request(&request).unwrap();
        assert_eq!(
            resolve_endpoint(Some("http://127.0.0.1:8080/dev/"), &event),
            "http://127.0.0.1:8080/dev"
        );
    }
}
