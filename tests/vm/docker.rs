//! VM tier: the Docker volume plugin, with the real Docker Engine (Debian's `docker.io`,
//! started inside the guest) and the conversation Mesos's dvdcli has with it.
//!
//! - Docker creates pxd volumes with options and with the inline spec, two containers write
//!   and read one back, `docker volume inspect` shows pxd's mountpoint, and a volume in use
//!   cannot be removed; once removed, pxd's devices are what its store says.
//! - dvdcli's calls on the socket: Get of a missing volume, Create, two Mounts with no `ID`,
//!   Unmounts, Path, List, Remove; the mount state checked in `/proc/mounts` at each step,
//!   then again with the daemon killed and restarted between the two Mounts.

use pxd::api::client::{BlockingClient, Target};
use pxd::api::volumes::VolumeView;
use pxd::kernel::dm::{DeviceMapper, KernelDm};
use pxd::kernel::loop_device::LoopDevice;
use pxd_tests::daemon::Daemon;
use pxd_tests::docker::{Docker, BUSYBOX};
use pxd_tests::EMULATOR_CLASSES;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where Docker looks for a plugin called `pxd`: the daemon's default plugin socket.
const PLUGIN_SOCKET: &str = "/run/docker/plugins/pxd.sock";
const DOCKER_DIR: &str = "/tmp/pxd-docker";

/// A one-node cluster on a loop device, serving the plugin where Docker looks.
fn node(name: &str, port: u16) -> (Daemon, LoopDevice) {
    let backing = PathBuf::from(format!("/tmp/pxd-{name}.img"));
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(3 << 30))
        .unwrap();
    let disk = LoopDevice::attach(&backing).unwrap();
    let mut args: Vec<&str> = EMULATOR_CLASSES.to_vec();
    args.extend(["--plugin-socket", PLUGIN_SOCKET]);
    let mut d = Daemon::new(name, port, &args);
    d.start_cluster();
    d.ok(&["drive", "add", disk.path().to_str().unwrap()]);
    (d, disk)
}

/// One plugin call, as Docker and dvdcli make it: a POST of JSON; the JSON answered.
fn call(endpoint: &str, body: Value) -> Value {
    let client = BlockingClient::new(Target::Unix(PLUGIN_SOCKET.into())).unwrap();
    client
        .post_within(endpoint, &body, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{endpoint} {body}: {e}"))
}

/// `call`, which must answer with no error.
fn ok(endpoint: &str, body: Value) -> Value {
    let v = call(endpoint, body.clone());
    assert_eq!(v["Err"], "", "{endpoint} {body}: {v}");
    v
}

/// Whether something is mounted at `path`.
fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path))
}

/// The node's pxd devices, and the ones its store's volumes should have.
fn devices_match_the_store(d: &Daemon) {
    let status: pxd::cluster::view::Status = d.json(&["cluster", "status"]);
    let prefix = format!("pxd-{}-", status.node);
    let have: BTreeSet<String> = KernelDm::open()
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with(&prefix) && !n.contains("-pool") && !n.contains("-tmeta"))
        .filter(|n| !n.contains("-tdata") && !n.contains("-data") && !n.contains("-meta"))
        .collect();
    let vols: Vec<VolumeView> = d.json(&["volume", "list"]);
    let want: BTreeSet<String> = vols.iter().flat_map(|v| v.stack.clone()).collect();
    assert_eq!(have, want, "the node's volume devices against its store");
}

