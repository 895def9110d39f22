//! The upgraded connection as tungstenite reads it: reads from the socket
//! go through a stack buffer, so no read buffer stays allocated while the
//! client sends nothing.
//!
//! tungstenite keeps its read buffer for the connection's whole life and
//! reads at most its initial size per call. Giving it a small buffer
//! (`websocket.read_buffer_size`) keeps idle connections cheap; this wrapper
//! keeps large frames cheap to read anyway: each read from the socket takes
//! up to [`CHUNK`] bytes, and whatever tungstenite did not ask for yet waits
//! in a heap buffer that is freed as soon as it has been taken.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket per read at most, when the reader asks for
/// less.
pub(crate) const CHUNK: usize = 4096;

/// A connection whose reads are done in chunks of up to [`CHUNK`] bytes,
/// holding no buffer between them; writes go straight through.
pub(crate) struct ReadAhead<T> {
    io: T,
    /// Bytes read from `io` and not yet taken, from `taken` on; empty (no
    /// allocation) whenever nothing is waiting.
    ahead: Box<[u8]>,
    /// How much of `ahead` was taken.
    taken: usize,
}

impl<T> ReadAhead<T> {
    /// Wraps `io`.
    pub(crate) fn new(io: T) -> Self {
        ReadAhead { io, ahead: Box::default(), taken: 0 }
    }

    /// Moves waiting bytes into `dst`; frees the buffer once all are taken.
    fn take_ahead(&mut self, dst: &mut ReadBuf<'_>) {
        let n = dst.remaining().min(self.ahead.len() - self.taken);
        dst.put_slice(&self.ahead[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.ahead.len() {
            self.ahead = Box::default();
            self.taken = 0;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, dst: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.ahead.len() {
            this.take_ahead(dst);
            return Poll::Ready(Ok(()));
        }
        if dst.remaining() >= CHUNK {
            return Pin::new(&mut this.io).poll_read(cx, dst);
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
        let got = read.filled();
        let n = dst.remaining().min(got.len());
        dst.put_slice(&got[..n]);
        if n < got.len() {
            this.ahead = got[n..].into();
            this.taken = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Small reads see the bytes in order across chunks, and nothing stays
    /// buffered once all is taken.
    #[tokio::test]
    async fn small_reads_get_every_byte_in_order() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).await.expect("write");
        drop(client);
        let mut r = ReadAhead::new(server);
        let mut out = Vec::new();
        let mut small = [0u8; 100];
        loop {
            let n = r.read(&mut small).await.expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&small[..n]);
        }
        assert_eq!(out, data);
        assert!(r.ahead.is_empty());
    }

    /// A read at least a chunk long goes straight into the caller's buffer.
    #[tokio::test]
    async fn large_reads_bypass_the_buffer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&[7u8; 2 * CHUNK]).await.expect("write");
        let mut r = ReadAhead::new(server);
        let mut big = vec![0u8; 2 * CHUNK];
        let n = r.read(&mut big).await.expect("read");
        assert_eq!(n, 2 * CHUNK);
        assert!(r.ahead.is_empty());
    }
}
