//! Isolation suite: starts real gears and checks every layer, from inside with
//! `gearhost-probe` and from outside through the cgroup and the host's view.
//!
//! These tests need root. Without it they print why and pass as skipped, unless
//! `GEARHOST_REQUIRE_PRIVILEGED=1` is set, in which case they fail.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gearhost_sandbox::{Bind, Sandbox, SandboxError, SandboxSpec, Signal, Stdio};
use serde_json::Value;

const PROBE: &str = env!("CARGO_BIN_EXE_gearhost-probe");
const INIT: &str = env!("CARGO_BIN_EXE_gearhost-init");

/// Whether privileged tests can run here; prints the reason when they cannot, and panics
/// instead when `GEARHOST_REQUIRE_PRIVILEGED=1`.
fn privileged(test: &str) -> bool {
    let euid_zero = gearhost_sys::proc_status::is_root();
    let report = gearhost_sandbox::check::host_capabilities();
    let reason = if !euid_zero {
        Some("not running as root".to_string())
    } else if !report.required_layers_hold() {
        Some(format!("this machine lacks required layers:\n{report}"))
    } else {
        None
    };
    match reason {
        None => true,
        Some(why) => {
            if std::env::var("GEARHOST_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                panic!("{test} cannot run: {why} (GEARHOST_REQUIRE_PRIVILEGED=1)");
            }
            eprintln!("skipping {test}: {why}");
            false
        }
    }
}

/// A throwaway gear: a state directory holding its home, its own cgroup subtree.
struct TestGear {
    state: tempfile::TempDir,
    home: PathBuf,
    spec: SandboxSpec,
}

impl TestGear {
    fn new(name: &str, uid: u32, argv: &[&str]) -> TestGear {
        let state = tempfile::Builder::new()
            .prefix("gearhost-state-")
            .tempdir()
            .expect("state dir");
        let home = state.path().join("gears").join(name);
        std::fs::create_dir_all(&home).expect("home");
        std::os::unix::fs::chown(&home, Some(uid), Some(uid)).expect("chown home");
        let probe_dir = Path::new(PROBE).parent().expect("probe dir");
        let mut spec = SandboxSpec::new(
            name,
            uid,
            uid,
            &home,
            argv.iter().map(|s| s.to_string()).collect(),
        );
        spec.cgroup.subtree = format!("gearhost-test-{}-{name}", std::process::id());
        spec.init_path = Some(PathBuf::from(INIT));
        spec.ro_binds.push(Bind {
            source: PathBuf::from(PROBE),
            target: PathBuf::from("/opt/probe/gearhost-probe"),
        });
        let _ = probe_dir;
        spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
        spec.stdio.stdout = Stdio::Piped;
        spec.limits.pids = Some(64);
        spec.limits.memory_bytes = Some(256 << 20);
        TestGear { state, home, spec }
    }

    /// Runs the gear to completion and returns its exit status, stdout and report; the state
    /// directory lives as long as the returned value.
    fn run(self) -> Finished {
        let subtree = self.spec.cgroup.subtree.clone();
        let mut gear = Sandbox::spawn(self.spec).expect("gear starts");
        let mut out = String::new();
        gear.take_stdout()
            .expect("stdout pipe")
            .read_to_string(&mut out)
            .expect("read stdout");
        let status = gear.wait().expect("wait");
        let report = gear.report().clone();
        gear.teardown().expect("teardown");
        gearhost_sandbox::cgroup::remove_subtree(&subtree).expect("remove test subtree");
        Finished {
            status,
            out,
            report,
            _state: self.state,
        }
    }
}

struct Finished {
    status: std::process::ExitStatus,
    out: String,
    report: gearhost_sandbox::LayerReport,
    _state: tempfile::TempDir,
}

fn probe_json(out: &str) -> Value {
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("probe printed no JSON ({e}): {out:?}"))
}

