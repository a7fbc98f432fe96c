//! The devices of a replicated volume (DESIGN §4, §5), as pure plans:
//! - on each replica node, the leg: a metadata thin and a data thin joined by `linear` into
//!   the one device nvmet exports;
//! - on the attach node, each remote leg's namespace split again into metadata and data,
//!   under names that stay put when a reconnect brings a new namespace (only their tables
//!   change), and the `raid1` over every leg.

use crate::plan::names::{DeviceName, Id, Kind, Role};
use crate::plan::table::{DevRef, DevicePlan, SegmentSpec, TargetSpec};
use devicemapper::{Device, Sectors};

/// A leg's metadata: the md superblock and the write-intent bitmap. 4 MiB holds the bitmap
/// of a 32 TiB volume at 1 MiB regions.
pub const LEG_META: Sectors = Sectors(8192);

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

/// The device a replica node exports: metadata then data.
pub fn plan_leg_export(node: &Id, volume: &Id, size: Sectors) -> DevicePlan {
    let (meta, data) = leg_thins(node, volume);
    DevicePlan {
        name: DeviceName::new(node, Kind::Leg, volume, None),
        segments: vec![
            SegmentSpec {
                start: Sectors(0),
                length: LEG_META,
                target: TargetSpec::Linear {
                    dev: DevRef::Dm(meta),
                    offset: Sectors(0),
                },
            },
            SegmentSpec {
                start: LEG_META,
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

/// The attach node's view of remote leg `leg`, reached as block device `namespace`:
/// (metadata, data).
pub fn plan_leg_split(
    attach: &Id,
    volume: &Id,
    leg: u8,
    namespace: Device,
    size: Sectors,
) -> (DevicePlan, DevicePlan) {
    let part = |role: Role, offset: Sectors, length: Sectors| DevicePlan {
        name: DeviceName::new(attach, Kind::Leg, volume, Some(role)),
        segments: vec![SegmentSpec {
            start: Sectors(0),
            length,
            target: TargetSpec::Linear {
                dev: DevRef::Disk(namespace),
                offset,
            },
        }],
        read_only: false,
    };
    (
        part(Role::LegMeta(leg), Sectors(0), LEG_META),
        part(Role::LegData(leg), LEG_META, size),
    )
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
    fn a_local_and_a_remote_leg_make_one_raid1() {
        let (a, b) = (Id::node("na").unwrap(), Id::node("nb").unwrap());
        let v = Id::object("v1").unwrap();
        let size = Sectors(2048 * 64);
        let export = plan_leg_export(&b, &v, size);
        assert_eq!(export.name.to_string(), "pxd-nb-leg-v1");
        assert_eq!(export.length(), LEG_META + size);
        let names: Vec<String> = export.depends_on().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["pxd-nb-thin-v1-meta", "pxd-nb-thin-v1"]);

        let nvme = Device {
            major: 259,
            minor: 3,
        };
        let (m, d) = plan_leg_split(&a, &v, 1, nvme, size);
        assert_eq!(
            (m.name.to_string(), d.name.to_string()),
            ("pxd-na-leg-v1-m1".into(), "pxd-na-leg-v1-d1".into())
        );
        let (local_meta, local_data) = leg_thins(&a, &v);
        let raid = plan_raid(
            &a,
            &v,
            vec![
                Some((DevRef::Dm(local_meta), DevRef::Dm(local_data))),
                Some((DevRef::Dm(m.name.clone()), DevRef::Dm(d.name.clone()))),
            ],
            size,
            true,
        );
        let dev = |n: &DeviceName| {
            let minor = match n.to_string().as_str() {
                "pxd-na-thin-v1-meta" => 1,
                "pxd-na-thin-v1" => 2,
                "pxd-na-leg-v1-m1" => 3,
                "pxd-na-leg-v1-d1" => 4,
                _ => return None,
            };
            Some(Device { major: 254, minor })
        };
        let lines = raid.resolve(&dev).unwrap();
        assert_eq!(
            raw_table(&lines),
            [(
                0,
                *size,
                "raid".to_owned(),
                "raid1 4 0 nosync region_size 2048 2 254:1 254:2 254:3 254:4".to_owned()
            )]
        );
        assert_eq!(raid.depends_on().len(), 4);
        let split = d.resolve(&|_| None).unwrap();
        assert_eq!(raw_table(&split)[0].3, format!("259:3 {}", *LEG_META));
    }
}
