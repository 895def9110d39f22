//! The WebSocket under the connection loop, on our own codec
//! ([`codec`](super::codec)): the client's frames are decoded from what was
//! read, with no buffer kept once it is decoded; every server frame is a
//! complete encoded frame in one write queue, as many as are queued written
//! with one vectored write.
//!
//! Server frames are never masked (RFC 6455 §5.1), so a `message` frame is
//! the same bytes for every single-topic subscriber of a topic: it is
//! encoded once per message ([`Wire::WsSingle`](crate::core::message::Wire))
//! and shared. A subscriber with several frames queued writes them with one
//! `writev` instead of one `write` each, and keeps no write buffer: queued
//! frames are references to the shared bytes, released once written.
//!
//! Control frames (a pong for the client's ping, the close answer) and op
//! replies go into the same queue, so a frame is never interleaved with
//! another. Reading first writes what is queued: a client that does not
//! read cannot make pongs pile up (at most one is queued at a time).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::error::ProtocolError;
use tungstenite::{Error as WsError, Message as WsMessage};

use super::codec::{self, Decoder, CHUNK};

/// Frames written per `writev` at most (Linux takes up to 1024).
const MAX_IOV: usize = 64;

/// What the connection loop needs of a WebSocket: a stream of the client's
/// messages, a sink for control frames and replies, and a queue of
/// complete pre-encoded frames. [`Conn`] in production, channels in tests.
pub(crate) trait Socket:
    Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Unpin + Send
{
    /// Queues one complete frame (header and payload), written after
    /// everything sent before it by the next [`Socket::poll_write_queued`].
    fn queue(&mut self, frame: Bytes);

    /// Writes every queued frame; ready once all are written.
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Writes every queued frame.
pub(crate) async fn write_queued<S: Socket>(socket: &mut S) -> io::Result<()> {
    std::future::poll_fn(|cx| socket.poll_write_queued(cx)).await
}

/// A server-side WebSocket over `T` (the upgraded connection).
pub(crate) struct Conn<T> {
    io: T,
    decoder: Decoder,
    /// Frames not yet completely written; the first one may be partly.
    queued: SmallVec<[Bytes; 1]>,
    /// Bytes of `queued[0]` already written.
    written: usize,
    /// A close frame was queued: nothing else is sent.
    sent_close: bool,
    /// The client's close frame arrived, or reading failed or ended:
    /// nothing more is read.
    read_done: bool,
}

impl<T> Conn<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// A WebSocket over an upgraded connection; the client's frames and
    /// messages may carry `max_frame` / `max_message` payload bytes.
    pub(crate) fn new(io: T, max_frame: usize, max_message: usize) -> Self {
        Conn {
            io,
            decoder: Decoder::new(max_frame, max_message),
            queued: SmallVec::new(),
            written: 0,
            sent_close: false,
            read_done: false,
        }
    }

    /// Bytes the reader holds (tests bound what a connection keeps).
    #[cfg(test)]
    pub(crate) fn read_held(&self) -> usize {
        self.decoder.held()
    }

    /// Writes the queued frames straight to the connection, several per
    /// vectored write.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queued.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, frame) in self.queued.iter().take(MAX_IOV).enumerate() {
                let from = if i == 0 { self.written } else { 0 };
                slices[n] = IoSlice::new(&frame[from..]);
                n += 1;
            }
            let io = Pin::new(&mut self.io);
            // One frame: a plain `send` (cheaper in the kernel than `writev`).
            let mut wrote = if n == 1 {
                ready!(io.poll_write(cx, &slices[0]))?
            } else {
                ready!(io.poll_write_vectored(cx, &slices[..n]))?
            };
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            // Drop what is written completely; remember how far into the
            // next frame the write got.
            let mut done = 0;
            for frame in &self.queued {
                let left = frame.len() - if done == 0 { self.written } else { 0 };
                if wrote < left {
                    break;
                }
                wrote -= left;
                done += 1;
                self.written = 0;
            }
            self.written += wrote;
            self.queued.drain(..done);
        }
        if self.queued.spilled() {
            // Keep no buffer between bursts.
            self.queued = SmallVec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more of the client's bytes into the decoder; ready with how
    /// many (0: the client closed its side).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = self.decoder.read_size();
        if want > 0 {
            // A large frame: straight into the decoder's buffer.
            let tail = self.decoder.tail(want);
            let mut read = ReadBuf::new(tail);
            let polled = Pin::new(&mut self.io).poll_read(cx, &mut read);
            let n = read.filled().len();
            self.decoder.filled(want, n);
            ready!(polled)?;
            return Poll::Ready(Ok(n));
        }
        // Otherwise through a stack buffer: nothing is allocated while the
        // client sends nothing, and only what arrived is kept.
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let got = read.filled();
        self.decoder.extend(got);
        Poll::Ready(Ok(got.len()))
    }

    /// Answers what needs an answer: a ping with its pong, the client's
    /// close with ours (its code echoed).
    fn answer(&mut self, message: &WsMessage) {
        if self.sent_close {
            return;
        }
        match message {
            WsMessage::Ping(p) => self.queued.push(codec::encode(&WsMessage::Pong(p.clone()))),
            WsMessage::Close(c) => {
                let reply = c.as_ref().map(|c| tungstenite::protocol::CloseFrame {
                    code: c.code,
                    reason: tungstenite::Utf8Bytes::from_static(""),
                });
                self.queued.push(codec::encode(&WsMessage::Close(reply)));
                self.sent_close = true;
            }
            _ => {}
        }
    }
}

