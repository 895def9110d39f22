//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of
//! "{webhook-id}.{webhook-timestamp}.{body}">`, one per secret, separated
//! by spaces in one `webhook-signature` header.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::decode_secret;

/// The keys of an endpoint or a source (decoded `whsec_…` secrets). Its
/// `Debug` shows how many, never a key.
#[derive(Clone)]
pub struct Keys(Vec<Vec<u8>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} secrets)", self.0.len())
    }
}

fn mac(key: &[u8], id: &str, ts: u64, body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail here.
    let mut m = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(id.as_bytes());
    m.update(b".");
    m.update(ts.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().into()
}

impl Keys {
    /// The keys of `secrets` (validated by the config: undecodable ones
    /// are skipped).
    pub fn new(secrets: &[String]) -> Keys {
        Keys(secrets.iter().filter_map(|s| decode_secret(s)).collect())
    }

    /// The `webhook-signature` header value: one `v1,` signature per key.
    pub fn sign(&self, id: &str, ts: u64, body: &[u8]) -> String {
        let sigs: Vec<String> =
            self.0.iter().map(|k| format!("v1,{}", STANDARD.encode(mac(k, id, ts, body)))).collect();
        sigs.join(" ")
    }

    /// Whether any `v1,` signature of `header` is any key's signature of
    /// `id.ts.body`. Compares in constant time and looks at every pair.
    pub fn verify(&self, header: &str, id: &str, ts: u64, body: &[u8]) -> bool {
        let expected: Vec<[u8; 32]> = self.0.iter().map(|k| mac(k, id, ts, body)).collect();
        let mut ok = subtle::Choice::from(0);
        for sig in header.split(' ').filter(|s| !s.is_empty()).take(16) {
            let Some(b64) = sig.strip_prefix("v1,") else { continue };
            let Ok(given) = STANDARD.decode(b64) else { continue };
            for e in &expected {
                ok |= e.as_slice().ct_eq(&given);
            }
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_with_every_key() {
        let a = format!("whsec_{}", STANDARD.encode(b"first secret key"));
        let b = format!("whsec_{}", STANDARD.encode(b"second secret key"));
        let both = Keys::new(&[a.clone(), b.clone()]);
        let header = both.sign("t:1-0", 1700000000, b"{\"x\":1}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(Keys::new(std::slice::from_ref(&b)).verify(&header, "t:1-0", 1700000000, b"{\"x\":1}"));
        assert!(Keys::new(std::slice::from_ref(&a)).verify(&header, "t:1-0", 1700000000, b"{\"x\":1}"));
        assert!(!both.verify(&header, "t:1-0", 1700000001, b"{\"x\":1}"));
        assert!(!both.verify(&header, "t:1-0", 1700000000, b"{\"x\":2}"));
        let other = Keys::new(&[format!("whsec_{}", STANDARD.encode(b"other"))]);
        assert!(!other.verify(&header, "t:1-0", 1700000000, b"{\"x\":1}"));
        assert!(!both.verify("v1,!!!", "t:1-0", 1700000000, b"{}"));
    }
}
