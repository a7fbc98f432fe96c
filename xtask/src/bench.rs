//! `cargo xtask bench [--quick] [all|storage|params|replication|cluster]`: benchmarks that
//! report numbers and assert nothing.
//!
//! - `all` (the default): `storage`, `replication`, then `control`.
//! - `storage`: pxd thin and pxd crypt on thin beside the raw disk, LVM thin and LUKS2 on LVM
//!   thin, each figure the median of 5 interleaved repetitions with its range, as ratios to
//!   the raw disk and to the peer, in one VM run.
//! - `params`: `crypt-params`, then `thin-params`: the measurements the defaults are chosen
//!   by. `crypt-params` runs pxd's crypt layer under each candidate dm-crypt setting, beside
//!   LUKS2, the same way; `thin-params` one pool per dm-thin candidate (chunk size, block
//!   zeroing, discard passdown) on slices of one disk, for first writes, writes after a
//!   snapshot, overwrites, reads and discards.
//! - `replication`: 4k random IOPS of 2- and 3-way replicated volumes as ratios to a local
//!   volume, beside raid1 over an NBD leg served by `nbd-server`, in one VM run. It runs the
//!   `bench_replication` test target of pxd-tests in the guest, which prints the figures.
//! - `control`: on a release build in the VM, 50 ext4 volumes created and mounted,
//!   snapshotted, cloned, unmounted and deleted through the CLI: each step's p50 and p99, and
//!   the Raft entries applied a second. It runs the `control_plane` test of `bench_control`.
//! - `scale`: the same build, raw volumes up to 10, 100 and 1,000 on one node: create and
//!   delete p50/p99, idle CPU, RSS and data-directory size at each size, the time from a
//!   restart until the node serves, and the footprint after deleting them all. It runs the
//!   `scale` test of `bench_control` (about 40 minutes today).
//! - `cluster`: metadata commits per second and p50/p99 commit latency on a three-node
//!   cluster of real daemons in network namespaces (needs root for `ip netns`). It runs the
//!   `bench_cluster` test target of pxd-tests, which prints the figures.

use crate::cmd;
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value = "all")]
    pub what: Bench,
    /// One repetition of each job instead of five: a smoke run, not figures to rank by.
    #[arg(long)]
    pub quick: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bench {
    /// storage, then replication.
    All,
    /// pxd thin and crypt on thin beside the raw disk, LVM thin and LUKS2.
    Storage,
    /// crypt-params, then thin-params.
    Params,
    /// pxd's crypt layer under each candidate dm-crypt setting, beside LUKS2.
    CryptParams,
    /// One thin pool per candidate chunk size, zeroing and discard passdown setting.
    ThinParams,
    /// Replicated volumes and raid1 over nbd-server, as ratios to a local volume.
    Replication,
    /// Volume create, snapshot, clone and delete latency on a release build, and Raft's rate.
    Control,
    /// Volume operations, idle CPU, RSS and restart time at 10, 100 and 1,000 volumes.
    Scale,
    /// Raft metadata commits on three nodes: commits per second, p50 and p99 latency.
    Cluster,
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(crate::workspace_root());
    c
}

pub fn run(args: &BenchArgs) -> Result<i32> {
    match args.what {
        Bench::All => {
            let storage = crate::bench_storage::run("storage", args.quick)?;
            let replication = replication()?;
            Ok(storage.max(replication).max(control("control_plane")?))
        }
        Bench::Storage => crate::bench_storage::run("storage", args.quick),
        Bench::Params => {
            let crypt = crate::bench_storage::run("crypt-params", args.quick)?;
            Ok(crypt.max(crate::bench_storage::run("thin-params", args.quick)?))
        }
        Bench::CryptParams => crate::bench_storage::run("crypt-params", args.quick),
        Bench::ThinParams => crate::bench_storage::run("thin-params", args.quick),
        Bench::Replication => replication(),
        Bench::Control => control("control_plane"),
        Bench::Scale => control("scale"),
        Bench::Cluster => cluster(),
    }
}

/// One test of `bench_control` in the VM, with a release build of pxd and of the test: the
/// daemon's own speed is the figure, not a debug build's.
fn control(test: &str) -> Result<i32> {
    crate::setup::run()?;
    println!("xtask bench: a release build, then one VM with one 4 GiB disk");
    let mut build = cargo();
    build.args(["build", "--release", "-p", "pxd", "--bins"]);
    println!("$ {}", cmd::show(&build));
    cmd::run(&mut build)?;
    let mut bench = cargo();
    bench
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER",
            crate::test::vm_runner_for(&["4G"], Some(3 * 3600))?,
        )
        .args([
            "test",
            "--release",
            "-p",
            "pxd-tests",
            "--test",
            "bench_control",
            "--",
            "--nocapture",
            "--exact",
            test,
        ]);
    println!("$ {}", cmd::show(&bench));
    cmd::run(&mut bench)?;
    Ok(0)
}

/// Three daemons in one guest: the test target runs there, with cargo's runner booting it.
fn replication() -> Result<i32> {
    crate::setup::run()?;
    println!("xtask bench: one VM, three daemons on three 2 GiB disks, about 5 minutes");
    bench_target(
        "bench_replication",
        Some(crate::test::vm_runner(&["2G", "2G", "2G"])?),
    )
}

fn cluster() -> Result<i32> {
    anyhow::ensure!(
        cmd::is_root(),
        "the cluster benchmark needs root (it puts each node in its own network namespace)"
    );
    bench_target("bench_cluster", None)
}

/// Runs test target `name` of pxd-tests, which prints its figures, through `runner` if given.
/// The daemon binary it starts is built first: `cargo test` does not build another package's.
fn bench_target(name: &str, runner: Option<String>) -> Result<i32> {
    crate::test::build_pxd()?;
    let mut bench = cargo();
    if let Some(r) = runner {
        bench.env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", r);
    }
    bench.args([
        "test",
        "-p",
        "pxd-tests",
        "--test",
        name,
        "--",
        "--nocapture",
    ]);
    println!("$ {}", cmd::show(&bench));
    cmd::run(&mut bench)?;
    Ok(0)
}
