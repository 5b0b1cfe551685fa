//! The real `gear` binary's `node check` and `sandbox run`: the layer report
//! is honest about this machine, and a command runs confined with its exit
//! status passed through.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use gearhost_tests::{copy_executable, gear_bin, privileged};

fn gear(args: &[&str]) -> Output {
    let mut child = Command::new(gear_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run gear");
    // never let a wedged sandbox hang the suite
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "gear {args:?} did not finish within 60 s\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn node_check_reports_every_layer_honestly() {
    let out = gear(&["node", "check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let layers = report["layers"].as_array().expect("layers");
    let status = |name: &str| {
        layers
            .iter()
            .find(|l| l["layer"] == name)
            .unwrap_or_else(|| panic!("layer {name} missing from {report}"))["status"]
            .as_str()
            .expect("status")
            .to_string()
    };
    for layer in [
        "namespaces",
        "filesystem",
        "credentials",
        "seccomp",
        "landlock",
        "selinux",
        "cgroups",
        "rlimits",
    ] {
        status(layer);
    }
    let selinux_on = Path::new("/sys/fs/selinux/enforce").exists();
    if selinux_on {
        assert_ne!(status("selinux"), "not_enabled");
    } else {
        assert_eq!(
            status("selinux"),
            "not_enabled",
            "SELinux is off here and must be reported so"
        );
    }
    // io_uring is reported as this kernel allows it (not required: it never
    // decides the exit code)
    let uring = gearhost_tests::io_uring_allowed();
    assert_eq!(
        status("io_uring"),
        if uring { "enforced" } else { "missing" }
    );
    // the exit code follows the required layers
    let all_hold = layers
        .iter()
        .filter(|l| l["required"] == true)
        .all(|l| l["status"] == "enforced" || l["status"] == "partial");
    assert_eq!(out.status.code(), Some(if all_hold { 0 } else { 4 }));

    let human = gear(&["node", "check"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("seccomp") && text.contains("landlock"),
        "{text}"
    );
}

#[test]
fn sandbox_run_confines_a_command_and_passes_its_status_through() {
    if !privileged("gear sandbox run creates namespaces and cgroups") {
        return;
    }
    let out = gear(&[
        "sandbox",
        "run",
        "--uid",
        "61001",
        "--hostname",
        "probe",
        "--pids",
        "64",
        "--memory",
        "128MiB",
        "--",
        "sh",
        "-c",
        "id -u; hostname; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
         sed -n 's/^Cpus_allowed_list:/command:/p' /proc/self/status; \
         sed -n 's/^Cpus_allowed_list:/init:/p' /proc/1/status",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "61001");
    assert_eq!(lines[1], "probe");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("Seccomp:\t2"), "{stdout}");
    // the command starts on its helper's CPU (helper/placement.rs), but neither stays pinned:
    // both may run where the caller may
    let status = std::fs::read_to_string("/proc/self/status").expect("own status");
    let ours = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list");
    assert!(stdout.contains(&format!("command:{ours}\n")), "{stdout}");
    assert!(stdout.contains(&format!("init:{ours}\n")), "{stdout}");

    let out = gear(&["sandbox", "run", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));

    let out = gear(&["sandbox", "run", "--json", "--", "true"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["status"], 0);
    assert!(json["report"].is_object(), "{json}");

    let out = gear(&["sandbox", "run", "--uid", "0", "--", "true"]);
    assert_eq!(out.status.code(), Some(3));

    // on a terminal (script(1) gives gear one) the command gets its own, as its
    // controlling terminal, and the status still comes through
    let command = format!(
        "{} sandbox run -- sh -c 'tty; ps -o stat= -p $$; exit 5'",
        gear_bin().display()
    );
    let (code, text) = gearhost_tests::on_terminal(&command, &[]);
    assert_eq!(code, Some(5), "{text}");
    gearhost_tests::assert_on_own_terminal(&text);
    // and its terminal follows when the caller's window changes size
    let mut run = Command::new(gear_bin());
    run.args(["sandbox", "run", "--"]);
    gearhost_tests::assert_terminal_follows_a_resize(run);
}

/// Copies of this build's programs `names` (`gear`, `gearhost-init`) that any user may run:
/// the build's own may sit below a directory only root can enter (a clone in /root).
fn binaries_for_everyone(names: &[&str]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("gearhost-rootless-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod dir");
    let gear = gear_bin();
    for name in names {
        let copy = dir.path().join(name);
        copy_executable(&gear.with_file_name(name), &copy);
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .expect("chmod binary");
    }
    dir
}

/// `gear` (from `bins`) run by an unprivileged user, through setpriv, with `env` added to its
/// environment.
fn gear_as_nobody(bins: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = bins.join("gear");
    let mut full = vec![
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin.to_str().expect("utf-8 path"),
    ];
    full.extend_from_slice(args);
    Command::new("setpriv")
        .args(&full)
        .current_dir("/tmp")
        .env("TMPDIR", "/tmp")
        .envs(env.iter().copied())
        .env_remove("GEARHOST_INIT")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run setpriv (util-linux)")
}

#[test]
fn rootless_sandbox_runs_as_the_caller_in_a_user_namespace() {
    if !privileged("becoming an unprivileged user to run a rootless sandbox") {
        return;
    }
    let bins = binaries_for_everyone(&["gear", "gearhost-init"]);
    let out = gear_as_nobody(
        bins.path(),
        &[
            "sandbox",
            "run",
            "--hostname",
            "rootless",
            "--",
            "sh",
            "-c",
            "id -u; hostname; tr -s ' ' < /proc/self/uid_map | cut -d' ' -f2; \
         tr -s ' ' < /proc/self/uid_map | cut -d' ' -f3; cat /proc/1/comm; \
         grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
         (touch /usr/x 2>/dev/null && echo usr-writable || echo usr-read-only); \
         (unshare -U true 2>/dev/null && echo nested-userns || echo nested-refused); \
         echo data > /gear/made && echo home-writable; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "0", "uid 0 inside: {stdout}");
    assert_eq!(lines[1], "rootless");
    assert_eq!(lines[2], "0");
    assert_eq!(
        lines[3], "65534",
        "0 inside is the caller outside: {stdout}"
    );
    assert_eq!(lines[4], "gearhost-init", "own pid namespace: {stdout}");
    for expected in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "usr-read-only",
        "nested-refused",
        "home-writable",
    ] {
        assert!(stdout.contains(expected), "{expected} missing: {stdout}");
    }
    assert_eq!(lines.last(), Some(&"lo"), "only loopback: {stdout}");

    // the report says what rootless mode is and is not
    let out = gear_as_nobody(
        bins.path(),
        &["sandbox", "run", "--json", "--", "true"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let user = json["report"]["namespaces"]["user"]
        .as_str()
        .unwrap_or_default();
    assert!(user.contains("65534 and 65534 outside"), "{json}");
    assert!(json["report"]["cgroup"].is_null(), "{json}");

    // limits need cgroups, which need root: a clear refusal, not a silent gear without them
    let out = gear_as_nobody(
        bins.path(),
        &["sandbox", "run", "--memory", "64MiB", "--", "true"],
        &[],
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--memory needs root"), "{stderr}");
}

/// The processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(name);
        }
    }
    found
}

/// `gear sandbox run` forks the gear's init from itself as its first step (no exec of
/// `gearhost-init`): it works with no `gearhost-init` anywhere, the init still names itself so,
/// the caller's environment is not left readable in it, and the network namespace the caller
/// made for it has loopback up and nothing else.
#[test]
fn sandbox_run_starts_its_init_from_itself() {
    if !privileged("gear sandbox run creates namespaces and cgroups") {
        return;
    }
    let alone = binaries_for_everyone(&["gear"]);
    let secret = [("GEARHOST_TEST_SECRET", "marker-7c1e")];
    // as root (the init's environment is not even readable by the gear then)
    let out = Command::new(alone.path().join("gear"))
        .args(["sandbox", "run", "--json", "--", "true"])
        .envs(secret)
        .env_remove("GEARHOST_INIT")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run gear");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let namespaces = &report["report"]["namespaces"];
    assert_eq!(namespaces["network"], "isolated", "{report}");
    assert_eq!(namespaces["loopback_up"], true, "{report}");
    let unshared: Vec<&str> = namespaces["unshared"]
        .as_array()
        .expect("unshared")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert_eq!(unshared, ["pid", "mnt", "uts", "ipc", "cgroup", "net"]);

    // rootless, the init runs as the caller: its environment is readable, and empty
    let script = "cat /proc/1/comm; echo \"environ=$(tr '\\0' ' ' < /proc/1/environ)\"; \
                  tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '";
    let out = gear_as_nobody(
        alone.path(),
        &["sandbox", "run", "--", "sh", "-c", script],
        &secret,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "gearhost-init", "{stdout}");
    assert_eq!(lines[1].trim(), "environ=", "{stdout}");
    assert_eq!(lines[2], "lo", "only loopback: {stdout}");
    assert!(!stdout.contains("marker-7c1e"), "{stdout}");
}

/// A `gear sandbox run` line that turns out to be an error or a request for help had already
/// started the gear's init: it must not outlive `gear`.
#[test]
fn a_sandbox_run_that_ends_early_leaves_no_init_behind() {
    if !privileged("gear sandbox run creates namespaces and cgroups") {
        return;
    }
    for (flag, code) in [("--no-such-option", Some(2)), ("--help", Some(0))] {
        let marker = format!("leftover-{}-{}", std::process::id(), flag.len());
        let out = gear(&["sandbox", "run", flag, "--", "echo", &marker]);
        assert_eq!(
            out.status.code(),
            code,
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_with(&marker);
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{flag}: processes {left:?} still run 10 s after gear exited"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
