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
use pxd::plan::replica::{
    leg_thins, plan_leg_export, plan_leg_split, plan_raid, LEG_HEAD, LEG_META,
};
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
    let mut meta = plan_thin(node, &pool.spec.pool, vol, meta_thin, LEG_HEAD).unwrap();
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
    let split1 = plan_leg_split(&a, &vol, 1, ns1, SIZE);
    let plans1 = split1.plans();
    stack::apply(&dm, &plans1.iter().collect::<Vec<_>>()).unwrap();
    let raid = plan_raid(
        &a,
        &vol,
        vec![
            Some((DevRef::Dm(local_meta), DevRef::Dm(local_data.clone()))),
            Some(split1.pair(0)),
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
    let plans2 = plan_leg_split(&a, &vol, 1, ns2, SIZE).plans();
    let names =
        |p: &[pxd::plan::table::DevicePlan]| p.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&plans2), names(&plans1), "the names stay");
    for p in &plans2 {
        assert!(stack::reload(&dm, p, true).unwrap());
    }
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
    let mut top_first = vec![&raid.name];
    top_first.extend(plans1.iter().rev().map(|p| &p.name));
    stack::teardown(&dm, &top_first).unwrap();
    nvme_host::delete(&ctrl2).unwrap();
    nvmet.remove_export(&e2).unwrap();
    nvmet.remove_port_if_idle(port.id).unwrap();
    assert!(nvmet.exports().iter().all(|x| x.nqn != e2));
    stack::teardown(&dm, &[&export.name]).unwrap();
}

/// A leg of volume `vol` on node `node`'s pool, for the re-assembly test: data thin and two
/// metadata slots (A, the thins' own name; B, under the leg name with role `m0`).
fn leg_with_slots(dm: &KernelDm, pool: &Pool, vol: &Id) -> [DeviceName; 3] {
    let (meta_a, data) = leg(dm, pool, vol, 1, 2);
    let node = &pool.spec.node;
    let meta_b_id = ThinDevId::new_u64(3).unwrap();
    pool::create_thin_id(dm, pool, meta_b_id).unwrap();
    let mut meta_b = plan_thin(node, &pool.spec.pool, vol, meta_b_id, LEG_META).unwrap();
    meta_b.name = DeviceName::new(
        node,
        pxd::plan::names::Kind::Leg,
        vol,
        Some(Role::LegMeta(0)),
    );
    stack::apply(dm, &[&meta_b]).unwrap();
    [meta_a, meta_b.name, data]
}

#[test]
fn a_live_raid_gains_and_loses_a_leg_on_fresh_metadata_without_a_failed_io() {
    run("modprobe", &["dm-raid"]);
    let disks = vm_disks(6);
    let dm = KernelDm::open().unwrap();
    let vol = id("v2");
    let legs: Vec<[DeviceName; 3]> = ["re0", "re1", "re2"]
        .iter()
        .zip(&disks[..3])
        .map(|(node, disk)| {
            let pool = pool::ensure_pool(
                &dm,
                &pool_spec(node, std::slice::from_ref(disk), DEFAULT_CHUNK),
                pool::Metadata::MayBeNew,
            )
            .unwrap();
            leg_with_slots(&dm, &pool, &vol)
        })
        .collect();
    let pair = |i: usize, slot: usize| {
        Some((
            DevRef::Dm(legs[i][slot].clone()),
            DevRef::Dm(legs[i][2].clone()),
        ))
    };
    let owner = Id::node("re0").unwrap();
    let two = plan_raid(&owner, &vol, vec![pair(0, 0), pair(1, 0)], SIZE, true);
    stack::apply(&dm, &[&two]).unwrap();
    let top = node_path(&two.name.dm_name());

    // fio writes and verifies all along; every I/O must succeed.
    let fio = std::process::Command::new("fio")
        .args([
            "--name=live",
            &format!("--filename={}", top.display()),
            "--rw=randwrite",
            "--bs=4k",
            "--ioengine=libaio",
            "--iodepth=8",
            "--direct=1",
            "--size=48M",
            "--time_based",
            "--runtime=20",
            "--verify=crc32c",
            "--verify_backlog=64",
            "--output-format=json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(3));

    // Raised to three: the new leg is copied while I/O waits, then every leg gets fresh
    // metadata in its other slot.
    let three = plan_raid(
        &owner,
        &vol,
        vec![pair(0, 1), pair(1, 1), pair(2, 1)],
        SIZE,
        true,
    );
    let len = (*SIZE * 512) as usize;
    let (from, to) = (
        node_path(&legs[0][2].dm_name()),
        node_path(&legs[2][2].dm_name()),
    );
    let mut copy = || -> Result<(), String> {
        let data = read_direct(&from, 0, len);
        write_direct(&to, 0, &data);
        Ok(())
    };
    let fresh: Vec<&DeviceName> = (0..3).map(|i| &legs[i][1]).collect();
    // Metadata the running raid uses is refused as fresh metadata.
    let e = stack::reassemble(&dm, &three, &[&legs[0][0]], &mut copy).unwrap_err();
    assert!(
        e.to_string().contains("metadata of the running raid"),
        "{e}"
    );
    let pause = stack::reassemble(&dm, &three, &fresh, &mut copy).unwrap();
    eprintln!("raised 2 -> 3: I/O waited {pause:?} (64 MiB copied in the pause)");
    let s = raid_status(&dm, &three.name);
    assert_eq!(s.legs, [LegHealth::InSync; 3], "{s:?}");
    assert!(s.is_clean(), "{s:?}");
    std::thread::sleep(Duration::from_secs(3));

    // A failure in the pause leaves the running raid as it was.
    let e = stack::reassemble(&dm, &two, &[&legs[0][0], &legs[1][0]], &mut || {
        Err("no".into())
    })
    .unwrap_err();
    assert!(e.to_string().contains("no"), "{e}");
    assert_eq!(raid_status(&dm, &three.name).legs.len(), 3);

    // Lowered to two: leg 1 leaves; legs 0 and 2 go back to their first slot.
    let lowered = plan_raid(&owner, &vol, vec![pair(0, 0), pair(2, 0)], SIZE, true);
    let pause =
        stack::reassemble(&dm, &lowered, &[&legs[0][0], &legs[2][0]], &mut || Ok(())).unwrap();
    eprintln!("lowered 3 -> 2: I/O waited {pause:?}");
    let out = fio.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fio failed:\n{report}");
    let json: serde_json::Value = serde_json::from_str(&report).expect("fio's JSON");
    assert_eq!(json["jobs"][0]["error"], 0, "{report}");
    assert!(json["jobs"][0]["write"]["io_bytes"].as_u64().unwrap() > 0);

    // md checks the legs: none differs, and they read back equal.
    dm.message(&lowered.name.dm_name(), "check").unwrap();
    assert_eq!(raid_status(&dm, &lowered.name).action, "check");
    wait_until(Duration::from_secs(120), || {
        let s = raid_status(&dm, &lowered.name);
        (s.action == "idle" && s.is_clean())
            .then_some(())
            .ok_or(format!("{s:?}"))
    });
    let s = raid_status(&dm, &lowered.name);
    assert_eq!((s.legs.len(), s.mismatches), (2, 0), "{s:?}");
    assert_eq!(
        sum_of(&legs[0][2], len),
        sum_of(&legs[2][2], len),
        "legs equal"
    );
    stack::teardown(&dm, &[&lowered.name]).unwrap();
}
