//! Native TLS termination (`[tls]`, issue 12) with real clients that
//! trust only a private CA made at test time (rcgen): HTTPS publish and
//! history over HTTP/1.1 and over HTTP/2 chosen by ALPN, SSE and long
//! polling over https, `wss://`, gRPC over TLS; a plain-HTTP client is not
//! served; silent and stalled handshakes are closed after
//! `http.handshake_timeout`; a killed HTTP/1.1 stream over TLS drops its
//! connection; a new certificate (from another CA) is picked up without a
//! restart while an open `wss://` connection keeps receiving.
//!
//! The metrics recorder is per process: the TLS reload and slow-consumer
//! counters read here are moved by one test each in this binary.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::{PublishRequest, SubscribeRequest};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::Connector;

use support::metrics::{scrape, Metrics};
use support::sse::{sse_path, Sse};
use support::{TestServer, WsClient, WAIT};

// ------------------------------------------------------------- PKI, files

/// A private certificate authority.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A server certificate for `localhost` and `127.0.0.1`: (PEM chain, PEM key).
    fn leaf(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "rtgate test server");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A rustls client configuration trusting only this CA.
    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// An HTTPS client trusting only this CA (HTTP/2 when ALPN picks it).
    fn https(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
    }
}

/// The server's certificate and key files, in a directory removed on drop.
struct Files(PathBuf);

impl Files {
    fn new() -> Files {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rtgate-tls-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Files(dir)
    }

    fn cert(&self) -> PathBuf {
        self.0.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.0.join("key.pem")
    }

    /// Writes a (chain, key) pair: the key first, then the chain.
    fn write(&self, (cert, key): &(String, String)) {
        std::fs::write(self.key(), key).unwrap();
        std::fs::write(self.cert(), cert).unwrap();
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server on `files` with `rest` (more TOML, before `[tls]`) and `tls`
/// (more keys of `[tls]`).
async fn start(files: &Files, rest: &str, tls: &str) -> TestServer {
    let toml = format!(
        "{rest}\n[tls]\ncert_file = '{}'\nkey_file = '{}'\n{tls}\n",
        files.cert().display(),
        files.key().display()
    );
    TestServer::start(&toml).await
}

/// A TLS server with a fresh CA; `rest` as in [`start`].
async fn tls_server(rest: &str) -> (TestServer, Ca, Files) {
    let ca = Ca::new("rtgate test CA");
    let files = Files::new();
    files.write(&ca.leaf());
    let s = start(&files, rest, "").await;
    (s, ca, files)
}

fn url(s: &TestServer, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", s.addr.port())
}

async fn send(req: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
    tokio::time::timeout(WAIT, req.send()).await.expect("request timed out")
}

/// Publishes `body` to `topic` over `http`; returns the id and the HTTP version used.
async fn publish(
    http: &reqwest::Client,
    s: &TestServer,
    topic: &str,
    body: &str,
) -> (String, reqwest::Version) {
    let res = send(http.post(url(s, &format!("/v1/publish/{topic}"))).body(body.to_owned())).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let version = res.version();
    let v: Value = res.json().await.unwrap();
    (v["id"].as_str().expect("id").to_owned(), version)
}

/// A `wss://` client trusting only `ca`.
async fn wss(s: &TestServer, ca: &Ca) -> WsClient {
    let connector = Connector::Rustls(ca.client_config(&[]));
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_tls_with_config(
            format!("wss://127.0.0.1:{}/v1/ws", s.addr.port()),
            None,
            false,
            Some(connector),
        ),
    )
    .await
    .expect("wss connect timed out")
    .expect("wss connect");
    WsClient { ws }
}

/// A raw TLS client (`alpn` offered) over `tcp`.
async fn tls_client(ca: &Ca, alpn: &[&[u8]], tcp: TcpStream) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp)).await.expect("TLS timed out").expect("TLS")
}

/// Reads until end of stream or an error; returns the bytes and whether
/// the stream ended within `WAIT`.
async fn read_to_end(io: &mut (impl AsyncRead + Unpin)) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0) | Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn metrics(http: &reqwest::Client, s: &TestServer) -> Metrics {
    scrape(http, &url(s, "/metrics")).await
}

// ---------------------------------------------------------------- tests

