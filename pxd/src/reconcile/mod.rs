//! The node reconciler (DESIGN §1): observe the kernel, diff it against what this node should
//! have, and apply idempotent steps. A restart, a crash at any step, or a retried API call is
//! just another pass.

pub mod derive;
pub mod desired;
pub mod execute;
pub mod faults;
pub mod io_limits;
pub mod joining;
pub mod lease;
pub mod leg_watch;
pub mod observe;
pub mod plan_pools;
pub mod plan_replicated;
pub mod plan_volumes;
pub mod replica_timeout;
pub mod scrub_schedule;
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
    copy_last: Option<&execute::CopyLast<'_>>,
) -> Result<Pass, ReconcileError> {
    let mut executor = Executor::new(dm, cluster_key).with_copy_last(copy_last);
    let mut observed = observe::observe(dm, state)?;
    let mut steps = steps::plan(state, &observed)?;
    let mut failures = executor.run(&steps, state, persist)?;
    // A step that unblocks others (a leg now served, a namespace now there) is followed by
    // another round, so an attach completes in one pass. Bounded: each round needs progress.
    let mut all_steps = steps.clone();
    for _ in 0..MAX_ROUNDS {
        if !failures.is_empty() || !steps.iter().any(steps::Step::unblocks) {
            break;
        }
        observed = observe::observe(dm, state)?;
        steps = steps::plan(state, &observed)?;
        failures = executor.run(&steps, state, persist)?;
        all_steps.extend(steps.iter().cloned());
    }
    Ok(Pass {
        observed,
        steps: all_steps,
        failures,
    })
}

/// Rounds of one pass after the first: a replica serving, then a connect, then the build.
const MAX_ROUNDS: usize = 3;

/// One pass that fails with its first failed step. Returns the steps that were planned.
pub fn reconcile(
    dm: &dyn DeviceMapper,
    cluster_key: Option<&ClusterKey>,
    state: &mut NodeState,
    persist: &mut dyn FnMut(&NodeState) -> std::io::Result<()>,
) -> Result<Vec<steps::Step>, ReconcileError> {
    let pass = reconcile_pass(dm, cluster_key, state, persist, None)?;
    match pass.failures.into_iter().next() {
        Some(f) => Err(f.error.into()),
        None => Ok(pass.steps),
    }
}
