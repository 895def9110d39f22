//! Slow consumers: a stream that does not read ends RESOURCE_EXHAUSTED
//! and resumes without loss; a stream still not read after
//! `grpc.stall_timeout` is reset (its connection stays); a connection whose
//! client reads nothing at all is closed (HTTP/2 keepalive).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
/// end of the stream or an error). Once `frozen`, the client reads nothing
/// at all: what arrives is discarded (still watching for the close), so
/// its HTTP/2 stack answers no PING and grants no window.
struct Watched {
    tcp: TcpStream,
    closed: Arc<watch::Sender<bool>>,
    frozen: Arc<AtomicBool>,
    resets: Arc<watch::Sender<usize>>,
    scan: FrameScan,
}

/// Follows the frames the server sends to count its `RST_STREAM`s.
#[derive(Default)]
struct FrameScan {
    head: Vec<u8>,
    skip: usize,
}

impl FrameScan {
    /// Returns how many `RST_STREAM` frames start in `data`.
    fn feed(&mut self, mut data: &[u8]) -> usize {
        let mut resets = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() == 9 {
                let h = &self.head;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                resets += usize::from(h[3] == 3);
                self.head.clear();
            }
        }
        resets
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.frozen.load(Ordering::Acquire) {
            let mut sink = [0u8; 8192];
            loop {
                let mut discard = ReadBuf::new(&mut sink);
                match Pin::new(&mut self.tcp).poll_read(cx, &mut discard) {
                    Poll::Ready(Ok(())) if !discard.filled().is_empty() => continue,
                    Poll::Ready(_) => {
                        self.closed.send_replace(true);
                        return Poll::Pending;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if let Poll::Ready(res) = &r {
            if res.is_err() || buf.filled().len() == before {
                self.closed.send_replace(true);
            }
            let resets = self.scan.feed(&buf.filled()[before..]);
            if resets > 0 {
                self.resets.send_modify(|n| *n += resets);
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

/// Connects tonic through [`Watched`] TCP connections; counts them.
#[derive(Clone)]
struct WatchedConnector {
    addr: SocketAddr,
    closed: Arc<watch::Sender<bool>>,
    frozen: Arc<AtomicBool>,
    connects: Arc<AtomicUsize>,
    /// `RST_STREAM` frames received.
    resets: Arc<watch::Sender<usize>>,
}

impl WatchedConnector {
    fn new(s: &TestServer, closed: watch::Sender<bool>) -> Self {
        WatchedConnector {
            addr: s.addr,
            closed: Arc::new(closed),
            frozen: Arc::default(),
            connects: Arc::default(),
            resets: Arc::new(watch::channel(0).0),
        }
    }
}

impl tonic::codegen::Service<Uri> for WatchedConnector {
    type Response = TokioIo<Watched>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Watched>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, closed, frozen) = (self.addr, Arc::clone(&self.closed), Arc::clone(&self.frozen));
        let resets = Arc::clone(&self.resets);
        self.connects.fetch_add(1, Ordering::AcqRel);
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            Ok(TokioIo::new(Watched { tcp, closed, frozen, resets, scan: FrameScan::default() }))
        })
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

/// A stream closed as slow whose client's HTTP/2 stack reads the connection
/// but not the stream: after `grpc.stall_timeout` that stream is reset
/// (CANCELLED), and the connection stays, serving the resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_stream_is_reset_after_stall_timeout_and_its_connection_stays() {
    const N: usize = 300;
    let s = TestServer::start("[limits]\noutbox_capacity = 8\n[grpc]\nstall_timeout = \"1s\"\n").await;
    let t = "grpc.stall";
    let (closed_tx, closed_rx) = watch::channel(false);
    let connector = WatchedConnector::new(&s, closed_tx);
    let connects = Arc::clone(&connector.connects);
    let mut resets = connector.resets.subscribe();
    let ch = within(endpoint(&s).initial_stream_window_size(1024).connect_with_connector(connector))
        .await
        .expect("connect");
    let mut stalled_client = GatewayClient::new(ch);
    let mut stalled = subscribe(&mut stalled_client, &[t], "").await;
    let mut pc = client(&s).await;
    // It reads one message (a cursor to resume from), then stops.
    let first = publish(&mut pc, t, r#"{"first":true}"#).await.id;
    let got = next_msg(&mut stalled).await;
    assert_eq!(got.id, first);
    let started = Instant::now();
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        published.push(publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    // The stream overflowed and was closed as slow; its client still does
    // not read it, so after stall_timeout the server resets it.
    within(resets.wait_for(|n| *n == 1)).await.expect("watch");
    let (prefix, st) = end_of(&mut stalled).await;
    assert_eq!(st.code(), Code::Cancelled, "the stream was reset: {st:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "reset before stall_timeout: {:?}",
        started.elapsed()
    );
    let k = prefix.len();
    assert!(k < N, "{k} messages before the cut");
    assert_eq!(ids(&prefix), published[..k]);

    // The same connection serves the resume: no reconnect, never closed.
    let cursor = prefix.last().map_or(got.cursor, |m| m.cursor.clone());
    let mut back = subscribe(&mut stalled_client, &[t], &cursor).await;
    assert_eq!(ids(&msgs(&mut back, N - k).await), published[k..], "the rest, with no loss");
    assert_quiet(&mut pc, &[t], &mut [&mut back]).await;
    assert_eq!(connects.load(Ordering::Acquire), 1, "the client had to reconnect");
    assert!(!*closed_rx.borrow(), "the connection was closed");
    s.stop().await;
}

/// A client that reads nothing at all on its connection (no PING answer,
/// no window): its stream is closed as slow, and the connection itself is
/// closed by the HTTP/2 keepalive. The messages are not lost: a resume from
/// the last cursor it got receives the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_of_a_client_that_reads_nothing_is_closed() {
    const N: usize = 300;
    let s = TestServer::start(
        "[limits]\noutbox_capacity = 8\n[grpc]\nstall_timeout = \"1s\"\n\
         [http2]\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\n",
    )
    .await;
    let t = "grpc.frozen";
    let (closed_tx, mut closed_rx) = watch::channel(false);
    let connector = WatchedConnector::new(&s, closed_tx);
    let frozen = Arc::clone(&connector.frozen);
    let ch = within(endpoint(&s).connect_with_connector(connector)).await.expect("connect");
    let mut frozen_client = GatewayClient::new(ch);
    let mut stream = subscribe(&mut frozen_client, &[t], "").await;
    let mut pc = client(&s).await;
    let first = publish(&mut pc, t, r#"{"first":true}"#).await.id;
    let got = next_msg(&mut stream).await;
    assert_eq!(got.id, first);
    frozen.store(true, Ordering::Release);
    let mut published = Vec::with_capacity(N);
    for i in 0..N {
        published.push(publish(&mut pc, t, &format!(r#"{{"i":{i}}}"#)).await.id);
    }
    within(closed_rx.wait_for(|closed| *closed)).await.expect("watch");

    let mut back = subscribe(&mut pc, &[t], &got.cursor).await;
    assert_eq!(ids(&msgs(&mut back, N).await), published, "the rest, with no loss");
    assert_quiet(&mut pc, &[t], &mut [&mut back]).await;
    s.stop().await;
}
