//! The node reconciler (DESIGN §1): observe the kernel, diff it against what this node should
//! have, and apply idempotent steps. A restart, a crash at any step, or a retried API call is
//! just another pass.

pub mod derive;
pub mod desired;
pub mod execute;
pub mod faults;
pub mod joining;
pub mod observe;
pub mod plan_pools;
pub mod plan_volumes;
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

/// What one pass planned, and which of its steps failed.
#[derive(Debug)]
pub struct Pass {
    /// What the kernel showed before the steps ran.
    pub observed: steps::Observed,
    pub steps: Vec<steps::Step>,
    pub failures: Vec<execute::Failure>,
}

/// One pass: observe, plan, execute every step it can (see [`Executor::run`]).
pub fn reconcile_pass(
    dm: &dyn DeviceMapper,
    cluster_key: Option<&ClusterKey>,
    state: &mut NodeState,
    persist: &mut dyn FnMut(&NodeState) -> std::io::Result<()>,
) -> Result<Pass, ReconcileError> {
    let observed = observe::observe(dm, state)?;
    let steps = steps::plan(state, &observed)?;
    let failures = Executor::new(dm, cluster_key).run(&steps, state, persist)?;
    Ok(Pass {
        observed,
        steps,
        failures,
    })
}

/// One pass that fails with its first failed step. Returns the steps that were planned.
pub fn reconcile(
    dm: &dyn DeviceMapper,
    cluster_key: Option<&ClusterKey>,
    state: &mut NodeState,
    persist: &mut dyn FnMut(&NodeState) -> std::io::Result<()>,
) -> Result<Vec<steps::Step>, ReconcileError> {
    let pass = reconcile_pass(dm, cluster_key, state, persist)?;
    match pass.failures.into_iter().next() {
        Some(f) => Err(f.error.into()),
        None => Ok(pass.steps),
    }
}
