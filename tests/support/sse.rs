//! SSE clients: [`Sse`], a real SSE client library (`eventsource-stream`)
//! over reqwest, and [`RawSse`], a minimal one over raw HTTP/1.1 on its own
//! socket (so a test knows its local address) that decodes the chunked body
//! itself.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use eventsource_stream::{Event, EventStream, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{by_topic, check_cursor, check_shape, TestServer, WAIT};

/// `/v1/sse?topic=..&topic=..`
pub fn sse_path(topics: &[&str]) -> String {
    let q: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    format!("/v1/sse?{}", q.join("&"))
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// One SSE response read through `eventsource-stream`; every body byte is
/// also kept in `raw` (the parser drops comments and data-less events such
/// as the `retry:` hint, which some tests check byte for byte).
pub struct Sse {
    pub headers: reqwest::header::HeaderMap,
    pub version: reqwest::Version,
    events: EventStream<Body>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Sse {
    /// `GET path` on `s` with a fresh HTTP/1.1 client; asserts 200.
    pub async fn open(s: &TestServer, path: &str, last_event_id: Option<&str>) -> Sse {
        Sse::open_with(&reqwest::Client::new(), &s.url(path), last_event_id).await
    }

    pub async fn open_with(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Sse {
        let mut req = client.get(url).header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let res = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("sse connect timed out")
            .expect("sse connect");
        let status = res.status().as_u16();
        if status != 200 {
            let body = res.text().await.unwrap_or_default();
            panic!("GET {url}: status {status}: {body}");
        }
        let headers = res.headers().clone();
        let version = res.version();
        let raw = Arc::new(Mutex::new(Vec::new()));
        let tee = Arc::clone(&raw);
        let body: Body = Box::pin(res.bytes_stream().map(move |chunk| {
            if let Ok(b) = &chunk {
                tee.lock().unwrap().extend_from_slice(b);
            }
            chunk
        }));
        Sse { headers, version, events: body.eventsource(), raw }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().expect("ascii header").to_owned())
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8(self.raw.lock().unwrap().clone()).expect("utf-8 body")
    }

    /// The next event; panics on timeout, end of stream or a parse error.
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.next())
            .await
            .expect("timed out waiting for an SSE event")
            .expect("SSE stream ended")
            .expect("SSE stream error")
    }

    /// The next event, which must be a message (no `event:` field) with a
    /// contract cursor as its id: (event id, message JSON text as sent).
    pub async fn message_text(&mut self) -> (String, String) {
        let ev = self.next().await;
        assert_eq!(ev.event, "message", "expected a message event, got {ev:?}");
        check_cursor(&ev.id);
        (ev.id, ev.data)
    }

    /// [`Sse::message_text`], parsed: (event id = cursor, message JSON of
    /// exactly the message's shape).
    pub async fn message(&mut self) -> (String, Value) {
        let (id, data) = self.message_text().await;
        let v: Value = serde_json::from_str(&data).expect("message JSON");
        check_shape(&v);
        (id, v)
    }

    pub async fn messages(&mut self, n: usize) -> Vec<(String, Value)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.message().await);
        }
        out
    }

    /// Reads until the stream ends cleanly (bounded); returns the events
    /// seen on the way. A transport or parse error fails the test.
    pub async fn end(&mut self) -> Vec<Event> {
        let mut out = vec![];
        loop {
            match tokio::time::timeout(WAIT, self.events.next())
                .await
                .expect("timed out waiting for the SSE stream to end")
            {
                None => return out,
                Some(Ok(ev)) => out.push(ev),
                Some(Err(e)) => panic!("SSE stream failed instead of ending cleanly: {e}"),
            }
        }
    }

    /// Reads until the stream ends, cleanly or not (the server may abort a
    /// stream it closes); returns the events seen on the way and whether
    /// it ended cleanly.
    pub async fn end_or_drop(&mut self) -> (Vec<Event>, bool) {
        let mut out = vec![];
        loop {
            match tokio::time::timeout(WAIT, self.events.next()).await {
                Err(_) => panic!("timed out waiting for the SSE stream to end; events: {out:?}"),
                Ok(None) => return (out, true),
                Ok(Some(Ok(ev))) => out.push(ev),
                Ok(Some(Err(_))) => return (out, false),
            }
        }
    }
}

