//! The WebSocket under the connection loop: tungstenite reads the client's
//! frames and answers its pings; the server's data frames are complete,
//! pre-encoded frames written by [`Conn`] itself, as many as are queued in
//! one vectored write.
//!
//! Server frames are never masked (RFC 6455 §5.1), so a `message` frame is
//! the same bytes for every single-topic subscriber of a topic: it is
//! encoded once per message ([`Wire::WsSingle`](crate::core::message::Wire))
//! and shared. A subscriber with several frames queued writes them with one
//! `writev` instead of one `write` each, and keeps no write buffer: queued
//! frames are references to the shared bytes, released once written.
//!
//! Ordering between the two writers (tungstenite's control frames and
//! replies, our data frames) is kept by one rule: each first drains what the
//! other has pending. A data frame is never interleaved with a control
//! frame, also after a write was abandoned half-way (the connection is then
//! ending, and the close frame waits for the rest of the data frame).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tungstenite::{Error as WsError, Message as WsMessage};

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
    ws: WebSocketStream<T>,
    /// Frames not yet completely written; the first one may be partly.
    queued: SmallVec<[Bytes; 1]>,
    /// Bytes of `queued[0]` already written.
    written: usize,
    /// tungstenite may hold bytes it has not written yet (a reply sent, or a
    /// pong or close answer it queued while reading).
    ws_dirty: bool,
}

impl<T> Conn<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Wraps an established WebSocket.
    pub(crate) fn new(ws: WebSocketStream<T>) -> Self {
        Conn { ws, queued: SmallVec::new(), written: 0, ws_dirty: false }
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
            let io = Pin::new(self.ws.get_mut());
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

    /// Lets tungstenite write what it holds before a data frame goes out.
    fn poll_ws_flushed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ws_dirty {
            ready!(Pin::new(&mut self.ws).poll_flush(cx)).map_err(ws_io)?;
            self.ws_dirty = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// tungstenite's error as an I/O error (the loop only needs to know it failed).
fn ws_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other),
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
        ready!(self.poll_ws_flushed(cx))?;
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
        // Reading may make tungstenite answer (a pong): never in the middle
        // of a data frame.
        if let Err(e) = ready!(this.poll_drain(cx)) {
            return Poll::Ready(Some(Err(WsError::Io(e))));
        }
        let next = ready!(Pin::new(&mut this.ws).poll_next(cx));
        this.ws_dirty = true;
        Poll::Ready(next)
    }
}

impl<T> Sink<WsMessage> for Conn<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx)).map_err(WsError::Io)?;
        Pin::new(&mut this.ws).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: WsMessage) -> Result<(), WsError> {
        let this = self.get_mut();
        this.ws_dirty = true;
        Pin::new(&mut this.ws).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx)).map_err(WsError::Io)?;
        ready!(Pin::new(&mut this.ws).poll_flush(cx))?;
        this.ws_dirty = false;
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx)).map_err(WsError::Io)?;
        Pin::new(&mut this.ws).poll_close(cx)
    }
}

/// Bytes of the longest frame header.
const MAX_HEADER: usize = 10;

/// A complete unmasked, unfragmented text frame carrying `payload`.
pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    encode_text_frame(payload.len(), |out| out.extend_from_slice(payload))
}

/// A complete text frame whose payload `write` appends (about `hint`
/// bytes), encoded into one buffer: the payload is written after room for
/// the longest header, and the header goes right before it once its length
/// is known (no second copy of the payload).
pub(crate) fn encode_text_frame(hint: usize, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::with_capacity(MAX_HEADER + hint);
    out.resize(MAX_HEADER, 0);
    write(&mut out);
    let mut header = SmallVec::<[u8; MAX_HEADER]>::new();
    let len = out.len() - MAX_HEADER;
    header.push(0x81); // FIN, opcode 1 (text)
    if len < 126 {
        header.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        header.push(126);
        header.extend_from_slice(&short.to_be_bytes());
    } else {
        header.push(127);
        header.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let start = MAX_HEADER - header.len();
    out[start..MAX_HEADER].copy_from_slice(&header);
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
