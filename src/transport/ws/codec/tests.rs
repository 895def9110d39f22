//! The decoder against frames built by hand, as a client (or a hostile
//! one) would send them.

use super::*;

/// A client frame: `first` byte (FIN, RSV, opcode), masked `payload`.
pub(crate) fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn text(s: &str) -> Vec<u8> {
    client_frame(0x81, s.as_bytes())
}

fn decoder() -> Decoder {
    Decoder::new(64 * 1024, 64 * 1024)
}

/// Every message `bytes` decode to, fed `step` bytes at a time.
fn decode_all(bytes: &[u8], step: usize) -> Result<Vec<WsMessage>, WsError> {
    let mut d = decoder();
    let mut out = Vec::new();
    for piece in bytes.chunks(step) {
        d.extend(piece);
        while let Some(m) = d.decode()? {
            out.push(m);
        }
    }
    assert_eq!(d.held(), 0, "everything decoded, nothing kept");
    Ok(out)
}

#[test]
fn messages_decode_alike_however_the_bytes_arrive() {
    let mut bytes = text("{\"op\":\"ping\"}");
    bytes.extend(client_frame(0x89, b"hb"));
    bytes.extend(text(&"é".repeat(200))); // 16-bit length
    bytes.extend(client_frame(0x82, &[1, 2, 3]));
    bytes.extend(client_frame(0x8A, b""));
    bytes.extend(text(""));
    let want = vec![
        WsMessage::text("{\"op\":\"ping\"}"),
        WsMessage::Ping(Bytes::from_static(b"hb")),
        WsMessage::text("é".repeat(200)),
        WsMessage::Binary(Bytes::from_static(&[1, 2, 3])),
        WsMessage::Pong(Bytes::new()),
        WsMessage::text(""),
    ];
    for step in [1, 2, 3, 7, 64, bytes.len()] {
        assert_eq!(decode_all(&bytes, step).unwrap(), want, "step {step}");
    }
}

#[test]
fn fragments_are_joined_around_control_frames() {
    // "héllo" split inside the two-byte "é": valid only once joined.
    let whole = "héllo".as_bytes();
    let mut bytes = client_frame(0x01, &whole[..2]);
    bytes.extend(client_frame(0x89, b"p"));
    bytes.extend(client_frame(0x00, &whole[2..4]));
    bytes.extend(client_frame(0x80, &whole[4..]));
    let got = decode_all(&bytes, 5).unwrap();
    assert_eq!(got, vec![WsMessage::Ping(Bytes::from_static(b"p")), WsMessage::text("héllo")]);
}

#[test]
fn a_large_frame_leaves_no_buffer_behind() {
    let big = "x".repeat(60_000);
    let mut d = decoder();
    let bytes = text(&big);
    // Arrives in pieces; the last also holds the start of the next frame.
    let next = text("after");
    let (head, tail) = bytes.split_at(30_000);
    d.extend(head);
    assert!(d.decode().unwrap().is_none());
    let mut rest = tail.to_vec();
    rest.extend_from_slice(&next[..3]);
    d.extend(&rest);
    assert_eq!(d.decode().unwrap(), Some(WsMessage::text(big)));
    assert!(d.decode().unwrap().is_none());
    d.extend(&next[3..]);
    assert!(d.held() > 0);
    assert_eq!(d.decode().unwrap(), Some(WsMessage::text("after")));
    assert_eq!(d.held(), 0);
}

#[test]
fn reads_grow_with_what_arrived_not_with_what_was_declared() {
    let mut d = decoder();
    let bytes = text(&"y".repeat(60_000));
    d.extend(&bytes[..100]);
    assert!(d.decode().unwrap().is_none());
    // Declared 60,000 bytes; 100 arrived: read a chunk, not 60 KB.
    assert_eq!(d.read_size(), CHUNK);
    let mut fed = 100;
    while fed < bytes.len() {
        let want = d.read_size();
        let n = if want == 0 { CHUNK.min(bytes.len() - fed) } else { want.min(bytes.len() - fed) };
        assert!(n <= fed.max(CHUNK), "read {n} after {fed} arrived");
        if want == 0 {
            d.extend(&bytes[fed..fed + n]);
        } else {
            let tail = d.tail(want);
            tail[..n].copy_from_slice(&bytes[fed..fed + n]);
            d.filled(want, n);
        }
        fed += n;
    }
    assert_eq!(d.decode().unwrap(), Some(WsMessage::text("y".repeat(60_000))));
    assert_eq!(d.held(), 0);
    // A header alone never reserves the declared size.
    let mut d = decoder();
    d.extend(&text(&"z".repeat(50_000))[..8]);
    assert!(d.decode().unwrap().is_none());
    assert!(d.held() < 64, "{}", d.held());
}

