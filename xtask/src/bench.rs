//! `cargo xtask bench <what>`: benchmarks that report numbers and assert nothing.
//!
//! - `cluster`: metadata commits per second and p50/p99 commit latency on a three-node
//!   cluster of real daemons in network namespaces (needs root for `ip netns`). It runs the
//!   `bench_cluster` test target of pxd-tests, which prints the figures.

use crate::cmd;
use anyhow::Result;
use std::process::Command;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub what: Bench,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bench {
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
