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
//! up to date as soon as the submitting syscall returns. A latency histogram will need the
//! matching completion (`block_bio_complete`) and a map from bio to start time; it will live in
//! its own maps and program next to this one.
//!
//! # Why `tp_btf` and load-time offsets
//!
//! A `tp_btf` program gets the raw `struct bio *` without tracefs and without the cost of
//! formatting a trace event. Rust cannot emit CO-RE relocations, so the field offsets come from
//! the loader, which reads them from the running kernel's BTF (see [`BioLayout`]).

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_probe_read_kernel, macros::btf_tracepoint, macros::map,
    maps::PerCpuHashMap, programs::BtfTracePointContext,
};
use pxd_ebpf_common::{
    BioLayout, DevT, IoStats, IO_STATS_MAX_DEVICES, REQ_OP_MASK, REQ_OP_READ, REQ_OP_WRITE,
};

/// Counters per device. Per-CPU, so that the hot path takes no lock and no atomic; the loader
/// sums the CPUs.
#[map]
static IO_STATS: PerCpuHashMap<DevT, IoStats> =
    PerCpuHashMap::with_max_entries(IO_STATS_MAX_DEVICES, 0);

/// Field offsets, written by the loader before the program is verified (`.rodata`, frozen).
#[no_mangle]
static PXD_BIO_LAYOUT: BioLayout = BioLayout {
    bio_bdev: 0,
    bio_opf: 0,
    bio_size: 0,
    bdev_dev: 0,
};

#[btf_tracepoint(function = "block_bio_queue")]
pub fn block_bio_queue(ctx: BtfTracePointContext) -> i32 {
    // A failed read of kernel memory only loses this one bio; nothing useful can be reported
    // from here, so the result is always 0 (tracing programs' return value is ignored).
    let _ = count_bio(&ctx);
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

    let stats = match IO_STATS.get_ptr_mut(dev) {
        Some(stats) => stats,
        None => {
            // First IO on this device since load. Another CPU may insert concurrently; then our
            // insert fails with EEXIST and the lookup below finds that entry, whose slot for
            // this CPU is zero either way.
            let _ = IO_STATS.insert(dev, IoStats::default(), u64::from(BPF_NOEXIST));
            IO_STATS.get_ptr_mut(dev).ok_or(0)?
        }
    };
    // SAFETY: the pointer is this CPU's slot of a live map entry. Tracing programs run with
    // migration disabled, and the kernel skips a nested run of the same program on one CPU
    // (e.g. from an interrupt), so nothing else writes this slot while we hold it.
    let stats = unsafe { &mut *stats };
    let bytes = u64::from(size);
    if is_write {
        stats.writes = stats.writes.wrapping_add(1);
        stats.written_bytes = stats.written_bytes.wrapping_add(bytes);
    } else {
        stats.reads = stats.reads.wrapping_add(1);
        stats.read_bytes = stats.read_bytes.wrapping_add(bytes);
    }
    Ok(())
}
