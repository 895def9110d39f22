//! JWT verification: every algorithm, algorithm confusion, time claims,
//! issuer and audience, tampering, garbage, size caps, the claims kept.

use std::time::Duration;

use super::*;

fn pem_config() -> AuthConfig {
    AuthConfig {
        rsa_public_keys: vec![fixture("rsa-public.pem")],
        ec_public_keys: vec![fixture("ec-public.pem")],
        ..AuthConfig::default()
    }
}

#[test]
fn hs256_grants_carry_sub_info_exp_and_topics() {
    let auth = auth(&hs_config());
    let exp = now() + 600;
    let token = sign(
        Algorithm::HS256,
        None,
        &json!({
            "sub": "alice",
            "exp": exp,
            "info": {"name": "Alice", "n": [1, 2]},
            "topics": {"subscribe": ["chat.*", "news"], "publish": ["chat.alice"]},
            "other": "ignored",
        }),
    );
    let g = auth.authenticate(Some(&token)).unwrap();
    assert_eq!(g.principal, Principal::User);
    assert_eq!(g.user.as_deref(), Some("alice"));
    assert_eq!(g.expires, Some(exp));
    let info: Value = serde_json::from_str(g.info.as_deref().unwrap()).unwrap();
    assert_eq!(info, json!({"name": "Alice", "n": [1, 2]}));
    assert!(g.can_subscribe("chat.a.b") && g.can_subscribe("news") && !g.can_subscribe("newsroom"));
    assert!(g.can_publish("chat.alice") && !g.can_publish("chat.bob") && !g.can_publish("news"));
}

#[test]
fn missing_topics_grant_nothing_and_info_may_be_any_json() {
    let auth = auth(&hs_config());
    for (topics, info) in [
        (json!(null), json!("just a string")),
        (json!({}), json!(42)),
        (json!({"subscribe": null}), json!([1])),
        (json!({"subscribe": [], "publish": []}), json!(null)),
    ] {
        let token = sign(Algorithm::HS256, None, &json!({"sub": "u", "topics": topics, "info": info}));
        let g = auth.authenticate(Some(&token)).unwrap();
        assert!(!g.can_subscribe("a") && !g.can_publish("a"), "{topics}");
        assert_eq!(
            g.info.as_deref().map(|s| serde_json::from_str::<Value>(s).unwrap()),
            Some(info).filter(|i| !i.is_null())
        );
        assert!(g.expires.is_none());
    }
    let token = sign(Algorithm::HS256, None, &json!({"sub": ""}));
    assert!(auth.authenticate(Some(&token)).unwrap().user.is_none());
}

#[test]
fn rs256_and_es256_from_pem_files() {
    let auth = auth(&pem_config());
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let g = auth.authenticate(Some(&sign(alg, None, &claims()))).unwrap();
        assert_eq!(g.user.as_deref(), Some("alice"), "{alg:?}");
        assert!(g.can_subscribe("chat.x"));
    }
    // No HS key configured: an HS256 token is refused.
    refused(&auth, &sign(Algorithm::HS256, None, &claims()), AuthError::Invalid("algorithm not allowed"));
}

#[test]
fn several_secrets_rotate() {
    let cfg = AuthConfig {
        hmac_secrets: vec!["old-secret-0123456789abcdef".into(), SECRET.into()],
        ..AuthConfig::default()
    };
    let auth = auth(&cfg);
    for secret in ["old-secret-0123456789abcdef", SECRET] {
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        auth.authenticate(Some(&sign_with(Algorithm::HS256, &key, None, &claims()))).unwrap();
    }
    let other = EncodingKey::from_secret(b"another-secret-entirely-000000").unwrap();
    refused(
        &auth,
        &sign_with(Algorithm::HS256, &other, None, &claims()),
        AuthError::Invalid("bad signature"),
    );
}

