//! Signatures on block devices, found with libblkid: partition tables, filesystems, raid and
//! LVM members. pxd never overwrites one unless told to.

use std::path::Path;

/// The first signature libblkid finds: a partition table, a filesystem, a raid or LVM member.
pub fn signature(path: &Path) -> Result<Option<String>, String> {
    use libblkid_rs::BlkidProbe;
    let fail = |what: &str, e: libblkid_rs::BlkidErr| format!("libblkid {what}: {e}");
    let mut probe = BlkidProbe::new_from_filename(path).map_err(|e| fail("open", e))?;
    probe
        .enable_superblocks(true)
        .map_err(|e| fail("superblocks", e))?;
    probe
        .enable_partitions(true)
        .map_err(|e| fail("partitions", e))?;
    probe.do_safeprobe().map_err(|e| fail("probe", e))?;
    for key in ["PTTYPE", "TYPE"] {
        if probe.has_value(key).unwrap_or(false) {
            if let Ok(v) = probe.lookup_value(key) {
                return Ok(Some(v));
            }
        }
    }
    Ok(None)
}
