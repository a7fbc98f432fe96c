//! `cargo xtask demo`: what pxd does, on real device-mapper, in a VM booted from Debian's
//! kernel (this host may have no device-mapper of its own).

use crate::cmd;
use anyhow::Result;
use std::process::Command;

pub fn run() -> Result<i32> {
    crate::setup::run()?;
    println!("\nxtask demo: building pxd");
    let root = crate::workspace_root();
    cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "-p",
                "pxd",
                "--bins",
                "--example",
                "demo",
            ]),
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let demo = target.join("debug/examples/demo");
    println!(
        "xtask demo: booting Debian's kernel in qemu with two 2 GiB disks for one node and four \
         1 GiB disks for a cluster of three (one to replace a disk) (about 15 s)\n"
    );
    crate::vm::run(&crate::vm::VmArgs {
        disks: vec![
            "2G".into(),
            "2G".into(),
            "1G".into(),
            "1G".into(),
            "1G".into(),
            "1G".into(),
        ],
        net: false,
        timeout: 1500,
        mem: 2048,
        cpus: 2,
        env: Vec::new(),
        shares: Vec::new(),
        verbose: false,
        keep: false,
        command: vec![
            demo.to_string_lossy().into_owned(),
            "/dev/vda".into(),
            "/dev/vdb".into(),
            target.join("debug/pxd").to_string_lossy().into_owned(),
            "/dev/vdc".into(),
            "/dev/vdd".into(),
            "/dev/vde".into(),
            "/dev/vdf".into(),
        ],
    })
}
