//! `cargo xtask bench` (storage): pxd's stacks against the raw disk, in one VM run, as ratios
//! to the raw device. Speed is reported here, never asserted in tests.

use crate::cmd;
use anyhow::Result;
use std::process::Command;

pub fn run() -> Result<i32> {
    crate::setup::run()?;
    let root = crate::workspace_root();
    cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "pxd", "--example", "bench_stacks"]),
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out_dir = target.join("bench");
    let out = out_dir.join("storage.json");
    let program = target.join("debug/examples/bench_stacks");
    println!("xtask bench: one VM, two 4 GiB disks (raw, and the pool's), about 2 minutes");
    crate::vm::run(&crate::vm::VmArgs {
        disks: vec!["4G".into(), "4G".into()],
        net: false,
        timeout: 1800,
        mem: 2048,
        cpus: 2,
        shares: vec![out_dir],
        env: Vec::new(),
        verbose: false,
        keep: false,
        command: vec![
            program.to_string_lossy().into_owned(),
            "/dev/vda".into(),
            "/dev/vdb".into(),
            out.to_string_lossy().into_owned(),
        ],
    })
}
