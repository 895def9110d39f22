//! Abuse limits and server-paced reconnects (issue 12, contract §8), with
//! real clients over real sockets:
//!
//! - A reconnect storm (5,000 connection attempts in about a second from one
//!   client IP) is shed with 429 while 200 established WebSocket
//!   subscribers keep receiving every message, in order, once; their p99
//!   publish→receive latency during the storm is printed.
//! - Connection attempts per IP and globally; open streams per IP; trusted
//!   proxies (a spoofed `X-Forwarded-For` from an untrusted peer, or
//!   prepended by a client, is ignored).
//! - Shutdown tells every client when to come back, spread over the
//!   reconnect window: WebSocket close reason, SSE `retry:`, gRPC trailers.
//!
//! Client addresses are told apart by `X-Forwarded-For` from 127.0.0.1 as a
//! trusted proxy.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

mod support;

#[allow(dead_code, unused_imports)]
#[path = "grpc/helpers.rs"]
mod helpers;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use support::sse::{sse_path, Sse};
use support::{assert_paced_close, TestServer, WsClient, WAIT};

/// How a connection attempt was answered.
#[derive(Debug)]
enum Answer {
    Accepted,
    /// 429 `rate_limited`, with its `Retry-After` seconds.
    Refused(u64),
}

/// A client that opens a new connection for every request.
fn unpooled(xff: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", xff.parse().unwrap());
    reqwest::Client::builder().pool_max_idle_per_host(0).default_headers(headers).build().unwrap()
}

/// A 429 as the contract has it: `rate_limited` body and `Retry-After`.
fn refused(status: u16, retry_after: Option<&reqwest::header::HeaderValue>, body: &str) -> Answer {
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], "rate_limited", "{body}");
    let secs = retry_after.expect("Retry-After on a 429").to_str().unwrap().parse().expect("whole seconds");
    Answer::Refused(secs)
}

/// `GET path` on a new connection as `client`.
async fn plain(s: &TestServer, client: &reqwest::Client, path: &str) -> Answer {
    let res =
        tokio::time::timeout(WAIT, client.get(s.url(path)).send()).await.expect("timed out").expect("get");
    let status = res.status().as_u16();
    if status == 200 {
        return Answer::Accepted;
    }
    let retry = res.headers().get("retry-after").cloned();
    refused(status, retry.as_ref(), &res.text().await.unwrap_or_default())
}

