//! Per-device IO counters at bio submission.
//!
//! # Why `block_bio_queue`
//!
//! The tracepoint fires once per bio when it enters a device's queue (`submit_bio_noacct`), on
//! the device the bio was submitted to. For a dm stack that is the top device, which is the IO
//! the application issued; the bios dm clones for lower devices count against those devices.
//! A bio that the block layer later splits is still counted once, as issued. Request-based
//! tracepoints (`block_rq_issue`) would count after merging and splitting, and never fire for
//! bio-based drivers such as dm, so they do not measure what a volume's user asked for.
//!
//! The counters are bumped at submission, synchronously in the submitting task, so they are
//! up to date as soon as the submitting syscall returns. Each counted bio's start is kept by
//! its address until `block_bio_complete` fires for it, which the block layer does once for
//! every bio whose submission it traced; the time between goes into a log2 histogram.
//!
//! # Which cgroup
//!
//! A bio is counted by device and by the cgroup its `blkcg_gq` charges it to: the cgroup
//! whose `io.max` (or v1 `blkio.throttle.*`) throttles it. That is the submitting task's,
//! except for writeback, which is charged to the cgroup that dirtied the pages.
//!
//! # Why `tp_btf` and load-time offsets
//!
//! A `tp_btf` program gets the raw `struct bio *` without tracefs and without the cost of
//! formatting a trace event. Rust cannot emit CO-RE relocations, so the field offsets come from
//! the loader, which reads them from the running kernel's BTF (see [`BioLayout`]).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    macros::map,
    maps::{LruHashMap, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use pxd_ebpf_common::{
    latency_bucket, BioLayout, BioStart, CgroupKey, DevT, IoStats, LatencyHist, LatencyKey,
    BIO_START_MAX, IO_BY_CGROUP_MAX, IO_STATS_MAX_DEVICES, MINOR_BITS, REQ_OP_MASK, REQ_OP_READ,
    REQ_OP_WRITE,
};

/// Counters per device. Per-CPU, so that the hot path takes no lock and no atomic; the loader
/// sums the CPUs.
#[map]
static IO_STATS: PerCpuHashMap<DevT, IoStats> =
    PerCpuHashMap::with_max_entries(IO_STATS_MAX_DEVICES, 0);

/// Counters per device and cgroup.
#[map]
static IO_BY_CGROUP: PerCpuHashMap<CgroupKey, IoStats> =
    PerCpuHashMap::with_max_entries(IO_BY_CGROUP_MAX, 0);

/// In-flight bios by address: shared by all CPUs, since a bio may complete on another.
#[map]
static BIO_START: LruHashMap<u64, BioStart> = LruHashMap::with_max_entries(BIO_START_MAX, 0);

/// Completion latencies per device and direction.
#[map]
static LATENCY: PerCpuHashMap<LatencyKey, LatencyHist> =
    PerCpuHashMap::with_max_entries(2 * IO_STATS_MAX_DEVICES, 0);

/// Field offsets, written by the loader before the program is verified (`.rodata`, frozen).
#[no_mangle]
static PXD_BIO_LAYOUT: BioLayout = BioLayout {
    bio_bdev: 0,
    bio_opf: 0,
    bio_size: 0,
    bdev_dev: 0,
    bio_blkg: 0,
    blkg_blkcg: 0,
    blkcg_cgroup: 0,
    cgroup_kn: 0,
    kn_id: 0,
    timed_major: 0,
};

#[btf_tracepoint(function = "block_bio_queue")]
pub fn block_bio_queue(ctx: BtfTracePointContext) -> i32 {
    // A failed read of kernel memory only loses this one bio; nothing useful can be reported
    // from here, so the result is always 0 (tracing programs' return value is ignored).
    let _ = count_bio(&ctx);
    0
}

#[btf_tracepoint(function = "block_bio_complete")]
pub fn block_bio_complete(ctx: BtfTracePointContext) -> i32 {
    let _ = time_bio(&ctx);
    0
}

/// Reads `T` at `base + offset` in kernel memory.
#[inline(always)]
fn read_at<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-handling accessor, so an
    // invalid address yields an error, not a fault; `wrapping_add` only computes the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
}

