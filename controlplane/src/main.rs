//! The `herald-controlplane` binary: parse, run, exit. Everything else lives in the library.

fn main() -> std::process::ExitCode {
    herald_controlplane::app::entry()
}
