//! `gearhost-probe`: run inside a gear by the isolation tests; checks the sandbox from within
//! and prints what it found as JSON on stdout.
//!
//! Modes: `isolation <config-json>`, `oom`, `hog`, `forkbomb`, `spin <millis>`; and, run on
//! the host, `parent <spec-json>`: start a gear, print its pid, then wait to be killed.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gearhost_sys::proc_status::Status;
use serde_json::{Value, json};

fn errno_of<T>(result: std::io::Result<T>) -> Value {
    match result {
        Ok(_) => json!("ok"),
        Err(e) => json!(
            e.raw_os_error()
                .map_or_else(|| e.to_string(), |n| n.to_string())
        ),
    }
}

/// Runs a raw system call result through errno: "ok" or the errno number as a string.
fn sys_result(ret: libc::c_long) -> Value {
    if ret < 0 {
        json!(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(0)
                .to_string()
        )
    } else {
        json!("ok")
    }
}

fn isolation(config: &Value) -> Value {
    let mut out = BTreeMap::new();
    let status = Status::own().unwrap_or_else(|_| Status::from_text(""));
    for f in [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ] {
        out.insert(f.to_string(), json!(status.field(f).unwrap_or_default()));
    }
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    out.insert("pids".into(), json!(pids));
    out.insert("self_pid".into(), json!(std::process::id()));
    out.insert(
        "hostname".into(),
        json!(
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
        ),
    );

    // SAFETY: mount with valid NUL-terminated strings and a null data pointer.
    let mount = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    out.insert("mount".into(), sys_result(mount as libc::c_long));
    // SAFETY: unshare takes a flag word.
    let unshare = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
    out.insert("unshare_user".into(), sys_result(unshare as libc::c_long));
    // SAFETY: a fork-like clone with a user-namespace flag; if it ever succeeded the child
    // leaves at once with _exit and the parent reaps it.
    let clone = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0,
            0,
            0,
            0,
        )
    };
    if clone == 0 {
        // SAFETY: child of the clone above; leave immediately.
        unsafe { libc::_exit(0) };
    }
    let clone_value = sys_result(clone);
    if clone > 0 {
        // SAFETY: reap the child created above.
        unsafe { libc::waitpid(clone as libc::pid_t, std::ptr::null_mut(), 0) };
    }
    out.insert("clone_newuser".into(), clone_value);
    let byte: libc::c_char = b'x' as libc::c_char;
    // SAFETY: TIOCSTI reads one byte through the pointer, which is valid for the call.
    let tiocsti = unsafe { libc::ioctl(0, libc::TIOCSTI, &byte as *const libc::c_char) };
    out.insert("tiocsti".into(), sys_result(tiocsti as libc::c_long));
    // SAFETY: ptrace attach takes integers; pid 1 is the gear's init.
    let ptrace = unsafe { libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0) };
    out.insert("ptrace_init".into(), sys_result(ptrace));
    // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID = 0, KEY_SPEC_SESSION_KEYRING = -3, 0).
    let keyctl = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
    out.insert("keyctl".into(), sys_result(keyctl));
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(1, params) reads and writes the 120-byte io_uring_params,
    // which `params` holds for the call; a ring it makes is closed below.
    let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
    out.insert("io_uring_setup".into(), sys_result(ring));
    if ring >= 0 {
        // SAFETY: closes the descriptor the call above returned, used nowhere else.
        unsafe { libc::close(ring as libc::c_int) };
    }
    // SAFETY: bpf with a null attribute pointer and size 0 never dereferences it.
    let bpf = unsafe { libc::syscall(libc::SYS_bpf, 0, 0, 0) };
    out.insert("bpf".into(), sys_result(bpf));
    // SAFETY: personality(ADDR_COMPAT_LAYOUT) only changes the personality word; the filter
    // refuses it.
    let persona = unsafe { libc::personality(0x0040_0000) };
    out.insert(
        "personality_addr_compat".into(),
        sys_result(persona as libc::c_long),
    );

    let write = |p: &str| errno_of(std::fs::write(p, b"x"));
    out.insert("write_usr".into(), write("/usr/gearhost-probe"));
    out.insert("write_etc".into(), write("/etc/gearhost-probe"));
    out.insert(
        "write_etc_passwd".into(),
        errno_of(std::fs::OpenOptions::new().append(true).open("/etc/passwd")),
    );
    out.insert("write_proc_sys".into(), write("/proc/sys/kernel/hostname"));
    out.insert("write_root".into(), write("/gearhost-probe"));
    out.insert("write_dev_shm".into(), write("/dev/shm/gearhost-probe"));
    out.insert("write_tmp".into(), write("/tmp/gearhost-probe"));
    let home = config["home"].as_str().unwrap_or("/gear");
    out.insert(
        "write_home".into(),
        write(&format!("{home}/probe-wrote-this")),
    );
    if let Some(dir) = config["world_writable"].as_str() {
        out.insert(
            "write_world_writable".into(),
            write(&format!("{dir}/probe-wrote-this")),
        );
    }
    out.insert(
        "read_kcore".into(),
        json!(std::fs::read("/proc/kcore").map(|b| b.len()).unwrap_or(0)),
    );
    out.insert(
        "read_keys".into(),
        json!(std::fs::read_to_string("/proc/keys").unwrap_or_default()),
    );
    out.insert(
        "sys_exists".into(),
        json!(Path::new("/sys/kernel").exists()),
    );
    out.insert(
        "etc_shadow_exists".into(),
        json!(Path::new("/etc/shadow").exists()),
    );

    // A symlink in the home pointing at /etc/shadow yields nothing.
    let link = format!("{home}/shadow-link");
    let _ = std::fs::remove_file(&link);
    let _ = std::os::unix::fs::symlink("/etc/shadow", &link);
    out.insert(
        "read_shadow_via_link".into(),
        errno_of(std::fs::read(&link)),
    );

    let mut visible = BTreeMap::new();
    for p in config["must_be_invisible"].as_array().into_iter().flatten() {
        if let Some(p) = p.as_str() {
            visible.insert(p.to_string(), Path::new(p).exists());
        }
    }
    out.insert("visible".into(), json!(visible));
    let tmp: Vec<String> = std::fs::read_dir("/tmp")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    out.insert("tmp_entries".into(), json!(tmp));

    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let ifaces: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split(':').next()?.trim().to_string()))
        .collect();
    out.insert("interfaces".into(), json!(ifaces));
    if let Some(port) = config["host_port"].as_u64() {
        let r = TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().expect("address"),
            Duration::from_secs(2),
        );
        out.insert("connect_host_port".into(), errno_of(r));
    }
    // Loopback works inside: a server and a client in the gear.
    let lo = TcpListener::bind("127.0.0.1:0").and_then(|l| {
        let addr = l.local_addr()?;
        let mut c = TcpStream::connect(addr)?;
        c.write_all(b"ping")?;
        let (mut s, _) = l.accept()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        Ok(buf == *b"ping")
    });
    out.insert("loopback_works".into(), json!(lo.unwrap_or(false)));

    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    out.insert("fds".into(), json!(fds));
    let env: BTreeMap<String, String> = std::env::vars().collect();
    out.insert("env".into(), json!(env));
    if let Some(setuid) = config["setuid_binary"].as_str() {
        let r = Command::new(setuid).arg("-u").output();
        out.insert(
            "setuid_euid".into(),
            json!(
                r.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_else(|e| e.to_string())
            ),
        );
    }
    out.insert(
        "cwd".into(),
        json!(
            std::env::current_dir()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
    );
    out.insert(
        "passwd_has_gear".into(),
        json!(
            std::fs::read_to_string("/etc/passwd")
                .unwrap_or_default()
                .lines()
                .count()
        ),
    );
    json!(out)
}