/// Publish and history over HTTPS: HTTP/1.1 when the client offers only
/// that, HTTP/2 when ALPN offers both (the server prefers h2).
#[tokio::test]
async fn https_publish_and_history_over_http1_and_http2() {
    let (s, ca, _files) = tls_server("").await;
    let cases = [
        ("h1", ca.https().http1_only().build().unwrap(), reqwest::Version::HTTP_11),
        ("h2", ca.https().build().unwrap(), reqwest::Version::HTTP_2),
    ];
    for (name, http, version) in cases {
        let topic = format!("tls.api.{name}");
        let mut ids = vec![];
        for i in 0..3 {
            let (id, v) = publish(&http, &s, &topic, &format!(r#"{{"i":{i}}}"#)).await;
            assert_eq!(v, version, "{name}: publish");
            ids.push(id);
        }
        let res = send(http.get(url(&s, &format!("/v1/history/{topic}")))).await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(res.version(), version, "{name}: history");
        let body: Value = res.json().await.unwrap();
        let msgs = body["messages"].as_array().unwrap();
        let got: Vec<&str> = msgs.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(got, ids, "{name}: {body}");
        let data: Vec<Value> = msgs.iter().map(|m| m["data"].clone()).collect();
        assert_eq!(data, [json!({"i": 0}), json!({"i": 1}), json!({"i": 2})], "{name}");
    }
    s.stop().await;
}

/// SSE over https (HTTP/2 by ALPN, and HTTP/1.1) receives a published
/// message; a long poll over https held on a cursor is answered by the
/// next publish.
#[tokio::test]
async fn sse_and_long_poll_over_https() {
    let (s, ca, _files) = tls_server("").await;
    let h2 = ca.https().build().unwrap();
    let h1 = ca.https().http1_only().build().unwrap();
    let t = "tls.sse";
    let mut over_h2 = Sse::open_with(&h2, &url(&s, &sse_path(&[t])), None).await;
    let mut over_h1 = Sse::open_with(&h1, &url(&s, &sse_path(&[t])), None).await;
    assert_eq!(over_h2.version, reqwest::Version::HTTP_2);
    assert_eq!(over_h1.version, reqwest::Version::HTTP_11);
    let (id, _) = publish(&h2, &s, t, r#"{"sse":1}"#).await;
    for sse in [&mut over_h2, &mut over_h1] {
        let (event_id, m) = sse.message().await;
        assert_eq!(m["id"], id.as_str());
        assert_eq!(m["data"], json!({"sse": 1}));
        assert!(!event_id.is_empty());
    }

    // Long polling: a cursor for "now", then a poll held on it.
    let t = "tls.poll";
    let res = send(h2.get(url(&s, &format!("/v1/poll?topic={t}&timeout=0")))).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["messages"], json!([]), "{body}");
    let cursor = body["cursor"].as_str().unwrap().to_owned();
    let held = {
        let (h1, u) = (h1.clone(), url(&s, &format!("/v1/poll?topic={t}&cursor={cursor}&timeout=20")));
        tokio::spawn(async move {
            let res = send(h1.get(u)).await.unwrap();
            (res.status().as_u16(), res.version(), res.json::<Value>().await.unwrap())
        })
    };
    let (id, _) = publish(&h2, &s, t, r#"{"poll":1}"#).await;
    let (status, version, body) = tokio::time::timeout(WAIT, held).await.expect("poll timed out").unwrap();
    assert_eq!((status, version), (200, reqwest::Version::HTTP_11), "{body}");
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{body}");
    assert_eq!(msgs[0]["id"], id.as_str());
    assert_eq!(msgs[0]["data"], json!({"poll": 1}));
    s.stop().await;
}

/// `wss://`: subscribe, receive a message published over https, publish
/// over the socket itself.
#[tokio::test]
async fn wss_subscribes_and_receives() {
    let (s, ca, _files) = tls_server("").await;
    let http = ca.https().build().unwrap();
    let t = "tls.ws";
    let mut ws = wss(&s, &ca).await;
    ws.subscribe(t, None).await;
    let (id, _) = publish(&http, &s, t, r#"{"ws":1}"#).await;
    let m = ws.messages(1).await;
    assert_eq!(m[0]["id"], id.as_str());
    assert_eq!(m[0]["data"], json!({"ws": 1}));
    ws.send(json!({"op": "publish", "topic": t, "data": {"ws": 2}, "ref": "p"})).await;
    let mut got = vec![];
    while got.len() < 2 {
        got.push(ws.next().await);
    }
    let ack = got.iter().find(|v| v["op"] == "ack").unwrap_or_else(|| panic!("no ack: {got:?}"));
    let msg = got.iter().find(|v| v["op"] == "message").unwrap_or_else(|| panic!("no message: {got:?}"));
    assert_eq!(ack["id"], msg["id"], "{got:?}");
    assert_eq!(msg["data"], json!({"ws": 2}));
    ws.assert_quiet("q").await;
    ws.close_and_wait().await;
    s.stop().await;
}

/// gRPC over TLS (tonic, ALPN h2): Subscribe, then Publish; the stream
/// gets the message.
#[tokio::test]
async fn grpc_over_tls_publishes_and_subscribes() {
    let (s, ca, _files) = tls_server("").await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca.pem))
        .domain_name("localhost");
    let endpoint = tonic::transport::Endpoint::from_shared(url(&s, "")).unwrap().tls_config(tls).unwrap();
    let channel = tokio::time::timeout(WAIT, endpoint.connect()).await.expect("connect timed out").unwrap();
    let mut c = GatewayClient::new(channel);
    let t = "tls.grpc";
    let sub = SubscribeRequest { topics: vec![t.to_owned()], ..Default::default() };
    let mut stream = tokio::time::timeout(WAIT, c.subscribe(sub)).await.unwrap().unwrap().into_inner();
    let req = PublishRequest { topic: t.to_owned(), data: br#"{"grpc":1}"#.to_vec(), ..Default::default() };
    let reply = tokio::time::timeout(WAIT, c.publish(req)).await.unwrap().unwrap().into_inner();
    let m = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no message")
        .unwrap()
        .expect("stream ended");
    assert_eq!((m.topic.as_str(), m.id.as_str()), (t, reply.id.as_str()));
    assert_eq!(m.data, br#"{"grpc":1}"#);
    s.stop().await;
}

/// Plain HTTP (HTTP/1.1 and h2c) to the TLS port is not served: the
/// connection is closed without an HTTP answer.
#[tokio::test]
async fn plain_http_to_the_tls_port_is_not_served() {
    let (s, ca, _files) = tls_server("").await;
    let plain = format!("http://{}/healthz", s.addr);
    let res = tokio::time::timeout(WAIT, reqwest::Client::new().get(&plain).send()).await.unwrap();
    assert!(res.is_err(), "served in clear: {res:?}");
    let h2c = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let res = tokio::time::timeout(WAIT, h2c.get(&plain).send()).await.unwrap();
    assert!(res.is_err(), "h2c served: {res:?}");

    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let (bytes, ended) = read_to_end(&mut raw).await;
    assert!(ended, "the connection stayed open");
    assert!(
        !bytes.windows(5).any(|w| w == b"HTTP/"),
        "an HTTP answer: {:?}",
        String::from_utf8_lossy(&bytes)
    );

    // The port still serves TLS.
    let res = send(ca.https().build().unwrap().get(url(&s, "/healthz"))).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    s.stop().await;
}

/// With `http.handshake_timeout = "1s"`: a socket that sends nothing, one
/// that stops halfway through its ClientHello and one that completes TLS
/// but sends no request are all closed after about 1 s; meanwhile (the
/// handshakes do not hold the accept loop) an HTTPS request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_handshakes_are_closed_after_the_timeout() {
    let (s, ca, _files) = tls_server("[http]\nhandshake_timeout = \"1s\"\n").await;
    let started = Instant::now();
    let silent = TcpStream::connect(s.addr).await.unwrap();
    let mut half = TcpStream::connect(s.addr).await.unwrap();
    // A handshake record header announcing 512 bytes, and 4 of them.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]).await.unwrap();
    let idle = tls_client(&ca, &[b"http/1.1"], TcpStream::connect(s.addr).await.unwrap()).await;
    let wait_end = |mut io: Box<dyn AsyncRead + Unpin + Send>| {
        tokio::spawn(async move {
            let (_, ended) = read_to_end(&mut io).await;
            assert!(ended, "not closed");
            started.elapsed()
        })
    };
    let waits = [wait_end(Box::new(silent)), wait_end(Box::new(half)), wait_end(Box::new(idle))];

    let res = send(ca.https().build().unwrap().get(url(&s, "/healthz"))).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(waits.iter().all(|w| !w.is_finished()), "closed before an HTTPS request was served");

    for (name, w) in ["silent", "half a ClientHello", "TLS without a request"].into_iter().zip(waits) {
        let elapsed = w.await.unwrap();
        assert!(elapsed >= Duration::from_millis(900), "{name}: closed after {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{name}: closed after {elapsed:?}");
    }
    s.stop().await;
}

/// An SSE client over TLS on HTTP/1.1 that stops reading is closed as a
/// slow consumer: the kill switch makes the connection's TLS I/O fail, so
/// the connection drops (end of stream for the client, no clean end of
/// the chunked body) even though the server is blocked writing to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_http1_stream_over_tls_drops_its_connection() {
    let (s, ca, _files) = tls_server("[limits]\noutbox_capacity = 8\nmax_message_bytes = 1048576\n").await;
    let http = ca.https().build().unwrap();
    let t = "tls.slow";
    let slow_before = metrics(&http, &s).await.slow("sse");

    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = tokio::time::timeout(WAIT, sock.connect(s.addr)).await.unwrap().unwrap();
    let mut stalled = tls_client(&ca, &[b"http/1.1"], tcp).await;
    let req =
        format!("GET {} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n", sse_path(&[t]));
    stalled.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 512];
        let n = tokio::time::timeout(WAIT, stalled.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the headers");
        head.extend_from_slice(&chunk[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));

    // Big messages until the stream is closed as a slow consumer.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(128 * 1024));
    let mut published = 0;
    while metrics(&http, &s).await.slow("sse") == slow_before {
        assert!(published < 500, "the stalled stream was never closed");
        publish(&http, &s, t, &big).await;
        published += 1;
    }

    // Reading again: what the kernel holds, then the end of the connection.
    let (rest, ended) = read_to_end(&mut stalled).await;
    assert!(ended, "the killed connection stayed open");
    let body = [&head[..], &rest[..]].concat();
    assert!(
        !body.ends_with(b"\r\n0\r\n\r\n"),
        "the response ended cleanly instead of the connection dropping"
    );
    let events = body.windows(13).filter(|w| w == b"event: messag").count();
    assert!(events < published, "the stalled client was not cut off ({events} of {published})");
    s.stop().await;
}

/// Rotation: a refused file keeps the current certificate; a certificate
/// from a second CA is served to new connections within a few reload
/// intervals (clients trusting only that CA get in, clients trusting only
/// the first do not), while a `wss://` connection opened before keeps
/// receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_serves_new_connections_and_keeps_open_ones() {
    let (one, two) = (Ca::new("rtgate test CA one"), Ca::new("rtgate test CA two"));
    let files = Files::new();
    files.write(&one.leaf());
    let s = start(&files, "", "reload_interval = \"200ms\"").await;
    let t = "tls.reload";
    let http_one = one.https().build().unwrap();
    let mut ws = wss(&s, &one).await;
    ws.subscribe(t, None).await;
    let reloads = |m: &Metrics, outcome: &str| {
        m.get("rtgate_tls_reloads_total", &[("outcome", outcome)]).unwrap_or(0.0)
    };
    let before = metrics(&http_one, &s).await;

    // A certificate file that is not one: refused, the old one stays.
    std::fs::write(files.cert(), "not a certificate\n").unwrap();
    let deadline = Instant::now() + WAIT;
    while reloads(&metrics(&http_one, &s).await, "error") == reloads(&before, "error") {
        assert!(Instant::now() < deadline, "the changed file was never examined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = send(one.https().build().unwrap().get(url(&s, "/healthz"))).await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "a new connection still gets the first certificate");

    // The second CA's certificate: new connections trusting only it get in.
    files.write(&two.leaf());
    let deadline = Instant::now() + WAIT;
    let http_two = loop {
        let client = two.https().build().unwrap();
        match send(client.get(url(&s, "/healthz"))).await {
            Ok(res) if res.status().as_u16() == 200 => break client,
            other => {
                assert!(Instant::now() < deadline, "the new certificate was never served: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let after = metrics(&http_two, &s).await;
    assert!(reloads(&after, "ok") > reloads(&before, "ok"), "{}", after.text);
    let refused = send(one.https().build().unwrap().get(url(&s, "/healthz"))).await;
    assert!(refused.is_err(), "a client trusting only the first CA got in: {refused:?}");

    // The connection opened with the first certificate goes on.
    let (id, _) = publish(&http_two, &s, t, r#"{"after":"reload"}"#).await;
    let m = ws.messages(1).await;
    assert_eq!(m[0]["id"], id.as_str());
    ws.assert_quiet("still-here").await;
    s.stop().await;
}

/// SIGHUP reloads at once: with a reload interval of an hour, a rotated
/// pair is served right after the signal (and not before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_at_once() {
    // From here on this process handles SIGHUP (tokio keeps the handler),
    // so the signal below cannot kill it, whatever the server's timing.
    // The other servers of this binary reload their unchanged files.
    let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let (one, two) = (Ca::new("rtgate test CA hup one"), Ca::new("rtgate test CA hup two"));
    let files = Files::new();
    files.write(&one.leaf());
    let s = start(&files, "", "reload_interval = \"1h\"").await;
    let res = send(one.https().build().unwrap().get(url(&s, "/healthz"))).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);

    files.write(&two.leaf());
    let before = send(two.https().build().unwrap().get(url(&s, "/healthz"))).await;
    assert!(before.is_err(), "the new pair was served before any signal: {before:?}");
    // Signalled until served: the server's watcher may not listen yet on
    // the first one.
    let deadline = Instant::now() + WAIT;
    loop {
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(status.success());
        match send(two.https().build().unwrap().get(url(&s, "/healthz"))).await {
            Ok(res) if res.status().as_u16() == 200 => break,
            other => {
                assert!(Instant::now() < deadline, "never reloaded on SIGHUP: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    s.stop().await;
}
