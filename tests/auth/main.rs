//! Auth end to end (contract §2 auth rows, §8) against the real server:
//! every transport refuses a missing, bad or expired credential
//! (`unauthenticated`) and a token that lacks the topic or a browser origin
//! that is not allowed (`forbidden`), with its wire's code; API keys may do
//! everything; long-lived streams close at `exp` unless refreshed, and a
//! refresh drops topics the new token no longer allows. The tokens are
//! minted here with `jsonwebtoken`, as an identity provider would.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
#[path = "../support/mod.rs"]
mod support;

#[path = "../grpc/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod expiry;
mod grpc;
mod http;
mod keys;
mod logs;
mod ws;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use support::TestServer;

/// The HS256 secret of [`CONFIG`].
pub(crate) const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
/// The API key of [`CONFIG`].
pub(crate) const API_KEY: &str = "test-api-key-0123456789abcdef";
/// The browser origin [`CONFIG`] allows.
pub(crate) const ORIGIN: &str = "https://app.example";

/// Auth on: one HS256 secret, one API key, one allowed origin, no leeway.
pub(crate) const CONFIG: &str = r#"
[auth]
hmac_secrets = ["test-secret-0123456789abcdef0123456789abcdef"]
api_keys = ["test-api-key-0123456789abcdef"]
allowed_origins = ["https://app.example"]
leeway = "0s"
"#;

pub(crate) async fn server() -> TestServer {
    TestServer::start(CONFIG).await
}

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token signed with `secret` for `claims`.
pub(crate) fn sign(claims: &Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap())
        .unwrap()
}

/// A token of user `sub` that may subscribe to `subscribe` and publish to
/// `publish` for `ttl` seconds.
pub(crate) fn token(sub: &str, subscribe: &[&str], publish: &[&str], ttl: i64) -> String {
    let exp = now() as i64 + ttl;
    sign(&json!({"sub": sub, "exp": exp, "topics": {"subscribe": subscribe, "publish": publish}}), SECRET)
}

/// A token that may do everything on `chat.*`, for an hour.
pub(crate) fn chat_token() -> String {
    token("alice", &["chat.*"], &["chat.*"], 3600)
}

/// Credentials that must be refused as `unauthenticated`, with what they are.
pub(crate) fn bad_credentials() -> Vec<(&'static str, String)> {
    let good = chat_token();
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let forged_payload = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: Value = serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
        claims["topics"]["subscribe"] = json!(["*"]);
        b64.encode(claims.to_string())
    };
    let unsigned = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{payload}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#))
    };
    vec![
        ("garbage", "not-a-token".to_owned()),
        ("expired", token("alice", &["chat.*"], &["chat.*"], -60)),
        (
            "wrong secret",
            sign(&json!({"sub": "alice", "exp": now() + 60}), "another-secret-another-secret-xx"),
        ),
        ("tampered payload", format!("{head}.{forged_payload}.{sig}")),
        ("alg none", unsigned),
        ("not yet valid", sign(&json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300}), SECRET)),
    ]
}
