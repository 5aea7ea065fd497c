//! The `herald-injector` binary: parse, run, exit. Everything else lives in the library.

use std::process::ExitCode;

use herald_injector::config::Cli;
use herald_sidecar::config::{ProcessEnv, parse_command_line};

fn main() -> ExitCode {
    let cli: Cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(status) => return ExitCode::from(status),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-injector: cannot start the async runtime: {e}");
            return ExitCode::from(71);
        }
    };
    match runtime.block_on(herald_injector::app::main(cli, &ProcessEnv)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-injector: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
