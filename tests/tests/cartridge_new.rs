//! `gear cartridge new`: the crate it writes builds outside this repository,
//! against the SDK it vendors, passes `gear cartridge check` and its own
//! tests; and `gear cartridge new` never overwrites a directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gearhost_tests::{gear_bin, workspace_root};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn gear(args: &[&str], cache: &Path) -> Output {
    Command::new(gear_bin())
        .args(args)
        .env("GEARHOST_CACHE_DIR", cache)
        .env_remove("GEARHOST_LOG")
        .output()
        .expect("run gear")
}

/// Where the new crates are built: inside this repository's target directory,
/// so their dependencies (wit-bindgen above all) are built once, not per run.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("cartridge-new")
}

/// Run cargo in `dir` with `args`: offline first (the registry cache has what
/// the SDK needs whenever this workspace was built), then online if that
/// could not resolve.
fn cargo(dir: &Path, args: &[&str]) -> Output {
    let run = |offline: bool| {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(dir)
            .args(args)
            .env("CARGO_TARGET_DIR", target_dir())
            // the outer cargo's settings are for this workspace's host build
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_MANIFEST_DIR");
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().expect("run cargo")
    };
    let out = run(true);
    if !out.status.success() && text(&out.stderr).contains("offline") {
        return run(false);
    }
    out
}

#[test]
fn a_new_cartridge_builds_checks_and_tests_outside_the_repository() {
    let outside = tempfile::Builder::new()
        .prefix("gear-cartridge-new-")
        .tempdir_in(std::env::temp_dir())
        .expect("temporary directory");
    let root = workspace_root().canonicalize().expect("workspace root");
    let parent = outside.path().canonicalize().expect("temporary directory");
    assert!(
        !parent.starts_with(&root),
        "{} is inside the repository; the test needs a directory outside it",
        parent.display()
    );
    let cache = tempfile::tempdir().expect("cache");
    let dir = parent.join("hello-site");
    let dir_arg = dir.to_str().expect("utf-8");

    let out = gear(
        &["cartridge", "new", "hello-site", "--dir", dir_arg],
        cache.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("cargo build --target wasm32-wasip2 --release"));
    for file in [
        "Cargo.toml",
        "cartridge.toml",
        "src/lib.rs",
        "README.md",
        "vendor/gearhost-sdk/Cargo.toml",
        "vendor/gearhost-sdk/wit/cartridge.wit",
    ] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }
    // nothing in it reaches back into a workspace
    for manifest in ["Cargo.toml", "vendor/gearhost-sdk/Cargo.toml"] {
        let content = std::fs::read_to_string(dir.join(manifest)).expect("manifest");
        assert!(
            !content.contains("workspace = true") && !content.contains(".workspace"),
            "{manifest} inherits from a workspace:\n{content}"
        );
    }

    // the hooks component, built where an author would build it
    let built = cargo(&dir, &["build", "--target", "wasm32-wasip2", "--release"]);
    assert!(
        built.status.success(),
        "cargo build of the new cartridge failed:\n{}",
        text(&built.stderr)
    );
    let wasm = target_dir().join("wasm32-wasip2/release/hello_site.wasm");
    std::fs::copy(&wasm, dir.join("hooks.wasm")).expect("copy hooks.wasm");

    let out = gear(&["cartridge", "check", dir_arg, "--json"], cache.path());
    assert!(
        out.status.success(),
        "gear cartridge check refused the new cartridge:\n{}",
        text(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["manifest"]["name"], "hello-site");
    assert_eq!(summary["manifest"]["endpoints"][0]["private-port"], 8080);

    // its hooks run: build records what was deployed (nothing, standalone)
    let out = gear(&["cartridge", "call", dir_arg, "build"], cache.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nothing deployed yet"),
        "{}",
        text(&out.stderr)
    );
    let out = gear(
        &[
            "cartridge",
            "call",
            dir_arg,
            "control",
            "--action",
            "status",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("web: not started"),
        "{}",
        text(&out.stdout)
    );

    // and its own unit tests pass
    let tested = cargo(&dir, &["test"]);
    assert!(
        tested.status.success(),
        "cargo test of the new cartridge failed:\n{}{}",
        text(&tested.stdout),
        text(&tested.stderr)
    );
    assert!(
        text(&tested.stdout).contains("test result: ok. 3 passed"),
        "{}",
        text(&tested.stdout)
    );
}

#[test]
fn new_never_overwrites_and_checks_the_name() {
    let outside = tempfile::tempdir().expect("temporary directory");
    let cache = tempfile::tempdir().expect("cache");
    let dir = outside.path().join("taken");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("notes.txt"), "mine").expect("write");
    let dir_arg = dir.to_str().expect("utf-8");

    let out = gear(
        &["cartridge", "new", "taken", "--dir", dir_arg],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).expect("still there"),
        "mine"
    );
    assert!(!dir.join("Cargo.toml").exists());

    let elsewhere = outside.path().join("fresh");
    let out = gear(
        &[
            "cartridge",
            "new",
            "Not_A_Name",
            "--dir",
            elsewhere.to_str().expect("utf-8"),
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("invalid cartridge name"),
        "{}",
        text(&out.stderr)
    );
    assert!(!elsewhere.exists());
}
