//! `--socket` and `-N/--namespace` are global options: every command that
//! talks to the node takes them before its name as well as after it, and the
//! value reaches the command's own arguments either way.

use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use gearhost_cli::{Cli, Command};

/// Command lines of every subcommand that talks to the node, with the
/// arguments each needs.
const NODE_COMMANDS: &[&[&str]] = &[
    &["create", "web", "--cartridge", "static"],
    &["list"],
    &["show", "web"],
    &["deploy", "web", "."],
    &["build", "web"],
    &["start", "web"],
    &["stop", "web"],
    &["restart", "web"],
    &["status", "web"],
    &["control", "web", "status"],
    &["deployments", "web"],
    &["rollback", "web", "2"],
    &["env", "web", "list"],
    &["env", "web", "set", "A=1"],
    &["env", "web", "unset", "A"],
    &["logs", "web"],
    &["exec", "web"],
    &["link", "app", "db"],
    &["unlink", "app", "db"],
    &["alias", "add", "web", "www.example.com"],
    &["alias", "list", "web"],
    &["alias", "remove", "web", "www.example.com"],
    &["idle", "web"],
    &["unidle", "web"],
    &["destroy", "web", "--yes"],
    &["whoami"],
    &["namespace", "list"],
    &["namespace", "create", "team"],
    &["namespace", "delete", "team"],
    &["namespace", "add-member", "team", "alice"],
    &["namespace", "remove-member", "team", "alice"],
    &["audit"],
    &["cartridge", "list"],
    &["cartridge", "install", "."],
    &["cartridge", "remove", "static"],
    &["node", "metrics"],
];

/// What the innermost subcommand sees of `--socket` and `-N` for `argv`.
fn seen(argv: &[&str]) -> (Option<PathBuf>, Option<String>) {
    let matches = Cli::command()
        .try_get_matches_from(std::iter::once("gear").chain(argv.iter().copied()))
        .unwrap_or_else(|e| panic!("gear {argv:?} does not parse: {e}"));
    let mut inner = &matches;
    while let Some((_, sub)) = inner.subcommand() {
        inner = sub;
    }
    let socket = inner.try_get_one::<PathBuf>("socket");
    let namespace = inner.try_get_one::<String>("namespace");
    match (socket, namespace) {
        (Ok(socket), Ok(namespace)) => (socket.cloned(), namespace.cloned()),
        (socket, namespace) => {
            panic!("gear {argv:?}: the command lacks an option: {socket:?} {namespace:?}")
        }
    }
}

fn with_options(command: &[&str], before: bool) -> Vec<String> {
    let options = ["--socket", "/tmp/other.sock", "-N", "team"];
    let mut argv: Vec<&str> = Vec::new();
    if before {
        argv.extend(options);
        argv.extend(command);
    } else if let Some(dash) = command.iter().position(|w| *w == "--") {
        argv.extend(&command[..dash]);
        argv.extend(options);
        argv.extend(&command[dash..]);
    } else {
        argv.extend(command);
        argv.extend(options);
    }
    argv.into_iter().map(str::to_owned).collect()
}

#[test]
fn every_node_command_takes_socket_and_namespace_before_and_after_its_name() {
    for command in NODE_COMMANDS {
        for before in [true, false] {
            let argv = with_options(command, before);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let (socket, namespace) = seen(&argv);
            assert_eq!(
                socket.as_deref(),
                Some(std::path::Path::new("/tmp/other.sock")),
                "gear {argv:?}: the command does not see --socket"
            );
            assert_eq!(
                namespace.as_deref(),
                Some("team"),
                "gear {argv:?}: the command does not see -N"
            );
        }
    }
}

