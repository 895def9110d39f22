//! HTTP/2 keepalive: a peer that never answers the server's PING is
//! dropped.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::*;
use crate::support::*;

/// Reads one HTTP/2 frame: (type, flags, payload).
async fn h2_frame(tcp: &mut TcpStream) -> io::Result<(u8, u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0; len];
    tcp.read_exact(&mut payload).await?;
    Ok((head[3], head[4], payload))
}

/// `http2.keepalive_interval` / `keepalive_timeout`: an HTTP/2 client that
/// never answers the server's PING is disconnected once the timeout passes
/// after the ping (a raw HTTP/2 connection, so nothing answers for us).
#[tokio::test]
async fn http2_keepalive_pings_and_drops_a_peer_that_never_answers() {
    use tokio::io::AsyncWriteExt;
    const PING: u8 = 0x6;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    let s =
        TestServer::start("[http2]\nkeepalive_interval = \"300ms\"\nkeepalive_timeout = \"400ms\"\n").await;
    let mut tcp = within(TcpStream::connect(s.addr)).await.expect("connect");
    // Preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface");
    let mut pinged = None;
    let closed = within(async {
        loop {
            match h2_frame(&mut tcp).await {
                Ok((SETTINGS, flags, _)) if flags & 1 == 0 => {
                    // Acknowledge the server's settings, as a live client would.
                    tcp.write_all(b"\0\0\0\x04\x01\0\0\0\0").await.expect("settings ack");
                }
                Ok((PING, flags, payload)) if flags & 1 == 0 => {
                    assert_eq!(payload.len(), 8, "PING payload");
                    pinged.get_or_insert_with(Instant::now);
                }
                Ok((GOAWAY, _, _)) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    })
    .await;
    let pinged = pinged.expect("the server never sent a keepalive PING");
    let waited = closed.duration_since(pinged);
    assert!(waited >= Duration::from_millis(350), "closed {waited:?} after the unanswered PING");
    // The port still serves others.
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200);
    s.stop().await;
}