#[inline(always)]
fn count_bio(ctx: &BtfTracePointContext) -> Result<(), i32> {
    // SAFETY: a volatile read of a plain static; volatile so that the compiler does not fold
    // the all-zero initial value, which the loader replaces before the program is loaded.
    let layout = unsafe { core::ptr::read_volatile(&PXD_BIO_LAYOUT) };
    if layout.bdev_dev == 0 {
        return Ok(());
    }
    // TP_PROTO(struct bio *bio)
    let bio: *const u8 = ctx.arg(0);

    let size: u32 = read_at(bio, layout.bio_size)?;
    if size == 0 {
        // Flushes and other data-less bios.
        return Ok(());
    }
    let opf: u32 = read_at(bio, layout.bio_opf)?;
    let is_write = match opf & REQ_OP_MASK {
        REQ_OP_READ => false,
        REQ_OP_WRITE => true,
        _ => return Ok(()),
    };
    let bdev: *const u8 = read_at(bio, layout.bio_bdev)?;
    let dev: DevT = read_at(bdev, layout.bdev_dev)?;

    let bytes = u64::from(size);
    count(&IO_STATS, dev, is_write, bytes)?;
    let key = CgroupKey {
        cgroup: cgroup_of(bio, &layout).unwrap_or(0),
        dev,
        reserved: 0,
    };
    count(&IO_BY_CGROUP, key, is_write, bytes)?;
    if layout.timed_major != 0 && dev >> MINOR_BITS != layout.timed_major {
        return Ok(());
    }
    let start = BioStart {
        // SAFETY: a helper with no arguments and no preconditions.
        start_ns: unsafe { bpf_ktime_get_ns() },
        dev,
        write: u32::from(is_write),
    };
    BIO_START.insert(bio as u64, start, 0)
}

/// This CPU's value of `key` in `map`, made zero on the key's first use since load. Another
/// CPU may insert it concurrently; then our insert fails with EEXIST and the lookup finds
/// that entry, whose slot for this CPU is zero either way.
#[inline(always)]
fn slot<K, V: Default>(map: &PerCpuHashMap<K, V>, key: &K) -> Result<*mut V, i32> {
    if let Some(v) = map.get_ptr_mut(key) {
        return Ok(v);
    }
    let _ = map.insert(key, V::default(), u64::from(BPF_NOEXIST));
    map.get_ptr_mut(key).ok_or(0)
}

/// Adds one bio of `bytes` to `key`'s counters in `map`.
#[inline(always)]
fn count<K>(
    map: &PerCpuHashMap<K, IoStats>,
    key: K,
    is_write: bool,
    bytes: u64,
) -> Result<(), i32> {
    let stats = slot(map, &key)?;
    // SAFETY: the pointer is this CPU's slot of a live map entry. Tracing programs run with
    // migration disabled, and the kernel skips a nested run of the same program on one CPU
    // (e.g. from an interrupt), so nothing else writes this slot while we hold it.
    let stats = unsafe { &mut *stats };
    if is_write {
        stats.writes = stats.writes.wrapping_add(1);
        stats.written_bytes = stats.written_bytes.wrapping_add(bytes);
    } else {
        stats.reads = stats.reads.wrapping_add(1);
        stats.read_bytes = stats.read_bytes.wrapping_add(bytes);
    }
    Ok(())
}

/// The id of the cgroup `bio` is charged to: bio -> blkcg_gq -> blkcg -> cgroup -> kernfs
/// node -> id.
#[inline(always)]
fn cgroup_of(bio: *const u8, layout: &BioLayout) -> Result<u64, i32> {
    if layout.bio_blkg == 0 {
        return Ok(0);
    }
    let blkg: *const u8 = read_at(bio, layout.bio_blkg)?;
    let blkcg: *const u8 = read_at(blkg, layout.blkg_blkcg)?;
    let cgroup: *const u8 = read_at(blkcg, layout.blkcg_cgroup)?;
    let kn: *const u8 = read_at(cgroup, layout.cgroup_kn)?;
    read_at(kn, layout.kn_id)
}

#[inline(always)]
fn time_bio(ctx: &BtfTracePointContext) -> Result<(), i32> {
    // SAFETY: a helper with no arguments and no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // TP_PROTO(struct request_queue *q, struct bio *bio); the loader checks it in the BTF.
    let bio: *const u8 = ctx.arg(1);
    let key = bio as u64;
    // SAFETY: the value is copied out at once; a concurrent remove of the same bio cannot
    // happen, since a bio completes once.
    let start = match unsafe { BIO_START.get(&key) } {
        Some(start) => *start,
        None => return Ok(()),
    };
    BIO_START.remove(&key)?;
    let lat = LatencyKey {
        dev: start.dev,
        write: start.write,
    };
    let hist = slot(&LATENCY, &lat)?;
    // SAFETY: this CPU's slot of a live entry, as in `count`.
    let hist = unsafe { &mut *hist };
    let ns = now.wrapping_sub(start.start_ns);
    if let Some(b) = hist.buckets.get_mut(latency_bucket(ns)) {
        *b = b.wrapping_add(1);
    }
    hist.sum_ns = hist.sum_ns.wrapping_add(ns);
    Ok(())
}
