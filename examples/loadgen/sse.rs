//! Server-Sent Events subscriber: one raw HTTP/1.1 connection, events parsed here.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::http::{find, parse_head, read_more, Chunked};
use crate::payload::decode_message;
use crate::stats::{SeqCheck, Shared};

/// Parser state of one SSE stream (fields of the event being read).
#[derive(Default)]
struct SseEvent {
    data: Vec<u8>,
    has_data: bool,
    event: Vec<u8>,
    last_id: Vec<u8>,
}

impl SseEvent {
    /// Handles one line (without its end of line); calls `dispatch(event, data)`
    /// when a blank line ends an event that has data.
    fn line(&mut self, line: &[u8], mut dispatch: impl FnMut(&[u8], &[u8])) {
        if line.is_empty() {
            if self.has_data {
                dispatch(&self.event, &self.data);
            }
            self.data.clear();
            self.has_data = false;
            self.event.clear();
            return;
        }
        if line[0] == b':' {
            return; // comment (": ping")
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => {
                self.last_id.clear();
                self.last_id.extend_from_slice(value);
            }
            _ => {} // retry, unknown fields
        }
    }
}

/// Opens GET /v1/sse and returns the stream, bytes read past the head, and
/// whether the body is chunked.
async fn sse_open(
    addr: &str,
    topic: &str,
    last_event_id: Option<&str>,
) -> Result<(TcpStream, Vec<u8>, bool), String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let resume = last_event_id.map(|c| format!("&lastEventId={c}")).unwrap_or_default();
    let req = format!(
        "GET /v1/sse?topic={topic}{resume} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(&mut tcp, &mut buf).await?;
    };
    let head = parse_head(&buf[..head_end])?;
    if head.status != 200 {
        return Err(format!("HTTP {}: {}", head.status, String::from_utf8_lossy(&buf[head_end..])));
    }
    buf.drain(..head_end);
    Ok((tcp, buf, head.chunked))
}

/// One SSE subscriber (`last_event_id`: resume from that cursor).
pub(crate) async fn sse_subscriber(
    sh: Arc<Shared>,
    sem: Arc<Semaphore>,
    addr: String,
    topic: String,
    topic_idx: usize,
    last_event_id: Option<String>,
) {
    let permit = sem.acquire_owned().await;
    let conn = sse_open(&addr, &topic, last_event_id.as_deref());
    let Some((mut tcp, mut raw, chunked)) = sh.attempt("sse", topic_idx, conn).await else { return };
    drop(permit);

    let mut seqs = SeqCheck::default();
    let mut dechunk = Chunked::default();
    let mut text: Vec<u8> = Vec::new();
    let mut ev = SseEvent::default();
    loop {
        let done = if chunked {
            match dechunk.feed(&mut raw, &mut text) {
                Ok(done) => done,
                Err(e) => {
                    eprintln!("sse: {e}");
                    break;
                }
            }
        } else {
            text.append(&mut raw);
            false
        };
        let now = sh.now_ns();
        let mut pos = 0;
        while let Some(i) = text[pos..].iter().position(|&b| b == b'\n') {
            let mut line = &text[pos..pos + i];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            ev.line(line, |event, data| match event {
                b"" | b"message" => {
                    let m = serde_json::from_slice::<Value>(data).ok().as_ref().and_then(decode_message);
                    sh.payload(&mut seqs, now, m);
                }
                b"gap" => {
                    sh.srv_gaps.fetch_add(1, Relaxed);
                }
                _ => {
                    sh.foreign.fetch_add(1, Relaxed);
                }
            });
            pos += i + 1;
        }
        text.drain(..pos);
        if done {
            break;
        }
        if raw.capacity() - raw.len() < 2048 {
            raw.reserve(16384);
        }
        match tcp.read_buf(&mut raw).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    sh.closed_early.fetch_add(1, Relaxed);
}
