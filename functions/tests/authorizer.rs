//! The authorizer fed the captured REQUEST authorizer event (spec §2.7 D) with tokens added:
//! tokens signed with the configured key are allowed with their context; expired, mis-signed,
//! wrong-audience, wrong-issuer, `alg: none` and algorithm-confused tokens are `Unauthorized`.

mod common;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lambda_http::aws_lambda_events::apigw::ApiGatewayCustomAuthorizerRequestTypeRequest;
use lambda_http::lambda_runtime::Diagnostic;
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};
use ws_handler::examples::authorizer::{AuthorizerConfig, AuthorizerError, JwtKey, authorize};

const METHOD_ARN: &str =
    "arn:aws:execute-api:us-east-1:533568316194:c5jwxq709g/production/$connect";
const SECRET: &[u8] = b"a test secret that is long enough for HS256";

/// Base64url without padding, as JWT segments are encoded.
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn key_file(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn valid_claims() -> Value {
    json!({ "sub": "user-1", "nickname": "alice", "exp": now() + 600 })
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn rs256(private_key: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&key_file(private_key)).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

/// The captured authorizer event, with `query` as its query string and `headers` added.
fn event(
    query: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let mut json = common::fixture("apiGatewayAuthorizerWebSocketEvent.json");
    for (name, value) in query {
        json["queryStringParameters"][name] = (*value).into();
        json["multiValueQueryStringParameters"][name] = json!([value]);
    }
    for (name, value) in headers {
        json["headers"][name] = (*value).into();
        json["multiValueHeaders"][name] = json!([value]);
    }
    serde_json::from_value(json).expect("an authorizer event")
}

fn with_token(token: &str) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    event(&[("token", token)], &[])
}

fn hs_config() -> AuthorizerConfig {
    AuthorizerConfig::new(Some(&JwtKey::Secret(SECRET.to_vec())), None, None, false).unwrap()
}

fn allowed(
    config: &AuthorizerConfig,
    event: &ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> Value {
    serde_json::to_value(authorize(config, event).expect("allowed")).unwrap()
}

fn refused(config: &AuthorizerConfig, event: &ApiGatewayCustomAuthorizerRequestTypeRequest) {
    assert_eq!(authorize(config, event), Err(AuthorizerError::Unauthorized));
}

#[test]
fn a_valid_token_in_the_query_string_is_allowed_with_its_context() {
    let answer = allowed(&hs_config(), &with_token(&hs256(&valid_claims())));
    assert_eq!(
        answer,
        json!({
            "principalId": "user-1",
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [{
                    "Action": "execute-api:Invoke",
                    "Effect": "Allow",
                    "Resource": METHOD_ARN
                }]
            },
            "context": { "nickname": "alice", "sub": "user-1" }
        })
    );
}

#[test]
fn a_bearer_header_works_and_wins_over_the_query_string() {
    let token = hs256(&valid_claims());
    let bearer = format!("Bearer {token}");
    let answer = allowed(&hs_config(), &event(&[], &[("Authorization", &bearer)]));
    assert_eq!(answer["principalId"], "user-1");
    let lower = format!("bearer {token}");
    let both = event(&[("token", "garbage")], &[("authorization", &lower)]);
    assert_eq!(allowed(&hs_config(), &both)["principalId"], "user-1");
}

#[test]
fn the_nickname_falls_back_to_name_then_sub() {
    let claims = json!({ "sub": "user-2", "name": "Bob B", "exp": now() + 600 });
    let answer = allowed(&hs_config(), &with_token(&hs256(&claims)));
    assert_eq!(
        answer["context"],
        json!({ "nickname": "Bob B", "sub": "user-2" })
    );
    let claims = json!({ "sub": "user-3", "exp": now() + 600 });
    let answer = allowed(&hs_config(), &with_token(&hs256(&claims)));
    assert_eq!(
        answer["context"],
        json!({ "nickname": "user-3", "sub": "user-3" })
    );
}

#[test]
fn no_token_is_unauthorized() {
    // The captured event carries `Authorization: Leo`, which is not a bearer token.
    refused(&hs_config(), &event(&[], &[]));
    refused(&hs_config(), &with_token(""));
}

#[test]
fn expired_and_not_yet_valid_tokens_are_unauthorized() {
    let expired = json!({ "sub": "u", "exp": now() - 3600 });
    refused(&hs_config(), &with_token(&hs256(&expired)));
    let early = json!({ "sub": "u", "exp": now() + 7200, "nbf": now() + 3600 });
    refused(&hs_config(), &with_token(&hs256(&early)));
    let no_exp = json!({ "sub": "u" });
    refused(&hs_config(), &with_token(&hs256(&no_exp)));
}

#[test]
fn a_wrong_signature_is_unauthorized() {
    let other = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &valid_claims(),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    refused(&hs_config(), &with_token(&other));

    let token = hs256(&valid_claims());
    let (unsigned, _) = token.rsplit_once('.').unwrap();
    refused(
        &hs_config(),
        &with_token(&format!("{unsigned}.{}", b64(b"forged"))),
    );
    refused(&hs_config(), &with_token("not.a.jwt"));
}

#[test]
fn alg_none_is_unauthorized() {
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64(valid_claims().to_string().as_bytes());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        refused(&hs_config(), &with_token(&token));
    }
}

