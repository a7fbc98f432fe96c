//! VM tier: crash safety. For every step of create, snapshot, resize and delete, a reconcile
//! process is aborted right before that step (as a crash there would), then a fresh pass runs
//! as a restarted daemon would. Each time the kernel must converge to exactly the devices the
//! state asks for, data must survive, no thin id may leak, and thin_check must pass at the end.

use pxd::crypt::{ClusterKey, VolumeKey};
use pxd::kernel::block;
use pxd::kernel::dm::{node_path, DeviceMapper, KernelDm};
use pxd::pool;
use pxd::reconcile::desired::{NodeState, Phase, PoolState, SnapshotState, VolumeState};
use pxd::reconcile::{observe::observe, steps};
use pxd::volume::spec::Fs;
use pxd_tests::{label_member, pattern, read_direct, run, sha256, vm_disks, write_direct};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A hex node id, as the daemon's are: drive labels carry it.
const NODE: &str = "c0a5";
const STATE: &str = "/tmp/pxd-crash-state.json";
const KEY: &str = "/tmp/pxd-crash-cluster.key";
const MIB: u64 = 1 << 20;

fn save(state: &NodeState) {
    std::fs::write(STATE, serde_json::to_vec_pretty(state).unwrap()).unwrap();
}

fn load() -> NodeState {
    serde_json::from_slice(&std::fs::read(STATE).unwrap()).unwrap()
}

/// Runs one pass in a child process; `fail_at` aborts it before that step. True if it
/// finished, false if it was aborted by the fault hook.
fn pass(fail_at: Option<usize>) -> bool {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pxd-test-reconcile"));
    cmd.args([STATE, KEY]);
    if let Some(n) = fail_at {
        cmd.env("PXD_FAIL_AT_STEP", n.to_string());
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return true;
    }
    assert!(
        fail_at.is_some() && stderr.contains("fault injection: aborting before step"),
        "reconcile failed ({}): {stderr}",
        out.status
    );
    false
}

/// A pass that must finish, then a check that nothing is left to do.
fn converge(dm: &KernelDm) -> NodeState {
    assert!(pass(None));
    let state = load();
    let observed = observe(dm, &state).unwrap();
    assert!(
        observed.suspended.is_empty(),
        "left suspended: {:?}",
        observed.suspended
    );
    let left = steps::plan(&state, &observed).unwrap();
    assert!(
        left.iter().all(steps::Step::is_check),
        "not converged: {left:?}"
    );
    state
}

fn devices(dm: &KernelDm) -> Vec<String> {
    let mut v: Vec<String> = dm
        .list()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with(&format!("pxd-{NODE}-")))
        .collect();
    v.sort();
    v
}

const POOL_DEVICES: [&str; 3] = [
    "pxd-c0a5-pool-p0",
    "pxd-c0a5-pool-p0-data",
    "pxd-c0a5-pool-p0-meta",
];

fn expect_devices(dm: &KernelDm, volume_live: bool) {
    let mut want: Vec<String> = POOL_DEVICES.iter().map(|s| s.to_string()).collect();
    if volume_live {
        want.extend([
            "pxd-c0a5-crypt-v1".to_string(),
            "pxd-c0a5-thin-v1".to_string(),
        ]);
    }
    want.sort();
    assert_eq!(devices(dm), want);
}

fn volume(key: &ClusterKey) -> VolumeState {
    VolumeState {
        id: "v1".into(),
        pool: "p0".into(),
        thin_id: 1,
        size_bytes: 64 * MIB,
        fs: Fs::Ext4,
        formatted: false,
        key: Some(key.wrap(&VolumeKey::generate().unwrap(), "v1").unwrap()),
        snapshots: vec![],
        phase: Phase::Live,
        ..Default::default()
    }
}

/// Snapshot s1 (thin id 2) of v1, not taken yet.
fn snapshot_s1() -> SnapshotState {
    SnapshotState {
        id: "s1".into(),
        thin_id: 2,
        taken: false,
        phase: Phase::Live,
    }
}

fn crypt_dev() -> PathBuf {
    PathBuf::from("/dev/mapper/pxd-c0a5-crypt-v1")
}

