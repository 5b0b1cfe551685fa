//! The `gear` binary on its own, without a node: every subcommand documents
//! itself, and a missing node is reported with advice and exit code 4.
//!
//! Having an integration test here also makes `cargo test --workspace` build
//! the `gear` binary that the end-to-end tests in `tests/` drive.

use std::process::{Command, Output};

fn gear(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gear"))
        .args(args)
        .env_remove("GEARHOST_SOCKET")
        .output()
        .expect("run gear")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The subcommands listed by `gear --help`, read from its "Commands:" table.
fn listed_subcommands() -> Vec<String> {
    let out = gear(&["--help"]);
    assert!(out.status.success(), "gear --help failed: {out:?}");
    let help = text(&out.stdout);
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .filter(|name| name != "help")
        .collect()
}

#[test]
fn every_subcommand_has_help_with_usage_and_a_description() {
    let subcommands = listed_subcommands();
    for expected in [
        "create",
        "deploy",
        "start",
        "stop",
        "logs",
        "exec",
        "cartridge",
        "node",
    ] {
        assert!(
            subcommands.iter().any(|s| s == expected),
            "`gear --help` does not list `{expected}`: {subcommands:?}"
        );
    }
    for sub in &subcommands {
        let out = gear(&[sub, "--help"]);
        let help = text(&out.stdout);
        assert!(out.status.success(), "gear {sub} --help failed: {out:?}");
        assert!(
            help.contains(&format!("Usage: gear {sub}")),
            "gear {sub} --help has no usage line:\n{help}"
        );
        let description = help.lines().next().unwrap_or_default();
        assert!(
            !description.trim().is_empty() && !description.starts_with("Usage"),
            "gear {sub} --help does not start with a description:\n{help}"
        );
    }
}

#[test]
fn version_names_the_crate_version() {
    let out = gear(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("gear {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn without_a_node_commands_say_how_to_start_one_and_exit_4() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("node.sock");
    let socket = socket.to_str().expect("utf-8 temp path");
    for args in [
        vec!["list"],
        vec!["show", "web"],
        vec!["create", "web", "--cartridge", "static"],
    ] {
        let mut full = args.clone();
        full.extend(["--socket", socket]);
        let out = gear(&full);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "gear {args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("no node is running at {socket}"))
                && stderr.contains("gear node run"),
            "gear {args:?} gave no advice: {stderr}"
        );
    }
}

#[test]
fn usage_mistakes_exit_2_and_name_the_problem() {
    let out = gear(&["create"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("<NAME>") || stderr.contains("required"),
        "{stderr}"
    );

    let out = gear(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no-such-command"));
}
