//! The only code with side effects on the host kernel. Everything above it plans pure data and
//! hands it to these narrow interfaces, so planning stays testable without root or a kernel.

pub mod blkid;
pub mod block;
pub mod dm;
pub mod drive_health;
pub mod fs;
pub mod host;
pub mod keyring;
pub mod label;
pub mod leg_copy;
pub mod legs;
pub mod loop_device;
pub mod modules;
pub mod nvme_host;
pub mod nvmet;
pub mod stack;
pub mod thin_tools;
pub mod throttle;
pub mod tools;
