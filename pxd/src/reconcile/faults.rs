//! Fault injection for crash tests: with `PXD_FAIL_AT_STEP=N` in the environment, the process
//! aborts right before its N-th kernel change (a dm create, load, suspend, resume, message or
//! remove, a mkfs) or state record, as a crash at that point would. Counting kernel calls
//! rather than reconcile steps also covers the windows inside a step, such as the one between
//! suspending a volume for a snapshot and resuming it.

use crate::kernel::dm::{DeviceMapper, DmInfo, DmResult, RawTable, Removed};
use devicemapper::{Device, DmName, DmNameBuf, DmUuid};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Kernel changes counted since the process started: an operation that takes several passes
/// (a drive add: measure, label, then build the pool) can be cut at any of its changes.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// The countdown to an injected crash.
#[derive(Debug, Default)]
pub struct Faults {
    fail_at: Option<usize>,
}

impl Faults {
    pub fn from_env() -> Faults {
        Faults {
            fail_at: std::env::var("PXD_FAIL_AT_STEP")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    /// Counts one change that is about to happen, and crashes if it is the chosen one.
    pub fn tick(&self, what: &dyn std::fmt::Display) {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_at == Some(n) {
            eprintln!("pxd: fault injection: aborting before step {n}: {what}");
            std::process::abort();
        }
    }
}

/// A [`DeviceMapper`] that ticks [`Faults`] before every change it passes on.
pub struct FaultyDm<'a> {
    pub inner: &'a dyn DeviceMapper,
    pub faults: &'a Faults,
}

impl FaultyDm<'_> {
    fn tick(&self, op: &str, name: &DmName) {
        self.faults.tick(&format_args!("{op} {name}"));
    }
}

impl DeviceMapper for FaultyDm<'_> {
    fn info(&self, name: &DmName) -> DmResult<Option<DmInfo>> {
        self.inner.info(name)
    }
    fn create(
        &self,
        name: &DmName,
        uuid: &DmUuid,
        table: &[(u64, u64, String, String)],
    ) -> DmResult<Device> {
        self.tick("create", name);
        self.inner.create(name, uuid, table)
    }
    fn create_read_only(
        &self,
        name: &DmName,
        uuid: &DmUuid,
        table: &[(u64, u64, String, String)],
    ) -> DmResult<Device> {
        self.tick("create", name);
        self.inner.create_read_only(name, uuid, table)
    }
    fn suspend(&self, name: &DmName) -> DmResult<()> {
        self.tick("suspend", name);
        self.inner.suspend(name)
    }
    fn resume(&self, name: &DmName) -> DmResult<()> {
        self.tick("resume", name);
        self.inner.resume(name)
    }
    fn load(&self, name: &DmName, table: &[(u64, u64, String, String)]) -> DmResult<()> {
        self.tick("load", name);
        self.inner.load(name, table)
    }
    fn clear(&self, name: &DmName) -> DmResult<()> {
        self.tick("clear", name);
        self.inner.clear(name)
    }
    fn table(&self, name: &DmName) -> DmResult<RawTable> {
        self.inner.table(name)
    }
    fn status(&self, name: &DmName) -> DmResult<RawTable> {
        self.inner.status(name)
    }
    fn message(&self, name: &DmName, msg: &str) -> DmResult<()> {
        self.faults.tick(&format_args!("message {name} {msg:?}"));
        self.inner.message(name, msg)
    }
    fn remove(&self, name: &DmName) -> DmResult<Removed> {
        self.tick("remove", name);
        self.inner.remove(name)
    }
    fn list(&self) -> DmResult<Vec<(DmNameBuf, Device)>> {
        self.inner.list()
    }
}
