//! A minimal HTTP/1.1 client: keep-alive requests, response heads and the
//! chunked transfer coding.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// (host:port, host header) from http://HOST:PORT[/...].
pub(crate) fn parse_url(url: &str) -> Result<String, String> {
    let rest =
        url.strip_prefix("http://").ok_or_else(|| format!("--url must start with http:// (got {url})"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    if hostport.is_empty() {
        return Err(format!("no host in {url}"));
    }
    Ok(if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") })
}

/// Minimal HTTP/1.1 keep-alive client (one request in flight).
pub(crate) struct HttpPost {
    addr: String,
    pub(crate) conn: Option<TcpStream>,
    buf: Vec<u8>,
}

impl HttpPost {
    pub(crate) fn new(addr: String) -> Self {
        HttpPost { addr, conn: None, buf: Vec::with_capacity(4096) }
    }

    /// POSTs and returns the status code; reads and discards the body.
    pub(crate) async fn post(&mut self, path: &str, body: &[u8]) -> Result<u16, String> {
        let r = async {
            self.send("POST", path, body).await?;
            self.response(false).await.map(|(status, _)| status)
        }
        .await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// GETs and returns the status code and body.
    pub(crate) async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let r = async {
            self.send("GET", path, b"").await?;
            self.response(true).await
        }
        .await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// Writes one request (connecting first if needed). On error the caller
    /// drops the connection (`self.conn = None`).
    pub(crate) async fn send(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await.map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            self.conn = Some(s);
            self.buf.clear();
        }
        let s = self.conn.as_mut().ok_or("no conn")?;
        let mut req = Vec::with_capacity(200 + body.len());
        if method == "GET" {
            req.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr).as_bytes());
        } else {
            req.extend_from_slice(
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    self.addr,
                    body.len()
                )
                .as_bytes(),
            );
            req.extend_from_slice(body);
        }
        s.write_all(&req).await.map_err(|e| e.to_string())
    }

    /// Reads one response: status and (when `keep`) the body.
    pub(crate) async fn response(&mut self, keep: bool) -> Result<(u16, Vec<u8>), String> {
        let s = self.conn.as_mut().ok_or("no conn")?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            read_more(s, &mut self.buf).await?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        self.buf.drain(..head_end);
        let mut body = Vec::new();
        let mut close = head.close;

        if head.chunked {
            let mut dec = Chunked::default();
            loop {
                let done = dec.feed(&mut self.buf, &mut body)?;
                if !keep {
                    body.clear();
                }
                if done {
                    break;
                }
                read_more(s, &mut self.buf).await?;
            }
        } else if let Some(n) = head.content_length {
            while self.buf.len() < n {
                read_more(s, &mut self.buf).await?;
            }
            if keep {
                body.extend_from_slice(&self.buf[..n]);
            }
            self.buf.drain(..n);
        } else if head.status >= 200 && head.status != 204 && head.status != 304 {
            // Body delimited by close.
            while read_more(s, &mut self.buf).await.is_ok() {}
            if keep {
                body = std::mem::take(&mut self.buf);
            }
            close = true;
        }
        if close {
            self.conn = None;
            self.buf.clear();
        }
        Ok((head.status, body))
    }
}

/// What the loadgen needs from a response head.
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) content_length: Option<usize>,
    pub(crate) chunked: bool,
    pub(crate) close: bool,
}

pub(crate) fn parse_head(raw: &[u8]) -> Result<Head, String> {
    let head = String::from_utf8_lossy(raw).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).and_then(|x| x.parse().ok()).ok_or("bad status line")?;
    let mut h = Head { status, content_length: None, chunked: false, close: false };
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            let v = v.trim();
            match k.trim() {
                "content-length" => h.content_length = v.parse().ok(),
                "transfer-encoding" => h.chunked = v.contains("chunked"),
                "connection" => h.close = v.contains("close"),
                _ => {}
            }
        }
    }
    Ok(h)
}

/// Incremental `Transfer-Encoding: chunked` decoder.
#[derive(Default)]
pub(crate) struct Chunked {
    /// Bytes left in the current chunk's data.
    remaining: usize,
    /// 0: expecting a size line, 1: in data, 2: expecting the CRLF after data, 3: done.
    state: u8,
}

impl Chunked {
    /// Moves what can be decoded from `raw` (consumed) to `out`; true once
    /// the last chunk (and its trailer section) has been read.
    pub(crate) fn feed(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<bool, String> {
        let mut pos = 0;
        loop {
            match self.state {
                0 => {
                    let Some(i) = find(&raw[pos..], b"\r\n") else {
                        break;
                    };
                    let line = String::from_utf8_lossy(&raw[pos..pos + i]).to_string();
                    let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| format!("bad chunk size {line:?}"))?;
                    pos += i + 2;
                    if size == 0 {
                        self.state = 4;
                    } else {
                        self.remaining = size;
                        self.state = 1;
                    }
                }
                1 => {
                    let take = self.remaining.min(raw.len() - pos);
                    if take == 0 {
                        break;
                    }
                    out.extend_from_slice(&raw[pos..pos + take]);
                    pos += take;
                    self.remaining -= take;
                    if self.remaining == 0 {
                        self.state = 2;
                    }
                }
                2 => {
                    if raw.len() - pos < 2 {
                        break;
                    }
                    if &raw[pos..pos + 2] != b"\r\n" {
                        return Err("chunk not followed by CRLF".into());
                    }
                    pos += 2;
                    self.state = 0;
                }
                4 => {
                    // Trailer section: header lines up to an empty line.
                    let Some(i) = find(&raw[pos..], b"\r\n") else {
                        break;
                    };
                    pos += i + 2;
                    if i == 0 {
                        self.state = 3;
                    }
                }
                _ => break,
            }
        }
        raw.drain(..pos);
        Ok(self.state == 3)
    }
}

pub(crate) fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

pub(crate) async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut tmp = [0u8; 4096];
    let n = s.read(&mut tmp).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed".into());
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}
