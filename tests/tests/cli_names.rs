//! End to end through the real `gear` and node: `--socket` and `-N` before or
//! after the subcommand, and shell completion of the names the node knows:
//! gears, cartridges, namespaces and control actions (the generated bash
//! script run in bash, and the hidden `gear complete` it calls). Gear uids
//! 78000-78199.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use gearhost_tests::{TestNode, cartridge_dir, gear_bin, privileged};

/// `gear` with no socket or namespace in its environment: only the command
/// line says where the node is.
fn bare(args: &[&str]) -> Output {
    Command::new(gear_bin())
        .args(args)
        .env_remove("GEARHOST_SOCKET")
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(Stdio::null())
        .output()
        .expect("run gear")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn lines(out: &Output) -> Vec<String> {
    text(&out.stdout).lines().map(str::to_owned).collect()
}

/// Runs bash's completion for the command line `words` with the cursor on
/// the last word, using the script `gear completions bash` printed, as bash
/// itself would call it; returns COMPREPLY.
fn bash_completes(script: &Path, socket: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect();
    let cword = words.len() - 1;
    let program = format!(
        "source '{script}'\n\
         COMP_WORDS=({words})\n\
         COMP_CWORD={cword}\n\
         COMP_LINE=\"${{COMP_WORDS[*]}}\"\n\
         COMP_POINT=${{#COMP_LINE}}\n\
         _gear_with_names gear \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script = script.display(),
        words = quoted.join(" "),
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .env("PATH", path_with_gear())
        .env("GEARHOST_SOCKET", socket)
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash failed for {words:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `shell` is installed; says so when it is not.
fn have(shell: &str) -> bool {
    let found = Command::new(shell)
        .arg("-c")
        .arg("exit 0")
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: {shell} is not installed, its completion script is not run");
    }
    found
}

/// `PATH` with this build's `gear` first.
fn path_with_gear() -> String {
    let bin_dir = gear_bin().parent().expect("gear's directory").to_path_buf();
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// What fish offers for `line` (the cursor at its end) with the script
/// `gear completions fish` printed: `complete -C`, as fish's TAB does.
fn fish_completes(script: &Path, socket: &Path, line: &str) -> Vec<String> {
    let out = Command::new("fish")
        .args(["--no-config", "-c"])
        .arg(format!(
            "source '{}'; complete -C '{}'",
            script.display(),
            line
        ))
        .env("PATH", path_with_gear())
        .env("GEARHOST_SOCKET", socket)
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(Stdio::null())
        .output()
        .expect("run fish");
    assert!(out.status.success(), "fish: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// What the zsh script's `_gear` adds for `words` (the cursor on the last),
/// run in zsh with compsys's `compadd` and `compdef` stood in for; the
/// generated part it falls back to answers `(generated)`.
fn zsh_completes(script: &Path, socket: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "compdef() {{ : }}\n\
         source '{}'\n\
         compadd() {{ [[ $1 == -a ]] && print -l -- ${{(P)2}} }}\n\
         _gear_flags() {{ print '(generated)' }}\n\
         words=({})\n\
         CURRENT={}\n\
         _gear\n",
        script.display(),
        quoted.join(" "),
        words.len()
    );
    let out = Command::new("zsh")
        .args(["-f", "-c", &program])
        .env("PATH", path_with_gear())
        .env("GEARHOST_SOCKET", socket)
        .env_remove("GEARHOST_NAMESPACE")
        .stdin(Stdio::null())
        .output()
        .expect("run zsh");
    assert!(out.status.success(), "zsh: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn global_options_anywhere_and_completion_of_names() {
    if !privileged("the node creates gears") {
        return;
    }
    let node = TestNode::start(78000, "");
    let socket = node.socket.to_str().expect("utf-8 socket path");
    let hello = cartridge_dir("hello-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        hello.path().to_str().expect("utf-8"),
    ]);

    // --socket and -N before the subcommand, after it, and mixed
    let out = bare(&["--socket", socket, "create", "web", "--cartridge", "hello"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = bare(&[
        "-N", "other", "--socket", socket, "create", "zeta", "-c", "hello",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = bare(&["create", "api", "--cartridge", "hello", "--socket", socket]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = bare(&["--socket", socket, "-N", "other", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = lines(&out);
    assert_eq!(listed.len(), 2, "-N before list filters: {listed:?}");
    assert!(listed[1].starts_with("zeta "), "{listed:?}");
    let out = bare(&["list", "-N", "other", "--socket", socket]);
    assert_eq!(lines(&out), listed, "-N after list filters the same");

    let out = bare(&["-N", "other", "--socket", socket, "status", "zeta"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = bare(&["--socket", socket, "status", "zeta"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "zeta is not in the default namespace: {}",
        text(&out.stderr)
    );

    // exec passes its command's status on, with options before it
    let out = bare(&[
        "--socket", socket, "-N", "other", "exec", "zeta", "--", "sh", "-c", "exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = bare(&[
        "--socket", socket, "exec", "web", "-N", "default", "--", "echo", "-N", "x",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "-N x\n");
    // gear's own failure is still 125: no such gear
    let out = bare(&[
        "--socket", socket, "-N", "other", "exec", "web", "--", "true",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));

    // the hidden subcommand the scripts call, directly
    let out = node.gear(&["complete", "gears"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lines(&out), ["api", "web"]);
    assert_eq!(lines(&node.gear(&["complete", "gears", "w"])), ["web"]);
    assert_eq!(
        lines(&node.gear(&["-N", "other", "complete", "gears"])),
        ["zeta"]
    );
    assert_eq!(lines(&node.gear(&["complete", "cartridges"])), ["hello"]);
    // the actions its manifest lists, sorted
    assert_eq!(
        lines(&node.gear(&["complete", "actions", "web"])),
        ["greet", "status", "tidy"]
    );
    assert!(lines(&node.gear(&["complete", "actions", "nosuch"])).is_empty());
    let namespaces = lines(&node.gear(&["complete", "namespaces"]));
    assert!(
        namespaces.contains(&"default".to_string()) && namespaces.contains(&"other".to_string()),
        "{namespaces:?}"
    );
    let out = node.gear(&["complete", "line", "2", "--", "gear", "start", ""]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lines(&out), ["api", "web"]);
    let out = node.gear(&["complete", "line", "1", "--", "gear", "sta"]);
    assert_eq!(out.status.code(), Some(1), "a subcommand is no name");
    assert!(out.stdout.is_empty());

    // with no node, nothing at all, and success
    let out = bare(&["--socket", "/nonexistent/node.sock", "complete", "gears"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");

    // the real bash script, in bash
    let scripts = tempfile::tempdir().expect("scripts dir");
    let script = scripts.path().join("gear.bash");
    let out = node.gear(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(&script, &out.stdout).expect("write the script");

    let complete = |words: &[&str]| bash_completes(&script, &node.socket, words);
    assert_eq!(complete(&["gear", "start", ""]), ["api", "web"]);
    assert_eq!(complete(&["gear", "logs", "-f", "w"]), ["web"]);
    assert_eq!(complete(&["gear", "-N", "other", "status", ""]), ["zeta"]);
    assert_eq!(complete(&["gear", "link", "web", "a"]), ["api"]);
    assert_eq!(
        complete(&["gear", "create", "new", "--cartridge", ""]),
        ["hello"]
    );
    assert_eq!(complete(&["gear", "cartridge", "remove", "h"]), ["hello"]);
    assert_eq!(complete(&["gear", "list", "-N", "ot"]), ["other"]);
    assert_eq!(
        complete(&["gear", "control", "web", ""]),
        ["greet", "status", "tidy"]
    );
    assert_eq!(
        complete(&["gear", "-N", "other", "control", "zeta", "g"]),
        ["greet"]
    );
    // the line's own --socket is the one asked
    let elsewhere = bash_completes(
        &script,
        Path::new("/nonexistent/node.sock"),
        &["gear", "--socket", socket, "restart", ""],
    );
    assert_eq!(elsewhere, ["api", "web"]);
    // subcommands and flags still come from the generated part
    assert_eq!(complete(&["gear", "sta"]), ["start", "status"]);
    // and the hidden helper is not offered
    assert_eq!(complete(&["gear", "comp"]), ["completions"]);
    assert!(complete(&["gear", "logs", "web", "--fo"]).contains(&"--follow".to_string()));
    // no node: no names, no error text in the line
    let none = bash_completes(
        &script,
        Path::new("/nonexistent/node.sock"),
        &["gear", "start", ""],
    );
    assert!(none.is_empty(), "{none:?}");

    // the fish and zsh scripts, where those shells are installed
    let nowhere = Path::new("/nonexistent/node.sock");
    if have("fish") {
        let script = scripts.path().join("gear.fish");
        let out = node.gear(&["completions", "fish"]);
        std::fs::write(&script, &out.stdout).expect("write the script");
        let complete = |line: &str| fish_completes(&script, &node.socket, line);
        assert_eq!(complete("gear start "), ["api", "web"]);
        assert_eq!(complete("gear -N other status "), ["zeta"]);
        assert_eq!(complete("gear create x --cartridge "), ["hello"]);
        assert_eq!(complete("gear control web g"), ["greet"]);
        assert_eq!(complete("gear sta"), ["start", "status"]);
        assert!(fish_completes(&script, nowhere, "gear start ").is_empty());
    }
    if have("zsh") {
        let script = scripts.path().join("_gear");
        let out = node.gear(&["completions", "zsh"]);
        std::fs::write(&script, &out.stdout).expect("write the script");
        let complete = |words: &[&str]| zsh_completes(&script, &node.socket, words);
        assert_eq!(complete(&["gear", "start", ""]), ["api", "web"]);
        assert_eq!(complete(&["gear", "-N", "other", "logs", "z"]), ["zeta"]);
        assert_eq!(
            complete(&["gear", "control", "web", ""]),
            ["greet", "status", "tidy"]
        );
        assert_eq!(complete(&["gear", "sta"]), ["(generated)"]);
        assert!(zsh_completes(&script, nowhere, &["gear", "start", ""]).is_empty());
    }
}