#[test]
fn close_frames_carry_an_allowed_code_and_a_utf8_reason() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    let got = decode_all(&client_frame(0x88, &payload), 1).unwrap();
    let WsMessage::Close(Some(c)) = &got[0] else { panic!("{got:?}") };
    assert_eq!((u16::from(c.code), c.reason.as_str()), (1000, "bye"));
    assert_eq!(decode_all(&client_frame(0x88, b""), 1).unwrap(), vec![WsMessage::Close(None)]);
    for bad in [vec![3], 1005u16.to_be_bytes().to_vec(), 999u16.to_be_bytes().to_vec(), vec![3, 232, 0xff]] {
        assert!(decoder_fails(&client_frame(0x88, &bad)), "{bad:?}");
    }
}

fn decoder_fails(bytes: &[u8]) -> bool {
    let mut d = decoder();
    d.extend(bytes);
    loop {
        match d.decode() {
            Err(_) => return true,
            Ok(None) => return false,
            Ok(Some(_)) => {}
        }
    }
}

#[test]
fn protocol_violations_fail() {
    let unmasked = [0x81, 0x02, b'h', b'i'];
    let mut rsv = text("x");
    rsv[0] |= 0x40;
    let mut fragmented_then_text = client_frame(0x01, b"a");
    fragmented_then_text.extend(text("b"));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", unmasked.to_vec()),
        ("reserved bit", rsv),
        ("unknown data opcode", client_frame(0x83, b"")),
        ("unknown control opcode", client_frame(0x8B, b"")),
        ("fragmented ping", client_frame(0x09, b"")),
        ("long ping", client_frame(0x89, &[0; 126])),
        ("continuation alone", client_frame(0x80, b"x")),
        ("text inside a fragmented message", fragmented_then_text),
        ("invalid UTF-8", client_frame(0x81, &[0xc3, 0x28])),
        ("invalid UTF-8 once joined", [client_frame(0x01, &[0xc3]), client_frame(0x80, b"(")].concat()),
    ];
    for (what, bytes) in cases {
        assert!(decoder_fails(&bytes), "{what}");
    }
    // The valid neighbours of those cases decode.
    assert!(!decoder_fails(&client_frame(0x89, &[0; 125])));
}

#[test]
fn sizes_over_the_limits_fail_before_the_payload_arrives() {
    let mut d = Decoder::new(1000, 1500);
    // Only the header of a 2,000-byte frame.
    d.extend(&text(&"a".repeat(2000))[..8]);
    assert!(matches!(d.decode(), Err(WsError::Capacity(_))));
    // A 64-bit length no platform holds.
    let mut huge = vec![0x81, 0x80 | 127];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    huge.extend_from_slice(&[0; 4]);
    let mut d = Decoder::new(1000, 1500);
    d.extend(&huge);
    assert!(matches!(d.decode(), Err(WsError::Capacity(_))));
    // Fragments over the message limit.
    let mut d = Decoder::new(1000, 1500);
    d.extend(&client_frame(0x01, &[b'a'; 800]));
    d.extend(&client_frame(0x80, &[b'a'; 800]));
    assert!(matches!(d.decode(), Err(WsError::Capacity(_))));
}

#[test]
fn server_frames_use_the_shortest_header_and_cut_long_close_reasons() {
    assert_eq!(&encode(&WsMessage::Ping(Bytes::new()))[..], &[0x89, 0]);
    assert_eq!(&encode(&WsMessage::Pong(Bytes::from_static(b"ab")))[..], &[0x8A, 2, b'a', b'b']);
    assert_eq!(&encode(&WsMessage::Close(None))[..], &[0x88, 0]);
    let reason = "é".repeat(100); // 200 bytes
    let f = encode(&WsMessage::Close(Some(CloseFrame { code: CloseCode::Away, reason: reason.into() })));
    assert_eq!(f[1] as usize, f.len() - 2);
    assert!(f.len() - 2 <= 125);
    assert_eq!(&f[2..4], &1001u16.to_be_bytes());
    assert!(std::str::from_utf8(&f[4..]).is_ok());
    assert_eq!(&frame(OP_TEXT, &[b'x'; 300])[..4], &[0x81, 126, 1, 44]);
}
