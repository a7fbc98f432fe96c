//! IO accounting with eBPF: loads the `pxd-ebpf` probes and reads their counters.
//!
//! The probe object is built by `pxd/build.rs` and embedded in the binary, so a pxd binary
//! needs nothing on the host but a kernel with BTF (`/sys/kernel/btf/vmlinux`) and root (or
//! `CAP_BPF` + `CAP_PERFMON`). Counters live in kernel maps, keyed by the kernel's `dev_t`;
//! they keep counting whatever pxd does and are read on demand.

mod btf;
pub mod cgroups;
pub mod limits;
pub mod volumes;

use std::{
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapError, PerCpuHashMap},
    programs::{BtfTracePoint, ProgramError},
    Btf, Ebpf, EbpfError, EbpfLoader, Endianness,
};
use pxd_ebpf_common::{
    CgroupKey, IoStats, LatencyHist, LatencyKey, BIO_COMPLETE_PROGRAM, BIO_COMPLETE_TRACEPOINT,
    BIO_LAYOUT_GLOBAL, BIO_QUEUE_PROGRAM, BIO_QUEUE_TRACEPOINT, IO_BY_CGROUP_MAP, IO_STATS_MAP,
    LATENCY_MAP, MINOR_BITS,
};
pub use pxd_ebpf_common::{DevT, LATENCY_BUCKETS};

/// The probe object, built for the bpf target by `build.rs`.
static PROBE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pxd-ebpf.o"));

/// Where the kernel exposes its own type information.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why loading the probes or reading their counters failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("reading the kernel's BTF from {path} (needs CONFIG_DEBUG_INFO_BTF)")]
    ReadBtf {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing the kernel's BTF from {path}")]
    ParseBtf {
        path: PathBuf,
        #[source]
        source: aya::BtfError,
    },
    #[error("resolving the struct bio layout from the kernel's BTF")]
    BioLayout(#[source] btf::BtfError),
    #[error("checking the block tracepoints' arguments in the kernel's BTF")]
    Tracepoint(#[source] btf::BtfError),
    #[error("loading the probe object into the kernel (needs root or CAP_BPF + CAP_PERFMON)")]
    LoadObject(#[source] Box<EbpfError>),
    #[error("the probe object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the probe object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("program `{program}`: {action}")]
    Program {
        program: &'static str,
        action: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map `{map}`: {action}")]
    Map {
        map: &'static str,
        action: String,
        #[source]
        source: Box<MapError>,
    },
    #[error("stat {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a block device")]
    NotBlockDevice { path: PathBuf },
    #[error("device number {major}:{minor} does not fit the kernel's dev_t (12:20 bits)")]
    DevOutOfRange { major: u32, minor: u32 },
}

/// IO counted on one device since the probe was loaded.
///
/// Only reads and writes that carry data count; flushes, discards and write-zeroes do not. A
/// bio split by the block layer counts once, as submitted.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct IoCounts {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
}

impl IoCounts {
    /// The IO between an `earlier` reading and this one.
    ///
    /// Counters only grow (wrapping at 2^64), so a wrapping difference is exact.
    pub const fn since(&self, earlier: &Self) -> Self {
        Self {
            reads: self.reads.wrapping_sub(earlier.reads),
            writes: self.writes.wrapping_sub(earlier.writes),
            read_bytes: self.read_bytes.wrapping_sub(earlier.read_bytes),
            written_bytes: self.written_bytes.wrapping_sub(earlier.written_bytes),
        }
    }

    /// Sums one device's per-CPU slots.
    fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a IoStats>) -> Self {
        per_cpu.into_iter().fold(Self::default(), |acc, cpu| Self {
            reads: acc.reads.wrapping_add(cpu.reads),
            writes: acc.writes.wrapping_add(cpu.writes),
            read_bytes: acc.read_bytes.wrapping_add(cpu.read_bytes),
            written_bytes: acc.written_bytes.wrapping_add(cpu.written_bytes),
        })
    }
}

/// Completion latencies of one device's reads or writes since the probe was loaded: bucket
/// `b` counts those that took `[2^b, 2^(b+1))` ns (see `pxd_ebpf_common::latency_bucket`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Latencies {
    pub buckets: [u64; LATENCY_BUCKETS],
    pub sum_ns: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            buckets: [0; LATENCY_BUCKETS],
            sum_ns: 0,
        }
    }
}