#[test]
fn the_parsed_arguments_carry_the_global_values() {
    let cli =
        Cli::try_parse_from(["gear", "-N", "team", "--socket=/s", "show", "web"]).expect("parses");
    let Command::Show(args) = cli.command else {
        panic!("not show")
    };
    assert_eq!(args.target.socket, PathBuf::from("/s"));
    assert_eq!(args.gear.to_ref().namespace, "team");

    let cli = Cli::try_parse_from(["gear", "--namespace", "team", "list"]).expect("parses");
    let Command::List(args) = cli.command else {
        panic!("not list")
    };
    assert_eq!(args.namespace.as_deref(), Some("team"));

    let cli = Cli::try_parse_from(["gear", "--socket", "/s", "-N", "ns", "link", "app", "db"])
        .expect("parses");
    let Command::Link(args) = cli.command else {
        panic!("not link")
    };
    assert_eq!(args.namespace.as_deref(), Some("ns"));
    assert_eq!(args.target.socket, PathBuf::from("/s"));

    let cli = Cli::try_parse_from(["gear", "env", "web", "list", "-N", "team"]).expect("parses");
    let Command::Env(args) = cli.command else {
        panic!("not env")
    };
    assert_eq!(args.gear.to_ref().namespace, "team");

    // after the name wins over before it, as the last of a repeated option would
    let cli = Cli::try_parse_from(["gear", "-N", "a", "status", "web", "-N", "b"]).expect("parses");
    let Command::Status(args) = cli.command else {
        panic!("not status")
    };
    assert_eq!(args.gear.namespace.as_deref(), Some("b"));
}

#[test]
fn exec_keeps_its_command_after_the_double_dash() {
    let cli = Cli::try_parse_from([
        "gear", "--socket", "/s", "-N", "team", "exec", "web", "--", "ls", "-N", "--socket",
    ])
    .expect("parses");
    let Command::Exec(args) = cli.command else {
        panic!("not exec")
    };
    assert_eq!(args.gear.to_ref().namespace, "team");
    assert_eq!(args.target.socket, PathBuf::from("/s"));
    assert_eq!(args.command, ["ls", "-N", "--socket"]);
}

#[test]
fn the_command_tree_is_consistent() {
    Cli::command().debug_assert();
}

/// The real binary, with no node at `/nonexistent`.
fn gear(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gear"))
        .args(args)
        .env_remove("GEARHOST_SOCKET")
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run gear")
}

#[test]
fn the_binary_uses_a_socket_given_before_the_command() {
    for argv in [
        &["--socket", "/nonexistent/node.sock", "list"][..],
        &[
            "-N",
            "team",
            "--socket",
            "/nonexistent/node.sock",
            "status",
            "web",
        ],
        &["--socket=/nonexistent/node.sock", "cartridge", "list"],
    ] {
        let out = gear(argv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "gear {argv:?}: {stderr}");
        assert!(
            stderr.contains("no node is running at /nonexistent/node.sock"),
            "gear {argv:?} did not try the socket it was given: {stderr}"
        );
    }
}

#[test]
fn exec_after_global_options_with_values_keeps_its_exit_status_contract() {
    // gear's own failure (no node) is 125 for exec, wherever the options are
    for argv in [
        &[
            "--socket",
            "/nonexistent/node.sock",
            "exec",
            "web",
            "--",
            "true",
        ][..],
        &[
            "-N",
            "team",
            "--socket",
            "/nonexistent/node.sock",
            "exec",
            "web",
        ],
        &[
            "exec",
            "web",
            "--socket",
            "/nonexistent/node.sock",
            "--",
            "true",
        ],
    ] {
        let out = gear(argv);
        assert_eq!(
            out.status.code(),
            Some(125),
            "gear {argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // so is a usage mistake of exec's: no gear named
    let out = gear(&["--socket", "/nonexistent/node.sock", "-N", "team", "exec"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    // while other commands keep clap's 2 for usage mistakes
    let out = gear(&["--socket", "/nonexistent/node.sock", "show"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn commands_that_never_talk_to_the_node_refuse_its_options_rather_than_ignore_them() {
    for argv in [
        &["node", "run", "--socket", "/tmp/elsewhere.sock"][..],
        &["--socket", "/tmp/elsewhere.sock", "node", "config"],
        &["-N", "team", "cartridge", "check", "."],
        &["completions", "bash", "--namespace", "team"],
    ] {
        let out = gear(argv);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "gear {argv:?}: {stderr}");
        assert!(
            stderr.contains("does not talk to a running node"),
            "gear {argv:?}: {stderr}"
        );
    }
    // from the environment they are no mistake
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gear"))
        .args(["completions", "bash"])
        .env("GEARHOST_SOCKET", "/tmp/elsewhere.sock")
        .env("GEARHOST_NAMESPACE", "team")
        .output()
        .expect("run gear");
    assert!(out.status.success(), "{out:?}");
    // and a command for the sandbox keeps its own -N after `--`
    let matches = Cli::try_parse_from(["gear", "sandbox", "run", "--", "echo", "-N", "x"]);
    assert!(matches.is_ok(), "{matches:?}");
}
