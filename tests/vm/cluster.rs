//! VM tier: several storage nodes in one guest (each a daemon in its own network namespace,
//! with its own address, data and disk), one cluster. Placement follows the fault-domain tags: a volume created
//! through any node lands on the pool its constraints and the tags pick, and that pool's node
//! builds it on the real kernel.

use pxd::api::topology::NodeTopologyView;
use pxd::api::volumes::VolumeView;
use pxd_tests::daemon::Daemon;
use pxd_tests::trio::{form, wait_until};
use pxd_tests::{node_devices, pattern, read_direct, sha256, vm_disks, write_direct};
use std::path::PathBuf;
use std::time::Duration;

/// The node (by name) holding volume `name`'s one replica, as `from` reports it.
fn replica_node(from: &Daemon, name: &str) -> String {
    let v: VolumeView = from.json(&["volume", "inspect", name]);
    assert_eq!(v.replicas.len(), 1, "{v:?}");
    v.replicas[0].node_name.clone()
}

/// Waits until `owner` has built volume `name` (its device exists), then writes a pattern
/// through it and reads it back.
fn built_and_holds_data(owner: &Daemon, name: &str, seed: u64) {
    let device: PathBuf = wait_until(
        &format!("{name}'s device on {}", owner.name),
        Duration::from_secs(180),
        || {
            let v: VolumeView = owner.json(&["volume", "inspect", name]);
            v.device.filter(|d| d.exists())
        },
    );
    let id = owner.ok(&["cluster", "status", "--json"]);
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    let node = id["node"].as_str().unwrap().to_owned();
    let devices = node_devices(&node);
    assert!(
        devices.iter().any(|d| d.contains("thin")),
        "{name} on {}: {devices:?}",
        owner.name
    );
    let data = pattern(seed, 1 << 20);
    write_direct(&device, 0, &data);
    assert_eq!(sha256(&read_direct(&device, 0, data.len())), sha256(&data));
}

#[test]
fn volumes_go_where_the_topology_tags_and_constraints_say() {
    let disks = vm_disks(3);
    // Each node in its own network namespace, as on separate hosts.
    let (_net, nodes) = form("topo", &disks, 0, 9500, &[]);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // Racks and a zone, tagged from one node for all three.
    a.ok(&["topology", "tag", "--rack", "r1", "--zone", "z1"]);
    a.ok(&[
        "topology", "tag", "--node", "topo-b", "--rack", "r2", "--zone", "z2",
    ]);
    a.ok(&[
        "topology", "tag", "--node", "topo-c", "--rack", "r2", "--zone", "z2",
    ]);
    let shown: Vec<NodeTopologyView> = c.json(&["topology", "show", "--node", "topo-b"]);
    assert!(
        shown[0].mesos_attributes.starts_with("zone:z2;rack:r2"),
        "{shown:?}"
    );
    let attrs = b.ok(&["topology", "show", "--mesos-attributes"]);
    assert!(attrs.starts_with("zone:z2;rack:r2"), "{attrs:?}");
    let listed = c.ok(&["node", "list", "--labels"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("topo-a") && l.contains("r1")),
        "{listed}"
    );

    // Every node's pool is seen by the others before placement counts on it: heartbeats
    // carry each pool's use.
    wait_until("three pools in the store", Duration::from_secs(120), || {
        let pools: Vec<serde_json::Value> =
            serde_json::from_str(&c.ok(&["pool", "list", "--json"])).ok()?;
        (pools.len() == 3).then_some(())
    });

    // --racks r1, asked of node c: only node a's pool qualifies; node a builds it.
    c.ok(&[
        "volume", "create", "in-r1", "--size", "64M", "--fs", "raw", "--racks", "r1",
    ]);
    assert_eq!(replica_node(b, "in-r1"), "topo-a");
    built_and_holds_data(a, "in-r1", 1);
    let v: VolumeView = b.json(&["volume", "inspect", "in-r1"]);
    let why = v.placement.expect("a placement note").explanation;
    assert!(why.starts_with("1 replica in zone z1, rack r1"), "{why}");

    // --zones z2 and --nodes by name.
    a.ok(&[
        "volume", "create", "in-z2", "--size", "64M", "--fs", "raw", "--zones", "z2",
    ]);
    let z2 = replica_node(a, "in-z2");
    assert!(z2 == "topo-b" || z2 == "topo-c", "{z2}");
    a.ok(&[
        "volume", "create", "on-c", "--size", "64M", "--fs", "raw", "--nodes", "topo-c",
    ]);
    assert_eq!(replica_node(a, "on-c"), "topo-c");
    built_and_holds_data(c, "on-c", 2);

    // Retagging moves where the next volume may go.
    b.ok(&["topology", "tag", "--node", "topo-c", "--rack", "r3"]);
    a.ok(&[
        "volume", "create", "in-r3", "--size", "64M", "--fs", "raw", "--racks", "r3",
    ]);
    assert_eq!(replica_node(a, "in-r3"), "topo-c");

    // Constraints nothing satisfies, and a node that is no member, are refused by name.
    let e = a.refused(&[
        "volume", "create", "nowhere", "--size", "64M", "--zones", "z9",
    ]);
    assert!(e.contains("0 node(s) have a low pool"), "{e}");
    let e = a.refused(&[
        "volume", "create", "nobody", "--size", "64M", "--nodes", "topo-x",
    ]);
    assert!(
        e.contains("nodes: no member is called or numbered \"topo-x\""),
        "{e}"
    );
    // Three daemons in one guest share its host name: replicas there would share fate.
    let e = a.refused(&["volume", "create", "three", "--size", "64M", "--repl", "3"]);
    assert!(e.contains("1 hosts available, 3 replicas asked"), "{e}");
    let listed = a.ok(&["volume", "list"]);
    assert!(
        !listed.contains("nowhere") && !listed.contains("nobody"),
        "{listed}"
    );
}
