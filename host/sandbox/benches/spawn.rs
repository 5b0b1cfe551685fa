//! Start-up benchmark: a confined `/bin/true` with every layer on (cgroups included), started
//! and reaped, side by side in one run with `bwrap` and `crun run`; then a density run of many
//! gears each running `sleep`.
//!
//! The density run starts its gears one after another with no warm helper.
//!
//! gearhost is measured twice per round: as a node runs it, with one warm helper waiting (the
//! replacement is prepared in the background while the measured gear runs, and is ready again
//! before the next measured start), and cold, with no helper waiting.
//!
//! `cargo bench -p gearhost-sandbox` (as root). Environment: `GEARHOST_BENCH_RUNS` (default
//! 200), `GEARHOST_BENCH_DENSITY` (default 1000, 0 skips).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearhost_sandbox::{Sandbox, SandboxSpec};

const INIT: &str = env!("CARGO_BIN_EXE_gearhost-init");
const UID: u32 = 53_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Stats {
    median: Duration,
    p95: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len().max(1);
    let total: Duration = samples.iter().sum();
    Stats {
        median: samples[n / 2],
        p95: samples[(n * 95 / 100).min(n - 1)],
        mean: total / n as u32,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gearhost-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn gear_spec(id: &str, home: &Path, argv: &[&str], subtree: &str) -> SandboxSpec {
    let mut spec = SandboxSpec::new(
        id,
        UID,
        UID,
        home,
        argv.iter().map(|s| s.to_string()).collect(),
    );
    spec.init_path = Some(PathBuf::from(INIT));
    spec.cgroup.subtree = subtree.to_string();
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    spec.limits.memory_bytes = Some(128 << 20);
    spec.limits.pids = Some(64);
    spec.limits.cpu_millicores = Some(1000);
    spec
}

/// Start, reap and tear down (cgroup removed) one confined /bin/true.
fn gearhost_once(home: &Path, subtree: &str, i: usize) -> (Duration, Duration) {
    let spec = gear_spec(&format!("bench-{i}"), home, &["/bin/true"], subtree);
    let start = Instant::now();
    let mut gear = Sandbox::spawn(spec).expect("gear starts");
    let status = gear.wait().expect("wait");
    let reaped = start.elapsed();
    gear.teardown().expect("teardown");
    let total = start.elapsed();
    assert!(status.success());
    (reaped, total)
}

fn bwrap_once(bwrap: &Path) -> Duration {
    let start = Instant::now();
    let status = Command::new(bwrap)
        .args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ])
        .args([
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
        ])
        .args([
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--symlink",
            "usr/sbin",
            "/sbin",
        ])
        .args([
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "/bin/true",
        ])
        .stdin(Stdio::null())
        .status()
        .expect("bwrap runs");
    let elapsed = start.elapsed();
    assert!(status.success(), "bwrap failed: {status}");
    elapsed
}

fn crun_bundle(dir: &Path) {
    let rootfs = dir.join("rootfs");
    for d in ["usr", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ] {
        let _ = std::os::unix::fs::symlink(target, rootfs.join(link));
    }
    let config = format!(
        r#"{{
  "ociVersion": "1.0.2",
  "process": {{
    "terminal": false,
    "user": {{ "uid": {UID}, "gid": {UID} }},
    "args": ["/bin/true"],
    "env": ["PATH=/usr/bin:/bin"],
    "cwd": "/",
    "capabilities": {{ "bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": [] }},
    "noNewPrivileges": true,
    "rlimits": [{{ "type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096 }}]
  }},
  "root": {{ "path": "rootfs", "readonly": true }},
  "hostname": "bench",
  "mounts": [
    {{ "destination": "/proc", "type": "proc", "source": "proc" }},
    {{ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }},
    {{ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] }},
    {{ "destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro", "nosuid", "nodev"] }}
  ],
  "linux": {{
    "resources": {{
      "memory": {{ "limit": 134217728, "swap": 134217728 }},
      "pids": {{ "limit": 64 }},
      "cpu": {{ "quota": 100000, "period": 100000 }}
    }},
    "cgroupsPath": "/gearhost-bench-crun",
    "namespaces": [ {{ "type": "pid" }}, {{ "type": "network" }}, {{ "type": "ipc" }}, {{ "type": "uts" }}, {{ "type": "mount" }}, {{ "type": "cgroup" }} ],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
    "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"],
    "seccomp": {{ "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
      "syscalls": [ {{ "names": ["mount", "umount2", "pivot_root", "ptrace", "kexec_load", "init_module", "finit_module", "delete_module", "bpf", "keyctl", "add_key", "request_key", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "unshare", "setns"], "action": "SCMP_ACT_ERRNO" }} ] }}
  }}
}}"#
    );
    std::fs::write(dir.join("config.json"), config).expect("config.json");
}

