//! pxd's developer tasks. Run as `cargo xtask <task>`; see `cargo xtask --help`.

mod bench;
mod bench_storage;
mod cmd;
mod demo;
mod setup;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "pxd developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this host needs to build and test pxd (idempotent; seconds when done).
    Setup,
    /// Boot Debian's kernel in qemu with this host's root and run one command in it.
    Vm(vm::VmArgs),
    /// The whole suite: lint, unit, host and VM tiers, with a summary line per tier.
    Test(test::TestArgs),
    /// A single-node demo in the VM: a pool on two disks, a volume, data written and read back.
    Demo,
    /// Benchmarks that report and never assert: `all` (default: `storage`, then
    /// `replication`), `storage`, `replication` or `cluster`.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<i32> = match cli.task {
        Task::Setup => setup::run().map(|()| 0),
        Task::Vm(args) => vm::run(&args),
        Task::Test(args) => test::run(&args),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::exit(1);
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// Where xtask keeps downloads and VM state: inside `target/`, so `cargo clean` resets it.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("pxd-vm")
}
