//! A planned dm device: its name, uuid and table. Tables refer to the devices beneath them
//! symbolically ([`DevRef`]), because a device planned in the same stack has no dev_t until it
//! exists; [`DevicePlan::resolve`] turns the plan into the typed table the kernel is given.

use crate::plan::crypt::CryptTargetParams;
use crate::plan::names::DeviceName;
use crate::plan::raid::RaidTargetParams;
use devicemapper::{
    DataBlocks, Device, LinearTargetParams, Sectors, TargetParams, ThinDevId, ThinPoolTargetParams,
    ThinTargetParams,
};
use std::fmt;

/// A device a table line points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevRef {
    /// An existing block device (a drive), by dev_t.
    Disk(Device),
    /// A dm device of the same plan (or an earlier one), by name.
    Dm(DeviceName),
}

/// One target, before its device references are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    Linear {
        dev: DevRef,
        offset: Sectors,
    },
    ThinPool {
        meta: DevRef,
        data: DevRef,
        block: Sectors,
        low_water: DataBlocks,
        features: Vec<String>,
    },
    Thin {
        pool: DevRef,
        thin_id: ThinDevId,
    },
    /// dm-crypt with pxd's cipher and a key named `key` in the kernel keyring.
    Crypt {
        dev: DevRef,
        key: String,
        workqueues: crate::plan::crypt::Workqueues,
    },
    /// dm-raid raid1 over (metadata, data) legs; `None` leaves a leg out.
    Raid {
        legs: Vec<Option<(DevRef, DevRef)>>,
        nosync: bool,
    },
}

/// One table line of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSpec {
    pub start: Sectors,
    pub length: Sectors,
    pub target: TargetSpec,
}

/// A device as it should be in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    pub name: DeviceName,
    pub segments: Vec<SegmentSpec>,
    /// Activate with a read-only table (read-only clones and snapshots).
    pub read_only: bool,
}

/// A resolved target: the typed params devicemapper parses and prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Linear(LinearTargetParams),
    ThinPool(ThinPoolTargetParams),
    Thin(ThinTargetParams),
    Crypt(CryptTargetParams),
    Raid(RaidTargetParams),
}

/// A resolved table line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub start: Sectors,
    pub length: Sectors,
    pub target: Target,
}

impl Line {
    /// Whether `self` and `other` map the same data the same way: equal, or crypt lines told
    /// apart only by their workqueue bypass, which a live reload may change.
    pub fn same_layout(&self, other: &Line) -> bool {
        match (&self.target, &other.target) {
            (Target::Crypt(a), Target::Crypt(b)) => {
                (self.start, self.length) == (other.start, other.length) && a.layout() == b.layout()
            }
            _ => self == other,
        }
    }
}

/// [`Line::same_layout`] for whole tables.
pub fn same_layout(a: &[Line], b: &[Line]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_layout(y))
}

/// Why a table could not be resolved or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{device} needs {missing}, which does not exist")]
    Unresolved { device: String, missing: String },
    #[error("cannot read a {ttype:?} table line {params:?}: {reason}")]
    Unreadable {
        ttype: String,
        params: String,
        reason: String,
    },
}

impl DevicePlan {
    /// Total length, in sectors.
    pub fn length(&self) -> Sectors {
        self.segments.iter().map(|s| s.length).sum()
    }

