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

/// Name of the per-CPU hash map the probe counts into by device and cgroup, keyed by
/// [`CgroupKey`], valued [`IoStats`]: which cgroups do I/O to a device, for the limit
/// controller.
pub const IO_BY_CGROUP_MAP: &str = "IO_BY_CGROUP";

/// Name of the hash map from an in-flight bio's address to its [`BioStart`].
pub const BIO_START_MAP: &str = "BIO_START";

/// Name of the per-CPU hash map of completion latencies, keyed by [`LatencyKey`], valued
/// [`LatencyHist`].
pub const LATENCY_MAP: &str = "LATENCY";

/// Name of the completion program (a `tp_btf` program on `block_bio_complete`).
pub const BIO_COMPLETE_PROGRAM: &str = "block_bio_complete";

/// Name of the tracepoint the completion program attaches to. The block layer traces the
/// completion of every bio whose submission it traced (`BIO_TRACE_COMPLETION`), dm's
/// included, so each counted bio is timed once.
pub const BIO_COMPLETE_TRACEPOINT: &str = "block_bio_complete";

/// Name of the read-only global holding the [`BioLayout`] the loader resolved.
pub const BIO_LAYOUT_GLOBAL: &str = "PXD_BIO_LAYOUT";

/// How many devices the counters map holds. Each entry costs `size_of::<IoStats>()` bytes per
/// possible CPU and is preallocated, so this bounds memory at 32 KiB per CPU.
pub const IO_STATS_MAX_DEVICES: u32 = 1024;

/// How many (device, cgroup) pairs the per-cgroup counters hold: 32 bytes each per CPU.
pub const IO_BY_CGROUP_MAX: u32 = 4096;

/// How many bios may be in flight at once and still be timed. The map is LRU: past this the
/// oldest start is forgotten (that one bio goes untimed) rather than a new one refused.
pub const BIO_START_MAX: u32 = 16384;

/// Latency buckets: bucket `b` counts completions that took `[2^b, 2^(b+1))` ns (bucket 0
/// also takes 0 and 1 ns); the last takes everything from `2^39` ns (about 9 minutes) up.
pub const LATENCY_BUCKETS: usize = 40;

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

/// Who did I/O to a device: the device and the cgroup the block layer charges the bio to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CgroupKey {
    /// The kernfs id of the bio's blkcg cgroup, which is the inode number of its directory in
    /// the cgroup filesystem (cgroup v2's or the v1 blkio hierarchy's), and under v2 the
    /// nearest cgroup with the io controller on, where `io.max` can be written. 0 when the
    /// kernel has no blk-cgroup, or the bio has none.
    pub cgroup: u64,
    pub dev: DevT,
    /// Always 0; makes the padding explicit, so the key's bytes are all defined.
    pub reserved: u32,
}

/// When an in-flight bio was submitted, on which device, and which way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BioStart {
    /// `bpf_ktime_get_ns()` at submission.
    pub start_ns: u64,
    pub dev: DevT,
    /// 1 for a write, 0 for a read.
    pub write: u32,
}

/// One device's reads or writes, for the latency histograms.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LatencyKey {
    pub dev: DevT,
    /// 1 for writes, 0 for reads.
    pub write: u32,
}

/// A log2 histogram of completion latencies, and their sum.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHist {
    pub buckets: [u64; LATENCY_BUCKETS],
    pub sum_ns: u64,
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self {
            buckets: [0; LATENCY_BUCKETS],
            sum_ns: 0,
        }
    }
}

/// The bucket of a latency of `ns` nanoseconds: `floor(log2(ns))`, capped at the last. A
/// branch-free binary search, since the bpf target has no count-leading-zeros instruction.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    let mut x = ns;
    let mut b = 0usize;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if x >> shift != 0 {
            x >>= shift;
            b += shift as usize;
        }
    }
    if b >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        b
    }
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
    /// `offsetof(struct bio, bi_blkg)`: the `struct blkcg_gq *` the bio is charged to; 0 on
    /// a kernel without blk-cgroup, and then every bio's cgroup is 0.
    pub bio_blkg: u32,
    /// `offsetof(struct blkcg_gq, blkcg)`: its `struct blkcg *`.
    pub blkg_blkcg: u32,
    /// `offsetof(struct blkcg, css) + offsetof(struct cgroup_subsys_state, cgroup)`: the
    /// blkcg's `struct cgroup *`.
    pub blkcg_cgroup: u32,
    /// `offsetof(struct cgroup, kn)`: the cgroup's `struct kernfs_node *`.
    pub cgroup_kn: u32,
    /// `offsetof(struct kernfs_node, id)`: the cgroup's id, a `u64`.
    pub kn_id: u32,
    /// Only bios on devices of this major number are timed: device-mapper's, whose bios
    /// complete through `block_bio_complete` (a request-based device's never do, and their
    /// starts would only crowd the in-flight map). 0 times every device.
    pub timed_major: u32,
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

// SAFETY: #[repr(C)] integers only, padding made an explicit field (a u64, then two u32s).
#[cfg(feature = "user")]
unsafe impl aya::Pod for CgroupKey {}

// SAFETY: as above: a u64, then two u32s.
#[cfg(feature = "user")]
unsafe impl aya::Pod for BioStart {}

// SAFETY: as above: two u32s.
#[cfg(feature = "user")]
unsafe impl aya::Pod for LatencyKey {}

// SAFETY: as above: u64s only.
#[cfg(feature = "user")]
unsafe impl aya::Pod for LatencyHist {}

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
        assert_eq!(size_of::<BioLayout>(), 10 * size_of::<u32>());
        assert_eq!(size_of::<CgroupKey>(), 16);
        assert_eq!(size_of::<BioStart>(), 16);
        assert_eq!(size_of::<LatencyKey>(), 8);
        assert_eq!(size_of::<LatencyHist>(), (LATENCY_BUCKETS + 1) * 8);
        // The documented bound: 32 KiB of counters per CPU.
        assert_eq!(
            IO_STATS_MAX_DEVICES as usize * size_of::<IoStats>(),
            32 * 1024
        );
    }

    #[test]
    fn latency_buckets_are_floor_log2_capped() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 1);
        assert_eq!(latency_bucket(1023), 9);
        assert_eq!(latency_bucket(1024), 10);
        assert_eq!(latency_bucket((1 << 39) - 1), 38);
        assert_eq!(latency_bucket(1 << 39), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
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
