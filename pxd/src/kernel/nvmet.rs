//! The kernel's NVMe target (nvmet) through configfs: how a replica node exports its legs.
//! Every object is a directory or a file write under `/sys/kernel/config/nvmet`; nothing runs
//! in user space in the data path, so the exports outlive the daemon and are adopted, like dm
//! devices, by the next start.
//!
//! A port's listening socket is made in the network namespace of the thread that enables it
//! (links the first subsystem), which is how several nodes share one kernel in the tests.
//! `ip netns exec` hides configfs (it remounts /sys), so a node in a namespace enters only the
//! network namespace.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where nvmet lives in configfs.
pub const CONFIGFS_NVMET: &str = "/sys/kernel/config/nvmet";
/// The one namespace of each subsystem.
const NSID: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum NvmetError {
    #[error(
        "{0} is missing: load the nvmet and nvmet-tcp modules and mount configfs on /sys/kernel/config"
    )]
    Missing(PathBuf),
    #[error("nvmet: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("nvmet: every port id up to {0} is taken")]
    NoPortId(u32),
}

/// One exported subsystem as configfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub nqn: String,
    pub device: PathBuf,
    pub enabled: bool,
    /// Hosts allowed to connect; empty with `allow_any_host`.
    pub hosts: Vec<String>,
    /// Ports (by id) the subsystem is linked to, i.e. reachable on.
    pub ports: Vec<u32>,
}

/// A TCP port of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub id: u32,
    pub addr: SocketAddr,
}

/// The nvmet configfs tree at `root`.
pub struct Nvmet {
    root: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NvmetError + 'a {
    move |source| NvmetError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), NvmetError> {
    std::fs::write(path, value).map_err(io_err("write", path))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn mkdir(path: &Path) -> Result<(), NvmetError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err("mkdir", path)(e)),
        _ => Ok(()),
    }
}

fn rmdir(path: &Path) -> Result<(), NvmetError> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("rmdir", path)(e)),
        _ => Ok(()),
    }
}

fn unlink(path: &Path) -> Result<(), NvmetError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("unlink", path)(e)),
        _ => Ok(()),
    }
}

fn symlink(target: &Path, link: &Path) -> Result<(), NvmetError> {
    match std::os::unix::fs::symlink(target, link) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io_err("link", link)(e)),
        _ => Ok(()),
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

impl Nvmet {
    /// The system's nvmet tree; refused with what to load when it is not there.
    pub fn open() -> Result<Nvmet, NvmetError> {
        Nvmet::at(Path::new(CONFIGFS_NVMET))
    }

    pub fn at(root: &Path) -> Result<Nvmet, NvmetError> {
        if !root.join("subsystems").is_dir() {
            return Err(NvmetError::Missing(root.to_owned()));
        }
        Ok(Nvmet {
            root: root.to_owned(),
        })
    }

    fn subsystem(&self, nqn: &str) -> PathBuf {
        self.root.join("subsystems").join(nqn)
    }

    fn port_dir(&self, id: u32) -> PathBuf {
        self.root.join("ports").join(id.to_string())
    }

    /// Exports `device` as subsystem `nqn` to `host` only. Idempotent: a subsystem that
    /// exists keeps its namespace if it already points at `device`.
    pub fn ensure_export(&self, nqn: &str, device: &Path, host: &str) -> Result<(), NvmetError> {
        let sub = self.subsystem(nqn);
        mkdir(&sub)?;
        write(&sub.join("attr_allow_any_host"), "0")?;
        let host_dir = self.root.join("hosts").join(host);
        mkdir(&host_dir)?;
        symlink(&host_dir, &sub.join("allowed_hosts").join(host))?;
        let ns = sub.join("namespaces").join(NSID);
        mkdir(&ns)?;
        let want = device.to_string_lossy();
        if read(&ns.join("device_path")) != want || read(&ns.join("enable")) != "1" {
            // The device of an enabled namespace cannot change; disable it first.
            write(&ns.join("enable"), "0")?;
            write(&ns.join("device_path"), &want)?;
            write(&ns.join("enable"), "1")?;
        }
        Ok(())
    }

