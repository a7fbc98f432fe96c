//! Drives a node may pool: found in sysfs, probed for signatures with libblkid, and checked
//! for use (mounted, held by another device, or opened exclusively by someone else).

pub use crate::kernel::block::whole_disks;
use crate::kernel::{blkid, block};
use crate::pool::label::{self, Found, Standing};
use crate::store::types::{Class, NodeId};
use devicemapper::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What pxd knows of one drive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DriveInfo {
    #[schema(value_type = String)]
    pub path: PathBuf,
    /// A stable id: the WWID or serial the device reports, else its path.
    pub id: String,
    #[serde(skip)]
    pub dev: Device,
    pub size_bytes: u64,
    /// What libblkid found on it (a filesystem, raid member or partition table), if anything.
    pub signature: Option<String>,
    /// Why it is in use, if it is.
    pub in_use: Option<String>,
    pub rotational: bool,
    /// The WWID or serial the device reports, if any.
    pub hardware_id: Option<String>,
    /// What its pxd label says.
    #[serde(skip)]
    pub label: Found,
}

/// Where a drive's pxd label puts it, as `drive list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum LabelStanding {
    /// A member of a pool of this node, as the store records.
    Member(String),
    /// Labelled by this node, but no pool records it (an add that stopped half-way).
    Unclaimed(String),
    /// Another cluster's or node's drive: taken only with `--force`, then relabelled.
    Foreign(String),
    /// The label is there but fails its checksum or format: taken only with `--force`.
    Damaged(String),
}

impl LabelStanding {
    pub fn name(&self) -> &'static str {
        match self {
            LabelStanding::Member(_) => "member",
            LabelStanding::Unclaimed(_) => "unclaimed",
            LabelStanding::Foreign(_) => "foreign",
            LabelStanding::Damaged(_) => "damaged",
        }
    }
}

/// Judges a drive's label against this cluster and node, and the store's pool members
/// (drive uuid -> (pool, class)); none if it has no label.
pub fn label_standing(
    info: &DriveInfo,
    cluster: &str,
    node: NodeId,
    members: &BTreeMap<String, (String, Class)>,
) -> Option<LabelStanding> {
    match &info.label {
        Found::Unlabelled => None,
        Found::Damaged(why) => Some(LabelStanding::Damaged(why.clone())),
        Found::Labelled(l) => {
            let recorded = members
                .get(&l.drive.to_string())
                .filter(|(pool, _)| *pool == l.pool);
            Some(
                match label::standing(l, cluster, node, recorded.is_some()) {
                    Standing::Member => LabelStanding::Member(l.pool.clone()),
                    Standing::Unclaimed => LabelStanding::Unclaimed(format!(
                        "labelled for pool {} by this node, which never recorded it",
                        l.pool
                    )),
                    Standing::Foreign(why) => LabelStanding::Foreign(why),
                },
            )
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("{path}: {detail}")]
    Inspect { path: PathBuf, detail: String },
    #[error("drive {path} is in use ({reason}); pxd never takes a drive in use")]
    InUse { path: PathBuf, reason: String },
    #[error("drive {path} carries a {signature} signature; add it with --force to overwrite it")]
    HasSignature { path: PathBuf, signature: String },
    #[error("path: {path} is not a whole disk of this node (see pxd drive list)")]
    NotADisk { path: PathBuf },
    #[error("drive {path} is a member of pool {pool} already")]
    Member { path: PathBuf, pool: String },
    #[error(
        "drive {path} carries a {state} pxd label ({reason}); add it with --force to relabel it"
    )]
    Label {
        path: PathBuf,
        state: &'static str,
        reason: String,
    },
}

