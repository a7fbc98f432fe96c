//! Volume keys. Each encrypted volume gets a random 512-bit key (AES-256-XTS takes two 256-bit
//! keys), or one derived from the user's passphrase. A random key is stored only wrapped:
//! sealed with AES-256-GCM under the cluster key, with the volume's id as associated data so a
//! wrapped key cannot be moved to another volume. Key bytes are zeroed when dropped and never
//! printed: `Debug` shows nothing of them.

use crate::plan::crypt::KEY_BYTES;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::Sha256;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// PBKDF2-HMAC-SHA256 rounds for passphrase keys (OWASP's 2023 figure for SHA-256).
pub const PASSPHRASE_ROUNDS: u32 = 600_000;
pub const MAX_PASSPHRASE: usize = 1024;
const CLUSTER_KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("the system's random source failed: {0}")]
    Random(String),
    #[error("secret_key: {0}")]
    Passphrase(String),
    #[error("cluster key {path}: {detail}")]
    ClusterKey { path: PathBuf, detail: String },
    #[error("the wrapped key of volume {volume} does not open with this cluster key")]
    Unwrap { volume: String },
}

/// A volume's data key.
pub struct VolumeKey(Zeroizing<[u8; KEY_BYTES]>);

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VolumeKey(<hidden>)")
    }
}

fn random(buf: &mut [u8]) -> Result<(), CryptError> {
    getrandom::fill(buf).map_err(|e| CryptError::Random(e.to_string()))
}

impl VolumeKey {
    /// A new random key.
    pub fn generate() -> Result<VolumeKey, CryptError> {
        let mut k = Zeroizing::new([0u8; KEY_BYTES]);
        random(k.as_mut_slice())?;
        Ok(VolumeKey(k))
    }

    /// A key derived from a passphrase and the volume's salt (which is stored, not secret).
    pub fn from_passphrase(passphrase: &str, salt: &[u8]) -> Result<VolumeKey, CryptError> {
        if passphrase.is_empty() || passphrase.len() > MAX_PASSPHRASE {
            return Err(CryptError::Passphrase(format!(
                "must be 1 to {MAX_PASSPHRASE} bytes, got {}",
                passphrase.len()
            )));
        }
        let mut k = Zeroizing::new([0u8; KEY_BYTES]);
        pbkdf2::pbkdf2_hmac::<Sha256>(
            passphrase.as_bytes(),
            salt,
            PASSPHRASE_ROUNDS,
            k.as_mut_slice(),
        );
        Ok(VolumeKey(k))
    }

    /// The raw bytes, for handing to the kernel keyring and nothing else.
    pub fn bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// A fresh random salt for a passphrase key.
pub fn new_salt() -> Result<[u8; 16], CryptError> {
    let mut s = [0u8; 16];
    random(&mut s)?;
    Ok(s)
}

/// A volume key sealed under the cluster key; safe to keep in the cluster store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrappedKey {
    pub nonce: [u8; NONCE_BYTES],
    pub sealed: Vec<u8>,
}

/// The key that wraps every volume key of the cluster, kept in a 0600 file on every node:
/// `cluster init` makes it and a joining node receives it over CURVE, so an encrypted volume
/// opens on any node and no one node's disk holds the only copy.
pub struct ClusterKey {
    cipher: Aes256Gcm,
    key: Zeroizing<[u8; CLUSTER_KEY_BYTES]>,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<hidden>)")
    }
}