#[test]
fn docker_and_dvdcli_use_pxd_volumes_through_the_plugin() {
    let (mut d, _disk) = node("dock", 9590);
    // The socket is there from the start, before any call.
    assert!(Path::new(PLUGIN_SOCKET).exists());

    dvdcli_conversation(&mut d, false);
    dvdcli_conversation(&mut d, true);

    let docker = Docker::start(Path::new(DOCKER_DIR));
    docker.import_busybox();
    docker.run(&[
        "volume",
        "create",
        "-d",
        "pxd",
        "--opt",
        "size=1G",
        "--opt",
        "io_priority=high",
        "v1",
    ]);
    docker.run(&["volume", "create", "-d", "pxd", "size=1G,name=v2"]);
    let v1: VolumeView = d.json(&["volume", "inspect", "v1"]);
    assert_eq!(
        (v1.size, v1.io_priority.to_string().as_str()),
        (1 << 30, "high")
    );
    let v2: VolumeView = d.json(&["volume", "inspect", "v2"]);
    assert_eq!(v2.size, 1 << 30);

    // One container writes, another reads it back.
    let with_v1 = |cmd: &[&str]| {
        let mut args = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "v1:/data",
            BUSYBOX,
        ];
        args.extend_from_slice(cmd);
        docker.run(&args)
    };
    let wrote = with_v1(&[
        "sh",
        "-c",
        "head -c 1048576 /bin/busybox > /data/f && sync && sha256sum /data/f",
    ]);
    let read = with_v1(&["sha256sum", "/data/f"]);
    assert_eq!(read, wrote);
    eprintln!("docker: a container wrote {wrote}, another read it back");
    let at = format!("{}/v1", d.data_dir().join("mounts").display());
    assert!(!mounted(&at), "v1 still mounted with no container");

    // A container holds v1: inspect shows pxd's mountpoint, and v1 cannot be removed.
    docker.run(&[
        "run",
        "-d",
        "--name",
        "holder",
        "--network",
        "none",
        "-v",
        "v1:/data",
        BUSYBOX,
        "sleep",
        "600",
    ]);
    let inspect: Value =
        serde_json::from_str(&docker.run(&["volume", "inspect", "v1"])).expect("inspect json");
    assert_eq!(inspect[0]["Driver"], "pxd");
    assert_eq!(inspect[0]["Mountpoint"], at.as_str());
    assert!(mounted(&at));
    let e = docker.try_run(&["volume", "rm", "v1"]).unwrap_err();
    assert!(e.contains("in use"), "{e}");
    assert!(d
        .json::<Vec<VolumeView>>(&["volume", "list"])
        .iter()
        .any(|v| v.name == "v1"));
    docker.run(&["rm", "-f", "holder"]);
    docker.run(&["volume", "rm", "v1"]);
    docker.run(&["volume", "rm", "size=1G,name=v2"]);
    let left: Vec<VolumeView> = d.json(&["volume", "list"]);
    assert!(left.is_empty(), "{left:?}");
    devices_match_the_store(&d);
}

/// dvdcli's calls (Get, Create, Mount with no ID, ...) for volume `dv`, by its inline spec
/// as dvdcli sends it; with `restart`, the daemon is killed and started between the Mounts.
fn dvdcli_conversation(d: &mut Daemon, restart: bool) {
    let spec = "size=256M,name=dv";
    let activated = call("/Plugin.Activate", json!({}));
    assert_eq!(activated, json!({ "Implements": ["VolumeDriver"] }));
    let caps = call("/VolumeDriver.Capabilities", json!({}));
    assert_eq!(caps["Capabilities"]["Scope"], "global");

    let missing = call("/VolumeDriver.Get", json!({ "Name": spec }));
    assert!(
        missing["Err"]
            .as_str()
            .is_some_and(|e| e.contains("no volume")),
        "{missing}"
    );
    ok("/VolumeDriver.Create", json!({ "Name": spec, "Opts": {} }));
    ok("/VolumeDriver.Create", json!({ "Name": spec, "Opts": {} }));
    let got = ok("/VolumeDriver.Get", json!({ "Name": spec }));
    assert_eq!(got["Volume"]["Name"], spec);
    assert_eq!(got["Volume"]["Mountpoint"], "");

    let first = ok("/VolumeDriver.Mount", json!({ "Name": spec }));
    let at = first["Mountpoint"].as_str().expect("Mountpoint").to_owned();
    assert!(mounted(&at), "not mounted at {at}");
    if restart {
        d.kill();
        d.start();
    }
    let second = ok("/VolumeDriver.Mount", json!({ "Name": spec }));
    assert_eq!(second["Mountpoint"], at.as_str());
    ok("/VolumeDriver.Unmount", json!({ "Name": spec }));
    assert!(mounted(&at), "the first Unmount of two unmounted");
    let path = ok("/VolumeDriver.Path", json!({ "Name": spec }));
    assert_eq!(path["Mountpoint"], at.as_str());
    ok("/VolumeDriver.Unmount", json!({ "Name": spec }));
    assert!(!mounted(&at), "still mounted after the last Unmount");
    let path = ok("/VolumeDriver.Path", json!({ "Name": spec }));
    assert_eq!(path["Mountpoint"], "");
    let list = ok("/VolumeDriver.List", json!({}));
    let names: Vec<&str> = list["Volumes"]
        .as_array()
        .expect("Volumes")
        .iter()
        .filter_map(|v| v["Name"].as_str())
        .collect();
    assert!(names.contains(&"dv"), "{list}");
    assert!(list["Volumes"][0]["Mountpoint"].is_string(), "{list}");
    ok("/VolumeDriver.Remove", json!({ "Name": spec }));
    let gone = call("/VolumeDriver.Get", json!({ "Name": "dv" }));
    assert_ne!(gone["Err"], "", "{gone}");
    eprintln!(
        "dvdcli conversation{}: two unnamed mounts counted, unmounted on the last",
        if restart {
            " across a daemon restart"
        } else {
            ""
        }
    );
}
