//! IO accounting with eBPF: loads the `pxd-ebpf` probes and reads their counters.
//!
//! The probe object is built by `pxd/build.rs` and embedded in the binary, so a pxd binary
//! needs nothing on the host but a kernel with BTF (`/sys/kernel/btf/vmlinux`) and root (or
//! `CAP_BPF` + `CAP_PERFMON`). Counters live in kernel maps, keyed by the kernel's `dev_t`;
//! they keep counting whatever pxd does and are read on demand.

mod btf;

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
pub use pxd_ebpf_common::DevT;
use pxd_ebpf_common::{
    IoStats, BIO_LAYOUT_GLOBAL, BIO_QUEUE_PROGRAM, BIO_QUEUE_TRACEPOINT, IO_STATS_MAP, MINOR_BITS,
};

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
        let layout = btf::Btf::parse(&data)
            .and_then(|btf| btf.bio_layout())
            .map_err(IoError::BioLayout)?;
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

        let program_error = |action| {
            move |source| IoError::Program {
                program: BIO_QUEUE_PROGRAM,
                action,
                source: Box::new(source),
            }
        };
        let program: &mut BtfTracePoint = ebpf
            .program_mut(BIO_QUEUE_PROGRAM)
            .ok_or(IoError::MissingProgram(BIO_QUEUE_PROGRAM))?
            .try_into()
            .map_err(program_error("is not a tp_btf program"))?;
        program
            .load(BIO_QUEUE_TRACEPOINT, &kernel_btf)
            .map_err(program_error("loading into the kernel"))?;
        program
            .attach()
            .map_err(program_error("attaching to tracepoint block_bio_queue"))?;

        let map = ebpf
            .take_map(IO_STATS_MAP)
            .ok_or(IoError::MissingMap(IO_STATS_MAP))?;
        let stats = PerCpuHashMap::try_from(map).map_err(|source| IoError::Map {
            map: IO_STATS_MAP,
            action: "opening as a per-CPU hash of dev_t to IoStats".to_owned(),
            source: Box::new(source),
        })?;
        Ok(Self { stats, _ebpf: ebpf })
    }

    /// IO counted on `dev` (a kernel `dev_t`, see [`kernel_dev`]) since the probe was loaded;
    /// zero for a device that has seen none.
    pub fn counts(&self, dev: DevT) -> Result<IoCounts, IoError> {
        match self.stats.get(&dev, 0) {
            Ok(per_cpu) => Ok(IoCounts::sum(per_cpu.iter())),
            Err(MapError::KeyNotFound) => Ok(IoCounts::default()),
            Err(source) => Err(IoError::Map {
                map: IO_STATS_MAP,
                action: format!(
                    "reading the counters of device {}:{}",
                    dev >> MINOR_BITS,
                    dev & ((1 << MINOR_BITS) - 1)
                ),
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
    fn the_probe_object_is_an_elf_file() {
        assert_eq!(PROBE_OBJECT.get(..4), Some(&b"\x7fELF"[..]));
    }
}
