//! The pure half of the reconciler: from what a node should have ([`NodeState`]) and what
//! the kernel shows ([`Observed`]), the ordered steps that close the gap. Every step is
//! idempotent, so a pass interrupted anywhere is completed by the next one.

use crate::plan::crypt::plan_crypt;
use crate::plan::names::{pool_devices, DeviceName, Id, Kind, NameError, Role};
use crate::plan::pool::{plan_pool, Drive, PoolSpec};
use crate::plan::table::DevicePlan;
use crate::plan::thin::{plan_thin, ThinPlanError};
use crate::reconcile::desired::{NodeState, Phase, VolumeState};
use crate::volume::spec::Fs;
use devicemapper::{Device, Sectors, ThinDevId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

/// What the kernel shows for this node.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Drives that could be opened: path -> (dev_t, size in sectors).
    pub drives: HashMap<PathBuf, Drive>,
    /// This node's dm devices: name -> (dev_t, total length in sectors).
    pub devices: BTreeMap<String, (Device, Sectors)>,
    /// Those of them that are suspended (a crash between suspend and resume leaves them so).
    pub suspended: BTreeSet<String>,
    /// Whether dm-crypt may bypass its workqueues on this kernel.
    pub bypass_workqueues: bool,
    /// The thin id each of this node's thin devices maps: name -> id.
    pub thin_ids: BTreeMap<String, u64>,
    /// Where each of this node's devices is mounted: name -> mount points.
    pub mounts: BTreeMap<String, Vec<PathBuf>>,
}

/// One idempotent change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Resume a device left suspended, so its I/O flows again. Comes before anything else.
    Resume(DeviceName),
    /// Bring a pool's devices up (adopting them if they are).
    EnsurePool(PoolSpec),
    /// Grow a live pool onto drives added to it.
    GrowPool(PoolSpec),
    /// Record thin id `thin_id` in the pool's metadata.
    CreateThinId { pool: Id, thin_id: ThinDevId },
    /// Activate a volume's stack, lowest first (`volume` names the key to use, if any).
    Activate {
        volume: String,
        plans: Vec<DevicePlan>,
    },
    /// Grow a volume's live stack, lowest first, then its filesystem.
    Grow {
        volume: String,
        plans: Vec<DevicePlan>,
        fs: Fs,
    },
    /// Make the volume's filesystem on its top device, then record it.
    Mkfs {
        volume: String,
        device: DeviceName,
        fs: Fs,
    },
    /// Snapshot a volume's thin id (suspending `live_top_down` around it), then record it.
    Snapshot {
        volume: String,
        snapshot: String,
        pool: Id,
        source: ThinDevId,
        thin_id: ThinDevId,
        live_top_down: Vec<DeviceName>,
    },
    /// Record thin id `thin_id` as a copy of `source` (a clone, or a restore), suspending
    /// `live_top_down` (the source volume's live stack) around it, then record it done.
    Copy {
        volume: String,
        pool: Id,
        source: ThinDevId,
        thin_id: ThinDevId,
        live_top_down: Vec<DeviceName>,
    },
    /// Mount a volume's top device at `path` (made if missing).
    Mount {
        device: DeviceName,
        path: PathBuf,
        fs: Fs,
        read_only: bool,
    },
    /// Unmount `path`, where pxd mounted a volume that is no longer to be mounted there.
    Unmount(PathBuf),
    /// Record that a volume's retired thin ids are deleted.
    ForgetRetired { volume: String },
    /// Remove a dm device (refused while it is open).
    Deactivate(DeviceName),
    /// Delete a thin id from the pool's metadata, freeing its chunks.
    DeleteThinId { pool: Id, thin_id: ThinDevId },
    /// Drop a deleted volume (or one snapshot of it) from the desired state.
    Forget {
        volume: String,
        snapshot: Option<String>,
    },
}

