//! VM tier: what a volume does on one node, on the real kernel: snapshots and clones,
//! online grow under load, and encryption. Each test has its own disks and node id.

use devicemapper::{Sectors, ThinDevId};
use pxd::crypt::{ClusterKey, VolumeKey};
use pxd::kernel::block;
use pxd::kernel::dm::{node_path, DeviceMapper, KernelDm};
use pxd::kernel::fs;
use pxd::kernel::stack::{self, Outcome};
use pxd::plan::crypt::{plan_crypt, Workqueues};
use pxd::plan::names::{DeviceName, Id};
use pxd::plan::pool::DEFAULT_CHUNK;
use pxd::plan::thin::{plan_grow, plan_thin, plan_thin_read_only};
use pxd::pool::{self, Pool};
use pxd::volume::spec::Fs;
use pxd_tests::{pattern, pool_spec, read_direct, run, sha256, vm_disks, write_direct};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn id(s: &str) -> Id {
    Id::object(s).unwrap()
}

fn thin_id(n: u64) -> ThinDevId {
    ThinDevId::new_u64(n).unwrap()
}

/// Deactivates `top_first`, then the pool; checks its metadata with thin_check on the way.
fn teardown_and_check(dm: &KernelDm, pool: &Pool, top_first: &[&DeviceName]) {
    stack::teardown(dm, top_first).unwrap();
    stack::teardown(dm, &[&pool.plan.pool.name]).unwrap();
    run(
        "thin_check",
        &[node_path(&pool.plan.meta.name.dm_name()).to_str().unwrap()],
    );
    pool::deactivate_pool(dm, pool).unwrap();
}

#[test]
fn snapshot_keeps_the_old_data_and_its_clones_are_independent() {
    let disks = &vm_disks(6)[0..2];
    let dm = KernelDm::open().unwrap();
    let pool = pool::ensure_pool(
        &dm,
        &pool_spec("snap", disks, DEFAULT_CHUNK),
        pool::Metadata::MayBeNew,
    )
    .unwrap();
    let node = &pool.spec.node;
    let size = Sectors(64 * 2048);
    let vol = pool::ensure_thin(&dm, &pool, &id("v1"), thin_id(1), size).unwrap();

    let original = pattern(1, 8 * MIB);
    write_direct(&vol.path(), 0, &original);

    // Snapshot the live volume, then overwrite it.
    let taken = pool::snapshot_thin_id(&dm, &pool, thin_id(1), thin_id(2), &[&vol.name]).unwrap();
    assert_eq!(taken, Outcome::Created);
    let again = pool::snapshot_thin_id(&dm, &pool, thin_id(1), thin_id(2), &[&vol.name]).unwrap();
    assert_eq!(
        again,
        Outcome::AlreadyExists,
        "a retried snapshot adopts the first"
    );
    let overwritten = pattern(2, 8 * MIB);
    write_direct(&vol.path(), 0, &overwritten);

    // A writable clone of the snapshot reads the original data.
    pool::snapshot_thin_id(&dm, &pool, thin_id(2), thin_id(3), &[]).unwrap();
    let clone = plan_thin(node, &pool.spec.pool, &id("c1"), thin_id(3), size).unwrap();
    stack::apply(&dm, &[&clone]).unwrap();
    let clone_path = node_path(&clone.name.dm_name());
    assert_eq!(
        sha256(&read_direct(&clone_path, 0, 8 * MIB)),
        sha256(&original)
    );
    assert_eq!(
        sha256(&read_direct(&vol.path(), 0, 8 * MIB)),
        sha256(&overwritten)
    );

    // Writing the clone touches neither the volume nor the snapshot.
    write_direct(&clone_path, 0, &pattern(3, MIB));
    let snap = plan_thin_read_only(node, &pool.spec.pool, &id("s1"), thin_id(2), size).unwrap();
    stack::apply(&dm, &[&snap]).unwrap();
    let snap_path = node_path(&snap.name.dm_name());
    assert_eq!(
        sha256(&read_direct(&snap_path, 0, 8 * MIB)),
        sha256(&original)
    );
    assert_eq!(
        sha256(&read_direct(&vol.path(), 0, 8 * MIB)),
        sha256(&overwritten)
    );

    // The read-only activation refuses writes (at open or at write, depending on the kernel).
    assert!(dm.info(&snap.name.dm_name()).unwrap().unwrap().read_only);
    let refused = std::fs::OpenOptions::new()
        .write(true)
        .open(&snap_path)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 4096], 0));
    assert!(
        refused.is_err(),
        "a write to the read-only snapshot device succeeded"
    );

    // Deleting the clone frees the chunks it had of its own.
    let before = pool::usage(&dm, &pool).unwrap();
    stack::teardown(&dm, &[&clone.name]).unwrap();
    pool::delete_thin_id(&dm, &pool, thin_id(3)).unwrap();
    let after = pool::usage(&dm, &pool).unwrap();
    assert_eq!(
        before.data_used_chunks - after.data_used_chunks,
        4,
        "the clone's 1 MiB of its own is 4 chunks: {before} -> {after}"
    );

    teardown_and_check(&dm, &pool, &[&snap.name, &vol.name]);
}

