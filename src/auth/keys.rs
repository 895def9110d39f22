//! Key material, parsed once: HS256 secrets, RSA and EC P-256 PEM public
//! keys, and JWKS documents. Every key is pinned to one algorithm, and
//! checked at load by building its verifier once, so a key that cannot
//! verify is a configuration error, not a per-token surprise.
//!
//! Error messages name the source (setting, file, JWKS entry index), never
//! key material.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::AuthError;
use crate::config::AuthConfig;

/// Entries a JWKS document may hold.
pub(crate) const MAX_JWKS_KEYS: usize = 256;
/// Largest JWKS file read.
const MAX_JWKS_BYTES: u64 = 1 << 20;

/// The three accepted algorithms; every key has exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alg {
    /// HMAC SHA-256: shared secrets, JWKS `oct` keys.
    Hs256,
    /// RSA PKCS#1 v1.5 SHA-256: RSA public keys.
    Rs256,
    /// ECDSA P-256 SHA-256: EC P-256 public keys.
    Es256,
}

impl Alg {
    /// Every algorithm, in [`Alg::index`] order.
    pub(crate) const ALL: [Alg; 3] = [Alg::Hs256, Alg::Rs256, Alg::Es256];

    /// The algorithm a token header names, when it is one of ours (exact
    /// spelling: `none`, `HS512`, `hs256` are not).
    pub(crate) fn from_name(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    /// Its `alg` name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    /// The `jsonwebtoken` algorithm.
    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            Alg::Hs256 => Algorithm::HS256,
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
        }
    }

    /// Position in per-algorithm arrays.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One verification key and the one algorithm it accepts.
pub(crate) struct Key {
    /// The only algorithm this key verifies.
    pub(crate) alg: Alg,
    /// Parsed once.
    pub(crate) decoding: DecodingKey,
}

impl Key {
    /// A key that the `alg` verifier accepts (checked once, here: a wrong
    /// curve or a malformed modulus fails now, not on every token).
    fn checked(alg: Alg, decoding: DecodingKey) -> Option<Key> {
        // An empty signature never verifies; an unusable key is an error.
        jsonwebtoken::crypto::verify("", b"", &decoding, alg.jwt()).ok()?;
        Some(Key { alg, decoding })
    }
}

/// A set of keys: by `kid` (JWKS entries that have one) and by algorithm
/// (every key, for tokens without `kid`).
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<Box<str>, Arc<Key>>,
    by_alg: [Vec<Arc<Key>>; 3],
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.len()).field("kids", &self.by_kid.len()).finish()
    }
}

impl KeySet {
    fn add(&mut self, kid: Option<&str>, key: Key) -> bool {
        let key = Arc::new(key);
        if let Some(kid) = kid {
            if self.by_kid.insert(kid.into(), Arc::clone(&key)).is_some() {
                return false;
            }
        }
        self.by_alg[key.alg.index()].push(key);
        true
    }

    /// The key a `kid` selects.
    pub(crate) fn kid(&self, kid: &str) -> Option<&Arc<Key>> {
        self.by_kid.get(kid)
    }

    /// Every key of `alg`.
    pub(crate) fn of_alg(&self, alg: Alg) -> &[Arc<Key>] {
        &self.by_alg[alg.index()]
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.by_alg.iter().map(Vec::len).sum()
    }
}

/// The keys given directly in the configuration: `hmac_secrets`,
/// `rsa_public_keys`, `ec_public_keys` (read once, at start).
pub(crate) fn configured(cfg: &AuthConfig) -> Result<KeySet, AuthError> {
    let mut set = KeySet::default();
    for (i, secret) in cfg.hmac_secrets.iter().enumerate() {
        let key = DecodingKey::from_secret(secret.as_bytes())
            .ok()
            .and_then(|k| Key::checked(Alg::Hs256, k))
            .ok_or_else(|| AuthError::Config(format!("auth.hmac_secrets entry {i} is empty")))?;
        set.add(None, key);
    }
    for (setting, paths, alg) in [
        ("auth.rsa_public_keys", &cfg.rsa_public_keys, Alg::Rs256),
        ("auth.ec_public_keys", &cfg.ec_public_keys, Alg::Es256),
    ] {
        for path in paths {
            set.add(None, pem_key(setting, path, alg)?);
        }
    }
    Ok(set)
}