#[test]
fn probe_sees_every_layer_from_inside() {
    if !privileged("probe_sees_every_layer_from_inside") {
        return;
    }
    let uid = 52_001;
    let mut gear = TestGear::new("probe-a", uid, &["/opt/probe/gearhost-probe", "isolation"]);

    // Another gear's home next to ours, and the node's state directory: both must be invisible.
    let other_home = gear.state.path().join("gears").join("probe-b");
    std::fs::create_dir_all(&other_home).expect("other home");
    std::fs::write(other_home.join("secret"), b"b's data").expect("other secret");
    // A marker in the host's /tmp must not show up in the gear's /tmp.
    let marker_name = format!("gearhost-host-marker-{}", std::process::id());
    let marker = Path::new("/tmp").join(&marker_name);
    std::fs::write(&marker, b"host").expect("marker");
    // A setuid-root copy of `id` in a read-only bind.
    let suid_dir = gear.state.path().join("suid");
    std::fs::create_dir_all(&suid_dir).expect("suid dir");
    let suid = suid_dir.join("id");
    // copied by `cp`, so no descriptor of this process (nor of a child another test forks
    // meanwhile) has the copy open for writing when the gear executes it (ETXTBSY)
    let copied = std::process::Command::new("cp")
        .args(["--", "/usr/bin/id"])
        .arg(&suid)
        .status()
        .expect("run cp");
    assert!(copied.success(), "cp /usr/bin/id failed");
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).expect("chmod u+s");
    gear.spec.ro_binds.push(Bind {
        source: suid_dir.clone(),
        target: PathBuf::from("/opt/suid"),
    });
    // A server on the host's loopback.
    let server = TcpListener::bind("127.0.0.1:0").expect("host server");
    let port = server.local_addr().expect("addr").port();

    let config = serde_json::json!({
        "home": "/gear",
        "must_be_invisible": [other_home, gear.state.path(), marker],
        "host_port": port,
        "setuid_binary": "/opt/suid/id",
    });
    gear.spec.argv.push(config.to_string());
    gear.spec.env.push(("GEAR_TEST".into(), "1".into()));
    let home = gear.home.clone();
    let Finished {
        status,
        out,
        report,
        _state,
    } = gear.run();
    let _ = std::fs::remove_file(Path::new("/tmp").join(&marker_name));
    assert!(status.success(), "probe failed: {status:?} {out}");
    let p = probe_json(&out);
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();

    // pid namespace: init (1) and the probe (2) and nothing else.
    assert_eq!(p["pids"], serde_json::json!([1, 2]), "{}", p["pids"]);
    assert_eq!(p["self_pid"], 2);
    assert_eq!(s("hostname"), "probe-a");
    // credentials
    assert_eq!(s("Uid"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
    assert_eq!(s("Gid"), format!("{uid}\t{uid}\t{uid}\t{uid}"));
    assert_eq!(s("Groups"), "");
    for cap in ["CapEff", "CapBnd", "CapAmb", "CapPrm", "CapInh"] {
        assert_eq!(s(cap), "0000000000000000", "{cap}");
    }
    assert_eq!(s("NoNewPrivs"), "1");
    assert_eq!(s("Seccomp"), "2");
    // seccomp answers with EPERM (1)
    for call in [
        "mount",
        "unshare_user",
        "clone_newuser",
        "tiocsti",
        "ptrace_init",
        "keyctl",
        "bpf",
        "io_uring_setup",
        "personality_addr_compat",
    ] {
        assert_eq!(s(call), "1", "{call} was not refused with EPERM");
    }
    // read-only system (EROFS 30), Landlock on a DAC-writable dir (EACCES 13)
    assert_eq!(s("write_usr"), "30");
    assert_eq!(s("write_etc"), "30");
    assert_eq!(s("write_root"), "30");
    assert_ne!(s("write_etc_passwd"), "ok");
    assert_ne!(s("write_proc_sys"), "ok");
    assert_eq!(
        s("write_dev_shm"),
        "13",
        "Landlock must refuse /dev/shm although it is mode 1777"
    );
    assert_eq!(s("write_tmp"), "ok");
    assert_eq!(s("write_home"), "ok");
    assert!(
        home.join("probe-wrote-this").exists(),
        "home write did not reach the host"
    );
    // /proc masking, no /sys, no shadow
    assert_eq!(p["read_kcore"], 0);
    assert_eq!(s("read_keys"), "");
    assert_eq!(p["sys_exists"], false);
    assert_eq!(p["etc_shadow_exists"], false);
    assert_ne!(s("read_shadow_via_link"), "ok");
    // other gears, the state dir and the host's /tmp are invisible
    for (path, seen) in p["visible"].as_object().expect("visible map") {
        assert_eq!(seen, false, "{path} is visible inside the gear");
    }
    assert!(
        !p["tmp_entries"]
            .as_array()
            .expect("tmp")
            .iter()
            .any(|e| e.as_str() == Some(marker_name.as_str()))
    );
    // network: only lo, which works; the host's loopback server is unreachable
    assert_eq!(p["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(p["loopback_works"], true);
    assert_ne!(s("connect_host_port"), "ok");
    // descriptors and environment
    let mut fds: Vec<String> = p["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    fds.sort();
    // 0, 1, 2 plus the directory handle used to list /proc/self/fd
    assert_eq!(fds.len(), 4, "{fds:?}");
    assert_eq!(&fds[..3], ["0", "1", "2"]);
    assert_eq!(
        p["env"],
        serde_json::json!({"GEAR_TEST": "1", "PATH": "/usr/bin:/bin"})
    );
    // the setuid binary gains nothing
    assert_eq!(s("setuid_euid"), uid.to_string());
    assert_eq!(s("cwd"), "/gear");
    drop(server);

    // and the report says the same
    assert_eq!(report.credentials.uid, uid);
    assert!(report.credentials.all_capability_sets_empty);
    assert!(report.credentials.no_new_privs);
    assert!(report.seccomp.installed);
    assert!(report.namespaces.loopback_up);
    assert_eq!(report.namespaces.unshared.len(), 6);
    assert!(report.landlock.kernel_abi >= 1);
    let cg = report.cgroup.as_ref().expect("cgroup report");
    assert_eq!(cg.pids, Some(64));
    assert!(cg.swap_limited);
    if !gearhost_sandbox::selinux::is_enabled() {
        assert_eq!(report.selinux.to_string(), "not enabled on this kernel");
    }
}

#[test]
fn symlink_in_home_cannot_redirect_a_bind() {
    if !privileged("symlink_in_home_cannot_redirect_a_bind") {
        return;
    }
    let mut gear = TestGear::new("symlink", 52_002, &["/bin/true"]);
    std::os::unix::fs::symlink("/etc", gear.home.join("data")).expect("plant symlink");
    gear.spec.rw_binds.push(Bind {
        source: gear.home.join("data"),
        target: PathBuf::from("/data"),
    });
    let placement = gear.spec.cgroup.clone();
    let err = Sandbox::spawn(gear.spec).expect_err("a bind through a symlink must be refused");
    match &err {
        SandboxError::Io { action, source, .. } => {
            assert_eq!(*action, "open bind source", "{err}");
            assert_eq!(source.raw_os_error(), Some(40), "expected ELOOP: {err}");
            assert!(err.to_string().contains("symlink"), "{err}");
        }
        other => panic!("unexpected error: {other}"),
    }
    // the failed start left no cgroup behind
    let mounts = gearhost_sandbox::cgroup::detect().expect("cgroups");
    for leaf in gearhost_sandbox::cgroup::gear_paths(&mounts, &placement).values() {
        assert!(!leaf.exists(), "{} left behind", leaf.display());
    }
    gearhost_sandbox::cgroup::remove_subtree(&placement.subtree).expect("remove subtree");
}

#[test]
fn fork_bomb_is_stopped_by_the_pids_limit() {
    if !privileged("fork_bomb_is_stopped_by_the_pids_limit") {
        return;
    }
    let mut gear = TestGear::new(
        "forkbomb",
        52_003,
        &["/opt/probe/gearhost-probe", "forkbomb"],
    );
    gear.spec.limits.pids = Some(32);
    let Finished { status, out, .. } = gear.run();
    assert!(status.success(), "{status:?} {out}");
    let p = probe_json(&out);
    let spawned = p["spawned"].as_u64().expect("spawned");
    // init and the probe count too
    assert!(spawned <= 30, "spawned {spawned} with pids.max 32");
    assert!(spawned >= 20, "spawned only {spawned}");
    assert_eq!(p["errno"], 11, "fork should fail with EAGAIN: {p}");
    // the host is still responsive
    assert!(
        std::process::Command::new("/bin/true")
            .status()
            .expect("host runs /bin/true")
            .success()
    );
}

#[test]
fn memory_hog_is_oom_killed_inside_the_gear() {
    if !privileged("memory_hog_is_oom_killed_inside_the_gear") {
        return;
    }
    let mut gear = TestGear::new("oom", 52_004, &["/opt/probe/gearhost-probe", "oom"]);
    gear.spec.limits.memory_bytes = Some(48 << 20);
    let subtree = gear.spec.cgroup.subtree.clone();
    let mut running = Sandbox::spawn(gear.spec).expect("gear starts");
    let mut out = String::new();
    running
        .take_stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let status = running.wait().expect("wait");
    let kills = running.cgroup().oom_kills();
    running.teardown().expect("teardown");
    gearhost_sandbox::cgroup::remove_subtree(&subtree).expect("remove subtree");
    assert!(
        status.success(),
        "the surviving process should exit 0: {status:?} {out}"
    );
    let p = probe_json(&out);
    assert_eq!(p["hog_signal"], 9, "{p}");
    assert_eq!(p["survivor_alive"], true);
    assert!(
        kills.unwrap_or(0) >= 1,
        "the cgroup counted no OOM kill: {kills:?}"
    );
}

#[test]
fn cpu_quota_throttles() {
    if !privileged("cpu_quota_throttles") {
        return;
    }
    let mut gear = TestGear::new(
        "cpu",
        52_005,
        &["/opt/probe/gearhost-probe", "spin", "1500"],
    );
    gear.spec.limits.cpu_millicores = Some(200);
    let subtree = gear.spec.cgroup.subtree.clone();
    let mut running = Sandbox::spawn(gear.spec).expect("gear starts");
    let mut out = String::new();
    running
        .take_stdout()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let status = running.wait().expect("wait");
    let used = running.cgroup().cpu_usage().expect("cpu usage");
    let throttled = running
        .cgroup()
        .cpu_throttled_periods()
        .expect("throttle count");
    running.teardown().expect("teardown");
    gearhost_sandbox::cgroup::remove_subtree(&subtree).expect("remove subtree");
    assert!(status.success(), "{status:?} {out}");
    let wall = Duration::from_millis(probe_json(&out)["wall_ms"].as_u64().expect("wall"));
    let share = used.as_secs_f64() / wall.as_secs_f64();
    // a 20% quota; generous margin for start-up and accounting granularity
    assert!(
        share < 0.4,
        "used {used:?} in {wall:?} ({share:.2} of a CPU) with a 200m quota"
    );
    assert!(throttled > 0, "the gear was never throttled");
}

fn host_mounts_mentioning(needle: &str) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
fn killing_init_kills_the_tree_and_teardown_leaves_nothing() {
    if !privileged("killing_init_kills_the_tree_and_teardown_leaves_nothing") {
        return;
    }
    let mut gear = TestGear::new(
        "tree",
        52_006,
        &["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"],
    );
    gear.spec.stdio.stdout = Stdio::Null;
    let state = gear.state.path().to_path_buf();
    let subtree = gear.spec.cgroup.subtree.clone();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .count();
    let mut running = Sandbox::spawn(gear.spec).expect("gear starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.cgroup().pids().len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = running.cgroup().pids();
    assert_eq!(pids.len(), 4, "init, sh and two sleeps expected: {pids:?}");
    let paths = running.cgroup().paths();
    running.kill(Signal::Kill).expect("kill");
    let status = running.wait().expect("wait");
    assert_eq!(status.signal(), Some(9));
    let report = running.teardown().expect("teardown");
    assert_eq!(report.removed.len(), paths.len());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived"
        );
    }
    for p in paths {
        assert!(!p.exists(), "{} survived teardown", p.display());
    }
    gearhost_sandbox::cgroup::remove_subtree(&subtree).expect("remove subtree");
    assert_eq!(host_mounts_mentioning(state.to_str().expect("utf-8")), 0);
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .count();
    assert_eq!(
        mounts_before, mounts_after,
        "the host's mount table changed"
    );
}

#[test]
fn signals_reach_the_command_through_init() {
    if !privileged("signals_reach_the_command_through_init") {
        return;
    }
    let mut gear = TestGear::new(
        "signals",
        52_007,
        &["/bin/sh", "-c", "trap 'exit 42' TERM; sleep 1000 & wait"],
    );
    gear.spec.stdio.stdout = Stdio::Null;
    let subtree = gear.spec.cgroup.subtree.clone();
    let mut running = Sandbox::spawn(gear.spec).expect("gear starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.cgroup().pids().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(running.try_wait().expect("try_wait"), None);
    running.kill(Signal::Term).expect("term");
    let status = running.wait().expect("wait");
    running.teardown().expect("teardown");
    gearhost_sandbox::cgroup::remove_subtree(&subtree).expect("remove subtree");
    assert_eq!(status.code(), Some(42), "{status:?}");
}

#[test]
fn exec_failure_is_a_typed_error() {
    if !privileged("exec_failure_is_a_typed_error") {
        return;
    }
    let gear = TestGear::new("noexec", 52_008, &["/no/such/program"]);
    let subtree = gear.spec.cgroup.subtree.clone();
    let err = Sandbox::spawn(gear.spec.clone()).expect_err("must fail");
    let _ = gearhost_sandbox::cgroup::remove_subtree(&subtree);
    match err {
        SandboxError::Exec { program, source } => {
            assert_eq!(program, "/no/such/program");
            assert_eq!(source.raw_os_error(), Some(2));
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[test]
fn gear_dies_with_the_process_that_started_it() {
    if !privileged("gear_dies_with_the_process_that_started_it") {
        return;
    }
    let mut gear = TestGear::new("orphan", 52_009, &["/bin/sleep", "1000"]);
    gear.spec.stdio.stdout = Stdio::Null;
    let placement = gear.spec.cgroup.clone();
    let spec_json = serde_json::to_string(&gear.spec).expect("spec json");
    // The probe, run on the host, plays the node: it starts the gear and sleeps.
    let mut node = std::process::Command::new(PROBE)
        .args(["parent", &spec_json])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("probe starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(node.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read pid");
    let started: Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let gear_pid = started["gear_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no gear started: {started}"));
    let mounts = gearhost_sandbox::cgroup::detect().expect("cgroups");
    let paths = gearhost_sandbox::cgroup::gear_paths(&mounts, &placement);
    let procs = paths
        .values()
        .next()
        .expect("a cgroup")
        .join("cgroup.procs");
    let count = || {
        std::fs::read_to_string(&procs)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    assert_eq!(count(), 2, "init and sleep expected in the gear");
    // The "node" started its gear from a warm helper and keeps another one waiting.
    let waiting = helpers_of(node.id(), Path::new(INIT));
    assert_eq!(
        waiting.len(),
        2,
        "the gear's init and one waiting helper: {waiting:?}"
    );
    assert!(waiting.contains(&(gear_pid as u32)), "{waiting:?}");
    node.kill().expect("kill the node");
    node.wait().expect("reap the node");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        count(),
        0,
        "gear {gear_pid} outlived the process that started it"
    );
    let report = gearhost_sandbox::teardown(&placement).expect("teardown");
    assert_eq!(report.killed, 0, "nothing should have been left to kill");
    gearhost_sandbox::cgroup::remove_subtree(&placement.subtree).expect("remove subtree");
    // the waiting helper went with the node too
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left: Vec<u32> = waiting.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "helpers outlived the node: {left:?}");
}

/// Pids of the live children of `parent` executing `init`.
fn helpers_of(parent: u32, init: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        let exe = std::fs::read_link(entry.path().join("exe")).ok();
        if ppid == Some(parent) && exe.as_deref() == Some(init) && alive(pid) {
            found.push(pid);
        }
    }
    found.sort_unstable();
    found
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

#[test]
fn a_warm_helper_starts_the_gear_and_is_replaced() {
    if !privileged("a_warm_helper_starts_the_gear_and_is_replaced") {
        return;
    }
    // A path of the helper's own, so no other test's start takes the waiting one: a hard
    // link, not a copy, since a copy's write descriptor can live on for a moment in a child
    // another test forks meanwhile, and executing the copy then fails (ETXTBSY).
    let beside = Path::new(INIT).parent().expect("the helper's directory");
    let dir = tempfile::tempdir_in(beside).expect("tempdir");
    let init = dir.path().join("gearhost-init");
    std::fs::hard_link(INIT, &init).expect("link gearhost-init");
    let me = std::process::id();
    let run = |name: &str| {
        let mut gear = TestGear::new(
            name,
            52_020,
            &[
                "/bin/sh",
                "-c",
                "echo $$; cat /etc/hostname; id -u; touch /gear/made",
            ],
        );
        gear.spec.init_path = Some(init.clone());
        let home = gear.home.clone();
        let subtree = gear.spec.cgroup.subtree.clone();
        let mut started = Sandbox::spawn(gear.spec).expect("gear starts");
        let pid = started.pid();
        let mut out = String::new();
        started
            .take_stdout()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read");
        assert!(started.wait().expect("wait").success(), "{out}");
        started.teardown().expect("teardown");
        gearhost_sandbox::cgroup::remove_subtree(&subtree).expect("remove subtree");
        assert_eq!(out, format!("2\n{name}\n52020\n"), "the command is pid 2");
        assert!(
            home.join("made").exists(),
            "the home is the gear's, read-write"
        );
        drop(gear.state);
        pid
    };

    gearhost_sandbox::keep_warm(&init, 1);
    assert!(
        gearhost_sandbox::wait_warm(&init, Duration::from_secs(10)),
        "no warm helper: {:?}",
        gearhost_sandbox::warm_status(&init)
    );
    assert_eq!(gearhost_sandbox::warm_status(&init), (1, None));
    let waiting = helpers_of(me, &init);
    assert_eq!(waiting.len(), 1, "{waiting:?}");

    // the waiting helper becomes the gear's init, and a new one is prepared
    assert_eq!(run("warm-a"), waiting[0]);
    assert!(gearhost_sandbox::wait_warm(&init, Duration::from_secs(10)));
    let replacement = helpers_of(me, &init);
    assert_eq!(replacement.len(), 1, "{replacement:?}");
    assert_ne!(replacement, waiting);

    // a waiting helper that died is passed over: the start still works
    let killed = replacement[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the waiting helper");
    while alive(killed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = run("warm-b");
    assert_ne!(pid, killed);
    assert!(gearhost_sandbox::wait_warm(&init, Duration::from_secs(10)));

    // no helper is kept once the node asks for none
    gearhost_sandbox::keep_warm(&init, 0);
    assert!(gearhost_sandbox::wait_warm(&init, Duration::from_secs(10)));
    assert_eq!(gearhost_sandbox::warm_status(&init), (0, None));
    assert_eq!(helpers_of(me, &init), Vec::<u32>::new());
}

#[test]
fn a_terminal_made_in_the_gear_is_the_commands_controlling_terminal() {
    if !privileged("a_terminal_made_in_the_gear_is_the_commands_controlling_terminal") {
        return;
    }
    let mut gear = TestGear::new(
        "tty",
        52_030,
        &[
            "/bin/sh",
            "-c",
            "tty; test -t 0 && echo is-a-tty; ps -o stat= -p $$; read line; echo got:$line",
        ],
    );
    // a terminal replaces the three streams, which must be left alone
    let mut refused = gear.spec.clone();
    refused.stdio.terminal = true;
    assert!(Sandbox::spawn(refused).is_err(), "stdout is piped");
    gear.spec.stdio.stdout = Stdio::Null;
    gear.spec.stdio.terminal = true;
    let subtree = gear.spec.cgroup.subtree.clone();
    let mut started = Sandbox::spawn(gear.spec).expect("gear starts");
    let mut terminal = started
        .take_terminal()
        .expect("the terminal's controlling side");
    std::io::Write::write_all(&mut terminal, b"hello\n").expect("type a line");
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    // the terminal reads until every process of the gear has closed it (then EIO)
    while let Ok(n) = terminal.read(&mut chunk) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    assert!(started.wait().expect("wait").success());
    started.teardown().expect("teardown");
    gearhost_sandbox::cgroup::remove_subtree(&subtree).expect("remove subtree");
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    // (the terminal echoes the typed line, wherever it lands among the rest)
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"/dev/pts/0"),
        "the gear's own devpts: {out}"
    );
    assert!(lines.contains(&"is-a-tty"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('S') && l.contains('s') && l.contains('+')),
        "a session leader in the foreground of its terminal (job control): {out}"
    );
    assert!(lines.contains(&"got:hello"), "typed input arrives: {out}");
}