/// Inspects one drive.
pub fn inspect(path: &Path) -> Result<DriveInfo, DriveError> {
    let err = |detail: String| DriveError::Inspect {
        path: path.to_owned(),
        detail,
    };
    let dev = block::device_of(path).map_err(|e| err(e.to_string()))?;
    let size_bytes = block::size_bytes(path).map_err(|e| err(e.to_string()))?;
    let sys = PathBuf::from(format!("/sys/dev/block/{dev}"));
    let read = |f: &str| {
        std::fs::read_to_string(sys.join(f))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let hardware_id = read("wwid")
        .or_else(|| read("device/wwid"))
        .or_else(|| read("serial"))
        .or_else(|| read("device/serial"));
    let label = crate::kernel::label::read(path).unwrap_or(Found::Unlabelled);
    Ok(DriveInfo {
        path: path.to_owned(),
        id: hardware_id
            .clone()
            .unwrap_or_else(|| path.display().to_string()),
        dev,
        size_bytes,
        signature: blkid::signature(path).map_err(err)?,
        in_use: match block::pxd_beneath(dev) {
            Some(own) => Some(format!(
                "it is pxd's own device {own}, or stacked on it; pxd never pools those"
            )),
            None => block::in_use(path),
        },
        rotational: read("queue/rotational").as_deref() == Some("1"),
        hardware_id,
        label,
    })
}

/// A drive as the API and CLI show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DriveView {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub id: String,
    pub size_bytes: u64,
    pub signature: Option<String>,
    pub in_use: Option<String>,
    pub rotational: bool,
    /// Blank and unused: `pxd drive add` takes it without `--force`.
    pub candidate: bool,
    /// Why it could not be inspected, if it could not.
    pub error: Option<String>,
    /// The pool that holds it and the class it was measured into, when pxd has it.
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub class: Option<Class>,
    /// The uuid in its pxd label, if it has a valid one.
    #[serde(default)]
    pub label: Option<String>,
    /// Where that label puts it.
    #[serde(default)]
    pub standing: Option<LabelStanding>,
}

impl From<DriveInfo> for DriveView {
    fn from(d: DriveInfo) -> Self {
        DriveView {
            label: label_uuid(&d.label),
            standing: None,
            candidate: d.signature.is_none() && d.in_use.is_none() && d.label == Found::Unlabelled,
            path: d.path,
            id: d.id,
            size_bytes: d.size_bytes,
            signature: d.signature,
            in_use: d.in_use,
            rotational: d.rotational,
            error: None,
            pool: None,
            class: None,
        }
    }
}

/// A drive that could not be inspected, listed with the reason rather than left out.
fn unreadable(path: PathBuf, e: DriveError) -> DriveView {
    DriveView {
        path,
        id: String::new(),
        size_bytes: 0,
        signature: None,
        in_use: None,
        rotational: false,
        candidate: false,
        error: Some(e.to_string()),
        pool: None,
        class: None,
        label: None,
        standing: None,
    }
}

/// Whose this node is, for judging labels: the cluster id, the node id and the store's pool
/// members (drive uuid -> (pool, class)).
#[derive(Debug, Clone, Default)]
pub struct Owner {
    pub cluster: String,
    pub node: NodeId,
    pub members: BTreeMap<String, (String, Class)>,
}

fn view_of(path: PathBuf, owner: &Owner) -> DriveView {
    match inspect(&path) {
        Ok(info) => {
            let standing = label_standing(&info, &owner.cluster, owner.node, &owner.members);
            let mut v = DriveView::from(info);
            if let Some(LabelStanding::Member(pool)) = &standing {
                v.pool = Some(pool.clone());
                v.class = owner.members.values().find(|m| &m.0 == pool).map(|m| m.1);
            }
            if let Some(LabelStanding::Unclaimed(_)) = &standing {
                v.candidate = v.signature.is_none() && v.in_use.is_none();
            }
            v.standing = standing;
            v
        }
        Err(e) => unreadable(path, e),
    }
}

/// Every whole disk of this host, and every other block device with a pxd label (a dm or
/// loop device), inspected and judged against `owner`.
/// A disk mapped whole by a device above it (dm-delay, multipath) shows that device's label
/// too; only the device on top is the drive, so the disk is listed by its use alone.
pub fn local_drives(owner: &Owner) -> std::io::Result<Vec<DriveView>> {
    let mut paths = whole_disks()?;
    let tops = crate::kernel::label::scan(&[]);
    for s in &tops {
        if s.found != Found::Unlabelled && !paths.contains(&s.path) {
            paths.push(s.path.clone());
        }
    }
    let beneath = |v: &DriveView| {
        v.label.is_some()
            && tops
                .iter()
                .any(|t| t.path != v.path && label_uuid(&t.found) == v.label)
            && !tops.iter().any(|t| t.path == v.path)
    };
    Ok(paths
        .into_iter()
        .map(|p| {
            let mut v = view_of(p, owner);
            if beneath(&v) {
                v.label = None;
                v.standing = None;
                v.pool = None;
                v.class = None;
            }
            v
        })
        .collect())
}

fn label_uuid(found: &Found) -> Option<String> {
    match found {
        Found::Labelled(l) => Some(l.drive.to_string()),
        _ => None,
    }
}

/// A benchmark of one drive and the class it earns.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DriveBenchmark {
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub result: crate::pool::benchmark::BenchResult,
    pub class: Class,
}

