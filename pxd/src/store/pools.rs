//! Pool and drive commands of the state machine. A drive add is recorded before anything
//! touches the disk, then finished by the node's reconciler: it measures the drive (which
//! gives it a class, a pool and the pool's next member slot, chosen here so that two racing
//! adds cannot take one slot), labels it, and the drive is online. Pools record that they
//! were activated and how their node last found them.

use super::state::{encode, Change, ClusterState};
use super::types::{Benchmark, Class, Drive, DriveState, Leaving, NewPool, Pool, PoolHealth};
use crate::plan::pool::{plan_pool, Drive as PlanDrive, PoolSpec};
use devicemapper::{Device, Sectors};
use serde::{Deserialize, Serialize};

/// A change to one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum PoolChange {
    /// Its thin metadata was activated: from now on it is never written fresh.
    Activated,
    /// Its node found it so.
    Health { health: PoolHealth },
}

/// A step of a drive add, as the reconciler records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum DriveChange {
    /// Measured into `class`: it joins the node's pool of that class (made now if there is
    /// none) as its next member.
    Measured {
        class: Class,
        benchmark: Benchmark,
        /// How the node makes the pool, if the drive founds one (the defaults when absent:
        /// a command from a node that predates the field).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        new_pool: Option<NewPool>,
    },
    /// Its label is written: it is a member the pool is assembled from.
    Labelled,
    /// While adding: the add cannot finish (the disk changed, went away, or is in use); the
    /// drive leaves the pool it was given, which never used it. Online: the drive fails
    /// I/O; it stays its pool's member (the pool is degraded) and the replicas on that pool
    /// are built elsewhere.
    Failed { reason: String },
    /// A leaving drive's pool devices are down and its label erased (where it could be):
    /// it leaves the store; with a replacement, that drive takes its place in a pool whose
    /// metadata is made fresh, otherwise the pool goes too.
    Retired,
}

impl ClusterState {
    /// Records the intent to add `drive` (state `adding`, no pool yet).
    pub(super) fn begin_drive_add(&mut self, drive: &Drive) -> Result<Vec<Change>, String> {
        self.known_node(drive.node)?;
        if drive.state != DriveState::Adding || !drive.pool.is_empty() {
            return Err(format!(
                "drive {} must start as adding, in no pool",
                drive.id
            ));
        }
        if self.drives.contains_key(&drive.id) {
            return Err(format!("drive {} exists already", drive.id));
        }
        let busy = |d: &&Drive| {
            d.node == drive.node && matches!(d.state, DriveState::Adding | DriveState::Labelling)
        };
        if let Some(d) = self
            .drives
            .values()
            .filter(busy)
            .find(|d| d.path == drive.path)
        {
            return Err(format!(
                "drive {} is being added already (as {})",
                drive.path, d.id
            ));
        }
        if let Some(hw) = &drive.hardware_id {
            if let Some(d) = self.drives.values().find(|d| {
                d.node == drive.node
                    && d.hardware_id.as_ref() == Some(hw)
                    && d.state != DriveState::Failed
            }) {
                return Err(format!(
                    "drive {} (hardware id {hw}) is drive {} already",
                    drive.path, d.id
                ));
            }
        }
        self.drives.insert(drive.id.clone(), drive.clone());
        Ok(vec![encode(format!("drive/{}", drive.id), drive)])
    }

