//! The kernel modules replication needs, loaded at start-up: dm-raid for the raid1, nvmet
//! and nvmet-tcp to export legs, nvme-tcp to reach them, and configfs mounted where nvmet
//! lives. A node that cannot load them still serves single-replica volumes; what is missing
//! is named once, and a replicated step that needs it fails with its own error.

use std::path::Path;
use std::process::Command;

/// What replication loads.
pub const REPLICATION_MODULES: &[&str] = &["dm-raid", "nvmet", "nvmet-tcp", "nvme-tcp"];

const CONFIGFS: &str = "/sys/kernel/config";

/// Whether module `name` is loaded (or built in): `/sys/module` spells it with `_`.
fn loaded(name: &str) -> bool {
    Path::new("/sys/module")
        .join(name.replace('-', "_"))
        .exists()
}

/// Loads what replication needs and mounts configfs; returns what could not be had.
pub fn load_replication() -> Vec<String> {
    let mut missing = Vec::new();
    for m in REPLICATION_MODULES {
        if loaded(m) {
            continue;
        }
        match Command::new("modprobe").arg(m).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => missing.push(format!(
                "module {m}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => missing.push(format!("module {m}: modprobe: {e}")),
        }
    }
    if !Path::new(CONFIGFS).join("nvmet").exists() {
        let mounted = Command::new("mount")
            .args(["-t", "configfs", "none", CONFIGFS])
            .output();
        match mounted {
            Ok(out) if out.status.success() => {}
            Ok(out) => missing.push(format!(
                "configfs on {CONFIGFS}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => missing.push(format!("configfs on {CONFIGFS}: mount: {e}")),
        }
    }
    missing
}
