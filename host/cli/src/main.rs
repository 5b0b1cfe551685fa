//! The `gear` binary: a thin shell over the `gearhost_cli` library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gearhost_cli::main()
}
