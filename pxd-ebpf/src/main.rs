//! pxd's eBPF probes.
//!
//! Built for `bpfel-unknown-none` by `pxd/build.rs` and embedded in the `pxd` binary, which
//! loads it with aya (`pxd::io`). Built for the host it is an empty program, so that
//! workspace-wide `cargo check` and `cargo clippy` on the host can include this crate.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod bio;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // eBPF cannot unwind or abort, so the probes are written not to panic: no indexing, no
    // unwrap, wrapping arithmetic. This handler only satisfies `no_std`.
    // SAFETY: no probe code path panics (see above); saying so lets the compiler drop any
    // panic path it could not prove dead by itself.
    unsafe { core::hint::unreachable_unchecked() }
}

/// Host stub; see the crate docs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