impl Latencies {
    /// Completions timed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0, |a, b| a.wrapping_add(*b))
    }

    /// The upper bound in seconds of the bucket holding quantile `q` (0 to 1); `None` with
    /// nothing timed.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (b, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_seconds(b));
            }
        }
        Some(bucket_upper_seconds(LATENCY_BUCKETS - 1))
    }

    fn sum<'a>(per_cpu: impl IntoIterator<Item = &'a LatencyHist>) -> Self {
        per_cpu.into_iter().fold(Self::default(), |mut acc, cpu| {
            for (a, b) in acc.buckets.iter_mut().zip(cpu.buckets) {
                *a = a.wrapping_add(b);
            }
            acc.sum_ns = acc.sum_ns.wrapping_add(cpu.sum_ns);
            acc
        })
    }
}

/// The upper bound in seconds of latency bucket `b`: `2^(b+1)` ns.
pub fn bucket_upper_seconds(b: usize) -> f64 {
    (1u128 << (b + 1)) as f64 / 1e9
}

/// Converts a userspace device number (`st_rdev`) to the kernel's internal `dev_t`,
/// `major << 20 | minor`, which is what the probes see in `struct block_device`.
///
/// glibc packs `st_rdev` differently (`makedev`), so the two are not interchangeable.
pub fn kernel_dev(rdev: libc::dev_t) -> Result<DevT, IoError> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    if major >= 1 << (32 - MINOR_BITS) || minor >= 1 << MINOR_BITS {
        return Err(IoError::DevOutOfRange { major, minor });
    }
    Ok(major << MINOR_BITS | minor)
}

