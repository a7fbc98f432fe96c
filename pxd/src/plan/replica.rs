//! The devices of a replicated volume (DESIGN §4, §5), as pure plans:
//! - on each replica node, the leg: a metadata thin (two metadata slots) and a data thin
//!   joined by `linear` into the one device nvmet exports;
//! - on the attach node, each leg split into its two metadata slots and its data (a remote
//!   leg's namespace, or a local leg's metadata thin), under names that stay put when a
//!   reconnect brings a new namespace (only their tables change), and the `raid1` over every
//!   leg, on one slot of each.

use crate::plan::names::{DeviceName, Id, Kind, Role};
use crate::plan::table::{DevRef, DevicePlan, SegmentSpec, TargetSpec};
use devicemapper::{Device, Sectors};

/// One metadata slot of a leg: the md superblock and the write-intent bitmap. 4 MiB holds
/// the bitmap of a 32 TiB volume at 1 MiB regions.
pub const LEG_META: Sectors = Sectors(8192);
/// [`LEG_META`] in bytes.
pub const LEG_META_BYTES: usize = 8192 * 512;
/// A leg's metadata thin: two slots (see [`Role::LegMetaNext`]); the data follows it in the
/// export.
pub const LEG_HEAD: Sectors = Sectors(2 * 8192);

/// The TCP port a node's NVMe/TCP target listens on, on the address of its data endpoint:
/// the port IANA assigned to NVMe/TCP.
pub const NVME_TCP_PORT: u16 = 4420;

/// Where node with data endpoint `data_addr` (`tcp://IP:PORT`) serves its legs.
pub fn nvme_addr(data_addr: &str) -> Option<std::net::SocketAddr> {
    let ep: std::net::SocketAddr = data_addr.strip_prefix("tcp://")?.parse().ok()?;
    Some(std::net::SocketAddr::new(ep.ip(), NVME_TCP_PORT))
}

/// The replica node's metadata and data thin devices of `volume`.
pub fn leg_thins(node: &Id, volume: &Id) -> (DeviceName, DeviceName) {
    (
        DeviceName::new(node, Kind::Thin, volume, Some(Role::Meta)),
        DeviceName::new(node, Kind::Thin, volume, None),
    )
}

/// The device a replica node exports: both metadata slots, then data.
pub fn plan_leg_export(node: &Id, volume: &Id, size: Sectors) -> DevicePlan {
    let (meta, data) = leg_thins(node, volume);
    DevicePlan {
        name: DeviceName::new(node, Kind::Leg, volume, None),
        segments: vec![
            SegmentSpec {
                start: Sectors(0),
                length: LEG_HEAD,
                target: TargetSpec::Linear {
                    dev: DevRef::Dm(meta),
                    offset: Sectors(0),
                },
            },
            SegmentSpec {
                start: LEG_HEAD,
                length: size,
                target: TargetSpec::Linear {
                    dev: DevRef::Dm(data),
                    offset: Sectors(0),
                },
            },
        ],
        read_only: false,
    }
}

/// The devices a leg is split into on the attach node: its two metadata slots and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegSplit {
    pub meta: [DevicePlan; 2],
    /// A remote leg's data, split off its namespace; a local leg's data thin is used as it
    /// is, and has none.
    pub data: Option<DevicePlan>,
    data_name: DeviceName,
}

impl LegSplit {
    /// Every split device, in the order they are created.
    pub fn plans(&self) -> Vec<DevicePlan> {
        let mut out = self.meta.to_vec();
        out.extend(self.data.clone());
        out
    }

    /// The raid's (metadata, data) pair for this leg on metadata slot `slot` (0 or 1).
    pub fn pair(&self, slot: u8) -> (DevRef, DevRef) {
        let meta = &self.meta[usize::from(slot & 1)];
        (
            DevRef::Dm(meta.name.clone()),
            DevRef::Dm(self.data_name.clone()),
        )
    }
}

/// The names of leg `leg`'s split devices on `attach`: metadata slots 0 and 1, data.
pub fn leg_split_names(attach: &Id, volume: &Id, leg: u8) -> [DeviceName; 3] {
    [
        Role::LegMeta(leg),
        Role::LegMetaNext(leg),
        Role::LegData(leg),
    ]
    .map(|role| DeviceName::new(attach, Kind::Leg, volume, Some(role)))
}

/// The name of leg `leg`'s metadata split on `attach` for slot `slot` (0 or 1).
pub fn leg_meta_name(attach: &Id, volume: &Id, leg: u8, slot: u8) -> DeviceName {
    let role = if slot & 1 == 0 {
        Role::LegMeta(leg)
    } else {
        Role::LegMetaNext(leg)
    };
    DeviceName::new(attach, Kind::Leg, volume, Some(role))
}

fn linear(name: DeviceName, dev: DevRef, offset: Sectors, length: Sectors) -> DevicePlan {
    DevicePlan {
        name,
        segments: vec![SegmentSpec {
            start: Sectors(0),
            length,
            target: TargetSpec::Linear { dev, offset },
        }],
        read_only: false,
    }
}

