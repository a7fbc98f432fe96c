//! Brings planned dm devices into the kernel in order, adopting a device that already exists
//! with the planned table (a retried or resumed step) and refusing one whose table differs.
//! If a step fails, the devices this call created are removed again, top first, so a failed
//! call leaves the kernel as it found it.

use crate::kernel::dm::{DeviceMapper, DmOpError, Removed};
use crate::plan::names::DeviceName;
use crate::plan::table::{parse_table, raw_table, same_layout, DevicePlan, Line, TableError};
use devicemapper::Device;
use std::collections::HashMap;

/// What a step did; the model is stratisd's `CreateAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    AlreadyExists,
}

/// One device brought up by [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub name: DeviceName,
    pub dev: Device,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Dm(#[from] DmOpError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(
        "{device} exists with another table; pxd will not take it over.\n  planned: {planned}\n  found:   {found}"
    )]
    TableMismatch {
        device: String,
        planned: String,
        found: String,
    },
    #[error("{device} exists but its read-only flag is {read_only}; pxd will not take it over")]
    ModeMismatch { device: String, read_only: bool },
    #[error("{device} is not active; it cannot be resized")]
    NotActive { device: String },
    #[error("{device} is {current} sectors; pxd only grows devices online (asked for {planned})")]
    WouldShrink {
        device: String,
        current: u64,
        planned: u64,
    },
}

/// The devices one [`apply`] call brought up, in order.
#[derive(Debug, Default)]
pub struct AppliedStack {
    pub devices: Vec<Applied>,
}

impl AppliedStack {
    /// The dev_t of a device of this stack.
    pub fn dev(&self, name: &DeviceName) -> Option<Device> {
        self.devices.iter().find(|a| &a.name == name).map(|a| a.dev)
    }

    /// True if nothing had to be created.
    pub fn all_adopted(&self) -> bool {
        self.devices
            .iter()
            .all(|a| a.outcome == Outcome::AlreadyExists)
    }

