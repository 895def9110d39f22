//! A small HTTP/1.1 proxy in front of the gateway for the browser tests
//! (also a plain page server: a page that talks to the gateway directly
//! never sends the proxy anything but its own `GET /`).
//! It serves the test page and (optionally) fresh tokens itself, forwards
//! everything else to the gateway one request per connection (it asks the
//! gateway for `Connection: close`, so every request of the browser passes
//! through here and is judged by its head), and misbehaves on purpose by
//! [`Mode`]: refusing WebSocket upgrades like a proxy that does not speak
//! WebSocket, or holding SSE responses like a buffering proxy. When the
//! gateway is down it answers 502, so a restart behind it is seen by the
//! browser as the server being away, not as a transport being blocked.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used, clippy::disallowed_types)]

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How the proxy treats what it forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Everything forwarded, WebSocket upgrades included.
    Pass,
    /// WebSocket upgrades answered 403; the rest forwarded.
    NoUpgrade,
    /// Upgrades refused, and an SSE request answered with the stream's
    /// status and headers but never a byte of its body.
    Buffering,
}

/// Makes a token for `GET /token` (the page's token function asks it).
pub type Minter = Arc<dyn Fn() -> String + Send + Sync>;

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free port in front of `127.0.0.1:upstream`; `page` is
    /// served at `/`.
    pub async fn start(
        upstream: u16,
        mode: Mode,
        page: impl Into<Arc<str>>,
        minter: Option<Minter>,
    ) -> Proxy {
        let page: Arc<str> = page.into();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { continue };
                let (page, minter) = (Arc::clone(&page), minter.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, upstream, mode, &page, minter).await;
                });
            }
        });
        Proxy { port, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// The request head (up to the blank line) and whatever came after it.
async fn read_head(sock: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        if buf.len() > 64 * 1024 {
            return Ok(None);
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(sock: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

async fn serve(
    mut sock: TcpStream,
    upstream: u16,
    mode: Mode,
    page: &str,
    minter: Option<Minter>,
) -> std::io::Result<()> {
    let Some((head, rest)) = read_head(&mut sock).await? else { return Ok(()) };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let upgrade = headers.iter().any(|h| {
        let lower = h.to_ascii_lowercase();
        lower.starts_with("upgrade:") && lower.contains("websocket")
    });

    if path == "/" || path.starts_with("/?") {
        return answer(&mut sock, "200 OK", "text/html; charset=utf-8", page).await;
    }
    if path == "/favicon.ico" {
        return answer(&mut sock, "404 Not Found", "text/plain", "").await;
    }
    if path == "/token" {
        return match &minter {
            Some(m) => answer(&mut sock, "200 OK", "text/plain", &m()).await,
            None => answer(&mut sock, "404 Not Found", "text/plain", "").await,
        };
    }
    if upgrade && mode != Mode::Pass {
        return answer(&mut sock, "403 Forbidden", "text/plain", "").await;
    }
    if mode == Mode::Buffering && path.starts_with("/v1/sse") {
        sock.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n",
        )
        .await?;
        // Held until the browser gives up on it.
        let mut sink = [0u8; 512];
        while sock.read(&mut sink).await? > 0 {}
        return Ok(());
    }

    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return answer(&mut sock, "502 Bad Gateway", "text/plain", "gateway down").await;
    };
    // The head again, without the browser's connection headers: one request
    // per connection (an upgrade keeps its own).
    let mut out = String::with_capacity(head.len() + 32);
    out.push_str(&request_line);
    out.push_str("\r\n");
    for h in &headers {
        let lower = h.to_ascii_lowercase();
        if !upgrade && (lower.starts_with("connection:") || lower.starts_with("keep-alive:")) {
            continue;
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    if !upgrade {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    up.write_all(out.as_bytes()).await?;
    up.write_all(&rest).await?;

    // Both ways until either side ends; then both sockets close, so a
    // gateway that dies takes the browser's connection with it.
    let (mut cr, mut cw) = sock.split();
    let (mut ur, mut uw) = up.split();
    tokio::select! {
        _ = tokio::io::copy(&mut cr, &mut uw) => {}
        _ = tokio::io::copy(&mut ur, &mut cw) => {}
    }
    Ok(())
}
