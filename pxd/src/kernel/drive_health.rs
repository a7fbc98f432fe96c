//! Whether each member drive of a live pool still answers reads (DESIGN §5, drive failure).
//! One O_DIRECT block is read where each member begins on the pool's own data device, and
//! the metadata device's first block (on the first member). The running pool was assembled
//! from the drives' labels, so a member is named by its place in the pool, never by a path;
//! the label scan alone sees a failed drive only as missing, since its label no longer reads.

use crate::kernel::block::DirectFile;
use crate::kernel::dm::{node_path, DeviceMapper, DmOpError};
use crate::plan::names::{pool_devices, Id};

/// The block read from each member.
const PROBE: usize = 4096;

/// The members (by their place in the pool) of live pool `pool` on `node` that fail a read,
/// with the error. A pool that is not up has nothing to probe.
pub fn failing_members(
    dm: &dyn DeviceMapper,
    node: &Id,
    pool: &Id,
) -> Result<Vec<(usize, String)>, DmOpError> {
    let [meta, data, _] = pool_devices(node, pool);
    let mut out = Vec::new();
    let (meta, data) = (meta.dm_name(), data.dm_name());
    if dm.info(&data)?.is_none() || dm.info(&meta)?.is_none() {
        return Ok(out);
    }
    if let Err(e) = read_block(&node_path(&meta), 0) {
        out.push((0, format!("its metadata: {e}")));
    }
    for (member, (start, ..)) in dm.table(&data)?.iter().enumerate() {
        if out.iter().any(|(m, _)| *m == member) {
            continue;
        }
        if let Err(e) = read_block(&node_path(&data), start * 512) {
            out.push((member, e.to_string()));
        }
    }
    Ok(out)
}

fn read_block(path: &std::path::Path, offset: u64) -> std::io::Result<()> {
    DirectFile::open_read(path)?
        .read_at(offset, PROBE)
        .map(drop)
}
