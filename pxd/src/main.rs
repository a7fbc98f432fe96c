//! The `pxd` binary: `pxd daemon` runs the node; every other command is a client of its API
//! (DESIGN §8).

use clap::Parser;
use pxd::cli::{Cli, Command};

fn main() {
    // Die quietly when stdout is a closed pipe (`pxd node list | head`), as other tools do.
    // SAFETY: setting a signal's disposition to SIG_DFL has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match &cli.command {
        Command::Daemon(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,openraft=warn".into()),
                )
                .init();
            pxd::daemon::run(args.clone(), cli.socket.clone()).map_err(Into::into)
        }
        Command::Completions { shell } => {
            // Needs no daemon: the script is made from the CLI's own definition.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "pxd", &mut std::io::stdout());
            Ok(())
        }
        _ => pxd::cli::run(&cli).map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("pxd: error: {e:#}");
        std::process::exit(1);
    }
}
