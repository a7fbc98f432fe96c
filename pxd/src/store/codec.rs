//! How the desired state is kept: one stored object per cluster, node, pool, drive, volume,
//! snapshot and KV entry, keyed by kind and id, JSON-encoded; and how a state is rebuilt
//! from them.

use super::state::{Change, ClusterState};
use super::types::{ClusterOptions, Drive, Node, Pool, Snapshot, Volume};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("stored object {key:?} cannot be decoded: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("stored object key {0:?} names no kind of object")]
    UnknownKey(String),
}

pub(super) fn encode<T: Serialize>(key: String, value: &T) -> Change {
    // Serializing these plain structs to JSON cannot fail (string keys, no custom errors).
    let value = serde_json::to_vec(value).unwrap_or_default();
    Change {
        key,
        value: Some(value),
    }
}

pub(super) fn removed(key: String) -> Change {
    Change { key, value: None }
}

impl ClusterState {
    /// Every object as (key, encoding): what a fresh store must hold for this state.
    pub fn objects(&self) -> Vec<Change> {
        let mut out = Vec::new();
        if let Some(c) = &self.cluster {
            out.push(encode("cluster".into(), c));
        }
        if self.options != ClusterOptions::default() {
            out.push(encode("options".into(), &self.options));
        }
        out.extend(
            self.nodes
                .values()
                .map(|n| encode(format!("node/{}", n.id), n)),
        );
        out.extend(
            self.pools
                .values()
                .map(|p| encode(format!("pool/{}", p.id), p)),
        );
        out.extend(
            self.drives
                .values()
                .map(|d| encode(format!("drive/{}", d.id), d)),
        );
        out.extend(
            self.volumes
                .values()
                .map(|v| encode(format!("volume/{}", v.id), v)),
        );
        out.extend(
            self.snapshots
                .values()
                .map(|s| encode(format!("snapshot/{}", s.id), s)),
        );
        for (ns, space) in &self.kv {
            out.extend(space.iter().map(|(k, v)| encode(format!("kv/{ns}/{k}"), v)));
        }
        out
    }

    /// Adds one stored object back into the state (the inverse of `objects`).
    pub fn load_object(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        fn de<T: for<'a> Deserialize<'a>>(key: &str, value: &[u8]) -> Result<T, StateError> {
            serde_json::from_slice(value).map_err(|source| StateError::Decode {
                key: key.to_owned(),
                source,
            })
        }
        let (kind, rest) = key.split_once('/').unwrap_or((key, ""));
        match kind {
            "cluster" => self.cluster = Some(de(key, value)?),
            "options" => self.options = de(key, value)?,
            "node" => {
                let n: Node = de(key, value)?;
                self.nodes.insert(n.id, n);
            }
            "pool" => {
                let p: Pool = de(key, value)?;
                self.pools.insert(p.id.clone(), p);
            }
            "drive" => {
                let d: Drive = de(key, value)?;
                self.drives.insert(d.id.clone(), d);
            }
            "volume" => {
                let v: Volume = de(key, value)?;
                self.volumes.insert(v.id.clone(), v);
            }
            "snapshot" => {
                let s: Snapshot = de(key, value)?;
                self.snapshots.insert(s.id.clone(), s);
            }
            "kv" => {
                let (ns, k) = rest
                    .split_once('/')
                    .ok_or_else(|| StateError::UnknownKey(key.to_owned()))?;
                let v: String = de(key, value)?;
                self.kv
                    .entry(ns.to_owned())
                    .or_default()
                    .insert(k.to_owned(), v);
            }
            _ => return Err(StateError::UnknownKey(key.to_owned())),
        }
        Ok(())
    }
}
