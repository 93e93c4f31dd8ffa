//! API Gateway's Lambda `REQUEST` authorizer, which guards `$connect` (spec §6).
//!
//! Before `$connect` runs, the identity sources must all be present, the authorizer function is
//! invoked with the documented REQUEST event, and the IAM policy it returns must allow
//! `execute-api:Invoke` on the `$connect` method ARN. A refusal answers the upgrade request with
//! 401, 403 or 500, so the client never gets a connection: no `$connect`, no `$disconnect`, no
//! record. What an allowing authorizer returns (`principalId` and `context`) becomes
//! `requestContext.authorizer` on every event of the connection. Nothing is cached: API Gateway
//! does not cache WebSocket authorizers, so every connection attempt invokes the function.
//!
//! An authorizer of `type = "jwt"` (an extension, see [`jwt`]) takes the function's place: the
//! host verifies a JWT itself, and refuses with 401 just as a function answering `Unauthorized`
//! does.

pub mod identity;
pub mod jwt;
mod policy;

pub use identity::IdentitySource;
pub use policy::{Decision, INVOKE_ACTION, Policy};

use crate::config::{ApiConfig, AuthorizerConfig, Config, ConfigError};
use crate::events::{ConnectionContext, Event, EventKind, MultiMap};
use crate::integration::{IntegrationError, LambdaInvoker};
use bytes::Bytes;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// How long the authorizer function may take before the client gets 500. API Gateway documents
/// no figure for authorizers, and the route's integration timeout does not apply to them (observed
/// on REST APIs), so the host uses a fixed bound of its own rather than `$connect`'s timeout.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// API Gateway's quota on an authorizer's result (8 KB); a larger result is an invalid one.
pub const MAX_RESULT_BYTES: usize = 8 * 1024;

/// What an allowing authorizer hands on: `requestContext.authorizer`, its `context` entries and
/// its `principalId` side by side, with their JSON types kept.
pub type Claims = serde_json::Map<String, Value>;

/// The `$connect` request to authorize.
#[derive(Debug)]
pub struct ConnectRequest {
    /// The connection being opened (its `authorizer` is still `None`).
    pub connection: Arc<ConnectionContext>,
    /// `requestId`: the same as the `$connect` event's, as both belong to one upgrade request.
    pub request_id: String,
    /// `X-Amzn-Trace-Id`: the same as the `$connect` event's, for the same reason.
    pub trace_id: String,
    /// The request headers as the authorizer sees them: unlike `$connect`, with `Connection`,
    /// `Upgrade` and `content-length: 0` (spec §6.2).
    pub headers: MultiMap,
    /// The query parameters; empty when the URL has no query string.
    pub query: MultiMap,
}

/// Why a connection was refused; each maps to the status API Gateway answers with (spec §6.4).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// An identity source is missing or empty; the function was not called.
    #[error("identity source {0} is missing or empty")]
    MissingIdentity(IdentitySource),
    /// The function failed with the error message `Unauthorized`.
    #[error("the authorizer function answered Unauthorized")]
    Unauthorized,
    /// A `Deny` statement matches the method ARN.
    #[error("the policy denies execute-api:Invoke on the method ARN")]
    ExplicitDeny,
    /// No `Allow` statement matches the method ARN.
    #[error("no Allow statement of the policy matches the method ARN")]
    ImplicitDeny,
    /// The function failed otherwise, or could not be reached.
    #[error("the authorizer function failed: {0}")]
    Failed(#[source] IntegrationError),
    /// The function did not answer within [`TIMEOUT`].
    #[error("the authorizer function did not answer within {0:?}")]
    TimedOut(Duration),
    /// The function's result is not a valid authorizer result.
    #[error("invalid authorizer result: {0}")]
    Invalid(String),
    /// A JWT authorizer found no valid token.
    #[error("JWT refused: {0}")]
    Token(#[from] jwt::TokenError),
}

impl Refusal {
    /// The HTTP status of the refused upgrade.
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingIdentity(_) | Self::Unauthorized | Self::Token(_) => 401,
            Self::ExplicitDeny | Self::ImplicitDeny => 403,
            Self::Failed(_) | Self::TimedOut(_) | Self::Invalid(_) => 500,
        }
    }

    /// The response body: API Gateway's bodies for these statuses on REST APIs, which the spec
    /// recommends (WebSocket clients rarely see more than the status). Internal details are
    /// logged, never sent.
    pub fn body(&self) -> &'static [u8] {
        match self.status() {
            401 => br#"{"message":"Unauthorized"}"#,
            403 => br#"{"message":"Forbidden"}"#,
            _ => br#"{"message":null}"#,
        }
    }
}

