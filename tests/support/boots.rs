//! Host-tier tests that boot guests themselves, several times on the same disk images (a
//! power cut, disks renumbered between boots): the `xtask vm` runner and the guest's shell.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/debug`, from the running test binary's path (`target/debug/deps/<test>-*`).
pub fn target_debug() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// The `pxd` binary the guest runs, built by `cargo xtask test`.
pub fn pxd() -> String {
    let pxd = target_debug().join("pxd");
    assert!(
        pxd.exists(),
        "{} is missing: build pxd first",
        pxd.display()
    );
    pxd.display().to_string()
}

/// Boots one guest with `args` (disks, shares, `--`, command) and waits for it; returns its
/// exit code and everything it printed.
pub fn xtask_vm(args: &[String], timeout: u32) -> (i32, String) {
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
        .expect("run xtask vm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The shell of one boot: start the daemon over the data directory in `share` (with extra
/// daemon flags `flags`), wait for its API, then run `then`. `$P` is the CLI, `$D` the
/// daemon's pid.
pub fn boot_script(pxd: &str, share: &str, flags: &str, then: &str) -> String {
    format!(
        "P='{pxd} --socket /tmp/pxd.sock'; \
         $P daemon --data-dir {share}/data --addr 127.0.0.1 --mount-root /mnt/pxd {flags} \
            >>{share}/daemon.log 2>&1 & \
         D=$!; until $P cluster status >/dev/null 2>&1; do sleep 0.5; done; {then}"
    )
}
