//! The `gear` binary: a thin shell over the `gearhost_cli` library. It is linked as a static
//! PIE (see `scripts/rustc-wrapper`): every start skips the dynamic loader and shared libraries.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    gearhost_cli::main()
}
