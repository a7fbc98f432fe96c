//! The `pxd` binary. Commands arrive with the capabilities behind them (DESIGN §8).

use clap::Parser;

/// pxd: a storage node for containers whose data path is the kernel's device-mapper.
#[derive(Parser, Debug)]
#[command(name = "pxd", version, about)]
struct Cli {}

fn main() {
    Cli::parse();
}