    /// The port listening on `addr`, made if there is none. Its socket opens, in the calling
    /// thread's network namespace, when the first subsystem is linked to it.
    pub fn ensure_port(&self, addr: SocketAddr) -> Result<Port, NvmetError> {
        if let Some(p) = self.ports().into_iter().find(|p| p.addr == addr) {
            return Ok(p);
        }
        let taken: Vec<u32> = self.ports().iter().map(|p| p.id).collect();
        const MAX_PORT_ID: u32 = 65_535;
        // Making the directory is the claim: another process (a node of another cluster
        // sharing this kernel) may take the same free id at the same moment, and whoever's
        // mkdir loses tries the next one, so that no port's address is written twice.
        let mut free = (1..=MAX_PORT_ID).filter(|i| !taken.contains(i));
        let (id, dir) = loop {
            let id = free.next().ok_or(NvmetError::NoPortId(MAX_PORT_ID))?;
            let dir = self.port_dir(id);
            match std::fs::create_dir(&dir) {
                Ok(()) => break (id, dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("mkdir", &dir)(e)),
            }
        };
        let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
        write(&dir.join("addr_trtype"), "tcp")?;
        write(&dir.join("addr_adrfam"), family)?;
        write(&dir.join("addr_traddr"), &addr.ip().to_string())?;
        write(&dir.join("addr_trsvcid"), &addr.port().to_string())?;
        Ok(Port { id, addr })
    }

    /// Makes subsystem `nqn` reachable on `port`.
    pub fn link(&self, port: u32, nqn: &str) -> Result<(), NvmetError> {
        symlink(
            &self.subsystem(nqn),
            &self.port_dir(port).join("subsystems").join(nqn),
        )
    }

    /// Makes subsystem `nqn` unreachable on `port`: the kernel tears down every controller
    /// connected through it, so a fenced attach node's next I/O fails.
    pub fn unlink(&self, port: u32, nqn: &str) -> Result<(), NvmetError> {
        unlink(&self.port_dir(port).join("subsystems").join(nqn))
    }

    /// Removes subsystem `nqn` whole: unlinked from every port, namespace disabled, hosts
    /// dropped. Idempotent.
    pub fn remove_export(&self, nqn: &str) -> Result<(), NvmetError> {
        let sub = self.subsystem(nqn);
        if !sub.exists() {
            return Ok(());
        }
        for p in self.ports() {
            self.unlink(p.id, nqn)?;
        }
        let ns = sub.join("namespaces").join(NSID);
        if ns.exists() {
            write(&ns.join("enable"), "0")?;
            rmdir(&ns)?;
        }
        for h in entries(&sub.join("allowed_hosts")) {
            unlink(&sub.join("allowed_hosts").join(h))?;
        }
        rmdir(&sub)
    }

    /// Removes a port with no subsystem left on it.
    pub fn remove_port_if_idle(&self, id: u32) -> Result<(), NvmetError> {
        let dir = self.port_dir(id);
        if dir.exists() && entries(&dir.join("subsystems")).is_empty() {
            rmdir(&dir)?;
        }
        Ok(())
    }

    pub fn ports(&self) -> Vec<Port> {
        entries(&self.root.join("ports"))
            .into_iter()
            .filter_map(|name| {
                let id: u32 = name.parse().ok()?;
                let dir = self.port_dir(id);
                let ip: std::net::IpAddr = read(&dir.join("addr_traddr")).parse().ok()?;
                let port: u16 = read(&dir.join("addr_trsvcid")).parse().ok()?;
                Some(Port {
                    id,
                    addr: SocketAddr::new(ip, port),
                })
            })
            .collect()
    }

    /// Every subsystem, for adoption: what is exported, to whom, and on which ports.
    pub fn exports(&self) -> Vec<Export> {
        let ports = self.ports();
        entries(&self.root.join("subsystems"))
            .into_iter()
            .map(|nqn| {
                let sub = self.subsystem(&nqn);
                let ns = sub.join("namespaces").join(NSID);
                Export {
                    device: PathBuf::from(read(&ns.join("device_path"))),
                    enabled: read(&ns.join("enable")) == "1",
                    hosts: entries(&sub.join("allowed_hosts")),
                    ports: ports
                        .iter()
                        .filter(|p| self.port_dir(p.id).join("subsystems").join(&nqn).exists())
                        .map(|p| p.id)
                        .collect(),
                    nqn,
                }
            })
            .collect()
    }
}
