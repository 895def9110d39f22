//! Who a client is and what it may do (contract §8): JWT verification
//! (HS256, RS256, ES256; keys from secrets, PEM files or a JWKS file that
//! is reloaded), API keys, and the [`Grants`] a credential carries.
//!
//! [`Auth::authenticate`] turns the bearer credential of a request (or
//! `None`) into [`Grants`]; transports check topics against them at
//! subscribe and publish. While auth is off every request gets
//! [`Grants::anonymous`], which allows everything. `docs/auth.md` describes
//! what operators and clients see.
//!
//! Every key is parsed once and pinned to one algorithm (`keys`); a token
//! is checked against the keys its header selects (`jwt`); the JWKS key
//! set is swapped whole on reload (`reload`). [`mint`] makes HS256 tokens
//! for trying things out.
//!
//! Nothing here logs or returns a token: errors name what was wrong, never
//! the credential.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Validation;
use subtle::{Choice, ConstantTimeEq};
use thiserror::Error;

use crate::config::AuthConfig;
use crate::error::{ApiError, Code};

mod jwt;
mod keys;
mod mint;
mod reload;

pub use jwt::{MAX_PATTERNS, MAX_TOKEN_LEN};
pub use mint::{mint, mint_pem, TokenSpec};

/// Why a credential was refused. The messages never contain the token.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credential while auth is on.
    #[error("a token is required")]
    Missing,
    /// Not a JWT, a bad signature, a wrong algorithm, an unknown key, bad claims.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// A valid credential that may not use this endpoint (an operator
    /// endpoint with a user token).
    #[error("an API key is required")]
    NotOperator,
    /// A key source in the configuration cannot be used (startup and reloads).
    #[error("auth key configuration: {0}")]
    Config(String),
    /// [`mint`] cannot make the token asked for.
    #[error("cannot mint a token: {0}")]
    Mint(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = if e == AuthError::NotOperator { Code::Forbidden } else { Code::Unauthenticated };
        ApiError::new(code, e.to_string())
    }
}

/// What kind of credential a client presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Auth is off.
    Anonymous,
    /// A configured API key: everything.
    ApiKey,
    /// A JWT: its `topics` claim.
    User,
}

pub use crate::core::pattern::{Pattern, PatternError};

/// What a credential allows, and until when.
#[derive(Clone, Debug)]
pub struct Grants {
    /// The kind of credential.
    pub principal: Principal,
    /// The user id (`sub`), for tokens that have one.
    pub user: Option<Arc<str>>,
    /// The token's `info` claim (JSON text), shown by presence.
    pub info: Option<Arc<str>>,
    /// `exp`, Unix seconds.
    pub expires: Option<u64>,
    /// `topics.subscribe`.
    pub subscribe: Vec<Pattern>,
    /// `topics.publish`.
    pub publish: Vec<Pattern>,
}

impl Grants {
    /// Everything, no identity: auth is off.
    pub fn anonymous() -> Grants {
        Grants {
            principal: Principal::Anonymous,
            user: None,
            info: None,
            expires: None,
            subscribe: Vec::new(),
            publish: Vec::new(),
        }
    }

    /// Everything, as an API key.
    pub fn api_key() -> Grants {
        Grants { principal: Principal::ApiKey, ..Grants::anonymous() }
    }

    /// Whether these grants may subscribe to `topic`.
    pub fn can_subscribe(&self, topic: &str) -> bool {
        self.principal != Principal::User || self.subscribe.iter().any(|p| p.matches(topic))
    }

    /// Whether these grants may publish to `topic`.
    pub fn can_publish(&self, topic: &str) -> bool {
        self.principal != Principal::User || self.publish.iter().any(|p| p.matches(topic))
    }
}

