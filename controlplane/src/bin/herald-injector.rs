//! `herald-injector`: the control plane's name in earlier releases, kept for one release so
//! charts and scripts that call it keep working. Exactly `herald-controlplane`.

fn main() -> std::process::ExitCode {
    herald_controlplane::app::entry()
}
