//! The real `gear` binary's developer commands: `gear cartridge check` and
//! `gear cartridge call`, with their output, JSON and exit codes.

use std::path::Path;
use std::process::{Command, Output};

use gearhost_tests::{cartridge_dir, gear_bin};

fn gear(args: &[&str], cache: &Path) -> Output {
    Command::new(gear_bin())
        .args(args)
        .env("GEARHOST_CACHE_DIR", cache)
        .env_remove("GEARHOST_LOG")
        .output()
        .expect("run gear")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_summarises_a_valid_cartridge() {
    let pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let dir = pkg.path().to_str().expect("utf-8");
    let out = gear(&["cartridge", "check", dir], cache.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in [
        "is a valid cartridge",
        "full",
        "gearhost:cartridge@0.1.0",
        "build, start, stop, control",
        "http:8080",
        "echo, /bin/cat",
        "compiled",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // the second check loads from the cache
    let out = gear(&["cartridge", "check", dir, "--json"], cache.path());
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["ok"], true);
    assert_eq!(json["manifest"]["name"], "full");
    assert_eq!(json["component"]["cache"], "hit");
    assert_eq!(json["manifest"]["permissions"]["build-network"], false);
}

#[test]
fn check_refuses_bad_cartridges_with_exit_code_3_and_advice() {
    let cache = tempfile::tempdir().expect("cache");
    // a manifest mistake names the file, line and field
    let pkg = cartridge_dir("guest-full");
    let manifest = pkg.path().join("cartridge.toml");
    let text_before = std::fs::read_to_string(&manifest).expect("manifest");
    std::fs::write(
        &manifest,
        text_before.replace("private-port = 8080", "private-port = \"eighty\""),
    )
    .expect("write");
    let out = gear(
        &["cartridge", "check", pkg.path().to_str().expect("utf-8")],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cartridge.toml:"), "{stderr}");
    assert!(stderr.contains("endpoints[0].private-port"), "{stderr}");
    assert!(stderr.contains("help:"), "{stderr}");

    // a component for another contract version
    let next = cartridge_dir("guest-wit-next");
    let out = gear(
        &["cartridge", "check", next.path().to_str().expect("utf-8")],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("0.2.0"), "{}", text(&out.stderr));

    // a directory that is no cartridge
    let empty = tempfile::tempdir().expect("empty");
    let out = gear(
        &["cartridge", "check", empty.path().to_str().expect("utf-8")],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("no cartridge manifest here"),
        "{}",
        text(&out.stderr)
    );

    // a missing hooks file says how to build it
    let pkg = cartridge_dir("guest-full");
    std::fs::remove_file(pkg.path().join("hooks.wasm")).expect("remove");
    let out = gear(
        &["cartridge", "check", pkg.path().to_str().expect("utf-8")],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("wasm32-wasip2"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn call_runs_a_hook_and_reports_what_it_did() {
    let pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let gear_dir = tempfile::tempdir().expect("gear dir");
    let dir = pkg.path().to_str().expect("utf-8");
    let home = gear_dir.path().to_str().expect("utf-8");

    let out = gear(
        &[
            "cartridge",
            "call",
            dir,
            "control",
            "--action",
            "echo",
            "--arg",
            "hello",
            "--arg",
            "world",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hello world");

    let out = gear(
        &[
            "cartridge",
            "call",
            dir,
            "build",
            "--gear-dir",
            home,
            "--json",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["hook"], "build");
    assert!(json["result"]["Ok"].is_string(), "{json}");
    assert!(
        json["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .any(|l| l["message"] == "build: ok")
    );
    assert_eq!(json["requests"][0]["request"], "env-set");
    assert_eq!(json["requests"][0]["key"], "FULL_BUILT");
    // the scratch gear directory got the usual layout and was kept
    assert!(gear_dir.path().join("app-root/repo").is_dir());

    // exec is refused without a sandbox (as root too, with --no-sandbox), and
    // the exit code says the hook failed
    let out = gear(
        &[
            "cartridge",
            "call",
            dir,
            "control",
            "--no-sandbox",
            "--action",
            "exec",
            "--arg",
            "echo",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("needs a gear sandbox"), "{stderr}");
    assert!(stderr.contains("[control asked] exec echo"), "{stderr}");
}

#[test]
fn call_explains_limits_and_crashes() {
    let cache = tempfile::tempdir().expect("cache");
    let looper = cartridge_dir("guest-loop");
    let out = gear(
        &[
            "cartridge",
            "call",
            looper.path().to_str().expect("utf-8"),
            "start",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("budget and was stopped"),
        "{}",
        text(&out.stderr)
    );

    let panicker = cartridge_dir("guest-panic");
    let out = gear(
        &[
            "cartridge",
            "call",
            panicker.path().to_str().expect("utf-8"),
            "stop",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("crashed") && stderr.contains("deliberate panic in stop"),
        "{stderr}"
    );
}

#[test]
fn call_rejects_bad_invocations() {
    let pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let dir = pkg.path().to_str().expect("utf-8");
    let out = gear(&["cartridge", "call", dir, "control"], cache.path());
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("--action"),
        "{}",
        text(&out.stderr)
    );
    let out = gear(&["cartridge", "call", dir, "deploy"], cache.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("build, start, stop, control"),
        "{}",
        text(&out.stderr)
    );
    let out = gear(
        &["cartridge", "call", dir, "build", "--gear-name", "../etc"],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(3));
}
