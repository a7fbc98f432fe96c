//! pxd: a storage node for containers whose data path is the kernel's device-mapper. The
//! daemon plans and repairs dm stacks; the kernel carries every byte of I/O.

// The data plane on one node: planning, the kernel interface, pools, volumes, reconciling.
pub mod crypt;
pub mod durable;
pub mod io;
pub mod kernel;
pub mod plan;
pub mod pool;
pub mod rebuild;
pub mod reconcile;
pub mod volume;

// The control plane: desired state, cluster, API, CLI, daemon.
pub mod api;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod metrics;
pub mod store;
