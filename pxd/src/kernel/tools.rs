//! The external tools pxd runs, checked once at start-up so a missing one is named, with the
//! Debian package that has it, before anything needs it.

use std::path::Path;

/// A tool pxd runs: what fails without it, and whether a storage node can work at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
    /// What fails without it.
    pub needed_for: &'static str,
    /// Without it no pool can come up: a storage node refuses to start.
    pub essential: bool,
}

pub const TOOLS: &[Tool] = &[
    Tool {
        name: "thin_check",
        package: "thin-provisioning-tools",
        needed_for: "bringing up any pool (its metadata is checked first)",
        essential: true,
    },
    Tool {
        name: "mkfs.ext4",
        package: "e2fsprogs",
        needed_for: "ext4 volumes",
        essential: false,
    },
    Tool {
        name: "resize2fs",
        package: "e2fsprogs",
        needed_for: "growing ext4 volumes",
        essential: false,
    },
    Tool {
        name: "mkfs.xfs",
        package: "xfsprogs",
        needed_for: "xfs volumes",
        essential: false,
    },
    Tool {
        name: "xfs_growfs",
        package: "xfsprogs",
        needed_for: "growing xfs volumes",
        essential: false,
    },
];

/// The tools of `tools` that no directory of `path` (a `PATH` value) holds as a file.
pub fn missing(tools: &[Tool], path: &str) -> Vec<Tool> {
    tools
        .iter()
        .filter(|t| !std::env::split_paths(path).any(|dir| is_executable(&dir.join(t.name))))
        .copied()
        .collect()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_found_on_the_path_or_named_missing() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("thin_check");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().display().to_string();
        let gone: Vec<&str> = missing(TOOLS, &path).iter().map(|t| t.name).collect();
        assert_eq!(gone, ["mkfs.ext4", "resize2fs", "mkfs.xfs", "xfs_growfs"]);
        assert!(missing(TOOLS, "/nonexistent").iter().any(|t| t.essential));
    }
}
