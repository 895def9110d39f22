//! JWKS: `kid` selection (no fallback), key types pinning algorithms,
//! documents refused, rotation by reload, by the watcher and on SIGHUP.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::shutdown::Shutdown;

/// The fixture JWKS's entries: `rsa-1` and `ec-1`.
fn fixture_entries() -> (Value, Value) {
    let doc: Value = serde_json::from_slice(&fixture_bytes("jwks.json")).unwrap();
    (doc["keys"][0].clone(), doc["keys"][1].clone())
}

fn oct_entry(kid: &str) -> Value {
    json!({"kty": "oct", "kid": kid, "k": URL_SAFE_NO_PAD.encode(SECRET)})
}

/// A JWKS file of its own in the temp directory, removed on drop.
struct TempJwks(PathBuf);

impl TempJwks {
    fn new(keys: &[Value]) -> TempJwks {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rtgate-jwks-{}-{n}.json", std::process::id()));
        let file = TempJwks(path);
        file.write(keys);
        file
    }

    fn write(&self, keys: &[Value]) {
        self.write_raw(&json!({ "keys": keys }).to_string());
    }

    fn write_raw(&self, text: &str) {
        // Write then rename: a reader never sees half a file.
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }

    fn config(&self) -> AuthConfig {
        AuthConfig { jwks_file: Some(self.0.clone()), ..AuthConfig::default() }
    }
}

