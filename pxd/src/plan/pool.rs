//! Lays out a thin pool over a pool's drives: a metadata slice on the first (fastest) drive and
//! the rest of every drive concatenated into the data device (DESIGN §4, §6).
//!
//! Each drive keeps its first [`LABEL_SECTORS`] for a pxd label, so a drive can later say which
//! pool it belongs to and where, even when the cluster store is out of reach.

use crate::plan::names::{pool_devices, DeviceName, Id};
use crate::plan::table::{DevRef, DevicePlan, SegmentSpec, TargetSpec};
use devicemapper::{DataBlocks, Device, Sectors};

/// 1 MiB at the start of every drive, kept for pxd's own label.
pub const LABEL_SECTORS: Sectors = Sectors(2048);
/// Default allocation chunk: 256 KiB, small enough for cheap snapshots, large enough to keep
/// metadata small. DESIGN §6 bounds it to 64 KiB ..= 1 MiB.
pub const DEFAULT_CHUNK: Sectors = Sectors(512);
pub const MIN_CHUNK: Sectors = Sectors(128);
pub const MAX_CHUNK: Sectors = Sectors(2048);
/// Metadata is sized for this many times the data it first serves, so the pool can grow
/// without running out of metadata.
pub const METADATA_GROWTH: u64 = 4;
/// The metadata is sized from the first drive alone, as if the pool had this many drives of
/// that size: adding drives then never changes the metadata device, only the data device.
pub const METADATA_DRIVES: u64 = 2;
/// The kernel's per-chunk metadata cost is about 48 bytes; pxd plans 64 for headroom.
const METADATA_BYTES_PER_CHUNK: u64 = 64;
const MIN_METADATA: Sectors = Sectors(8 * 2048); // 8 MiB
const MAX_METADATA: Sectors = Sectors(16 * 1024 * 2048 - 2048); // just under 16 GiB, the kernel's limit
/// Free data chunks, as a share of the pool, below which the kernel raises a dm event.
const LOW_WATER_PERCENT: u64 = 5;

/// A drive as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drive {
    pub dev: Device,
    pub size: Sectors,
}

/// What to lay out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub node: Id,
    pub pool: Id,
    /// In placement order: the metadata goes on the first.
    pub drives: Vec<Drive>,
    pub chunk: Sectors,
    pub features: ThinFeatures,
}

/// dm-thin's optional behaviours that pxd sets per pool (its feature arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ThinFeatures {
    /// Zero a newly provisioned chunk before a partial write lands in it. Without it a new
    /// volume can read a deleted volume's data, so pxd keeps it on whatever it costs.
    pub zero_new_chunks: bool,
    /// Pass discards down to the drives, so freed space is freed on them too.
    pub discard_passdown: bool,
}

impl Default for ThinFeatures {
    fn default() -> ThinFeatures {
        ThinFeatures::DEFAULT
    }
}

impl ThinFeatures {
    /// The kernel's defaults, which pxd keeps: see the README's bench section for their cost.
    pub const DEFAULT: ThinFeatures = ThinFeatures {
        zero_new_chunks: true,
        discard_passdown: true,
    };

    /// The thin-pool table's feature arguments.
    ///
    /// Either may be changed by reloading the table, but pxd fixes both when the pool is
    /// made, so that a pool's behaviour never depends on the flags of the daemon running it.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.zero_new_chunks {
            out.push("skip_block_zeroing".to_owned());
        }
        if !self.discard_passdown {
            out.push("no_discard_passdown".to_owned());
        }
        out
    }
}

/// The three devices of a pool, in creation order: meta, data, pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPlan {
    pub meta: DevicePlan,
    pub data: DevicePlan,
    pub pool: DevicePlan,
}

impl PoolPlan {
    pub fn devices(&self) -> [&DevicePlan; 3] {
        [&self.meta, &self.data, &self.pool]
    }

    /// Data chunks in the pool.
    pub fn data_chunks(&self, chunk: Sectors) -> u64 {
        *self.data.length() / *chunk
    }
}

/// Why a pool cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolPlanError {
    #[error("a pool needs at least one drive")]
    NoDrives,
    #[error(
        "chunk is {got} sectors; it must be a multiple of 128 sectors (64 KiB) from {min} to {max}"
    )]
    BadChunk { got: u64, min: u64, max: u64 },
    #[error("drive {dev} has {size} sectors; pxd needs at least {min} on it")]
    DriveTooSmall { dev: Device, size: u64, min: u64 },
}

