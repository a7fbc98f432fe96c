//! VM tier: a replica leg carried by the kernel on both ends. Node B exports a thin-backed leg
//! through nvmet from its own network namespace; node A connects over NVMe/TCP from another
//! and joins it with a local leg in pxd's raid1. Data lands on both legs; unlinking B's
//! epoch-1 subsystem fences A (its next write completes on the local leg alone and never
//! reaches B); a new epoch's subsystem, a reload of the split devices and a suspend/resume
//! bring the leg back, and the bitmap resync makes the legs equal again.

use devicemapper::{Sectors, ThinDevId};
use pxd::kernel::dm::{node_path, DeviceMapper, KernelDm};
use pxd::kernel::nvme_host::{self, ConnectSpec};
use pxd::kernel::nvmet::Nvmet;
use pxd::kernel::stack;
use pxd::plan::names::{host_nqn, leg_nqn, DeviceName, Id, Role};
use pxd::plan::pool::DEFAULT_CHUNK;
use pxd::plan::raid::{LegHealth, RaidStatus};
use pxd::plan::replica::{leg_thins, plan_leg_export, plan_leg_split, plan_raid, LEG_META};
use pxd::plan::table::DevRef;
use pxd::plan::thin::plan_thin;
use pxd::pool::{self, Pool};
use pxd_tests::netns::{in_netns, Net};
use pxd_tests::{pattern, pool_spec, read_direct, run, sha256, vm_disks, wait_until, write_direct};
use std::time::Duration;

const MIB: usize = 1 << 20;
const SIZE: Sectors = Sectors(64 * 2048);

fn id(s: &str) -> Id {
    Id::object(s).unwrap()
}

/// A leg of volume `vol` in `pool`: metadata thin `meta_id`, data thin `data_id`.
fn leg(
    dm: &KernelDm,
    pool: &Pool,
    vol: &Id,
    meta_id: u64,
    data_id: u64,
) -> (DeviceName, DeviceName) {
    let node = &pool.spec.node;
    let data =
        pool::ensure_thin(dm, pool, vol, ThinDevId::new_u64(data_id).unwrap(), SIZE).unwrap();
    let meta_thin = ThinDevId::new_u64(meta_id).unwrap();
    pool::create_thin_id(dm, pool, meta_thin).unwrap();
    let mut meta = plan_thin(node, &pool.spec.pool, vol, meta_thin, LEG_META).unwrap();
    meta.name.role = Some(Role::Meta);
    stack::apply(dm, &[&meta]).unwrap();
    assert_eq!((meta.name.clone(), data.name.clone()), leg_thins(node, vol));
    (meta.name, data.name)
}

fn raid_status(dm: &KernelDm, raid: &DeviceName) -> RaidStatus {
    let status = dm.status(&raid.dm_name()).unwrap();
    status[0].3.parse().unwrap()
}

fn sum_of(dev: &DeviceName, len: usize) -> String {
    sha256(&read_direct(&node_path(&dev.dm_name()), 0, len))
}

/// Node A's namespace (0) and node B's (1) on the test bridge.
const A: usize = 0;
const B: usize = 1;

/// Connects A to `nqn` on B and waits for its namespace; returns (controller, namespace).
fn connect(net: &Net, nqn: &str, a: &Id) -> (String, devicemapper::Device) {
    let spec = ConnectSpec {
        addr: format!("{}:4420", Net::addr(B)).parse().unwrap(),
        nqn: nqn.to_owned(),
        host_nqn: host_nqn(a),
        ctrl_loss_tmo: -1,
        reconnect_delay: 1,
    };
    let ctrl = in_netns(&net.ns(A), move || nvme_host::connect(&spec)).unwrap();
    let mut found = None;
    wait_until(Duration::from_secs(60), || {
        found = nvme_host::namespace_of(nqn);
        found
            .as_ref()
            .map(drop)
            .ok_or_else(|| format!("no namespace of {nqn} yet"))
    });
    (ctrl, found.unwrap().1)
}