/// Back to the pool alone, checking that every thin id was freed.
fn reset(dm: &KernelDm, base: &NodeState) {
    let mut s = load();
    for v in &mut s.volumes {
        v.phase = Phase::Deleting;
    }
    save(&s);
    let s = converge(dm);
    assert_eq!(&s, base);
    expect_devices(dm, false);
    let p = pool::ensure_pool(dm, &pool_spec_of(base), pool::Metadata::MayBeNew).unwrap();
    let used = pool::usage(dm, &p).unwrap();
    assert_eq!(used.data_used_chunks, 0, "a thin id leaked: {used}");
}

fn pool_spec_of(state: &NodeState) -> pxd::plan::pool::PoolSpec {
    let observed = observe(&KernelDm::open().unwrap(), state).unwrap();
    match &steps::plan(state, &observed).unwrap()[0] {
        steps::Step::EnsurePool(spec) | steps::Step::CreatePool(spec) => spec.clone(),
        other => panic!("first step is not the pool: {other:?}"),
    }
}

/// Runs `op` (a change of the desired state) crashing before step 1, 2, ... until a pass
/// runs through; after each crash a fresh pass must converge and `check` must hold.
fn every_step(
    dm: &KernelDm,
    base: &NodeState,
    name: &str,
    setup: &dyn Fn(),
    op: &dyn Fn(&mut NodeState),
    check: &dyn Fn(&KernelDm, &NodeState),
) {
    let mut crashes = 0;
    for n in 1.. {
        setup();
        let mut s = load();
        op(&mut s);
        save(&s);
        let finished = pass(Some(n));
        let converged = converge(dm);
        check(dm, &converged);
        reset(dm, base);
        if finished {
            break;
        }
        crashes += 1;
    }
    println!("{name}: converged after a crash before each of its {crashes} steps");
    assert!(crashes >= 2, "{name} had only {crashes} steps to crash in");
}

#[test]
fn every_step_of_create_snapshot_resize_and_delete_survives_a_crash() {
    let disk = vm_disks(1)[0].clone();
    let dm = KernelDm::open().unwrap();
    let _ = std::fs::remove_file(KEY);
    let key = ClusterKey::load_or_create(Path::new(KEY)).unwrap();
    let mut base = NodeState {
        node: NODE.into(),
        cluster: "c1".into(),
        pools: vec![PoolState {
            id: "p0".into(),
            members: vec![],
            drives: vec![],
            activated: false,
            chunk_sectors: 512,
            ..Default::default()
        }],
        volumes: vec![],
        mount_root: None,
        ..Default::default()
    };
    label_member(&mut base, 0, &disk);
    save(&base);
    // The first pass activates the pool, and records so: from here on that is the base.
    base = converge(&dm);
    assert!(base.pools[0].activated, "the first activation is recorded");
    expect_devices(&dm, false);

    let marker = pattern(7, MIB as usize);
    let create_volume = || {
        let mut s = load();
        s.volumes.push(volume(&key));
        save(&s);
        converge(&dm);
        write_direct(&crypt_dev(), 32 * MIB, &marker);
    };
    let nothing = || {};

    every_step(
        &dm,
        &base,
        "create",
        &nothing,
        &|s| s.volumes.push(volume(&key)),
        &|dm, s| {
            expect_devices(dm, true);
            assert!(s.volumes[0].formatted);
            let sig = pxd::kernel::blkid::signature(&crypt_dev()).unwrap();
            assert_eq!(sig.as_deref(), Some("ext4"));
        },
    );
    every_step(
        &dm,
        &base,
        "snapshot",
        &create_volume,
        &|s| s.volumes[0].snapshots.push(snapshot_s1()),
        &|dm, s| {
            expect_devices(dm, true);
            assert!(s.volumes[0].snapshots[0].taken);
            assert_eq!(
                sha256(&read_direct(&crypt_dev(), 32 * MIB, MIB as usize)),
                sha256(&marker)
            );
        },
    );
    every_step(
        &dm,
        &base,
        "resize",
        &create_volume,
        &|s| s.volumes[0].size_bytes = 128 * MIB,
        &|dm, _| {
            expect_devices(dm, true);
            assert_eq!(block::size_bytes(&crypt_dev()).unwrap(), 128 * MIB);
            let thin = node_path(&devicemapper::DmNameBuf::new("pxd-c0a5-thin-v1".into()).unwrap());
            assert_eq!(block::size_bytes(&thin).unwrap(), 128 * MIB);
            assert_eq!(
                sha256(&read_direct(&crypt_dev(), 32 * MIB, MIB as usize)),
                sha256(&marker)
            );
        },
    );
    every_step(
        &dm,
        &base,
        "delete",
        &|| {
            create_volume();
            let mut s = load();
            s.volumes[0].snapshots.push(snapshot_s1());
            save(&s);
            converge(&dm);
        },
        &|s| s.volumes[0].phase = Phase::Deleting,
        &|dm, s| {
            expect_devices(dm, false);
            assert!(s.volumes.is_empty());
        },
    );

    // Take the pool down and check its metadata.
    save(&NodeState {
        pools: vec![],
        ..base.clone()
    });
    converge(&dm);
    assert!(
        devices(&dm).is_empty(),
        "a pool nobody asks for is deactivated: {:?}",
        devices(&dm)
    );
    let spec = pool_spec_of(&base);
    let p = pool::ensure_pool(&dm, &spec, pool::Metadata::MayBeNew).unwrap();
    pxd::kernel::stack::teardown(&dm, &[&p.plan.pool.name]).unwrap();
    run(
        "thin_check",
        &[node_path(&p.plan.meta.name.dm_name()).to_str().unwrap()],
    );
    pool::deactivate_pool(&dm, &p).unwrap();
    assert!(devices(&dm).is_empty());
    std::fs::remove_file(KEY).unwrap();
}