    pub(super) fn update_drive(
        &mut self,
        id: &str,
        change: &DriveChange,
    ) -> Result<Vec<Change>, String> {
        let mut drive = self
            .drives
            .get(id)
            .cloned()
            .ok_or_else(|| format!("drive {id} does not exist"))?;
        let mut out = Vec::new();
        match (change, drive.state) {
            // A replacement: its place in the pool was kept for it.
            (
                DriveChange::Measured {
                    class, benchmark, ..
                },
                DriveState::Adding,
            ) if !drive.pool.is_empty() => {
                let mut pool = self.pool_of(&drive)?;
                drive.class = Some(*class);
                drive.benchmark = Some(benchmark.clone());
                drive.state = DriveState::Labelling;
                pool.capacity = self.planned_capacity(&pool, &drive);
                out.push(encode(format!("pool/{}", pool.id), &pool));
                self.pools.insert(pool.id.clone(), pool);
            }
            (
                DriveChange::Measured {
                    class,
                    benchmark,
                    new_pool,
                },
                DriveState::Adding,
            ) => {
                let new_pool = new_pool.unwrap_or_default();
                let mut pool = self.pool_for(&drive, *class, benchmark, &new_pool);
                pool.drives.push(drive.id.clone());
                pool.drive_paths.push(drive.path.clone());
                pool.generation += 1;
                pool.capacity = self.planned_capacity(&pool, &drive);
                drive.pool = pool.id.clone();
                drive.class = Some(*class);
                drive.benchmark = Some(benchmark.clone());
                drive.state = DriveState::Labelling;
                out.push(encode(format!("pool/{}", pool.id), &pool));
                self.pools.insert(pool.id.clone(), pool);
            }
            (DriveChange::Labelled, DriveState::Labelling) => drive.state = DriveState::Online,
            // A replacement that cannot finish keeps the place it was given: the pool's
            // layout counts it, and another `drive replace` takes it over.
            (DriveChange::Failed { reason }, DriveState::Adding | DriveState::Labelling)
                if drive.replaces.is_some() && !drive.pool.is_empty() =>
            {
                drive.state = DriveState::Failed;
                drive.note = Some(reason.clone());
            }
            (DriveChange::Failed { reason }, DriveState::Adding | DriveState::Labelling) => {
                if let Some(pool) = self.pools.get(&drive.pool).cloned() {
                    // The drive is the pool's last member, never assembled (it was not
                    // labelled online): it leaves; a pool it alone made goes with it.
                    let mut pool = pool;
                    if pool.drives.last() == Some(&drive.id) {
                        pool.drives.pop();
                        pool.drive_paths.pop();
                    }
                    if pool.drives.is_empty() && !pool.activated {
                        self.pools.remove(&pool.id);
                        out.push(super::state::removed(format!("pool/{}", pool.id)));
                    } else {
                        out.push(encode(format!("pool/{}", pool.id), &pool));
                        self.pools.insert(pool.id.clone(), pool);
                    }
                }
                drive.pool.clear();
                drive.state = DriveState::Failed;
                drive.note = Some(reason.clone());
            }
            (DriveChange::Failed { reason }, DriveState::Online) => {
                drive.state = DriveState::Failed;
                drive.note = Some(reason.clone());
            }
            (DriveChange::Retired, DriveState::Online | DriveState::Failed)
                if drive.leaving.is_some() =>
            {
                return self.retire_drive(&drive);
            }
            (change, state) => {
                return Err(format!(
                    "drive {id} is {state:?}; {change:?} does not apply to it"
                ))
            }
        }
        out.push(encode(format!("drive/{id}"), &drive));
        self.drives.insert(id.to_owned(), drive);
        Ok(out)
    }

    fn pool_of(&self, drive: &Drive) -> Result<Pool, String> {
        self.pools
            .get(&drive.pool)
            .cloned()
            .ok_or_else(|| format!("drive {}: its pool {} does not exist", drive.id, drive.pool))
    }

    /// The volumes with a replica (or a dropped leg still being freed) on pool `pool`.
    pub(crate) fn volumes_on(&self, pool: &str) -> Vec<&super::types::Volume> {
        self.volumes
            .values()
            .filter(|v| v.replicas.iter().chain(&v.dropped).any(|r| r.pool == pool))
            .collect()
    }