fn hog() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        for i in (0..block.len()).step_by(4096) {
            block[i] = 1;
        }
        blocks.push(std::hint::black_box(block));
    }
}

fn oom() -> Value {
    let exe = std::env::current_exe().expect("own path");
    let status = Command::new(exe).arg("hog").status();
    let (code, signal) = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            (s.code(), s.signal())
        }
        Err(_) => (None, None),
    };
    // This process is the gear's other process: still alive to say so.
    json!({ "hog_code": code, "hog_signal": signal, "survivor_alive": true })
}

fn forkbomb() -> Value {
    let mut children = Vec::new();
    let error = loop {
        match Command::new("/bin/sleep").arg("1000").spawn() {
            Ok(c) => children.push(c),
            Err(e) => break e,
        }
        if children.len() > 10_000 {
            break std::io::Error::other("no limit hit");
        }
    };
    let spawned = children.len();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    json!({ "spawned": spawned, "error": error.to_string(), "errno": error.raw_os_error() })
}

fn spin(millis: u64) -> Value {
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(millis) {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    json!({ "wall_ms": start.elapsed().as_millis() as u64, "x": x & 1 })
}

/// Plays the node: starts a gear from `spec`, prints its pid and sleeps until killed.
fn parent(spec: &str) -> Value {
    let spec: gearhost_sandbox::SandboxSpec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    // Like a node: start the gear from a warm helper, and keep another one waiting.
    let init = match gearhost_sandbox::find_init(spec.init_path.as_deref()) {
        Ok(i) => i,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    gearhost_sandbox::keep_warm(&init, 1);
    if !gearhost_sandbox::wait_warm(&init, Duration::from_secs(10)) {
        return json!({ "error": format!("no warm helper: {:?}", gearhost_sandbox::warm_status(&init)) });
    }
    let started = gearhost_sandbox::Sandbox::spawn(spec);
    if !gearhost_sandbox::wait_warm(&init, Duration::from_secs(10)) {
        return json!({ "error": format!("no warm helper after the start: {:?}", gearhost_sandbox::warm_status(&init)) });
    }
    match started {
        Ok(gear) => {
            println!("{}", json!({ "gear_pid": gear.pid() }));
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(1000));
            }
        }
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("");
    let result = match mode {
        "isolation" => {
            let config: Value = args
                .get(2)
                .and_then(|c| serde_json::from_str(c).ok())
                .unwrap_or(Value::Null);
            isolation(&config)
        }
        "hog" => hog(),
        "oom" => oom(),
        "forkbomb" => forkbomb(),
        "parent" => parent(args.get(2).map(String::as_str).unwrap_or("")),
        "spin" => spin(args.get(2).and_then(|m| m.parse().ok()).unwrap_or(1000)),
        _ => {
            eprintln!(
                "usage: gearhost-probe isolation <config-json> | oom | hog | forkbomb | spin <millis>"
            );
            std::process::exit(2);
        }
    };
    println!("{result}");
}
