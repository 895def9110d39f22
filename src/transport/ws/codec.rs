//! The client's WebSocket frames, decoded without I/O (RFC 6455 §5), and
//! the server's control frames, encoded.
//!
//! The decoder holds only what has arrived and is not decoded yet: its
//! buffer is freed as soon as everything in it is decoded, so a connection
//! that once sent a large frame keeps no large buffer (a library decoder
//! keeps its grown read buffer for the connection's life: one 60 KB publish
//! per connection would cost every connection 60 KB until it closes).
//! Nothing is allocated before bytes arrive: a declared length is checked
//! against the limit first, and the buffer grows only with what was read.
//!
//! Every rule a server must enforce is checked: client frames are masked,
//! reserved bits are zero (no extension is negotiated), opcodes are known,
//! control frames are final and at most 125 bytes, continuations belong to
//! a message, text is UTF-8, a close frame's code is allowed and its reason
//! UTF-8; frames and messages over the limit are `Capacity` errors.

use bytes::Bytes;
use smallvec::SmallVec;
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::frame::coding::{CloseCode, Data};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message as WsMessage, Utf8Bytes};

/// Bytes read from the socket at once when no frame needs more.
pub(crate) const CHUNK: usize = 4096;

/// The longest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_CLIENT_HEADER: usize = 14;

const OP_CONTINUE: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A fragmented message being assembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    payload: Vec<u8>,
}

/// Decodes a client's frames into messages.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Received bytes; `buf[pos..]` are not decoded yet. Empty (no
    /// allocation) whenever everything received is decoded.
    buf: Vec<u8>,
    pos: usize,
    /// A fragmented message in progress (boxed: rare, and every idle
    /// connection would otherwise reserve its room).
    partial: Option<Box<Partial>>,
    /// Bytes of one frame's payload at most.
    max_frame: usize,
    /// Bytes of one message's payload at most (all its fragments).
    max_message: usize,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes.
    len: usize,
    /// Payload bytes.
    payload: usize,
}

impl Decoder {
    /// A decoder with these payload limits.
    pub(crate) fn new(max_frame: usize, max_message: usize) -> Self {
        Decoder { buf: Vec::new(), pos: 0, partial: None, max_frame, max_message }
    }

    /// Bytes held: undecoded input and a fragmented message's parts
    /// (capacity, what the connection really keeps).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.buf.capacity() + self.partial.as_ref().map_or(0, |p| p.payload.capacity())
    }

    /// Room for the next read: the buffer's tail, `want` bytes long (see
    /// [`Decoder::read_size`]); [`Decoder::filled`] says how much of it was
    /// read.
    pub(crate) fn tail(&mut self, want: usize) -> &mut [u8] {
        self.compact();
        let start = self.buf.len();
        self.buf.resize(start + want, 0);
        &mut self.buf[start..]
    }

    /// `read` of the `want` bytes given by the last [`Decoder::tail`] were
    /// filled.
    pub(crate) fn filled(&mut self, want: usize, read: usize) {
        let len = self.buf.len() - want + read;
        self.buf.truncate(len);
        if self.pos == self.buf.len() {
            self.release();
        }
    }

    /// Appends bytes read elsewhere (a stack buffer).
    pub(crate) fn extend(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// How many bytes to read next: what the frame being received still
    /// needs, when that is at least a [`CHUNK`] (read straight into the
    /// buffer), but never more than has arrived so far (the buffer grows
    /// with what the client sends, not with what it declares); 0 when a
    /// stack-buffer read of a [`CHUNK`] suits better.
    pub(crate) fn read_size(&self) -> usize {
        let pending = &self.buf[self.pos..];
        let Ok(Some(h)) = parse_header(pending) else { return 0 };
        let need = h.len.saturating_add(h.payload).saturating_sub(pending.len());
        if need < CHUNK {
            return 0;
        }
        need.min(pending.len().max(CHUNK))
    }

    /// The next complete message, `None` when more bytes are needed.
    /// Fragments are gathered; control frames come as they arrive, also
    /// between a message's fragments. An error ends the connection: the
    /// decoder must not be used after one.
    pub(crate) fn decode(&mut self) -> Result<Option<WsMessage>, WsError> {
        loop {
            let pending = &self.buf[self.pos..];
            let Some(h) = parse_header(pending)? else { return Ok(None) };
            if h.payload > self.max_frame {
                return Err(too_long(h.payload, self.max_frame));
            }
            if pending.len() < h.len + h.payload {
                return Ok(None);
            }
            let start = self.pos + h.len;
            let end = start + h.payload;
            unmask(&mut self.buf[start..end], h.mask);
            self.pos = end;
            let message = self.frame(&h, start, end);
            if self.pos == self.buf.len() {
                self.release();
            }
            if let Some(message) = message? {
                return Ok(Some(message));
            }
        }
    }

    /// One complete frame, payload at `buf[start..end]` (unmasked).
    fn frame(&mut self, h: &Header, start: usize, end: usize) -> Result<Option<WsMessage>, WsError> {
        let payload = &self.buf[start..end];
        match h.opcode {
            OP_PING => Ok(Some(WsMessage::Ping(Bytes::copy_from_slice(payload)))),
            OP_PONG => Ok(Some(WsMessage::Pong(Bytes::copy_from_slice(payload)))),
            OP_CLOSE => close(payload).map(|c| Some(WsMessage::Close(c))),
            OP_CONTINUE => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinueFrame.into());
                };
                let size = partial.payload.len() + payload.len();
                if size > self.max_message {
                    return Err(too_long(size, self.max_message));
                }
                partial.payload.extend_from_slice(payload);
                if !h.fin {
                    return Ok(None);
                }
                let Some(done) = self.partial.take() else { return Ok(None) };
                if done.text {
                    Ok(Some(WsMessage::Text(Utf8Bytes::try_from(done.payload)?)))
                } else {
                    Ok(Some(WsMessage::Binary(Bytes::from(done.payload))))
                }
            }
            op => {
                let text = op == OP_TEXT;
                if self.partial.is_some() {
                    let data = if text { Data::Text } else { Data::Binary };
                    return Err(ProtocolError::ExpectedFragment(data).into());
                }
                if payload.len() > self.max_message {
                    return Err(too_long(payload.len(), self.max_message));
                }
                if !h.fin {
                    self.partial = Some(Box::new(Partial { text, payload: payload.to_vec() }));
                    return Ok(None);
                }
                let payload = Bytes::copy_from_slice(payload);
                if text {
                    Ok(Some(WsMessage::Text(Utf8Bytes::try_from(payload)?)))
                } else {
                    Ok(Some(WsMessage::Binary(payload)))
                }
            }
        }
    }

    /// Moves undecoded bytes to the front before the buffer grows, and
    /// gives back room a large frame left behind.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
            if self.buf.capacity() > 2 * CHUNK && self.buf.len() < self.buf.capacity() / 4 {
                self.buf.shrink_to(self.buf.len().max(CHUNK));
            }
        }
    }

    /// Frees the buffer: everything in it is decoded.
    fn release(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
    }
}