/// The attach node's view of remote leg `leg`, reached as block device `namespace`.
pub fn plan_leg_split(
    attach: &Id,
    volume: &Id,
    leg: u8,
    namespace: Device,
    size: Sectors,
) -> LegSplit {
    let [m, n, d] = leg_split_names(attach, volume, leg);
    let disk = DevRef::Disk(namespace);
    LegSplit {
        meta: [
            linear(m, disk.clone(), Sectors(0), LEG_META),
            linear(n, disk.clone(), LEG_META, LEG_META),
        ],
        data: Some(linear(d.clone(), disk, LEG_HEAD, size)),
        data_name: d,
    }
}

/// The attach node's own leg `leg`: its metadata thin split into the two slots; the data
/// thin is used as it is.
pub fn plan_local_split(attach: &Id, volume: &Id, leg: u8) -> LegSplit {
    let [m, n, _] = leg_split_names(attach, volume, leg);
    let (meta, data) = leg_thins(attach, volume);
    LegSplit {
        meta: [
            linear(m, DevRef::Dm(meta.clone()), Sectors(0), LEG_META),
            linear(n, DevRef::Dm(meta), LEG_META, LEG_META),
        ],
        data: None,
        data_name: data,
    }
}

/// The raid1 of `volume` on its attach node over `legs` ((metadata, data) each; `None` for
/// a leg left out). `nosync` when every leg is fresh (unwritten thin devices read zeros).
pub fn plan_raid(
    attach: &Id,
    volume: &Id,
    legs: Vec<Option<(DevRef, DevRef)>>,
    size: Sectors,
    nosync: bool,
) -> DevicePlan {
    DevicePlan {
        name: DeviceName::new(attach, Kind::Raid, volume, None),
        segments: vec![SegmentSpec {
            start: Sectors(0),
            length: size,
            target: TargetSpec::Raid { legs, nosync },
        }],
        read_only: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::table::raw_table;

    #[test]
    fn a_local_and_a_remote_leg_make_one_raid1_on_either_metadata_slot() {
        let (a, b) = (Id::node("na").unwrap(), Id::node("nb").unwrap());
        let v = Id::object("v1").unwrap();
        let size = Sectors(2048 * 64);
        let export = plan_leg_export(&b, &v, size);
        assert_eq!(export.name.to_string(), "pxd-nb-leg-v1");
        assert_eq!(export.length(), LEG_HEAD + size);
        let names: Vec<String> = export.depends_on().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["pxd-nb-thin-v1-meta", "pxd-nb-thin-v1"]);

        let nvme = Device {
            major: 259,
            minor: 3,
        };
        let remote = plan_leg_split(&a, &v, 1, nvme, size);
        let names: Vec<String> = remote.plans().iter().map(|p| p.name.to_string()).collect();
        assert_eq!(
            names,
            ["pxd-na-leg-v1-m1", "pxd-na-leg-v1-n1", "pxd-na-leg-v1-d1"]
        );
        let local = plan_local_split(&a, &v, 0);
        let names: Vec<String> = local.plans().iter().map(|p| p.name.to_string()).collect();
        assert_eq!(names, ["pxd-na-leg-v1-m0", "pxd-na-leg-v1-n0"]);
        let dev = |n: &DeviceName| {
            let minor = match n.to_string().as_str() {
                "pxd-na-thin-v1-meta" => 1,
                "pxd-na-thin-v1" => 2,
                "pxd-na-leg-v1-m1" => 3,
                "pxd-na-leg-v1-d1" => 4,
                "pxd-na-leg-v1-m0" => 5,
                "pxd-na-leg-v1-n0" => 6,
                "pxd-na-leg-v1-n1" => 7,
                _ => return None,
            };
            Some(Device { major: 254, minor })
        };
        for (slot, expected) in [
            (0, "254:5 254:2 254:3 254:4"),
            (1, "254:6 254:2 254:7 254:4"),
        ] {
            let raid = plan_raid(
                &a,
                &v,
                vec![Some(local.pair(slot)), Some(remote.pair(slot))],
                size,
                true,
            );
            let lines = raid.resolve(&dev).unwrap();
            assert_eq!(
                raw_table(&lines),
                [(
                    0,
                    *size,
                    "raid".to_owned(),
                    format!("raid1 4 0 nosync region_size 2048 2 {expected}")
                )]
            );
        }
        let table = |p: &DevicePlan| raw_table(&p.resolve(&dev).unwrap())[0].3.clone();
        assert_eq!(table(&remote.meta[0]), "259:3 0");
        assert_eq!(table(&remote.meta[1]), format!("259:3 {}", *LEG_META));
        assert_eq!(
            table(remote.data.as_ref().unwrap()),
            format!("259:3 {}", *LEG_HEAD)
        );
        assert_eq!(table(&local.meta[1]), format!("254:1 {}", *LEG_META));
    }
}