impl Drop for TempJwks {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rs(kid: &str) -> String {
    sign(Algorithm::RS256, Some(kid), &claims())
}

fn es(kid: &str) -> String {
    sign(Algorithm::ES256, Some(kid), &claims())
}

#[test]
fn kids_select_their_key_and_pin_its_algorithm() {
    let cfg = AuthConfig { jwks_file: Some(fixture("jwks.json")), ..hs_config() };
    let auth = auth(&cfg);
    assert_eq!(auth.authenticate(Some(&rs("rsa-1"))).unwrap().user.as_deref(), Some("alice"));
    assert_eq!(auth.authenticate(Some(&es("ec-1"))).unwrap().user.as_deref(), Some("alice"));
    refused(&auth, &rs("ec-1"), AuthError::Invalid("algorithm not allowed for this key"));
    refused(&auth, &es("rsa-1"), AuthError::Invalid("algorithm not allowed for this key"));
    // HS256 with the RSA key's PEM as the secret, naming the RSA key.
    let pem = EncodingKey::from_secret(&fixture_bytes("rsa-public.pem")).unwrap();
    let confused = sign_with(Algorithm::HS256, &pem, Some("rsa-1"), &claims());
    refused(&auth, &confused, AuthError::Invalid("algorithm not allowed for this key"));
    // An unknown kid is refused even though the configured secret would
    // verify it: no fallback.
    refused(&auth, &sign(Algorithm::HS256, Some("nope"), &claims()), AuthError::Invalid("unknown key id"));
    refused(&auth, &rs("RSA-1"), AuthError::Invalid("unknown key id"));
    // Without kid: every key of the header's algorithm (secrets and JWKS).
    auth.authenticate(Some(&sign(Algorithm::HS256, None, &claims()))).unwrap();
    auth.authenticate(Some(&sign(Algorithm::RS256, None, &claims()))).unwrap();
    auth.authenticate(Some(&sign(Algorithm::ES256, None, &claims()))).unwrap();
}

#[test]
fn without_a_jwks_file_a_kid_is_not_used() {
    let auth = auth(&hs_config());
    auth.authenticate(Some(&sign(Algorithm::HS256, Some("any"), &claims()))).unwrap();
}

#[test]
fn oct_keys_verify_hs256_and_enc_keys_are_skipped() {
    let (rsa, _) = fixture_entries();
    let mut enc = rsa.clone();
    enc["kid"] = json!("enc-1");
    enc["use"] = json!("enc");
    enc["alg"] = json!("RSA-OAEP");
    let file = TempJwks::new(&[oct_entry("h1"), enc]);
    let auth = auth(&file.config());
    auth.authenticate(Some(&sign(Algorithm::HS256, Some("h1"), &claims()))).unwrap();
    refused(&auth, &rs("enc-1"), AuthError::Invalid("unknown key id"));
    refused(&auth, &rs("h1"), AuthError::Invalid("algorithm not allowed for this key"));
}

#[test]
fn unusable_documents_are_refused_naming_no_key_material() {
    let (rsa, ec) = fixture_entries();
    let n = rsa["n"].as_str().unwrap().to_owned();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut e = rsa.clone();
        f(&mut e);
        json!({ "keys": [e] }).to_string()
    };
    let mut p384 = ec.clone();
    p384["crv"] = json!("P-384");
    let mut short_x = ec.clone();
    short_x["x"] = json!("AAAA");
    let docs = [
        with(&|e| e["alg"] = json!("ES256")),
        with(&|e| e["alg"] = json!("RS512")),
        with(&|e| e["kty"] = json!("OKP")),
        with(&|e| drop(e.as_object_mut().unwrap().remove("n"))),
        with(&|e| e["n"] = json!(format!("{n}!"))),
        with(&|e| e["n"] = json!(7)),
        json!({ "keys": [p384] }).to_string(),
        json!({ "keys": [short_x] }).to_string(),
        json!({ "keys": [rsa, rsa] }).to_string(),
        json!({ "keys": [{"kty": "oct", "k": ""}] }).to_string(),
        json!({ "keys": (0..=256).map(|i| oct_entry(&format!("k{i}"))).collect::<Vec<_>>() }).to_string(),
        json!({ "keys": n.clone() }).to_string(),
        json!([rsa]).to_string(),
        "not json".into(),
        String::new(),
    ];
    for doc in docs {
        let e = keys::parse_jwks(doc.as_bytes()).map(|s| s.len()).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, AuthError::Config(_)), "{text}");
        assert!(!text.contains(&n[..16]), "key material in {text}");
    }
    assert_eq!(keys::parse_jwks(br#"{"keys": []}"#).unwrap().len(), 0);
}

#[test]
fn rotation_by_reload_and_a_broken_file_keeps_the_keys() {
    let (rsa, ec) = fixture_entries();
    let file = TempJwks::new(std::slice::from_ref(&rsa));
    let auth = auth(&file.config());
    auth.authenticate(Some(&rs("rsa-1"))).unwrap();
    refused(&auth, &es("ec-1"), AuthError::Invalid("unknown key id"));
    // Rotate: ec-1 in, rsa-1 out.
    file.write(std::slice::from_ref(&ec));
    auth.reload().unwrap();
    auth.authenticate(Some(&es("ec-1"))).unwrap();
    refused(&auth, &rs("rsa-1"), AuthError::Invalid("unknown key id"));
    // A broken file: the reload fails, ec-1 still works.
    for broken in ["{\"keys\": [", "{\"keys\": [{\"kty\": \"RSA\"}]}", ""] {
        file.write_raw(broken);
        assert!(matches!(auth.reload(), Err(AuthError::Config(_))));
        auth.authenticate(Some(&es("ec-1"))).unwrap();
    }
    // A missing file likewise.
    std::fs::remove_file(&file.0).unwrap();
    assert!(matches!(auth.reload(), Err(AuthError::Config(m)) if m.contains("cannot read")));
    auth.authenticate(Some(&es("ec-1"))).unwrap();
    // Both.
    file.write(&[rsa, ec]);
    auth.reload().unwrap();
    auth.authenticate(Some(&rs("rsa-1"))).unwrap();
    auth.authenticate(Some(&es("ec-1"))).unwrap();
}

/// Waits (bounded) until `token` is accepted: the watcher reloads on its
/// own schedule, which no event announces.
async fn until_accepted(auth: &Auth, token: &str) {
    let wait = async {
        while auth.authenticate(Some(token)).is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait).await.expect("the new key was not picked up");
}

fn shutdown() -> Shutdown {
    Shutdown::new(CancellationToken::new(), Duration::from_secs(1))
}

#[tokio::test]
async fn the_watcher_reloads_a_changed_file() {
    let (rsa, ec) = fixture_entries();
    let file = TempJwks::new(std::slice::from_ref(&rsa));
    let cfg = AuthConfig { reload_interval: Duration::from_millis(50), ..file.config() };
    let auth = Arc::new(Auth::new(&cfg).unwrap());
    let shutdown = shutdown();
    auth.watch(&shutdown);
    file.write(std::slice::from_ref(&ec));
    until_accepted(&auth, &es("ec-1")).await;
    refused(&auth, &rs("rsa-1"), AuthError::Invalid("unknown key id"));
    // A broken file is reported and skipped; the next good one is loaded.
    file.write_raw("{");
    file.write(&[rsa, ec]);
    until_accepted(&auth, &rs("rsa-1")).await;
    tokio::time::timeout(Duration::from_secs(5), shutdown.drain()).await.unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads() {
    let (rsa, ec) = fixture_entries();
    let file = TempJwks::new(std::slice::from_ref(&rsa));
    // The interval is long: only the signal can explain a reload.
    let cfg = AuthConfig { reload_interval: Duration::from_secs(3600), ..file.config() };
    let auth = Arc::new(Auth::new(&cfg).unwrap());
    let shutdown = shutdown();
    auth.watch(&shutdown);
    file.write(std::slice::from_ref(&ec));
    let kill = std::process::Command::new("kill").arg("-HUP").arg(std::process::id().to_string()).status();
    assert!(kill.unwrap().success());
    until_accepted(&auth, &es("ec-1")).await;
    tokio::time::timeout(Duration::from_secs(5), shutdown.drain()).await.unwrap();
}