/// Re-measures one of this node's whole disks, read-only (it may hold data), and classes it
/// with the default thresholds. A path that is not a whole disk of this node is refused.
pub fn benchmark_local(path: &Path) -> Result<DriveBenchmark, DriveError> {
    let disks = whole_disks().map_err(|e| DriveError::Inspect {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if !disks.iter().any(|d| d == path) {
        return Err(DriveError::NotADisk {
            path: path.to_owned(),
        });
    }
    let cfg = crate::pool::benchmark::BenchConfig::default();
    let result = crate::pool::benchmark::run(path, &cfg).map_err(|e| DriveError::Inspect {
        path: path.to_owned(),
        detail: format!("benchmark: {e}"),
    })?;
    let class = crate::pool::class::classify(&result, &crate::pool::class::Thresholds::default());
    Ok(DriveBenchmark {
        path: path.to_owned(),
        result,
        class,
    })
}

/// Refuses a drive pxd must not take: one in use or already a member of a pool always; one
/// with a signature, a foreign or a damaged label unless forced.
pub fn check_addable(
    info: &DriveInfo,
    standing: &Option<LabelStanding>,
    force: bool,
) -> Result<(), DriveError> {
    if let Some(LabelStanding::Member(pool)) = standing {
        return Err(DriveError::Member {
            path: info.path.clone(),
            pool: pool.clone(),
        });
    }
    if let Some(reason) = &info.in_use {
        return Err(DriveError::InUse {
            path: info.path.clone(),
            reason: reason.clone(),
        });
    }
    match standing {
        Some(s @ (LabelStanding::Foreign(why) | LabelStanding::Damaged(why))) if !force => {
            return Err(DriveError::Label {
                path: info.path.clone(),
                state: s.name(),
                reason: why.clone(),
            })
        }
        _ => {}
    }
    match &info.signature {
        Some(sig) if !force => Err(DriveError::HasSignature {
            path: info.path.clone(),
            signature: sig.clone(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(signature: Option<&str>, in_use: Option<&str>) -> DriveInfo {
        DriveInfo {
            path: "/dev/vdx".into(),
            id: "x".into(),
            dev: Device {
                major: 254,
                minor: 0,
            },
            size_bytes: 1 << 30,
            signature: signature.map(Into::into),
            in_use: in_use.map(Into::into),
            rotational: false,
            hardware_id: None,
            label: Found::Unlabelled,
        }
    }

    #[test]
    fn signatures_need_force_and_drives_in_use_are_never_taken() {
        assert!(check_addable(&info(None, None), &None, false).is_ok());
        let e = check_addable(&info(Some("ext4"), None), &None, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "drive /dev/vdx carries a ext4 signature; add it with --force to overwrite it"
        );
        assert!(check_addable(&info(Some("ext4"), None), &None, true).is_ok());
        let e = check_addable(&info(None, Some("held by dm-0")), &None, true).unwrap_err();
        assert!(e.to_string().contains("in use (held by dm-0)"), "{e}");
    }

    #[test]
    fn labels_decide_what_force_may_take() {
        let l = label::Label {
            cluster: "c1".into(),
            node: NodeId(1),
            pool: "p1".into(),
            drive: label::DriveUuid([1; 16]),
            member: 0,
            generation: 1,
        };
        let mut d = info(None, None);
        d.label = Found::Labelled(l.clone());
        let uuid = l.drive.to_string();
        let members = BTreeMap::from([(uuid.clone(), ("p1".to_string(), Class::High))]);
        let judge = |d: &DriveInfo, cluster: &str, node: u64, m: &BTreeMap<_, _>| {
            label_standing(d, cluster, NodeId(node), m)
        };

        let member = judge(&d, "c1", 1, &members);
        assert_eq!(member, Some(LabelStanding::Member("p1".into())));
        let e = check_addable(&d, &member, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "drive /dev/vdx is a member of pool p1 already"
        );

        let unclaimed = judge(&d, "c1", 1, &BTreeMap::new());
        assert!(matches!(unclaimed, Some(LabelStanding::Unclaimed(_))));
        assert!(check_addable(&d, &unclaimed, false).is_ok());

        let foreign = judge(&d, "c2", 1, &members);
        let e = check_addable(&d, &foreign, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "drive /dev/vdx carries a foreign pxd label (labelled by cluster c1); \
             add it with --force to relabel it"
        );
        assert!(check_addable(&d, &foreign, true).is_ok());

        d.label = Found::Damaged("label checksum mismatch".into());
        let damaged = judge(&d, "c1", 1, &members);
        assert!(check_addable(&d, &damaged, false)
            .unwrap_err()
            .to_string()
            .contains("damaged pxd label (label checksum mismatch)"));
        assert!(check_addable(&d, &damaged, true).is_ok());
    }
}
