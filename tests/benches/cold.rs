//! Cold paths as whole processes, side by side in one run: what a person types, against the
//! peer doing the same job.
//!
//! - `gear --version` against `/bin/true` (process start-up of the `gear` binary);
//! - `gear sandbox run -- /bin/true` against `bwrap` running `/bin/true` (root only);
//! - `gear cartridge call DIR control --action status` on the hello cartridge, with the
//!   compiled component already in the cache, against the same `status` written as a bash
//!   hook (`tests/benches/fixtures/hello-control.sh`).
//!
//! `gear` and its `gearhost-init` are measured as installed: copied into a directory of their
//! own first (see `install`), not run where the linker left them.
//!
//! Each command is measured against its peer in rounds that run both once, the order swapping
//! from round to round, so that changing load on the machine hits both alike. The three pairs
//! run one after another, not mixed: a sandbox leaves kernel work behind when it ends (its
//! network namespace and cgroups are released by kernel workers a little later), which would
//! otherwise land on whatever command ran next. Each command is spawned, its output discarded,
//! and timed until it is reaped.
//!
//! Run (as root for the sandbox rows):
//! `cargo build --release -p gearhost-cli && cargo bench -p gearhost-tests --bench cold`.
//! Environment: `GEARHOST_BENCH_RUNS` (measured rounds, default 300), `GEARHOST_BENCH_QUICK`
//! (30 rounds), `GEARHOST_BENCH_PAUSE_MS` (a pause before every command, default 0: a command
//! typed by a person follows a quiet moment, not another start, and some kernel paths, such as
//! a cgroup v1 migration, are slower then). Results and method: docs/performance.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The bwrap invocation compared with `gear sandbox run`: every namespace bwrap offers, a new
/// session, all capabilities dropped, a root of its own with `/usr` read-only and the usual
/// symlinks, fresh `/proc`, a minimal `/dev` and a `/tmp` tmpfs. bwrap adds no cgroup, no
/// seccomp filter and no Landlock ruleset; `gear sandbox run` does all three.
const BWRAP_ARGS: &[&str] = &[
    "--unshare-all",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/bin",
    "/bin",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--symlink",
    "usr/sbin",
    "/sbin",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
    "/bin/true",
];

struct Case {
    name: &'static str,
    command: Command,
    samples: Vec<Duration>,
}

impl Case {
    fn new(name: &'static str, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Case {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Case {
            name,
            command,
            samples: Vec::new(),
        }
    }

    fn run_once(&mut self) -> Duration {
        let started = Instant::now();
        let status = self.command.status().expect("spawn a benchmarked command");
        let elapsed = started.elapsed();
        assert!(
            status.success(),
            "{} failed with {status}: run it by hand to see why",
            self.name
        );
        elapsed
    }
}

