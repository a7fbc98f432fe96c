//! The pxd label every pooled drive carries in its reserved head (DESIGN §6): which cluster,
//! node and pool the drive belongs to, and where in the pool. Pools are assembled from what
//! these labels say, never from `/dev` paths, which change when disks are renumbered.
//!
//! The label is one 512-byte block, written twice (at 4 KiB and at 512 KiB, both inside the
//! 1 MiB head that no segment maps), so one torn or overwritten copy does not lose the drive.
//! Layout, little-endian:
//!
//! | bytes    | field                                   |
//! |----------|-----------------------------------------|
//! | 0..8     | magic `PXDLABEL`                        |
//! | 8..12    | format version                          |
//! | 12..16   | member index in the pool                |
//! | 16..48   | cluster id (ASCII, zero padded)         |
//! | 48..56   | node id                                 |
//! | 56..88   | pool id (ASCII, zero padded)            |
//! | 88..104  | drive uuid                              |
//! | 104..112 | pool generation when written            |
//! | 480..512 | SHA-256 of bytes 0..480                 |
//!
//! Pure: encoding, decoding and judging a drive's label; the reads and writes are in
//! `kernel::label`.

use crate::store::types::NodeId;
use sha2::{Digest, Sha256};
use std::fmt;

pub const MAGIC: &[u8; 8] = b"PXDLABEL";
pub const VERSION: u32 = 1;
/// One label block.
pub const LEN: usize = 512;
/// Byte offsets of the two copies, both inside `plan::pool::LABEL_SECTORS`.
pub const COPIES: [u64; 2] = [4096, 512 * 1024];
/// The longest cluster or pool id a label holds.
pub const MAX_ID: usize = 32;
const SUM_AT: usize = LEN - 32;

/// A drive's identity: random when the drive joins a pool, kept for its life there.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DriveUuid(pub [u8; 16]);

impl DriveUuid {
    pub fn random() -> DriveUuid {
        DriveUuid(rand::random())
    }
}

impl fmt::Display for DriveUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DriveUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for DriveUuid {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        let bad = || format!("drive uuid {s:?} is not 32 hex digits");
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(DriveUuid(out))
    }
}

/// What a label says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub cluster: String,
    pub node: NodeId,
    pub pool: String,
    pub drive: DriveUuid,
    pub member: u32,
    pub generation: u64,
}

/// A label as the store describes it, before it is written (ids as the store spells them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabelSpec {
    pub cluster: String,
    pub node: NodeId,
    pub pool: String,
    pub drive: String,
    pub member: u32,
    pub generation: u64,
}