/// A shell in a private mount namespace without the cgroup2 mount (crun 1.8 refuses this
/// machine's hybrid layout otherwise) that runs `crun run` once per line it reads.
struct CrunRunner {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl CrunRunner {
    fn start(crun: &Path, bundle: &Path) -> CrunRunner {
        let script = format!(
            "umount /sys/fs/cgroup/unified 2>/dev/null; while read id; do {} run --bundle {} \"$id\" >/dev/null 2>&1; echo $?; done",
            crun.display(),
            bundle.display()
        );
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        CrunRunner {
            child,
            stdin,
            stdout,
        }
    }

    fn once(&mut self, i: usize) -> Duration {
        let start = Instant::now();
        writeln!(self.stdin, "gearhost-bench-{}-{i}", std::process::id()).expect("write");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        let elapsed = start.elapsed();
        assert_eq!(line.trim(), "0", "crun run failed (exit {})", line.trim());
        elapsed
    }
}

impl Drop for CrunRunner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib() -> u64 {
    gearhost_sys::proc_status::Status::own()
        .ok()
        .and_then(|s| s.kib("VmRSS"))
        .unwrap_or(0)
}

/// Memory charged to this process's own memory cgroup (v1 or v2), in bytes.
fn own_memcg_usage() -> Option<u64> {
    use gearhost_sandbox::cgroup;
    let mounts = cgroup::detect().ok()?;
    let groups = cgroup::cgroups_of(std::process::id()).ok()?;
    let dir = cgroup::process_dir(&mounts, &groups, "memory")?;
    let file = if mounts.v1.contains_key("memory") {
        "memory.usage_in_bytes"
    } else {
        "memory.current"
    };
    std::fs::read_to_string(dir.join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn density(count: usize) {
    let subtree = format!("gearhost-bench-density-{}", std::process::id());
    let home = scratch("density");
    std::os::unix::fs::chown(&home, Some(UID), Some(UID)).expect("chown");
    let rss_before = rss_kib();
    let node_charge_before = own_memcg_usage();
    let start = Instant::now();
    let mut gears = Vec::with_capacity(count);
    for i in 0..count {
        let mut spec = gear_spec(&format!("d{i}"), &home, &["/bin/sleep", "1000"], &subtree);
        spec.limits.cpu_millicores = None;
        gears.push(Sandbox::spawn(spec).expect("gear starts"));
    }
    let started = start.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kib();
    let node_charge_after = own_memcg_usage();
    let charged: u64 = gears.iter().filter_map(|g| g.cgroup().memory_usage()).sum();
    let processes: usize = gears.iter().map(|g| g.cgroup().pids().len()).sum();
    let teardown_start = Instant::now();
    let mut leftovers = 0;
    for g in gears {
        let paths = g.cgroup().paths();
        g.teardown().expect("teardown");
        leftovers += paths.iter().filter(|p| p.exists()).count();
    }
    let torn_down = teardown_start.elapsed();
    gearhost_sandbox::cgroup::remove_subtree(&subtree).expect("subtree removed");
    let _ = std::fs::remove_dir_all(&home);
    println!();
    println!("density: {count} gears each running `sleep 1000`");
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| time to start all | {:.2} s ({} ms per gear) |",
        started.as_secs_f64(),
        ms(started / count as u32)
    );
    println!("| processes in the gears' cgroups | {processes} |");
    println!(
        "| node RSS growth | {} KiB total, {:.1} KiB per gear |",
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 / count as f64
    );
    println!(
        "| memory charged to the gears' cgroups | {:.1} MiB total, {:.0} KiB per gear |",
        charged as f64 / (1 << 20) as f64,
        charged as f64 / 1024.0 / count as f64
    );
    if let (Some(before), Some(after)) = (node_charge_before, node_charge_after) {
        let grown = after.saturating_sub(before);
        println!(
            "| memory charged to the starting process's own cgroup (helpers' shared part, page cache; approximate) | {:.1} MiB total, {:.0} KiB per gear |",
            grown as f64 / (1 << 20) as f64,
            grown as f64 / 1024.0 / count as f64
        );
    }
    println!("| teardown of all | {:.2} s |", torn_down.as_secs_f64());
    println!("| cgroup directories left | {leftovers} |");
    assert_eq!(leftovers, 0);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = env_usize("GEARHOST_BENCH_RUNS", 200);
    let density_count = env_usize("GEARHOST_BENCH_DENSITY", 1000);
    let home = scratch("home");
    std::os::unix::fs::chown(&home, Some(UID), Some(UID)).expect("chown home (run as root)");
    let subtree = format!("gearhost-bench-{}", std::process::id());

    let bwrap = which("bwrap");
    let crun = which("crun");
    if bwrap.is_none() {
        println!("bwrap not found: apt-get install -y bubblewrap (skipping its column)");
    }
    if crun.is_none() {
        println!("crun not found: apt-get install -y crun (skipping its column)");
    }
    let bundle = scratch("bundle");
    crun_bundle(&bundle);
    let mut crun_runner = crun.as_ref().map(|c| CrunRunner::start(c, &bundle));

    let init = Path::new(INIT);
    let warm = |count: usize| {
        gearhost_sandbox::keep_warm(init, count);
        assert!(
            gearhost_sandbox::wait_warm(init, Duration::from_secs(10)),
            "warm helper not ready: {:?}",
            gearhost_sandbox::warm_status(init)
        );
    };
    // Warm up every tool, then interleave them so load changes hit all alike.
    for i in 0..10 {
        warm(1);
        gearhost_once(&home, &subtree, i);
        warm(0);
        gearhost_once(&home, &subtree, i);
        if let Some(b) = &bwrap {
            bwrap_once(b);
        }
        if let Some(c) = crun_runner.as_mut() {
            c.once(100_000 + i);
        }
    }
    let (mut gh, mut gh_total, mut bw, mut cr, mut plain, mut unshare) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut cold, mut cold_total) = (vec![], vec![]);
    for i in 0..runs {
        warm(1);
        let (reaped, total) = gearhost_once(&home, &subtree, i);
        gh.push(reaped);
        gh_total.push(total);
        warm(0);
        let (reaped, total) = gearhost_once(&home, &subtree, i);
        cold.push(reaped);
        cold_total.push(total);
        if let Some(b) = &bwrap {
            bw.push(bwrap_once(b));
        }
        if let Some(c) = crun_runner.as_mut() {
            cr.push(c.once(i));
        }
        let t = Instant::now();
        Command::new("/bin/true").status().expect("true");
        plain.push(t.elapsed());
        let t = Instant::now();
        Command::new("unshare")
            .args([
                "--fork",
                "--pid",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--mount-proc",
                "true",
            ])
            .status()
            .expect("unshare");
        unshare.push(t.elapsed());
    }
    drop(crun_runner);
    let _ = gearhost_sandbox::cgroup::remove_subtree(&subtree);
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&bundle);

