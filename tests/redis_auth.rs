//! The Redis engine's connection options through the URL: a password
//! (`redis://:secret@host/`) and TLS (`rediss://`, trusting a private CA via
//! `SSL_CERT_FILE`). Real `redis-server`s, the real binary for TLS.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed on drop.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(args: &[&str]) -> Kill {
    let ok = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok();
    assert!(ok, "redis-server not found: apt-get install -y redis-server (scripts/test does this)");
    Kill(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Polls `url` until it answers `status` (bounded).
async fn wait_status(http: &reqwest::Client, url: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().as_u16() == status {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn password_in_the_url() {
    let port = free_port();
    let _redis = redis(&["--port", &port.to_string(), "--requirepass", "s3cret"]);
    let good = TestServer::start(&format!(
        "[engine]\nkind = \"redis\"\n[redis]\nurl = \"redis://:s3cret@127.0.0.1:{port}/\"\nop_timeout = \"500ms\"\n"
    ))
    .await;
    wait_status(&good.http, &good.url("/readyz"), 200).await;
    let id = good.publish("auth", r#"{"ok":true}"#).await;
    let (status, history) = good.get("/v1/history/auth").await;
    assert_eq!(status, 200);
    assert_eq!(history["messages"][0]["id"], id.as_str());

    let bad = TestServer::start(&format!(
        "[engine]\nkind = \"redis\"\n[redis]\nurl = \"redis://:wrong@127.0.0.1:{port}/\"\nop_timeout = \"500ms\"\n"
    ))
    .await;
    let (status, body) = bad.publish_raw("auth", "1", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(bad.get("/readyz").await.0, 503);
    good.stop().await;
    bad.stop().await;
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let ok = Command::new("openssl").arg("version").stdout(Stdio::null()).status().is_ok();
    assert!(ok, "openssl not found: apt-get install -y openssl (scripts/test does this)");
    let dir = std::env::temp_dir().join(format!("rtgate-tls-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    // A private CA and a server certificate it signed (webpki rejects a
    // self-signed CA certificate used as the server's own).
    let (ca, ca_key, csr, cert, key, ext) = (
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join("req.csr"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ext.cnf"),
    );
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        let ok =
            Command::new("openssl").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        assert!(ok.success(), "openssl {args:?} failed");
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    openssl(&[
        os("req"),
        os("-x509"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-days"),
        os("1"),
        os("-subj"),
        os("/CN=rtgate-test-ca"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    openssl(&[
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-subj"),
        os("/CN=127.0.0.1"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        csr.as_os_str(),
    ]);
    openssl(&[
        os("x509"),
        os("-req"),
        os("-in"),
        csr.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-days"),
        os("1"),
        os("-out"),
        cert.as_os_str(),
        os("-extfile"),
        ext.as_os_str(),
    ]);
    let tls_port = free_port();
    let _redis = redis(&[
        "--port",
        "0",
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    let gw_port = free_port();
    let _gateway = Kill(
        Command::new(env!("CARGO_BIN_EXE_rtgate"))
            .args(["--listen", &format!("127.0.0.1:{gw_port}")])
            .env("RTGATE_ENGINE__KIND", "redis")
            .env("RTGATE_REDIS__URL", format!("rediss://127.0.0.1:{tls_port}/"))
            .env("SSL_CERT_FILE", &ca)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{gw_port}");
    wait_status(&http, &format!("{base}/readyz"), 200).await;
    let mut ws = WsClient::connect(&format!("ws://127.0.0.1:{gw_port}/v1/ws?topic=tls")).await;
    let res = http.post(format!("{base}/v1/publish/tls")).body("\"over tls\"").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let id = res.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let m = ws.next_op("message").await;
    assert_eq!((m["id"].as_str().unwrap(), m["data"].as_str().unwrap()), (id.as_str(), "over tls"));
    let _ = std::fs::remove_dir_all(&dir);
}