#[test]
fn the_key_pins_the_algorithm() {
    // HS secret only: RS and ES tokens are refused.
    let hs = auth(&hs_config());
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        refused(&hs, &sign(alg, None, &claims()), AuthError::Invalid("algorithm not allowed"));
    }
    // RSA key only: an ES token is refused, and so is the classic confusion:
    // HS256 "signed" with the RSA public key's PEM bytes as the secret.
    let rs = auth(&AuthConfig { rsa_public_keys: vec![fixture("rsa-public.pem")], ..AuthConfig::default() });
    refused(&rs, &sign(Algorithm::ES256, None, &claims()), AuthError::Invalid("algorithm not allowed"));
    let pem = fixture_bytes("rsa-public.pem");
    let confused = sign_with(Algorithm::HS256, &EncodingKey::from_secret(&pem).unwrap(), None, &claims());
    refused(&rs, &confused, AuthError::Invalid("algorithm not allowed"));
    // With an HS secret configured too, the confused token meets the HS
    // secret only, and fails its signature.
    let both = auth(&AuthConfig { hmac_secrets: vec![SECRET.into()], ..pem_config() });
    refused(&both, &confused, AuthError::Invalid("bad signature"));
    let ec_pem = fixture_bytes("ec-public.pem");
    let confused = sign_with(Algorithm::HS256, &EncodingKey::from_secret(&ec_pem).unwrap(), None, &claims());
    refused(&both, &confused, AuthError::Invalid("bad signature"));
}

