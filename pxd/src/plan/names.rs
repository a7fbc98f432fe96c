//! Every kernel object pxd makes is named here, from ids alone, so that a retried or resumed
//! step finds what an interrupted one left behind, and so that several nodes sharing one kernel
//! (the multi-node tests) never collide.
//!
//! Form: `pxd-<node>-<kind>-<id>[-<role>]`, for example `pxd-n1-pool-p0-meta`.
//!
//! Length bound: the kernel keeps dm names in `DM_NAME_LEN` = 128 bytes including the NUL, so a
//! name may hold 127 bytes. The longest name is 112 bytes: `pxd-` (4), node (at most
//! [`MAX_NODE_ID`] = 32), `-`, kind (at most 5, "crypt"), `-`, id (at most [`MAX_OBJECT_ID`] =
//! 64), `-`, role (at most 4). This is checked at compile time below. The dm uuid (also 127
//! bytes) is the name behind a `PXD1-` prefix (117 bytes), so a uuid names its owner and the
//! layout version that made it.

use devicemapper::{DmNameBuf, DmUuidBuf};
use std::fmt;
use std::str::FromStr;

/// Longest node id, in bytes.
pub const MAX_NODE_ID: usize = 32;
/// Longest pool, volume or snapshot id, in bytes.
pub const MAX_OBJECT_ID: usize = 64;
/// Longest dm name the kernel takes, in bytes.
pub const DM_NAME_MAX: usize = 127;
const PREFIX: &str = "pxd";
const UUID_PREFIX: &str = "PXD1-";

const LONGEST_KIND: usize = 5;
const LONGEST_ROLE: usize = 4;
const LONGEST_NAME: usize =
    PREFIX.len() + 1 + MAX_NODE_ID + 1 + LONGEST_KIND + 1 + MAX_OBJECT_ID + 1 + LONGEST_ROLE;
const _: () = assert!(LONGEST_NAME <= DM_NAME_MAX);
const _: () = assert!(UUID_PREFIX.len() + LONGEST_NAME <= DM_NAME_MAX);

/// Why an id or a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} id {value:?} is {len} bytes; it must be 1 to {max} bytes of [a-z0-9]")]
    BadId {
        what: &'static str,
        value: String,
        len: usize,
        max: usize,
    },
    #[error("{0:?} is not a pxd device name")]
    Foreign(String),
}

/// An id that is safe inside a dm name: lowercase ASCII letters and digits only, so that `-`
/// can separate the parts and a name parses back without ambiguity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(String);

impl Id {
    fn checked(what: &'static str, value: &str, max: usize) -> Result<Id, NameError> {
        let ok = !value.is_empty()
            && value.len() <= max
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Id(value.to_owned()))
        } else {
            Err(NameError::BadId {
                what,
                value: value.chars().take(80).collect(),
                len: value.len(),
                max,
            })
        }
    }

    /// A node id (at most [`MAX_NODE_ID`] bytes).
    pub fn node(value: &str) -> Result<Id, NameError> {
        Id::checked("node", value, MAX_NODE_ID)
    }

    /// A pool, volume or snapshot id (at most [`MAX_OBJECT_ID`] bytes).
    pub fn object(value: &str) -> Result<Id, NameError> {
        Id::checked("object", value, MAX_OBJECT_ID)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What layer of a stack a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A thin pool and its `meta`/`data` linear devices.
    Pool,
    /// A thin device in a pool: one replica of a volume, or a snapshot.
    Thin,
    /// The raid1/mirror joining a volume's legs.
    Raid,
    /// dm-crypt on top of an encrypted volume.
    Crypt,
    /// A replica leg: on its replica node, the (metadata, data) thin devices joined into the
    /// one device nvmet exports; on an attach node, that export split again (roles `m<i>`,
    /// `d<i>` for leg `i`).
    Leg,
}

/// The sub-device of a layer that has more than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Meta,
    Data,
    /// Metadata (superblock and bitmap) of raid leg `i`: its first slot.
    LegMeta(u8),
    /// The second metadata slot of raid leg `i`. A raid re-assembled over another set of
    /// legs starts on fresh metadata while the old raid still writes its own when it stops,
    /// so assemblies take the two slots in turn.
    LegMetaNext(u8),
    /// Data of raid leg `i`, reached over NVMe/TCP.
    LegData(u8),
    /// Snapshot `i` (0 or 1) of a leg that a new replica is copied from, read by the copy
    /// alone: the planner leaves it to the copy, which removes it.
    Copy(u8),
}