struct Stats {
    median: Duration,
    p95: Duration,
    mean: Duration,
    min: Duration,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let total: Duration = sorted.iter().sum();
    Stats {
        median: pick(0.5),
        p95: pick(0.95),
        mean: total / u32::try_from(sorted.len()).unwrap_or(u32::MAX),
        min: sorted[0],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `gear` and the `gearhost-init` beside it, copied into a directory of their own as an
/// install would put them. The files the linker just wrote are measured no more: the linker
/// writes its output piece by piece, and the page cache then holds it in single pages, where a
/// file written in one go (by `install`, a package manager or `cp`, or read back from disk) is
/// held in larger folios that map with fewer faults: 0.25-0.3 ms of every `gear` start on this
/// machine (docs/performance.md).
fn install(built: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a directory to install gear in");
    let from = built.parent().expect("gear's directory");
    for name in ["gear", "gearhost-init"] {
        gearhost_tests::copy_executable(&from.join(name), &dir.path().join(name));
    }
    dir
}

/// The hello cartridge, built, with its component compiled into `cache`.
fn warm_hello(gear: &Path, cache: &Path) -> tempfile::TempDir {
    let dir = gearhost_tests::cartridge_dir("hello-cartridge");
    let out = Command::new(gear)
        .args(["cartridge", "check"])
        .arg(dir.path())
        .env("GEARHOST_CACHE_DIR", cache)
        .output()
        .expect("run gear cartridge check");
    assert!(
        out.status.success(),
        "gear cartridge check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = if std::env::var_os("GEARHOST_BENCH_QUICK").is_some() {
        30
    } else {
        std::env::var("GEARHOST_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300)
    };
    let warmup = 20;
    let pause = Duration::from_millis(
        std::env::var("GEARHOST_BENCH_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let built = gearhost_tests::gear_bin();
    let installed = install(&built);
    let gear = installed.path().join("gear");
    let root = gearhost_tests::is_root();

    let cache = tempfile::tempdir().expect("cache directory");
    let hello = warm_hello(&gear, cache.path());
    let hook = gearhost_tests::workspace_root().join("tests/benches/fixtures/hello-control.sh");
    let gear_home = tempfile::tempdir().expect("the bash hook's gear home");
    std::fs::create_dir_all(gear_home.path().join("app-root/runtime")).expect("gear layout");

    let mut pairs: Vec<Vec<Case>> = vec![vec![
        Case::new("/bin/true", "/bin/true", &[]),
        Case::new("gear --version", &gear, &["--version"]),
    ]];
    let hello_dir = hello.path().to_str().expect("a UTF-8 temporary path");
    let mut call = Case::new(
        "gear cartridge call (hello, control status)",
        &gear,
        &[
            "cartridge",
            "call",
            hello_dir,
            "control",
            "--action",
            "status",
        ],
    );
    call.command.env("GEARHOST_CACHE_DIR", cache.path());
    let mut bash = Case::new("bash hook (control status)", "bash", &[]);
    bash.command
        .arg(&hook)
        .arg("status")
        .env("GEAR_HOME", gear_home.path())
        .env("GEAR_NAME", "scratch");
    pairs.push(vec![call, bash]);
    if root {
        let mut sandbox = vec![Case::new(
            "gear sandbox run -- /bin/true",
            &gear,
            &["sandbox", "run", "--", "/bin/true"],
        )];
        match find_program("bwrap") {
            Some(bwrap) => sandbox.push(Case::new("bwrap ... /bin/true", bwrap, BWRAP_ARGS)),
            None => eprintln!(
                "bwrap is not installed (apt-get install -y bubblewrap): its row is skipped"
            ),
        }
        pairs.push(sandbox);
    } else {
        eprintln!("not root: the sandbox rows need root and are skipped");
    }

    let load_before = read_trimmed("/proc/loadavg");
    for pair in &mut pairs {
        let n = pair.len();
        for round in 0..warmup + runs {
            for i in 0..n {
                let case = &mut pair[(round + i) % n];
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
                let elapsed = case.run_once();
                if round >= warmup {
                    case.samples.push(elapsed);
                }
            }
        }
    }
    let load_after = read_trimmed("/proc/loadavg");

    println!(
        "cold paths, {runs} rounds after {warmup} warm-up, {} ms pause before each command; kernel {}, {} CPUs; load average before: {load_before}, after: {load_after}",
        pause.as_millis(),
        read_trimmed("/proc/sys/kernel/osrelease"),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "{:<46} {:>8} {:>8} {:>8} {:>8}",
        "command", "median", "p95", "mean", "min"
    );
    let mut medians = std::collections::HashMap::new();
    for case in pairs.iter().flatten() {
        let s = stats(&case.samples);
        println!(
            "{:<46} {:>8} {:>8} {:>8} {:>8}  ms",
            case.name,
            ms(s.median),
            ms(s.p95),
            ms(s.mean),
            ms(s.min)
        );
        medians.insert(case.name, s.median.as_secs_f64());
    }
    let ratio = |a: &str, b: &str, target: &str| {
        if let (Some(x), Some(y)) = (medians.get(a), medians.get(b)) {
            println!("{a} / {b}: {:.2}x (target {target})", x / y);
        }
    };
    ratio("gear --version", "/bin/true", "none");
    ratio(
        "gear cartridge call (hello, control status)",
        "bash hook (control status)",
        "<= 2.00x",
    );
    ratio(
        "gear sandbox run -- /bin/true",
        "bwrap ... /bin/true",
        "<= 1.00x",
    );
}
