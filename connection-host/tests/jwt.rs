//! End-to-end tests of the built-in JWT authorizer (`type = "jwt"`, an extension): a host
//! in-process, tokens signed with the test-only keys of `tests/fixtures/jwt`, and the recording
//! event handler standing in for every route's integration.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "an-hs256-secret-for-tests-only!!";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "api";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Claims that pass every check.
fn valid_claims() -> Value {
    json!({
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 600,
        "role": "admin",
        "level": 7,
        "verified": true,
        "groups": ["a", "b"],
    })
}

/// The claims with `name` set to `value`.
fn claims_with(name: &str, value: Value) -> Value {
    let mut claims = valid_claims();
    claims[name] = value;
    claims
}

/// A token of `claims` signed with `alg` by the matching test key (`rsa` or `rsa2` for RSA).
fn sign_with(alg: Algorithm, kid: Option<&str>, claims: &Value, rsa: &str) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&read_fixture(&format!("{rsa}-private.pem"))).unwrap()
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read_fixture("ec-private.pem")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read_fixture("ed25519-private.pem")).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    sign_with(alg, None, claims, "rsa")
}

/// A token whose parts are written by hand (for headers jsonwebtoken will not produce).
fn hand_made(header: Value, claims: &Value, signature: &[u8]) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

/// The keys of the main test host: one per algorithm, without `kid`.
fn every_algorithm() -> String {
    format!(
        r#"
[[authorizers.jwt.keys]]
algorithm = "HS256"
secret = "{SECRET}"
[[authorizers.jwt.keys]]
algorithm = "RS256"
pem_file = "{rsa}"
[[authorizers.jwt.keys]]
algorithm = "ES256"
pem_file = "{ec}"
[[authorizers.jwt.keys]]
algorithm = "EdDSA"
pem_file = "{ed}"
"#,
        rsa = fixture("rsa-public.pem"),
        ec = fixture("ec-public.pem"),
        ed = fixture("ed25519-public.pem"),
    )
}

/// A host whose `$connect` is guarded by the JWT authorizer reading the token from `source`,
/// with `keys`; every route posts to `handler`.
async fn start(handler: &Handler, source: &str, keys: &str) -> TestHost {
    TestHost::start(&format!(
        r#"
[routes."$connect"]
integration = "h"
authorizer = "jwt"
[routes."$default"]
integration = "h"
[routes."$disconnect"]
integration = "h"
[integrations.h]
type = "http"
url = "{url}"
[authorizers.jwt]
type = "jwt"
token_source = "{source}"
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
{keys}
"#,
        url = handler.url,
    ))
    .await
}

async fn setup(source: &str) -> (Handler, TestHost) {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let host = start(&handler, source, &every_algorithm()).await;
    (handler, host)
}

/// Status and body of an upgrade carrying `Authorization: Bearer TOKEN` when given.
async fn attempt(host: &TestHost, token: Option<&str>) -> (u16, String) {
    let extra = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let (status, _, body) = raw_exchange(
        host.addr,
        upgrade_request(host.addr, "/dev", &extra).as_bytes(),
    )
    .await;
    (status, body)
}

