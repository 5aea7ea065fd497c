//! The `herald` binary: parse, run, exit. Everything else lives in the library.

use std::process::ExitCode;

use herald_core::settings::ProcessEnv;
use herald_runtime::cli::parse_command_line;
use herald_sidecar::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli: Cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(status) => return ExitCode::from(status),
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
    match runtime.block_on(herald_sidecar::cli::run(cli, &ProcessEnv)) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
