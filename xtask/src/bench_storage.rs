//! `cargo xtask bench storage|params`: pxd's stacks beside the raw disk and the peers (LVM
//! thin, LUKS2), or pxd's crypt layer under each candidate setting, in one VM run with three
//! disks: raw, pxd's pool, the peers'. Speed is reported here, never asserted in tests.

use crate::cmd;
use anyhow::Result;
use std::process::Command;

/// `mode` is `storage` or `params`; `quick` runs each job once.
pub fn run(mode: &str, quick: bool) -> Result<i32> {
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
    let out = out_dir.join(format!("{mode}.json"));
    let program = target.join("debug/examples/bench_stacks");
    let reps = if quick { 1 } else { 5 };
    println!(
        "xtask bench: one VM, three 4 GiB disks (raw, pxd's pool, the peers'), {reps} \
         repetition(s) of 5 s jobs interleaved: about {} minutes",
        if mode == "params" {
            2 + 6 * reps / 5
        } else {
            4 + 10 * reps / 5
        }
    );
    let mut command = vec![program.to_string_lossy().into_owned()];
    if quick {
        command.push("--quick".into());
    }
    command.extend([
        mode.into(),
        "/dev/vda".into(),
        "/dev/vdb".into(),
        "/dev/vdc".into(),
    ]);
    command.push(out.to_string_lossy().into_owned());
    crate::vm::run(&crate::vm::VmArgs {
        disks: vec!["4G".into(), "4G".into(), "4G".into()],
        net: false,
        timeout: 1800,
        mem: 2048,
        cpus: 2,
        shares: vec![out_dir],
        env: Vec::new(),
        verbose: false,
        keep: false,
        command,
    })
}
