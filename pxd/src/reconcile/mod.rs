//! The node reconciler (DESIGN §1): observe the kernel, diff it against what this node should
//! have, and apply idempotent steps. A restart, a crash at any step, or a retried API call is
//! just another pass.

pub mod derive;
pub mod desired;
pub mod execute;
pub mod faults;
pub mod observe;
pub mod service;
pub mod steps;

use crate::crypt::ClusterKey;
use crate::kernel::dm::DeviceMapper;
use desired::NodeState;
use execute::{ExecError, Executor};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("observing the kernel: {0}")]
    Observe(#[from] crate::kernel::dm::DmOpError),
    #[error("planning: {0}")]
    Plan(#[from] steps::PlanError),
    #[error(transparent)]
    Execute(#[from] ExecError),
}

/// One pass: observe, plan, execute. Returns the steps that were run.
pub fn reconcile(
    dm: &dyn DeviceMapper,
    cluster_key: Option<&ClusterKey>,
    state: &mut NodeState,
    persist: &mut dyn FnMut(&NodeState) -> std::io::Result<()>,
) -> Result<Vec<steps::Step>, ReconcileError> {
    let observed = observe::observe(dm, state)?;
    let planned = steps::plan(state, &observed)?;
    Executor::new(dm, cluster_key).run(&planned, state, persist)?;
    Ok(planned)
}