impl ClusterKey {
    /// Loads the key at `path`, or makes one there (mode 0600) if there is none. A key file
    /// that others can read is refused rather than used.
    pub fn load_or_create(path: &Path) -> Result<ClusterKey, CryptError> {
        let err = |detail: String| CryptError::ClusterKey {
            path: path.to_owned(),
            detail,
        };
        let mut key = Zeroizing::new([0u8; CLUSTER_KEY_BYTES]);
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(err(format!("has mode {mode:o}; it must be 0600")));
                }
                let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
                if bytes.len() != CLUSTER_KEY_BYTES {
                    return Err(err(format!(
                        "holds {} bytes; a cluster key is {CLUSTER_KEY_BYTES}",
                        bytes.len()
                    )));
                }
                key.copy_from_slice(&bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                random(key.as_mut_slice())?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(key.as_slice())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| err(e.to_string()))?;
            }
            Err(e) => return Err(err(e.to_string())),
        }
        Self::from_bytes(key.as_slice()).map_err(|_| err("is not a valid AES-256 key".into()))
    }

    /// Loads the key at `path` if there is one.
    pub fn load(path: &Path) -> Result<Option<ClusterKey>, CryptError> {
        if path.exists() {
            Self::load_or_create(path).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The key in `bytes`, as another member sent it.
    pub fn from_bytes(bytes: &[u8]) -> Result<ClusterKey, CryptError> {
        let bad = || CryptError::ClusterKey {
            path: PathBuf::from("(received)"),
            detail: format!(
                "holds {} bytes; a cluster key is {CLUSTER_KEY_BYTES}",
                bytes.len()
            ),
        };
        let mut key = Zeroizing::new([0u8; CLUSTER_KEY_BYTES]);
        if bytes.len() != CLUSTER_KEY_BYTES {
            return Err(bad());
        }
        key.copy_from_slice(bytes);
        let cipher = Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| bad())?;
        Ok(ClusterKey { cipher, key })
    }

    /// Writes the key to `path` (mode 0600, replacing what was there, durably).
    pub fn save(&self, path: &Path) -> Result<(), CryptError> {
        let err = |e: std::io::Error| CryptError::ClusterKey {
            path: path.to_owned(),
            detail: e.to_string(),
        };
        crate::durable::replace(path, self.key.as_slice(), 0o600).map_err(|(_, e)| err(e))
    }

    /// The raw key, to send to a joining member over CURVE; never to log or show.
    pub fn expose(&self) -> &[u8] {
        self.key.as_slice()
    }

    /// A short fingerprint that tells keys apart without revealing them: the first 8 bytes
    /// of a domain-separated SHA-256 of the key, in hex.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut h = Sha256::new();
        h.update(b"pxd cluster key fingerprint v1\0");
        h.update(self.key.as_slice());
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Seals `key` for volume `volume_id`.
    pub fn wrap(&self, key: &VolumeKey, volume_id: &str) -> Result<WrappedKey, CryptError> {
        let mut nonce = [0u8; NONCE_BYTES];
        random(&mut nonce)?;
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key.bytes(),
                    aad: volume_id.as_bytes(),
                },
            )
            .map_err(|_| CryptError::Unwrap {
                volume: volume_id.to_owned(),
            })?;
        Ok(WrappedKey { nonce, sealed })
    }

    /// Opens the wrapped key of volume `volume_id`.
    pub fn unwrap(&self, wrapped: &WrappedKey, volume_id: &str) -> Result<VolumeKey, CryptError> {
        let fail = || CryptError::Unwrap {
            volume: volume_id.to_owned(),
        };
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(&wrapped.nonce),
                    Payload {
                        msg: &wrapped.sealed,
                        aad: volume_id.as_bytes(),
                    },
                )
                .map_err(|_| fail())?,
        );
        let mut k = Zeroizing::new([0u8; KEY_BYTES]);
        if plain.len() != KEY_BYTES {
            return Err(fail());
        }
        k.copy_from_slice(&plain);
        Ok(VolumeKey(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_key_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("pxd-cluster-key-{}-{tag}", std::process::id()))
    }

    #[test]
    fn wrapped_keys_open_only_for_their_volume_and_cluster() {
        let path = temp_key_path("a");
        let _ = std::fs::remove_file(&path);
        let ck = ClusterKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = VolumeKey::generate().unwrap();
        let w = ck.wrap(&key, "vol1").unwrap();
        assert!(!w
            .sealed
            .windows(16)
            .any(|win| key.bytes().windows(16).any(|k| k == win)));
        assert_eq!(ck.unwrap(&w, "vol1").unwrap().bytes(), key.bytes());
        assert!(matches!(
            ck.unwrap(&w, "vol2"),
            Err(CryptError::Unwrap { .. })
        ));
        // Reloading the same file gives the same cluster key.
        let again = ClusterKey::load_or_create(&path).unwrap();
        assert_eq!(again.unwrap(&w, "vol1").unwrap().bytes(), key.bytes());
        // Another cluster's key cannot open it.
        let other_path = temp_key_path("b");
        let _ = std::fs::remove_file(&other_path);
        let other = ClusterKey::load_or_create(&other_path).unwrap();
        assert!(other.unwrap(&w, "vol1").is_err());
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&other_path).unwrap();
    }

    #[test]
    fn readable_key_files_are_refused() {
        let path = temp_key_path("c");
        std::fs::write(&path, [0u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClusterKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("mode 644; it must be 0600"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn passphrase_keys_are_deterministic_per_salt_and_never_printed() {
        let a = VolumeKey::from_passphrase("correct horse", b"salt-one").unwrap();
        let b = VolumeKey::from_passphrase("correct horse", b"salt-one").unwrap();
        let c = VolumeKey::from_passphrase("correct horse", b"salt-two").unwrap();
        assert_eq!(a.bytes(), b.bytes());
        assert_ne!(a.bytes(), c.bytes());
        assert_eq!(format!("{a:?}"), "VolumeKey(<hidden>)");
        let err = VolumeKey::from_passphrase("", b"s")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "secret_key: must be 1 to 1024 bytes, got 0");
    }
}
