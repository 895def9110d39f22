//! Unit tests of auth: patterns, API keys, error projection and the
//! helpers the JWT and JWKS tests share (fixture keys, signing).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

mod jwks;
mod jwt;

/// A fixture file of `tests/fixtures/auth/`.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

const SECRET: &str = "a-test-secret-that-is-32-bytes-long!";

/// A config with `SECRET` as the HS256 secret.
fn hs_config() -> AuthConfig {
    AuthConfig { hmac_secrets: vec![SECRET.into()], ..AuthConfig::default() }
}

fn auth(cfg: &AuthConfig) -> Auth {
    Auth::new(cfg).unwrap()
}

/// The signing key for `alg` from the fixtures (HS256: `SECRET`).
fn signing_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture_bytes("rsa-private.pem")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&fixture_bytes("ec-private.pem")).unwrap(),
        _ => EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    }
}

/// `claims` signed with `key` as `alg`, with `kid` when given.
fn sign_with(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// `claims` signed with the fixture key of `alg`.
fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    sign_with(alg, &signing_key(alg), kid, claims)
}

/// Typical claims: alice, chat.* both ways, valid for an hour.
fn claims() -> Value {
    json!({
        "sub": "alice",
        "exp": now() + 3600,
        "topics": {"subscribe": ["chat.*"], "publish": ["chat.*"]},
    })
}

/// A token built by hand: any header JSON, `claims`, and an HMAC-SHA256
/// signature with `secret` (or `signature` verbatim).
fn raw_token(header: &Value, claims: &Value, secret: Option<&[u8]>, signature: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = match secret {
        Some(s) => jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(s).unwrap(),
            Algorithm::HS256,
        )
        .unwrap(),
        None => signature.to_owned(),
    };
    format!("{message}.{sig}")
}

/// Asserts `token` is refused with `want`, and that the error says nothing
/// of the token.
#[track_caller]
fn refused(auth: &Auth, token: &str, want: AuthError) {
    let got = auth.authenticate(Some(token)).map(|g| g.principal);
    assert_eq!(got.as_ref().err(), Some(&want), "token {token:?}");
    let text = want.to_string();
    let api = ApiError::from(want);
    for shown in [text, format!("{api:?}")] {
        if token.len() >= 8 {
            assert!(!shown.contains(token), "the error shows the token: {shown}");
            for part in token.split('.').filter(|p| p.len() >= 8) {
                assert!(!shown.contains(part), "the error shows part of the token: {shown}");
            }
        }
    }
}

#[test]
fn star_matches_any_run_also_dots() {
    let p = pat("chat.*");
    assert!(p.matches("chat.a"));
    assert!(p.matches("chat.a.b"));
    assert!(p.matches("chat."));
    assert!(!p.matches("chatroom1"));
    assert!(!p.matches("chat"));
    assert!(pat("*").matches("x"));
    assert!(pat("a*b*c").matches("aXXbYYc"));
    assert!(!pat("a*b*c").matches("aXXbYY"));
    assert!(pat("exact").matches("exact"));
    assert!(!pat("exact").matches("exact2"));
}

#[test]
fn pattern_edge_cases() {
    for (p, t, want) in [
        ("*", "a.b.c", true),
        ("**", "a", true),
        ("*.*", "a.b", true),
        ("*.*", "ab", false),
        ("*chat", "groupchat", true),
        ("*chat", "chatx", false),
        ("chat*", "chat", true),
        ("a*a", "a", false),
        ("a*a", "aa", true),
        ("user:*:inbox", "user:42:inbox", true),
        ("user:*:inbox", "user:42:outbox", false),
        ("Chat.*", "chat.a", false),
        ("a.b", "a.b.c", false),
        ("a.b", "a", false),
        ("x@y-z_1", "x@y-z_1", true),
    ] {
        assert_eq!(pat(p).matches(t), want, "{p} vs {t}");
    }
    // Backtracking stays linear-ish: no blow-up on a hostile pattern.
    let hostile = format!("{}b", "a*".repeat(60));
    let topic = "a".repeat(128);
    let started = tokio::time::Instant::now();
    assert!(!pat(&hostile).matches(&topic));
    assert!(started.elapsed() < std::time::Duration::from_millis(100));
}

#[test]
fn pattern_parse_checks_the_alphabet_and_length() {
    for ok in ["*", "chat.*", "a", "A-Z_09.:@*-", &"x".repeat(128), &"*".repeat(128)] {
        assert_eq!(Pattern::parse(ok).unwrap().as_str(), ok);
    }
    for bad in ["", "chat room", "chat/*", "chät", "a\n", "#", "?", &"x".repeat(129), "chat.*\0"] {
        assert_eq!(Pattern::parse(bad), Err(PatternError), "{bad:?}");
    }
}

#[test]
fn auth_off_grants_everything_whatever_is_sent() {
    let auth = auth(&AuthConfig::default());
    assert!(!auth.enabled());
    for bearer in [None, Some(""), Some("garbage"), Some("a.b.c")] {
        let g = auth.authenticate(bearer).unwrap();
        assert_eq!(g.principal, Principal::Anonymous);
        assert!(g.can_subscribe("any") && g.can_publish("any"));
    }
    auth.operator(None).unwrap();
}

