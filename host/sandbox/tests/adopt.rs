//! A detached gear that keeps its output (`detached`, `keep_output`): while nobody reads its
//! stdout it writes on into the enlarged pipe, then waits (no `SIGPIPE`); taken back with
//! `Adopted::adopt`, every byte comes out of the pipe, and a process that is not what a record
//! says is refused. Needs root; skipped without it unless `GEARHOST_REQUIRE_PRIVILEGED=1`.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gearhost_sandbox::{Adopted, Sandbox, SandboxSpec, Signal, Stdio};

const INIT: &str = env!("CARGO_BIN_EXE_gearhost-init");

fn privileged(test: &str) -> bool {
    let reason = if !gearhost_sys::proc_status::is_root() {
        Some("not running as root".to_string())
    } else {
        let report = gearhost_sandbox::check::host_capabilities();
        (!report.required_layers_hold())
            .then(|| format!("this machine lacks required layers:\n{report}"))
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

/// Whether the process `pid` still runs (and is no zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_kept_pipe_holds_the_output_until_the_process_is_taken_back() {
    if !privileged("a_kept_pipe_holds_the_output_until_the_process_is_taken_back") {
        return;
    }
    let uid = 81_500;
    let state = tempfile::Builder::new()
        .prefix("gearhost-adopt-")
        .tempdir()
        .expect("state dir");
    let home = state.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    std::os::unix::fs::chown(&home, Some(uid), Some(uid)).expect("chown home");
    // 3 MiB, more than the 1 MiB pipe holds, then a last line
    let script = "head -c 3145728 /dev/zero | tr '\\0' a; echo; echo end; exec sleep 60";
    let mut spec = SandboxSpec::new(
        "adopt-a",
        uid,
        uid,
        &home,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    );
    spec.cgroup.subtree = format!("gearhost-test-{}-adopt", std::process::id());
    spec.init_path = Some(PathBuf::from(INIT));
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    spec.stdio.stdout = Stdio::Piped;
    spec.stdio.stderr = Stdio::Piped;
    spec.detached = true;
    spec.keep_output = true;
    spec.limits.pids = Some(64);
    let placement = spec.cgroup.clone();
    let subtree = spec.cgroup.subtree.clone();

    let mut gear = Sandbox::spawn(spec).expect("gear starts");
    let pid = gear.pid();
    let started = gearhost_sandbox::adopt::start_time(pid).expect("start time");
    // the node's reading ends go, as when the node dies
    drop(gear.take_stdout());
    drop(gear.take_stderr());
    std::thread::sleep(Duration::from_millis(800));
    assert!(alive(pid), "the gear died when its output lost its reader");

    // a record that does not match is refused, and changes nothing
    let wrong = Adopted::adopt(pid, started + 1, &placement).expect_err("another start time");
    assert!(wrong.contains("another process"), "{wrong}");
    let mut elsewhere = placement.clone();
    elsewhere.leaf.push_str("-other");
    let wrong = Adopted::adopt(pid, started, &elsewhere).expect_err("another cgroup");
    assert!(wrong.contains("not in its recorded cgroup"), "{wrong}");

    let mut adopted = Adopted::adopt(pid, started, &placement).expect("taken back");
    assert_eq!(adopted.pid(), pid);
    assert!(!adopted.has_ended());
    let mut out = adopted.take_stdout().expect("stdout");
    let mut text = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 1 << 16];
    while !text.ends_with(b"end\n") {
        assert!(Instant::now() < deadline, "read {} bytes", text.len());
        let n = out.read(&mut buf).expect("read the taken pipe");
        assert!(n > 0, "end of file after {} bytes", text.len());
        text.extend_from_slice(&buf[..n]);
    }
    assert_eq!(text.len(), 3 * 1024 * 1024 + 5, "every byte, once");
    assert!(text[..3 * 1024 * 1024].iter().all(|b| *b == b'a'));

    // the adopted handle signals through its pidfd and sees the end
    adopted.kill(Signal::Kill).expect("kill");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !adopted.has_ended() {
        assert!(Instant::now() < deadline, "the init did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    // this test started it, so it reaps it too
    let _ = gear.wait();
    adopted.teardown().expect("teardown");
    drop(gear);
    let _ = gearhost_sandbox::cgroup::remove_subtree(&subtree);
}
