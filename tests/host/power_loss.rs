//! Host tier, driving two VMs: power loss. In the first guest a real `pxd daemon` pools the
//! disk and mounts an encrypted ext4 volume, and fsync'ed records are written until the VM is
//! killed (no shutdown, no sync). A second guest boots on the same disk image and data
//! directory: its daemon must bring back the pool and the volume, mounted, with the same
//! `volume list`, every acknowledged record, and pool metadata clean under thin_check.

use pxd_tests::boots::{boot_script, target_debug, xtask_vm};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Counts the acknowledged records so far.
fn acked(acks: &Path) -> usize {
    std::fs::read_to_string(acks)
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn pools_volumes_and_fsynced_data_survive_a_power_cut() {
    let work = target_debug().join(format!("power-loss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let acks = work.join("acks");
    let disk = format!("{}=1G", work.join("disk0.img").display());
    let pxd = pxd_tests::boots::pxd();
    let powerloss = env!("CARGO_BIN_EXE_pxd-test-powerloss");
    let share = work.display().to_string();
    let a = acks.display();

    // First boot: a one-node cluster pools the disk and mounts an encrypted volume, then
    // records are written until the power is cut.
    let first = boot_script(
        &pxd,
        &share,
        "",
        &format!(
            "$P cluster init --name pl && $P drive add /dev/vda && \
             $P volume create pl --size 256M --secure && $P volume mount pl && \
             $P --json volume list >{share}/before.json && \
             exec {powerloss} write /mnt/pxd/pl {a}"
        ),
    );
    let xtask = target_debug().join("xtask");
    let mut vm = Command::new(&xtask)
        .args(["vm", "--timeout", "900", "--disk", &disk, "--share", &share])
        .args(["--", "sh", "-c", &first])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // Cut the power (SIGKILL to qemu and its runner) once enough writes were acknowledged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    while acked(&acks) < 200 {
        if let Some(status) = vm.try_wait().unwrap() {
            let out = vm.wait_with_output().unwrap();
            panic!(
                "the first VM ended ({status}) before the power cut:\n{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(work.join("daemon.log")).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no writes within 900 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: signalling the process group this test made for the runner and its qemu.
    unsafe { libc::kill(-(vm.id() as i32), libc::SIGKILL) };
    let _ = vm.wait();
    let acked_before = acked(&acks);

    // Second boot on the same disk and data directory: the daemon brings the pool and the
    // volume back and mounts it where it was; then every acknowledged record is checked.
    let second = boot_script(
        &pxd,
        &share,
        "",
        &format!(
            "until grep -q ' /mnt/pxd/pl ' /proc/mounts; do sleep 0.5; done && \
             $P --json volume list >{share}/after.json && kill $D && wait $D; \
             {powerloss} verify /mnt/pxd/pl {a}"
        ),
    );
    let args: Vec<String> = [
        "--disk", &disk, "--share", &share, "--", "sh", "-c", &second,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, out) = xtask_vm(&args, 900);
    assert_eq!(
        code,
        0,
        "after the power cut:\n{out}\n{}",
        std::fs::read_to_string(work.join("daemon.log")).unwrap_or_default()
    );
    assert!(out.contains("acknowledged records intact"), "{out}");
    assert!(out.contains("thin_check clean"), "{out}");
    let before = std::fs::read_to_string(work.join("before.json")).unwrap();
    let after = std::fs::read_to_string(work.join("after.json")).unwrap();
    assert_eq!(
        before, after,
        "the volume list changed across the power cut"
    );
    println!("{acked_before} records acknowledged before the cut; {out}");
    std::fs::remove_dir_all(&work).unwrap();
}