#[test]
fn missing_and_empty_credentials() {
    let auth = auth(&hs_config());
    assert!(auth.enabled());
    assert_eq!(auth.authenticate(None).unwrap_err(), AuthError::Missing);
    assert_eq!(auth.authenticate(Some("")).unwrap_err(), AuthError::Missing);
    assert_eq!(auth.operator(None).unwrap_err(), AuthError::Missing);
}

#[test]
fn api_keys_right_wrong_and_near_misses() {
    let cfg = AuthConfig {
        api_keys: vec!["key-one-0123456789".into(), "key-two-abcdefghij".into()],
        ..AuthConfig::default()
    };
    let auth = auth(&cfg);
    assert!(auth.enabled());
    for key in ["key-one-0123456789", "key-two-abcdefghij"] {
        let g = auth.authenticate(Some(key)).unwrap();
        assert_eq!(g.principal, Principal::ApiKey);
        assert!(g.can_subscribe("anything") && g.can_publish("any.thing"));
        assert!(g.user.is_none() && g.expires.is_none());
        auth.operator(Some(key)).unwrap();
    }
    for near in [
        "key-one-012345678",   // one short
        "key-one-01234567890", // one long
        "key-one-0123456788",  // last byte
        "Key-one-0123456789",  // first byte
        "KEY-ONE-0123456789",  // case
        "key-one-0123456789 ", // trailing space
        "key-one-0123456789key-two-abcdefghij",
        "x",
    ] {
        refused(&auth, near, AuthError::Invalid("not a JWT or a known API key"));
        assert_eq!(
            auth.operator(Some(near)).unwrap_err(),
            AuthError::Invalid("not a JWT or a known API key")
        );
    }
}

#[test]
fn operator_endpoints_take_api_keys_only() {
    let cfg = AuthConfig { api_keys: vec!["ops-key-123456".into()], ..hs_config() };
    let auth = auth(&cfg);
    let token = sign(Algorithm::HS256, None, &claims());
    assert_eq!(auth.authenticate(Some(&token)).unwrap().principal, Principal::User);
    assert_eq!(auth.operator(Some(&token)).unwrap_err(), AuthError::NotOperator);
    auth.operator(Some("ops-key-123456")).unwrap();
}

#[test]
fn errors_project_onto_the_contract_codes() {
    for (e, code) in [
        (AuthError::Missing, Code::Unauthenticated),
        (AuthError::Invalid("bad signature"), Code::Unauthenticated),
        (AuthError::Expired, Code::Unauthenticated),
        (AuthError::NotYetValid, Code::Unauthenticated),
        (AuthError::Config("x".into()), Code::Unauthenticated),
        (AuthError::Mint("x".into()), Code::Unauthenticated),
        (AuthError::NotOperator, Code::Forbidden),
    ] {
        assert_eq!(ApiError::from(e).code, code);
    }
}

#[test]
fn unusable_key_sources_fail_at_start() {
    let bad = |cfg: AuthConfig| Auth::new(&cfg).unwrap_err();
    assert!(matches!(bad(AuthConfig { hmac_secrets: vec![String::new()], ..AuthConfig::default() }),
        AuthError::Config(m) if m.contains("auth.hmac_secrets")));
    let missing = fixture("no-such.pem");
    assert!(matches!(bad(AuthConfig { rsa_public_keys: vec![missing], ..AuthConfig::default() }),
        AuthError::Config(m) if m.contains("auth.rsa_public_keys") && m.contains("no-such.pem")));
    // An EC key given as RSA, an RSA key as EC, a private key, JSON as PEM.
    for (rsa, ec) in [
        (vec![fixture("ec-public.pem")], vec![]),
        (vec![], vec![fixture("rsa-public.pem")]),
        (vec![], vec![fixture("ec-private.pem")]),
        (vec![fixture("jwks.json")], vec![]),
    ] {
        let e = bad(AuthConfig { rsa_public_keys: rsa, ec_public_keys: ec, ..AuthConfig::default() });
        assert!(matches!(&e, AuthError::Config(m) if m.contains("PEM")), "{e}");
    }
    let e = bad(AuthConfig { jwks_file: Some(fixture("rsa-public.pem")), ..AuthConfig::default() });
    assert!(matches!(&e, AuthError::Config(m) if m.contains("auth.jwks_file") && !m.contains("MII")), "{e}");
}

#[test]
fn mint_checks_patterns_and_secret() {
    let spec = TokenSpec { subscribe: vec!["chat room".into()], ..TokenSpec::default() };
    assert!(matches!(mint(SECRET.as_bytes(), &spec), Err(AuthError::Mint(_))));
    assert!(matches!(mint(b"", &TokenSpec::default()), Err(AuthError::Mint(_))));
    let token = mint(SECRET.as_bytes(), &TokenSpec::default()).unwrap();
    let g = auth(&hs_config()).authenticate(Some(&token)).unwrap();
    assert_eq!(g.principal, Principal::User);
    assert!(g.expires.is_none() && g.user.is_none() && g.info.is_none());
    assert!(!g.can_subscribe("chat.a") && !g.can_publish("chat.a"));
}

fn pat(s: &str) -> Pattern {
    Pattern::parse(s).unwrap()
}
