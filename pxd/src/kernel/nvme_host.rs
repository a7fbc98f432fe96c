//! The kernel's NVMe/TCP host: how an attach node reaches a remote leg. A connect is one
//! write of an option string to `/dev/nvme-fabrics`; the controller and its namespace are
//! then kernel objects that outlive the daemon, found again under `/sys/class/nvme`.
//!
//! Remote legs connect with `ctrl_loss_tmo=-1`: when a target vanishes, the kernel holds the
//! leg's I/O and keeps reconnecting instead of failing it, so the raid above never degrades
//! on a timeout. pxd decides a leg is lost (through Raft) and only then deletes the
//! controller, which fails the held I/O and lets the raid go on without that leg.

use devicemapper::Device;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const FABRICS: &str = "/dev/nvme-fabrics";
const CLASS: &str = "/sys/class/nvme";

#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    #[error("nvme connect to {nqn} at {addr}: {source}")]
    Connect {
        nqn: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("nvme: the kernel answered the connect with {0:?}, not instance=N")]
    Answer(String),
    #[error("nvme: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What a connect asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSpec {
    pub addr: SocketAddr,
    pub nqn: String,
    pub host_nqn: String,
    /// Seconds before the kernel gives a lost controller up; -1 never (pxd decides).
    pub ctrl_loss_tmo: i32,
    /// Seconds between reconnect attempts.
    pub reconnect_delay: u32,
}

impl ConnectSpec {
    /// The option string `/dev/nvme-fabrics` takes.
    pub fn options(&self) -> String {
        format!(
            "transport=tcp,traddr={},trsvcid={},nqn={},hostnqn={},ctrl_loss_tmo={},reconnect_delay={}",
            self.addr.ip(),
            self.addr.port(),
            self.nqn,
            self.host_nqn,
            self.ctrl_loss_tmo,
            self.reconnect_delay
        )
    }
}

/// A controller as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// `nvme3`.
    pub name: String,
    pub subsys_nqn: String,
    /// `live`, `connecting`, `resetting`, `deleting`, ...
    pub state: String,
    /// `traddr=10.0.0.2,trsvcid=4420` and the like.
    pub address: String,
    pub transport: String,
    /// The host NQN it connected as: on a kernel shared by several nodes (tests), whose it is.
    pub host_nqn: String,
}

/// Connects to a remote subsystem; returns the new controller's name (`nvme3`).
pub fn connect(spec: &ConnectSpec) -> Result<String, NvmeError> {
    let fail = |source| NvmeError::Connect {
        nqn: spec.nqn.clone(),
        addr: spec.addr,
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(FABRICS)
        .map_err(fail)?;
    f.write_all(spec.options().as_bytes()).map_err(fail)?;
    let mut answer = String::new();
    f.read_to_string(&mut answer).map_err(fail)?;
    parse_instance(&answer)
        .map(|n| format!("nvme{n}"))
        .ok_or_else(|| NvmeError::Answer(answer.trim().to_owned()))
}

/// `instance=3,cntlid=1` → 3.
fn parse_instance(answer: &str) -> Option<u32> {
    answer
        .trim()
        .split(',')
        .find_map(|kv| kv.strip_prefix("instance="))
        .and_then(|n| n.parse().ok())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Every NVMe controller of this kernel.
pub fn controllers() -> Vec<Controller> {
    let mut out: Vec<Controller> = std::fs::read_dir(CLASS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let dir = e.path();
            Controller {
                name: e.file_name().to_string_lossy().into_owned(),
                subsys_nqn: read(&dir.join("subsysnqn")),
                state: read(&dir.join("state")),
                address: read(&dir.join("address")),
                transport: read(&dir.join("transport")),
                host_nqn: read(&dir.join("hostnqn")),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Deletes controller `name` (`nvme3`): held I/O fails, the namespace goes away. Idempotent.
pub fn delete(name: &str) -> Result<(), NvmeError> {
    let path = Path::new(CLASS).join(name).join("delete_controller");
    // One being deleted already refuses a second delete.
    let deleting = || read(&Path::new(CLASS).join(name).join("state")).starts_with("deleting");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() != io::ErrorKind::NotFound && !deleting() => Err(NvmeError::Io {
            op: "write",
            path,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The block device of subsystem `nqn`'s namespace, once the kernel has made it; see
/// [`namespaces`].
pub fn namespace_of(nqn: &str) -> Option<(String, Device)> {
    namespaces().remove(nqn)
}

/// Every NVMe namespace's block device by subsystem NQN: with native multipath (Debian's
/// default) the subsystem's head, `nvmeXnY`, whose `device` is the subsystem; otherwise the
/// controller's own namespace. The first by name where a subsystem shows two.
pub fn namespaces() -> std::collections::BTreeMap<String, (String, Device)> {
    let mut found: Vec<(String, String, Device)> = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_head_name(&name) {
                return None;
            }
            let dir = e.path();
            let nqn = read(&dir.join("device/subsysnqn"));
            let dev: Device = read(&dir.join("dev")).parse().ok()?;
            Some((nqn, name, dev))
        })
        .collect();
    found.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut out = std::collections::BTreeMap::new();
    for (nqn, name, dev) in found {
        out.entry(nqn).or_insert((name, dev));
    }
    out
}

/// `nvme0n1`, not a path device `nvme0c1n1` (hidden under multipath) or a partition.
fn is_head_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("nvme") else {
        return false;
    };
    let Some((sub, ns)) = rest.split_once('n') else {
        return false;
    };
    !sub.is_empty()
        && !ns.is_empty()
        && sub.bytes().all(|b| b.is_ascii_digit())
        && ns.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_string_and_the_answer_are_as_the_kernel_has_them() {
        let spec = ConnectSpec {
            addr: "10.77.0.2:4420".parse().unwrap(),
            nqn: "nqn.2026-11.io.pxd:leg:n2:v1:e3".into(),
            host_nqn: "nqn.2026-11.io.pxd:host:n1".into(),
            ctrl_loss_tmo: -1,
            reconnect_delay: 1,
        };
        assert_eq!(
            spec.options(),
            "transport=tcp,traddr=10.77.0.2,trsvcid=4420,nqn=nqn.2026-11.io.pxd:leg:n2:v1:e3,\
             hostnqn=nqn.2026-11.io.pxd:host:n1,ctrl_loss_tmo=-1,reconnect_delay=1"
        );
        assert_eq!(parse_instance("instance=3,cntlid=1\n"), Some(3));
        assert_eq!(parse_instance("cntlid=1"), None);
        assert!(is_head_name("nvme0n1") && is_head_name("nvme12n3"));
        for not in ["nvme0c1n1", "nvme0", "nvme0n1p1", "nvme-fabrics", "sda"] {
            assert!(!is_head_name(not), "{not}");
        }
    }
}
