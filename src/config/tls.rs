//! Loading `[tls]`'s certificate chain and private key: at validation, at
//! startup and on every reload (the server's `tls` module), with errors
//! that name the key and the file but never show key material.

use std::io::Read;
use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::{ConfigError, TlsConfig};

/// Larger files are refused (a certificate chain is a few KiB).
const MAX_FILE_BYTES: u64 = 1 << 20;

impl TlsConfig {
    /// True when TLS termination is configured (both files set).
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// Reads and checks both files: the chain parses, the key is one the
    /// ring provider can sign with, and it matches the chain's first
    /// certificate. `None` when TLS is off; an error when only one file is
    /// set.
    pub fn load(&self) -> Result<Option<CertifiedKey>, ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(invalid("tls.key_file", "must be set together with tls.cert_file".into())),
            (None, Some(_)) => Err(invalid("tls.cert_file", "must be set together with tls.key_file".into())),
            (Some(cert), Some(key)) => load_files(cert, key).map(Some),
        }
    }
}

fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { key, reason }
}

/// The certified key of a PEM chain file and a PEM key file.
fn load_files(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, ConfigError> {
    let chain_pem = read(cert_file).map_err(|r| invalid("tls.cert_file", r))?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("tls.cert_file", format!("{}: {}", cert_file.display(), describe(&e))))?;
    if chain.is_empty() {
        return Err(invalid("tls.cert_file", format!("{}: no CERTIFICATE in the file", cert_file.display())));
    }
    let key_pem = read(key_file).map_err(|r| invalid("tls.key_file", r))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => "no PRIVATE KEY in the file".to_owned(),
            e => describe(&e),
        };
        invalid("tls.key_file", format!("{}: {why}", key_file.display()))
    })?;
    drop(key_pem);
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => invalid(
            "tls.key_file",
            format!("{} does not belong to the certificate in {}", key_file.display(), cert_file.display()),
        ),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            invalid("tls.cert_file", format!("{}: unusable certificate: {e}", cert_file.display()))
        }
        // The provider's parse errors name the key types tried, nothing of the key.
        e => invalid("tls.key_file", format!("{}: unusable private key: {e}", key_file.display())),
    })
}

/// The file's bytes, or why not (with its path).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let fail = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(fail)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(fail)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{} is larger than 1 MiB", path.display()));
    }
    Ok(bytes)
}

/// A PEM error without the offending line (which, in a key file, could
/// be key material).
fn describe(e: &pem::Error) -> String {
    match e {
        pem::Error::Io(e) => format!("cannot read: {e}"),
        pem::Error::NoItemsFound => "no PEM section found".to_owned(),
        pem::Error::SectionTooLarge => "a PEM section is too large".to_owned(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".to_owned(),
        _ => "not a valid PEM file".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// Files in a directory of their own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("rtgate-tls-unit-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn file(&self, name: &str, content: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn config(cert: Option<PathBuf>, key: Option<PathBuf>) -> TlsConfig {
        TlsConfig { cert_file: cert, key_file: key, ..TlsConfig::default() }
    }

    fn error_of(c: &TlsConfig) -> (&'static str, String) {
        match c.load() {
            Err(ConfigError::Invalid { key, reason }) => (key, reason),
            Err(e) => panic!("unexpected error {e}"),
            Ok(k) => panic!("loaded: {}", k.is_some()),
        }
    }

    #[test]
    fn off_unless_both_files_are_set() {
        assert!(config(None, None).load().unwrap().is_none());
        let d = Dir::new("pairs");
        let (cert, key) = self_signed();
        let (c, k) = (d.file("c.pem", &cert), d.file("k.pem", &key));
        assert_eq!(error_of(&config(Some(c.clone()), None)).0, "tls.key_file");
        assert_eq!(error_of(&config(None, Some(k.clone()))).0, "tls.cert_file");
        let loaded = config(Some(c), Some(k)).load().unwrap().expect("a key");
        assert_eq!(loaded.cert.len(), 1);
    }

    #[test]
    fn bad_files_name_their_key_and_never_show_the_key() {
        let d = Dir::new("bad");
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let c = d.file("c.pem", &cert);
        let k = d.file("k.pem", &key);
        let missing = d.0.join("missing.pem");
        let (key_name, reason) = error_of(&config(Some(missing.clone()), Some(k.clone())));
        assert_eq!(key_name, "tls.cert_file");
        assert!(reason.contains("missing.pem") && reason.contains("cannot read"), "{reason}");
        assert_eq!(error_of(&config(Some(c.clone()), Some(missing))).0, "tls.key_file");

        let garbage = d.file("garbage.pem", "hello\n");
        let (key_name, reason) = error_of(&config(Some(garbage.clone()), Some(k.clone())));
        assert_eq!(key_name, "tls.cert_file");
        assert!(reason.contains("no CERTIFICATE"), "{reason}");
        let (key_name, reason) = error_of(&config(Some(c.clone()), Some(garbage)));
        assert_eq!(key_name, "tls.key_file");
        assert!(reason.contains("no PRIVATE KEY"), "{reason}");

        // The cert where the key should be: no key in it.
        assert_eq!(error_of(&config(Some(c.clone()), Some(c.clone()))).0, "tls.key_file");

        // A broken key section: the error shows none of its lines.
        let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
        let broken =
            format!("-----BEGIN PRIVATE KEY-----\n{}!!\n-----END PRIVATE KEY-----\n", body.join("\n"));
        let (key_name, reason) = error_of(&config(Some(c.clone()), Some(d.file("broken.pem", &broken))));
        assert_eq!(key_name, "tls.key_file");
        for line in &body {
            assert!(!reason.contains(line), "{reason}");
        }

        // Another certificate's key.
        let (key_name, reason) = error_of(&config(Some(c), Some(d.file("other.pem", &other_key))));
        assert_eq!(key_name, "tls.key_file");
        assert!(reason.contains("does not belong"), "{reason}");
    }
}
