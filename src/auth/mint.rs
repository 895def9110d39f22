//! Minting HS256 tokens for trying rtgate out (`rtgate token`) and for
//! tests. Production tokens come from your own auth service.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use super::{AuthError, Pattern};

/// What a minted token says.
#[derive(Clone, Debug, Default)]
pub struct TokenSpec {
    /// `sub`: the user id.
    pub sub: Option<String>,
    /// `topics.subscribe` patterns.
    pub subscribe: Vec<String>,
    /// `topics.publish` patterns.
    pub publish: Vec<String>,
    /// `exp` this long after now; `None`: no `exp` (never expires).
    pub ttl: Option<Duration>,
    /// `info`: what presence shows (usually an object).
    pub info: Option<serde_json::Value>,
    /// `iss`.
    pub issuer: Option<String>,
    /// `aud`.
    pub audience: Option<String>,
}

#[derive(Serialize)]
struct Topics<'a> {
    subscribe: &'a [String],
    publish: &'a [String],
}

#[derive(Serialize)]
struct Claims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a serde_json::Value>,
    topics: Topics<'a>,
}

/// An HS256 token signed with `secret` saying what `spec` says. Patterns
/// are checked as the gateway checks them.
pub fn mint(secret: &[u8], spec: &TokenSpec) -> Result<String, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Mint("the secret is empty".into()));
    }
    let key = EncodingKey::from_secret(secret).map_err(|_| AuthError::Mint("unusable secret".into()))?;
    sign(&Header::new(jsonwebtoken::Algorithm::HS256), &key, spec)
}

/// A token signed with a PEM private key: RS256 for an RSA key, ES256 for
/// an EC P-256 key; `kid` names the key in a JWKS.
pub fn mint_pem(pem: &[u8], kid: Option<&str>, spec: &TokenSpec) -> Result<String, AuthError> {
    use jsonwebtoken::Algorithm;
    let (alg, key) = match EncodingKey::from_ec_pem(pem) {
        Ok(key) => (Algorithm::ES256, key),
        Err(_) => match EncodingKey::from_rsa_pem(pem) {
            Ok(key) => (Algorithm::RS256, key),
            Err(_) => {
                return Err(AuthError::Mint(
                    "the key is neither an EC P-256 nor an RSA private key (PEM)".into(),
                ))
            }
        },
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    sign(&header, &key, spec)
}

fn sign(header: &Header, key: &EncodingKey, spec: &TokenSpec) -> Result<String, AuthError> {
    for p in spec.subscribe.iter().chain(&spec.publish) {
        Pattern::parse(p).map_err(|e| AuthError::Mint(format!("{p:?}: {e}")))?;
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = Claims {
        sub: spec.sub.as_deref(),
        iat: now,
        exp: spec.ttl.map(|ttl| now.saturating_add(ttl.as_secs())),
        iss: spec.issuer.as_deref(),
        aud: spec.audience.as_deref(),
        info: spec.info.as_ref(),
        topics: Topics { subscribe: &spec.subscribe, publish: &spec.publish },
    };
    jsonwebtoken::encode(header, &claims, key).map_err(|e| AuthError::Mint(format!("cannot sign: {e}")))
}