/// Authorizes connections before the `$connect` route runs.
#[derive(Debug)]
pub struct Authorizer {
    name: String,
    kind: Kind,
}

/// What decides: a Lambda function, or the host's own JWT verification.
#[derive(Debug)]
enum Kind {
    Request(RequestAuthorizer),
    Jwt(jwt::JwtAuthorizer),
}

/// A Lambda `REQUEST` authorizer.
#[derive(Debug)]
struct RequestAuthorizer {
    invoker: Arc<dyn LambdaInvoker>,
    identity_sources: Vec<IdentitySource>,
    method_arn: String,
    timeout: Duration,
}

/// The ARN a connection's policy is evaluated against; it has no HTTP method (spec §6.2).
pub fn method_arn(api: &ApiConfig) -> String {
    format!(
        "arn:aws:execute-api:{}:{}:{}/{}/$connect",
        api.region, api.account_id, api.api_id, api.stage
    )
}

impl Authorizer {
    /// The authorizer the `$connect` route names, if any, with its Lambda client built once here
    /// (or the host's own function of that name; see [`crate::integration::lambda_invoker`]), or
    /// its JWT keys read and parsed once here.
    pub async fn for_connect(
        config: &Config,
        functions: crate::integration::LocalLookup<'_>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(name) = config
            .routes
            .get("$connect")
            .and_then(|route| route.authorizer.as_ref())
        else {
            return Ok(None);
        };
        // `Config::validate`, which `Host::build` calls first, refuses a route naming an unknown
        // authorizer.
        let settings = match &config.authorizers[name] {
            AuthorizerConfig::Request(settings) => settings,
            AuthorizerConfig::Jwt(settings) => {
                // Read here only: `Host::build` is the one place keys are loaded.
                let verifier =
                    jwt::JwtAuthorizer::load(settings).map_err(|e| ConfigError::Invalid {
                        field: format!("authorizers.{name}.{}", e.field),
                        reason: e.reason,
                    })?;
                return Ok(Some(Self::jwt(name, verifier)));
            }
        };
        let region = if settings.region.is_empty() {
            &config.api.region
        } else {
            &settings.region
        };
        let invoker = crate::integration::lambda_invoker(
            &settings.function_name,
            &settings.endpoint_url,
            region,
            functions,
        )
        .await;
        Ok(Some(Self::new(
            name,
            invoker,
            settings.identity_sources.clone(),
            method_arn(&config.api),
        )))
    }

    /// An authorizer calling `invoker`, with the fixed [`TIMEOUT`].
    pub fn new(
        name: &str,
        invoker: Arc<dyn LambdaInvoker>,
        identity_sources: Vec<IdentitySource>,
        method_arn: String,
    ) -> Self {
        Self {
            name: name.to_string(),
            kind: Kind::Request(RequestAuthorizer {
                invoker,
                identity_sources,
                method_arn,
                timeout: TIMEOUT,
            }),
        }
    }

    /// An authorizer verifying JWTs itself.
    pub fn jwt(name: &str, verifier: jwt::JwtAuthorizer) -> Self {
        Self {
            name: name.to_string(),
            kind: Kind::Jwt(verifier),
        }
    }

    /// The authorizer's name in `[authorizers]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Decides whether `request` may connect, and with which claims.
    pub async fn authorize(&self, request: ConnectRequest) -> Result<Claims, Refusal> {
        match &self.kind {
            Kind::Request(authorizer) => authorizer.authorize(request).await,
            Kind::Jwt(verifier) => Ok(verifier.verify(&request.headers, &request.query)?),
        }
    }

    /// The subprotocol the 101 answers with, given the one `$connect` selected: a JWT
    /// authorizer reading its token from `Sec-WebSocket-Protocol` keeps the token out of it
    /// (see [`jwt::JwtAuthorizer::subprotocol`]); otherwise `$connect`'s choice stands.
    pub fn subprotocol(&self, headers: &MultiMap, chosen: Option<String>) -> Option<String> {
        match &self.kind {
            Kind::Request(_) => chosen,
            Kind::Jwt(verifier) => verifier.subprotocol(headers, chosen),
        }
    }
}

impl RequestAuthorizer {
    async fn authorize(&self, request: ConnectRequest) -> Result<Claims, Refusal> {
        for source in &self.identity_sources {
            if source
                .value(&request.headers, &request.query)
                .is_none_or(str::is_empty)
            {
                return Err(Refusal::MissingIdentity(source.clone()));
            }
        }
        let payload = Bytes::from(self.event_json(&request));
        let result = tokio::time::timeout(
            self.timeout,
            self.invoker.invoke(payload, &request.trace_id),
        )
        .await
        .map_err(|_| Refusal::TimedOut(self.timeout))?;
        match result {
            Ok(output) => claims(&output, &self.method_arn),
            Err(IntegrationError::Function(error)) if is_unauthorized(&error) => {
                Err(Refusal::Unauthorized)
            }
            Err(e) => Err(Refusal::Failed(e)),
        }
    }