fn pem_key(setting: &str, path: &Path, alg: Alg) -> Result<Key, AuthError> {
    let shown = path.display();
    let pem =
        std::fs::read(path).map_err(|e| AuthError::Config(format!("{setting}: cannot read {shown}: {e}")))?;
    let (parsed, what) = match alg {
        Alg::Rs256 => (DecodingKey::from_rsa_pem(&pem), "an RSA public key"),
        _ => (DecodingKey::from_ec_pem(&pem), "an EC P-256 public key"),
    };
    parsed
        .ok()
        .and_then(|k| Key::checked(alg, k))
        .ok_or_else(|| AuthError::Config(format!("{setting}: {shown} is not {what} in PEM")))
}

/// A JWKS document: `{"keys": [...]}`.
#[derive(Deserialize)]
struct Document {
    keys: Vec<Entry>,
}

/// One JWK; members we do not use (`x5c`, `key_ops`, ...) are ignored.
#[derive(Deserialize)]
struct Entry {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

/// Parses a JWKS document. The key type fixes the algorithm (`RSA` →
/// RS256, `EC` with `crv: P-256` → ES256, `oct` → HS256); an `alg` member
/// must agree. Entries with `use: "enc"` are skipped; any other entry that
/// cannot be used, or a repeated `kid`, rejects the whole document.
pub(crate) fn parse_jwks(text: &[u8]) -> Result<KeySet, AuthError> {
    let doc: Document = serde_json::from_slice(text).map_err(|e| {
        // serde's message may quote values from the file: only say where.
        AuthError::Config(format!("not a JWKS document (line {}, column {})", e.line(), e.column()))
    })?;
    if doc.keys.len() > MAX_JWKS_KEYS {
        return Err(AuthError::Config(format!("more than {MAX_JWKS_KEYS} keys")));
    }
    let mut set = KeySet::default();
    for (i, entry) in doc.keys.iter().enumerate() {
        if entry.usage.as_deref() == Some("enc") {
            continue;
        }
        let bad = |why: &str| AuthError::Config(format!("key #{i}: {why}"));
        let key = entry_key(entry).map_err(bad)?;
        if let Some(alg) = &entry.alg {
            if alg != key.alg.name() {
                return Err(bad(&format!(
                    "alg does not match kty {} (expected {})",
                    entry.kty,
                    key.alg.name()
                )));
            }
        }
        if !set.add(entry.kid.as_deref(), key) {
            return Err(bad("kid repeated"));
        }
    }
    Ok(set)
}

fn entry_key(entry: &Entry) -> Result<Key, &'static str> {
    fn field<'a>(v: &'a Option<String>, why: &'static str) -> Result<&'a str, &'static str> {
        v.as_deref().ok_or(why)
    }
    let (alg, parsed) = match entry.kty.as_str() {
        "RSA" => {
            let n = field(&entry.n, "kty RSA needs n")?;
            let e = field(&entry.e, "kty RSA needs e")?;
            (Alg::Rs256, DecodingKey::from_rsa_components(n, e))
        }
        "EC" => {
            if entry.crv.as_deref() != Some("P-256") {
                return Err("only EC keys with crv P-256 are supported");
            }
            let x = field(&entry.x, "kty EC needs x")?;
            let y = field(&entry.y, "kty EC needs y")?;
            (Alg::Es256, DecodingKey::from_ec_components(x, y))
        }
        "oct" => {
            let k = field(&entry.k, "kty oct needs k")?;
            let secret = URL_SAFE_NO_PAD.decode(k).map_err(|_| "k is not base64url")?;
            (Alg::Hs256, DecodingKey::from_secret(&secret))
        }
        _ => return Err("unsupported kty (RSA, EC or oct)"),
    };
    parsed.ok().and_then(|k| Key::checked(alg, k)).ok_or("the key cannot be used")
}

/// Reads and parses a JWKS file.
pub(crate) fn read_jwks(path: &Path) -> Result<KeySet, AuthError> {
    let shown = path.display();
    let cannot = |e: std::io::Error| AuthError::Config(format!("auth.jwks_file: cannot read {shown}: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_JWKS_BYTES + 1), &mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_JWKS_BYTES {
        return Err(AuthError::Config(format!("auth.jwks_file: {shown} is larger than 1 MiB")));
    }
    parse_jwks(&text).map_err(|e| match e {
        AuthError::Config(why) => AuthError::Config(format!("auth.jwks_file: {shown}: {why}")),
        other => other,
    })
}
