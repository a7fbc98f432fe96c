//! Who has each volume mounted through the Docker plugin: Docker sends a mount `ID` per
//! container and unmounts by the same `ID`; dvdcli (Mesos) sends none, so those mounts are
//! counted per name. A volume is unmounted when its last reference goes. The counts are kept
//! in a file in the node's data directory, so a daemon restart forgets none: a container
//! still running keeps its volume mounted.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The references to one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRefs {
    /// Mount IDs Docker sent (one per container).
    #[serde(default)]
    pub ids: BTreeSet<String>,
    /// Mounts that came with no ID.
    #[serde(default)]
    pub unnamed: u32,
}

impl VolumeRefs {
    pub fn count(&self) -> usize {
        self.ids.len() + self.unnamed as usize
    }
}

/// Every volume's references, by pxd volume name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refs {
    volumes: BTreeMap<String, VolumeRefs>,
}

impl Refs {
    /// The references to `name`.
    pub fn of(&self, name: &str) -> VolumeRefs {
        self.volumes.get(name).cloned().unwrap_or_default()
    }

    /// Adds a mount of `name` by `id` (empty: none sent). The same ID twice is one
    /// reference: Docker retries a mount it did not see answered.
    pub fn add(&mut self, name: &str, id: &str) {
        let r = self.volumes.entry(name.to_owned()).or_default();
        if id.is_empty() {
            r.unnamed = r.unnamed.saturating_add(1);
        } else {
            r.ids.insert(id.to_owned());
        }
    }

    /// Removes a mount of `name` by `id`; the references left. An unknown ID, or an unmount
    /// with no ID when no such mount is counted, changes nothing.
    pub fn remove(&mut self, name: &str, id: &str) -> usize {
        let Some(r) = self.volumes.get_mut(name) else {
            return 0;
        };
        if id.is_empty() {
            r.unnamed = r.unnamed.saturating_sub(1);
        } else {
            r.ids.remove(id);
        }
        let left = r.count();
        if left == 0 {
            self.volumes.remove(name);
        }
        left
    }

    /// Sets the references of `name` as they were (to undo a change whose mount failed).
    pub fn restore(&mut self, name: &str, refs: VolumeRefs) {
        if refs.count() == 0 {
            self.volumes.remove(name);
        } else {
            self.volumes.insert(name.to_owned(), refs);
        }
    }

    /// Drops every reference to `name` (it was deleted).
    pub fn forget(&mut self, name: &str) {
        self.volumes.remove(name);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a plugin mount record: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The file the references are kept in.
pub struct RefsFile(PathBuf);

impl RefsFile {
    pub fn new(data_dir: &Path) -> RefsFile {
        RefsFile(data_dir.join("docker-mounts.json"))
    }

    /// What was saved, or none yet.
    pub fn load(&self) -> Result<Refs, RefsError> {
        match std::fs::read(&self.0) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| RefsError::Decode {
                path: self.0.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Refs::default()),
            Err(source) => Err(RefsError::Io {
                op: "reading",
                path: self.0.clone(),
                source,
            }),
        }
    }

    /// Saves `refs` whole, durably (see [`crate::durable::replace`]).
    pub fn save(&self, refs: &Refs) -> Result<(), RefsError> {
        let bytes = serde_json::to_vec_pretty(refs).unwrap_or_default();
        crate::durable::replace(&self.0, &bytes, 0o644).map_err(|(op, source)| RefsError::Io {
            op,
            path: self.0.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_count_by_id_or_by_name_and_survive_a_reload() {
        let mut r = Refs::default();
        r.add("db", "c1");
        r.add("db", "c1");
        r.add("db", "c2");
        r.add("db", "");
        r.add("db", "");
        assert_eq!(r.of("db").count(), 4);
        assert_eq!(r.remove("db", "c9"), 4, "an unknown id changes nothing");
        assert_eq!(r.remove("db", "c1"), 3);
        assert_eq!(r.remove("db", ""), 2);
        let dir = std::env::temp_dir().join(format!("pxd-refs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = RefsFile::new(&dir);
        assert_eq!(file.load().unwrap(), Refs::default());
        file.save(&r).unwrap();
        let mut back = file.load().unwrap();
        assert_eq!(back, r);
        assert_eq!(back.remove("db", "c2"), 1);
        assert_eq!(back.remove("db", ""), 0);
        assert_eq!(back.remove("db", ""), 0, "never below zero");
        assert_eq!(back, Refs::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
