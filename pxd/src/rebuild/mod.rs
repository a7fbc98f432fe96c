//! Building a new replica thin-aware (DESIGN §5, "A new replica"): only the blocks a
//! healthy leg's thin device maps are copied, as block frames over the node transport, to
//! the new leg's thin device on the target node.

pub mod copy;
pub mod frame;
pub mod stream;
