//! `cargo xtask bench storage|crypt-params|thin-params`: pxd's stacks beside the raw disk and
//! the peers (LVM thin, LUKS2), or pxd's crypt layer under each candidate setting, or one
//! thin pool per dm-thin candidate, in one VM run with three disks: raw (sliced into the
//! candidates' pools for `thin-params`), pxd's pool, the peers'. Speed is reported here,
//! never asserted in tests.

use crate::cmd;
use anyhow::Result;
use std::process::Command;

/// `mode` is `storage`, `crypt-params` or `thin-params`; `quick` runs each job once.
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
    // Five pools of up to 1.1 GiB each (a written device, and a new or snapshotted one).
    let raw_disk = if mode == "thin-params" { "8G" } else { "4G" };
    println!(
        "xtask bench: one VM, three disks (raw {raw_disk}, pxd's pool, the peers'), {reps} \
         repetition(s) of 5 s jobs interleaved: about {} minutes",
        match mode {
            "crypt-params" => 2 + 6 * reps / 5,
            "thin-params" => 3 + 15 * reps / 5,
            _ => 4 + 10 * reps / 5,
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
        disks: vec![raw_disk.into(), "4G".into(), "4G".into()],
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
