//! Block I/O throttles in cgroup files: `io.max` (v2) or `blkio.throttle.*_device` (v1), for
//! one device in one cgroup. The limit controller (`crate::io::limits`) decides the values.

use crate::io::cgroups::Hierarchy;
use crate::io::{dev_name, DevT};
use std::path::{Path, PathBuf};

/// Read IOPS, write IOPS, read bytes/s, write bytes/s; 0 is no limit.
pub type Knobs = [u64; 4];

/// The v1 files, in [`Knobs`] order.
const V1_FILES: [&str; 4] = [
    "blkio.throttle.read_iops_device",
    "blkio.throttle.write_iops_device",
    "blkio.throttle.read_bps_device",
    "blkio.throttle.write_bps_device",
];

/// The v2 `io.max` keys, in [`Knobs`] order.
const V2_KEYS: [&str; 4] = ["riops", "wiops", "rbps", "wbps"];

#[derive(Debug, thiserror::Error)]
#[error("writing {line:?} to {path}: {source}")]
pub struct ThrottleError {
    path: PathBuf,
    line: String,
    source: std::io::Error,
}

fn write(path: PathBuf, line: String) -> Result<(), ThrottleError> {
    std::fs::write(&path, &line).map_err(|source| ThrottleError { path, line, source })
}

/// Sets `dev`'s throttles in cgroup `dir` to `knobs` (0 lifts that one).
pub fn set(h: &Hierarchy, dir: &Path, dev: DevT, knobs: Knobs) -> Result<(), ThrottleError> {
    let dev = dev_name(dev);
    match h {
        Hierarchy::V2 { .. } => {
            let values: Vec<String> = V2_KEYS
                .iter()
                .zip(knobs)
                .map(|(k, v)| match v {
                    0 => format!("{k}=max"),
                    v => format!("{k}={v}"),
                })
                .collect();
            write(dir.join("io.max"), format!("{dev} {}", values.join(" ")))
        }
        Hierarchy::V1 { .. } => {
            for (file, v) in V1_FILES.iter().zip(knobs) {
                // 0 removes the rule in v1.
                write(dir.join(file), format!("{dev} {v}"))?;
            }
            Ok(())
        }
    }
}

/// Under v2, turns the io controller on for the root's children (`+io` in the root's
/// `cgroup.subtree_control`) when it is not: without it no cgroup has an `io.max` to write.
/// Returns whether it had to.
pub fn delegate_io(h: &Hierarchy) -> Result<bool, ThrottleError> {
    let Hierarchy::V2 { mount } = h else {
        return Ok(false);
    };
    let path = mount.join("cgroup.subtree_control");
    let on = std::fs::read_to_string(&path).is_ok_and(|t| t.split_whitespace().any(|c| c == "io"));
    if on {
        return Ok(false);
    }
    write(path, "+io".to_owned()).map(|()| true)
}

/// Whether cgroup `dir` can hold a throttle: v2's root cannot (it has no `io.max`).
pub fn can_throttle(h: &Hierarchy, dir: &Path) -> bool {
    match h {
        Hierarchy::V2 { .. } => dir.join("io.max").exists(),
        Hierarchy::V1 { .. } => dir.join(V1_FILES[0]).exists(),
    }
}

/// The cgroups that bound every cgroup's I/O before the controller has seen it: v2's
/// throttles are hierarchical, so the root's children; v1's are flat, so every cgroup.
pub fn guards(h: &Hierarchy) -> Vec<PathBuf> {
    let mut out = Vec::new();
    match h {
        Hierarchy::V2 { mount } => {
            for e in std::fs::read_dir(mount).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() && can_throttle(h, &p) {
                    out.push(p);
                }
            }
        }
        Hierarchy::V1 { mount } => walk(mount, &mut out, 0),
    }
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    if depth > 32 {
        return;
    }
    out.push(dir.to_owned());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), out, depth + 1);
        }
    }
}

/// Every cgroup in the hierarchy whose throttles name `dev`: what is left to lift when a
/// limit goes, found from the files themselves (so a restart forgets nothing).
pub fn holding(h: &Hierarchy, dev: DevT) -> Vec<PathBuf> {
    let name = format!("{} ", dev_name(dev));
    let mut all = Vec::new();
    walk(h.mount(), &mut all, 0);
    all.into_iter()
        .filter(|dir| {
            let files: &[&str] = match h {
                Hierarchy::V2 { .. } => &["io.max"],
                Hierarchy::V1 { .. } => &V1_FILES,
            };
            files.iter().any(|f| {
                std::fs::read_to_string(dir.join(f))
                    .is_ok_and(|t| t.lines().any(|l| l.starts_with(&name) && !is_lifted(h, l)))
            })
        })
        .collect()
}

/// Whether a throttle line is all "no limit" (v2 keeps a line of `max` values).
fn is_lifted(h: &Hierarchy, line: &str) -> bool {
    match h {
        Hierarchy::V2 { .. } => line
            .split_whitespace()
            .skip(1)
            .all(|kv| kv.ends_with("=max")),
        Hierarchy::V1 { .. } => false,
    }
}
