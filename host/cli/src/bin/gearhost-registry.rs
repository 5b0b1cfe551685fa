//! `gearhost-registry`: the registry work of `gear` (push, credentials), in a
//! program of its own so that `gear` does not link the registry client; see
//! `gearhost_cli::registry`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gearhost_cli::registry::serve()
}
