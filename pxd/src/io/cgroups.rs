//! The cgroup hierarchy that throttles block I/O on this host, and cgroups by id.
//!
//! The probes key I/O by the kernfs id of the cgroup the block layer charges a bio to. That
//! id is the inode number of the cgroup's directory, in the unified (v2) hierarchy when the
//! io controller is there, else in the v1 blkio hierarchy; so a cgroup is found again by
//! walking the mounted hierarchy for the directory with that inode.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Which cgroup interface throttles block I/O here, and where it is mounted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "version")]
pub enum Hierarchy {
    /// cgroup v2 with the io controller: `io.max`.
    V2 {
        #[schema(value_type = String)]
        mount: PathBuf,
    },
    /// cgroup v1's blkio controller: `blkio.throttle.*_device`.
    V1 {
        #[schema(value_type = String)]
        mount: PathBuf,
    },
}

impl Hierarchy {
    /// The hierarchy of this host from `/proc/self/mountinfo`: v2 when its root offers the
    /// io controller, else v1 blkio; `None` when neither is mounted.
    pub fn detect() -> Option<Self> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let controllers = |mount: &Path| {
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        };
        from_mountinfo(&mountinfo, controllers)
    }

    pub fn mount(&self) -> &Path {
        match self {
            Self::V2 { mount } | Self::V1 { mount } => mount,
        }
    }

    /// `v2` or `v1`, for status lines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::V2 { .. } => "v2 (io.max)",
            Self::V1 { .. } => "v1 (blkio.throttle)",
        }
    }

    /// The directory of the cgroup with kernfs id `id`, if it is (still) there.
    pub fn path_of(&self, id: u64) -> Option<PathBuf> {
        let root = self.mount();
        if root.metadata().ok()?.ino() == id {
            return Some(root.to_owned());
        }
        find_dir(root, id, 0)
    }

    /// A cgroup directory's name relative to the hierarchy's root (`/` for the root).
    pub fn relative(&self, dir: &Path) -> String {
        match dir.strip_prefix(self.mount()) {
            Ok(rel) if rel.as_os_str().is_empty() => "/".to_owned(),
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => dir.display().to_string(),
        }
    }
}

/// The kernfs id of the cgroup at `dir`: its inode number.
pub fn id_of(dir: &Path) -> std::io::Result<u64> {
    Ok(dir.metadata()?.ino())
}

/// Depth-first search under `dir` for the directory with inode `id`.
fn find_dir(dir: &Path, id: u64, depth: u32) -> Option<PathBuf> {
    // Deeper than any real hierarchy; only stops a loop through a bind mount.
    if depth > 32 {
        return None;
    }
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_dir() {
            continue;
        }
        if entry.metadata().is_ok_and(|m| m.ino() == id) {
            return Some(entry.path());
        }
        if let Some(found) = find_dir(&entry.path(), id, depth + 1) {
            return Some(found);
        }
    }
    None
}

/// The hierarchy from mountinfo lines (`proc(5)`): the mount point is field 5, the
/// filesystem type follows the ` - ` separator, then the source and the super options.
fn from_mountinfo(mountinfo: &str, controllers: impl Fn(&Path) -> String) -> Option<Hierarchy> {
    let mut v1 = None;
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = before.split_whitespace().nth(4) else {
            continue;
        };
        let mut after = after.split_whitespace();
        let fstype = after.next().unwrap_or_default();
        let options = after.nth(1).unwrap_or_default();
        let mount = PathBuf::from(mount);
        match fstype {
            "cgroup2" if controllers(&mount).split_whitespace().any(|c| c == "io") => {
                return Some(Hierarchy::V2 { mount });
            }
            "cgroup" if options.split(',').any(|o| o == "blkio") => {
                v1.get_or_insert(Hierarchy::V1 { mount });
            }
            _ => {}
        }
    }
    v1
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
41 35 0:36 / /sys/fs/cgroup/blkio rw,nosuid - cgroup cgroup rw,blkio
42 35 0:37 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";

    #[test]
    fn v2_wins_only_where_it_has_the_io_controller() {
        // Hybrid: v2 is mounted but holds no controllers, so blkio (v1) throttles.
        assert_eq!(
            from_mountinfo(HYBRID, |_| String::new()),
            Some(Hierarchy::V1 {
                mount: "/sys/fs/cgroup/blkio".into()
            })
        );
        assert_eq!(
            from_mountinfo(HYBRID, |_| "cpu io memory pids".into()),
            Some(Hierarchy::V2 {
                mount: "/sys/fs/cgroup/unified".into()
            })
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            from_mountinfo(unified, |_| "cpuset cpu io".into()),
            Some(Hierarchy::V2 {
                mount: "/sys/fs/cgroup".into()
            })
        );
        assert_eq!(from_mountinfo("", |_| String::new()), None);
    }

    #[test]
    fn paths_read_relative_to_the_mount() {
        let h = Hierarchy::V1 {
            mount: "/sys/fs/cgroup/blkio".into(),
        };
        assert_eq!(h.relative(Path::new("/sys/fs/cgroup/blkio")), "/");
        assert_eq!(
            h.relative(Path::new("/sys/fs/cgroup/blkio/docker/abc")),
            "/docker/abc"
        );
    }
}