#[test]
fn audience_and_issuer_are_checked_when_configured() {
    let config = AuthorizerConfig::new(
        Some(&JwtKey::Secret(SECRET.to_vec())),
        Some("https://issuer.example"),
        Some("chat"),
        false,
    )
    .unwrap();
    let good =
        json!({ "sub": "u", "exp": now() + 600, "iss": "https://issuer.example", "aud": "chat" });
    assert_eq!(
        allowed(&config, &with_token(&hs256(&good)))["principalId"],
        "u"
    );
    let in_list = json!({ "sub": "u", "exp": now() + 600, "iss": "https://issuer.example", "aud": ["x", "chat"] });
    assert_eq!(
        allowed(&config, &with_token(&hs256(&in_list)))["principalId"],
        "u"
    );

    for bad in [
        json!({ "sub": "u", "exp": now() + 600, "iss": "https://issuer.example", "aud": "other" }),
        json!({ "sub": "u", "exp": now() + 600, "iss": "https://issuer.example" }),
        json!({ "sub": "u", "exp": now() + 600, "iss": "https://evil.example", "aud": "chat" }),
        json!({ "sub": "u", "exp": now() + 600, "aud": "chat" }),
    ] {
        refused(&config, &with_token(&hs256(&bad)));
    }
}

#[test]
fn a_token_without_sub_is_unauthorized() {
    refused(
        &hs_config(),
        &with_token(&hs256(&json!({ "exp": now() + 600 }))),
    );
    refused(
        &hs_config(),
        &with_token(&hs256(&json!({ "sub": "", "exp": now() + 600 }))),
    );
}

#[test]
fn rs256_with_a_public_key() {
    let config = AuthorizerConfig::new(
        Some(&JwtKey::PublicKeyPem(key_file("rsa-public.pem"))),
        None,
        None,
        false,
    )
    .unwrap();
    let answer = allowed(
        &config,
        &with_token(&rs256("rsa-private.pem", &valid_claims())),
    );
    assert_eq!(answer["principalId"], "user-1");
    refused(
        &config,
        &with_token(&rs256("other-rsa-private.pem", &valid_claims())),
    );
    // Algorithm confusion: an HS256 token whose secret is the public key must not pass.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &valid_claims(),
        &EncodingKey::from_secret(&key_file("rsa-public.pem")),
    )
    .unwrap();
    refused(&config, &with_token(&confused));
    refused(&config, &with_token(&hs256(&valid_claims())));
}

#[test]
fn es256_with_a_public_key() {
    let config = AuthorizerConfig::new(
        Some(&JwtKey::PublicKeyPem(key_file("ec-public.pem"))),
        None,
        None,
        false,
    )
    .unwrap();
    let key = EncodingKey::from_ec_pem(&key_file("ec-private.pem")).unwrap();
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &valid_claims(), &key).unwrap();
    assert_eq!(
        allowed(&config, &with_token(&token))["principalId"],
        "user-1"
    );
    refused(
        &config,
        &with_token(&rs256("rsa-private.pem", &valid_claims())),
    );
}

#[test]
fn guests_with_a_valid_nickname_when_allowed() {
    let guests = AuthorizerConfig::new(None, None, None, true).unwrap();
    let answer = allowed(&guests, &event(&[("nickname", " alice ")], &[]));
    assert_eq!(answer["principalId"], "guest:alice");
    assert_eq!(
        answer["context"],
        json!({ "nickname": "alice", "guest": true })
    );
    assert_eq!(
        answer["policyDocument"]["Statement"][0]["Resource"],
        METHOD_ARN
    );

    refused(&guests, &event(&[("nickname", "<b>")], &[]));
    refused(&guests, &event(&[], &[]));
    // A token, even a bad one, is never downgraded to a guest login.
    refused(
        &guests,
        &event(&[("nickname", "alice"), ("token", "bad")], &[]),
    );
    // With a key as well, guests and token holders both get in.
    let both =
        AuthorizerConfig::new(Some(&JwtKey::Secret(SECRET.to_vec())), None, None, true).unwrap();
    assert_eq!(
        allowed(&both, &event(&[("nickname", "bob")], &[]))["principalId"],
        "guest:bob"
    );
    assert_eq!(
        allowed(&both, &with_token(&hs256(&valid_claims())))["principalId"],
        "user-1"
    );
    // Without the flag a nickname alone is not enough.
    refused(&hs_config(), &event(&[("nickname", "alice")], &[]));
}

#[test]
fn unauthorized_is_reported_as_the_exact_error_message_api_gateway_maps_to_401() {
    let diagnostic = Diagnostic::from(AuthorizerError::Unauthorized);
    assert_eq!(diagnostic.error_message, "Unauthorized");
}

#[test]
fn an_event_without_method_arn_is_an_error() {
    let mut json = common::fixture("apiGatewayAuthorizerWebSocketEvent.json");
    json.as_object_mut().unwrap().remove("methodArn");
    let event: ApiGatewayCustomAuthorizerRequestTypeRequest = serde_json::from_value(json).unwrap();
    assert_eq!(
        authorize(&hs_config(), &event),
        Err(AuthorizerError::MissingMethodArn)
    );
}
