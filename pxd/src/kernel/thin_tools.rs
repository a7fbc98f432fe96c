//! thin-provisioning-tools, run on a pool's metadata device before the pool is brought up.

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
