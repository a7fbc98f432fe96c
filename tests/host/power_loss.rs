//! Host tier, driving two VMs: power loss. The first guest brings up a pool and an encrypted
//! ext4 volume with the reconciler and writes fsync'ed records until its VM is killed (no
//! shutdown, no sync). A second guest boots on the same disk images, reconciles from the same
//! desired state, and must find the pool, the volume and every acknowledged record, with the
//! pool's metadata clean under thin_check.

use pxd::crypt::{ClusterKey, VolumeKey};
use pxd::reconcile::desired::{NodeState, Phase, PoolState, VolumeState};
use pxd::volume::spec::Fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/debug`, from this test binary's path (`target/debug/deps/host_power_loss-*`).
fn target_debug() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn xtask_vm(args: &[String], timeout: u32) -> (i32, String) {
    let xtask = target_debug().join("xtask");
    assert!(
        xtask.exists(),
        "{} is missing: run this tier through `cargo xtask test`",
        xtask.display()
    );
    let out = Command::new(&xtask)
        .arg("vm")
        .args(["--timeout", &timeout.to_string()])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn pools_volumes_and_fsynced_data_survive_a_power_cut() {
    let work = target_debug().join(format!("power-loss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let (state, key, acks) = (
        work.join("state.json"),
        work.join("cluster.key"),
        work.join("acks"),
    );
    let disk = format!("{}=1G", work.join("disk0.img").display());

    let cluster = ClusterKey::load_or_create(&key).unwrap();
    let node = NodeState {
        node: "pl".into(),
        pools: vec![PoolState {
            id: "p0".into(),
            drives: vec!["/dev/vda".into()],
            chunk_sectors: 512,
        }],
        volumes: vec![VolumeState {
            id: "v1".into(),
            pool: "p0".into(),
            thin_id: 1,
            size_bytes: 256 << 20,
            fs: Fs::Ext4,
            formatted: false,
            key: Some(cluster.wrap(&VolumeKey::generate().unwrap(), "v1").unwrap()),
            snapshots: vec![],
            phase: Phase::Live,
            ..Default::default()
        }],
        mount_root: None,
    };
    std::fs::write(&state, serde_json::to_vec_pretty(&node).unwrap()).unwrap();

    let reconcile = env!("CARGO_BIN_EXE_pxd-test-reconcile");
    let powerloss = env!("CARGO_BIN_EXE_pxd-test-powerloss");
    let (s, k, a) = (state.display(), key.display(), acks.display());
    let mnt = "/mnt/pxd-pl";
    let dev = "/dev/mapper/pxd-pl-crypt-v1";

    // First boot: build, mount, write until the power is cut (the runner's timeout kills qemu).
    let first = format!(
        "{reconcile} {s} {k} && mkdir -p {mnt} && mount {dev} {mnt} && exec {powerloss} write {mnt} {a}"
    );
    let share = work.display().to_string();
    let args: Vec<String> = ["--disk", &disk, "--share", &share, "--", "sh", "-c", &first]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (code, out) = xtask_vm(&args, 60);
    assert_eq!(
        code, 124,
        "the first VM should have run until killed:\n{out}"
    );
    let acked = std::fs::read_to_string(&acks)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        acked > 0,
        "no record was acknowledged before the power cut:\n{out}"
    );

    // Second boot on the same disk: reconcile from the same desired state, verify, check.
    let second = format!(
        "{reconcile} {s} {k} && mkdir -p {mnt} && mount {dev} {mnt} && {powerloss} verify {mnt} {a} {s}"
    );
    let args: Vec<String> = [
        "--disk", &disk, "--share", &share, "--", "sh", "-c", &second,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, out) = xtask_vm(&args, 600);
    assert_eq!(code, 0, "after the power cut:\n{out}");
    assert!(out.contains("acknowledged records intact"), "{out}");
    assert!(out.contains("thin_check clean"), "{out}");
    println!("{acked} records acknowledged before the cut; {out}");
    std::fs::remove_dir_all(&work).unwrap();
}
