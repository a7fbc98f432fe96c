//! thin-provisioning-tools: `thin_check` on a pool's metadata device before the pool is
//! brought up, and `thin_dump`/`thin_delta` on a live pool's metadata snapshot for what a
//! thin device maps.

use super::dm::DeviceMapper;
use crate::plan::thin_map::{parse_delta, parse_dump, Delta, Mapping};
use devicemapper::DmName;
use std::path::Path;
use std::process::Command;

/// Runs `thin_check` on the metadata device `meta`. `Err` carries what it said (or why it
/// could not run), for the operator: the pool is then left alone.
pub fn thin_check(meta: &Path) -> Result<(), String> {
    let out = Command::new("thin_check")
        .arg(meta)
        .output()
        .map_err(|e| format!("thin_check could not run ({e}); install thin-provisioning-tools"))?;
    if out.status.success() {
        return Ok(());
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = said[said.len().saturating_sub(3)..].join("; ");
    Err(format!("thin_check failed ({}): {tail}", out.status))
}

/// Why the mapping of a thin device could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("metadata snapshot of pool {pool}: {source}")]
    Snapshot {
        pool: String,
        source: super::dm::DmOpError,
    },
    #[error("{tool} could not run ({source}); install thin-provisioning-tools")]
    Missing {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {said}")]
    Failed {
        tool: &'static str,
        status: std::process::ExitStatus,
        said: String,
    },
    #[error(transparent)]
    Parse(#[from] crate::plan::thin_map::MapError),
}

/// A pool holds one metadata snapshot at a time: one reader at a time in this daemon.
static SNAPSHOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `tool` with `args` on a metadata snapshot of live pool `pool` (metadata device
/// `meta`): the pool reserves one, the tool reads it, and it is released whatever happens.
/// A snapshot left reserved (a crash mid-read) is released first.
fn on_metadata_snapshot(
    dm: &dyn DeviceMapper,
    pool: &DmName,
    meta: &Path,
    tool: &'static str,
    args: &[String],
) -> Result<String, MappingError> {
    let _one = SNAPSHOT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let message = |m: &str| dm.message(pool, m);
    let snapshot = |source| MappingError::Snapshot {
        pool: pool.to_string(),
        source,
    };
    if message("reserve_metadata_snap").is_err() {
        let _ = message("release_metadata_snap");
        message("reserve_metadata_snap").map_err(snapshot)?;
    }
    let out = Command::new(tool)
        .arg("--metadata-snap")
        .args(args)
        .arg(meta)
        .output();
    let released = message("release_metadata_snap").map_err(snapshot);
    let out = out.map_err(|source| MappingError::Missing { tool, source })?;
    if !out.status.success() {
        return Err(MappingError::Failed {
            tool,
            status: out.status,
            said: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    released?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The blocks thin device `thin_id` of live pool `pool` maps now.
pub fn mapped(
    dm: &dyn DeviceMapper,
    pool: &DmName,
    meta: &Path,
    thin_id: u32,
) -> Result<Mapping, MappingError> {
    let xml = on_metadata_snapshot(
        dm,
        pool,
        meta,
        "thin_dump",
        &["--dev-id".into(), thin_id.to_string()],
    )?;
    Ok(parse_dump(&xml, thin_id)?)
}

/// What changed from thin device `older` (a snapshot) to `newer` in live pool `pool`.
pub fn delta(
    dm: &dyn DeviceMapper,
    pool: &DmName,
    meta: &Path,
    older: u32,
    newer: u32,
) -> Result<Delta, MappingError> {
    let xml = on_metadata_snapshot(
        dm,
        pool,
        meta,
        "thin_delta",
        &[
            "--snap1".into(),
            older.to_string(),
            "--snap2".into(),
            newer.to_string(),
        ],
    )?;
    Ok(parse_delta(&xml)?)
}