/// Metadata size for `data` sectors of data in chunks of `chunk`, with room to grow.
pub fn metadata_size(data: Sectors, chunk: Sectors) -> Sectors {
    let chunks = (*data * METADATA_GROWTH).div_ceil(*chunk);
    let bytes = chunks * METADATA_BYTES_PER_CHUNK;
    let sectors = bytes.div_ceil(512).next_multiple_of(2048); // whole MiB
    Sectors(sectors.clamp(*MIN_METADATA, *MAX_METADATA))
}

/// Lays out the pool; pure, so the same spec always yields the same tables.
pub fn plan_pool(spec: &PoolSpec) -> Result<PoolPlan, PoolPlanError> {
    let chunk = spec.chunk;
    if !(*chunk).is_multiple_of(*MIN_CHUNK) || chunk < MIN_CHUNK || chunk > MAX_CHUNK {
        return Err(PoolPlanError::BadChunk {
            got: *chunk,
            min: *MIN_CHUNK,
            max: *MAX_CHUNK,
        });
    }
    let first = spec.drives.first().ok_or(PoolPlanError::NoDrives)?;
    let usable = |d: &Drive| Sectors(d.size.saturating_sub(*LABEL_SECTORS));
    let meta_len = metadata_size(Sectors(*usable(first) * METADATA_DRIVES), chunk);

    // Every drive must hold at least one chunk of data after its label (and the first, the
    // metadata too), or the concatenation would have empty segments.
    for (i, d) in spec.drives.iter().enumerate() {
        let min = *LABEL_SECTORS + *chunk + if i == 0 { *meta_len } else { 0 };
        if *d.size < min {
            return Err(PoolPlanError::DriveTooSmall {
                dev: d.dev,
                size: *d.size,
                min,
            });
        }
    }

    let [meta_name, data_name, pool_name] = pool_devices(&spec.node, &spec.pool);
    let meta = DevicePlan {
        read_only: false,
        name: meta_name.clone(),
        segments: vec![linear(Sectors(0), meta_len, first.dev, LABEL_SECTORS)],
    };

    let mut segments = Vec::new();
    let mut at = Sectors(0);
    for (i, d) in spec.drives.iter().enumerate() {
        let offset = LABEL_SECTORS + if i == 0 { meta_len } else { Sectors(0) };
        let len = d.size - offset;
        segments.push(linear(at, len, d.dev, offset));
        at += len;
    }
    // The pool uses whole chunks only: trim the tail of the last segment.
    let trim = *at % *chunk;
    if let Some(last) = segments.last_mut() {
        last.length -= Sectors(trim);
    }
    let data = DevicePlan {
        read_only: false,
        name: data_name.clone(),
        segments,
    };

    let chunks = *data.length() / *chunk;
    let pool = DevicePlan {
        read_only: false,
        name: pool_name,
        segments: vec![SegmentSpec {
            start: Sectors(0),
            length: data.length(),
            target: TargetSpec::ThinPool {
                meta: DevRef::Dm(meta_name),
                data: DevRef::Dm(data_name),
                block: chunk,
                low_water: DataBlocks((chunks * LOW_WATER_PERCENT / 100).max(1)),
                features: spec.features.args(),
            },
        }],
    };
    Ok(PoolPlan { meta, data, pool })
}

fn linear(start: Sectors, length: Sectors, dev: Device, offset: Sectors) -> SegmentSpec {
    SegmentSpec {
        start,
        length,
        target: TargetSpec::Linear {
            dev: DevRef::Disk(dev),
            offset,
        },
    }
}

