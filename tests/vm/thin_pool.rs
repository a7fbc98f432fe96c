//! VM tier: a thin pool over two virtio disks, built and adopted by pxd on the real kernel.
//! Each test uses its own pair of disks and its own node id, so they run in parallel.

use devicemapper::{Sectors, ThinDevId};
use pxd::kernel::block;
use pxd::kernel::dm::{node_path, DeviceMapper, KernelDm};
use pxd::kernel::stack::{self, Outcome, StackError};
use pxd::plan::names::Id;
use pxd::plan::pool::DEFAULT_CHUNK;
use pxd::pool::{self, Pool};
use pxd_tests::{pattern, pool_spec, read_direct, run, sha256, vm_disks, write_direct};

const MIB: usize = 1 << 20;

/// Names of this node's dm devices, sorted.
fn devices_of(dm: &KernelDm, node: &str) -> Vec<String> {
    let prefix = format!("pxd-{node}-");
    let mut v: Vec<String> = dm
        .list()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

/// Deactivates the volume and the pool, checks the metadata with `thin_check` while the pool is
/// down, then removes the rest and asserts nothing of this node is left in the kernel.
fn teardown_and_check(dm: &KernelDm, pool: &Pool, node: &str, volumes: &[&str]) {
    for v in volumes {
        let name = pxd::plan::names::DeviceName::new(
            &pool.spec.node,
            pxd::plan::names::Kind::Thin,
            &Id::object(v).unwrap(),
            None,
        );
        stack::teardown(dm, &[&name]).unwrap();
    }
    stack::teardown(dm, &[&pool.plan.pool.name]).unwrap();
    let meta = node_path(&pool.plan.meta.name.dm_name());
    run("thin_check", &[meta.to_str().unwrap()]);
    pool::deactivate_pool(dm, pool).unwrap();
    assert_eq!(
        devices_of(dm, node),
        Vec::<String>::new(),
        "devices left behind"
    );
}

#[test]
fn thin_volume_round_trips_random_data_and_metadata_checks_clean() {
    let disks = &vm_disks(6)[0..2];
    let dm = KernelDm::open().unwrap();
    let pool = pool::ensure_pool(
        &dm,
        &pool_spec("rt", disks, DEFAULT_CHUNK),
        pool::Metadata::MayBeNew,
    )
    .unwrap();
    assert!(pool.fresh_metadata);
    assert!(pool
        .applied
        .devices
        .iter()
        .all(|a| a.outcome == Outcome::Created));

    // The data device concatenates both disks, after the label and the metadata.
    let data = dm.table(&pool.plan.data.name.dm_name()).unwrap();
    let (d0, d1) = (
        block::device_of(&disks[0]).unwrap(),
        block::device_of(&disks[1]).unwrap(),
    );
    assert_eq!(data.len(), 2, "{data:?}");
    assert_eq!(data[0].2, "linear");
    assert!(data[0].3.starts_with(&format!("{d0} ")), "{data:?}");
    assert_eq!(data[1].3, format!("{d1} 2048"), "{data:?}");

    let vol = pool::ensure_thin(
        &dm,
        &pool,
        &Id::object("v1").unwrap(),
        ThinDevId::new_u64(1).unwrap(),
        Sectors(512 * 2048),
    )
    .unwrap();
    assert_eq!(
        (vol.id_outcome, vol.device_outcome),
        (Outcome::Created, Outcome::Created)
    );
    assert_eq!(block::size_bytes(&vol.path()).unwrap(), 512 * MIB as u64);

    let before = pool::usage(&dm, &pool).unwrap();
    let written = pattern(0x5eed, 64 * MIB);
    write_direct(&vol.path(), 0, &written);
    let read = read_direct(&vol.path(), 0, 64 * MIB);
    assert_eq!(sha256(&read), sha256(&written), "data read back differs");

    // 64 MiB in 256 KiB chunks: exactly 256 chunks newly provisioned.
    let after = pool::usage(&dm, &pool).unwrap();
    assert_eq!(
        after.data_used_chunks - before.data_used_chunks,
        256,
        "{before} -> {after}"
    );

    mapped_blocks_and_changes_since_a_snapshot(&dm, &pool, &vol);
    copy_mapped_blocks_over_the_transport(&dm, &pool);
    teardown_and_check(&dm, &pool, "rt", &["v1"]);
}

/// A rebuild's copy, engine only: what a 4 GiB thin device maps (48 MiB, scattered over it)
/// streams in block frames over the node transport (ZeroMQ with CURVE, on loopback here) to
/// a new thin device, which then maps exactly the same blocks and holds the same data.
fn copy_mapped_blocks_over_the_transport(dm: &KernelDm, pool: &Pool) {
    use pxd::cluster::transport::{KeyPair, Transport};
    use pxd::kernel::thin_tools::mapped;
    use pxd::rebuild::stream::{byte_ranges, send_ranges, serve_sink, Sink};
    use std::sync::Arc;
    let size = 4096 * MIB as u64;
    let thin = |name: &str, id: u32| {
        pool::ensure_thin(
            dm,
            pool,
            &Id::object(name).unwrap(),
            ThinDevId::new_u64(u64::from(id)).unwrap(),
            Sectors(size / 512),
        )
        .unwrap()
    };
    let (src, dst) = (thin("src", 4), thin("dst", 5));
    for i in 0..48u64 {
        write_direct(&src.path(), i * 85 * MIB as u64, &pattern(i, MIB));
    }
    let (name, meta) = (
        pool.name().dm_name(),
        node_path(&pool.plan.meta.name.dm_name()),
    );
    let source = mapped(dm, &name, &meta, 4).unwrap();
    let ranges = byte_ranges(&source.ranges, source.block_sectors, size);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = Arc::new(Sink::default());
    let server = Transport::new(KeyPair::generate().unwrap()).unwrap();
    let peer = serve_sink(
        &server,
        "tcp://127.0.0.1:9709",
        rt.handle().clone(),
        sink.clone(),
    )
    .unwrap();
    let client = Transport::new(KeyPair::generate().unwrap()).unwrap();
    sink.open("dst", &dst.path()).unwrap();
    let sent = rt
        .block_on(send_ranges(
            &client,
            &peer,
            "dst",
            &src.path(),
            &ranges,
            None,
            &mut |_| {},
        ))
        .unwrap();
    sink.close("dst").unwrap();
    eprintln!(
        "copy: {} bytes mapped of {size}, {} bytes sent in {} frames",
        source.bytes(),
        sent.bytes,
        sent.frames
    );
    assert!(
        sent.bytes * 5 <= source.bytes() * 6,
        "more than 1.2 x the allocated bytes sent"
    );
    let copy = mapped(dm, &name, &meta, 5).unwrap();
    assert_eq!(copy.ranges, source.ranges, "the copy maps other blocks");
    for r in &ranges {
        let len = r.len as usize;
        assert_eq!(
            sha256(&read_direct(&dst.path(), r.offset, len)),
            sha256(&read_direct(&src.path(), r.offset, len)),
            "the copy differs at byte {}",
            r.offset
        );
    }
    for (thin, id) in [(&src, 4), (&dst, 5)] {
        stack::teardown(dm, &[&thin.name]).unwrap();
        pool::delete_thin_id(dm, pool, ThinDevId::new_u64(id).unwrap()).unwrap();
    }
}

/// What thin volume `vol` (thin id 1, 64 MiB written from 0) maps, read from the live pool's
/// metadata snapshot, and what changed since a snapshot of it: the ranges a rebuild copies.
fn mapped_blocks_and_changes_since_a_snapshot(dm: &KernelDm, pool: &Pool, vol: &pool::ThinVolume) {
    use pxd::kernel::thin_tools::{delta, mapped};
    use pxd::plan::thin_map::BlockRange;
    let r = |begin, len| BlockRange { begin, len };
    let (name, meta) = (
        pool.name().dm_name(),
        node_path(&pool.plan.meta.name.dm_name()),
    );
    let chunk = 256 * 1024;
    write_direct(&vol.path(), 400 * chunk, &pattern(1, 4096));
    let m = mapped(dm, &name, &meta, 1).unwrap();
    assert_eq!(m.block_sectors, 512);
    assert_eq!(m.ranges, [r(0, 256), r(400, 1)]);
    assert_eq!(m.bytes(), 257 * chunk);

    // Snapshot 2 of 1; then 1 overwrites a shared block, maps a new one, and drops one.
    pool::snapshot_thin_id(
        dm,
        pool,
        ThinDevId::new_u64(1).unwrap(),
        ThinDevId::new_u64(2).unwrap(),
        &[&vol.name],
    )
    .unwrap();
    write_direct(&vol.path(), 0, &pattern(2, 4096));
    write_direct(&vol.path(), 800 * chunk, &pattern(3, 4096));
    let dev = vol.path();
    let (offset, len) = ((400 * chunk).to_string(), chunk.to_string());
    run(
        "blkdiscard",
        &["-o", &offset, "-l", &len, dev.to_str().unwrap()],
    );
    let d = delta(dm, &name, &meta, 2, 1).unwrap();
    assert_eq!(d.changed, [r(0, 1), r(800, 1)]);
    assert_eq!(d.unmapped, [r(400, 1)]);
    assert_eq!(
        mapped(dm, &name, &meta, 2).unwrap().ranges,
        [r(0, 256), r(400, 1)]
    );
    // Each read released its metadata snapshot: another can be taken.
    dm.message(&name, "reserve_metadata_snap").unwrap();
    dm.message(&name, "release_metadata_snap").unwrap();
    pool::delete_thin_id(dm, pool, ThinDevId::new_u64(2).unwrap()).unwrap();
}

#[test]
fn setting_up_twice_adopts_and_a_restart_keeps_metadata_and_data() {
    let disks = &vm_disks(6)[2..4];
    let dm = KernelDm::open().unwrap();
    let s = pool_spec("idem", disks, DEFAULT_CHUNK);
    let v1 = Id::object("v1").unwrap();
    let id = ThinDevId::new_u64(1).unwrap();
    let size = Sectors(64 * 2048);

    let first = pool::ensure_pool(&dm, &s, pool::Metadata::MayBeNew).unwrap();
    let vol = pool::ensure_thin(&dm, &first, &v1, id, size).unwrap();
    let marker = pattern(0xadd, 4 * MIB);
    write_direct(&vol.path(), 8 * MIB as u64, &marker);
    let devs_after_first = devices_of(&dm, "idem");
    assert_eq!(
        devs_after_first,
        [
            "pxd-idem-pool-p0",
            "pxd-idem-pool-p0-data",
            "pxd-idem-pool-p0-meta",
            "pxd-idem-thin-v1"
        ]
    );

    // Same setup again: every device is adopted, nothing is made or zeroed.
    let second = pool::ensure_pool(&dm, &s, pool::Metadata::MayBeNew).unwrap();
    assert!(second.applied.all_adopted(), "{:?}", second.applied);
    assert!(!second.fresh_metadata);
    let first_devs: Vec<_> = first.applied.devices.iter().map(|a| a.dev).collect();
    let second_devs: Vec<_> = second.applied.devices.iter().map(|a| a.dev).collect();
    assert_eq!(first_devs, second_devs);
    let again = pool::ensure_thin(&dm, &second, &v1, id, size).unwrap();
    assert_eq!(
        (again.id_outcome, again.device_outcome),
        (Outcome::AlreadyExists, Outcome::AlreadyExists)
    );
    assert_eq!(devices_of(&dm, "idem"), devs_after_first);
    assert_eq!(
        sha256(&read_direct(&again.path(), 8 * MIB as u64, 4 * MIB)),
        sha256(&marker)
    );

    // A different layout under the same names is refused, and changes nothing.
    let other = pool_spec("idem", disks, Sectors(1024));
    match pool::ensure_pool(&dm, &other, pool::Metadata::MayBeNew) {
        Err(pool::PoolError::Stack(StackError::TableMismatch { device, .. })) => {
            assert_eq!(device, "pxd-idem-pool-p0")
        }
        other => panic!("a mismatched table was not refused: {other:?}"),
    }
    assert_eq!(devices_of(&dm, "idem"), devs_after_first);

    // A restart (devices gone, disks kept): the metadata is found, not zeroed, and the thin
    // device with its data comes back.
    stack::teardown(&dm, &[&vol.name]).unwrap();
    pool::deactivate_pool(&dm, &second).unwrap();
    assert!(devices_of(&dm, "idem").is_empty());
    let restarted = pool::ensure_pool(&dm, &s, pool::Metadata::MayBeNew).unwrap();
    assert!(
        !restarted.fresh_metadata,
        "existing metadata must not be zeroed"
    );
    let back = pool::ensure_thin(&dm, &restarted, &v1, id, size).unwrap();
    assert_eq!(
        back.id_outcome,
        Outcome::AlreadyExists,
        "thin id 1 is still in the metadata"
    );
    assert_eq!(
        back.device_outcome,
        Outcome::Created,
        "its dm device was made again"
    );
    assert_eq!(
        sha256(&read_direct(&back.path(), 8 * MIB as u64, 4 * MIB)),
        sha256(&marker)
    );

    teardown_and_check(&dm, &restarted, "idem", &["v1"]);
}

/// Proves the read-back check above can fail: a block changed beneath the thin device, on the
/// pool's data device, shows up as a checksum mismatch at exactly that offset.
#[test]
fn read_back_check_detects_a_block_corrupted_beneath_the_volume() {
    let disks = &vm_disks(6)[4..6];
    let dm = KernelDm::open().unwrap();
    let pool = pool::ensure_pool(
        &dm,
        &pool_spec("cor", disks, DEFAULT_CHUNK),
        pool::Metadata::MayBeNew,
    )
    .unwrap();
    let vol = pool::ensure_thin(
        &dm,
        &pool,
        &Id::object("v1").unwrap(),
        ThinDevId::new_u64(1).unwrap(),
        Sectors(64 * 2048),
    )
    .unwrap();
    let written = pattern(0xbad, MIB);
    write_direct(&vol.path(), 0, &written);
    assert_eq!(sha256(&read_direct(&vol.path(), 0, MIB)), sha256(&written));

    // In a fresh pool the first chunk written lands on data block 0: check that, then flip one
    // 4 KiB block there behind the thin target's back.
    let data_dev = node_path(&pool.plan.data.name.dm_name());
    let head = read_direct(&data_dev, 0, 256 * 1024);
    assert_eq!(
        head,
        written[..256 * 1024],
        "first chunk is not at data block 0"
    );
    let mut block4k = written[4096..8192].to_vec();
    block4k.iter_mut().for_each(|b| *b = !*b);
    write_direct(&data_dev, 4096, &block4k);

    let read = read_direct(&vol.path(), 0, MIB);
    assert_ne!(sha256(&read), sha256(&written), "corruption went unnoticed");
    let first_diff = read.iter().zip(&written).position(|(a, b)| a != b);
    assert_eq!(first_diff, Some(4096));

    teardown_and_check(&dm, &pool, "cor", &["v1"]);
}