    /// The plan's table with every [`DevRef`] replaced by a dev_t from `lookup`.
    pub fn resolve(
        &self,
        lookup: &dyn Fn(&DeviceName) -> Option<Device>,
    ) -> Result<Vec<Line>, TableError> {
        let dev = |r: &DevRef| match r {
            DevRef::Disk(d) => Ok(*d),
            DevRef::Dm(name) => lookup(name).ok_or_else(|| TableError::Unresolved {
                device: self.name.to_string(),
                missing: name.to_string(),
            }),
        };
        self.segments
            .iter()
            .map(|seg| {
                let target = match &seg.target {
                    TargetSpec::Linear { dev: d, offset } => {
                        Target::Linear(LinearTargetParams::new(dev(d)?, *offset))
                    }
                    TargetSpec::ThinPool {
                        meta,
                        data,
                        block,
                        low_water,
                        features,
                    } => Target::ThinPool(ThinPoolTargetParams::new(
                        dev(meta)?,
                        dev(data)?,
                        *block,
                        *low_water,
                        features.clone(),
                    )),
                    TargetSpec::Thin { pool, thin_id } => {
                        Target::Thin(ThinTargetParams::new(dev(pool)?, *thin_id, None))
                    }
                    TargetSpec::Crypt {
                        dev: d,
                        key,
                        workqueues,
                    } => Target::Crypt(CryptTargetParams::pxd(dev(d)?, key, *workqueues)),
                    TargetSpec::Raid { legs, nosync } => {
                        let legs = legs
                            .iter()
                            .map(|l| match l {
                                Some((m, d)) => Ok(Some((dev(m)?, dev(d)?))),
                                None => Ok(None),
                            })
                            .collect::<Result<Vec<_>, TableError>>()?;
                        Target::Raid(RaidTargetParams::raid1(legs, *nosync))
                    }
                };
                Ok(Line {
                    start: seg.start,
                    length: seg.length,
                    target,
                })
            })
            .collect()
    }

    /// The dm names this device's table points at: what must exist before it is made.
    pub fn depends_on(&self) -> Vec<&DeviceName> {
        let mut out = Vec::new();
        for seg in &self.segments {
            let refs: Vec<&DevRef> = match &seg.target {
                TargetSpec::Linear { dev, .. } => vec![dev],
                TargetSpec::ThinPool { meta, data, .. } => vec![meta, data],
                TargetSpec::Thin { pool, .. } => vec![pool],
                TargetSpec::Crypt { dev, .. } => vec![dev],
                TargetSpec::Raid { legs, .. } => {
                    legs.iter().flatten().flat_map(|(m, d)| [m, d]).collect()
                }
            };
            out.extend(refs.into_iter().filter_map(|r| match r {
                DevRef::Dm(n) => Some(n),
                DevRef::Disk(_) => None,
            }));
        }
        out
    }
}

impl Target {
    /// Parses one line of a table as the kernel reports it (`DM_STATUS_TABLE`).
    pub fn parse(ttype: &str, params: &str) -> Result<Target, TableError> {
        let whole = format!("{ttype} {params}");
        let unreadable = |reason: String| TableError::Unreadable {
            ttype: ttype.to_owned(),
            params: params.to_owned(),
            reason,
        };
        match ttype {
            "linear" => whole.parse().map(Target::Linear),
            "thin-pool" => whole.parse().map(Target::ThinPool),
            "thin" => whole.parse().map(Target::Thin),
            "crypt" => whole.parse().map(Target::Crypt),
            "raid" => whole.parse().map(Target::Raid),
            other => return Err(unreadable(format!("pxd does not plan {other} targets"))),
        }
        .map_err(|e| unreadable(e.to_string()))
    }

