//! pxd: a storage node for containers whose data path is the kernel's device-mapper. The
//! daemon plans and repairs dm stacks; the kernel carries every byte of I/O.

pub mod crypt;
pub mod io;
pub mod kernel;
pub mod plan;
pub mod pool;
pub mod reconcile;
pub mod stack;
pub mod volume;
