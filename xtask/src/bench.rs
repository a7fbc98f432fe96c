//! `cargo xtask bench [--quick] [all|storage|params|replication|cluster]`: benchmarks that
//! report numbers and assert nothing.
//!
//! - `all` (the default): `storage`, then `replication`.
//! - `storage`: pxd thin and pxd crypt on thin beside the raw disk, LVM thin and LUKS2 on LVM
//!   thin, each figure the median of 5 interleaved repetitions with its range, as ratios to
//!   the raw disk and to the peer, in one VM run.
//! - `params`: pxd's crypt layer under each candidate dm-crypt setting, beside LUKS2, the
//!   same way: the measurement the defaults are chosen by.
//! - `replication`: 4k random IOPS of 2- and 3-way replicated volumes as ratios to a local
//!   volume, beside raid1 over an NBD leg served by `nbd-server`, in one VM run. It runs the
//!   `bench_replication` test target of pxd-tests in the guest, which prints the figures.
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
    /// pxd's crypt layer under each candidate dm-crypt setting, beside LUKS2.
    Params,
    /// Replicated volumes and raid1 over nbd-server, as ratios to a local volume.
    Replication,
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
            Ok(storage.max(replication()?))
        }
        Bench::Storage => crate::bench_storage::run("storage", args.quick),
        Bench::Params => crate::bench_storage::run("params", args.quick),
        Bench::Replication => replication(),
        Bench::Cluster => cluster(),
    }
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
