//! A minimal SSE client over raw HTTP/1.1 on its own socket (so a test knows
//! its local address); the chunked body is decoded here.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

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
