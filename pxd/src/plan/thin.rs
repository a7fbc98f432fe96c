//! A thin device in a pool: one replica of a volume on this node.

use crate::plan::names::{DeviceName, Id, Kind};
use crate::plan::pool::pool_device;
use crate::plan::table::{DevRef, DevicePlan, SegmentSpec, TargetSpec};
use devicemapper::{Sectors, ThinDevId};

/// Volumes are sized in whole 4 KiB blocks, the largest logical block size pxd stacks use
/// (dm-crypt with 4 KiB sectors), so every layer of a stack has the same length.
pub const SIZE_GRANULE: Sectors = Sectors(8);

/// Why a thin device cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThinPlanError {
    #[error("size is {got} sectors; it must be a positive multiple of {granule} sectors (4 KiB)")]
    BadSize { got: u64, granule: u64 },
}

/// The thin device `volume` of `size` sectors, with id `thin_id` in `pool` on `node`.
pub fn plan_thin(
    node: &Id,
    pool: &Id,
    volume: &Id,
    thin_id: ThinDevId,
    size: Sectors,
) -> Result<DevicePlan, ThinPlanError> {
    if *size == 0 || !(*size).is_multiple_of(*SIZE_GRANULE) {
        return Err(ThinPlanError::BadSize {
            got: *size,
            granule: *SIZE_GRANULE,
        });
    }
    Ok(DevicePlan {
        name: DeviceName::new(node, Kind::Thin, volume, None),
        segments: vec![SegmentSpec {
            start: Sectors(0),
            length: size,
            target: TargetSpec::Thin {
                pool: DevRef::Dm(pool_device(node, pool)),
                thin_id,
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use devicemapper::Device;

    #[test]
    fn thin_points_at_its_pool() {
        let [n, p, v] = ["n1", "p0", "v7"].map(|s| Id::object(s).unwrap());
        let plan = plan_thin(&n, &p, &v, ThinDevId::new_u64(3).unwrap(), Sectors(2048)).unwrap();
        assert_eq!(plan.name.to_string(), "pxd-n1-thin-v7");
        assert_eq!(plan.depends_on()[0].to_string(), "pxd-n1-pool-p0");
        let line = &plan.resolve(&|_| Some(Device::from(0xfd02))).unwrap()[0];
        assert_eq!(line.to_string(), "0 2048 thin 253:2 3");
    }

    #[test]
    fn sizes_must_be_whole_blocks() {
        let [n, p, v] = ["n1", "p0", "v7"].map(|s| Id::object(s).unwrap());
        let id = ThinDevId::new_u64(1).unwrap();
        for bad in [0, 7, 2049] {
            let err = plan_thin(&n, &p, &v, id, Sectors(bad)).unwrap_err();
            assert_eq!(
                err,
                ThinPlanError::BadSize {
                    got: bad,
                    granule: 8
                }
            );
        }
    }
}
