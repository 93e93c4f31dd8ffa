//! End-to-end tests of the Lambda REQUEST authorizer on `$connect` (spec §6): a host in-process,
//! an authorizer function behind a Lambda Invoke API endpoint, and the recording event handler.

mod common;

use axum::response::IntoResponse;
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::watch;

const METHOD_ARN: &str = "arn:aws:execute-api:us-east-1:000000000000:local00api/dev/$connect";

/// The captured WebSocket authorizer event of spec §2.7 D (aws-powertools
/// `apiGatewayAuthorizerWebSocketEvent.json`), trimmed to one header: the reference for key sets.
const CAPTURED_AUTHORIZER_EVENT: &str = r#"{
    "type":"REQUEST",
    "methodArn":"arn:aws:execute-api:us-east-1:533568316194:c5jwxq709g/production/$connect",
    "headers":{"Authorization":"Leo"},
    "multiValueHeaders":{"Authorization":["Leo"]},
    "queryStringParameters":{},
    "multiValueQueryStringParameters":{},
    "stageVariables":{},
    "requestContext":{
       "routeKey":"$connect",
       "eventType":"CONNECT",
       "extendedRequestId":"FDmBIG3EoAMEqYA=",
       "requestTime":"27/Jan/2025:16:39:47 +0000",
       "messageDirection":"IN",
       "stage":"production",
       "connectedAt":1737995987617,
       "requestTimeEpoch":1737995987617,
       "identity":{ "sourceIp":"93.108.161.96" },
       "requestId":"FDmBIG3EoAMEqYA=",
       "domainName":"c5jwxq709g.execute-api.us-east-1.amazonaws.com",
       "connectionId":"FDmBIeapIAMCIQg=",
       "apiId":"c5jwxq709g"
    }
}"#;

/// A Lambda Invoke API endpoint serving the authorizer function: it records every payload it is
/// invoked with and answers according to the `Authorization` header (see [`decide`]).
struct AuthorizerFunction {
    url: String,
    invocations: Arc<watch::Sender<Vec<(String, Value)>>>,
}

impl AuthorizerFunction {
    async fn start() -> Self {
        let invocations = Arc::new(watch::channel(Vec::new()).0);
        let seen = invocations.clone();
        let app = axum::Router::new().route(
            "/2015-03-31/functions/{name}/invocations",
            axum::routing::post(
                move |axum::extract::Path(name): axum::extract::Path<String>, body: String| {
                    let seen = seen.clone();
                    async move {
                        let event: Value = serde_json::from_str(&body).expect("payload is JSON");
                        seen.send_modify(|v| v.push((name, event.clone())));
                        match decide(&event) {
                            Ok(result) => result.to_string().into_response(),
                            Err(error) => {
                                ([("X-Amz-Function-Error", "Unhandled")], error.to_string())
                                    .into_response()
                            }
                        }
                    }
                },
            ),
        );
        Self {
            url: serve(app).await,
            invocations,
        }
    }

    /// The events the function was invoked with, in order.
    fn events(&self) -> Vec<Value> {
        self.invocations
            .borrow()
            .iter()
            .map(|(_, e)| e.clone())
            .collect()
    }
}

fn policy(effect: &str, resource: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}]
    })
}