#[test]
fn adding_a_drive_grows_the_pool_online_under_a_live_volume() {
    let disks = vm_disks(3);
    let dm = KernelDm::open().unwrap();
    let mut state = NodeState {
        node: "960e".into(),
        cluster: "c1".into(),
        pools: vec![PoolState {
            id: "p0".into(),
            members: vec![],
            drives: vec![],
            activated: false,
            chunk_sectors: 512,
            ..Default::default()
        }],
        volumes: vec![VolumeState {
            key: None,
            fs: Fs::Raw,
            ..volume(&ClusterKey::load_or_create(Path::new("/tmp/pxd-grow.key")).unwrap())
        }],
        mount_root: None,
        ..Default::default()
    };
    label_member(&mut state, 0, &disks[1]);
    let mut keep = |_: &NodeState| Ok(());
    pxd::reconcile::reconcile(&dm, None, &mut state, &mut keep).unwrap();
    let vol = PathBuf::from("/dev/mapper/pxd-960e-thin-v1");
    let data = pattern(11, 4 * MIB as usize);
    write_direct(&vol, 0, &data);
    // The volume stays open, as a mounted one would, while the pool grows beneath it.
    let held = std::fs::File::open(&vol).unwrap();
    let spec = pool_spec_of(&state);
    let before = pool::usage(
        &dm,
        &pool::ensure_pool(&dm, &spec, pool::Metadata::MayBeNew).unwrap(),
    )
    .unwrap();

    label_member(&mut state, 0, &disks[2]);
    let ran = pxd::reconcile::reconcile(&dm, None, &mut state, &mut keep).unwrap();
    assert!(
        matches!(ran.as_slice(), [steps::Step::GrowPool(_)]),
        "expected one pool grow: {ran:?}"
    );
    let grown = pool::ensure_pool(&dm, &pool_spec_of(&state), pool::Metadata::MayBeNew).unwrap();
    let after = pool::usage(&dm, &grown).unwrap();
    let added = block::size_bytes(&disks[2]).unwrap() / (256 << 10);
    assert!(
        after.data_total_chunks >= before.data_total_chunks + added - 8,
        "pool grew from {before} to only {after}"
    );
    assert_eq!(after.data_used_chunks, before.data_used_chunks);
    assert_eq!(
        sha256(&read_direct(&vol, 0, 4 * MIB as usize)),
        sha256(&data)
    );
    let again = pxd::reconcile::reconcile(&dm, None, &mut state, &mut keep).unwrap();
    assert!(again.iter().all(steps::Step::is_check), "{again:?}");
    drop(held);

    state.volumes[0].phase = Phase::Deleting;
    pxd::reconcile::reconcile(&dm, None, &mut state, &mut keep).unwrap();
    state.pools.clear();
    pxd::reconcile::reconcile(&dm, None, &mut state, &mut keep).unwrap();
    let left: Vec<String> = dm
        .list()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with("pxd-960e-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let _ = std::fs::remove_file("/tmp/pxd-grow.key");
}