/// Proves that refused attempts invoked no integration: a connection allowed afterwards, whose
/// `$disconnect` has arrived, accounts for every event the handler saw.
async fn assert_nothing_ran_but_a_later_connection(host: &TestHost, handler: &Handler) {
    let token = sign(Algorithm::HS256, &valid_claims());
    let (ws, _) = try_connect(
        host.addr,
        "/dev",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .await
    .expect("a valid token connects");
    assert_only_events_of(handler, ws).await;
}

#[tokio::test]
async fn invalid_tokens_are_401_before_any_integration_runs() {
    let (handler, host) = setup("header").await;
    let mut rs256_public_as_secret = Header::new(Algorithm::HS256);
    rs256_public_as_secret.typ = Some("JWT".into());
    let confused = jsonwebtoken::encode(
        &rs256_public_as_secret,
        &valid_claims(),
        &EncodingKey::from_secret(&read_fixture("rsa-public.pem")),
    )
    .unwrap();
    let mut badly_signed = sign(Algorithm::RS256, &valid_claims());
    let last = badly_signed.pop().unwrap();
    badly_signed.push(if last == 'A' { 'B' } else { 'A' });
    let cases = [
        (
            "expired",
            sign(Algorithm::HS256, &claims_with("exp", json!(now() - 600))),
        ),
        (
            "not yet valid",
            sign(Algorithm::ES256, &claims_with("nbf", json!(now() + 600))),
        ),
        (
            "wrong audience",
            sign(Algorithm::RS256, &claims_with("aud", json!("other"))),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::EdDSA,
                &claims_with("iss", json!("https://evil.test")),
            ),
        ),
        ("badly signed", badly_signed),
        (
            "signed with another key",
            sign_with(Algorithm::RS256, None, &valid_claims(), "rsa2"),
        ),
        (
            "alg none",
            hand_made(json!({"alg": "none", "typ": "JWT"}), &valid_claims(), b""),
        ),
        ("algorithm confusion", confused),
        ("not a JWT", "garbage".to_string()),
    ];
    for (what, token) in cases {
        let (status, body) = attempt(&host, Some(&token)).await;
        assert_eq!(
            (status, body.as_str()),
            (401, r#"{"message":"Unauthorized"}"#),
            "{what}"
        );
        assert!(
            handler.events().is_empty(),
            "{what} reached the integration"
        );
    }
    assert_nothing_ran_but_a_later_connection(&host, &handler).await;
}

#[tokio::test]
async fn algorithm_confusion_is_refused_by_a_host_with_only_the_rsa_key() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let rsa_only = format!(
        "[[authorizers.jwt.keys]]\nalgorithm = \"RS256\"\npem_file = \"{}\"\n",
        fixture("rsa-public.pem")
    );
    let host = start(&handler, "header", &rsa_only).await;
    let public_pem = read_fixture("rsa-public.pem");
    // Both spellings of the public key a confused verifier might use as the HMAC secret.
    let trimmed = String::from_utf8(public_pem.clone()).unwrap();
    for secret in [public_pem.as_slice(), trimmed.trim().as_bytes()] {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &valid_claims(),
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        assert_eq!(attempt(&host, Some(&token)).await.0, 401);
    }
    let rs256 = sign(Algorithm::RS256, &valid_claims());
    let (ws, _) = try_connect(
        host.addr,
        "/dev",
        &[("Authorization", &format!("Bearer {rs256}"))],
        None,
    )
    .await
    .expect("the RS256 token itself connects");
    drop(ws);
    let connect = handler.wait_route("$connect", None).await;
    assert_eq!(
        handler.events().len(),
        1,
        "only the valid token ran $connect"
    );
    assert_eq!(
        connect["requestContext"]["authorizer"]["principalId"],
        "user-1"
    );
}

