//! JWT verification against one key: the header read before any crypto
//! (to pick keys), the claims we keep, and `jsonwebtoken`'s errors mapped
//! onto [`AuthError`] (never carrying the token).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::keys::{Alg, Key};
use super::{AuthError, Grants, Pattern, Principal};
use crate::config::AuthConfig;

/// Longest credential considered (bytes); longer ones are refused before
/// any parsing or crypto.
pub const MAX_TOKEN_LEN: usize = crate::config::MAX_CREDENTIAL_LEN;
/// Most patterns in each of `topics.subscribe` and `topics.publish`.
pub const MAX_PATTERNS: usize = 256;

/// What the header says, read without verification: which keys to try.
pub(crate) struct Header<'a> {
    /// The `alg`, when it is one rtgate accepts.
    pub(crate) alg: Option<Alg>,
    /// The `kid`.
    pub(crate) kid: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
}

/// The decoded header part of a token shaped `header.payload.signature`;
/// `None` when it is not a JWT.
pub(crate) fn header_json(token: &str) -> Option<Vec<u8>> {
    let mut parts = token.split('.');
    let (head, _payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || head.is_empty() {
        return None;
    }
    URL_SAFE_NO_PAD.decode(head).ok()
}

/// Reads `alg` and `kid` from a decoded header.
pub(crate) fn header(json: &[u8]) -> Result<Header<'_>, AuthError> {
    // An object only (serde would also read a struct from an array).
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(AuthError::Invalid("malformed header"));
    }
    let raw: RawHeader<'_> =
        serde_json::from_slice(json).map_err(|_| AuthError::Invalid("malformed header"))?;
    Ok(Header { alg: Alg::from_name(&raw.alg), kid: raw.kid })
}

/// One `Validation` per algorithm, built once: the algorithm pinned,
/// `exp` (required when `auth.require_exp`) and `nbf` checked with the
/// leeway, `iss` and `aud` required when configured.
pub(crate) fn validations(cfg: &AuthConfig) -> [Validation; 3] {
    Alg::ALL.map(|alg| {
        let mut v = Validation::new(alg.jwt());
        v.leeway = cfg.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        if cfg.require_exp {
            v.required_spec_claims.insert("exp".into());
        }
        if let Some(iss) = &cfg.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        match &cfg.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".into());
            }
            // Without a configured audience, a token's `aud` is not checked.
            None => v.validate_aud = false,
        }
        v
    })
}

/// Why one key did not accept a token.
pub(crate) enum Refused {
    /// The signature does not verify with this key: another may.
    Signature,
    /// The signature verified (or the token is malformed): final.
    Final(AuthError),
}

/// Verifies `token` with `key` and turns its claims into grants.
pub(crate) fn verify(token: &str, key: &Key, validation: &Validation) -> Result<Grants, Refused> {
    let data =
        jsonwebtoken::decode::<Claims>(token, &key.decoding, validation).map_err(|e| refused(e.kind()))?;
    Ok(data.claims.into_grants())
}

fn refused(kind: &ErrorKind) -> Refused {
    Refused::Final(match kind {
        ErrorKind::InvalidSignature => return Refused::Signature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
        ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(match c.as_str() {
            "exp" => "exp claim required",
            "iss" => "iss claim required",
            "aud" => "aud claim required",
            _ => "a required claim is missing",
        }),
        ErrorKind::InvalidClaimFormat(_) => AuthError::Invalid("malformed claim"),
        ErrorKind::Json(_) => AuthError::Invalid("malformed header or claims"),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::Invalid("algorithm not allowed")
        }
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
            AuthError::Invalid("malformed token")
        }
        _ => AuthError::Invalid("cannot verify"),
    })
}

/// The claims rtgate reads; others are ignored. `exp`, `nbf`, `iss` and
/// `aud` are checked by `jsonwebtoken`.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    topics: Option<Topics>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Topics {
    subscribe: Patterns,
    publish: Patterns,
}

impl Claims {
    fn into_grants(self) -> Grants {
        let topics = self.topics.unwrap_or_default();
        Grants {
            principal: Principal::User,
            user: self.sub.filter(|s| !s.is_empty()).map(Arc::from),
            info: self.info.filter(|raw| raw.get() != "null").map(|raw| Arc::from(raw.get())),
            expires: self.exp,
            subscribe: topics.subscribe.0,
            publish: topics.publish.0,
        }
    }
}

/// A NumericDate: an integer or a (rounded) non-negative finite number, as
/// `jsonwebtoken` reads it.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else { return Ok(None) };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f.round() as u64)),
        _ => Err(de::Error::custom("exp is not a NumericDate")),
    }
}

/// A list of at most [`MAX_PATTERNS`] valid patterns (`null` = none).
#[derive(Default)]
struct Patterns(Vec<Pattern>);

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Patterns;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of at most {MAX_PATTERNS} topic patterns")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Patterns, E> {
                Ok(Patterns::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Patterns, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PATTERNS));
                while let Some(s) = seq.next_element::<String>()? {
                    if out.len() == MAX_PATTERNS {
                        return Err(de::Error::custom("too many patterns"));
                    }
                    out.push(Pattern::parse(&s).map_err(|_| de::Error::custom("invalid pattern"))?);
                }
                Ok(Patterns(out))
            }
        }
        d.deserialize_any(List)
    }
}
