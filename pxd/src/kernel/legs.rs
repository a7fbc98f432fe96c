//! A replica leg's kernel plumbing in one call each: exporting it through nvmet (subsystem,
//! allowed host, port, link), removing an export, and connecting to one and waiting for its
//! namespace. These run in the daemon's network namespace, where its ports and sockets live.

use super::nvme_host::{self, ConnectSpec, NvmeError};
use super::nvmet::{Nvmet, NvmetError};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a connect waits for the kernel to show the namespace (1.8 s was measured under
/// emulation; this is far above it).
pub const NAMESPACE_WAIT: Duration = Duration::from_secs(30);

/// Seconds between the kernel's reconnect attempts to a leg that went away.
pub const RECONNECT_DELAY_SECS: u32 = 1;

/// Exports `device` as `nqn` to `host` only, reachable on `port`. Idempotent.
pub fn export(nqn: &str, device: &Path, host: &str, port: SocketAddr) -> Result<(), NvmetError> {
    let nvmet = Nvmet::open()?;
    nvmet.ensure_export(nqn, device, host)?;
    let port = nvmet.ensure_port(port)?;
    nvmet.link(port.id, nqn)
}

/// Unlinks export `nqn` from every port: the kernel tears its controllers down and refuses
/// reconnects, so a host still holding writes for it keeps holding them. Idempotent.
pub fn unlink(nqn: &str) -> Result<(), NvmetError> {
    let nvmet = match Nvmet::open() {
        Ok(nvmet) => nvmet,
        Err(NvmetError::Missing(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    for p in nvmet.ports() {
        nvmet.unlink(p.id, nqn)?;
    }
    Ok(())
}

/// Removes export `nqn` whole. Only for a leg that is going: a host still connected is told
/// its namespace is gone, and fails its I/O to it. Idempotent.
pub fn unexport(nqn: &str) -> Result<(), NvmetError> {
    match Nvmet::open() {
        Ok(nvmet) => nvmet.remove_export(nqn),
        // No nvmet: nothing is exported.
        Err(NvmetError::Missing(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a connect failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Nvme(#[from] NvmeError),
    #[error("the namespace of {nqn} did not appear within {waited:?} of the connect")]
    NoNamespace { nqn: String, waited: Duration },
}

/// Connects to leg `nqn` at `addr` as `host`, never giving the controller up on its own
/// (`ctrl_loss_tmo=-1`: pxd decides when a leg is lost), and waits for its namespace.
pub fn connect(nqn: &str, addr: SocketAddr, host: &str) -> Result<(), ConnectError> {
    let spec = ConnectSpec {
        addr,
        nqn: nqn.to_owned(),
        host_nqn: host.to_owned(),
        ctrl_loss_tmo: -1,
        reconnect_delay: RECONNECT_DELAY_SECS,
    };
    nvme_host::connect(&spec)?;
    let start = Instant::now();
    while nvme_host::namespace_of(nqn).is_none() {
        if start.elapsed() > NAMESPACE_WAIT {
            return Err(ConnectError::NoNamespace {
                nqn: nqn.to_owned(),
                waited: NAMESPACE_WAIT,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