#[test]
fn alg_none_and_other_algorithms_are_never_accepted() {
    let auth = auth(&AuthConfig { hmac_secrets: vec![SECRET.into()], ..pem_config() });
    for alg in
        ["none", "None", "NONE", "", "hs256", "HS256 ", "HS384", "HS512", "RS512", "PS256", "ES384", "EdDSA"]
    {
        let header = json!({"alg": alg, "typ": "JWT"});
        // Unsigned, and signed with the real secret: both refused.
        refused(&auth, &raw_token(&header, &claims(), None, ""), AuthError::Invalid("algorithm not allowed"));
        let signed = raw_token(&header, &claims(), Some(SECRET.as_bytes()), "");
        refused(&auth, &signed, AuthError::Invalid("algorithm not allowed"));
    }
    // HS512 signed properly by jsonwebtoken with the configured secret.
    let hs512 =
        sign_with(Algorithm::HS512, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(), None, &claims());
    refused(&auth, &hs512, AuthError::Invalid("algorithm not allowed"));
    // A header without alg, or with alg not a string.
    for header in [json!({"typ": "JWT"}), json!({"alg": 256}), json!({"alg": null}), json!(["HS256"])] {
        refused(
            &auth,
            &raw_token(&header, &claims(), Some(SECRET.as_bytes()), ""),
            AuthError::Invalid("malformed header"),
        );
    }
    // An embedded key in the header is never used.
    let header = json!({"alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}});
    let embedded = raw_token(&header, &claims(), Some(b"secret"), "");
    assert!(matches!(auth.authenticate(Some(&embedded)), Err(AuthError::Invalid(_))));
}

#[test]
fn exp_and_nbf_with_and_without_leeway() {
    let strict = auth(&AuthConfig { leeway: Duration::ZERO, ..hs_config() });
    let lenient = auth(&AuthConfig { leeway: Duration::from_secs(60), ..hs_config() });
    let expired = sign(Algorithm::HS256, None, &json!({"sub": "a", "exp": now() - 10}));
    refused(&strict, &expired, AuthError::Expired);
    lenient.authenticate(Some(&expired)).unwrap();
    let long_expired = sign(Algorithm::HS256, None, &json!({"sub": "a", "exp": now() - 120}));
    refused(&lenient, &long_expired, AuthError::Expired);
    refused(&lenient, &sign(Algorithm::HS256, None, &json!({"exp": 0})), AuthError::Expired);

    let early = sign(Algorithm::HS256, None, &json!({"sub": "a", "nbf": now() + 30}));
    refused(&strict, &early, AuthError::NotYetValid);
    lenient.authenticate(Some(&early)).unwrap();
    let much_early = sign(Algorithm::HS256, None, &json!({"sub": "a", "nbf": now() + 120}));
    refused(&lenient, &much_early, AuthError::NotYetValid);
    strict.authenticate(Some(&sign(Algorithm::HS256, None, &json!({"nbf": now() - 1})))).unwrap();

    // exp as a float is a NumericDate too; as a string it is malformed.
    let at = now() + 100;
    let float = sign(Algorithm::HS256, None, &json!({"exp": at as f64 + 0.4}));
    assert_eq!(strict.authenticate(Some(&float)).unwrap().expires, Some(at));
    let text = sign(Algorithm::HS256, None, &json!({"exp": "tomorrow"}));
    assert!(matches!(strict.authenticate(Some(&text)), Err(AuthError::Invalid(_))));
    let nbf_text = sign(Algorithm::HS256, None, &json!({"nbf": "soon"}));
    refused(&strict, &nbf_text, AuthError::Invalid("malformed claim"));
}

#[test]
fn exp_is_optional_unless_required() {
    let no_exp = sign(Algorithm::HS256, None, &json!({"sub": "a"}));
    assert_eq!(auth(&hs_config()).authenticate(Some(&no_exp)).unwrap().expires, None);
    let required = auth(&AuthConfig { require_exp: true, ..hs_config() });
    refused(&required, &no_exp, AuthError::Invalid("exp claim required"));
    required.authenticate(Some(&sign(Algorithm::HS256, None, &claims()))).unwrap();
}

#[test]
fn issuer_and_audience_when_configured() {
    let cfg = AuthConfig {
        issuer: Some("https://id.example".into()),
        audience: Some("rtgate".into()),
        ..hs_config()
    };
    let auth = self::auth(&cfg);
    let with =
        |iss: Value, aud: Value| sign(Algorithm::HS256, None, &json!({"sub": "a", "iss": iss, "aud": aud}));
    auth.authenticate(Some(&with(json!("https://id.example"), json!("rtgate")))).unwrap();
    auth.authenticate(Some(&with(json!("https://id.example"), json!(["other", "rtgate"])))).unwrap();
    refused(&auth, &with(json!("https://evil.example"), json!("rtgate")), AuthError::Invalid("wrong issuer"));
    refused(&auth, &with(json!("https://id.example"), json!("other")), AuthError::Invalid("wrong audience"));
    refused(
        &auth,
        &with(json!("https://id.example"), json!(["a", "b"])),
        AuthError::Invalid("wrong audience"),
    );
    let no_iss = sign(Algorithm::HS256, None, &json!({"aud": "rtgate"}));
    refused(&auth, &no_iss, AuthError::Invalid("iss claim required"));
    let no_aud = sign(Algorithm::HS256, None, &json!({"iss": "https://id.example"}));
    refused(&auth, &no_aud, AuthError::Invalid("aud claim required"));
    // Not configured: neither is checked.
    let open = self::auth(&hs_config());
    open.authenticate(Some(&with(json!("anyone"), json!("anything")))).unwrap();
}

#[test]
fn tampered_payload_or_signature_is_refused() {
    for (cfg, alg) in
        [(hs_config(), Algorithm::HS256), (pem_config(), Algorithm::RS256), (pem_config(), Algorithm::ES256)]
    {
        let auth = self::auth(&cfg);
        let token = sign(alg, None, &claims());
        let parts: Vec<&str> = token.split('.').collect();
        // More topics in the payload, the original signature.
        let mut more = claims();
        more["topics"]["publish"] = json!(["*"]);
        let payload = URL_SAFE_NO_PAD.encode(more.to_string());
        refused(&auth, &format!("{}.{payload}.{}", parts[0], parts[2]), AuthError::Invalid("bad signature"));
        // One signature character changed (in the middle: the last one may
        // only carry padding bits).
        let mut sig = parts[2].as_bytes().to_vec();
        let mid = sig.len() / 2;
        sig[mid] = if sig[mid] == b'A' { b'B' } else { b'A' };
        let sig = String::from_utf8(sig).unwrap();
        refused(&auth, &format!("{}.{}.{sig}", parts[0], parts[1]), AuthError::Invalid("bad signature"));
        // No signature, a signature that is not base64url.
        refused(&auth, &format!("{}.{}.", parts[0], parts[1]), AuthError::Invalid("bad signature"));
        refused(&auth, &format!("{}.{}.!!!", parts[0], parts[1]), AuthError::Invalid("malformed token"));
    }
}

#[test]
fn garbage_is_refused_without_panicking() {
    let auth = auth(&AuthConfig { api_keys: vec!["k-123456789".into()], ..hs_config() });
    let not_jwt = AuthError::Invalid("not a JWT or a known API key");
    for junk in ["a", "a.b", "a.b.c.d", "..", "...", ".b.c", "Bearer x", "\u{1F600}.\u{1F600}.\u{1F600}", " "]
    {
        refused(&auth, junk, not_jwt.clone());
    }
    for junk in ["a.b.c", "e30.e30.e30", "eyJhbGciOiJIUzI1NiJ9", "bm90IGpzb24.e30.e30", "!!!.e30.e30"] {
        assert!(matches!(auth.authenticate(Some(junk)), Err(AuthError::Invalid(_))), "{junk}");
    }
    // A valid header over a payload that is not JSON / not base64.
    let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
    for payload in ["bm90IGpzb24", "!!", ""] {
        let message = format!("{head}.{payload}");
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        assert!(matches!(auth.authenticate(Some(&format!("{message}.{sig}"))), Err(AuthError::Invalid(_))));
    }
}

#[test]
fn oversized_tokens_are_refused_before_verification() {
    let auth = auth(&hs_config());
    let padded = |n: usize| sign(Algorithm::HS256, None, &json!({"sub": "a", "pad": "x".repeat(n)}));
    // The largest padding that still fits: accepted; one more byte: refused.
    let mut n = 6000;
    while padded(n + 1).len() <= MAX_TOKEN_LEN {
        n += 1;
    }
    assert!(padded(n).len() > MAX_TOKEN_LEN - 4);
    auth.authenticate(Some(&padded(n))).unwrap();
    refused(&auth, &padded(n + 1), AuthError::Invalid("credential too long"));
    refused(&auth, &"x".repeat(1 << 20), AuthError::Invalid("credential too long"));
}

#[test]
fn invalid_or_too_many_patterns_invalidate_the_token() {
    let auth = auth(&hs_config());
    let with = |topics: Value| sign(Algorithm::HS256, None, &json!({"sub": "a", "topics": topics}));
    let bad = AuthError::Invalid("malformed header or claims");
    for topics in [
        json!({"subscribe": ["chat room"]}),
        json!({"subscribe": [""]}),
        json!({"publish": ["x".repeat(129)]}),
        json!({"publish": ["ok", 7]}),
        json!({"subscribe": "chat.*"}),
        json!({"subscribe": [["chat.*"]]}),
        json!(["chat.*"]),
        json!("chat.*"),
    ] {
        refused(&auth, &with(topics), bad.clone());
    }
    let many: Vec<String> = (0..MAX_PATTERNS).map(|i| format!("t{i}")).collect();
    let g = auth.authenticate(Some(&with(json!({"subscribe": many, "publish": many})))).unwrap();
    assert_eq!((g.subscribe.len(), g.publish.len()), (MAX_PATTERNS, MAX_PATTERNS));
    assert!(g.can_subscribe("t255") && !g.can_subscribe("t256"));
    let too_many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("t{i}")).collect();
    refused(&auth, &with(json!({"subscribe": too_many})), bad);
}