impl Sse {
    /// Reads until the stream ends or fails (bounded); returns the events
    /// seen on the way and the failure, `None` for a clean end.
    pub async fn until_failure(&mut self) -> (Vec<Event>, Option<String>) {
        let mut out = vec![];
        loop {
            match tokio::time::timeout(WAIT, self.events.next())
                .await
                .expect("timed out waiting for the SSE stream to end")
            {
                None => return (out, None),
                Some(Ok(ev)) => out.push(ev),
                Some(Err(e)) => return (out, Some(e.to_string())),
            }
        }
    }
}

/// Publishes one marker per topic on `s` and asserts they are the very next
/// events of every client: nothing (no duplicate, no stray replay) came
/// before.
pub async fn assert_quiet(s: &TestServer, topics: &[&str], clients: &mut [&mut Sse]) {
    let mut want = BTreeMap::new();
    for t in topics {
        let id = s.publish(t, r#"{"marker":true}"#).await;
        want.insert(t.to_string(), vec![id]);
    }
    for c in clients.iter_mut() {
        let got: Vec<Value> = c.messages(topics.len()).await.into_iter().map(|(_, v)| v).collect();
        assert_eq!(by_topic(&got), want, "expected only the markers");
    }
}

pub struct RawSse {
    stream: TcpStream,
    /// The client's address, as the server sees it.
    pub local: SocketAddr,
    /// Undecoded bytes read from the socket.
    raw: Vec<u8>,
    /// Decoded body bytes not yet consumed as events.
    body: Vec<u8>,
    ended: bool,
}

impl RawSse {
    /// `GET path_and_query` (with `Last-Event-ID` when given); asserts a 200
    /// chunked `text/event-stream` response head.
    pub async fn open(addr: &str, path_and_query: &str, last_event_id: Option<&str>) -> RawSse {
        let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let local = stream.local_addr().expect("local addr");
        let extra = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write request");
        let mut s = RawSse { stream, local, raw: vec![], body: vec![], ended: false };
        let end = loop {
            if let Some(i) = s.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(s.fill().await, "closed before the response head");
        };
        let head = String::from_utf8(s.raw[..end].to_vec()).expect("utf-8 head").to_ascii_lowercase();
        s.raw.drain(..end + 4);
        assert!(head.starts_with("http/1.1 200"), "SSE response: {head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        s
    }

    /// Reads more bytes; false at end of stream.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
            .await
            .expect("timed out reading the SSE stream")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Decodes complete chunks from `raw` into `body`.
    fn decode(&mut self) {
        while !self.ended {
            let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") else { return };
            let line = std::str::from_utf8(&self.raw[..i]).expect("chunk size");
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).expect("hex size");
            if self.raw.len() < i + 2 + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[i + 2..i + 2 + size]);
            self.raw.drain(..i + 2 + size + 2);
            self.ended = size == 0;
        }
    }

    /// The next `n` data-carrying events, as (id, data JSON); other lines
    /// may only be comments and the retry hint.
    pub async fn events(&mut self, n: usize) -> Vec<(String, Value)> {
        let mut out = vec![];
        while out.len() < n {
            self.decode();
            if let Some(i) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.body[..i].to_vec()).expect("utf-8 event");
                self.body.drain(..i + 2);
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str::<Value>(v).expect("data json"));
                    } else {
                        assert!(
                            line.starts_with(':') || line.starts_with("retry:"),
                            "unexpected line {line:?}"
                        );
                    }
                }
                if let Some(d) = data {
                    out.push((id.expect("event id"), d));
                }
                continue;
            }
            assert!(!self.ended, "SSE stream ended after {} of {n} events", out.len());
            assert!(self.fill().await, "SSE connection closed after {} of {n} events", out.len());
        }
        out
    }

    /// Reads to the end of the body (the terminating chunk); true when the
    /// stream ended cleanly rather than by a dropped connection.
    pub async fn until_end(&mut self) -> bool {
        loop {
            self.decode();
            if self.ended {
                return true;
            }
            if !self.fill().await {
                return false;
            }
        }
    }
}