    /// (target type, params), the form `DM::table_load` takes.
    pub fn raw(&self) -> (String, String) {
        match self {
            Target::Linear(p) => (p.target_type().to_string(), p.param_str()),
            Target::ThinPool(p) => (p.target_type().to_string(), p.param_str()),
            Target::Thin(p) => (p.target_type().to_string(), p.param_str()),
            Target::Crypt(p) => (p.target_type().to_string(), p.param_str()),
            Target::Raid(p) => (p.target_type().to_string(), p.param_str()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ttype, params) = self.target.raw();
        write!(f, "{} {} {ttype} {params}", *self.start, *self.length)
    }
}

/// Lines in the tuple form devicemapper's ioctls use.
pub fn raw_table(lines: &[Line]) -> Vec<(u64, u64, String, String)> {
    lines
        .iter()
        .map(|l| {
            let (t, p) = l.target.raw();
            (*l.start, *l.length, t, p)
        })
        .collect()
}

/// Parses a table as the kernel reports it.
pub fn parse_table(raw: &[(u64, u64, String, String)]) -> Result<Vec<Line>, TableError> {
    raw.iter()
        .map(|(start, length, t, p)| {
            Ok(Line {
                start: Sectors(*start),
                length: Sectors(*length),
                target: Target::parse(t, p)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::names::{Id, Kind};

    #[test]
    fn crypt_lines_apart_only_in_workqueue_flags_have_the_same_layout() {
        let line = |p: &str| Line {
            start: Sectors(0),
            length: Sectors(2048),
            target: Target::parse("crypt", p).unwrap(),
        };
        let key = "aes-xts-plain64 :64:logon:pxd:pxd-n1-crypt-v1 0 253:3 0";
        // As the kernel prints them: its own order, its own count.
        let both = line(&format!(
            "{key} 5 allow_discards no_read_workqueue no_write_workqueue sector_size:4096 iv_large_sectors"
        ));
        let reads = line(&format!(
            "{key} 4 allow_discards no_read_workqueue sector_size:4096 iv_large_sectors"
        ));
        let small = line(&format!("{key} 1 allow_discards"));
        assert_ne!(both, reads);
        assert!(both.same_layout(&reads) && reads.same_layout(&both));
        assert!(
            !both.same_layout(&small),
            "512-byte sectors map differently"
        );
        let longer = Line {
            length: Sectors(4096),
            ..reads.clone()
        };
        assert!(!reads.same_layout(&longer));
        let linear = Line {
            start: Sectors(0),
            length: Sectors(2048),
            target: Target::parse("linear", "253:3 0").unwrap(),
        };
        assert!(linear.same_layout(&linear.clone()) && !linear.same_layout(&reads));
        assert!(same_layout(
            std::slice::from_ref(&both),
            std::slice::from_ref(&reads)
        ));
        assert!(!same_layout(&[both], &[reads, linear]));
    }

    #[test]
    fn kernel_tables_parse_into_the_same_typed_lines_pxd_renders() {
        let raw = vec![
            (0, 2048, "linear".to_owned(), "254:16 4096".to_owned()),
            (
                2048,
                1000,
                "thin-pool".to_owned(),
                "253:0 253:1 128 32 1 skip_block_zeroing".to_owned(),
            ),
            (3048, 8, "thin".to_owned(), "253:2 7".to_owned()),
        ];
        let lines = parse_table(&raw).unwrap();
        assert_eq!(raw_table(&lines), raw);
        assert_eq!(lines[2].to_string(), "3048 8 thin 253:2 7");
    }

    #[test]
    fn unknown_targets_are_refused_by_name() {
        let err = Target::parse("zero", "").unwrap_err();
        assert!(err.to_string().contains("zero"), "{err}");
        assert!(Target::parse("linear", "8:0").is_err());
    }

    #[test]
    fn unresolved_references_name_the_missing_device() {
        let node = Id::node("n1").unwrap();
        let id = Id::object("v1").unwrap();
        let pool = DeviceName::new(&node, Kind::Pool, &Id::object("p0").unwrap(), None);
        let plan = DevicePlan {
            name: DeviceName::new(&node, Kind::Thin, &id, None),
            read_only: false,
            segments: vec![SegmentSpec {
                start: Sectors(0),
                length: Sectors(8),
                target: TargetSpec::Thin {
                    pool: DevRef::Dm(pool.clone()),
                    thin_id: ThinDevId::new_u64(1).unwrap(),
                },
            }],
        };
        assert_eq!(plan.depends_on(), vec![&pool]);
        let err = plan.resolve(&|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pxd-n1-thin-v1 needs pxd-n1-pool-p0, which does not exist"
        );
        let lines = plan.resolve(&|_| Some(Device::from(0xfd02))).unwrap();
        assert_eq!(lines[0].to_string(), "0 8 thin 253:2 1");
    }
}