    /// The REQUEST authorizer event (spec §6.2 and the captured sample in §2.7 D).
    fn event_json(&self, request: &ConnectRequest) -> Vec<u8> {
        // `requestContext` is the CONNECT event's, so it is built by the same code. The
        // connection has no claims yet, so it carries no `authorizer`.
        let connect = Event::new(
            "$connect",
            request.request_id.clone(),
            request.trace_id.clone(),
            request.connection.clone(),
            EventKind::Connect {
                headers: Arc::default(),
                query: None,
            },
        );
        let mut connect: serde_json::Map<String, Value> =
            serde_json::from_slice(&connect.to_json()).expect("events are JSON objects");
        let wire = WireEvent {
            kind: "REQUEST",
            method_arn: &self.method_arn,
            headers: LastValues(&request.headers),
            multi_value_headers: &request.headers,
            // Unlike on CONNECT events, empty maps are `{}` rather than absent.
            query_string_parameters: LastValues(&request.query),
            multi_value_query_string_parameters: &request.query,
            stage_variables: serde_json::Map::new(),
            request_context: connect.remove("requestContext").unwrap_or_default(),
        };
        serde_json::to_vec(&wire).expect("authorizer events always serialize")
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    method_arn: &'a str,
    headers: LastValues<'a>,
    multi_value_headers: &'a MultiMap,
    query_string_parameters: LastValues<'a>,
    multi_value_query_string_parameters: &'a MultiMap,
    stage_variables: serde_json::Map<String, Value>,
    request_context: Value,
}

/// The single-value view of a map: a repeated name keeps its last value, as in `headers`.
struct LastValues<'a>(&'a MultiMap);

impl Serialize for LastValues<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.0.len()))?;
        for (name, values) in &self.0.0 {
            map.serialize_entry(name, values.last().map(String::as_str).unwrap_or(""))?;
        }
        map.end()
    }
}

/// Whether a function error is the `Unauthorized` refusal: `callback("Unauthorized")` in Node,
/// `raise Exception("Unauthorized")` in Python, any error whose message is exactly that.
fn is_unauthorized(error: &str) -> bool {
    match serde_json::from_str::<Value>(error) {
        Ok(payload) => payload.get("errorMessage").and_then(Value::as_str) == Some("Unauthorized"),
        Err(_) => error.trim() == "Unauthorized",
    }
}

