//! The `pxd` binary: `pxd daemon` runs the node; every other command is a client of its API
//! (DESIGN §8).

use clap::Parser;
use pxd::cli::{exit, Cli, Command};

fn main() {
    // Die quietly when stdout is a closed pipe (`pxd node list | head`), as other tools do.
    // SAFETY: setting a signal's disposition to SIG_DFL has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Daemon(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info,openraft=warn".into()),
                )
                .init();
            match pxd::daemon::run(args.clone(), cli.socket.clone()) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("pxd: error: {:#}", anyhow::Error::from(e));
                    exit::FAILED
                }
            }
        }
        Command::Completions { shell } => {
            // Needs no daemon: the script is made from the CLI's own definition.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "pxd", &mut std::io::stdout());
            exit::OK
        }
        _ => match pxd::cli::run(&cli) {
            Ok(()) => exit::OK,
            Err(e) => {
                let code = e.exit_code();
                eprintln!("pxd: error: {:#}", anyhow::Error::from(e));
                code
            }
        },
    };
    std::process::exit(code);
}
