//! `cargo xtask bench [storage|cluster]`: benchmarks that report numbers and assert nothing.
//!
//! - `storage` (the default): pxd's device stacks as ratios to the raw disk, in one VM run.
//! - `cluster`: metadata commits per second and p50/p99 commit latency on a three-node
//!   cluster of real daemons in network namespaces (needs root for `ip netns`). It runs the
//!   `bench_cluster` test target of pxd-tests, which prints the figures.

use crate::cmd;
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value = "storage")]
    pub what: Bench,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bench {
    /// fio on the raw disk, thin volumes and crypt on thin, as ratios to the raw disk.
    Storage,
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
        Bench::Storage => crate::bench_storage::run(),
        Bench::Cluster => cluster(),
    }
}

fn cluster() -> Result<i32> {
    anyhow::ensure!(
        cmd::is_root(),
        "the cluster benchmark needs root (it puts each node in its own network namespace)"
    );
    // The test runs the daemon binary, which `cargo test` does not build for another package.
    let mut build = cargo();
    build.args(["build", "-p", "pxd", "--bins"]);
    println!("$ {}", cmd::show(&build));
    cmd::run(&mut build)?;
    let mut bench = cargo();
    bench.args([
        "test",
        "-p",
        "pxd-tests",
        "--test",
        "bench_cluster",
        "--",
        "--nocapture",
    ]);
    println!("$ {}", cmd::show(&bench));
    cmd::run(&mut bench)?;
    Ok(0)
}
