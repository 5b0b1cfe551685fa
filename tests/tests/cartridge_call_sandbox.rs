//! `gear cartridge call` as root: the hook's `exec` and `spawn` run for real in
//! a throwaway gear sandbox, `start` is followed by a readiness check on the
//! cartridge's endpoint and by its own `stop`, and nothing of the throwaway
//! gear is left afterwards. Through the real `gear` binary, with real
//! cartridges (the tutorial's python3 web server, and the test guest that
//! runs whatever its control action is given).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::{cartridge_dir, gear_bin, json, privileged, processes_of};

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

/// No cgroup of the throwaway gear of process `pid` is left on any hierarchy.
fn no_cgroups_of(pid: u32) -> bool {
    let prefix = format!("trial-{pid}");
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return true;
    };
    let mut dirs: Vec<_> = hierarchies.flatten().map(|e| e.path()).collect();
    dirs.push("/sys/fs/cgroup".into());
    dirs.iter().all(|h| {
        std::fs::read_dir(h.join("gearhost")).map_or(true, |entries| {
            entries
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with(&prefix))
        })
    })
}

#[test]
fn start_runs_the_server_confined_checks_it_is_up_then_stops_it() {
    if !privileged("a throwaway gear sandbox needs root") {
        return;
    }
    let pkg = cartridge_dir("my-first-cartridge");
    let cache = tempfile::tempdir().expect("cache");
    let dir = pkg.path().to_str().expect("utf-8");
    let uid = 70_410;

    let child = Command::new(gear_bin())
        .args([
            "cartridge",
            "call",
            dir,
            "start",
            "--uid",
            "70410",
            "--json",
        ])
        .env("GEARHOST_CACHE_DIR", cache.path())
        .env_remove("GEARHOST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gear");
    let gear_pid = child.id();
    let out = child.wait_with_output().expect("gear");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = json(&text(&out.stdout));
    assert_eq!(report["result"]["Ok"], "", "{report}");
    // the hook's spawn was carried out, not refused
    assert_eq!(report["requests"][0]["request"], "spawn");
    let spawned = &report["sandbox"]["spawned"][0];
    assert_eq!(spawned["name"], "web", "{report}");
    let pid = spawned["pid"].as_u64().expect("a pid");
    assert!(pid > 1);
    // python3 answered on the manifest's endpoint inside the gear's network namespace
    let ready = &report["sandbox"]["ready"];
    assert_eq!(ready["endpoint"], "http");
    assert_eq!(ready["port"], 8080);
    assert_eq!(ready["up"], true, "{report}");
    // then the cartridge's own stop ended it gracefully
    let stop = &report["sandbox"]["stop"];
    assert_eq!(stop["result"]["Ok"], "", "{report}");
    let asked: Vec<&str> = stop["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|r| r["request"].as_str())
        .collect();
    assert!(asked.contains(&"signal"), "{stop}");
    assert_eq!(
        report["sandbox"]["removed"]["killed"],
        serde_json::json!([])
    );
    // nothing of the throwaway gear is left: processes, cgroups, home
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(no_cgroups_of(gear_pid));
    let home = report["gear_dir"].as_str().expect("gear_dir");
    assert!(!Path::new(home).exists(), "{home} was left behind");

    // the human form says the same
    let out = gear(
        &["cartridge", "call", dir, "start", "--uid", "70411"],
        cache.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for needle in [
        "[start] spawned web: pid",
        "[start] up: endpoint http (port 8080)",
        "[stop asked] signal web Term: ok",
        "[sandbox] removed the throwaway gear",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(processes_of(70_411).is_empty());
}

#[test]
fn keep_running_holds_the_gear_until_ctrl_c() {
    if !privileged("a throwaway gear sandbox needs root") {
        return;
    }
    let pkg = cartridge_dir("my-first-cartridge");
    let cache = tempfile::tempdir().expect("cache");
    let uid = 70_420;
    let mut child = Command::new(gear_bin())
        .args(["cartridge", "call"])
        .arg(pkg.path())
        .args(["start", "--keep-running", "--uid", "70420"])
        .env("GEARHOST_CACHE_DIR", cache.path())
        .env_remove("GEARHOST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gear");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("press Ctrl-C") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("gear says the gear runs until Ctrl-C");
    // still running a while later, as the gear's uid
    std::thread::sleep(Duration::from_millis(500));
    let running = processes_of(uid);
    assert!(
        running.iter().any(|p| p.contains("http.server")),
        "{running:?}"
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(interrupted.success());
    let started = Instant::now();
    let status = child.wait().expect("gear");
    let stderr = reader.join().expect("reader");
    assert!(status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15), "{stderr}");
    assert!(
        stderr.contains("[stop asked] signal web Term: ok"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[sandbox] removed the throwaway gear"),
        "{stderr}"
    );
    assert!(processes_of(uid).is_empty(), "{:?}", processes_of(uid));
}

#[test]
fn exec_runs_confined_and_returns_output_and_status() {
    if !privileged("a throwaway gear sandbox needs root") {
        return;
    }
    let pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let dir = pkg.path().to_str().expect("utf-8");
    let control = |program_and_args: &[&str]| {
        let mut args: Vec<String> = [
            "cartridge",
            "call",
            dir,
            "control",
            "--uid",
            "70430",
            "--action",
            "exec",
        ]
        .map(String::from)
        .to_vec();
        // `--arg=VALUE`: a value may start with a dash
        args.extend(program_and_args.iter().map(|a| format!("--arg={a}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        gear(&args, cache.path())
    };
    // the program runs as the gear's uid, in the gear's home, on a host name of its own
    let out = control(&["sh", "-c", "id -u; pwd; hostname; echo oops >&2; exit 3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("status=exited:3"), "{stdout}");
    assert!(stdout.contains("stdout=70430\n/gear\nscratch"), "{stdout}");
    assert!(stdout.contains("stderr=oops"), "{stdout}");
    // and it is confined: no network but the gear's loopback
    let out = control(&["sh", "-c", "cat /proc/net/dev | tail -n +3 | cut -d: -f1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let interfaces: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("stdout="))
        .take_while(|l| !l.starts_with("stderr="))
        .map(|l| l.trim_start_matches("stdout=").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(interfaces, ["lo"], "{stdout}");
    // what the manifest does not allow is still refused
    let out = control(&["/usr/bin/id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("permissions.exec"),
        "{}",
        text(&out.stderr)
    );
    assert!(processes_of(70_430).is_empty());
}

#[test]
fn without_root_exec_and_spawn_are_refused_with_advice() {
    // --no-sandbox is what a caller without root gets
    let pkg = cartridge_dir("my-first-cartridge");
    let cache = tempfile::tempdir().expect("cache");
    let out = gear(
        &[
            "cartridge",
            "call",
            pkg.path().to_str().expect("utf-8"),
            "start",
            "--no-sandbox",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("needs a gear sandbox"), "{stderr}");
    assert!(stderr.contains("as root"), "{stderr}");
    assert!(!stderr.contains("[sandbox]"), "{stderr}");
}
