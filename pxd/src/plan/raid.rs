//! The `raid` target (dm-raid, raid1 only), which devicemapper-rs does not have, as typed
//! params in its style (`FromStr`/`Display`, `TargetParams`), and its status line.
//!
//! A replicated volume's legs are (metadata, data) pairs: the metadata device holds the md
//! superblock and the write-intent bitmap, so a leg that comes back after missing writes
//! resyncs only the regions the bitmap marks dirty. `region_size` sets that granularity.

use devicemapper::{Device, DmError, Sectors, TargetParams, TargetTypeBuf};
use std::fmt;
use std::str::FromStr;

const RAID_TARGET_NAME: &str = "raid";
const RAID1: &str = "raid1";

/// Bitmap region: 1 MiB. A returning leg copies whole regions, so this bounds the resync of
/// one scattered 4 KiB write; the bitmap of a 1 TiB leg stays at 128 KiB.
pub const REGION_SECTORS: Sectors = Sectors(2048);

/// Params of a `raid raid1` table line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaidTargetParams {
    /// One (metadata, data) pair per leg; `None` where a leg is left out (`- -`), which the
    /// raid then shows as dead.
    pub legs: Vec<Option<(Device, Device)>>,
    pub region_size: Option<Sectors>,
    /// Legs are in sync already: no initial resync (a fresh volume, whose legs are all
    /// unwritten thin devices and so all read zeros).
    pub nosync: bool,
    /// Legs to rebuild in full.
    pub rebuild: Vec<usize>,
}

impl RaidTargetParams {
    /// pxd's raid1 over `legs`.
    pub fn raid1(legs: Vec<Option<(Device, Device)>>, nosync: bool) -> Self {
        RaidTargetParams {
            legs,
            region_size: Some(REGION_SECTORS),
            nosync,
            rebuild: Vec::new(),
        }
    }

    fn params(&self) -> Vec<String> {
        // The kernel prints its table in this order; keeping it makes tables compare equal.
        let mut v = vec!["0".to_owned()];
        if self.nosync {
            v.push("nosync".into());
        }
        for i in &self.rebuild {
            v.push("rebuild".into());
            v.push(i.to_string());
        }
        if let Some(r) = self.region_size {
            v.push("region_size".into());
            v.push((*r).to_string());
        }
        v
    }
}

fn invalid(msg: String) -> DmError {
    DmError::Dm(devicemapper::ErrorEnum::Invalid, msg)
}

fn num(v: &str, what: &str) -> Result<u64, DmError> {
    v.parse::<u64>()
        .map_err(|_| invalid(format!("{what} {v:?} is not a number")))
}

impl fmt::Display for RaidTargetParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RAID_TARGET_NAME} {}", self.param_str())
    }
}

impl FromStr for RaidTargetParams {
    type Err = DmError;

    fn from_str(s: &str) -> Result<Self, DmError> {
        let vals: Vec<&str> = s.split(' ').collect();
        if vals.first() != Some(&RAID_TARGET_NAME) {
            return Err(invalid(format!("expected a raid line, found {s:?}")));
        }
        if vals.get(1) != Some(&RAID1) {
            return Err(invalid(format!(
                "pxd plans raid1 only, found {:?}",
                vals.get(1)
            )));
        }
        let count = num(vals.get(2).copied().unwrap_or(""), "raid parameter count")? as usize;
        let params = vals
            .get(3..3 + count)
            .ok_or_else(|| invalid(format!("raid line announces {count} parameters")))?;
        let mut p = RaidTargetParams {
            legs: Vec::new(),
            region_size: None,
            nosync: false,
            rebuild: Vec::new(),
        };
        // params[0] is the chunk size, which raid1 ignores.
        let mut i = 1;
        while i < params.len() {
            match params[i] {
                "nosync" => p.nosync = true,
                "sync" => {}
                "rebuild" => {
                    i += 1;
                    let idx = params.get(i).copied().unwrap_or("");
                    p.rebuild.push(num(idx, "rebuild index")? as usize);
                }
                "region_size" => {
                    i += 1;
                    let r = params.get(i).copied().unwrap_or("");
                    p.region_size = Some(Sectors(num(r, "region size")?));
                }
                other => return Err(invalid(format!("unsupported raid option {other}"))),
            }
            i += 1;
        }
        let rest = &vals[3 + count..];
        let devs = num(rest.first().copied().unwrap_or(""), "raid device count")? as usize;
        if rest.len() != 1 + 2 * devs {
            return Err(invalid(format!(
                "raid line announces {devs} legs but lists {} devices",
                rest.len() - 1
            )));
        }
        for pair in rest[1..].chunks(2) {
            p.legs.push(match (pair[0], pair[1]) {
                ("-", "-") => None,
                (m, d) => Some((m.parse::<Device>()?, d.parse::<Device>()?)),
            });
        }
        Ok(p)
    }
}

impl TargetParams for RaidTargetParams {
    fn param_str(&self) -> String {
        let params = self.params();
        let legs: Vec<String> = self
            .legs
            .iter()
            .map(|l| match l {
                Some((m, d)) => format!("{m} {d}"),
                None => "- -".to_owned(),
            })
            .collect();
        format!(
            "{RAID1} {} {} {} {}",
            params.len(),
            params.join(" "),
            self.legs.len(),
            legs.join(" ")
        )
    }