impl Step {
    /// Steps that read and compare only, never changing the kernel when all is in place.
    pub fn is_check(&self) -> bool {
        matches!(self, Step::EnsurePool(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("node state: {0}")]
    Name(#[from] NameError),
    #[error("volume {volume}: {source}")]
    Thin {
        volume: String,
        source: ThinPlanError,
    },
    #[error("volume {volume}: thin id {thin_id} is out of range")]
    ThinId { volume: String, thin_id: u64 },
    #[error("volume {volume} is on pool {pool}, which this node does not have")]
    NoPool { volume: String, pool: String },
}

fn thin_id(volume: &str, n: u64) -> Result<ThinDevId, PlanError> {
    ThinDevId::new_u64(n).map_err(|_| PlanError::ThinId {
        volume: volume.to_owned(),
        thin_id: n,
    })
}

/// A live volume's stack, lowest first: its thin device, then dm-crypt if it is encrypted.
pub fn volume_stack(
    node: &Id,
    v: &VolumeState,
    bypass_workqueues: bool,
) -> Result<Vec<DevicePlan>, PlanError> {
    let vid = Id::object(&v.id)?;
    let size = Sectors(v.size_bytes / 512);
    let thin = plan_thin(
        node,
        &Id::object(&v.pool)?,
        &vid,
        thin_id(&v.id, v.thin_id)?,
        size,
    )
    .map_err(|source| PlanError::Thin {
        volume: v.id.clone(),
        source,
    })?;
    let mut plans = vec![thin];
    if v.key.is_some() {
        let lower = plans[0].name.clone();
        plans.push(plan_crypt(node, &vid, size, lower, bypass_workqueues));
    }
    for p in &mut plans {
        p.read_only = v.read_only;
    }
    Ok(plans)
}

/// The steps that bring the kernel to `desired`.
pub fn plan(desired: &NodeState, observed: &Observed) -> Result<Vec<Step>, PlanError> {
    let node = Id::node(&desired.node)?;
    let mut steps = Vec::new();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    let mut pools_up: BTreeSet<&str> = BTreeSet::new();
    // Lowest first, so a device above resumes onto one that already takes I/O.
    let mut frozen: Vec<DeviceName> = observed
        .suspended
        .iter()
        .filter_map(|n| n.parse::<DeviceName>().ok())
        .filter(|n| n.node == node)
        .collect();
    frozen.sort_by_key(|n| std::cmp::Reverse(layer(n)));
    steps.extend(frozen.into_iter().map(Step::Resume));

    for p in &desired.pools {
        let pool_id = Id::object(&p.id)?;
        for name in pool_devices(&node, &pool_id) {
            expected.insert(name.to_string());
        }
        let drives: Option<Vec<Drive>> = p
            .drives
            .iter()
            .map(|d| observed.drives.get(d).copied())
            .collect();
        // A pool with a missing drive is left as the kernel has it: nothing is torn down,
        // nothing built on a partial set of drives.
        if let Some(drives) = drives {
            let spec = PoolSpec {
                node: node.clone(),
                pool: pool_id.clone(),
                drives,
                chunk: Sectors(p.chunk_sectors),
            };
            let [_, data, _] = pool_devices(&node, &pool_id);
            let live_data = observed.devices.get(&data.to_string()).map(|(_, len)| *len);
            let planned_data = plan_pool(&spec).ok().map(|plan| plan.data.length());
            match (live_data, planned_data) {
                (Some(live), Some(planned)) if live < planned => steps.push(Step::GrowPool(spec)),
                _ => steps.push(Step::EnsurePool(spec)),
            }
            pools_up.insert(&p.id);
        }
    }

    for v in &desired.volumes {
        if !desired.pools.iter().any(|p| p.id == v.pool) {
            return Err(PlanError::NoPool {
                volume: v.id.clone(),
                pool: v.pool.clone(),
            });
        }
        if !pools_up.contains(v.pool.as_str()) {
            continue;
        }
        let pool = Id::object(&v.pool)?;
        let stack = volume_stack(&node, v, observed.bypass_workqueues)?;
        match v.phase {
            Phase::Live => {
                for plan in &stack {
                    expected.insert(plan.name.to_string());
                }
                live_volume_steps(&mut steps, desired, v, &pool, stack, observed)?;
            }
            Phase::Deleting => {
                let top = stack[stack.len() - 1].name.to_string();
                steps.extend(managed_mounts(desired, observed, &top).map(Step::Unmount));
                for plan in stack.iter().rev() {
                    if observed.devices.contains_key(&plan.name.to_string()) {
                        steps.push(Step::Deactivate(plan.name.clone()));
                    }
                }
                for s in &v.snapshots {
                    steps.push(Step::DeleteThinId {
                        pool: pool.clone(),
                        thin_id: thin_id(&v.id, s.thin_id)?,
                    });
                }
                steps.push(Step::DeleteThinId {
                    pool,
                    thin_id: thin_id(&v.id, v.thin_id)?,
                });
                steps.push(Step::Forget {
                    volume: v.id.clone(),
                    snapshot: None,
                });
            }
        }
    }

    // Orphans: this node's devices nothing asks for, from the top of any stack down.
    let mut orphans: Vec<DeviceName> = observed
        .devices
        .keys()
        .filter(|n| !expected.contains(*n))
        .filter_map(|n| n.parse::<DeviceName>().ok())
        .filter(|n| n.node == node)
        .filter(|n| !steps.contains(&Step::Deactivate(n.clone())))
        .collect();
    orphans.sort_by_key(|n| (layer(n), n.to_string()));
    steps.extend(orphans.into_iter().map(Step::Deactivate));
    Ok(steps)
}

/// How high in a stack a device sits: 0 is the top (crypt), 4 the bottom (pool meta/data).
fn layer(n: &DeviceName) -> u8 {
    match (n.kind, n.role) {
        (Kind::Crypt, _) => 0,
        (Kind::Raid, _) => 1,
        (Kind::Thin, _) => 2,
        (Kind::Pool, None) => 3,
        (Kind::Pool, Some(Role::Data | Role::Meta)) => 4,
    }
}

/// Mount points of device `name` under the node's mount root: the mounts pxd made.
fn managed_mounts<'a>(
    desired: &'a NodeState,
    observed: &'a Observed,
    name: &str,
) -> impl Iterator<Item = PathBuf> + 'a {
    observed
        .mounts
        .get(name)
        .into_iter()
        .flatten()
        .filter(|m| {
            desired
                .mount_root
                .as_ref()
                .is_some_and(|r| m.starts_with(r))
        })
        .cloned()
}

fn live_volume_steps(
    steps: &mut Vec<Step>,
    desired: &NodeState,
    v: &VolumeState,
    pool: &Id,
    stack: Vec<DevicePlan>,
    observed: &Observed,
) -> Result<(), PlanError> {
    let node = Id::node(&desired.node)?;
    let name = |p: &DevicePlan| p.name.to_string();
    // A restore points the volume at a new thin id: the stack on the old one comes down
    // first (a mounted or open one refuses, and the restore waits).
    let replaced = observed
        .thin_ids
        .get(&name(&stack[0]))
        .is_some_and(|id| *id != v.thin_id);
    if replaced {
        for plan in stack.iter().rev() {
            if observed.devices.contains_key(&name(plan)) {
                steps.push(Step::Deactivate(plan.name.clone()));
            }
        }
    }
    let present = |p: &DevicePlan| {
        if replaced {
            return None;
        }
        observed.devices.get(&name(p)).map(|(_, len)| *len)
    };
    if let Some(origin) = &v.origin {
        let live_top_down = match origin.volume.as_deref().and_then(|id| desired.volume(id)) {
            Some(src) => volume_stack(&node, src, observed.bypass_workqueues)?
                .into_iter()
                .rev()
                .map(|p| p.name)
                .filter(|n| observed.devices.contains_key(&n.to_string()))
                .collect(),
            None => Vec::new(),
        };
        steps.push(Step::Copy {
            volume: v.id.clone(),
            pool: pool.clone(),
            source: thin_id(&v.id, origin.thin_id)?,
            thin_id: thin_id(&v.id, v.thin_id)?,
            live_top_down,
        });
    } else if present(&stack[0]).is_none() {
        steps.push(Step::CreateThinId {
            pool: pool.clone(),
            thin_id: thin_id(&v.id, v.thin_id)?,
        });
    }
    if stack.iter().any(|p| present(p).is_none()) {
        steps.push(Step::Activate {
            volume: v.id.clone(),
            plans: stack.clone(),
        });
    } else if stack
        .iter()
        .any(|p| present(p).is_some_and(|len| len < p.length()))
    {
        steps.push(Step::Grow {
            volume: v.id.clone(),
            plans: stack.clone(),
            fs: v.fs,
        });
    }
    if !v.retired.is_empty() {
        for r in &v.retired {
            steps.push(Step::DeleteThinId {
                pool: pool.clone(),
                thin_id: thin_id(&v.id, *r)?,
            });
        }
        steps.push(Step::ForgetRetired {
            volume: v.id.clone(),
        });
    }
    let top = &stack[stack.len() - 1];
    if !v.formatted && v.fs != Fs::Raw && !v.read_only {
        steps.push(Step::Mkfs {
            volume: v.id.clone(),
            device: top.name.clone(),
            fs: v.fs,
        });
    }
    let mounted: Vec<PathBuf> = if replaced {
        Vec::new()
    } else {
        managed_mounts(desired, observed, &name(top)).collect()
    };
    for m in &mounted {
        if v.mount.as_ref() != Some(m) {
            steps.push(Step::Unmount(m.clone()));
        }
    }
    if let Some(path) = &v.mount {
        if v.fs != Fs::Raw && !mounted.contains(path) {
            steps.push(Step::Mount {
                device: top.name.clone(),
                path: path.clone(),
                fs: v.fs,
                read_only: v.read_only,
            });
        }
    }
    for s in &v.snapshots {
        match (s.phase, s.taken) {
            (Phase::Live, false) => steps.push(Step::Snapshot {
                volume: v.id.clone(),
                snapshot: s.id.clone(),
                pool: pool.clone(),
                source: thin_id(&v.id, v.thin_id)?,
                thin_id: thin_id(&v.id, s.thin_id)?,
                live_top_down: stack.iter().rev().map(|p| p.name.clone()).collect(),
            }),
            (Phase::Deleting, _) => {
                steps.push(Step::DeleteThinId {
                    pool: pool.clone(),
                    thin_id: thin_id(&v.id, s.thin_id)?,
                });
                steps.push(Step::Forget {
                    volume: v.id.clone(),
                    snapshot: Some(s.id.clone()),
                });
            }
            (Phase::Live, true) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::desired::{PoolState, SnapshotState};

    fn state() -> NodeState {
        NodeState {
            node: "n1".into(),
            pools: vec![PoolState {
                id: "p0".into(),
                drives: vec!["/dev/vda".into()],
                chunk_sectors: 512,
            }],
            volumes: vec![VolumeState {
                id: "v1".into(),
                pool: "p0".into(),
                thin_id: 1,
                size_bytes: 64 << 20,
                fs: Fs::Ext4,
                formatted: false,
                key: None,
                snapshots: vec![],
                phase: Phase::Live,
                ..Default::default()
            }],
            mount_root: None,
        }
    }

    fn observed(devices: &[(&str, u64)]) -> Observed {
        Observed {
            drives: HashMap::from([(
                PathBuf::from("/dev/vda"),
                Drive {
                    dev: Device {
                        major: 254,
                        minor: 0,
                    },
                    size: Sectors(4 << 21),
                },
            )]),
            devices: devices
                .iter()
                .enumerate()
                .map(|(i, (n, len))| {
                    let dev = Device {
                        major: 253,
                        minor: i as u32,
                    };
                    (n.to_string(), (dev, Sectors(*len)))
                })
                .collect(),
            suspended: BTreeSet::new(),
            bypass_workqueues: true,
            ..Default::default()
        }
    }

    fn kinds(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Resume(n) => format!("resume {n}"),
                Step::EnsurePool(p) => format!("pool {}", p.pool),
                Step::GrowPool(p) => format!("grow pool {}", p.pool),
                Step::CreateThinId { thin_id, .. } => format!("thin-id {thin_id}"),
                Step::Activate { plans, .. } => format!("activate {}", plans.len()),
                Step::Grow { .. } => "grow".into(),
                Step::Mkfs { device, .. } => format!("mkfs {device}"),
                Step::Snapshot { thin_id, .. } => format!("snapshot {thin_id}"),
                Step::Deactivate(n) => format!("deactivate {n}"),
                Step::DeleteThinId { thin_id, .. } => format!("delete-id {thin_id}"),
                Step::Forget { volume, snapshot } => format!("forget {volume} {snapshot:?}"),
                Step::Copy {
                    thin_id, source, ..
                } => format!("copy {source} to {thin_id}"),
                Step::Mount { path, .. } => format!("mount {}", path.display()),
                Step::Unmount(path) => format!("unmount {}", path.display()),
                Step::ForgetRetired { volume } => format!("forget retired of {volume}"),
            })
            .collect()
    }

    /// The pool's devices at their planned sizes, as a live pool shows them.
    fn pool_devs() -> Vec<(&'static str, u64)> {
        let o = observed(&[]);
        let spec = PoolSpec {
            node: Id::node("n1").unwrap(),
            pool: Id::object("p0").unwrap(),
            drives: vec![o.drives[&PathBuf::from("/dev/vda")]],
            chunk: Sectors(512),
        };
        let plan = plan_pool(&spec).unwrap();
        vec![
            ("pxd-n1-pool-p0", *plan.pool.length()),
            ("pxd-n1-pool-p0-data", *plan.data.length()),
            ("pxd-n1-pool-p0-meta", *plan.meta.length()),
        ]
    }

    #[test]
    fn a_new_volume_gets_an_id_a_device_and_a_filesystem() {
        let steps = plan(&state(), &observed(&[])).unwrap();
        assert_eq!(
            kinds(&steps),
            ["pool p0", "thin-id 1", "activate 1", "mkfs pxd-n1-thin-v1"]
        );
    }

    #[test]
    fn a_converged_node_plans_only_checks() {
        let mut s = state();
        s.volumes[0].formatted = true;
        let mut devs = pool_devs();
        devs.push(("pxd-n1-thin-v1", (64 << 20) / 512));
        let steps = plan(&s, &observed(&devs)).unwrap();
        assert!(steps.iter().all(Step::is_check), "{:?}", kinds(&steps));
    }

    #[test]
    fn a_bigger_desired_size_grows_and_an_encrypted_stack_has_two_layers() {
        let mut s = state();
        s.volumes[0].formatted = true;
        s.volumes[0].size_bytes = 128 << 20;
        let mut devs = pool_devs();
        devs.push(("pxd-n1-thin-v1", (64 << 20) / 512));
        assert_eq!(kinds(&plan(&s, &observed(&devs)).unwrap())[1..], ["grow"]);

        s.volumes[0].key = Some(crate::crypt::WrappedKey {
            nonce: [0; 12],
            sealed: vec![],
        });
        let steps = plan(&s, &observed(&devs)).unwrap();
        assert_eq!(
            kinds(&steps)[1..],
            ["activate 2"],
            "crypt missing: activate adopts thin"
        );
    }

    #[test]
    fn snapshots_are_taken_once_and_deletes_go_top_down_then_forget() {
        let mut s = state();
        s.volumes[0].formatted = true;
        s.volumes[0].snapshots.push(SnapshotState {
            id: "s1".into(),
            thin_id: 2,
            taken: false,
            phase: Phase::Live,
        });
        let mut devs = pool_devs();
        devs.push(("pxd-n1-thin-v1", (64 << 20) / 512));
        assert_eq!(
            kinds(&plan(&s, &observed(&devs)).unwrap())[1..],
            ["snapshot 2"]
        );
        s.volumes[0].snapshots[0].taken = true;
        assert_eq!(plan(&s, &observed(&devs)).unwrap().len(), 1);

        s.volumes[0].phase = Phase::Deleting;
        assert_eq!(
            kinds(&plan(&s, &observed(&devs)).unwrap())[1..],
            [
                "deactivate pxd-n1-thin-v1",
                "delete-id 2",
                "delete-id 1",
                "forget v1 None"
            ]
        );
    }

    #[test]
    fn orphans_of_this_node_go_top_down_and_others_are_left_alone() {
        let mut devs = pool_devs();
        devs.extend([
            ("pxd-n1-thin-gone", 8),
            ("pxd-n1-crypt-gone", 8),
            ("pxd-n2-thin-x", 8),
            ("vg0-root", 8),
        ]);
        let mut s = state();
        s.volumes.clear();
        let steps = plan(&s, &observed(&devs)).unwrap();
        assert_eq!(
            kinds(&steps)[1..],
            [
                "deactivate pxd-n1-crypt-gone",
                "deactivate pxd-n1-thin-gone"
            ]
        );
        s.pools.clear();
        let steps = plan(&s, &observed(&devs)).unwrap();
        assert_eq!(
            kinds(&steps),
            [
                "deactivate pxd-n1-crypt-gone",
                "deactivate pxd-n1-thin-gone",
                "deactivate pxd-n1-pool-p0",
                "deactivate pxd-n1-pool-p0-data",
                "deactivate pxd-n1-pool-p0-meta"
            ]
        );
    }

    #[test]
    fn suspended_devices_resume_first_lowest_first() {
        let mut s = state();
        s.volumes[0].formatted = true;
        let mut devs = pool_devs();
        devs.push(("pxd-n1-thin-v1", (64 << 20) / 512));
        let mut o = observed(&devs);
        o.suspended.insert("pxd-n1-thin-v1".into());
        o.suspended.insert("pxd-n1-pool-p0".into());
        o.suspended.insert("pxd-n2-thin-v9".into());
        assert_eq!(
            kinds(&plan(&s, &o).unwrap()),
            ["resume pxd-n1-pool-p0", "resume pxd-n1-thin-v1", "pool p0"]
        );
    }

    #[test]
    fn an_added_drive_grows_the_live_pool() {
        let mut s = state();
        s.volumes.clear();
        s.pools[0].drives.push("/dev/vdb".into());
        let mut o = observed(&pool_devs());
        o.drives.insert(
            PathBuf::from("/dev/vdb"),
            Drive {
                dev: Device {
                    major: 254,
                    minor: 16,
                },
                size: Sectors(4 << 21),
            },
        );
        assert_eq!(kinds(&plan(&s, &o).unwrap()), ["grow pool p0"]);
    }

    #[test]
    fn a_restore_replaces_the_stack_then_deletes_the_retired_id() {
        let mut s = state();
        s.volumes[0].formatted = true;
        s.volumes[0].thin_id = 3;
        s.volumes[0].retired = vec![1];
        s.volumes[0].origin = Some(crate::reconcile::desired::OriginState {
            thin_id: 2,
            volume: None,
        });
        let mut devs = pool_devs();
        devs.push(("pxd-n1-thin-v1", (64 << 20) / 512));
        let mut o = observed(&devs);
        o.thin_ids.insert("pxd-n1-thin-v1".into(), 1);
        assert_eq!(
            kinds(&plan(&s, &o).unwrap())[1..],
            [
                "deactivate pxd-n1-thin-v1",
                "copy 2 to 3",
                "activate 1",
                "delete-id 1",
                "forget retired of v1"
            ]
        );
    }

    #[test]
    fn mounts_follow_the_desired_path_and_only_pxd_mounts_are_undone() {
        let mut s = state();
        s.volumes[0].formatted = true;
        s.mount_root = Some("/var/lib/pxd/mounts".into());
        s.volumes[0].mount = Some("/var/lib/pxd/mounts/db".into());
        let mut devs = pool_devs();
        devs.push(("pxd-n1-thin-v1", (64 << 20) / 512));
        let mut o = observed(&devs);
        assert_eq!(
            kinds(&plan(&s, &o).unwrap())[1..],
            ["mount /var/lib/pxd/mounts/db"]
        );
        o.mounts.insert(
            "pxd-n1-thin-v1".into(),
            vec!["/var/lib/pxd/mounts/db".into(), "/mnt/mine".into()],
        );
        assert_eq!(plan(&s, &o).unwrap().len(), 1);
        s.volumes[0].mount = None;
        assert_eq!(
            kinds(&plan(&s, &o).unwrap())[1..],
            ["unmount /var/lib/pxd/mounts/db"]
        );
    }

    #[test]
    fn a_missing_drive_builds_nothing_and_tears_nothing_down() {
        let mut o = observed(&pool_devs());
        o.drives.clear();
        let steps = plan(&state(), &o).unwrap();
        assert!(steps.is_empty(), "{:?}", kinds(&steps));
    }
}
