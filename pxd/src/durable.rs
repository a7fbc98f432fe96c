//! Replacing a small state file durably: the node's identity, the cluster key, the Docker
//! plugin's mount counts. A crash leaves the old contents or the new ones, never a mix.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file created with `mode` from the start (a
/// key is never readable by others, not even briefly), synced, then renamed over `path`.
/// On failure, the step that failed (`create`, `write`, `sync`, `rename into place`).
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), (&'static str, std::io::Error)> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| ("create", e))?;
    f.write_all(bytes).map_err(|e| ("write", e))?;
    f.sync_all().map_err(|e| ("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| ("rename into place", e))
}
