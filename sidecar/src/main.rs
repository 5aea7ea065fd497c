//! The `herald` binary: parse, run, exit. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use herald_sidecar::config::{Cli, Command, ProcessEnv};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(64);
        }
    };
    // The sidecar runs on one thread: a publish is mostly waiting on two sockets, and one thread
    // avoids cross-thread wake-ups and allocator contention (docs/BENCHMARKS.md has the numbers).
    // The load generator of `herald bench` needs every core it can get.
    let mut builder = match &cli.command {
        Command::Bench { .. } => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::from(71);
        }
    };
    match runtime.block_on(herald_sidecar::app::main(cli, &ProcessEnv)) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