impl<T> Socket for Conn<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn queue(&mut self, frame: Bytes) {
        self.queued.push(frame);
    }

    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drain(cx)
    }
}

impl<T> Stream for Conn<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Item = Result<WsMessage, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // What is queued goes first (the pong of the last ping, too): a
        // client that stops reading stops being read.
        if let Err(e) = ready!(this.poll_drain(cx)) {
            this.read_done = true;
            return Poll::Ready(Some(Err(WsError::Io(e))));
        }
        loop {
            if this.read_done {
                return Poll::Ready(None);
            }
            match this.decoder.decode() {
                Ok(Some(message)) => {
                    this.answer(&message);
                    if matches!(message, WsMessage::Close(_)) {
                        this.read_done = true;
                    }
                    if !this.queued.is_empty() {
                        // Send the answer now if the socket takes it; the
                        // next read or write finishes it otherwise.
                        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                            this.read_done = true;
                            return Poll::Ready(Some(Err(WsError::Io(e))));
                        }
                    }
                    return Poll::Ready(Some(Ok(message)));
                }
                Ok(None) => {}
                Err(e) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) => {
                    // The client's side ended without a close frame.
                    this.read_done = true;
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                Err(e) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(WsError::Io(e))));
                }
            }
        }
    }
}

impl<T> Sink<WsMessage> for Conn<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        ready!(self.get_mut().poll_drain(cx)).map_err(WsError::Io)?;
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: WsMessage) -> Result<(), WsError> {
        let this = self.get_mut();
        if this.sent_close {
            return Err(ProtocolError::SendAfterClosing.into());
        }
        this.sent_close = matches!(item, WsMessage::Close(_));
        this.queued.push(codec::encode(&item));
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx)).map_err(WsError::Io)?;
        Pin::new(&mut this.io).poll_flush(cx).map_err(WsError::Io)
    }

    /// Writes what is queued, then ends the connection's sending side.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx)).map_err(WsError::Io)?;
        Pin::new(&mut this.io).poll_shutdown(cx).map_err(WsError::Io)
    }
}

/// A complete unmasked, unfragmented text frame carrying `payload`.
pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    codec::frame(codec::OP_TEXT, payload)
}

/// A complete text frame whose payload `write` appends (about `hint`
/// bytes), encoded into one buffer: the payload is written after room for
/// the longest header, and the header goes right before it once its length
/// is known (no second copy of the payload).
pub(crate) fn encode_text_frame(hint: usize, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    const ROOM: usize = codec::MAX_SERVER_HEADER;
    let mut out = Vec::with_capacity(ROOM + hint);
    out.resize(ROOM, 0);
    write(&mut out);
    let header = codec::header(codec::OP_TEXT, out.len() - ROOM);
    let start = ROOM - header.len();
    out[start..ROOM].copy_from_slice(&header);
    let mut frame = Bytes::from(out);
    bytes::Buf::advance(&mut frame, start);
    frame
}

