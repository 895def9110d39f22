//! `rtgate token` through the real binary: the printed token verifies with
//! `Auth` and says what the flags said; the secret may come from the
//! configuration file.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtgate::auth::{Auth, Principal};
use rtgate::config::AuthConfig;

/// Runs `rtgate ARGS` (bounded); returns (success, stdout, stderr).
async fn rtgate(args: &[&str]) -> (bool, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_rtgate"))
        .args(args)
        .env_remove("RTGATE_CONFIG")
        .env_remove("RTGATE_AUTH__HMAC_SECRETS")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run).await.expect("rtgate token hangs").unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test]
async fn minted_tokens_verify() {
    const SECRET: &str = "cli-test-secret-0123456789abcdef";
    let (ok, out, err) = rtgate(&[
        "token",
        "--secret",
        SECRET,
        "--sub",
        "alice",
        "--subscribe",
        "chat.*",
        "--subscribe",
        "news",
        "--publish",
        "chat.*",
        "--ttl",
        "1h",
        "--info",
        r#"{"name":"Alice"}"#,
        "--iss",
        "me",
        "--aud",
        "rtgate",
    ])
    .await;
    assert!(ok, "{err}");
    let token = out.trim();
    assert_eq!(out.lines().count(), 1, "one line: {out}");

    let auth = Auth::new(&AuthConfig {
        hmac_secrets: vec![SECRET.into()],
        issuer: Some("me".into()),
        audience: Some("rtgate".into()),
        ..AuthConfig::default()
    })
    .unwrap();
    let g = auth.authenticate(Some(token)).unwrap();
    assert_eq!(g.principal, Principal::User);
    assert_eq!(g.user.as_deref(), Some("alice"));
    assert_eq!(g.info.as_deref(), Some(r#"{"name":"Alice"}"#));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let exp = g.expires.unwrap();
    assert!((now + 3600 - 60..=now + 3600).contains(&exp), "exp {exp}, now {now}");
    assert!(g.can_subscribe("chat.a.b") && g.can_subscribe("news") && !g.can_subscribe("newsroom"));
    assert!(g.can_publish("chat.x") && !g.can_publish("news"));
    // Another secret does not verify it.
    let other = Auth::new(&AuthConfig {
        hmac_secrets: vec!["another-secret-0123456789abcdef".into()],
        ..AuthConfig::default()
    });
    assert!(other.unwrap().authenticate(Some(token)).is_err());

    // No --secret: the first auth.hmac_secrets of --config; --ttl 0: no exp.
    let dir = std::env::temp_dir().join(format!("rtgate-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!("[auth]\nhmac_secrets = [\"{SECRET}\", \"second-secret-0123456789abcdef\"]\n"),
    )
    .unwrap();
    let (ok, out, err) =
        rtgate(&["token", "--config", config.to_str().unwrap(), "--sub", "bob", "--ttl", "0"]).await;
    assert!(ok, "{err}");
    let g = Auth::new(&AuthConfig { hmac_secrets: vec![SECRET.into()], ..AuthConfig::default() })
        .unwrap()
        .authenticate(Some(out.trim()))
        .unwrap();
    assert_eq!((g.user.as_deref(), g.expires), (Some("bob"), None));
    assert!(!g.can_subscribe("chat.a"), "no topics claimed, none granted");

    // Refusals: an invalid pattern, no secret anywhere. Nothing on stdout.
    let (ok, out, err) = rtgate(&["token", "--secret", SECRET, "--subscribe", "chat room"]).await;
    assert!(!ok && out.is_empty() && err.contains("pattern"), "{err}");
    std::fs::write(&config, "[auth]\n").unwrap();
    let (ok, out, err) = rtgate(&["token", "--config", config.to_str().unwrap()]).await;
    assert!(!ok && out.is_empty() && err.contains("auth.hmac_secrets"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