/// Reads the function's result and evaluates its policy against `method_arn`. The whole result
/// is checked before the policy is evaluated, so a malformed result is a 500 whatever it allows.
fn claims(output: &[u8], method_arn: &str) -> Result<Claims, Refusal> {
    let invalid = |reason: String| Err(Refusal::Invalid(reason));
    if output.len() > MAX_RESULT_BYTES {
        return invalid(format!(
            "{} bytes, over API Gateway's {MAX_RESULT_BYTES}-byte limit",
            output.len()
        ));
    }
    let output: Value = match serde_json::from_slice(output) {
        Ok(v) => v,
        Err(e) => return invalid(format!("not JSON: {e}")),
    };
    let Some(output) = output.as_object() else {
        return invalid("not a JSON object".into());
    };
    let principal_id = match output.get("principalId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return invalid("principalId is not a string".into()),
    };
    let Some(document) = output.get("policyDocument") else {
        return invalid("no policyDocument".into());
    };
    let policy = Policy::parse(document).map_err(|e| Refusal::Invalid(e.to_string()))?;
    let mut claims = match output.get("context") {
        None | Some(Value::Null) => Claims::new(),
        Some(Value::Object(context)) => {
            if let Some((key, _)) = context
                .iter()
                .find(|(_, v)| !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)))
            {
                // Only strings, numbers and booleans are documented; API Gateway's REST
                // authorizers fail on anything else, and the host does the same rather than let
                // a handler rely on what AWS would refuse.
                return invalid(format!("context.{key} is not a string, number or boolean"));
            }
            context.clone()
        }
        Some(_) => return invalid("context is not a JSON object".into()),
    };
    match policy.evaluate(INVOKE_ACTION, method_arn) {
        Decision::ExplicitDeny => Err(Refusal::ExplicitDeny),
        Decision::ImplicitDeny => Err(Refusal::ImplicitDeny),
        Decision::Allow => {
            if let Some(id) = principal_id {
                // Inserted last: the principal is the authorizer's own answer, never a context key.
                claims.insert("principalId".into(), Value::String(id));
            }
            Ok(claims)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ARN: &str = "arn:aws:execute-api:us-east-1:000000000000:local00api/dev/$connect";

    /// An invoker that records payloads and answers with a fixed result (or never).
    #[derive(Debug)]
    struct Fake {
        answer: Option<Result<Value, String>>,
        calls: AtomicUsize,
        payloads: Mutex<Vec<Value>>,
    }

    #[async_trait::async_trait]
    impl LambdaInvoker for Fake {
        async fn invoke(&self, payload: Bytes, _: &str) -> Result<Bytes, IntegrationError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.payloads
                .lock()
                .unwrap()
                .push(serde_json::from_slice(&payload).unwrap());
            match &self.answer {
                None => std::future::pending().await,
                Some(Ok(v)) => Ok(Bytes::from(v.to_string())),
                Some(Err(e)) => Err(IntegrationError::Function(e.clone())),
            }
        }
    }

    fn authorizer(
        answer: Option<Result<Value, String>>,
        sources: &[&str],
    ) -> (Authorizer, Arc<Fake>) {
        let fake = Arc::new(Fake {
            answer,
            calls: AtomicUsize::new(0),
            payloads: Mutex::new(Vec::new()),
        });
        let sources = sources.iter().map(|s| s.parse().unwrap()).collect();
        (
            Authorizer::new("auth", fake.clone(), sources, ARN.into()),
            fake,
        )
    }

    fn request(headers: &[(&str, &str)], query: &str) -> ConnectRequest {
        ConnectRequest {
            connection: crate::events::testing::connection(),
            request_id: "FDmBIG3EoAMEqYA=".into(),
            trace_id: "Root=1-6731ebfc-08e1e656421db73c5d2eef31".into(),
            headers: MultiMap::from_headers(headers.iter().copied()),
            query: MultiMap::from_query(query),
        }
    }

    fn allow(context: Value) -> Value {
        json!({
            "principalId": "me",
            "policyDocument": {"Version": "2012-10-17", "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": ARN}]},
            "context": context,
        })
    }

    #[tokio::test]
    async fn an_allowing_policy_gives_principal_and_typed_context() {
        let (auth, fake) = authorizer(
            Some(Ok(allow(
                json!({"s": "v", "n": 123, "b": true, "principalId": "spoof"}),
            ))),
            &["route.request.header.Authorization"],
        );
        let claims = auth
            .authorize(request(&[("authorization", "token")], ""))
            .await
            .unwrap();
        assert_eq!(
            Value::Object(claims),
            json!({"principalId": "me", "s": "v", "n": 123, "b": true})
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn missing_or_empty_identity_sources_refuse_without_calling() {
        let sources = [
            "route.request.header.Authorization",
            "route.request.querystring.token",
        ];
        let (auth, fake) = authorizer(Some(Ok(allow(json!({})))), &sources);
        for (headers, query) in [
            (vec![], "token=t"),
            (vec![("Authorization", "a")], ""),
            (vec![("Authorization", "")], "token=t"),
            (vec![("Authorization", "a")], "token="),
            (vec![("Authorization", "a")], "Token=t"),
        ] {
            let refusal = auth.authorize(request(&headers, query)).await.unwrap_err();
            assert!(matches!(refusal, Refusal::MissingIdentity(_)), "{refusal}");
            assert_eq!(refusal.status(), 401);
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
        auth.authorize(request(&[("AUTHORIZATION", "a")], "token=t"))
            .await
            .unwrap();
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn function_errors_are_401_only_for_unauthorized() {
        let unauthorized = json!({"errorType": "Error", "errorMessage": "Unauthorized"});
        let (auth, _) = authorizer(Some(Err(unauthorized.to_string())), &[]);
        let refusal = auth.authorize(request(&[], "")).await.unwrap_err();
        assert!(matches!(refusal, Refusal::Unauthorized));
        assert_eq!(refusal.body(), br#"{"message":"Unauthorized"}"#);

        for other in [
            json!({"errorType": "Error", "errorMessage": "unauthorized"}).to_string(),
            json!({"errorType": "Error", "errorMessage": "Invalid token"}).to_string(),
            json!({"errorMessage": "Unauthorized: expired"}).to_string(),
            "boom".to_string(),
        ] {
            let (auth, _) = authorizer(Some(Err(other)), &[]);
            let refusal = auth.authorize(request(&[], "")).await.unwrap_err();
            assert!(matches!(refusal, Refusal::Failed(_)), "{refusal}");
            assert_eq!(refusal.status(), 500);
            assert_eq!(refusal.body(), br#"{"message":null}"#);
        }
        assert!(is_unauthorized("Unauthorized"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_function_times_out_with_500() {
        let (auth, _) = authorizer(None, &[]);
        let started = tokio::time::Instant::now();
        let refusal = auth.authorize(request(&[], "")).await.unwrap_err();
        assert!(matches!(refusal, Refusal::TimedOut(t) if t == TIMEOUT));
        assert_eq!(refusal.status(), 500);
        assert_eq!(started.elapsed(), TIMEOUT);
    }

    #[test]
    fn policies_that_do_not_allow_are_403() {
        let deny = json!({"principalId": "me", "policyDocument": {"Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": ARN}]}});
        let refusal = claims(deny.to_string().as_bytes(), ARN).unwrap_err();
        assert!(matches!(refusal, Refusal::ExplicitDeny));
        assert_eq!(
            (refusal.status(), refusal.body()),
            (403, &br#"{"message":"Forbidden"}"#[..])
        );
        let elsewhere = json!({"principalId": "me", "policyDocument": {"Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow",
             "Resource": "arn:aws:execute-api:us-east-1:000000000000:local00api/dev/*/*"}]}});
        let refusal = claims(elsewhere.to_string().as_bytes(), ARN).unwrap_err();
        assert!(matches!(refusal, Refusal::ImplicitDeny));
        assert_eq!(refusal.status(), 403);
    }

    #[test]
    fn invalid_results_are_500() {
        let too_big = allow(json!({"big": "x".repeat(MAX_RESULT_BYTES)}));
        let cases = [
            b"not json".to_vec(),
            b"null".to_vec(),
            b"\"Allow\"".to_vec(),
            json!({"statusCode": 401}).to_string().into_bytes(),
            json!({"principalId": "me"}).to_string().into_bytes(),
            json!({"principalId": 7, "policyDocument": allow(json!({}))["policyDocument"]})
                .to_string()
                .into_bytes(),
            allow(json!({"nested": {"a": 1}})).to_string().into_bytes(),
            allow(json!({"list": [1, 2]})).to_string().into_bytes(),
            allow(json!({"nothing": null})).to_string().into_bytes(),
            allow(json!("not an object")).to_string().into_bytes(),
            too_big.to_string().into_bytes(),
        ];
        for output in cases {
            let refusal = claims(&output, ARN).unwrap_err();
            assert!(
                matches!(refusal, Refusal::Invalid(_)),
                "{}: {refusal}",
                String::from_utf8_lossy(&output)
            );
            assert_eq!(refusal.status(), 500);
        }
    }

    #[test]
    fn principal_and_context_are_optional() {
        let bare = json!({"policyDocument": allow(json!({}))["policyDocument"]});
        assert_eq!(
            claims(bare.to_string().as_bytes(), ARN).unwrap(),
            Claims::new()
        );
        let null_context = allow(Value::Null);
        assert_eq!(
            Value::Object(claims(null_context.to_string().as_bytes(), ARN).unwrap()),
            json!({"principalId": "me"})
        );
    }

    #[tokio::test]
    async fn the_event_has_the_documented_request_shape() {
        let (auth, fake) = authorizer(Some(Ok(allow(json!({})))), &[]);
        auth.authorize(request(
            &[
                ("Authorization", "Leo"),
                ("Connection", "upgrade"),
                ("content-length", "0"),
            ],
            "",
        ))
        .await
        .unwrap();
        let event = fake.payloads.lock().unwrap().pop().unwrap();
        assert_eq!(event["type"], "REQUEST");
        assert_eq!(event["methodArn"], ARN);
        assert_eq!(event["headers"]["Authorization"], "Leo");
        assert_eq!(event["multiValueHeaders"]["Connection"], json!(["upgrade"]));
        assert_eq!(event["queryStringParameters"], json!({}));
        assert_eq!(event["multiValueQueryStringParameters"], json!({}));
        assert_eq!(event["stageVariables"], json!({}));
        let context = &event["requestContext"];
        assert_eq!(context["routeKey"], "$connect");
        assert_eq!(context["eventType"], "CONNECT");
        assert_eq!(context["requestId"], "FDmBIG3EoAMEqYA=");
        assert_eq!(context["connectionId"], "BFaT_fALIAMCKug=");
        assert!(context.get("authorizer").is_none());
        let keys: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 8, "{keys:?}");
    }

    #[test]
    fn method_arn_names_the_stage_and_connect_route() {
        assert_eq!(method_arn(&ApiConfig::default()), ARN);
    }
}