/// The authorizer function's logic, chosen by the `Authorization` header: the usual result for
/// `allow` (context of each allowed type), and one case per outcome of spec §6.4.
fn decide(event: &Value) -> Result<Value, Value> {
    let arn = event["methodArn"].as_str().unwrap();
    let allowed = |context: Value| {
        Ok(json!({
            "principalId": "user-1",
            "policyDocument": policy("Allow", arn),
            "context": context,
        }))
    };
    // Header names arrive as the client spelled them; tungstenite's client sends lower case.
    let token = event["headers"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| value.as_str())
        .unwrap_or_default();
    match token {
        "allow" => allowed(json!({"str": "text", "num": 42, "bool": true})),
        "deny" => Ok(json!({"principalId": "user-1", "policyDocument": policy("Deny", arn)})),
        // The REST habit `{stage}/*/*`: $connect has no method segment, so this matches nothing.
        "rest-style" => Ok(json!({
            "principalId": "user-1",
            "policyDocument": policy("Allow", "arn:aws:execute-api:us-east-1:000000000000:local00api/dev/*/*"),
        })),
        "wildcard" => Ok(json!({
            "principalId": "user-1",
            "policyDocument": policy("Allow", "arn:aws:execute-api:*:*:local00api/*"),
        })),
        "unauthorized" => Err(json!({"errorType": "Error", "errorMessage": "Unauthorized"})),
        "crash" => Err(json!({"errorType": "TypeError", "errorMessage": "x is undefined"})),
        "proxy-shaped" => Ok(json!({"statusCode": 401})),
        "nested" => allowed(json!({"user": {"id": 1}})),
        other => panic!("no case for Authorization {other:?}"),
    }
}

/// A host whose `$connect` route is guarded by the authorizer, every route posting to `handler`,
/// plus a MOCK route that echoes `$context.authorizer.*`.
async fn start(
    function: &AuthorizerFunction,
    handler: &Handler,
    identity_sources: &str,
) -> TestHost {
    TestHost::start(&format!(
        r#"
[routes."$connect"]
integration = "h"
authorizer = "auth"
[routes."$default"]
integration = "h"
[routes."$disconnect"]
integration = "h"
[routes.who]
integration = "who"
two_way = true
[integrations.h]
type = "http"
url = "{handler}"
[integrations.who]
type = "mock"
response_template = '$context.authorizer.principalId $context.authorizer.num $context.authorizer.bool'
[authorizers.auth]
function_name = "auth-fn"
endpoint_url = "{function}"
identity_sources = [{identity_sources}]
"#,
        handler = handler.url,
        function = function.url,
    ))
    .await
}

const SOURCES: &str = r#""route.request.header.Authorization", "route.request.querystring.room""#;

async fn setup() -> (AuthorizerFunction, Handler, TestHost) {
    let function = AuthorizerFunction::start().await;
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let host = start(&function, &handler, SOURCES).await;
    (function, handler, host)
}

/// Status and body of an upgrade with `Authorization: token` (when given) to `target`.
async fn attempt(host: &TestHost, target: &str, token: Option<&str>) -> (u16, String) {
    let extra = token
        .map(|t| format!("Authorization: {t}\r\n"))
        .unwrap_or_default();
    let (status, _, body) = raw_exchange(
        host.addr,
        upgrade_request(host.addr, target, &extra).as_bytes(),
    )
    .await;
    (status, body)
}

/// Proves that no refused attempt produced an event: an allowed connection opened and closed
/// afterwards, whose `$disconnect` has arrived, must account for every event the handler saw.
async fn assert_no_events_but_a_later_connection(host: &TestHost, handler: &Handler) {
    let (ws, _) = try_connect(
        host.addr,
        "/dev?room=1",
        &[("Authorization", "allow")],
        None,
    )
    .await
    .expect("an allowed connection");
    assert_only_events_of(handler, ws).await;
}

