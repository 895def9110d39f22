//! Key types through the real server: RS256 and ES256 from a JWKS file
//! whose `kid`s select the key, rotation of that file without a restart,
//! and algorithm confusion (an HS256 token "signed" with the RSA public
//! key as its secret, an RS token against a server that only has a secret).

use std::path::PathBuf;
use std::time::Duration;

use rtgate::auth::{mint, mint_pem, TokenSpec};
use serde_json::Value;

use crate::support::{TestServer, WAIT};
use crate::{now, SECRET};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn spec() -> TokenSpec {
    TokenSpec {
        sub: Some("kim".into()),
        subscribe: vec!["k.*".into()],
        publish: vec!["k.*".into()],
        ttl: Some(Duration::from_secs(600)),
        info: None,
        issuer: None,
        audience: None,
    }
}

fn signed(key: &str, kid: Option<&str>) -> String {
    mint_pem(&std::fs::read(fixture(key)).unwrap(), kid, &spec()).unwrap()
}

/// Status of a history read with `token`.
async fn status(s: &TestServer, token: &str) -> u16 {
    let res = s.http.get(s.url("/v1/history/k.a")).bearer_auth(token).send().await.unwrap();
    res.status().as_u16()
}

#[tokio::test]
async fn jwks_keys_are_selected_by_kid_and_rotate_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("rtgate-jwks-{}-{}", std::process::id(), now()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    let all: Value = serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    std::fs::write(&jwks, all.to_string()).unwrap();
    let s = TestServer::start(&format!(
        "[auth]\njwks_file = {:?}\nreload_interval = \"100ms\"\nleeway = \"0s\"\n",
        jwks.to_str().unwrap()
    ))
    .await;
    let rs = signed("rsa-private.pem", Some("rsa-1"));
    let es = signed("ec-private.pem", Some("ec-1"));
    assert_eq!(status(&s, &rs).await, 200, "RS256 by kid");
    assert_eq!(status(&s, &es).await, 200, "ES256 by kid");
    assert_eq!(
        status(&s, &signed("ec-private.pem", Some("rsa-1"))).await,
        401,
        "an EC token under the RSA kid"
    );
    assert_eq!(status(&s, &signed("rsa-private.pem", Some("nope"))).await, 401, "an unknown kid");
    // An HS256 token whose "secret" is the RSA public key, the classic confusion.
    let confused = mint(&std::fs::read(fixture("rsa-public.pem")).unwrap(), &spec()).unwrap();
    assert_eq!(status(&s, &confused).await, 401, "HS256 with the public key as secret");

    // Rotate: only the EC key remains. The RSA token stops working, no restart.
    let keys: Vec<Value> =
        all["keys"].as_array().unwrap().iter().filter(|k| k["kid"] == "ec-1").cloned().collect();
    std::fs::write(&jwks, serde_json::json!({ "keys": keys }).to_string()).unwrap();
    tokio::time::timeout(WAIT, async {
        while status(&s, &rs).await != 401 {
            tokio::time::sleep(Duration::from_millis(50)).await; // polling for the reload, bounded
        }
    })
    .await
    .expect("the removed key was still accepted");
    assert_eq!(status(&s, &es).await, 200, "the remaining key still verifies");
    // A broken file is refused (counted) and keeps the keys that were there.
    let errors = || async {
        let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with("rtgate_jwks_reloads_total{outcome=\"error\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = errors().await;
    std::fs::write(&jwks, "{not json").unwrap();
    tokio::time::timeout(WAIT, async {
        while errors().await <= before {
            tokio::time::sleep(Duration::from_millis(50)).await; // polling for the reload, bounded
        }
    })
    .await
    .expect("the broken file was never tried");
    assert_eq!(status(&s, &es).await, 200, "a broken JWKS file keeps the old keys");
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_server_with_only_a_secret_refuses_rs_and_es_tokens() {
    let s = TestServer::start(&format!("[auth]\nhmac_secrets = [{SECRET:?}]\n")).await;
    assert_eq!(status(&s, &mint(SECRET.as_bytes(), &spec()).unwrap()).await, 200);
    assert_eq!(status(&s, &signed("rsa-private.pem", None)).await, 401);
    assert_eq!(status(&s, &signed("ec-private.pem", None)).await, 401);
    s.stop().await;
}

#[tokio::test]
async fn issuer_and_audience_are_required_when_configured() {
    let s = TestServer::start(&format!(
        "[auth]\nhmac_secrets = [{SECRET:?}]\nissuer = \"https://idp.example\"\naudience = \"rtgate\"\n"
    ))
    .await;
    let with = |iss: Option<&str>, aud: Option<&str>| {
        let spec = TokenSpec { issuer: iss.map(Into::into), audience: aud.map(Into::into), ..spec() };
        mint(SECRET.as_bytes(), &spec).unwrap()
    };
    assert_eq!(status(&s, &with(Some("https://idp.example"), Some("rtgate"))).await, 200);
    assert_eq!(status(&s, &with(Some("https://evil.example"), Some("rtgate"))).await, 401, "wrong iss");
    assert_eq!(status(&s, &with(Some("https://idp.example"), Some("other"))).await, 401, "wrong aud");
    assert_eq!(status(&s, &with(None, Some("rtgate"))).await, 401, "no iss");
    assert_eq!(status(&s, &with(Some("https://idp.example"), None)).await, 401, "no aud");
    s.stop().await;
}
