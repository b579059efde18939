//! Stable pseudonyms for governors' reports.
//!
//! A device's pseudonym is an HMAC-SHA-256 of its address under a per-school secret kept in
//! the state directory: the same device is `Device-3F9A1C` in every report, so governors can
//! see a pattern, but nobody without the secret can work back to the address by trying all
//! addresses of the school's network.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The per-school secret.
pub struct Pseudonyms {
    key: [u8; 32],
}

impl Pseudonyms {
    /// Reads the secret, creating it (mode 0600, from the kernel's random source) the first time.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut key = [0; 32];
                key.copy_from_slice(&bytes);
                return Ok(Pseudonyms { key });
            }
            Ok(_) => {
                return Err(std::io::Error::other(
                    "the key file is not 32 bytes; delete it to make a new one (pseudonyms will change)",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut key = [0; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(&key)?;
        f.sync_all()?;
        Ok(Pseudonyms { key })
    }

    /// A secret for tests and benchmarks.
    pub fn with_key(key: [u8; 32]) -> Self {
        Pseudonyms { key }
    }

    fn tag(&self, kind: &str, value: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(kind.as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        let out = mac.finalize().into_bytes();
        format!("{kind}-{:02X}{:02X}{:02X}", out[0], out[1], out[2])
    }

    /// `Device-XXXXXX` for an address (or a device name).
    pub fn device(&self, addr: &str) -> String {
        self.tag("Device", addr)
    }

    /// `Person-XXXXXX` for a member of staff in the change log.
    pub fn person(&self, who: &str) -> String {
        self.tag("Person", who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_per_key_and_distinct() {
        let a = Pseudonyms::with_key([1; 32]);
        let b = Pseudonyms::with_key([2; 32]);
        assert_eq!(a.device("10.0.0.5"), a.device("10.0.0.5"));
        assert_ne!(a.device("10.0.0.5"), a.device("10.0.0.6"));
        assert_ne!(a.device("10.0.0.5"), b.device("10.0.0.5"));
        assert!(a.device("10.0.0.5").starts_with("Device-"));
    }

    #[test]
    fn key_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/report.key");
        let first = Pseudonyms::load_or_create(&path).unwrap().device("1.2.3.4");
        let again = Pseudonyms::load_or_create(&path).unwrap().device("1.2.3.4");
        assert_eq!(first, again);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
