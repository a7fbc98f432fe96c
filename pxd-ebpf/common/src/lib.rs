//! Map keys, values and load-time settings shared by the pxd probes (`pxd-ebpf`, built for
//! `bpfel-unknown-none`) and the loader in `pxd::io`.
//!
//! Everything here is `#[repr(C)]` plain data with no padding, so the bytes the probe writes are
//! the bytes userspace reads. With the `user` feature the types implement `aya::Pod`, which is
//! what aya requires of map keys, values and globals.
#![no_std]

// The names below are what aya finds in the object: the probe's static and function names in
// `pxd-ebpf/src/bio.rs`, which its macros take from the identifiers, so they must be kept in step
// by hand (the host test fails to load the probe if they drift).

/// Name of the per-CPU hash map the probe counts into, keyed by [`DevT`], valued [`IoStats`].
pub const IO_STATS_MAP: &str = "IO_STATS";

/// Name of the probe program (a `tp_btf` program on the `block_bio_queue` tracepoint).
pub const BIO_QUEUE_PROGRAM: &str = "block_bio_queue";

/// Name of the tracepoint the probe attaches to.
pub const BIO_QUEUE_TRACEPOINT: &str = "block_bio_queue";

/// Name of the read-only global holding the [`BioLayout`] the loader resolved.
pub const BIO_LAYOUT_GLOBAL: &str = "PXD_BIO_LAYOUT";

/// How many devices the counters map holds. Each entry costs `size_of::<IoStats>()` bytes per
/// possible CPU and is preallocated, so this bounds memory at 32 KiB per CPU.
pub const IO_STATS_MAX_DEVICES: u32 = 1024;

/// A block device number in the kernel's *internal* encoding: `major << 20 | minor`
/// (`MKDEV` in `include/linux/kdev_t.h`, 12 bits of major and 20 of minor).
///
/// This is not the userspace `st_rdev` encoding that glibc's `makedev` produces; convert with
/// `major(st_rdev) << 20 | minor(st_rdev)` (see `pxd::io::kernel_dev`).
pub type DevT = u32;

/// Number of bits of minor in a [`DevT`].
pub const MINOR_BITS: u32 = 20;

/// IO counters for one device, summed over bios at submission.
///
/// Only `REQ_OP_READ` and `REQ_OP_WRITE` bios that carry data are counted; flushes (which carry
/// no data), discards and write-zeroes are not. A later completion-side probe adds a latency
/// histogram in its own map, so this value stays a fixed four counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Read bios submitted.
    pub reads: u64,
    /// Write bios submitted.
    pub writes: u64,
    /// Bytes in the read bios.
    pub read_bytes: u64,
    /// Bytes in the write bios.
    pub written_bytes: u64,
}

/// Byte offsets of the kernel fields the probe reads, resolved by the loader from the running
/// kernel's BTF (`/sys/kernel/btf/vmlinux`).
///
/// Rust eBPF programs cannot emit CO-RE relocations, so instead of compiling in one kernel's
/// struct layout the loader looks the offsets up at load time and writes them into a read-only
/// global. The probe does nothing while `bd_dev` is 0, which is never a valid offset (the field
/// is not first in `struct block_device`), so a probe loaded without a layout counts nothing
/// rather than garbage.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BioLayout {
    /// `offsetof(struct bio, bi_bdev)`: the `struct block_device *` the bio is queued on.
    pub bio_bdev: u32,
    /// `offsetof(struct bio, bi_opf)`: operation (low 8 bits) and flags.
    pub bio_opf: u32,
    /// `offsetof(struct bio, bi_iter) + offsetof(struct bvec_iter, bi_size)`: bytes left in the
    /// bio, which at submission is the whole payload.
    pub bio_size: u32,
    /// `offsetof(struct block_device, bd_dev)`: the device number, a [`DevT`].
    pub bdev_dev: u32,
}

/// `REQ_OP_MASK`: the operation is the low 8 bits of `bi_opf` (`REQ_OP_BITS` in
/// `include/linux/blk_types.h`).
pub const REQ_OP_MASK: u32 = 0xff;
/// `REQ_OP_READ`.
pub const REQ_OP_READ: u32 = 0;
/// `REQ_OP_WRITE`.
pub const REQ_OP_WRITE: u32 = 1;

// SAFETY: both types are #[repr(C)], made only of integers, and have no padding (u64s, then
// u32s), so every bit pattern is a valid value and aya may copy them as bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IoStats {}

// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for BioLayout {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// The probe and the loader copy these as raw bytes: any padding or reordering would make
    /// userspace read counters from the wrong place.
    #[test]
    fn map_types_have_no_padding_and_fit_the_memory_budget() {
        assert_eq!(size_of::<IoStats>(), 4 * size_of::<u64>());
        assert_eq!(align_of::<IoStats>(), 8);
        assert_eq!(size_of::<BioLayout>(), 4 * size_of::<u32>());
        // The documented bound: 32 KiB of counters per CPU.
        assert_eq!(
            IO_STATS_MAX_DEVICES as usize * size_of::<IoStats>(),
            32 * 1024
        );
    }

    #[test]
    fn dev_t_encoding_leaves_twelve_bits_of_major() {
        let (major, minor) = (253u32, 7u32);
        let dev: DevT = major << MINOR_BITS | minor;
        assert_eq!(dev >> MINOR_BITS, major);
        assert_eq!(dev & ((1 << MINOR_BITS) - 1), minor);
        assert_eq!(u32::MAX >> MINOR_BITS, 0xfff);
    }
}
