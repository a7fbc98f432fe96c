//! A node's identity in its data directory: its id and name (`node.json`) and its CURVE key
//! pair (`curve.key`, mode 0600). Made at first start and kept across restarts, so a
//! restarted node is the same member with the same keys.

use super::transport::{KeyPair, TransportError};
use crate::store::NodeId;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const NODE_FILE: &str = "node.json";
const KEY_FILE: &str = "curve.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid identity file: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has mode {mode:o}; a key file must be readable by its owner only (0600)")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error(transparent)]
    Keys(#[from] TransportError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeFile {
    id: NodeId,
    name: String,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub id: NodeId,
    pub name: String,
    pub keys: KeyPair,
}

impl Identity {
    /// Loads the identity in `dir`, making one the first time. `name` names a new node (the
    /// host name by default); an existing node keeps its name.
    pub fn load_or_create(dir: &Path, name: Option<&str>) -> Result<Identity, IdentityError> {
        let node_path = dir.join(NODE_FILE);
        let key_path = dir.join(KEY_FILE);
        let node: NodeFile = match read(&node_path)? {
            Some(n) => n,
            None => {
                let n = NodeFile {
                    // Never zero: zero reads as "no node" in places that print ids.
                    id: NodeId(rand::random::<u64>().max(1)),
                    name: name.map(str::to_owned).unwrap_or_else(host_name),
                };
                write_new(&node_path, &n, 0o644)?;
                n
            }
        };
        let keys: KeyPair = match read(&key_path)? {
            Some(k) => {
                let mode = std::fs::metadata(&key_path)
                    .map_err(|source| IdentityError::Io {
                        op: "stat",
                        path: key_path.clone(),
                        source,
                    })?
                    .permissions()
                    .mode()
                    & 0o777;
                if mode & 0o077 != 0 {
                    return Err(IdentityError::KeyMode {
                        path: key_path,
                        mode,
                    });
                }
                k
            }
            None => {
                let k = KeyPair::generate()?;
                write_new(&key_path, &k, 0o600)?;
                k
            }
        };
        Ok(Identity {
            id: node.id,
            name: node.name,
            keys,
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pxd".to_owned())
}

fn read<T: for<'a> Deserialize<'a>>(path: &Path) -> Result<Option<T>, IdentityError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| IdentityError::Decode {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a new file with `mode` from the start (a key is never readable by others, not even
/// briefly), through a temporary name so a crash leaves the old state or the new one.
fn write_new<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), IdentityError> {
    let io = |op, source| IdentityError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| IdentityError::Decode {
        path: path.to_owned(),
        source,
    })?;
    crate::durable::replace(path, &bytes, mode).map_err(|(op, e)| io(op, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path(), Some("n1")).unwrap();
        let b = Identity::load_or_create(dir.path(), Some("other")).unwrap();
        assert_eq!(
            (a.id, &a.name, &a.keys.public),
            (b.id, &b.name, &b.keys.public)
        );
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path(), None).unwrap();
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path(), None),
            Err(IdentityError::KeyMode { .. })
        ));
    }
}
