//! Slow consumers: a stream that does not read ends RESOURCE_EXHAUSTED
//! and resumes without loss; a stalled connection is closed after
//! `grpc.stall_timeout`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rtgate::proto::gateway_client::GatewayClient;
use rtgate::proto::server_frame::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Uri;
use tonic::Code;

use crate::helpers::*;
use crate::support::*;

/// A TCP connection that records when the server closed it (a read saw the
/// end of the stream or an error).
struct Watched {
    tcp: TcpStream,
    closed: Arc<watch::Sender<bool>>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if let Poll::Ready(res) = &r {
            if res.is_err() || buf.filled().len() == before {
                self.closed.send_replace(true);
            }
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Connects tonic through [`Watched`] TCP connections.
#[derive(Clone)]
struct WatchedConnector {
    addr: SocketAddr,
    closed: Arc<watch::Sender<bool>>,
}

impl tonic::codegen::Service<Uri> for WatchedConnector {
    type Response = TokioIo<Watched>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Watched>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, closed) = (self.addr, Arc::clone(&self.closed));
        Box::pin(async move { Ok(TokioIo::new(Watched { tcp: TcpStream::connect(addr).await?, closed })) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_ends_resource_exhausted_and_resumes_without_loss() {
    const N: usize = 2000;
    let s = TestServer::start("[limits]\noutbox_capacity = 8\n[grpc]\nstall_timeout = \"60s\"\n").await;
    let t = "grpc.slow";
    // The slow subscriber: its own connection with a 1 KiB stream window,
    // and it does not read.
    let slow_ch = within(endpoint(&s).initial_stream_window_size(1024).connect()).await.expect("connect");
    let mut slow_client = GatewayClient::new(slow_ch);
    let mut slow = subscribe(&mut slow_client, &[t], "").await;

    // A healthy subscriber on another connection reads everything; the
    // publisher waits for it after each message, so it never lags.
    let mut hc = client(&s).await;
    let mut healthy = subscribe(&mut hc, &[t], "").await;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        for _ in 0..N {
            let m = next_msg(&mut healthy).await;
            seen_tx.send(m.id.clone()).unwrap();
            got.push(m);
        }
        (healthy, got)
    });
    let mut pc = client(&s).await;
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        let id = publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id;
        let seen = within(seen_rx.recv()).await.expect("the healthy subscriber stopped");
        assert_eq!(seen, id);
        published.push(id);
    }
    let (mut healthy, got) = within(reader).await.expect("reader");
    assert_eq!(ids(&got), published, "the healthy subscriber got everything, in order");

    // Read at last: what was in flight, then RESOURCE_EXHAUSTED.
    let (prefix, st) = end_of(&mut slow).await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    let k = prefix.len();
    assert!(k > 0, "the slow subscriber got nothing before the end");
    assert!(k < N, "the slow subscriber was not cut off");
    assert_eq!(ids(&prefix), published[..k], "what it got is a prefix");

    // Resuming from its last cursor gives every remaining message.
    let mut back = subscribe(&mut hc, &[t], &prefix[k - 1].cursor).await;
    let rest = msgs(&mut back, N - k).await;
    assert_eq!(ids(&rest), published[k..], "the rest, with no loss");
    for (m, i) in rest.iter().zip(k..) {
        assert_eq!(m.data, format!(r#"{{"i":{i}}}"#).as_bytes());
    }
    assert_quiet(&mut pc, &[t], &mut [&mut back, &mut healthy]).await;
    s.stop().await;
}

/// The same on Connect: a stream that does not read while its topic is
/// busy ends with RESOURCE_EXHAUSTED once read; a new Connect subscribing
/// `after` the last id it got receives the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connect_stream_ends_resource_exhausted_and_resumes_without_loss() {
    const N: usize = 1000;
    let s = TestServer::start("[limits]\noutbox_capacity = 8\n[grpc]\nstall_timeout = \"60s\"\n").await;
    let t = "grpc.slow.connect";
    let slow_ch = within(endpoint(&s).initial_stream_window_size(1024).connect()).await.expect("connect");
    let mut slow_client = GatewayClient::new(slow_ch);
    let mut slow = Conn::open(&mut slow_client).await;
    let (_, ack) = slow.subscribe(t, None, "s").await;
    assert!(ack.recovered);

    let mut pc = client(&s).await;
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        published.push(publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    let (frames, st) = slow.end().await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    let got: Vec<String> = frames
        .into_iter()
        .map(|f| match f {
            Frame::Message(m) => m.id,
            f => panic!("unexpected {f:?}"),
        })
        .collect();
    let k = got.len();
    assert!(k > 0 && k < N, "{k} messages before the end");
    assert_eq!(got, published[..k], "what it got is a prefix");

    let mut back = Conn::open(&mut pc).await;
    let (before, ack) = back.subscribe(t, Some(&got[k - 1]), "r").await;
    assert!(before.is_empty() && ack.recovered, "{before:?} {ack:?}");
    assert_eq!(ids(&back.messages(N - k).await), published[k..], "the rest, with no loss");
    back.ping_quiet("q").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_connection_is_closed_after_stall_timeout() {
    const N: usize = 300;
    let s = TestServer::start("[limits]\noutbox_capacity = 8\n[grpc]\nstall_timeout = \"1s\"\n").await;
    let t = "grpc.stall";
    let (closed_tx, mut closed_rx) = watch::channel(false);
    let connector = WatchedConnector { addr: s.addr, closed: Arc::new(closed_tx) };
    let ch = within(endpoint(&s).initial_stream_window_size(1024).connect_with_connector(connector))
        .await
        .expect("connect");
    let mut stalled_client = GatewayClient::new(ch);
    let mut stalled = subscribe(&mut stalled_client, &[t], "").await;
    let mut pc = client(&s).await;
    let started = Instant::now();
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        published.push(publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    // The stream overflowed and was closed as slow; its client still does
    // not read, so after stall_timeout the server closes the connection.
    within(closed_rx.wait_for(|closed| *closed)).await.expect("watch");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before stall_timeout: {:?}",
        started.elapsed()
    );

    let (prefix, st) = end_of(&mut stalled).await;
    assert_ne!(st.code(), Code::ResourceExhausted, "the connection was closed, not the stream ended: {st:?}");
    let k = prefix.len();
    assert!(k > 0 && k < N, "{k} messages before the cut");
    assert_eq!(ids(&prefix), published[..k]);

    let mut c = client(&s).await;
    let mut back = subscribe(&mut c, &[t], &prefix[k - 1].cursor).await;
    assert_eq!(ids(&msgs(&mut back, N - k).await), published[k..], "the rest, with no loss");
    assert_quiet(&mut c, &[t], &mut [&mut back]).await;
    s.stop().await;
}