fn statvfs_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C path and a struct that lives for the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    st.f_blocks * st.f_frsize
}

#[test]
fn mounted_volume_grows_online_while_fio_writes() {
    let disks = &vm_disks(6)[2..4];
    let dm = KernelDm::open().unwrap();
    let pool = pool::ensure_pool(
        &dm,
        &pool_spec("grow", disks, DEFAULT_CHUNK),
        pool::Metadata::MayBeNew,
    )
    .unwrap();
    let node = &pool.spec.node;
    let small = plan_thin(
        node,
        &pool.spec.pool,
        &id("v1"),
        thin_id(1),
        Sectors(1024 * 2048),
    )
    .unwrap();
    pool::create_thin_id(&dm, &pool, thin_id(1)).unwrap();
    stack::apply(&dm, &[&small]).unwrap();
    let dev = node_path(&small.name.dm_name());
    fs::mkfs(&dev, Fs::Ext4).unwrap();
    let mnt = PathBuf::from("/mnt/pxd-grow");
    fs::mount(&dev, &mnt, Fs::Ext4, false).unwrap();
    let before = statvfs_bytes(&mnt);
    assert!(before < 1 << 30, "{before}");

    let out = mnt.join("fio.json");
    let mut fio = Command::new("fio")
        .args([
            "--name=grow",
            "--rw=randwrite",
            "--bs=4k",
            "--size=256m",
            "--ioengine=libaio",
            "--iodepth=8",
            "--direct=1",
            "--time_based",
            "--runtime=20",
            "--output-format=json",
        ])
        .arg(format!("--directory={}", mnt.display()))
        .arg(format!("--output={}", out.display()))
        .stdout(Stdio::null())
        .spawn()
        .expect("fio runs in the guest");

    // Grow once fio's file exists and it is writing.
    let deadline = Instant::now() + Duration::from_secs(120);
    let file = mnt.join("grow.0.0");
    while !file.exists() {
        assert!(Instant::now() < deadline, "fio never started writing");
        std::thread::sleep(Duration::from_millis(100));
    }
    let big = plan_grow(&small, Sectors(2048 * 2048)).unwrap();
    assert_eq!(stack::grow(&dm, &[&big]).unwrap(), [true]);
    fs::grow(&dev, &mnt, Fs::Ext4).unwrap();
    let after = statvfs_bytes(&mnt);
    assert!(
        after > before + (900 << 20),
        "filesystem grew from {before} to only {after}"
    );
    assert_eq!(block::size_bytes(&dev).unwrap(), 2 << 30);

    let status = fio.wait().unwrap();
    assert!(status.success(), "fio exited {status}");
    let report = std::fs::read_to_string(&out).unwrap();
    let errors: Vec<&str> = report
        .lines()
        .filter(|l| l.trim_start().starts_with("\"error\""))
        .collect();
    assert!(
        !errors.is_empty(),
        "fio's report has no error field: {report}"
    );
    assert!(
        errors.iter().all(|l| l.contains(": 0")),
        "fio reported errors: {errors:?}"
    );

    fs::unmount(&mnt).unwrap();
    run("e2fsck", &["-f", "-n", dev.to_str().unwrap()]);
    teardown_and_check(&dm, &pool, &[&small.name]);
}