    /// Marks drive `id` leaving (`drive remove`, or `drive replace` onto `replacement`,
    /// whose add is recorded with it). Refused, changing nothing, where the drive's leave
    /// would lose data or cannot finish.
    pub(super) fn leave_drive(
        &mut self,
        id: &str,
        replacement: Option<&Drive>,
    ) -> Result<Vec<Change>, String> {
        let mut drive = self
            .drives
            .get(id)
            .cloned()
            .ok_or_else(|| format!("drive: no drive {id} is recorded"))?;
        if !matches!(drive.state, DriveState::Online | DriveState::Failed) || drive.pool.is_empty()
        {
            return Err(format!(
                "drive: {id} is {:?}, in no pool; only a pool member (online or failed) can \
                 leave one",
                drive.state
            ));
        }
        if drive.leaving.is_some() {
            return Err(format!("drive: {id} is leaving its pool already"));
        }
        let pool = self.pool_of(&drive)?;
        if let Some(v) = self.volumes_on(&pool.id).into_iter().find(|v| v.repl == 1) {
            return Err(format!(
                "drive: volume {} has its only replica on pool {} (drive {id}); a repl 1 \
                 volume cannot be moved, so delete it (or copy its data to a replicated \
                 volume) first",
                v.name, pool.id
            ));
        }
        let mut out = Vec::new();
        match replacement {
            None if pool.drives.len() > 1 => {
                return Err(format!(
                    "drive: {id} is one of the {} members of pool {}, whose data runs across \
                     all of them, so it cannot leave alone; replace it with `pxd drive \
                     replace` instead",
                    pool.drives.len(),
                    pool.id
                ))
            }
            None => drive.leaving = Some(Leaving::Remove),
            Some(new) => {
                if new.node != drive.node {
                    return Err(format!(
                        "drive: {id} is on node {}; its replacement must be on the same node",
                        drive.node
                    ));
                }
                let mut new = new.clone();
                new.replaces = Some(id.to_owned());
                out.extend(self.begin_drive_add(&new)?);
                drive.leaving = Some(Leaving::Replace { by: new.id });
            }
        }
        out.push(encode(format!("drive/{id}"), &drive));
        self.drives.insert(id.to_owned(), drive);
        Ok(out)
    }

    /// The leaving `drive`'s pool devices are down: it leaves the store, and its pool with
    /// it, or its replacement takes its place in a pool to be made fresh.
    fn retire_drive(&mut self, drive: &Drive) -> Result<Vec<Change>, String> {
        let mut pool = self.pool_of(drive)?;
        if let Some(v) = self.volumes_on(&pool.id).first() {
            return Err(format!(
                "drive {}: volume {} still has a replica on pool {}",
                drive.id, v.name, pool.id
            ));
        }
        let mut out = vec![super::state::removed(format!("drive/{}", drive.id))];
        self.drives.remove(&drive.id);
        match &drive.leaving {
            Some(Leaving::Replace { by }) => {
                let mut new =
                    self.drives.get(by).cloned().ok_or_else(|| {
                        format!("drive {}: its replacement {by} is gone", drive.id)
                    })?;
                let slot = pool
                    .drives
                    .iter()
                    .position(|d| *d == drive.id)
                    .ok_or_else(|| format!("drive {} is no member of {}", drive.id, pool.id))?;
                pool.drives[slot] = new.id.clone();
                if let Some(p) = pool.drive_paths.get_mut(slot) {
                    p.clone_from(&new.path);
                }
                pool.generation += 1;
                pool.activated = false;
                pool.reformed = true;
                pool.used = 0;
                pool.health = PoolHealth::Online;
                pool.capacity = self.planned_capacity(&pool, &new);
                new.pool = pool.id.clone();
                out.push(encode(format!("drive/{}", new.id), &new));
                self.drives.insert(new.id.clone(), new);
                out.push(encode(format!("pool/{}", pool.id), &pool));
                self.pools.insert(pool.id.clone(), pool);
            }
            _ => {
                out.push(super::state::removed(format!("pool/{}", pool.id)));
                self.pools.remove(&pool.id);
            }
        }
        Ok(out)
    }

    /// The node's pool of `class`, or a new one whose id comes from the drive's uuid, so
    /// every member applying this picks the same.
    fn pool_for(&self, drive: &Drive, class: Class, benchmark: &Benchmark, new: &NewPool) -> Pool {
        if let Some(p) = self
            .pools
            .values()
            .find(|p| p.node == drive.node && p.class == class)
        {
            return p.clone();
        }
        let id: String = drive.id.chars().filter(|c| *c != '-').take(16).collect();
        Pool {
            id,
            node: drive.node,
            class,
            drives: vec![],
            capacity: 0,
            used: 0,
            benchmark: Some(benchmark.clone()),
            chunk_sectors: new.chunk_sectors,
            zero_new_chunks: new.features.zero_new_chunks,
            discard_passdown: new.features.discard_passdown,
            drive_paths: vec![],
            generation: 0,
            activated: false,
            health: PoolHealth::Online,
            reformed: false,
        }
    }