/// The header at the start of `b`, `None` until all of it has arrived.
fn parse_header(b: &[u8]) -> Result<Option<Header>, WsError> {
    if b.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (b[0], b[1]);
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::NonZeroReservedBits.into());
    }
    if b1 & 0x80 == 0 {
        return Err(ProtocolError::UnmaskedFrameFromClient.into());
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let (extra, short) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(n as usize)),
    };
    match opcode {
        OP_CONTINUE | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame.into());
            }
            if short.is_none() {
                return Err(ProtocolError::ControlFrameTooBig.into());
            }
        }
        3..=7 => return Err(ProtocolError::UnknownDataFrameType(opcode).into()),
        _ => return Err(ProtocolError::UnknownControlFrameType(opcode).into()),
    }
    let len = 2 + extra + 4;
    if b.len() < len {
        return Ok(None);
    }
    let payload = match short {
        Some(n) => n,
        None if extra == 2 => usize::from(u16::from_be_bytes([b[2], b[3]])),
        None => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            // The most significant bit must be 0 (RFC 6455 §5.2); a length
            // this platform cannot hold is over any limit anyway.
            usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX)
        }
    };
    if matches!(opcode, OP_CLOSE | OP_PING | OP_PONG) && payload > 125 {
        return Err(ProtocolError::ControlFrameTooBig.into());
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&b[len - 4..len]);
    debug_assert!(len <= MAX_CLIENT_HEADER);
    Ok(Some(Header { fin, opcode, mask, len, payload }))
}

/// A close frame's payload: nothing, or a code and a UTF-8 reason.
fn close(payload: &[u8]) -> Result<Option<CloseFrame>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::InvalidCloseSequence.into()),
        [hi, lo, reason @ ..] => {
            let code = CloseCode::from(u16::from_be_bytes([*hi, *lo]));
            if !code.is_allowed() {
                return Err(ProtocolError::InvalidCloseSequence.into());
            }
            let reason = Utf8Bytes::try_from(Bytes::copy_from_slice(reason))?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

fn too_long(size: usize, max_size: usize) -> WsError {
    WsError::Capacity(CapacityError::MessageTooLong { size, max_size })
}

/// Unmasks (or masks) `payload` with `mask` (RFC 6455 §5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let mut w = [0u8; 4];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u32::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Bytes of the longest server frame header (no mask).
pub(crate) const MAX_SERVER_HEADER: usize = 10;

/// The header of an unmasked, final server frame: `opcode`, `len` payload
/// bytes, in the shortest length form.
pub(crate) fn header(opcode: u8, len: usize) -> SmallVec<[u8; MAX_SERVER_HEADER]> {
    let mut h = SmallVec::new();
    h.push(0x80 | opcode);
    if len < 126 {
        h.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        h.push(126);
        h.extend_from_slice(&short.to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

/// A complete unmasked, final server frame: `opcode` and `payload`.
pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(MAX_SERVER_HEADER + payload.len());
    out.extend_from_slice(&header(opcode, payload.len()));
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// The server frame carrying `message` (what the connection loop sends:
/// replies, pings, pongs, close).
pub(crate) fn encode(message: &WsMessage) -> Bytes {
    match message {
        WsMessage::Text(t) => frame(OP_TEXT, t.as_bytes()),
        WsMessage::Binary(b) => frame(OP_BINARY, b),
        WsMessage::Ping(p) => frame(OP_PING, &p[..p.len().min(125)]),
        WsMessage::Pong(p) => frame(OP_PONG, &p[..p.len().min(125)]),
        WsMessage::Close(None) => frame(OP_CLOSE, &[]),
        WsMessage::Close(Some(c)) => {
            let mut payload = Vec::with_capacity(125);
            payload.extend_from_slice(&u16::from(c.code).to_be_bytes());
            // A control frame holds 125 bytes: cut the reason at a
            // character boundary.
            let reason = c.reason.as_str();
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            payload.extend_from_slice(&reason.as_bytes()[..end]);
            frame(OP_CLOSE, &payload)
        }
        // Never sent: tungstenite's raw frames are not used here.
        WsMessage::Frame(_) => frame(OP_PONG, &[]),
    }
}

#[cfg(test)]
pub(crate) mod tests;
