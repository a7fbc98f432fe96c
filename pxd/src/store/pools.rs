//! Pool and drive commands of the state machine: a drive joins a pool as its next member,
//! and a pool records that it was activated and how its node last found it. Checked in
//! `apply`, so two racing adds cannot both take one member slot or one drive.

use super::state::{ClusterState, Command};
use super::types::{Drive, Pool, PoolHealth};
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

impl ClusterState {
    /// Adds `drive` as member `member` of pool `drive.pool`: a new pool (`new_pool`, whose
    /// first member it is) or an existing one, whose next member it must be.
    pub(super) fn add_drive(
        &mut self,
        drive: &Drive,
        member: u32,
        capacity: u64,
        new_pool: Option<&Pool>,
    ) -> Result<Vec<super::state::Change>, String> {
        self.known_node(drive.node)?;
        if let Some(p) = self.pools.values().find(|p| p.drives.contains(&drive.id)) {
            return Err(format!("drive {} is in pool {} already", drive.id, p.id));
        }
        if let Some(hw) = &drive.hardware_id {
            if let Some(d) = self
                .drives
                .values()
                .find(|d| d.node == drive.node && d.hardware_id.as_ref() == Some(hw))
            {
                return Err(format!(
                    "a drive with hardware id {hw} is in pool {} already (as {})",
                    d.pool, d.id
                ));
            }
        }
        let mut pool = match (self.pools.get(&drive.pool), new_pool) {
            (Some(_), Some(_)) => return Err(format!("pool {} exists already", drive.pool)),
            (None, None) => return Err(format!("pool {} does not exist", drive.pool)),
            (None, Some(p)) => {
                if p.id != drive.pool || p.node != drive.node || !p.drives.is_empty() {
                    return Err(format!(
                        "new pool {} must be empty, on the drive's node",
                        p.id
                    ));
                }
                let mut p = p.clone();
                p.activated = false;
                p.generation = 0;
                p.health = PoolHealth::Online;
                p
            }
            (Some(p), None) => {
                if p.node != drive.node || p.class != drive.class {
                    return Err(format!(
                        "pool {} is a {} pool of node {}; the drive is {} on node {}",
                        p.id, p.class, p.node, drive.class, drive.node
                    ));
                }
                p.clone()
            }
        };
        if member as usize != pool.drives.len() {
            return Err(format!(
                "pool {} has {} members now; member {member} was asked for (another add took it: retry)",
                pool.id,
                pool.drives.len()
            ));
        }
        pool.drives.push(drive.id.clone());
        pool.drive_paths.push(drive.path.clone());
        pool.generation += 1;
        pool.capacity = capacity;
        self.pools.insert(pool.id.clone(), pool.clone());
        self.drives.insert(drive.id.clone(), drive.clone());
        Ok(vec![
            super::state::encode(format!("pool/{}", pool.id), &pool),
            super::state::encode(format!("drive/{}", drive.id), drive),
        ])
    }

    pub(super) fn update_pool(
        &mut self,
        id: &str,
        change: &PoolChange,
    ) -> Result<Vec<super::state::Change>, String> {
        let pool = self
            .pools
            .get_mut(id)
            .ok_or_else(|| format!("pool {id} does not exist"))?;
        match change {
            PoolChange::Activated => pool.activated = true,
            PoolChange::Health { health } => pool.health = health.clone(),
        }
        Ok(vec![super::state::encode(format!("pool/{id}"), &*pool)])
    }
}

/// The command that records a drive added to a pool.
pub fn add_drive(drive: Drive, member: u32, capacity: u64, new_pool: Option<Pool>) -> Command {
    Command::AddDrive {
        drive,
        member,
        capacity,
        new_pool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::Response;
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
                labels: Default::default(),
                role: Role::Storage,
            },
        );
        s
    }

    fn drive(id: &str, pool: &str, hw: Option<&str>) -> Drive {
        Drive {
            id: id.into(),
            node: NodeId(1),
            path: "/dev/vdb".into(),
            hardware_id: hw.map(Into::into),
            pool: pool.into(),
            size: 1 << 30,
            class: Class::High,
            state: DriveState::Online,
        }
    }

    fn new_pool(id: &str) -> Pool {
        Pool {
            id: id.into(),
            node: NodeId(1),
            class: Class::High,
            drives: vec![],
            capacity: 0,
            used: 0,
            benchmark: None,
            chunk_sectors: 512,
            drive_paths: vec![],
            generation: 0,
            activated: true,
            health: PoolHealth::Online,
        }
    }

    fn rejected(r: Response) -> String {
        match r {
            Response::Rejected(why) => why,
            Response::Applied => panic!("applied"),
        }
    }

    #[test]
    fn members_only_grow_and_one_slot_has_one_winner() {
        let mut s = state();
        let first = add_drive(drive("d1", "p", Some("wwn-1")), 0, 10, Some(new_pool("p")));
        assert_eq!(s.apply(&first).0, Response::Applied);
        let p = &s.pools["p"];
        assert_eq!(p.drives, ["d1"]);
        assert!(!p.activated, "a new pool is never activated yet");
        assert_eq!(p.generation, 1);

        // Two adds that both saw one member: the first wins slot 1, the second is refused.
        let a = add_drive(drive("d2", "p", None), 1, 20, None);
        let b = add_drive(drive("d3", "p", None), 1, 20, None);
        assert_eq!(s.apply(&a).0, Response::Applied);
        assert!(rejected(s.apply(&b).0).contains("another add took it"));
        assert_eq!(s.pools["p"].drives, ["d1", "d2"]);
        assert_eq!(s.pools["p"].generation, 2);

        // The same drive twice, by uuid or by hardware id, is refused.
        assert!(
            rejected(s.apply(&add_drive(drive("d2", "p", None), 2, 0, None)).0)
                .contains("in pool p already")
        );
        assert!(rejected(
            s.apply(&add_drive(drive("d9", "p", Some("wwn-1")), 2, 0, None))
                .0
        )
        .contains("hardware id wwn-1"));
        assert!(rejected(
            s.apply(&add_drive(
                drive("d9", "q", None),
                0,
                0,
                Some(new_pool("p"))
            ))
            .0
        )
        .contains("new pool p must be empty"));
        assert!(
            rejected(s.apply(&add_drive(drive("d9", "zz", None), 0, 0, None)).0)
                .contains("does not exist")
        );
    }

    #[test]
    fn activation_and_health_are_recorded() {
        let mut s = state();
        s.apply(&add_drive(
            drive("d1", "p", None),
            0,
            10,
            Some(new_pool("p")),
        ));
        let activated = Command::UpdatePool {
            id: "p".into(),
            change: PoolChange::Activated,
        };
        assert_eq!(s.apply(&activated).0, Response::Applied);
        assert!(s.pools["p"].activated);
        let damaged = PoolHealth::Damaged("no thin superblock".into());
        s.apply(&Command::UpdatePool {
            id: "p".into(),
            change: PoolChange::Health {
                health: damaged.clone(),
            },
        });
        assert_eq!(s.pools["p"].health, damaged);
    }
}