/// Split numbers a volume's legs take (repl 3, and one to spare: a leg just dropped keeps
/// its number while its devices may still be up).
pub const MAX_LEGS: u8 = 4;

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Pool => "pool",
            Kind::Thin => "thin",
            Kind::Raid => "raid",
            Kind::Crypt => "crypt",
            Kind::Leg => "leg",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Meta => f.write_str("meta"),
            Role::Data => f.write_str("data"),
            Role::LegMeta(i) => write!(f, "m{i}"),
            Role::LegMetaNext(i) => write!(f, "n{i}"),
            Role::LegData(i) => write!(f, "d{i}"),
            Role::Copy(i) => write!(f, "c{i}"),
        }
    }
}

impl FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Role, ()> {
        let leg = |rest: &str| rest.parse::<u8>().ok().filter(|i| *i < MAX_LEGS);
        match s {
            "meta" => Ok(Role::Meta),
            "data" => Ok(Role::Data),
            _ => match (
                s.strip_prefix('m'),
                s.strip_prefix('n'),
                s.strip_prefix('d'),
                s.strip_prefix('c'),
            ) {
                (Some(i), _, _, _) => leg(i).map(Role::LegMeta).ok_or(()),
                (_, Some(i), _, _) => leg(i).map(Role::LegMetaNext).ok_or(()),
                (_, _, Some(i), _) => leg(i).map(Role::LegData).ok_or(()),
                (_, _, _, Some(i)) => i
                    .parse::<u8>()
                    .ok()
                    .filter(|i| *i < 2)
                    .map(Role::Copy)
                    .ok_or(()),
                _ => Err(()),
            },
        }
    }
}

/// The parts a pxd device name is made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceName {
    pub node: Id,
    pub kind: Kind,
    pub id: Id,
    pub role: Option<Role>,
}

impl DeviceName {
    pub fn new(node: &Id, kind: Kind, id: &Id, role: Option<Role>) -> DeviceName {
        DeviceName {
            node: node.clone(),
            kind,
            id: id.clone(),
            role,
        }
    }

    /// The dm name. Cannot fail: ids are validated and the length bound is proven above.
    pub fn dm_name(&self) -> DmNameBuf {
        DmNameBuf::new(self.to_string()).expect("pxd names are valid dm names by construction")
    }

    /// The dm uuid: the name with a versioned prefix, so `dmsetup info` tells whose it is.
    pub fn dm_uuid(&self) -> DmUuidBuf {
        DmUuidBuf::new(format!("{UUID_PREFIX}{self}"))
            .expect("pxd uuids are valid dm uuids by construction")
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}-{}-{}-{}",
            self.node,
            self.kind.as_str(),
            self.id
        )?;
        if let Some(role) = self.role {
            write!(f, "-{role}")?;
        }
        Ok(())
    }
}

impl FromStr for DeviceName {
    type Err = NameError;
    /// Parses a dm name back, so the reconciler can tell pxd's devices (and whose) from others.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let foreign = || NameError::Foreign(s.chars().take(DM_NAME_MAX).collect());
        let parts: Vec<&str> = s.split('-').collect();
        let (prefix, node, kind, id, role) = match parts.as_slice() {
            [p, n, k, i] => (*p, *n, *k, *i, None),
            [p, n, k, i, r] => (*p, *n, *k, *i, Some(*r)),
            _ => return Err(foreign()),
        };
        if prefix != PREFIX {
            return Err(foreign());
        }
        let kind = [Kind::Pool, Kind::Thin, Kind::Raid, Kind::Crypt, Kind::Leg]
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(foreign)?;
        let role = match role {
            None => None,
            Some(r) => Some(r.parse::<Role>().map_err(|_| foreign())?),
        };
        Ok(DeviceName {
            node: Id::node(node).map_err(|_| foreign())?,
            kind,
            id: Id::object(id).map_err(|_| foreign())?,
            role,
        })
    }
}

/// True if `dm_name` is one of pxd's own devices, of any node: such a device (and anything
/// stacked on it) is never a drive.
pub fn is_pxd_name(dm_name: &str) -> bool {
    dm_name.parse::<DeviceName>().is_ok()
}

/// Prefix of every NVMe qualified name pxd makes (NQNs are at most 223 bytes; pxd's are
/// under 150).
pub const NQN_PREFIX: &str = "nqn.2026-11.io.pxd";

/// The subsystem a replica node exports volume `volume`'s leg as, for attach epoch `epoch`:
/// a new attach gets a new subsystem, and unlinking the old one fences the old attach node.
pub fn leg_nqn(replica_node: &Id, volume: &Id, epoch: u64) -> String {
    format!("{NQN_PREFIX}:leg:{replica_node}:{volume}:e{epoch}")
}

/// Parses [`leg_nqn`] back: (replica node, volume, epoch).
pub fn parse_leg_nqn(nqn: &str) -> Option<(Id, Id, u64)> {
    let rest = nqn.strip_prefix(NQN_PREFIX)?.strip_prefix(":leg:")?;
    let mut parts = rest.split(':');
    let (node, volume, epoch) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((
        Id::node(node).ok()?,
        Id::object(volume).ok()?,
        epoch.strip_prefix('e')?.parse().ok()?,
    ))
}