/// The crypt table of `old` (both workqueues bypassed) meets today's default: an activation
/// adopts it as it is, then a live reload swaps in the new flags under fio. What was written
/// before (`plain`, at the start) and what fio writes across the swap read back whole.
fn flags_reload_live(
    dm: &KernelDm,
    old: &pxd::plan::table::DevicePlan,
    key: &VolumeKey,
    plain: &[u8],
) {
    let seg = &old.segments[0];
    let (node, vid) = (Id::node("sec").unwrap(), id("v1"));
    let lower = match &seg.target {
        pxd::plan::table::TargetSpec::Crypt { dev, .. } => match dev {
            pxd::plan::table::DevRef::Dm(n) => n.clone(),
            other => panic!("crypt over {other:?}"),
        },
        other => panic!("{other:?} is no crypt target"),
    };
    let new = plan_crypt(&node, &vid, seg.length, lower.clone(), Workqueues::DEFAULT);
    let name = new.name.dm_name();
    let flags = || dm.table(&name).unwrap()[0].3.clone();
    assert!(flags().contains("no_write_workqueue"), "{}", flags());
    let adopted = stack::apply(dm, &[&new]).unwrap();
    assert_eq!(adopted.devices[0].outcome, Outcome::AlreadyExists);
    assert!(flags().contains("no_write_workqueue"), "adopted as it was");

    let path = node_path(&name);
    let report = PathBuf::from("/tmp/pxd-crypt-reload.json");
    let mut fio = Command::new("fio")
        .args([
            "--name=reload",
            "--direct=1",
            "--ioengine=libaio",
            "--rw=randwrite",
        ])
        .args(["--bs=4k", "--iodepth=8", "--offset=8m", "--size=48m"])
        .args([
            "--verify=crc32c",
            "--do_verify=1",
            "--output-format=json",
            "--eta=never",
        ])
        .arg(format!("--output={}", report.display()))
        .arg(format!("--filename={}", path.display()))
        .spawn()
        .unwrap();
    // Under way: the device has taken writes.
    let stat = || {
        let dev = block::device_of(&path).unwrap();
        let f = format!("/sys/dev/block/{}:{}/stat", dev.major, dev.minor);
        let s = std::fs::read_to_string(f).unwrap();
        s.split_whitespace().nth(4).unwrap().parse::<u64>().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while stat() == 0 {
        assert!(Instant::now() < deadline, "fio never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(pxd::volume::reload_crypt_flags(dm, &new, key).unwrap());
    let status = fio.wait().unwrap();
    assert!(status.success(), "fio exited {status}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["jobs"][0]["error"], 0, "fio across the reload: {v}");
    assert!(v["jobs"][0]["write"]["io_bytes"].as_u64().unwrap() >= 48 * MIB as u64);
    let now = flags();
    assert_eq!(
        (
            now.contains("no_read_workqueue"),
            now.contains("no_write_workqueue")
        ),
        (
            Workqueues::DEFAULT.bypass_reads,
            Workqueues::DEFAULT.bypass_writes
        ),
        "{now}"
    );
    assert_eq!(read_direct(&path, 0, plain.len()), plain);
    // Already at its plan: nothing to load. A plan that maps differently is refused.
    assert!(!pxd::volume::reload_crypt_flags(dm, &new, key).unwrap());
    let other = plan_crypt(
        &node,
        &vid,
        Sectors(*seg.length / 2),
        lower,
        Workqueues::DEFAULT,
    );
    assert!(pxd::volume::reload_crypt_flags(dm, &other, key).is_err());
    assert_eq!(read_direct(&path, 0, plain.len()), plain);
}

#[test]
fn encrypted_volume_hides_its_data_and_reopens_with_its_wrapped_key() {
    let disks = &vm_disks(6)[4..6];
    let dm = KernelDm::open().unwrap();
    let pool = pool::ensure_pool(
        &dm,
        &pool_spec("sec", disks, DEFAULT_CHUNK),
        pool::Metadata::MayBeNew,
    )
    .unwrap();
    let node = pool.spec.node.clone();
    let size = Sectors(64 * 2048);
    let thin = plan_thin(&node, &pool.spec.pool, &id("v1"), thin_id(1), size).unwrap();
    pool::create_thin_id(&dm, &pool, thin_id(1)).unwrap();
    // Made with both workqueues bypassed, pxd's default before it was measured.
    let both = Workqueues {
        bypass_reads: true,
        bypass_writes: true,
    };
    let crypt = plan_crypt(&node, &id("v1"), size, thin.name.clone(), both);

    let cluster_key_path = PathBuf::from("/tmp/pxd-test-cluster.key");
    let cluster = ClusterKey::load_or_create(&cluster_key_path).unwrap();
    let key = VolumeKey::generate().unwrap();
    let wrapped = cluster.wrap(&key, "v1").unwrap();
    pxd::volume::open(&dm, &[&thin, &crypt], Some(&key)).unwrap();

    // The table names the key in the keyring; the key itself appears nowhere.
    let table = dm.table(&crypt.name.dm_name()).unwrap();
    assert_eq!(table[0].2, "crypt");
    assert!(
        table[0].3.contains(":64:logon:pxd:pxd-sec-crypt-v1"),
        "{table:?}"
    );
    let hex: String = key.bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!table[0].3.contains(&hex[..32]));

    let marker = b"PXD-KNOWN-PATTERN-0123456789abcdef";
    let plain: Vec<u8> = marker.iter().copied().cycle().take(4 * MIB).collect();
    let crypt_path = node_path(&crypt.name.dm_name());
    write_direct(&crypt_path, 0, &plain);
    assert_eq!(read_direct(&crypt_path, 0, 4 * MIB), plain);
    let beneath = read_direct(&node_path(&thin.name.dm_name()), 0, 4 * MIB);
    assert!(
        !beneath.windows(16).any(|w| w == &marker[..16]),
        "the known pattern is readable on the thin device beneath the crypt layer"
    );

    // "Restart": the stack goes away, the key is unwrapped from the cluster key file again.
    stack::teardown(&dm, &[&crypt.name]).unwrap();
    let reloaded = ClusterKey::load_or_create(&cluster_key_path).unwrap();
    let key_again = reloaded.unwrap(&wrapped, "v1").unwrap();
    let reopened = pxd::volume::open(&dm, &[&thin, &crypt], Some(&key_again)).unwrap();
    assert_eq!(
        reopened.devices[0].outcome,
        Outcome::AlreadyExists,
        "thin stayed up"
    );
    assert_eq!(read_direct(&crypt_path, 0, 4 * MIB), plain);

    flags_reload_live(&dm, &crypt, &key_again, &plain);

    // The wrong key gives garbage, not the data.
    stack::teardown(&dm, &[&crypt.name]).unwrap();
    pxd::volume::open(&dm, &[&thin, &crypt], Some(&VolumeKey::generate().unwrap())).unwrap();
    assert_ne!(read_direct(&crypt_path, 0, 4 * MIB), plain);

    std::fs::remove_file(&cluster_key_path).unwrap();
    teardown_and_check(&dm, &pool, &[&crypt.name, &thin.name]);
}