#[test]
fn a_remote_leg_over_nvme_tcp_mirrors_fences_and_resyncs_from_its_bitmap() {
    for m in ["dm-raid", "nvmet", "nvmet-tcp", "nvme-tcp"] {
        run("modprobe", &[m]);
    }
    if !std::path::Path::new("/sys/kernel/config/nvmet").exists() {
        run("mount", &["-t", "configfs", "none", "/sys/kernel/config"]);
    }
    let disks = vm_disks(6);
    let dm = KernelDm::open().unwrap();
    let net = Net::new(2);
    let (a, b) = (Id::node("lega").unwrap(), Id::node("legb").unwrap());
    let vol = id("v1");
    let pool_a = pool::ensure_pool(
        &dm,
        &pool_spec("lega", &disks[3..4], DEFAULT_CHUNK),
        pool::Metadata::MayBeNew,
    )
    .unwrap();
    let pool_b = pool::ensure_pool(
        &dm,
        &pool_spec("legb", &disks[4..5], DEFAULT_CHUNK),
        pool::Metadata::MayBeNew,
    )
    .unwrap();
    let (local_meta, local_data) = leg(&dm, &pool_a, &vol, 1, 2);
    let (_, remote_data) = leg(&dm, &pool_b, &vol, 1, 2);

    // B exports its leg for epoch 1, to A only, on a port in B's namespace.
    let export = plan_leg_export(&b, &vol, SIZE);
    stack::apply(&dm, &[&export]).unwrap();
    let nvmet = Nvmet::open().unwrap();
    let e1 = leg_nqn(&b, &vol, 1);
    nvmet
        .ensure_export(&e1, &node_path(&export.name.dm_name()), &host_nqn(&a))
        .unwrap();
    let port_addr = format!("{}:4420", Net::addr(B)).parse().unwrap();
    let port = nvmet.ensure_port(port_addr).unwrap();
    let e1_link = e1.clone();
    in_netns(&net.ns(B), move || {
        Nvmet::open().unwrap().link(port.id, &e1_link)
    })
    .unwrap();
    let shown = nvmet.exports();
    let ours = shown.iter().find(|x| x.nqn == e1).unwrap();
    assert_eq!(ours.hosts, [host_nqn(&a)]);
    assert_eq!(ours.ports, [port.id]);
    assert!(ours.enabled);

    // A reaches it over NVMe/TCP, splits it, and mirrors it with its local leg.
    let (ctrl1, ns1) = connect(&net, &e1, &a);
    let (m1, d1) = plan_leg_split(&a, &vol, 1, ns1, SIZE);
    stack::apply(&dm, &[&m1, &d1]).unwrap();
    let raid = plan_raid(
        &a,
        &vol,
        vec![
            Some((DevRef::Dm(local_meta), DevRef::Dm(local_data.clone()))),
            Some((DevRef::Dm(m1.name.clone()), DevRef::Dm(d1.name.clone()))),
        ],
        SIZE,
        true,
    );
    stack::apply(&dm, &[&raid]).unwrap();
    // The kernel's table reads back as the plan (adopted, not rebuilt).
    assert!(stack::apply(&dm, &[&raid]).unwrap().all_adopted());
    let top = node_path(&raid.name.dm_name());
    wait_until(Duration::from_secs(120), || {
        let s = raid_status(&dm, &raid.name);
        s.is_clean().then_some(()).ok_or(format!("{s:?}"))
    });

    let first = pattern(1, 8 * MIB);
    write_direct(&top, 0, &first);
    assert_eq!(sum_of(&local_data, 8 * MIB), sha256(&first));
    assert_eq!(
        sum_of(&remote_data, 8 * MIB),
        sha256(&first),
        "the remote leg"
    );

    // Fence: B unlinks epoch 1. As pxd would after recording the leg stale, A deletes the
    // controller; the next write then completes on the local leg only.
    nvmet.unlink(port.id, &e1).unwrap();
    nvme_host::delete(&ctrl1).unwrap();
    let fenced = pattern(2, 4 * MIB);
    let at = 32 * MIB as u64;
    write_direct(&top, at, &fenced);
    wait_until(Duration::from_secs(60), || {
        let s = raid_status(&dm, &raid.name);
        (s.legs == [LegHealth::InSync, LegHealth::Dead])
            .then_some(())
            .ok_or(format!("{s:?}"))
    });
    assert_eq!(
        sha256(&read_direct(
            &node_path(&remote_data.dm_name()),
            at,
            4 * MIB
        )),
        sha256(&vec![0u8; 4 * MIB]),
        "a fenced write reached the remote leg"
    );
    assert_eq!(sha256(&read_direct(&top, at, 4 * MIB)), sha256(&fenced));

    // Epoch 2: B exports again under a new subsystem, A reconnects, points its split devices
    // at the new namespace, and a suspend/resume takes the leg back.
    nvmet.remove_export(&e1).unwrap();
    let e2 = leg_nqn(&b, &vol, 2);
    nvmet
        .ensure_export(&e2, &node_path(&export.name.dm_name()), &host_nqn(&a))
        .unwrap();
    let e2_link = e2.clone();
    in_netns(&net.ns(B), move || {
        Nvmet::open().unwrap().link(port.id, &e2_link)
    })
    .unwrap();
    let (ctrl2, ns2) = connect(&net, &e2, &a);
    let (m2, d2) = plan_leg_split(&a, &vol, 1, ns2, SIZE);
    assert_eq!((&m2.name, &d2.name), (&m1.name, &d1.name), "the names stay");
    assert!(stack::reload(&dm, &m2, true).unwrap() && stack::reload(&dm, &d2, true).unwrap());
    stack::cycle(&dm, &raid.name).unwrap();
    wait_until(Duration::from_secs(120), || {
        let s = raid_status(&dm, &raid.name);
        s.is_clean().then_some(()).ok_or(format!("{s:?}"))
    });
    let len = (*SIZE * 512) as usize;
    assert_eq!(
        sum_of(&remote_data, len),
        sum_of(&local_data, len),
        "legs equal"
    );
    assert_eq!(
        sha256(&read_direct(
            &node_path(&remote_data.dm_name()),
            at,
            4 * MIB
        )),
        sha256(&fenced),
        "the resync brought the fenced-era write over"
    );

    // Tear down top first; the export goes last.
    stack::teardown(&dm, &[&raid.name, &d1.name, &m1.name]).unwrap();
    nvme_host::delete(&ctrl2).unwrap();
    nvmet.remove_export(&e2).unwrap();
    nvmet.remove_port_if_idle(port.id).unwrap();
    assert!(nvmet.exports().iter().all(|x| x.nqn != e2));
    stack::teardown(&dm, &[&export.name]).unwrap();
}
