//! Volumes on one node: what a user asks for ([`spec`]) and the layers above the thin device
//! (dm-crypt, the filesystem) that serve it.

pub mod limits;
pub mod spec;

use crate::crypt::VolumeKey;
use crate::kernel::dm::DeviceMapper;
use crate::kernel::keyring;
use crate::kernel::stack::{self, AppliedStack, StackError};
use crate::plan::table::{DevicePlan, TargetSpec};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("{device}: placing its key in the kernel keyring: {source}")]
    Keyring {
        device: String,
        source: std::io::Error,
    },
}

/// The keyring description a plan's crypt target reads its key from, if it has one.
fn key_description(plan: &DevicePlan) -> Option<&str> {
    plan.segments.iter().find_map(|s| match &s.target {
        TargetSpec::Crypt { key, .. } => Some(key.as_str()),
        _ => None,
    })
}

/// Runs `f` with the volume key of every crypt target in `plans` in the kernel keyring, where
/// dm-crypt reads it while a table is loaded. The keys leave the keyring when `f` returns.
fn with_keys<T>(
    plans: &[&DevicePlan],
    key: Option<&VolumeKey>,
    f: impl FnOnce() -> Result<T, VolumeError>,
) -> Result<T, VolumeError> {
    let mut held = Vec::new();
    for plan in plans {
        if let (Some(desc), Some(key)) = (key_description(plan), key) {
            let k = keyring::add_logon_key(desc, key.bytes()).map_err(|source| {
                VolumeError::Keyring {
                    device: plan.name.to_string(),
                    source,
                }
            })?;
            held.push(k);
        }
    }
    f()
}

/// Brings up `plans` (lowest first), handing dm-crypt `key` for any crypt layer among them.
/// Adopts devices that exist with the planned tables; on failure removes what it made.
pub fn open(
    dm: &dyn DeviceMapper,
    plans: &[&DevicePlan],
    key: Option<&VolumeKey>,
) -> Result<AppliedStack, VolumeError> {
    with_keys(plans, key, || Ok(stack::apply(dm, plans)?))
}

/// Reloads a live crypt layer with the workqueue flags of its plan, under I/O: the kernel swaps
/// the table at resume, and what it maps does not change. Returns whether it loaded.
pub fn reload_crypt_flags(
    dm: &dyn DeviceMapper,
    plan: &DevicePlan,
    key: &VolumeKey,
) -> Result<bool, VolumeError> {
    with_keys(&[plan], Some(key), || {
        Ok(stack::reload_crypt_flags(dm, plan)?)
    })
}

/// Grows `plans` (lowest first) online; a crypt layer reloads with `key`.
pub fn grow(
    dm: &dyn DeviceMapper,
    plans: &[&DevicePlan],
    key: Option<&VolumeKey>,
) -> Result<Vec<bool>, VolumeError> {
    with_keys(plans, key, || Ok(stack::grow(dm, plans)?))
}