/// The payload of a frame made by [`text_frame`] (tests decode what the
/// loop queued).
#[cfg(test)]
pub(crate) fn text_payload(frame: &[u8]) -> &[u8] {
    match frame[1] {
        126 => &frame[4..],
        127 => &frame[10..],
        _ => &frame[2..],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::ws::codec::tests::client_frame;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A connection over an in-memory pipe holding `pipe` bytes each way,
    /// and the client's end.
    fn pair(pipe: usize) -> (Conn<DuplexStream>, DuplexStream) {
        let (server, client) = tokio::io::duplex(pipe);
        (Conn::new(server, 1 << 20, 1 << 20), client)
    }

    /// Server frames in `bytes`: (opcode, payload).
    fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = vec![];
        while !bytes.is_empty() {
            assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
            let (len, at) = match bytes[1] {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
                n => (usize::from(n), 2),
            };
            out.push((bytes[0] & 0x0F, bytes[at..at + len].to_vec()));
            bytes = &bytes[at + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_large_frame_leaves_no_read_buffer_behind() {
        let (mut conn, mut client) = pair(1 << 20);
        let big = "x".repeat(60_000);
        let mut bytes = client_frame(0x81, big.as_bytes());
        bytes.extend(client_frame(0x81, b"small"));
        client.write_all(&bytes).await.unwrap();
        let Some(Ok(WsMessage::Text(t))) = conn.next().await else { panic!("a text message") };
        assert_eq!(t.len(), 60_000);
        let Some(Ok(WsMessage::Text(t))) = conn.next().await else { panic!("a text message") };
        assert_eq!(t.as_str(), "small");
        assert_eq!(conn.read_held(), 0, "nothing is kept once everything is decoded");
    }

    #[tokio::test]
    async fn the_clients_close_is_answered_with_its_code_and_ends_reading() {
        let (mut conn, mut client) = pair(4096);
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        client.write_all(&client_frame(0x88, &close)).await.unwrap();
        let Some(Ok(WsMessage::Close(Some(c)))) = conn.next().await else { panic!("a close") };
        assert_eq!((u16::from(c.code), c.reason.as_str()), (1000, "bye"));
        assert!(conn.next().await.is_none(), "nothing is read after the close");
        assert!(conn.send(WsMessage::text("late")).await.is_err(), "nothing is sent after the close");
        SinkExt::close(&mut conn).await.unwrap();
        let mut got = vec![];
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(server_frames(&got), [(0x8, 1000u16.to_be_bytes().to_vec())]);
    }

    #[tokio::test]
    async fn pings_are_answered_with_their_payload_in_order_with_replies() {
        let (mut conn, mut client) = pair(4096);
        let mut bytes = client_frame(0x89, b"p1");
        bytes.extend(client_frame(0x81, b"hello"));
        bytes.extend(client_frame(0x89, b"p2"));
        client.write_all(&bytes).await.unwrap();
        assert!(matches!(conn.next().await, Some(Ok(WsMessage::Ping(_)))));
        assert!(matches!(conn.next().await, Some(Ok(WsMessage::Text(_)))));
        conn.send(WsMessage::text("reply")).await.unwrap();
        assert!(matches!(conn.next().await, Some(Ok(WsMessage::Ping(_)))));
        conn.queue(text_frame(b"queued"));
        write_queued(&mut conn).await.unwrap();
        drop(conn);
        let mut got = vec![];
        client.read_to_end(&mut got).await.unwrap();
        let want: Vec<(u8, Vec<u8>)> = vec![
            (0xA, b"p1".to_vec()),
            (0x1, b"reply".to_vec()),
            (0xA, b"p2".to_vec()),
            (0x1, b"queued".to_vec()),
        ];
        assert_eq!(server_frames(&got), want);
    }

    /// A client that sends pings and never reads their pongs stops being
    /// read once what it has not read fills the pipe: the server never
    /// holds more than one pong for it, however many pings it sends.
    #[test]
    fn a_client_that_does_not_read_stops_being_read() {
        const PIPE: usize = 256;
        let (server, mut client) = tokio::io::duplex(PIPE);
        let mut conn = Conn::new(server, 1 << 20, 1 << 20);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ping = client_frame(0x89, b"x");
        let pings = ping.repeat(10_000);
        let (mut off, mut read) = (0usize, 0usize);
        loop {
            // The client writes pings while the pipe takes them...
            let mut wrote = false;
            while let Poll::Ready(Ok(n)) = Pin::new(&mut client).poll_write(&mut cx, &pings[off..]) {
                assert!(n > 0 && off + n < pings.len(), "the server kept reading a client that never reads");
                off += n;
                wrote = true;
            }
            // ...and the server reads while it can answer.
            let mut progressed = false;
            while let Poll::Ready(m) = Pin::new(&mut conn).poll_next(&mut cx) {
                assert!(matches!(m, Some(Ok(WsMessage::Ping(_)))), "{m:?}");
                read += 1;
                progressed = true;
                assert!(conn.queued.len() <= 1, "at most one pong waits");
            }
            if !wrote && !progressed {
                break;
            }
        }
        let sent = off / ping.len();
        // Pongs are 3 bytes: the pipe to the client holds PIPE / 3 of them,
        // one more waits in the queue. Of the pings, a pipe's worth is in
        // flight and at most one read's worth waits in the decoder.
        assert!(read <= PIPE / 3 + 1, "{read} pings answered");
        assert!(sent <= read + 2 * PIPE / ping.len() + 1, "{sent} sent, {read} read");
        assert!(conn.read_held() <= CHUNK, "{} bytes held", conn.read_held());
        // Once the client reads its pongs, the server reads on.
        let mut got = vec![];
        let mut buf = [0u8; PIPE];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut client).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => got.extend_from_slice(rb.filled()),
                _ => break,
            }
        }
        assert!(got.len() >= 3 * (read - 1), "{} bytes of pongs for {read} pings", got.len());
        assert_eq!(&got[..3], [0x8A, 1, b'x']);
        assert!(matches!(Pin::new(&mut conn).poll_next(&mut cx), Poll::Ready(Some(Ok(WsMessage::Ping(_))))));
    }

    #[test]
    fn headers_use_the_shortest_length_form() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let payload = vec![b'x'; len];
            let frame = text_frame(&payload);
            assert_eq!(frame.len(), len + header, "{len}");
            assert_eq!(frame[0], 0x81);
            assert_eq!(text_payload(&frame).len(), len);
        }
        assert_eq!(&text_frame(b"{}")[..], b"\x81\x02{}");
        assert_eq!(&text_frame(&[b'a'; 300])[..4], &[0x81, 126, 1, 44]);
    }
}
