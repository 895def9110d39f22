//! The published payload (sequence number, send time, publisher) and how
//! subscribers read it back.

use serde_json::Value;

pub(crate) fn make_payload(seq: u64, t: u64, p: usize, size: usize) -> Vec<u8> {
    let head = format!("{{\"seq\":{seq},\"t\":{t},\"p\":{p},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut v = Vec::with_capacity(head.len() + pad + 2);
    v.extend_from_slice(head.as_bytes());
    v.resize(head.len() + pad, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// Pull (seq, t, publisher) out of a payload object.
pub(crate) fn seq_t(v: &Value) -> Option<(u64, u64, usize)> {
    let p = v.get("p").and_then(Value::as_u64).unwrap_or(0) as usize;
    Some((v.get("seq")?.as_u64()?, v.get("t")?.as_u64()?, p))
}

/// (seq, t, publisher) of a message JSON {topic,id,ts,data} (SSE data, poll messages).
pub(crate) fn decode_message(v: &Value) -> Option<(u64, u64, usize)> {
    seq_t(v.get("data")?)
}