    /// Removes what this call created, newest first; adopted devices stay. Errors are
    /// returned after every removal was tried.
    pub fn rollback(&self, dm: &dyn DeviceMapper) -> Result<(), DmOpError> {
        let mut first_err = None;
        for a in self.devices.iter().rev() {
            if a.outcome == Outcome::Created {
                if let Err(e) = dm.remove(&a.name.dm_name()) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Applies `plans` in order (lower layers first).
pub fn apply(dm: &dyn DeviceMapper, plans: &[&DevicePlan]) -> Result<AppliedStack, StackError> {
    let mut done = AppliedStack::default();
    for plan in plans {
        match apply_one(dm, plan, &done) {
            Ok(applied) => done.devices.push(applied),
            Err(err) => {
                if let Err(rb) = done.rollback(dm) {
                    tracing::error!(error = %rb, "rollback after a failed step left a device behind");
                }
                return Err(err);
            }
        }
    }
    Ok(done)
}

fn apply_one(
    dm: &dyn DeviceMapper,
    plan: &DevicePlan,
    done: &AppliedStack,
) -> Result<Applied, StackError> {
    // Resolve references: devices of this call first, then whatever the kernel has.
    let mut known: HashMap<&DeviceName, Device> = HashMap::new();
    for dep in plan.depends_on() {
        if let Some(dev) = done.dev(dep) {
            known.insert(dep, dev);
        } else if let Some(info) = dm.info(&dep.dm_name())? {
            known.insert(dep, info.dev);
        }
    }
    let lines = plan.resolve(&|n| known.get(n).copied())?;
    let name = plan.name.dm_name();

    if let Some(info) = dm.info(&name)? {
        let found = parse_table(&dm.table(&name)?)?;
        if info.read_only != plan.read_only {
            return Err(StackError::ModeMismatch {
                device: plan.name.to_string(),
                read_only: info.read_only,
            });
        }
        // A crypt table made with other workqueue flags (an older default, another daemon
        // flag) maps the same data the same way: it is adopted as it is.
        if !same_layout(&found, &lines) {
            return Err(StackError::TableMismatch {
                device: plan.name.to_string(),
                planned: render(&lines),
                found: render(&found),
            });
        }
        return Ok(Applied {
            name: plan.name.clone(),
            dev: info.dev,
            outcome: Outcome::AlreadyExists,
        });
    }
    let uuid = plan.name.dm_uuid();
    let dev = if plan.read_only {
        dm.create_read_only(&name, &uuid, &raw_table(&lines))?
    } else {
        dm.create(&name, &uuid, &raw_table(&lines))?
    };
    Ok(Applied {
        name: plan.name.clone(),
        dev,
        outcome: Outcome::Created,
    })
}

fn render(lines: &[Line]) -> String {
    lines
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A live device's planned table, resolved against what the kernel has; refused if the
/// device is not up.
fn planned_live(dm: &dyn DeviceMapper, plan: &DevicePlan) -> Result<Vec<Line>, StackError> {
    if dm.info(&plan.name.dm_name())?.is_none() {
        return Err(StackError::NotActive {
            device: plan.name.to_string(),
        });
    }
    let mut known: HashMap<&DeviceName, Device> = HashMap::new();
    for dep in plan.depends_on() {
        if let Some(info) = dm.info(&dep.dm_name())? {
            known.insert(dep, info.dev);
        }
    }
    Ok(plan.resolve(&|n| known.get(n).copied())?)
}

/// A live device's planned table, resolved against what the kernel has, and the table it
/// has now.
fn live_tables(
    dm: &dyn DeviceMapper,
    plan: &DevicePlan,
) -> Result<(Vec<Line>, Vec<Line>), StackError> {
    let lines = planned_live(dm, plan)?;
    let found = parse_table(&dm.table(&plan.name.dm_name())?)?;
    Ok((lines, found))
}

/// Grows live devices to their planned tables, lowest first, so every layer is at least as
/// large as the one above it at every moment. A device already at its plan is left alone,
/// so a grow interrupted half-way is finished by running it again. Returns, per device,
/// whether it changed.
pub fn grow(dm: &dyn DeviceMapper, bottom_up: &[&DevicePlan]) -> Result<Vec<bool>, StackError> {
    let mut changed = Vec::new();
    for plan in bottom_up {
        let name = plan.name.dm_name();
        let (lines, found) = live_tables(dm, plan)?;
        // Other workqueue flags alone are no reason to reload: the size is what grows.
        if same_layout(&found, &lines) {
            changed.push(false);
            continue;
        }
        let current: u64 = found.iter().map(|l| *l.length).sum();
        if current > *plan.length() {
            return Err(StackError::WouldShrink {
                device: plan.name.to_string(),
                current,
                planned: *plan.length(),
            });
        }
        dm.load(&name, &raw_table(&lines))?;
        dm.resume(&name)?;
        changed.push(true);
    }
    Ok(changed)
}

/// Loads a live crypt device's planned table when it differs from the live one only in its
/// workqueue flags (same data, same layout); any other difference is refused. The key must be
/// in the keyring (see `volume::reload_crypt_flags`). Returns whether it loaded.
pub fn reload_crypt_flags(dm: &dyn DeviceMapper, plan: &DevicePlan) -> Result<bool, StackError> {
    let name = plan.name.dm_name();
    let (lines, found) = live_tables(dm, plan)?;
    if found == lines {
        return Ok(false);
    }
    if !same_layout(&found, &lines) {
        return Err(StackError::TableMismatch {
            device: plan.name.to_string(),
            planned: render(&lines),
            found: render(&found),
        });
    }
    dm.load(&name, &raw_table(&lines))?;
    if let Err(e) = dm.resume(&name) {
        // The live table stays in force: drop the loaded one.
        let _ = dm.clear(&name);
        return Err(e.into());
    }
    Ok(true)
}

/// Loads a live device's planned table where it differs (or `always`), same length only: a
/// remote leg's split devices pointed at the namespace a reconnect brought. A namespace may
/// come back with the dev_t of the one it replaces, so after a reconnect the table is loaded
/// `always`, which opens the device anew. Returns whether it loaded.
pub fn reload(dm: &dyn DeviceMapper, plan: &DevicePlan, always: bool) -> Result<bool, StackError> {
    let name = plan.name.dm_name();
    let (lines, found) = live_tables(dm, plan)?;
    if found == lines && !always {
        return Ok(false);
    }
    let current: u64 = found.iter().map(|l| *l.length).sum();
    if current != *plan.length() {
        return Err(StackError::TableMismatch {
            device: plan.name.to_string(),
            planned: render(&lines),
            found: render(&found),
        });
    }
    dm.load(&name, &raw_table(&lines))?;
    dm.resume(&name)?;
    Ok(true)
}

/// Loads a live device's planned table over whatever it has now, whatever that is (the
/// `error` table that fenced it included), same length only: a fenced leg taken back.
pub fn replace(dm: &dyn DeviceMapper, plan: &DevicePlan) -> Result<(), StackError> {
    let name = plan.name.dm_name();
    let lines = planned_live(dm, plan)?;
    let current: u64 = dm.table(&name)?.iter().map(|l| l.1).sum();
    if current != *plan.length() {
        return Err(StackError::TableMismatch {
            device: plan.name.to_string(),
            planned: render(&lines),
            found: format!("{current} sectors"),
        });
    }
    dm.load(&name, &raw_table(&lines))?;
    dm.resume(&name)?;
    Ok(())
}

/// Why a live re-assembly was refused or rolled back.
#[derive(Debug, thiserror::Error)]
pub enum ReassembleError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Dm(#[from] DmOpError),
    #[error(
        "{raid}: {device} is metadata of the running raid; fresh metadata must be another device"
    )]
    MetadataInUse { raid: String, device: String },
    #[error("{raid}: the new table must say nosync (its legs are equal, and its metadata fresh)")]
    NotNosync { raid: String },
    #[error("{raid}: zeroing {device}: {source}")]
    Zero {
        raid: String,
        device: String,
        source: std::io::Error,
    },
    #[error("{raid}: {reason}")]
    InPause { raid: String, reason: String },
}

/// Re-assembles a live raid1 over another set of legs (one more, one fewer) without a resync
/// and without failing an I/O: suspended (I/O waits), `in_pause` runs (the last delta of a
/// new leg's copy), every metadata device of the new table is zeroed, the new table is
/// loaded with `nosync` and resumed. dm-raid takes a new leg only with fresh superblocks on
/// every leg, and the old raid writes its own superblocks when it stops, so `fresh_meta`
/// must be metadata the running table does not use (the legs' other metadata slot).
///
/// The caller vouches that the legs of the new table hold equal data (the running raid is
/// in sync, and a new leg was copied in `in_pause`): `nosync` tells the kernel so.
/// Before the new table is live any failure resumes the old one: I/O goes on as before.
/// Returns how long I/O waited.
pub fn reassemble(
    dm: &dyn DeviceMapper,
    raid: &DevicePlan,
    fresh_meta: &[&DeviceName],
    in_pause: &mut dyn FnMut() -> Result<(), String>,
) -> Result<std::time::Duration, ReassembleError> {
    let name = raid.name.dm_name();
    let raid_name = raid.name.to_string();
    let (lines, found) = live_tables(dm, raid)?;
    if lines == found {
        // It runs so already: a repeat after a crash between the load and its record.
        return Ok(std::time::Duration::ZERO);
    }
    let table = raw_table(&lines);
    if !table.iter().all(|l| l.3.split(' ').any(|w| w == "nosync")) {
        return Err(ReassembleError::NotNosync { raid: raid_name });
    }
    let running = dm.table(&name)?;
    for meta in fresh_meta {
        let Some(info) = dm.info(&meta.dm_name())? else {
            return Err(StackError::NotActive {
                device: meta.to_string(),
            }
            .into());
        };
        let dev = info.dev.to_string();
        if running
            .iter()
            .any(|l| l.3.split(' ').any(|w| w == dev.as_str()))
        {
            return Err(ReassembleError::MetadataInUse {
                raid: raid_name,
                device: meta.to_string(),
            });
        }
    }
    let started = std::time::Instant::now();
    dm.suspend(&name)?;
    let paused = (|| {
        in_pause().map_err(|reason| ReassembleError::InPause {
            raid: raid_name.clone(),
            reason,
        })?;
        for meta in fresh_meta {
            let path = crate::kernel::dm::node_path(&meta.dm_name());
            crate::kernel::block::zero_direct(&path, 0, crate::plan::replica::LEG_META_BYTES)
                .map_err(|source| ReassembleError::Zero {
                    raid: raid_name.clone(),
                    device: meta.to_string(),
                    source,
                })?;
        }
        dm.load(&name, &table)?;
        Ok(())
    })();
    if let Err(e) = paused {
        // The old table is still the live one; a table that did load is dropped first.
        let _ = dm.clear(&name);
        if let Err(resume) = dm.resume(&name) {
            tracing::error!(raid = %raid_name, error = %resume, "the raid stays suspended after a failed re-assembly");
        }
        return Err(e);
    }
    if let Err(e) = dm.resume(&name) {
        let _ = dm.clear(&name);
        if let Err(again) = dm.resume(&name) {
            tracing::error!(raid = %raid_name, error = %again, "the raid stays suspended after a failed re-assembly");
        }
        return Err(e.into());
    }
    Ok(started.elapsed())
}

/// Suspends and resumes a device with its table unchanged: a raid then tries to take back
/// the legs it had marked dead, resyncing only what their bitmaps mark dirty.
pub fn cycle(dm: &dyn DeviceMapper, name: &DeviceName) -> Result<(), DmOpError> {
    dm.suspend(&name.dm_name())?;
    dm.resume(&name.dm_name())
}

/// Fences a live device: its table becomes `error` over the same length, so every I/O to it
/// fails from now on, including I/O the device above it holds. An attach node that lost its
/// attachment (or its lease) does this to its local leg, so no write it still issues can
/// complete on that leg alone. Idempotent; a device that is gone is left so. Returns whether
/// the device was there.
pub fn fence(dm: &dyn DeviceMapper, name: &DeviceName) -> Result<bool, DmOpError> {
    let dmn = name.dm_name();
    let Some(_) = dm.info(&dmn)? else {
        return Ok(false);
    };
    let length: u64 = dm.table(&dmn)?.iter().map(|l| l.1).sum();
    dm.load(&dmn, &[(0, length, "error".to_owned(), String::new())])?;
    dm.resume(&dmn)?;
    Ok(true)
}

/// Removes devices top first; devices already gone count as removed.
pub fn teardown(
    dm: &dyn DeviceMapper,
    top_first: &[&DeviceName],
) -> Result<Vec<Removed>, DmOpError> {
    top_first.iter().map(|n| dm.remove(&n.dm_name())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::dm::fake::FakeDm;
    use crate::plan::names::Id;
    use crate::plan::pool::{plan_pool, Drive, PoolSpec, DEFAULT_CHUNK};
    use devicemapper::Sectors;

    fn pool_spec(chunk: Sectors) -> PoolSpec {
        PoolSpec {
            node: Id::node("n1").unwrap(),
            pool: Id::object("p0").unwrap(),
            drives: vec![Drive {
                dev: Device {
                    major: 254,
                    minor: 0,
                },
                size: Sectors(4 << 21),
            }],
            chunk,
            features: crate::plan::pool::ThinFeatures::DEFAULT,
        }
    }

    #[test]
    fn second_apply_adopts_every_device() {
        let dm = FakeDm::default();
        let plan = plan_pool(&pool_spec(DEFAULT_CHUNK)).unwrap();
        let first = apply(&dm, &plan.devices()).unwrap();
        assert!(first.devices.iter().all(|a| a.outcome == Outcome::Created));
        // The pool's table points at the meta and data devices just made.
        let pool_table = dm.table(&plan.pool.name.dm_name()).unwrap();
        assert!(
            pool_table[0].3.starts_with("253:0 253:1 512 "),
            "{pool_table:?}"
        );
        let second = apply(&dm, &plan.devices()).unwrap();
        assert!(second.all_adopted());
        assert_eq!(
            first.devices.iter().map(|a| a.dev).collect::<Vec<_>>(),
            second.devices.iter().map(|a| a.dev).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_device_with_another_table_is_refused_not_adopted() {
        let dm = FakeDm::default();
        apply(
            &dm,
            &plan_pool(&pool_spec(DEFAULT_CHUNK)).unwrap().devices(),
        )
        .unwrap();
        let other = plan_pool(&pool_spec(Sectors(1024))).unwrap();
        let before = dm.devices.borrow().clone();
        let err = apply(&dm, &other.devices()).unwrap_err();
        assert!(
            err.to_string()
                .contains("pxd-n1-pool-p0 exists with another table"),
            "{err}"
        );
        assert_eq!(
            *dm.devices.borrow(),
            before,
            "a refused apply changes nothing"
        );
    }

    #[test]
    fn a_fenced_device_fails_everything_until_its_table_is_put_back() {
        let dm = FakeDm::default();
        let plan = plan_pool(&pool_spec(DEFAULT_CHUNK)).unwrap();
        apply(&dm, &plan.devices()).unwrap();
        let data = &plan.data;
        let planned = dm.table(&data.name.dm_name()).unwrap();
        fence(&dm, &data.name).unwrap();
        let fenced = dm.table(&data.name.dm_name()).unwrap();
        assert_eq!(
            fenced,
            [(0, *data.length(), "error".to_owned(), String::new())],
            "the same length, every sector an error"
        );
        assert!(
            reload(&dm, data, true).is_err(),
            "a fenced table is no plan to compare"
        );
        replace(&dm, data).unwrap();
        assert_eq!(dm.table(&data.name.dm_name()).unwrap(), planned);
        fence(
            &dm,
            &DeviceName::new(
                &Id::node("n1").unwrap(),
                crate::plan::names::Kind::Thin,
                &Id::object("gone").unwrap(),
                None,
            ),
        )
        .unwrap();
    }

    #[test]
    fn a_failed_step_removes_what_the_call_created() {
        let dm = FakeDm {
            fail_create_of: Some("pxd-n1-pool-p0".into()),
            ..FakeDm::default()
        };
        let plan = plan_pool(&pool_spec(DEFAULT_CHUNK)).unwrap();
        let err = apply(&dm, &plan.devices()).unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(
            dm.devices.borrow().is_empty(),
            "meta and data were rolled back"
        );
    }

    #[test]
    fn grow_reloads_bigger_tables_once_and_never_shrinks() {
        use crate::plan::thin::{plan_grow, plan_thin};
        use devicemapper::ThinDevId;
        let dm = FakeDm::default();
        let pool = plan_pool(&pool_spec(DEFAULT_CHUNK)).unwrap();
        apply(&dm, &pool.devices()).unwrap();
        let [n, p, v, v2] = ["n1", "p0", "v1", "v2"].map(|s| Id::object(s).unwrap());
        let one = ThinDevId::new_u64(1).unwrap();
        let thin = plan_thin(&n, &p, &v, one, Sectors(2048)).unwrap();
        apply(&dm, &[&thin]).unwrap();
        let bigger = plan_grow(&thin, Sectors(4096)).unwrap();
        assert_eq!(grow(&dm, &[&bigger]).unwrap(), [true]);
        assert_eq!(dm.table(&thin.name.dm_name()).unwrap()[0].1, 4096);
        assert_eq!(
            grow(&dm, &[&bigger]).unwrap(),
            [false],
            "a repeat changes nothing"
        );
        let err = grow(&dm, &[&thin]).unwrap_err();
        assert!(matches!(
            err,
            StackError::WouldShrink {
                current: 4096,
                planned: 2048,
                ..
            }
        ));
        let absent = plan_thin(&n, &p, &v2, one, Sectors(8)).unwrap();
        assert!(matches!(
            grow(&dm, &[&absent]),
            Err(StackError::NotActive { .. })
        ));
    }

    #[test]
    fn rollback_keeps_adopted_devices() {
        let plan = plan_pool(&pool_spec(DEFAULT_CHUNK)).unwrap();
        let mut dm = FakeDm::default();
        apply(&dm, &[&plan.meta]).unwrap();
        dm.fail_create_of = Some("pxd-n1-pool-p0".into());
        apply(&dm, &plan.devices()).unwrap_err();
        let left: Vec<String> = dm.devices.borrow().keys().cloned().collect();
        assert_eq!(
            left,
            ["pxd-n1-pool-p0-meta"],
            "the adopted meta device stays"
        );
    }
}