/// The name of a pool's thin-pool device, for the layers that stack on it.
pub fn pool_device(node: &Id, pool: &Id) -> DeviceName {
    let [_, _, pool] = pool_devices(node, pool);
    pool
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::table::Target;

    const GIB: u64 = 2 * 1024 * 1024;

    fn spec(sizes: &[u64]) -> PoolSpec {
        PoolSpec {
            node: Id::node("n1").unwrap(),
            pool: Id::object("p0").unwrap(),
            drives: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| Drive {
                    dev: Device {
                        major: 254,
                        minor: 16 * i as u32,
                    },
                    size: Sectors(*s),
                })
                .collect(),
            chunk: DEFAULT_CHUNK,
            features: ThinFeatures::DEFAULT,
        }
    }

    fn resolved(plan: &DevicePlan) -> Vec<String> {
        let fake = |_: &DeviceName| {
            Some(Device {
                major: 253,
                minor: 9,
            })
        };
        plan.resolve(&fake)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn two_drives_concatenate_after_label_and_metadata() {
        let plan = plan_pool(&spec(&[2 * GIB, 2 * GIB])).unwrap();
        let meta = metadata_size(Sectors(2 * (2 * GIB - 2048)), DEFAULT_CHUNK);
        assert_eq!(
            *meta,
            8 * 2048,
            "4 GiB at 256 KiB chunks needs the 8 MiB floor"
        );
        assert_eq!(resolved(&plan.meta), ["0 16384 linear 254:0 2048"]);
        let d0 = 2 * GIB - 2048 - 16384;
        let d1 = 2 * GIB - 2048 - (d0 + 2 * GIB - 2048) % 512;
        assert_eq!(
            resolved(&plan.data),
            [
                format!("0 {d0} linear 254:0 18432"),
                format!("{d0} {d1} linear 254:16 2048"),
            ]
        );
        assert!(
            plan.data.length().is_multiple_of(512),
            "data is whole chunks"
        );
        let chunks = (d0 + d1) / 512;
        assert_eq!(
            resolved(&plan.pool),
            [format!(
                "0 {} thin-pool 253:9 253:9 512 {} 0",
                d0 + d1,
                chunks * 5 / 100
            )]
        );
        let deps: Vec<String> = plan
            .pool
            .depends_on()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(deps, ["pxd-n1-pool-p0-meta", "pxd-n1-pool-p0-data"]);
    }

    #[test]
    fn metadata_grows_with_data_and_is_clamped() {
        let small = metadata_size(Sectors(GIB), DEFAULT_CHUNK);
        let big = metadata_size(Sectors(4096 * GIB), DEFAULT_CHUNK);
        let huge = metadata_size(Sectors(1 << 50), MIN_CHUNK);
        assert_eq!(*small, 16384);
        // 4 TiB * 4 / 256 KiB * 64 B = 4 GiB
        assert_eq!(*big, 4 * GIB);
        assert_eq!(huge, MAX_METADATA);
        assert!(small.is_multiple_of(2048) && big.is_multiple_of(2048));
    }

    #[test]
    fn adding_a_drive_only_appends_to_the_data_device() {
        let one = plan_pool(&spec(&[2 * GIB])).unwrap();
        let two = plan_pool(&spec(&[2 * GIB, 3 * GIB])).unwrap();
        assert_eq!(one.meta, two.meta, "the metadata device never changes");
        let (a, b) = (resolved(&one.data), resolved(&two.data));
        let first = |l: &str| l.split(' ').skip(2).collect::<Vec<_>>().join(" ");
        assert_eq!(first(&a[0]), first(&b[0]), "existing data keeps its place");
        assert_eq!(b.len(), 2);
        assert!(two.data.length() > one.data.length());
    }

    #[test]
    fn planning_is_deterministic() {
        let s = spec(&[3 * GIB, GIB]);
        assert_eq!(plan_pool(&s).unwrap(), plan_pool(&s).unwrap());
    }

    #[test]
    fn bad_specs_are_refused_with_the_limit() {
        assert_eq!(plan_pool(&spec(&[])), Err(PoolPlanError::NoDrives));
        let mut s = spec(&[GIB]);
        s.chunk = Sectors(100);
        assert_eq!(
            plan_pool(&s).unwrap_err().to_string(),
            "chunk is 100 sectors; it must be a multiple of 128 sectors (64 KiB) from 128 to 2048"
        );
        s.chunk = Sectors(4096);
        assert!(matches!(plan_pool(&s), Err(PoolPlanError::BadChunk { .. })));
        let tiny = plan_pool(&spec(&[GIB, 1000])).unwrap_err();
        assert!(matches!(
            tiny,
            PoolPlanError::DriveTooSmall { size: 1000, .. }
        ));
    }

    #[test]
    fn thin_pool_line_has_the_typed_params() {
        let plan = plan_pool(&spec(&[GIB])).unwrap();
        let lines = plan.pool.resolve(&|_| Some(Device::from(0xfd00))).unwrap();
        match &lines[0].target {
            Target::ThinPool(p) => {
                assert_eq!(p.data_block_size, DEFAULT_CHUNK);
                assert!(p.feature_args.is_empty());
            }
            other => panic!("not a thin-pool line: {other:?}"),
        }
    }
}