    fn target_type(&self) -> TargetTypeBuf {
        TargetTypeBuf::new(RAID_TARGET_NAME.into()).expect("\"raid\" is a valid target type")
    }
}

/// A leg's health as dm-raid reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegHealth {
    /// `A`: alive and in sync.
    InSync,
    /// `a`: alive, not yet in sync (resyncing or waiting to).
    Syncing,
    /// `D`: dead; writes go to the other legs only.
    Dead,
    /// `-`: not in the table (`- -` in its place): a leg left out.
    Absent,
}

/// What the status line of a raid device says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaidStatus {
    pub legs: Vec<LegHealth>,
    /// Sectors in sync, of the whole.
    pub synced: Sectors,
    pub total: Sectors,
    /// `idle`, `resync`, `recover`, `check`, `repair`, `frozen`, `reshape`.
    pub action: String,
    pub mismatches: u64,
}

impl RaidStatus {
    /// Every leg alive and in sync, and nothing left to copy.
    pub fn is_clean(&self) -> bool {
        self.legs.iter().all(|l| *l == LegHealth::InSync) && self.synced == self.total
    }
}

impl FromStr for RaidStatus {
    type Err = DmError;

    /// Parses the params of a `raid` status line:
    /// `raid1 2 AA 2097152/2097152 idle 0 0 -`.
    fn from_str(s: &str) -> Result<Self, DmError> {
        let vals: Vec<&str> = s.split_whitespace().collect();
        if vals.len() < 6 || vals[0] != RAID1 {
            return Err(invalid(format!("not a raid1 status line: {s:?}")));
        }
        let count = num(vals[1], "leg count")? as usize;
        let legs = vals[2]
            .chars()
            .map(|c| match c {
                'A' => Ok(LegHealth::InSync),
                'a' => Ok(LegHealth::Syncing),
                'D' => Ok(LegHealth::Dead),
                '-' => Ok(LegHealth::Absent),
                other => Err(invalid(format!("unknown leg health {other:?} in {s:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if legs.len() != count {
            return Err(invalid(format!(
                "{count} legs but {} health characters in {s:?}",
                legs.len()
            )));
        }
        let (synced, total) = vals[3]
            .split_once('/')
            .ok_or_else(|| invalid(format!("sync ratio {:?} is not a/b", vals[3])))?;
        Ok(RaidStatus {
            legs,
            synced: Sectors(num(synced, "synced sectors")?),
            total: Sectors(num(total, "total sectors")?),
            action: vals[4].to_owned(),
            mismatches: num(vals[5], "mismatch count")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(major: u32, minor: u32) -> Device {
        Device { major, minor }
    }

    #[test]
    fn tables_print_as_the_kernel_does_and_parse_back() {
        let p = RaidTargetParams::raid1(
            vec![
                Some((dev(254, 3), dev(254, 4))),
                Some((dev(254, 5), dev(254, 6))),
            ],
            true,
        );
        let line = "raid1 4 0 nosync region_size 2048 2 254:3 254:4 254:5 254:6";
        assert_eq!(p.param_str(), line);
        assert_eq!(p.to_string(), format!("raid {line}"));
        assert_eq!(
            format!("raid {line}").parse::<RaidTargetParams>().unwrap(),
            p
        );

        // A leg left out, and the table the kernel prints back after a resync.
        let kernel = "raid raid1 3 0 region_size 2048 2 - - 254:5 254:6";
        let back: RaidTargetParams = kernel.parse().unwrap();
        assert_eq!(back.legs[0], None);
        assert!(!back.nosync);
        assert_eq!(back.region_size, Some(REGION_SECTORS));
        assert_eq!(format!("raid {}", back.param_str()), kernel);

        for bad in [
            "raid raid5_ls 1 64 3 - - - - - -",
            "raid raid1 3 0 region_size 2048 2 254:3 254:4",
            "raid raid1 1 0 2 254:3 254:4 x y",
            "raid raid1 2 0 journal_mode 1 - -",
            "linear 254:3 0",
        ] {
            assert!(bad.parse::<RaidTargetParams>().is_err(), "{bad}");
        }
    }

    #[test]
    fn status_lines_say_which_legs_are_dead_and_how_far_a_resync_is() {
        let s: RaidStatus = "raid1 2 AA 2097152/2097152 idle 0 0 -".parse().unwrap();
        assert!(s.is_clean());
        let s: RaidStatus = "raid1 3 AaD 1024/2097152 recover 0 0 -".parse().unwrap();
        assert_eq!(
            s.legs,
            [LegHealth::InSync, LegHealth::Syncing, LegHealth::Dead]
        );
        assert_eq!((s.synced, s.total), (Sectors(1024), Sectors(2097152)));
        assert_eq!(s.action, "recover");
        assert!(!s.is_clean());
        let s: RaidStatus = "raid1 3 -AA 131072/131072 idle 0 0 -".parse().unwrap();
        assert_eq!(
            s.legs,
            [LegHealth::Absent, LegHealth::InSync, LegHealth::InSync]
        );
        assert!(!s.is_clean());
        for bad in [
            "raid1 2 A 1/1 idle 0",
            "raid1 2 AX 1/1 idle 0 0 -",
            "raid1 2 AA 1 idle 0 0 -",
        ] {
            assert!(bad.parse::<RaidStatus>().is_err(), "{bad}");
        }
    }
}