impl LabelSpec {
    /// The label to write; an ill-formed drive uuid is refused.
    pub fn label(&self) -> Result<Label, String> {
        Ok(Label {
            cluster: self.cluster.clone(),
            node: self.node,
            pool: self.pool.clone(),
            drive: self.drive.parse()?,
            member: self.member,
            generation: self.generation,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{field} {value:?} is longer than the label's {MAX_ID} bytes")]
    TooLong { field: &'static str, value: String },
}

impl Label {
    /// The label block. Ids longer than a label holds are refused, never cut.
    pub fn encode(&self) -> Result<[u8; LEN], LabelError> {
        let mut b = [0u8; LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.member.to_le_bytes());
        put_id(&mut b[16..48], "cluster", &self.cluster)?;
        b[48..56].copy_from_slice(&self.node.0.to_le_bytes());
        put_id(&mut b[56..88], "pool", &self.pool)?;
        b[88..104].copy_from_slice(&self.drive.0);
        b[104..112].copy_from_slice(&self.generation.to_le_bytes());
        let sum = Sha256::digest(&b[..SUM_AT]);
        b[SUM_AT..].copy_from_slice(&sum);
        Ok(b)
    }
}

fn put_id(to: &mut [u8], field: &'static str, id: &str) -> Result<(), LabelError> {
    if id.len() > to.len() {
        return Err(LabelError::TooLong {
            field,
            value: id.to_owned(),
        });
    }
    to[..id.len()].copy_from_slice(id.as_bytes());
    Ok(())
}

fn get_id(from: &[u8]) -> Option<String> {
    let end = from.iter().position(|b| *b == 0).unwrap_or(from.len());
    let s = std::str::from_utf8(&from[..end]).ok()?;
    (from[end..].iter().all(|b| *b == 0)).then(|| s.to_owned())
}

/// One copy of the label, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// No pxd magic: never labelled (or wiped).
    Absent,
    Valid(Label),
    /// The magic is there but the rest cannot be trusted.
    Bad(String),
}

/// Decodes one copy.
pub fn decode(b: &[u8]) -> Slot {
    if b.len() < LEN || &b[0..8] != MAGIC {
        return Slot::Absent;
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let version = u32_at(8);
    if version != VERSION {
        return Slot::Bad(format!(
            "label format version {version}, this pxd reads {VERSION}"
        ));
    }
    if Sha256::digest(&b[..SUM_AT]).as_slice() != &b[SUM_AT..LEN] {
        return Slot::Bad("label checksum mismatch".into());
    }
    let (Some(cluster), Some(pool)) = (get_id(&b[16..48]), get_id(&b[56..88])) else {
        return Slot::Bad("label ids are not text".into());
    };
    let mut drive = [0u8; 16];
    drive.copy_from_slice(&b[88..104]);
    Slot::Valid(Label {
        cluster,
        node: NodeId(u64_at(48)),
        pool,
        drive: DriveUuid(drive),
        member: u32_at(12),
        generation: u64_at(104),
    })
}

/// What a drive's head says, from both copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No copy has the magic.
    Unlabelled,
    /// At least one copy is valid; if both are and differ, the newer generation.
    Labelled(Label),
    /// The magic is there, but no copy is valid: never used without `--force`.
    Damaged(String),
}

/// Judges a drive by its two copies.
pub fn judge(copies: &[Slot]) -> Found {
    let best = copies
        .iter()
        .filter_map(|c| match c {
            Slot::Valid(l) => Some(l),
            _ => None,
        })
        .max_by_key(|l| l.generation);
    if let Some(l) = best {
        return Found::Labelled(l.clone());
    }
    match copies.iter().find_map(|c| match c {
        Slot::Bad(why) => Some(why),
        _ => None,
    }) {
        Some(why) => Found::Damaged(why.clone()),
        None => Found::Unlabelled,
    }
}

/// Where a labelled drive stands for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Ours: this cluster and node, and a pool member the store knows.
    Member,
    /// Ours, but no pool of the store lists it (an add that stopped before it was recorded):
    /// pxd may take it again without `--force`.
    Unclaimed,
    /// Another cluster's or node's: never used without `--force`.
    Foreign(String),
}

/// Judges a valid label against this node, given whether the store lists `(pool, member,
/// drive)`.
pub fn standing(label: &Label, cluster: &str, node: NodeId, recorded: bool) -> Standing {
    if label.cluster != cluster {
        return Standing::Foreign(format!("labelled by cluster {}", label.cluster));
    }
    if label.node != node {
        return Standing::Foreign(format!("labelled by node {}", label.node));
    }
    if recorded {
        Standing::Member
    } else {
        Standing::Unclaimed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> Label {
        Label {
            cluster: "0123456789abcdef0123456789abcdef".into(),
            node: NodeId(0xfeed),
            pool: "00000000deadbeef".into(),
            drive: DriveUuid([7; 16]),
            member: 2,
            generation: 5,
        }
    }

    #[test]
    fn a_label_round_trips() {
        let b = label().encode().unwrap();
        assert_eq!(&b[..8], MAGIC);
        assert_eq!(decode(&b), Slot::Valid(label()));
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let good = label().encode().unwrap();
        for i in 8..LEN {
            let mut b = good;
            b[i] ^= 0x40;
            assert!(matches!(decode(&b), Slot::Bad(_)), "byte {i} flipped");
        }
        let mut b = good;
        b[0] ^= 1;
        assert_eq!(decode(&b), Slot::Absent, "no magic, no label");
        assert_eq!(decode(&[0u8; LEN]), Slot::Absent);
        assert_eq!(decode(&good[..100]), Slot::Absent);
    }

    #[test]
    fn ids_too_long_are_refused_not_cut() {
        let mut l = label();
        l.pool = "p".repeat(33);
        assert_eq!(
            l.encode().unwrap_err().to_string(),
            format!(
                "pool {:?} is longer than the label's 32 bytes",
                "p".repeat(33)
            )
        );
    }

    #[test]
    fn one_good_copy_is_enough_and_the_newer_wins() {
        let l = label();
        let mut newer = l.clone();
        newer.generation = 9;
        let bad = Slot::Bad("label checksum mismatch".into());
        assert_eq!(
            judge(&[bad.clone(), Slot::Valid(l.clone())]),
            Found::Labelled(l.clone())
        );
        assert_eq!(
            judge(&[Slot::Valid(l), Slot::Valid(newer.clone())]),
            Found::Labelled(newer)
        );
        assert_eq!(
            judge(&[bad, Slot::Absent]),
            Found::Damaged("label checksum mismatch".into())
        );
        assert_eq!(judge(&[Slot::Absent, Slot::Absent]), Found::Unlabelled);
    }

    #[test]
    fn another_cluster_or_node_is_foreign() {
        let l = label();
        let c = l.cluster.clone();
        assert_eq!(standing(&l, &c, NodeId(0xfeed), true), Standing::Member);
        assert_eq!(standing(&l, &c, NodeId(0xfeed), false), Standing::Unclaimed);
        assert_eq!(
            standing(&l, &c, NodeId(1), true),
            Standing::Foreign("labelled by node 000000000000feed".into())
        );
        assert!(matches!(
            standing(&l, "other", NodeId(0xfeed), true),
            Standing::Foreign(w) if w.contains(&c)
        ));
    }

    #[test]
    fn uuids_print_and_parse() {
        let u = DriveUuid([0xab; 16]);
        let s = u.to_string();
        assert_eq!(s, "abababab-abab-abab-abab-abababababab");
        assert_eq!(s.parse::<DriveUuid>(), Ok(u));
        assert!("xyz".parse::<DriveUuid>().is_err());
    }
}
