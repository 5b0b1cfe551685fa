//! Support shared by Gearhost's integration tests and benchmarks: building the
//! real guest crates to wasm, assembling cartridge directories from them,
//! finding the `gear` binary, and the gate for tests that need root.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory guest crates are built in. Separate from the host's target
/// directory so a test can run cargo while the outer cargo holds its lock.
pub fn guest_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("guests")
}

/// Build the guest package `package` for wasm32-wasip2 (release) once per
/// process and return the path of its component.
///
/// Panics with cargo's output when the build fails: a test that needs a
/// guest cannot run without it.
pub fn build_guest(package: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = built.get(package) {
        return path.clone();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = guest_target_dir();
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
            "--target-dir",
        ])
        .arg(&target_dir)
        // the outer cargo's settings are for the host build
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo to build a guest");
    assert!(
        output.status.success(),
        "building guest {package} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(
        path.is_file(),
        "guest {package} built but {} is missing",
        path.display()
    );
    built.insert(package.to_string(), path.clone());
    path
}

/// Where a guest's sources (and its `cartridge.toml`) live.
pub fn guest_dir(package: &str) -> PathBuf {
    let root = workspace_root();
    for base in ["tests/guests", "examples", "cartridges"] {
        let dir = root.join(base).join(package);
        if dir.join("Cargo.toml").is_file() {
            return dir;
        }
    }
    panic!("no guest crate named {package} under tests/guests, examples or cartridges");
}

/// A cartridge directory assembled from a guest crate: its `cartridge.toml`
/// and the freshly built component as `hooks.wasm`, in a temporary directory.
pub fn cartridge_dir(package: &str) -> tempfile::TempDir {
    let wasm = build_guest(package);
    let dir = tempfile::Builder::new()
        .prefix(&format!("cartridge-{package}-"))
        .tempdir()
        .expect("temporary cartridge directory");
    let src = guest_dir(package);
    std::fs::copy(
        src.join("cartridge.toml"),
        dir.path().join("cartridge.toml"),
    )
    .expect("copy manifest");
    std::fs::copy(&wasm, dir.path().join("hooks.wasm")).expect("copy component");
    dir
}

/// The `gear` binary of this build: `$GEARHOST_GEAR_BIN`, else `gear` in the
/// target directory this test binary was built into.
pub fn gear_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("GEARHOST_GEAR_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current test executable");
    // <target>/<profile>/deps/<test> -> <target>/<profile>/gear
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in <target>/<profile>/deps");
    let gear = profile_dir.join("gear");
    assert!(
        gear.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds it) \
         or build it first with `cargo build -p gearhost-cli`",
        gear.display()
    );
    gear
}

/// Whether this process may run privileged tests. When it cannot and
/// `GEARHOST_REQUIRE_PRIVILEGED=1` is set, panics (the test fails); otherwise
/// prints why the test is skipped and returns false.
pub fn privileged(reason: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if root {
        return true;
    }
    let required = std::env::var("GEARHOST_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "this test needs root ({reason}) and GEARHOST_REQUIRE_PRIVILEGED=1 forbids skipping it"
    );
    eprintln!("skipped: needs root ({reason})");
    false
}