    println!("start-up of a confined /bin/true, {runs} interleaved runs, milliseconds");
    println!("| what | median | p95 | mean |");
    println!("| --- | --- | --- | --- |");
    let row = |name: &str, samples: Vec<Duration>| -> Option<Duration> {
        if samples.is_empty() {
            return None;
        }
        let s = stats(samples);
        println!(
            "| {name} | {} | {} | {} |",
            ms(s.median),
            ms(s.p95),
            ms(s.mean)
        );
        Some(s.median)
    };
    row("/bin/true (no isolation)", plain);
    row("unshare, 6 namespaces + mount-proc", unshare);
    let ours = row("gearhost: all layers, warm helper, start + reap", gh);
    let ours_total = row(
        "gearhost: all layers, warm helper, start + reap + cgroup removal",
        gh_total,
    );
    row("gearhost: all layers, cold, start + reap", cold);
    let cold_total = row(
        "gearhost: all layers, cold, start + reap + cgroup removal",
        cold_total,
    );
    let bw_median = row("bwrap --unshare-all", bw);
    let cr_median = row("crun run (cgroups, seccomp, caps dropped)", cr);
    if let (Some(o), Some(b)) = (ours_total.or(ours), bw_median) {
        println!(
            "gearhost / bwrap = {:.2} (target <= 1.00)",
            o.as_secs_f64() / b.as_secs_f64()
        );
    }
    if let (Some(o), Some(c)) = (ours_total.or(ours), cr_median) {
        println!(
            "gearhost / crun = {:.2} (target <= 0.50)",
            o.as_secs_f64() / c.as_secs_f64()
        );
    }
    if let (Some(o), Some(b), Some(c)) = (cold_total, bw_median, cr_median) {
        println!(
            "cold: gearhost / bwrap = {:.2}, gearhost / crun = {:.2}",
            o.as_secs_f64() / b.as_secs_f64(),
            o.as_secs_f64() / c.as_secs_f64()
        );
    }
    if density_count > 0 {
        density(density_count);
    }
}