    /// The pool's data bytes as planned over its members' recorded sizes (where they sit
    /// does not matter for the size).
    fn planned_capacity(&self, pool: &Pool, adding: &Drive) -> u64 {
        let sizes = pool.drives.iter().map(|d| match self.drives.get(d) {
            Some(d) => d.size,
            None => adding.size,
        });
        let spec = crate::plan::names::Id::node(&pool.node.to_string())
            .and_then(|node| Ok((node, crate::plan::names::Id::object(&pool.id)?)))
            .map(|(node, id)| PoolSpec {
                node,
                pool: id,
                drives: sizes
                    .map(|b| PlanDrive {
                        dev: Device { major: 0, minor: 0 },
                        size: Sectors(b / 512),
                    })
                    .collect(),
                chunk: Sectors(pool.chunk_sectors),
                features: pool.thin_features(),
            });
        spec.ok()
            .and_then(|s| plan_pool(&s).ok())
            .map_or(pool.capacity, |p| *p.data.length() * 512)
    }

    pub(super) fn update_pool(
        &mut self,
        id: &str,
        change: &PoolChange,
    ) -> Result<Vec<Change>, String> {
        let pool = self
            .pools
            .get_mut(id)
            .ok_or_else(|| format!("pool {id} does not exist"))?;
        match change {
            PoolChange::Activated => {
                pool.activated = true;
                pool.reformed = false;
            }
            PoolChange::Health { health } => pool.health = health.clone(),
        }
        Ok(vec![encode(format!("pool/{id}"), &*pool)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::{Command, Response};
    use crate::store::types::*;

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        s.nodes.insert(
            NodeId(1),
            Node {
                id: NodeId(1),
                name: "n1".into(),
                api_addr: String::new(),
                data_addr: String::new(),
                public_key: String::new(),
                topology: Default::default(),
                role: Role::Storage,
            },
        );
        s
    }

    fn uuid(n: u8) -> String {
        crate::pool::label::DriveUuid([n; 16]).to_string()
    }

    fn adding(n: u8, path: &str, hw: Option<&str>) -> Command {
        Command::BeginDriveAdd {
            drive: Drive::adding(
                uuid(n),
                NodeId(1),
                path.into(),
                hw.map(Into::into),
                1 << 30,
                false,
            ),
        }
    }

    fn change(n: u8, change: DriveChange) -> Command {
        Command::UpdateDrive {
            id: uuid(n),
            change,
        }
    }

    fn measured(class: Class) -> DriveChange {
        DriveChange::Measured {
            class,
            benchmark: Benchmark {
                read_iops: 1,
                write_iops: 1,
                read_p99_us: 1,
                write_p99_us: 1,
                seq_mb_per_s: 1,
                read_p50_us: 1,
                write_p50_us: 1,
            },
            new_pool: None,
        }
    }

    fn rejected(r: Response) -> String {
        match r {
            Response::Rejected(why) => why,
            Response::Applied => panic!("applied"),
        }
    }

    #[test]
    fn an_add_is_recorded_then_measured_into_a_pool_slot_then_labelled() {
        let mut s = state();
        assert_eq!(
            s.apply(&adding(1, "/dev/vdb", Some("w1"))).0,
            Response::Applied
        );
        // A second add of the same disk while the first runs is refused, by path or id.
        let why = rejected(s.apply(&adding(2, "/dev/vdb", None)).0);
        assert_eq!(
            why,
            format!("drive /dev/vdb is being added already (as {})", uuid(1))
        );
        assert!(rejected(s.apply(&adding(3, "/dev/vdc", Some("w1"))).0).contains("hardware id w1"));

        assert_eq!(
            s.apply(&change(1, measured(Class::High))).0,
            Response::Applied
        );
        let d = s.drives[&uuid(1)].clone();
        assert_eq!(d.state, DriveState::Labelling);
        let p = &s.pools[&d.pool];
        assert_eq!(p.drives, [uuid(1)]);
        assert_eq!((p.generation, p.activated), (1, false));
        assert!(p.capacity > 0 && p.capacity < 1 << 30);
        assert_eq!(
            p.id, "0101010101010101",
            "a new pool's id comes from the drive"
        );

        // A second drive of the class takes the next slot of the same pool.
        s.apply(&adding(2, "/dev/vdc", None));
        s.apply(&change(2, measured(Class::High)));
        assert_eq!(s.pools[&d.pool].drives, [uuid(1), uuid(2)]);
        assert_eq!(s.pools.len(), 1);

        assert_eq!(
            s.apply(&change(1, DriveChange::Labelled)).0,
            Response::Applied
        );
        assert_eq!(s.drives[&uuid(1)].state, DriveState::Online);
        assert!(rejected(s.apply(&change(1, measured(Class::Low))).0).contains("Online"));
    }

    #[test]
    fn a_pool_is_made_as_its_founding_drive_s_node_asked_and_keeps_it() {
        let mut s = state();
        s.apply(&adding(1, "/dev/vdb", None));
        let mut m = measured(Class::High);
        let asked = NewPool {
            chunk_sectors: 2048,
            features: crate::plan::pool::ThinFeatures {
                zero_new_chunks: false,
                discard_passdown: true,
            },
        };
        if let DriveChange::Measured { new_pool, .. } = &mut m {
            *new_pool = Some(asked);
        }
        assert_eq!(s.apply(&change(1, m)).0, Response::Applied);
        let pool = s.drives[&uuid(1)].pool.clone();
        let p = &s.pools[&pool];
        assert_eq!(
            (p.chunk_sectors, p.zero_new_chunks, p.discard_passdown),
            (2048, false, true)
        );
        let features = p.thin_features();
        assert_eq!(features.args(), ["skip_block_zeroing"]);

        // A later drive joins the pool as it is, whatever its node now asks.
        s.apply(&adding(2, "/dev/vdc", None));
        s.apply(&change(2, measured(Class::High)));
        assert_eq!(s.pools[&pool].chunk_sectors, 2048);
        assert!(!s.pools[&pool].zero_new_chunks);

        // A command from a node that predates the field makes the kernel's defaults.
        let old: DriveChange = serde_json::from_str(
            r#"{"change":"measured","class":"low","benchmark":{"read_iops":1,"write_iops":1,"read_p99_us":1,"write_p99_us":1,"seq_mb_per_s":1}}"#,
        )
        .unwrap();
        s.apply(&adding(3, "/dev/vdd", None));
        assert_eq!(s.apply(&change(3, old)).0, Response::Applied);
        let low = &s.pools[&s.drives[&uuid(3)].pool];
        assert_eq!(low.chunk_sectors, *crate::plan::pool::DEFAULT_CHUNK);
        assert!(low.zero_new_chunks && low.discard_passdown);
    }

    #[test]
    fn a_failed_add_leaves_its_pool_as_it_was() {
        let mut s = state();
        s.apply(&adding(1, "/dev/vdb", None));
        s.apply(&change(1, measured(Class::High)));
        let pool = s.drives[&uuid(1)].pool.clone();
        let failed = DriveChange::Failed {
            reason: "the disk changed".into(),
        };
        assert_eq!(s.apply(&change(1, failed.clone())).0, Response::Applied);
        assert!(s.pools.is_empty(), "the pool the drive alone made is gone");
        let d = &s.drives[&uuid(1)];
        assert_eq!(
            (d.state, d.note.as_deref()),
            (DriveState::Failed, Some("the disk changed"))
        );
        // The path is free again.
        assert_eq!(s.apply(&adding(2, "/dev/vdb", None)).0, Response::Applied);
        // A failure of a later member leaves the earlier ones.
        s.apply(&change(2, measured(Class::High)));
        s.apply(&change(2, DriveChange::Labelled));
        s.apply(&adding(3, "/dev/vdc", None));
        s.apply(&change(3, measured(Class::High)));
        s.apply(&change(3, failed));
        assert_eq!(s.pools[&s.drives[&uuid(2)].pool].drives, [uuid(2)]);
        assert!(!s.pools.contains_key(&pool) || s.pools[&pool].drives == [uuid(2)]);
    }

    #[test]
    fn activation_and_health_are_recorded() {
        let mut s = state();
        s.apply(&adding(1, "/dev/vdb", None));
        s.apply(&change(1, measured(Class::High)));
        let p = s.drives[&uuid(1)].pool.clone();
        let activated = Command::UpdatePool {
            id: p.clone(),
            change: PoolChange::Activated,
        };
        assert_eq!(s.apply(&activated).0, Response::Applied);
        assert!(s.pools[&p].activated);
        let damaged = PoolHealth::Damaged("no thin superblock".into());
        s.apply(&Command::UpdatePool {
            id: p.clone(),
            change: PoolChange::Health {
                health: damaged.clone(),
            },
        });
        assert_eq!(s.pools[&p].health, damaged);
    }

    #[test]
    fn a_member_that_fails_io_stays_in_its_pool_marked_failed() {
        let mut s = state();
        s.apply(&adding(1, "/dev/vdb", None));
        s.apply(&change(1, measured(Class::High)));
        s.apply(&change(1, DriveChange::Labelled));
        let pool = s.drives[&uuid(1)].pool.clone();
        let failed = DriveChange::Failed {
            reason: "I/O errors: Input/output error".into(),
        };
        assert_eq!(s.apply(&change(1, failed.clone())).0, Response::Applied);
        let d = &s.drives[&uuid(1)];
        assert_eq!(d.state, DriveState::Failed);
        assert_eq!(d.pool, pool);
        assert_eq!(s.pools[&pool].drives, [uuid(1)]);
        // Failed once is failed: a second record is refused, nothing changes.
        assert_ne!(s.apply(&change(1, failed)).0, Response::Applied);
    }

    /// An online one-drive pool of drive `n`, its id.
    fn online(s: &mut ClusterState, n: u8, path: &str) -> String {
        s.apply(&adding(n, path, None));
        s.apply(&change(n, measured(Class::High)));
        s.apply(&change(n, DriveChange::Labelled));
        let pool = s.drives[&uuid(n)].pool.clone();
        s.apply(&Command::UpdatePool {
            id: pool.clone(),
            change: PoolChange::Activated,
        });
        pool
    }

    fn leave(n: u8, replacement: Option<Drive>) -> Command {
        Command::LeaveDrive {
            id: uuid(n),
            replacement,
        }
    }

    /// Volume `id` with `repl` replicas, one of them on `pool`.
    fn volume_on(s: &mut ClusterState, id: &str, repl: u8, pool: &str) {
        let mut v = crate::store::attach::tests::volume(repl);
        v.id = id.into();
        v.name = id.into();
        v.replicas[0].pool = pool.into();
        s.volumes.insert(v.id.clone(), v);
    }

    #[test]
    fn a_drive_leaves_only_when_no_data_is_lost_and_the_pool_can_do_without_it() {
        let mut s = state();
        let pool = online(&mut s, 1, "/dev/vdb");
        volume_on(&mut s, "solo", 1, &pool);
        let before = s.clone();
        let why = rejected(s.apply(&leave(1, None)).0);
        assert!(
            why.starts_with("drive: volume solo has its only replica"),
            "{why}"
        );
        let new = Drive::adding(uuid(9), NodeId(1), "/dev/vdz".into(), None, 1 << 30, false);
        let why = rejected(s.apply(&leave(1, Some(new.clone()))).0);
        assert!(why.contains("only replica"), "{why}");
        assert_eq!(s, before, "a refusal changes nothing");
        s.volumes.clear();

        // A member of a pool of two cannot leave alone; it can be replaced.
        s.apply(&adding(2, "/dev/vdc", None));
        s.apply(&change(2, measured(Class::High)));
        s.apply(&change(2, DriveChange::Labelled));
        let why = rejected(s.apply(&leave(2, None)).0);
        assert!(why.contains("one of the 2 members"), "{why}");
        assert_eq!(s.apply(&leave(2, Some(new))).0, Response::Applied);
        assert!(rejected(s.apply(&leave(2, None)).0).contains("leaving its pool already"));
        assert!(rejected(s.apply(&leave(7, None)).0).starts_with("drive: no drive"));
    }

    #[test]
    fn a_removed_drive_leaves_with_its_pool_once_nothing_is_on_it() {
        let mut s = state();
        let pool = online(&mut s, 1, "/dev/vdb");
        volume_on(&mut s, "v", 2, &pool);
        assert_eq!(s.apply(&leave(1, None)).0, Response::Applied);
        assert_eq!(s.drives[&uuid(1)].leaving, Some(Leaving::Remove));
        // Its leg is still there: the drive cannot go yet.
        let why = rejected(s.apply(&change(1, DriveChange::Retired)).0);
        assert!(why.contains("volume v still has a replica"), "{why}");
        s.volumes.clear();
        assert_eq!(
            s.apply(&change(1, DriveChange::Retired)).0,
            Response::Applied
        );
        assert!(s.drives.is_empty() && s.pools.is_empty());
    }

    #[test]
    fn a_replacement_takes_the_place_of_the_drive_it_replaces_in_a_pool_made_anew() {
        let mut s = state();
        let pool = online(&mut s, 1, "/dev/vdb");
        let failed = DriveChange::Failed {
            reason: "I/O errors".into(),
        };
        s.apply(&change(1, failed));
        let new = Drive::adding(uuid(2), NodeId(1), "/dev/vdc".into(), None, 2 << 30, false);
        assert_eq!(s.apply(&leave(1, Some(new))).0, Response::Applied);
        let d = &s.drives[&uuid(2)];
        assert_eq!(
            (d.state, d.replaces.clone(), d.pool.as_str()),
            (DriveState::Adding, Some(uuid(1)), "")
        );
        let old_capacity = s.pools[&pool].capacity;
        assert_eq!(
            s.apply(&change(1, DriveChange::Retired)).0,
            Response::Applied
        );
        assert!(!s.drives.contains_key(&uuid(1)));
        let p = &s.pools[&pool];
        assert_eq!(p.drives, [uuid(2)]);
        assert_eq!(p.drive_paths, ["/dev/vdc"]);
        assert!(
            p.reformed && !p.activated && p.capacity > old_capacity,
            "{p:?}"
        );
        assert_eq!(s.drives[&uuid(2)].pool, pool);
        // Measured, it keeps the place it was given.
        s.apply(&change(2, measured(Class::Low)));
        assert_eq!(s.drives[&uuid(2)].state, DriveState::Labelling);
        assert_eq!(s.pools[&pool].drives, [uuid(2)]);
        assert_eq!(s.pools.len(), 1);
        s.apply(&change(2, DriveChange::Labelled));
        s.apply(&Command::UpdatePool {
            id: pool.clone(),
            change: PoolChange::Activated,
        });
        assert!(s.pools[&pool].activated && !s.pools[&pool].reformed);
    }

    #[test]
    fn a_replacement_that_fails_keeps_its_place_for_the_next() {
        let mut s = state();
        let pool = online(&mut s, 1, "/dev/vdb");
        let new = Drive::adding(uuid(2), NodeId(1), "/dev/vdc".into(), None, 1 << 30, false);
        s.apply(&leave(1, Some(new)));
        s.apply(&change(1, DriveChange::Retired));
        let failed = DriveChange::Failed {
            reason: "the disk changed".into(),
        };
        assert_eq!(s.apply(&change(2, failed)).0, Response::Applied);
        assert_eq!(s.pools[&pool].drives, [uuid(2)]);
        assert_eq!(s.drives[&uuid(2)].state, DriveState::Failed);
        let next = Drive::adding(uuid(3), NodeId(1), "/dev/vdd".into(), None, 1 << 30, false);
        assert_eq!(s.apply(&leave(2, Some(next))).0, Response::Applied);
    }
}
