//! Command-line parsing shared by herald's binaries.

use clap::Parser;

/// Parses the command line of a herald binary. On `--help` or `--version` it prints and returns
/// `Err(0)`; on misuse it prints the error and returns `Err(64)`.
pub fn parse_command_line<C: Parser>() -> Result<C, u8> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
            _ => 64,
        }
    })
}
