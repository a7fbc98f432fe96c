//! VM tier: the eBPF probe loads on Debian's kernel (its own BTF gives the struct offsets) and
//! counts exactly the IO an application issues to a thin volume's top device. The chunk
//! provisioning and zeroing that dm-thin does underneath must not show up there.

use devicemapper::{Sectors, ThinDevId};
use pxd::io::{block_device_dev, IoCounts, IoProbe};
use pxd::kernel::block::AlignedBuf;
use pxd::kernel::dm::{node_path, KernelDm};
use pxd::kernel::stack;
use pxd::plan::names::Id;
use pxd::plan::pool::DEFAULT_CHUNK;
use pxd::pool;
use pxd_tests::{block_stat, pool_spec, vm_disks};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

const WRITES: u64 = 131;
const READS: u64 = 77;
const BLOCK: u64 = 4096;

#[test]
fn probe_counts_exactly_the_io_issued_to_a_thin_volume() {
    let disks = &vm_disks(2)[0..2];
    let dm = KernelDm::open().unwrap();
    let spec = pool_spec("io", disks, DEFAULT_CHUNK);
    let pool = pool::ensure_pool(&dm, &spec, pool::Metadata::MayBeNew).unwrap();
    let vol = pool::ensure_thin(
        &dm,
        &pool,
        &Id::object("v1").unwrap(),
        ThinDevId::new_u64(1).unwrap(),
        Sectors(256 * 2048),
    )
    .unwrap();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let probe = IoProbe::load()
        .unwrap_or_else(|e| panic!("loading the probe on kernel {}: {e:?}", release.trim()));

    let thin = block_device_dev(&vol.path()).unwrap();
    let data = block_device_dev(&node_path(&pool.plan.data.name.dm_name())).unwrap();
    let thin_before = probe.counts(thin).unwrap();
    let data_before = probe.counts(data).unwrap();
    let stat_before = block_stat(&vol.path());

    // Every write lands in its own 256 KiB chunk, so dm-thin provisions (and zeroes) a chunk
    // for each one on the data device: lower-level IO the top device must not count.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(vol.path())
        .unwrap();
    let mut buf = AlignedBuf::zeroed(BLOCK as usize);
    buf.as_mut_slice().fill(0x5a);
    let chunk_bytes = *DEFAULT_CHUNK * 512;
    for i in 0..WRITES {
        file.write_all_at(buf.as_slice(), i * chunk_bytes).unwrap();
    }
    for i in 0..READS {
        file.read_exact_at(buf.as_mut_slice(), i * chunk_bytes + BLOCK)
            .unwrap();
    }

    let expected = IoCounts {
        reads: READS,
        writes: WRITES,
        read_bytes: READS * BLOCK,
        written_bytes: WRITES * BLOCK,
    };
    // Counting happens at submission; the deadline only guards a very slow guest.
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = probe.counts(thin).unwrap().since(&thin_before);
        if got == expected || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(got, expected, "probe counts on the thin device");

    let stat = block_stat(&vol.path());
    assert_eq!(
        (
            stat.reads - stat_before.reads,
            stat.writes - stat_before.writes
        ),
        (READS, WRITES),
        "the kernel's own stat of the thin device"
    );
    // The data device below saw the provisioning: at least one write per new chunk.
    let below = probe.counts(data).unwrap().since(&data_before);
    assert!(
        below.writes >= WRITES,
        "the data device should carry the provisioned writes: {below:?}"
    );

    drop(file);
    stack::teardown(&dm, &[&vol.name]).unwrap();
    pool::deactivate_pool(&dm, &pool).unwrap();
}

/// Acceptance (limits, cgroup v2): two writers in two v2 cgroups share a thin volume's write
/// IOPS limit, and the one left gets all of it (the host tier runs the same on v1).
#[test]
fn a_write_limit_is_shared_by_two_writers_in_two_v2_cgroups() {
    let disks = &vm_disks(4)[2..4];
    let dm = KernelDm::open().unwrap();
    let spec = pool_spec("lim", disks, DEFAULT_CHUNK);
    let pool = pool::ensure_pool(&dm, &spec, pool::Metadata::MayBeNew).unwrap();
    let vol = pool::ensure_thin(
        &dm,
        &pool,
        &Id::object("v2").unwrap(),
        ThinDevId::new_u64(1).unwrap(),
        Sectors(256 * 2048),
    )
    .unwrap();
    let hierarchy = pxd::io::cgroups::Hierarchy::detect().expect("a cgroup hierarchy");
    assert_eq!(hierarchy.name(), "v2 (io.max)");
    pxd_tests::limits::two_writers_share_a_write_limit(&vol.path(), "vmlim");
    stack::teardown(&dm, &[&vol.name]).unwrap();
    pool::deactivate_pool(&dm, &pool).unwrap();
}