/// The kernel `dev_t` of the block device node at `path` (e.g. `/dev/loop3`).
pub fn block_device_dev(path: &Path) -> Result<DevT, IoError> {
    let meta = std::fs::metadata(path).map_err(|source| IoError::Stat {
        path: path.to_owned(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(IoError::NotBlockDevice {
            path: path.to_owned(),
        });
    }
    kernel_dev(meta.rdev())
}

/// The loaded and attached probes.
///
/// Dropping this detaches the programs and frees the maps, so the counters restart from zero
/// at the next load; callers that report totals work in differences ([`IoCounts::since`]).
pub struct IoProbe {
    stats: PerCpuHashMap<MapData, DevT, IoStats>,
    by_cgroup: PerCpuHashMap<MapData, CgroupKey, IoStats>,
    latency: PerCpuHashMap<MapData, LatencyKey, LatencyHist>,
    /// Owns the programs and their links; kept only so that they stay attached.
    _ebpf: Ebpf,
}

impl IoProbe {
    /// Loads the probes into the kernel and attaches them.
    pub fn load() -> Result<Self, IoError> {
        let path = Path::new(KERNEL_BTF);
        let data = std::fs::read(path).map_err(|source| IoError::ReadBtf {
            path: path.to_owned(),
            source,
        })?;
        let ours = btf::Btf::parse(&data).map_err(IoError::BioLayout)?;
        let mut layout = ours.bio_layout().map_err(IoError::BioLayout)?;
        layout.timed_major = dm_major().unwrap_or(0);
        ours.check_tracepoint_arg(BIO_QUEUE_TRACEPOINT, 0, "bio")
            .and_then(|()| ours.check_tracepoint_arg(BIO_COMPLETE_TRACEPOINT, 1, "bio"))
            .map_err(IoError::Tracepoint)?;
        let kernel_btf =
            Btf::parse(&data, Endianness::default()).map_err(|source| IoError::ParseBtf {
                path: path.to_owned(),
                source,
            })?;

        let mut ebpf = EbpfLoader::new()
            .btf(Some(&kernel_btf))
            .override_global(BIO_LAYOUT_GLOBAL, &layout, true)
            .load(PROBE_OBJECT)
            .map_err(|err| IoError::LoadObject(Box::new(err)))?;

        // The completion program first: a bio whose submission is timed then always finds
        // its completion timed too.
        for (program, tracepoint) in [
            (BIO_COMPLETE_PROGRAM, BIO_COMPLETE_TRACEPOINT),
            (BIO_QUEUE_PROGRAM, BIO_QUEUE_TRACEPOINT),
        ] {
            attach(&mut ebpf, program, tracepoint, &kernel_btf)?;
        }
        Ok(Self {
            stats: per_cpu_map(&mut ebpf, IO_STATS_MAP)?,
            by_cgroup: per_cpu_map(&mut ebpf, IO_BY_CGROUP_MAP)?,
            latency: per_cpu_map(&mut ebpf, LATENCY_MAP)?,
            _ebpf: ebpf,
        })
    }

    /// IO counted on `dev` by each cgroup (its kernfs id; 0 for none) since the probe was
    /// loaded.
    pub fn cgroup_counts(&self) -> Result<Vec<(DevT, u64, IoCounts)>, IoError> {
        self.by_cgroup
            .iter()
            .map(|entry| {
                entry
                    .map(|(k, per_cpu)| (k.dev, k.cgroup, IoCounts::sum(per_cpu.iter())))
                    .map_err(|source| IoError::Map {
                        map: IO_BY_CGROUP_MAP,
                        action: "iterating over devices and cgroups".to_owned(),
                        source: Box::new(source),
                    })
            })
            .collect()
    }

    /// Completion latencies of `dev`'s reads and of its writes since the probe was loaded.
    pub fn latencies(&self, dev: DevT) -> Result<(Latencies, Latencies), IoError> {
        let get = |write| match self.latency.get(&LatencyKey { dev, write }, 0) {
            Ok(per_cpu) => Ok(Latencies::sum(per_cpu.iter())),
            Err(MapError::KeyNotFound) => Ok(Latencies::default()),
            Err(source) => Err(IoError::Map {
                map: LATENCY_MAP,
                action: format!("reading the latencies of device {}", dev_name(dev)),
                source: Box::new(source),
            }),
        };
        Ok((get(0)?, get(1)?))
    }

    /// IO counted on `dev` (a kernel `dev_t`, see [`kernel_dev`]) since the probe was loaded;
    /// zero for a device that has seen none.
    pub fn counts(&self, dev: DevT) -> Result<IoCounts, IoError> {
        match self.stats.get(&dev, 0) {
            Ok(per_cpu) => Ok(IoCounts::sum(per_cpu.iter())),
            Err(MapError::KeyNotFound) => Ok(IoCounts::default()),
            Err(source) => Err(IoError::Map {
                map: IO_STATS_MAP,
                action: format!("reading the counters of device {}", dev_name(dev)),
                source: Box::new(source),
            }),
        }
    }

    /// Counts for every device that has seen IO since the probe was loaded.
    pub fn all_counts(&self) -> Result<Vec<(DevT, IoCounts)>, IoError> {
        self.stats
            .iter()
            .map(|entry| {
                entry
                    .map(|(dev, per_cpu)| (dev, IoCounts::sum(per_cpu.iter())))
                    .map_err(|source| IoError::Map {
                        map: IO_STATS_MAP,
                        action: "iterating over devices".to_owned(),
                        source: Box::new(source),
                    })
            })
            .collect()
    }
}

/// device-mapper's block major number, from `/proc/devices`; `None` before dm-mod loads.
fn dm_major() -> Option<u32> {
    let devices = std::fs::read_to_string("/proc/devices").ok()?;
    block_major(&devices, "device-mapper")
}

/// The major number of block driver `driver` in a `/proc/devices` text.
fn block_major(devices: &str, driver: &str) -> Option<u32> {
    let (_, block) = devices.split_once("Block devices:")?;
    block.lines().find_map(|l| {
        let (major, name) = l.trim().split_once(' ')?;
        (name.trim() == driver).then(|| major.parse().ok())?
    })
}

/// `major:minor` of a kernel `dev_t`.
pub fn dev_name(dev: DevT) -> String {
    format!("{}:{}", dev >> MINOR_BITS, dev & ((1 << MINOR_BITS) - 1))
}

/// Loads program `program` of the object and attaches it to `tracepoint`.
fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &'static str,
    btf: &Btf,
) -> Result<(), IoError> {
    let error = |action| {
        move |source| IoError::Program {
            program,
            action,
            source: Box::new(source),
        }
    };
    let p: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or(IoError::MissingProgram(program))?
        .try_into()
        .map_err(error("is not a tp_btf program"))?;
    p.load(tracepoint, btf)
        .map_err(error("loading into the kernel"))?;
    p.attach().map_err(error("attaching to its tracepoint"))?;
    Ok(())
}

/// Takes per-CPU hash map `name` out of the object.
fn per_cpu_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<PerCpuHashMap<MapData, K, V>, IoError> {
    let map = ebpf.take_map(name).ok_or(IoError::MissingMap(name))?;
    PerCpuHashMap::try_from(map).map_err(|source| IoError::Map {
        map: name,
        action: "opening as a per-CPU hash".to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_packs_major_and_minor() {
        assert_eq!(kernel_dev(libc::makedev(7, 3)).expect("loop3"), 7 << 20 | 3);
        // Minor above 255: glibc splits it around the major, the kernel does not.
        assert_eq!(
            kernel_dev(libc::makedev(259, 70000)).expect("nvme"),
            259 << 20 | 70000
        );
        assert!(kernel_dev(libc::makedev(4096, 0)).is_err());
    }

    #[test]
    fn since_is_a_wrapping_difference() {
        let earlier = IoCounts {
            reads: u64::MAX,
            writes: 1,
            read_bytes: 0,
            written_bytes: 4096,
        };
        let later = IoCounts {
            reads: 1,
            writes: 3,
            read_bytes: 512,
            written_bytes: 8192,
        };
        assert_eq!(
            later.since(&earlier),
            IoCounts {
                reads: 2,
                writes: 2,
                read_bytes: 512,
                written_bytes: 4096,
            }
        );
    }

    #[test]
    fn the_device_mapper_major_is_read_from_the_block_section() {
        let devices = "Character devices:\n  1 mem\n253 device-mapper\n\nBlock devices:\n  7 loop\n253 device-mapper\n259 blkext\n";
        assert_eq!(block_major(devices, "device-mapper"), Some(253));
        assert_eq!(block_major(devices, "loop"), Some(7));
        assert_eq!(
            block_major("Block devices:\n  7 loop\n", "device-mapper"),
            None
        );
    }

    #[test]
    fn latency_quantiles_are_bucket_upper_bounds() {
        let mut l = Latencies::default();
        assert_eq!(l.quantile_bound(0.5), None);
        // 90 completions around 1 µs (bucket 10: [1024, 2048) ns), 10 around 1 ms (bucket 20).
        l.buckets[10] = 90;
        l.buckets[20] = 10;
        assert_eq!(l.count(), 100);
        assert_eq!(l.quantile_bound(0.5), Some(2048e-9));
        assert_eq!(l.quantile_bound(0.9), Some(2048e-9));
        assert_eq!(l.quantile_bound(0.99), Some((1u64 << 21) as f64 / 1e9));
    }

    #[test]
    fn the_probe_object_is_an_elf_file() {
        assert_eq!(PROBE_OBJECT.get(..4), Some(&b"\x7fELF"[..]));
    }
}
