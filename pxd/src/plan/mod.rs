//! Pure planning: specs in, dm tables and names out. Nothing here touches the kernel, so all of
//! it is unit-tested on the host.

pub mod crypt;
pub mod names;
pub mod placement;
pub mod pool;
pub mod raid;
pub mod replica;
pub mod table;
pub mod thin;
pub mod thin_map;