#[tokio::test]
async fn a_missing_token_is_401_without_anything_run() {
    let (handler, host) = setup("header").await;
    assert_eq!(attempt(&host, None).await.0, 401);
    for header in [
        "Authorization: Bearer\r\n",
        "Authorization: Basic dXNlcjpwdw==\r\n",
    ] {
        let (status, _, body) = raw_exchange(
            host.addr,
            upgrade_request(host.addr, "/dev", header).as_bytes(),
        )
        .await;
        assert_eq!(
            (status, body.as_str()),
            (401, r#"{"message":"Unauthorized"}"#),
            "{header}"
        );
    }
    // The token belongs in the header here: one in the query string is no token.
    let token = sign(Algorithm::HS256, &valid_claims());
    let (status, _, _) = raw_exchange(
        host.addr,
        upgrade_request(host.addr, &format!("/dev?token={token}"), "").as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(handler.events().is_empty());
    assert_nothing_ran_but_a_later_connection(&host, &handler).await;
}

#[tokio::test]
async fn each_algorithm_connects_with_the_claims_on_connect_message_and_disconnect() {
    let (handler, host) = setup("header").await;
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let claims = claims_with("sub", json!(format!("user-{alg:?}")));
        let token = sign(alg, &claims);
        let (mut ws, response) = try_connect(
            host.addr,
            "/dev",
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{alg:?} token refused: {e}"));
        assert_eq!(response.status(), 101);
        assert!(response.headers().get("sec-websocket-protocol").is_none());
        let connect = handler
            .wait_for("$connect", |e| {
                route(e) == "$connect" && e["requestContext"]["authorizer"]["sub"] == claims["sub"]
            })
            .await;
        let id = conn_id(&connect).to_string();
        send_text(&mut ws, "hello").await;
        let message = handler.wait_route("$default", Some(&id)).await;
        ws.close(None).await.unwrap();
        let disconnect = handler.wait_route("$disconnect", Some(&id)).await;

        let expected = json!({
            "principalId": format!("user-{alg:?}"),
            "sub": format!("user-{alg:?}"),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "exp": claims["exp"],
            "role": "admin",
            "level": 7,
            "verified": true,
            "groups": r#"["a","b"]"#,
        });
        for event in [&connect, &message, &disconnect] {
            assert_eq!(
                event["requestContext"]["authorizer"], expected,
                "{alg:?}: {event:#}"
            );
            let request: aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest =
                serde_json::from_value(event.clone()).expect("a WebSocket event");
            assert_eq!(
                request.request_context.authorizer.fields["principalId"],
                expected["principalId"]
            );
        }
    }
}

#[tokio::test]
async fn a_jwks_file_selects_its_keys_by_kid() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let jwks = format!(
        "[[authorizers.jwt.keys]]\njwks_file = \"{}\"\n",
        fixture("jwks.json")
    );
    let host = start(&handler, "header", &jwks).await;
    let claims = valid_claims();
    for (signer, kid) in [("rsa", "one"), ("rsa2", "two")] {
        let token = sign_with(Algorithm::RS256, Some(kid), &claims, signer);
        let (ws, _) = try_connect(
            host.addr,
            "/dev",
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("kid {kid} refused: {e}"));
        drop(ws);
    }
    for (what, token) in [
        (
            "kid of the other key",
            sign_with(Algorithm::RS256, Some("one"), &claims, "rsa2"),
        ),
        (
            "unknown kid",
            sign_with(Algorithm::RS256, Some("three"), &claims, "rsa"),
        ),
        ("no kid", sign_with(Algorithm::RS256, None, &claims, "rsa")),
    ] {
        assert_eq!(attempt(&host, Some(&token)).await.0, 401, "{what}");
    }
    let connects = handler
        .events()
        .iter()
        .filter(|e| route(e) == "$connect")
        .count();
    assert_eq!(connects, 2);
}

#[tokio::test]
async fn the_token_is_read_from_the_query_string_when_configured() {
    let (handler, host) = setup("query").await;
    let token = sign(Algorithm::ES256, &valid_claims());
    let (ws, _) = try_connect(host.addr, &format!("/dev?token={token}"), &[], None)
        .await
        .expect("a token in the query string connects");
    drop(ws);
    let connect = handler.wait_route("$connect", None).await;
    assert_eq!(
        connect["requestContext"]["authorizer"]["principalId"],
        "user-1"
    );
    assert_eq!(query_param(&connect, "token"), Some(token.as_str()));
    // In this placement a header token is no token.
    assert_eq!(attempt(&host, Some(&token)).await.0, 401);
    assert_eq!(
        raw_exchange(
            host.addr,
            upgrade_request(host.addr, "/dev?token=", "").as_bytes()
        )
        .await
        .0,
        401
    );
}

#[tokio::test]
async fn the_token_is_read_from_the_subprotocols_and_never_echoed() {
    // `$connect` selects `chat` when offered, and otherwise echoes the last protocol offered
    // (a naive handler that would hand the token back).
    let handler = Handler::start(|event| {
        let offered = event["headers"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_default()
            .to_string();
        let choice = if offered.split(", ").any(|p| p == "chat") {
            "chat".to_string()
        } else {
            offered.rsplit(", ").next().unwrap_or_default().to_string()
        };
        match route(event) {
            "$connect" if !offered.is_empty() => Reply::json(json!({
                "statusCode": 200,
                "headers": {"Sec-WebSocket-Protocol": choice},
            })),
            _ => Reply::proxy(200, None),
        }
    })
    .await;
    let host = start(&handler, "subprotocol", &every_algorithm()).await;
    let token = sign(Algorithm::EdDSA, &valid_claims());

    for (offered, answered) in [
        (format!("bearer, {token}"), "bearer"),
        (format!("chat, bearer, {token}"), "chat"),
    ] {
        // tungstenite's client, like browsers, fails a handshake answering a protocol it did
        // not offer, or none when it offered some.
        let (ws, response) = try_connect(
            host.addr,
            "/dev",
            &[("Sec-WebSocket-Protocol", &offered)],
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{offered}: {e}"));
        drop(ws);
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            answered,
            "{offered}"
        );
    }
    let connect = handler.wait_route("$connect", None).await;
    assert_eq!(
        connect["requestContext"]["authorizer"]["principalId"],
        "user-1"
    );

    for offered in [
        "bearer".to_string(),
        token.clone(),
        format!("chat, {token}"),
    ] {
        let extra = format!("Sec-WebSocket-Protocol: {offered}\r\n");
        let (status, _, _) = raw_exchange(
            host.addr,
            upgrade_request(host.addr, "/dev", &extra).as_bytes(),
        )
        .await;
        assert_eq!(status, 401, "{offered}");
    }
    let expired = sign(Algorithm::EdDSA, &claims_with("exp", json!(now() - 600)));
    let extra = format!("Sec-WebSocket-Protocol: bearer, {expired}\r\n");
    let (status, _, _) = raw_exchange(
        host.addr,
        upgrade_request(host.addr, "/dev", &extra).as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    let connects = handler
        .events()
        .iter()
        .filter(|e| route(e) == "$connect")
        .count();
    assert_eq!(connects, 2, "refused attempts ran $connect");
}

#[tokio::test]
async fn when_connect_selects_no_subprotocol_the_marker_is_answered() {
    let host = TestHost::start(&format!(
        r#"
[routes."$connect"]
integration = "m"
authorizer = "jwt"
[integrations.m]
type = "mock"
[authorizers.jwt]
type = "jwt"
token_source = "subprotocol"
subprotocol_marker = "access_token"
[[authorizers.jwt.keys]]
algorithm = "HS256"
secret = "{SECRET}"
"#
    ))
    .await;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u", "exp": now() + 60}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let offered = format!("access_token, {token}");
    let (ws, response) = try_connect(
        host.addr,
        "/dev",
        &[("Sec-WebSocket-Protocol", &offered)],
        None,
    )
    .await
    .expect("the token connects");
    drop(ws);
    assert_eq!(response.headers()["sec-websocket-protocol"], "access_token");
    let wrong_marker = format!("bearer, {token}");
    let extra = format!("Sec-WebSocket-Protocol: {wrong_marker}\r\n");
    let (status, _, _) = raw_exchange(
        host.addr,
        upgrade_request(host.addr, "/dev", &extra).as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
}

/// An HS256 token of the valid claims, with `sub` set to `sub`, signed with `secret`.
fn hs256(secret: &[u8], sub: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims_with("sub", json!(sub)),
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Expects a token signed with `good` to connect (its `sub` reaching `$connect`) and each of
/// `bad` to be refused with 401 without anything run.
async fn admits_only(host: &TestHost, handler: &Handler, good: &[u8], bad: &[&[u8]]) {
    for (i, secret) in bad.iter().enumerate() {
        let (status, body) = attempt(host, Some(&hs256(secret, "intruder"))).await;
        assert_eq!(
            (status, body.as_str()),
            (401, r#"{"message":"Unauthorized"}"#),
            "token {i} signed with another secret"
        );
    }
    assert!(handler.events().is_empty(), "{:#?}", handler.events());
    let (mut ws, _) = try_connect(
        host.addr,
        "/dev",
        &[(
            "Authorization",
            &format!("Bearer {}", hs256(good, "keyholder")),
        )],
        None,
    )
    .await
    .expect("a token signed with the configured secret connects");
    let connect = handler.wait_route("$connect", None).await;
    assert_eq!(connect["requestContext"]["authorizer"]["sub"], "keyholder");
    ws.close(None).await.unwrap();
    handler.wait_route("$disconnect", None).await;
    assert_eq!(handler.events().len(), 2, "{:#?}", handler.events());
}

#[tokio::test]
async fn an_hs256_secret_from_secret_env_verifies_tokens() {
    // No other test reads or writes this variable.
    const VARIABLE: &str = "CONNECTION_HOST_TEST_JWT_SECRET_FROM_ENV";
    const FROM_ENV: &str = "an-hs256-secret-read-from-the-environment";
    // SAFETY: std's own environment functions serialize on one lock, and this variable is set
    // once, before the host that reads it starts; nothing else in this test binary reads it.
    #[expect(unsafe_code, reason = "std::env::set_var is unsafe since edition 2024")]
    unsafe {
        std::env::set_var(VARIABLE, FROM_ENV)
    };
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let host = start(
        &handler,
        "header",
        &format!("[[authorizers.jwt.keys]]\nalgorithm = \"HS256\"\nsecret_env = \"{VARIABLE}\"\n"),
    )
    .await;
    admits_only(
        &host,
        &handler,
        FROM_ENV.as_bytes(),
        &[SECRET.as_bytes(), VARIABLE.as_bytes()],
    )
    .await;
}

#[tokio::test]
async fn an_hs256_secret_from_secret_file_verifies_tokens_without_its_whitespace() {
    const IN_FILE: &str = "an-hs256-secret-read-from-a-file";
    let path = std::env::temp_dir().join(format!(
        "connection-host-jwt-secret-{}.txt",
        std::process::id()
    ));
    // As an editor, `echo` or a mounted secret might leave it: whitespace around, a final newline.
    let contents = format!("  \t{IN_FILE}\n\n");
    std::fs::write(&path, &contents).unwrap();
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let host = start(
        &handler,
        "header",
        &format!(
            "[[authorizers.jwt.keys]]\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
            path.display()
        ),
    )
    .await;
    admits_only(
        &host,
        &handler,
        IN_FILE.as_bytes(),
        &[
            SECRET.as_bytes(),
            contents.as_bytes(),
            format!("{IN_FILE}\n").as_bytes(),
        ],
    )
    .await;
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn the_connection_record_keeps_the_authorizer_context_the_events_carry() {
    let handler = Handler::start(|_| Reply::proxy(200, None)).await;
    let store = std::sync::Arc::new(connection_host::store::MemoryStore::new());
    let host = TestHost::start_with_store(
        &format!(
            r#"
[routes."$connect"]
integration = "h"
authorizer = "jwt"
[integrations.h]
type = "http"
url = "{url}"
[authorizers.jwt]
type = "jwt"
token_source = "query"
issuer = "{ISSUER}"
audience = ["{AUDIENCE}"]
{keys}
"#,
            url = handler.url,
            keys = every_algorithm(),
        ),
        store.clone(),
    )
    .await;
    let token = sign(Algorithm::HS256, &valid_claims());
    let (_ws, _) = try_connect(host.addr, &format!("/dev?token={token}"), &[], None)
        .await
        .expect("a valid token connects");
    let connect = handler.wait_route("$connect", None).await;
    let id = connect["requestContext"]["connectionId"].as_str().unwrap();
    let record = connection_host::store::ConnectionStore::get_connection(&*store, id)
        .await
        .unwrap()
        .expect("the connection has a record");
    let authorizer = Value::Object(record.authorizer.expect("the record has the authorizer"));
    assert_eq!(authorizer, connect["requestContext"]["authorizer"]);
    assert_eq!(authorizer["principalId"], "user-1");
}