/// The host NQN node `node` connects as; exports allow only the attach node's.
pub fn host_nqn(node: &Id) -> String {
    format!("{NQN_PREFIX}:host:{node}")
}

/// The three devices of a thin pool.
pub fn pool_devices(node: &Id, pool: &Id) -> [DeviceName; 3] {
    [
        DeviceName::new(node, Kind::Pool, pool, Some(Role::Meta)),
        DeviceName::new(node, Kind::Pool, pool, Some(Role::Data)),
        DeviceName::new(node, Kind::Pool, pool, None),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leg_names_and_nqns_parse_back() {
        let node = Id::node("n1").unwrap();
        let vol = Id::object("v7").unwrap();
        let split = DeviceName::new(&node, Kind::Leg, &vol, Some(Role::LegData(2)));
        assert_eq!(split.to_string(), "pxd-n1-leg-v7-d2");
        assert_eq!("pxd-n1-leg-v7-d2".parse::<DeviceName>().unwrap(), split);
        assert_eq!("pxd-n1-leg-v7".parse::<DeviceName>().unwrap().role, None);
        assert!("pxd-n1-leg-v7-d4".parse::<DeviceName>().is_err());
        let next = DeviceName::new(&node, Kind::Leg, &vol, Some(Role::LegMetaNext(1)));
        assert_eq!(next.to_string(), "pxd-n1-leg-v7-n1");
        assert_eq!("pxd-n1-leg-v7-n1".parse::<DeviceName>().unwrap(), next);
        assert!("pxd-n1-leg-v7-x1".parse::<DeviceName>().is_err());
        let nqn = leg_nqn(&node, &vol, 42);
        assert_eq!(nqn, "nqn.2026-11.io.pxd:leg:n1:v7:e42");
        assert_eq!(parse_leg_nqn(&nqn), Some((node.clone(), vol, 42)));
        assert_eq!(parse_leg_nqn("nqn.2026-11.io.pxd:leg:n1:v7"), None);
        assert_eq!(parse_leg_nqn("nqn.2014-08.org.nvmexpress:uuid:1"), None);
        assert_eq!(host_nqn(&node), "nqn.2026-11.io.pxd:host:n1");
        let longest = leg_nqn(
            &Id::node(&"a".repeat(MAX_NODE_ID)).unwrap(),
            &Id::object(&"b".repeat(MAX_OBJECT_ID)).unwrap(),
            u64::MAX,
        );
        assert!(longest.len() <= 223, "{}", longest.len());
    }

    #[test]
    fn names_follow_the_pattern_and_parse_back() {
        let node = Id::node("n1").unwrap();
        let pool = Id::object("p0").unwrap();
        let [meta, data, tpool] = pool_devices(&node, &pool);
        assert_eq!(meta.to_string(), "pxd-n1-pool-p0-meta");
        assert_eq!(data.to_string(), "pxd-n1-pool-p0-data");
        assert_eq!(tpool.to_string(), "pxd-n1-pool-p0");
        assert_eq!(tpool.dm_uuid().to_string(), "PXD1-pxd-n1-pool-p0");
        for name in [meta, data, tpool] {
            assert_eq!(name.to_string().parse::<DeviceName>().unwrap(), name);
        }
    }

    #[test]
    fn longest_possible_name_fits_the_kernel_limit() {
        let node = Id::node(&"a".repeat(MAX_NODE_ID)).unwrap();
        let id = Id::object(&"b".repeat(MAX_OBJECT_ID)).unwrap();
        let name = DeviceName::new(&node, Kind::Crypt, &id, Some(Role::Meta));
        assert!(name.to_string().len() <= DM_NAME_MAX);
        assert!(name.dm_uuid().to_string().len() <= DM_NAME_MAX);
    }

    #[test]
    fn ids_are_refused_with_the_limit_named() {
        let err = Id::node(&"a".repeat(33)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "node id {:?} is 33 bytes; it must be 1 to 32 bytes of [a-z0-9]",
                "a".repeat(33)
            )
        );
        for bad in ["", "N1", "n-1", "n 1", "n/1", "é"] {
            assert!(Id::object(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn foreign_names_are_not_taken_for_ours() {
        for other in [
            "vg0-root",
            "pxd-n1-pool",
            "pxd-n1-disk-p0",
            "pxd-n1-pool-p0-log",
            "pxe-n1-pool-p0",
            "pxd-N1-pool-p0",
        ] {
            assert!(other.parse::<DeviceName>().is_err(), "{other} parsed");
        }
    }
}
