//! What one node should have: its pools and the volumes (with snapshots) placed on it. The
//! daemon derives this from the cluster store; it is plain data, so the planner is pure.

use crate::crypt::WrappedKey;
use crate::volume::spec::Fs;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeState {
    pub node: String,
    pub pools: Vec<PoolState>,
    pub volumes: Vec<VolumeState>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolState {
    pub id: String,
    /// Drive paths in placement order (metadata on the first).
    pub drives: Vec<PathBuf>,
    /// Allocation chunk, in 512-byte sectors.
    pub chunk_sectors: u64,
}

/// Where a volume is in its life. `Deleting` is recorded before anything is torn down, so a
/// delete interrupted half-way is finished, never forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Live,
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeState {
    pub id: String,
    pub pool: String,
    pub thin_id: u64,
    pub size_bytes: u64,
    pub fs: Fs,
    /// Set once the filesystem exists, so a crash after mkfs never makes it twice.
    pub formatted: bool,
    /// The wrapped data key of an encrypted volume.
    pub key: Option<WrappedKey>,
    pub snapshots: Vec<SnapshotState>,
    pub phase: Phase,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotState {
    pub id: String,
    pub thin_id: u64,
    /// False until `create_snap` is known to have happened; only then is it skipped.
    pub taken: bool,
    pub phase: Phase,
}

impl NodeState {
    pub fn volume(&self, id: &str) -> Option<&VolumeState> {
        self.volumes.iter().find(|v| v.id == id)
    }

    pub fn volume_mut(&mut self, id: &str) -> Option<&mut VolumeState> {
        self.volumes.iter_mut().find(|v| v.id == id)
    }
}