#[tokio::test]
async fn allowed_connection_carries_the_claims_on_connect_message_and_disconnect() {
    let (function, handler, host) = setup().await;
    let (mut ws, response) = try_connect(
        host.addr,
        "/dev?room=1",
        &[("Authorization", "allow")],
        None,
    )
    .await
    .expect("the authorizer allows");
    assert_eq!(response.status(), 101);
    let connect = handler.wait_route("$connect", None).await;
    let id = conn_id(&connect).to_string();
    send_text(&mut ws, r#"{"action":"hello"}"#).await;
    let message = handler.wait_route("$default", Some(&id)).await;
    send_text(&mut ws, r#"{"action":"who"}"#).await;
    assert_eq!(next_text(&mut ws).await, "user-1 42 true");
    ws.close(None).await.unwrap();
    let disconnect = handler.wait_route("$disconnect", Some(&id)).await;

    let claims = json!({"principalId": "user-1", "str": "text", "num": 42, "bool": true});
    for event in [&connect, &message, &disconnect] {
        assert_eq!(event["requestContext"]["authorizer"], claims, "{event:#}");
        let request: aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest =
            serde_json::from_value(event.clone()).expect("a WebSocket event");
        assert_eq!(
            request.request_context.authorizer.fields["principalId"],
            "user-1"
        );
    }
    // One upgrade request: the authorizer and $connect share connection, request and trace IDs.
    let authorizer_event = &function.events()[0];
    let (a, c) = (
        &authorizer_event["requestContext"],
        &connect["requestContext"],
    );
    assert_eq!(a["connectionId"], c["connectionId"]);
    assert_eq!(a["requestId"], c["requestId"]);
    assert_eq!(a["connectedAt"], c["connectedAt"]);
    assert_eq!(
        authorizer_event["headers"]["X-Amzn-Trace-Id"],
        connect["headers"]["X-Amzn-Trace-Id"]
    );
}

#[tokio::test]
async fn missing_or_empty_identity_source_is_401_without_calling_the_authorizer() {
    let (function, handler, host) = setup().await;
    for (target, token) in [
        ("/dev?room=1", None),
        ("/dev?room=1", Some("")),
        ("/dev", Some("allow")),
        ("/dev?room=", Some("allow")),
        ("/dev?Room=1", Some("allow")),
    ] {
        assert_eq!(
            attempt(&host, target, token).await,
            (401, r#"{"message":"Unauthorized"}"#.to_string()),
            "{target} {token:?}"
        );
    }
    assert!(function.events().is_empty(), "the authorizer was called");
    assert_no_events_but_a_later_connection(&host, &handler).await;
}

#[tokio::test]
async fn unauthorized_error_is_401() {
    let (function, handler, host) = setup().await;
    assert_eq!(
        attempt(&host, "/dev?room=1", Some("unauthorized")).await,
        (401, r#"{"message":"Unauthorized"}"#.to_string())
    );
    assert_eq!(function.events().len(), 1);
    assert_no_events_but_a_later_connection(&host, &handler).await;
}

#[tokio::test]
async fn deny_and_resource_mismatch_are_403() {
    let (_function, handler, host) = setup().await;
    for token in ["deny", "rest-style"] {
        assert_eq!(
            attempt(&host, "/dev?room=1", Some(token)).await,
            (403, r#"{"message":"Forbidden"}"#.to_string()),
            "{token}"
        );
    }
    assert_no_events_but_a_later_connection(&host, &handler).await;
}

#[tokio::test]
async fn wildcard_resource_is_allowed() {
    let (_function, handler, host) = setup().await;
    let (_ws, response) = try_connect(
        host.addr,
        "/dev?room=1",
        &[("Authorization", "wildcard")],
        None,
    )
    .await
    .expect("arn:aws:execute-api:*:*:local00api/* covers $connect");
    assert_eq!(response.status(), 101);
    let connect = handler.wait_route("$connect", None).await;
    // No context: the claims are the principal alone.
    assert_eq!(
        connect["requestContext"]["authorizer"],
        json!({"principalId": "user-1"})
    );
}

#[tokio::test]
async fn function_errors_and_invalid_results_are_500() {
    let (_function, handler, host) = setup().await;
    for token in ["crash", "proxy-shaped", "nested"] {
        assert_eq!(
            attempt(&host, "/dev?room=1", Some(token)).await,
            (500, r#"{"message":null}"#.to_string()),
            "{token}"
        );
    }
    assert_no_events_but_a_later_connection(&host, &handler).await;
}

#[tokio::test]
async fn unreachable_authorizer_is_500() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let unreachable = AuthorizerFunction {
        url: closed_port_url()
            .await
            .trim_end_matches("/nothing")
            .to_string(),
        invocations: Arc::new(watch::channel(Vec::new()).0),
    };
    let host = start(&unreachable, &handler, SOURCES).await;
    assert_eq!(
        attempt(&host, "/dev?room=1", Some("allow")).await,
        (500, r#"{"message":null}"#.to_string())
    );
    assert!(handler.events().is_empty());
}

#[tokio::test]
async fn every_attempt_invokes_the_authorizer() {
    let (function, _handler, host) = setup().await;
    for _ in 0..2 {
        try_connect(
            host.addr,
            "/dev?room=1",
            &[("Authorization", "allow")],
            None,
        )
        .await
        .expect("allowed");
    }
    assert_eq!(function.events().len(), 2, "results must not be cached");
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn authorizer_event_has_the_keys_of_the_captured_event() {
    let (function, handler, host) = setup().await;
    // Raw, so the header names keep the casing the assertions use.
    let _stream = raw_upgrade(
        host.addr,
        "/dev?room=lobby&room=main",
        "Authorization: allow\r\nUser-Agent: test-client\r\n",
    )
    .await;
    let connect = handler.wait_route("$connect", None).await;
    let event = function.events().remove(0);
    assert_eq!(function.invocations.borrow()[0].0, "auth-fn");

    let captured: Value = serde_json::from_str(CAPTURED_AUTHORIZER_EVENT).unwrap();
    assert_eq!(keys(&event), keys(&captured));
    assert_eq!(event["type"], "REQUEST");
    assert_eq!(event["methodArn"], METHOD_ARN);
    assert_eq!(event["stageVariables"], json!({}));
    // requestContext: the CONNECT event's, without `authorizer`, and the captured keys plus the
    // `identity.userAgent` a client with a User-Agent gets.
    let mut connect_context = connect["requestContext"].clone();
    connect_context
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    assert_eq!(
        keys(&event["requestContext"]),
        keys(&captured["requestContext"])
    );
    assert_eq!(keys(&event["requestContext"]), keys(&connect_context));
    for same in [
        "routeKey",
        "eventType",
        "stage",
        "domainName",
        "apiId",
        "identity",
    ] {
        assert_eq!(
            event["requestContext"][same], connect_context[same],
            "{same}"
        );
    }
    assert_eq!(
        event["requestContext"]["identity"]["userAgent"],
        "test-client"
    );

    // Headers: unlike the CONNECT event's, with the hop-by-hop headers and content-length: 0.
    let headers = &event["headers"];
    for (name, value) in [
        ("Authorization", "allow"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("content-length", "0"),
        ("X-Forwarded-Proto", "http"),
    ] {
        assert_eq!(headers[name], value, "{name}");
        assert_eq!(event["multiValueHeaders"][name], json!([value]), "{name}");
    }
    for name in [
        "Host",
        "Sec-WebSocket-Key",
        "X-Amzn-Trace-Id",
        "X-Forwarded-For",
    ] {
        assert!(headers.get(name).is_some(), "{name} missing");
    }
    for name in ["Connection", "Upgrade", "content-length"] {
        assert!(
            connect["headers"].get(name).is_none(),
            "$connect got {name}"
        );
    }
    assert_eq!(event["queryStringParameters"], json!({"room": "main"}));
    assert_eq!(
        event["multiValueQueryStringParameters"],
        json!({"room": ["lobby", "main"]})
    );
}

#[tokio::test]
async fn without_a_query_string_the_query_maps_are_empty_objects() {
    let function = AuthorizerFunction::start().await;
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let host = start(
        &function,
        &handler,
        r#""route.request.header.Authorization""#,
    )
    .await;
    try_connect(host.addr, "/dev", &[("Authorization", "allow")], None)
        .await
        .expect("allowed");
    let connect = handler.wait_route("$connect", None).await;
    let event = function.events().remove(0);
    assert_eq!(event["queryStringParameters"], json!({}));
    assert_eq!(event["multiValueQueryStringParameters"], json!({}));
    // The CONNECT event keeps API Gateway's rule: no query string, no query maps.
    assert!(connect.get("queryStringParameters").is_none());
}
