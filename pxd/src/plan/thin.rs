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

/// A read-only activation of a thin device: a snapshot looked at, or a read-only clone.
pub fn plan_thin_read_only(
    node: &Id,
    pool: &Id,
    id: &Id,
    thin_id: ThinDevId,
    size: Sectors,
) -> Result<DevicePlan, ThinPlanError> {
    let mut plan = plan_thin(node, pool, id, thin_id, size)?;
    plan.read_only = true;
    Ok(plan)
}

/// A device of the same name and kind at a new size: what an online grow loads. Shrinking is
/// refused, because no layer above (crypt, filesystems) can follow it safely.
pub fn plan_grow(current: &DevicePlan, new_size: Sectors) -> Result<DevicePlan, GrowError> {
    let old = current.length();
    if new_size < old {
        return Err(GrowError::Shrink {
            device: current.name.to_string(),
            current: *old,
            requested: *new_size,
        });
    }
    if current.segments.len() != 1 || !(*new_size).is_multiple_of(*SIZE_GRANULE) {
        return Err(GrowError::NotGrowable {
            device: current.name.to_string(),
        });
    }
    let mut plan = current.clone();
    plan.segments[0].length = new_size;
    Ok(plan)
}

/// Why a device cannot be grown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrowError {
    #[error(
        "size: {requested} sectors is smaller than the {current} sectors {device} has; shrinking is not supported"
    )]
    Shrink {
        device: String,
        current: u64,
        requested: u64,
    },
    #[error("{device} cannot be grown to that size (one segment, whole 4 KiB blocks)")]
    NotGrowable { device: String },
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
        read_only: false,
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
    fn grow_keeps_the_target_and_refuses_to_shrink() {
        let [n, p, v] = ["n1", "p0", "v7"].map(|s| Id::object(s).unwrap());
        let id = ThinDevId::new_u64(1).unwrap();
        let plan = plan_thin(&n, &p, &v, id, Sectors(2048)).unwrap();
        let grown = plan_grow(&plan, Sectors(4096)).unwrap();
        assert_eq!(grown.length(), Sectors(4096));
        assert_eq!(grown.segments[0].target, plan.segments[0].target);
        assert_eq!(plan_grow(&plan, Sectors(2048)).unwrap(), plan);
        let err = plan_grow(&plan, Sectors(1024)).unwrap_err();
        assert!(
            err.to_string().contains("shrinking is not supported"),
            "{err}"
        );
        assert!(plan_grow(&plan, Sectors(2050)).is_err());
        let ro = plan_thin_read_only(&n, &p, &v, id, Sectors(8)).unwrap();
        assert!(ro.read_only);
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
