//! The `gearhost-node` program as an operator meets it: its version, and a
//! configuration it refuses before it touches anything. (The node at work
//! is tested end to end in the `gearhost-tests` crate, started through
//! `gear node run`, which runs this program.)

use std::process::Command;

fn node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gearhost-node"))
}

#[test]
fn it_says_its_version() {
    let out = node().arg("--version").output().expect("run gearhost-node");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("gearhost-node {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_configuration_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "state-dir = \"relative/path\"\nnot-a-key = 1\n").expect("write");
    let out = node()
        .arg("--config")
        .arg(&config)
        .env_remove("GEARHOST_CONFIG")
        .output()
        .expect("run gearhost-node");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("not-a-key"), "the unknown key is named: {err}");
    // nothing was created next to the configuration
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    assert_eq!(left.len(), 1, "{left:?}");

    let missing = node()
        .arg("--config")
        .arg(dir.path().join("absent.toml"))
        .output()
        .expect("run gearhost-node");
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("absent.toml"));
}