/// The configured credentials: keys (the JWKS ones reloadable) and API keys.
pub struct Auth {
    enabled: bool,
    /// `auth.api_keys`, as bytes.
    api_keys: Vec<Box<[u8]>>,
    /// Secrets and PEM keys of the configuration (read once).
    configured: keys::KeySet,
    /// The JWKS file, when configured.
    jwks: Option<reload::Jwks>,
    /// One per algorithm, in `Alg::index` order.
    validations: [Validation; 3],
    reload_interval: Duration,
    /// Shared by every API-key request (no allocation per request).
    api_grants: Arc<Grants>,
    anonymous: Arc<Grants>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("api_keys", &self.api_keys.len())
            .field("configured", &self.configured)
            .field("jwks", &self.jwks)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Loads every key source of `cfg` (secrets, PEM files, the JWKS file);
    /// an unusable one is an error.
    pub fn new(cfg: &AuthConfig) -> Result<Auth, AuthError> {
        let configured = keys::configured(cfg)?;
        if cfg.hmac_secrets.iter().any(|s| s.len() < 32) {
            tracing::warn!("an auth.hmac_secrets entry is shorter than 32 bytes; use long random secrets");
        }
        let jwks = cfg.jwks_file.as_deref().map(reload::Jwks::load).transpose()?;
        Ok(Auth {
            enabled: cfg.enabled(),
            api_keys: cfg.api_keys.iter().map(|k| k.as_bytes().into()).collect(),
            configured,
            jwks,
            validations: jwt::validations(cfg),
            reload_interval: cfg.reload_interval,
            api_grants: Arc::new(Grants::api_key()),
            anonymous: Arc::new(Grants::anonymous()),
        })
    }

    /// True when credentials are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The grants of a request's bearer credential (an API key or a JWT).
    /// While auth is off: [`Grants::anonymous`], whatever was sent. An empty
    /// credential counts as none.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Arc<Grants>, AuthError> {
        if !self.enabled {
            return Ok(Arc::clone(&self.anonymous));
        }
        let credential = match bearer {
            None | Some("") => return Err(AuthError::Missing),
            Some(c) => c,
        };
        if credential.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Invalid("credential too long"));
        }
        if self.is_api_key(credential) {
            return Ok(Arc::clone(&self.api_grants));
        }
        self.verify_jwt(credential).map(Arc::new)
    }

    /// Checks a credential for an operator endpoint: only API keys (any
    /// request while auth is off).
    pub fn operator(&self, bearer: Option<&str>) -> Result<(), AuthError> {
        match self.authenticate(bearer)?.principal {
            Principal::User => Err(AuthError::NotOperator),
            _ => Ok(()),
        }
    }

    /// Compares `credential` with every configured API key in constant
    /// time (per key of its length), without stopping at a match.
    fn is_api_key(&self, credential: &str) -> bool {
        let given = credential.as_bytes();
        let mut found = Choice::from(0);
        for key in &self.api_keys {
            found |= key.as_ref().ct_eq(given);
        }
        found.into()
    }

    /// Verifies a JWT. With a `kid` and a JWKS file, the JWKS key of that
    /// `kid` only; otherwise every key of the header's algorithm (the
    /// configured ones, then the JWKS ones) until one verifies the
    /// signature.
    fn verify_jwt(&self, token: &str) -> Result<Grants, AuthError> {
        let json = jwt::header_json(token).ok_or(AuthError::Invalid("not a JWT or a known API key"))?;
        let header = jwt::header(&json)?;
        let alg = header.alg.ok_or(AuthError::Invalid("algorithm not allowed"))?;
        let validation = &self.validations[alg.index()];
        let jwks = self.jwks.as_ref().map(reload::Jwks::current);
        if let (Some(kid), Some(set)) = (&header.kid, &jwks) {
            let key = set.kid(kid).ok_or(AuthError::Invalid("unknown key id"))?;
            if key.alg != alg {
                return Err(AuthError::Invalid("algorithm not allowed for this key"));
            }
            return jwt::verify(token, key, validation).map_err(|r| match r {
                jwt::Refused::Signature => AuthError::Invalid("bad signature"),
                jwt::Refused::Final(e) => e,
            });
        }
        let from_jwks = jwks.as_deref().map(|set| set.of_alg(alg)).unwrap_or_default();
        let mut candidates = self.configured.of_alg(alg).iter().chain(from_jwks).peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::Invalid("algorithm not allowed"));
        }
        for key in candidates {
            match jwt::verify(token, key, validation) {
                Ok(grants) => return Ok(grants),
                Err(jwt::Refused::Signature) => continue,
                Err(jwt::Refused::Final(e)) => return Err(e),
            }
        }
        Err(AuthError::Invalid("bad signature"))
    }
}

#[cfg(test)]
mod tests;