/// A WebSocket handshake to `path` from `xff`: the open socket, or the
/// refusal before the upgrade.
async fn ws_attempt(s: &TestServer, path: &str, xff: &str) -> Result<WsClient, Answer> {
    let mut req = s.ws_url(path).into_client_request().unwrap();
    req.headers_mut().insert("x-forwarded-for", xff.parse().unwrap());
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
    {
        Ok((ws, _)) => Ok(WsClient { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body =
                res.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err(refused(res.status().as_u16(), res.headers().get("retry-after"), &body))
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// One attempt over a new TCP connection with a hand-written request (the
/// storm's client: cheaper than a client library, so that 5,000 fit in
/// about a second next to the server on a small machine): a WebSocket
/// handshake or a plain `GET /healthz`, from `xff`.
async fn raw_attempt(addr: std::net::SocketAddr, ws: bool, xff: &str) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = if ws {
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Forwarded-For: {xff}\r\n\r\n"
        )
    } else {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-For: {xff}\r\nConnection: close\r\n\r\n"
        )
    };
    stream.write_all(head.as_bytes()).await.expect("write");
    // The response head, then the body for a refusal.
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let end = loop {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed before a response: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = std::str::from_utf8(&buf[..end]).expect("ascii head").to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    if status == 101 || status == 200 {
        return Answer::Accepted;
    }
    let len: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).expect("content-length");
    while buf.len() < end + 4 + len {
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "body cut short");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
    let retry = header(&head, "retry-after").map(|v| reqwest::header::HeaderValue::from_str(v).unwrap());
    refused(status, retry.as_ref(), &body)
}

/// A header's value in a lower-cased response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

fn accepted(a: &Answer) -> bool {
    matches!(a, Answer::Accepted)
}

/// `rtgate_rejections_total{reason}` (the recorder is per process: only
/// lower bounds are asserted).
async fn rejections(s: &TestServer, reason: &str) -> f64 {
    s.scrape().await.get("rtgate_rejections_total", &[("reason", reason)]).unwrap_or(0.0)
}

// ------------------------------------------------------------------- storm

const SUBSCRIBERS: usize = 200;
const STORM: usize = 5000;
const STORM_RATE: f64 = 50.0;
const STORM_BURST: f64 = 100.0;

/// One subscriber's view, per message: its id, when it was published (since
/// the test's base instant) and its publish→receive latency.
type Received = Vec<(String, Duration, Duration)>;

/// Reads `c` until the end marker; each message's `data` is
/// `{"n": N, "t": µs since base}`.
async fn receive_all(mut c: WsClient, base: Instant) -> Received {
    let mut got = Received::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), c.ws.next())
            .await
            .expect("a subscriber waited 30 s for a frame")
            .expect("a subscriber's stream ended")
            .expect("a subscriber's socket failed");
        let WsMessage::Text(t) = frame else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["op"], "message", "{v}");
        let data = &v["data"];
        if data["end"] == true {
            return got;
        }
        let sent = Duration::from_micros(data["t"].as_u64().unwrap());
        got.push((v["id"].as_str().unwrap().to_owned(), sent, base.elapsed() - sent));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_storm_is_shed_while_subscribers_keep_receiving() {
    let s = Arc::new(
        TestServer::start(&format!(
            "[abuse]\ntrusted_proxies = [\"127.0.0.1\"]\nconnect_rate_per_ip = {STORM_RATE}\n\
             connect_burst_per_ip = {STORM_BURST}\n[reconnect]\nmin = \"1s\"\nwindow = \"5s\"\n"
        ))
        .await,
    );
    let topic = "storm.feed";
    let base = Instant::now();

    // 200 established subscribers, each from an address of its own.
    let subscribers: Vec<WsClient> = futures_util::stream::iter(0..SUBSCRIBERS)
        .map(|i| {
            let s = Arc::clone(&s);
            async move {
                let xff = format!("10.2.{}.{}", i / 200, i % 200 + 1);
                let Ok(c) = ws_attempt(&s, &format!("/v1/ws?topic={topic}"), &xff).await else {
                    panic!("subscriber {i} refused");
                };
                c
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let readers: Vec<_> = subscribers.into_iter().map(|c| tokio::spawn(receive_all(c, base))).collect();

    // A publisher, a numbered message every ~10 ms, until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = {
        let (s, stop) = (Arc::clone(&s), stop.clone());
        tokio::spawn(async move {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert("x-forwarded-for", "10.3.3.3".parse().unwrap());
            let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
            let url = s.url(&format!("/v1/publish/{topic}"));
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut published = vec![];
            for n in 0u64.. {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let body = format!(r#"{{"n":{n},"t":{}}}"#, base.elapsed().as_micros());
                published.push(support::post_publish(&http, &url, body).await);
            }
            support::post_publish(&http, &url, r#"{"end":true}"#.into()).await;
            published
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // messages before the storm

    // The storm: 5,000 attempts from one address, half WebSocket
    // handshakes, half plain requests, each on a new connection.
    let storm_started = Instant::now();
    let storm_from = base.elapsed();
    let addr = s.addr;
    let answers: Vec<Answer> = futures_util::stream::iter(0..STORM)
        .map(|i| raw_attempt(addr, i % 2 == 0, "10.9.9.9"))
        .buffer_unordered(64)
        .collect()
        .await;
    let storm = storm_started.elapsed();
    let storm_to = base.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await; // messages after the storm
    stop.cancel();
    let published = tokio::time::timeout(Duration::from_secs(30), publisher).await.unwrap().unwrap();

    let ok = answers.iter().filter(|a| accepted(a)).count();
    let hints: Vec<u64> =
        answers.iter().filter_map(|a| if let Answer::Refused(s) = a { Some(*s) } else { None }).collect();
    assert_eq!(ok + hints.len(), STORM);
    let bound = STORM_BURST + STORM_RATE * storm.as_secs_f64() + 20.0;
    eprintln!(
        "storm: {STORM} attempts in {storm:?}: {ok} accepted (bound {bound:.0}), {} refused with 429",
        hints.len()
    );
    assert!((ok as f64) <= bound, "{ok} accepted in {storm:?}, more than {bound:.0}");
    assert!(hints.len() > STORM / 2, "most attempts refused");
    // Retry-After: no earlier than a token (1/50 s), within the window (5 s).
    assert!(hints.iter().all(|h| (1..=6).contains(h)), "Retry-After out of range: {hints:?}");

    // Every subscriber got every message, in order, once.
    let want = published;
    assert!(want.len() > 50, "only {} published", want.len());
    let mut during = vec![];
    let mut all = vec![];
    for (i, r) in readers.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(30), r).await.unwrap().unwrap();
        let ids: Vec<String> = got.iter().map(|(id, _, _)| id.clone()).collect();
        assert_eq!(ids, want, "subscriber {i}");
        for (_, sent, latency) in got {
            all.push(latency);
            if (storm_from..=storm_to).contains(&sent) {
                during.push(latency);
            }
        }
    }
    during.sort();
    all.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    assert!(!during.is_empty(), "no message was published during the storm");
    eprintln!(
        "storm: {SUBSCRIBERS} subscribers x {} messages; publish->receive during the storm ({} samples): \
         p50 {:?}, p99 {:?}, max {:?}; overall p99 {:?}",
        want.len(),
        during.len(),
        p(&during, 0.5),
        p(&during, 0.99),
        during[during.len() - 1],
        p(&all, 0.99),
    );
    assert!(p(&during, 0.99) < Duration::from_secs(2), "p99 during the storm: {:?}", p(&during, 0.99));
    if let Ok(s) = Arc::try_unwrap(s) {
        s.stop().await;
    }
}

// ------------------------------------------------------------------ limits

/// The per-IP bucket: new connections and stream-opening requests count;
/// over the limit HTTP gets 429, the WebSocket handshake 429 before the
/// upgrade, gRPC `RESOURCE_EXHAUSTED` with retry trailers; other addresses
/// and requests on an established connection are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_per_ip_are_limited_on_every_transport() {
    let s = TestServer::start(
        "[abuse]\ntrusted_proxies = [\"127.0.0.1\"]\nconnect_rate_per_ip = 1\nconnect_burst_per_ip = 3\n\
         [reconnect]\nmin = \"1s\"\nwindow = \"3s\"\n",
    )
    .await;
    let before = rejections(&s, "connect_rate_ip").await;
    let a = unpooled("10.0.0.1");
    for i in 0..3 {
        assert!(accepted(&plain(&s, &a, "/healthz").await), "attempt {i} within the burst");
    }
    // Paced: no earlier than the next token (1 s), within the window.
    let Answer::Refused(secs) = plain(&s, &a, "/healthz").await else { panic!("the 4th was accepted") };
    assert!((1..=4).contains(&secs), "Retry-After {secs}");
    let Err(Answer::Refused(secs)) = ws_attempt(&s, "/v1/ws?topic=lim", "10.0.0.1").await else {
        panic!("the WebSocket handshake was accepted")
    };
    assert!((1..=4).contains(&secs), "Retry-After {secs}");
    // gRPC: refused on the channel's first request, before the rpc runs.
    let mut c = rtgate::proto::gateway_client::GatewayClient::new(helpers::channel(&s).await);
    let mut req = tonic::Request::new(helpers::sub_req(&["lim"], ""));
    req.metadata_mut().insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
    let st = match helpers::within(c.subscribe(req)).await {
        Ok(_) => panic!("the gRPC Subscribe was accepted"),
        Err(st) => st,
    };
    helpers::assert_status(&st, tonic::Code::ResourceExhausted, "rate_limited");
    let ms = |key: &str| -> u64 { st.metadata().get(key).expect(key).to_str().unwrap().parse().unwrap() };
    assert!((1000..=4000).contains(&ms("retry-after-ms")), "{st:?}");
    assert_eq!(ms("retry-after-ms"), ms("grpc-retry-pushback-ms"));

    // Another address has its own bucket; its established connection goes
    // on without counting more attempts.
    let b = ws_attempt(&s, "/v1/ws?topic=lim", "10.0.0.2").await.map_err(|e| format!("{e:?}")).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", "10.0.0.2".parse().unwrap());
    let pooled = reqwest::Client::builder().default_headers(headers).build().unwrap();
    for i in 0..20 {
        let res = pooled.get(s.url("/healthz")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "request {i} on an established connection");
        // Read to the end, so the connection goes back to the pool (an
        // unread body would make the client open a new one: a new attempt).
        res.bytes().await.unwrap();
    }
    b.close_and_wait().await;
    assert!(rejections(&s, "connect_rate_ip").await >= before + 3.0);

    // A token comes back after a second.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !accepted(&plain(&s, &a, "/healthz").await) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("no token came back");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    s.stop().await;
}

#[tokio::test]
async fn attempts_are_limited_globally() {
    let s = TestServer::start(
        "[abuse]\ntrusted_proxies = [\"127.0.0.1\"]\nconnect_rate_per_ip = 0\nconnect_rate_global = 1\n\
         connect_burst_global = 3\n",
    )
    .await;
    let before = rejections(&s, "connect_rate_global").await; // the first attempt
    let mut answers = vec![];
    for i in 0..4 {
        answers.push(plain(&s, &unpooled(&format!("10.1.0.{i}")), "/healthz").await);
    }
    // One went to the scrape: two more fit, then every address is refused.
    assert!(answers[..2].iter().all(accepted), "{answers:?}");
    assert!(answers[2..].iter().all(|a| !accepted(a)), "{answers:?}");
    // Scrapes are attempts too: wait for a token for this one.
    let m = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let res = s.http.get(s.url("/metrics")).send().await.unwrap();
            if res.status().as_u16() == 200 {
                return res.text().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("no token came back");
    let line = m.lines().find(|l| l.starts_with("rtgate_rejections_total{reason=\"connect_rate_global\"}"));
    let now: f64 = line.expect("the counter").rsplit(' ').next().unwrap().parse().unwrap();
    assert!(now >= before + 2.0, "{before} -> {now}");
    s.stop().await;
}

/// Re-polling on a kept-alive connection is a poller's normal stride, not a
/// connection attempt: far more polls than the global attempt budget are
/// all served on one connection, while a new connection is still counted.
#[tokio::test]
async fn polls_on_a_kept_alive_connection_are_not_connection_attempts() {
    let s = TestServer::start(
        "[abuse]\ntrusted_proxies = [\"127.0.0.1\"]\nconnect_rate_per_ip = 1\nconnect_burst_per_ip = 2\n\
         connect_rate_global = 1\nconnect_burst_global = 2\n",
    )
    .await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", "10.5.0.1".parse().unwrap());
    let pooled = reqwest::Client::builder().default_headers(headers).build().unwrap();
    let mut cursor = String::new();
    for i in 0..30 {
        let q = if cursor.is_empty() { String::new() } else { format!("&cursor={cursor}") };
        let res = pooled.get(s.url(&format!("/v1/poll?topic=re&timeout=0{q}"))).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "poll {i}");
        let v: serde_json::Value = res.json().await.unwrap();
        cursor = v["cursor"].as_str().expect("cursor").to_owned();
    }
    // A poll on a new connection is an attempt: of five at once, at most the
    // bucket's two tokens (and one refilled) are served.
    let mut refused = 0;
    for i in 0..5 {
        let a = plain(&s, &unpooled(&format!("10.5.1.{i}")), "/v1/poll?topic=re&timeout=0").await;
        refused += usize::from(!accepted(&a));
    }
    assert!(refused >= 2, "{refused} of 5 new connections refused");
    s.stop().await;
}

/// `abuse.max_connections_per_ip`: the N+1th stream of an address is
/// refused, another address is not, and a stream that closes makes room.
#[tokio::test]
async fn open_streams_per_ip_are_capped() {
    let s = TestServer::start(
        "[abuse]\ntrusted_proxies = [\"127.0.0.1\"]\nconnect_rate_per_ip = 0\nmax_connections_per_ip = 2\n",
    )
    .await;
    let one = ws_attempt(&s, "/v1/ws?topic=cap", "10.4.0.1").await.map_err(|e| format!("{e:?}")).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", "10.4.0.1".parse().unwrap());
    let client = reqwest::Client::builder().default_headers(headers).build().unwrap();
    let mut two = Sse::open_with(&client, &s.url(&sse_path(&["cap"])), None).await;
    // The third stream: refused before the upgrade, or at connect (error
    // frame `rate_limited`, then a close).
    match ws_attempt(&s, "/v1/ws?topic=cap", "10.4.0.1").await {
        Err(Answer::Refused(_)) => {}
        Err(other) => panic!("{other:?}"),
        Ok(mut c) => {
            let (frames, end) = c.frames_until_end().await;
            assert!(frames.iter().any(|f| f["code"] == "rate_limited"), "{frames:?} {end:?}");
        }
    }
    let res = client.get(s.url(&sse_path(&["cap"]))).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 429);
    assert!(ws_attempt(&s, "/v1/ws?topic=cap", "10.4.0.2").await.is_ok(), "another address");
    assert!(rejections(&s, "connections_per_ip").await >= 2.0);
    // One closes: room for one more.
    one.close_and_wait().await;
    let id = s.publish("cap", "1").await;
    assert_eq!(two.message().await.1["id"], id.as_str());
    tokio::time::timeout(WAIT, async {
        while ws_attempt(&s, "/v1/ws?topic=cap", "10.4.0.1").await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no room after a close");
    s.stop().await;
}

/// `X-Forwarded-For` is the client's word unless its peer is a trusted
/// proxy; behind one, addresses a client prepends are never used.
#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    // 127.0.0.1 is not trusted (nor exempt): every request is 127.0.0.1's,
    // whatever it claims.
    let s = TestServer::start(
        "[abuse]\ntrusted_proxies = [\"10.255.0.1\", \"192.0.2.0/24\"]\nconnect_rate_per_ip = 1\n\
         connect_burst_per_ip = 3\nexempt = []\n",
    )
    .await;
    let mut answers = vec![];
    for i in 0..4 {
        answers.push(plain(&s, &unpooled(&format!("10.5.0.{i}")), "/healthz").await);
    }
    assert!(answers[..3].iter().all(accepted) && !accepted(&answers[3]), "{answers:?}");
    s.stop().await;

    // 127.0.0.1 is trusted: the client is the rightmost other address.
    let s = TestServer::start(
        "[abuse]\ntrusted_proxies = [\"127.0.0.1\"]\nconnect_rate_per_ip = 1\nconnect_burst_per_ip = 3\n",
    )
    .await;
    let mut answers = vec![];
    for i in 0..4 {
        // What the client wrote itself, then what the proxy appended.
        answers.push(plain(&s, &unpooled(&format!("10.6.0.{i}, 127.0.0.1, 10.8.8.8")), "/healthz").await);
    }
    assert!(answers[..3].iter().all(accepted) && !accepted(&answers[3]), "{answers:?}");
    assert!(accepted(&plain(&s, &unpooled("10.6.0.1, 10.8.8.9"), "/healthz").await));
    s.stop().await;
}

// ---------------------------------------------------------- paced shutdown

const WS_CLIENTS: usize = 300;
const SSE_CLIENTS: usize = 20;
const MIN_MS: u64 = 1000;
const WINDOW_MS: u64 = 11_000;

/// Every close at shutdown carries a hint within [min, window], and the
/// hints are spread over the window, not bunched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_spreads_reconnects_over_the_window() {
    let s = TestServer::start(&format!(
        "[abuse]\nconnect_rate_per_ip = 0\n[reconnect]\nmin = \"{MIN_MS}ms\"\nwindow = \"{WINDOW_MS}ms\"\n"
    ))
    .await;
    let t = "paced";
    let url = s.ws_url(&format!("/v1/ws?topic={t}"));
    let ws: Vec<WsClient> = futures_util::stream::iter(0..WS_CLIENTS)
        .map(|_| WsClient::connect(&url))
        .buffer_unordered(32)
        .collect()
        .await;
    let mut sse = vec![];
    for _ in 0..SSE_CLIENTS {
        sse.push(Sse::open(&s, &sse_path(&[t]), None).await);
    }
    let mut grpc = helpers::client(&s).await;
    let mut sub = helpers::subscribe(&mut grpc, &[t], "").await;
    // Everyone is live.
    let id = s.publish(t, "1").await;
    let mut ws = ws;
    futures_util::future::join_all(ws.iter_mut().map(|c| async {
        assert_eq!(c.next_op("message").await["id"], id.as_str());
    }))
    .await;
    for c in &mut sse {
        assert_eq!(c.message().await.1["id"], id.as_str());
    }
    assert_eq!(helpers::next_msg(&mut sub).await.id, id);

    let ends: Vec<_> = ws.into_iter().map(|mut c| tokio::spawn(async move { c.ended().await })).collect();
    let stop = tokio::spawn(s.stop());
    let mut hints = vec![];
    for e in ends {
        hints.push(assert_paced_close(&e.await.unwrap(), 1001, "shutdown"));
    }
    for c in &mut sse {
        let (rest, _) = c.end_or_drop().await;
        assert!(rest.iter().all(|e| e.event != "message"), "{rest:?}");
        // The hint is the stream's last field.
        let raw = c.raw_text();
        let last = raw.trim_end().rsplit("\n\n").next().unwrap();
        let ms = last.strip_prefix("retry: ").unwrap_or_else(|| panic!("no retry: at the end: {raw:?}"));
        hints.push(ms.parse().unwrap());
    }
    let (rest, st) = helpers::end_of(&mut sub).await;
    assert!(rest.is_empty(), "{rest:?}");
    helpers::assert_status(&st, tonic::Code::Unavailable, "unavailable");
    let ms: u64 =
        st.metadata().get("retry-after-ms").expect("retry-after-ms").to_str().unwrap().parse().unwrap();
    assert_eq!(
        st.metadata().get("grpc-retry-pushback-ms").map(|v| v.to_str().unwrap().to_owned()),
        Some(ms.to_string())
    );
    hints.push(ms);
    tokio::time::timeout(Duration::from_secs(20), stop).await.unwrap().unwrap();

    assert_eq!(hints.len(), WS_CLIENTS + SSE_CLIENTS + 1);
    assert!(hints.iter().all(|h| (MIN_MS..=WINDOW_MS).contains(h)), "hint out of [min, window]: {hints:?}");
    let n = hints.len() as f64;
    let mean = hints.iter().sum::<u64>() as f64 / n;
    let sd = (hints.iter().map(|&h| (h as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let span = (WINDOW_MS - MIN_MS) as f64;
    let uniform_sd = span / 12f64.sqrt();
    let mut twentieths = [0usize; 20];
    for &h in &hints {
        twentieths[(((h - MIN_MS) as f64 / span * 20.0) as usize).min(19)] += 1;
    }
    let fifths: Vec<usize> = twentieths.chunks(4).map(|c| c.iter().sum()).collect();
    eprintln!(
        "paced shutdown: {} hints in [{MIN_MS}, {WINDOW_MS}] ms: min {} max {} mean {mean:.0} sd {sd:.0} \
         (uniform: mean {:.0} sd {uniform_sd:.0}); per 1/20 of the window: {twentieths:?}",
        hints.len(),
        hints.iter().min().unwrap(),
        hints.iter().max().unwrap(),
        MIN_MS as f64 + span / 2.0,
    );
    // Not bunched: no 1/20 of the window holds 3x its share (15 %); every
    // fifth holds at least 8 % (20 % expected); spread like uniform.
    assert!(twentieths.iter().all(|&c| (c as f64) < 0.15 * n), "{twentieths:?}");
    assert!(fifths.iter().all(|&c| (c as f64) >= 0.08 * n), "{fifths:?}");
    assert!((0.75..1.25).contains(&(sd / uniform_sd)), "sd {sd:.0} vs uniform {uniform_sd:.0}");
}
