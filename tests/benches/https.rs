//! HTTPS benchmark, side by side in one run with `h2load` against one
//! trivial app (the `GET /` of `tests/apps/frontend-app`, node's `http`
//! module, in a real gear of the `nodejs` cartridge), behind three
//! TLS-terminating proxies with the same certificate (ECDSA P-256, from a
//! test CA) and the same number of worker threads:
//!
//! 1. **frontend**: the node's `[https]` listener (rustls; h2 by ALPN);
//! 2. **nginx**: Debian's nginx as a TLS reverse proxy (`listen ... ssl
//!    http2`, upstream keep-alive, a buffered access log, a shared session
//!    cache), in the gear's network namespace, the only place the app can be
//!    reached from without the node;
//! 3. **haproxy**: Debian's HAProxy (`bind ... ssl alpn h2,http/1.1`,
//!    `http-reuse always`), in the gear's network namespace too.
//!
//! Rows, each in interleaved rounds (every setup once per round), median
//! round reported, `h2load` as the client (in the gear's namespace for
//! nginx and HAProxy, on the host for the node):
//!
//! - **handshakes/s**: HTTP/1.1 with `Connection: close`, 50 clients: every
//!   request on a new TLS connection (h2load resumes TLS sessions, as a
//!   browser does);
//! - **HTTP/1.1 kept**: `h2load --h1` at 1 and at 50 connections;
//! - **HTTP/2 kept**: `h2load` at 1 and at 50 connections, 10 streams at a
//!   time on each;
//! - **plain HTTP/1.1 at 1 connection**: the frontend's plain listener
//!   against nginx's plain one (HAProxy is not part of that row).
//!
//! Run as root on a quiet machine: `cargo build --release -p gearhost-cli -p
//! gearhost-node -p gearhost-sandbox --bins && cargo bench -p gearhost-tests
//! --bench https`. Needs `h2load` (nghttp2-client), `nginx`, `haproxy`,
//! `openssl` and `nsenter`. Results: docs/performance.md.
//! `GEARHOST_BENCH_QUICK=1` runs one round of 2-second runs;
//! `GEARHOST_BENCH_ROUNDS=<n>` runs n rounds; `GEARHOST_BENCH_ROWS=<text>`
//! only the rows whose name contains the text (e.g. `HTTP/2`);
//! `GEARHOST_BENCH_HOLD=<seconds>` keeps everything up that long before
//! measuring (for profiling by hand; the addresses are printed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, free_port, test_pki, workspace_root};

/// What one h2load run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    /// CPU time the proxy used per request, µs.
    cpu_us: f64,
}

/// CPU time (user + system) used so far by every thread of these processes, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let mut ticks = 0u64;
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    // USER_HZ is 100 on Linux
    ticks as f64 / 100.0
}

/// Processes whose command line contains `needle`, and their children.
fn processes(needle: &str) -> Vec<u32> {
    let all: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read_to_string(e.path().join("cmdline"))
                .ok()?
                .replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid, cmdline))
        })
        .collect();
    let mut found: Vec<u32> = all
        .iter()
        .filter(|(_, _, c)| c.contains(needle))
        .map(|(p, _, _)| *p)
        .collect();
    let parents = found.clone();
    for (pid, ppid, _) in &all {
        if parents.contains(ppid) && !found.contains(pid) {
            found.push(*pid);
        }
    }
    found
}

/// A proxy under test: where h2load runs and connects, and its processes.
struct Setup {
    name: &'static str,
    netns: Option<PathBuf>,
    tls_port: u16,
    plain_port: Option<u16>,
    pids: Vec<u32>,
}

/// How a row drives h2load.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Handshakes,
    Http1 { conns: u32 },
    Http2 { conns: u32 },
    Plain,
}

const HOST: &str = "bench-default.gears.test";

fn h2load(setup: &Setup, mode: Mode, secs: u32) -> Option<Run> {
    let mut cmd = match &setup.netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("h2load");
            c
        }
        None => Command::new("h2load"),
    };
    // h2load's timed mode does not end when the server closes connections
    // (it waits for them forever): the handshake row counts requests instead
    if !matches!(mode, Mode::Handshakes) {
        cmd.args(["-D", &secs.to_string(), "--warm-up-time", "1"]);
    }
    let port = match mode {
        Mode::Plain => setup.plain_port?,
        _ => setup.tls_port,
    };
    let scheme = if matches!(mode, Mode::Plain) {
        "http"
    } else {
        "https"
    };
    match mode {
        Mode::Handshakes => {
            let n = (secs * 2000).to_string();
            cmd.args(["--h1", "-c", "50", "-n", &n, "-H", "Connection: close"]);
        }
        Mode::Http1 { conns } => {
            cmd.args(["--h1", "-c", &conns.to_string()]);
        }
        Mode::Http2 { conns } => {
            cmd.args(["-c", &conns.to_string(), "-m", "10"]);
        }
        Mode::Plain => {
            cmd.args(["--h1", "-c", "1"]);
        }
    }
    cmd.arg("--connect-to")
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("{scheme}://{HOST}:{port}/"));
    let before = cpu_seconds(&setup.pids);
    let out = cmd.output().expect("run h2load");
    let cpu = cpu_seconds(&setup.pids) - before;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "h2load failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("no requests line from h2load:\n{text}"));
    let field = |word: &str| -> f64 {
        requests
            .split(',')
            .find(|p| p.trim().ends_with(word))
            .and_then(|p| p.split_whitespace().find_map(|n| n.parse().ok()))
            .unwrap_or(f64::NAN)
    };
    let (done, failed, errored) = (field("succeeded"), field("failed"), field("errored"));
    assert!(
        failed == 0.0 && errored == 0.0 && done > 0.0,
        "{} {mode:?}: h2load saw failures:\n{text}",
        setup.name
    );
    let expect = if matches!(mode, Mode::Http2 { .. }) {
        "Application protocol: h2"
    } else {
        "Application protocol: http/1.1"
    };
    assert!(text.contains(expect), "{} {mode:?}:\n{text}", setup.name);
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    Some(Run {
        rps,
        cpu_us: cpu * 1e6 / done,
    })
}

/// Waits until `url` answers over TLS from inside `netns` (or the host).
fn wait_up(name: &str, netns: Option<&Path>, port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("curl");
                c
            }
            None => Command::new("curl"),
        };
        let ok = c
            .args(["-skf", "-o", "/dev/null", "--resolve"])
            .arg(format!("{HOST}:{port}:127.0.0.1"))
            .arg(format!("https://{HOST}:{port}/"))
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not come up: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx terminating TLS (and plain HTTP on `plain`) in front of the app,
/// inside the gear's network namespace.
#[allow(
    clippy::zombie_processes,
    reason = "the child is returned; the caller stops and waits for it"
)]
fn start_nginx(
    dir: &Path,
    pki: &Path,
    netns: &Path,
    tls: u16,
    plain: u16,
    workers: usize,
) -> Child {
    let d = dir.display();
    let p = pki.display();
    let conf = format!(
        "user root;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log {d}/access.log combined buffer=64k flush=1s;\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           ssl_certificate {p}/wildcard.pem; ssl_certificate_key {p}/wildcard.key;\n\
           ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;\n\
           keepalive_requests 10000000; keepalive_timeout 300s;\n\
           upstream app {{ server 127.0.0.1:8080; keepalive 64; }}\n\
           server {{\n\
             listen 127.0.0.1:{tls} ssl http2;\n\
             listen 127.0.0.1:{plain};\n\
             location / {{\n\
               proxy_pass http://app;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_set_header Host $http_host;\n\
               proxy_set_header X-Forwarded-For $remote_addr;\n\
               proxy_set_header X-Forwarded-Host $http_host;\n\
               proxy_set_header X-Forwarded-Proto $scheme;\n\
             }}\n\
           }}\n\
         }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nginx", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .spawn()
        .expect("start nginx");
    wait_up(
        "nginx",
        Some(netns),
        tls,
        &mut child,
        &dir.join("error.log"),
    );
    child
}

/// HAProxy terminating TLS in front of the app, inside the gear's network
/// namespace.
#[allow(
    clippy::zombie_processes,
    reason = "the child is returned; the caller stops and waits for it"
)]
fn start_haproxy(dir: &Path, pki: &Path, netns: &Path, tls: u16, workers: usize) -> Child {
    // HAProxy takes the certificate and its key in one file
    let mut combined = std::fs::read(pki.join("wildcard.pem")).expect("certificate");
    combined.extend(std::fs::read(pki.join("wildcard.key")).expect("key"));
    let crt = dir.join("combined.pem");
    std::fs::write(&crt, combined).expect("combined.pem");
    let conf = format!(
        "global\n  nbthread {workers}\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend fe\n  bind 127.0.0.1:{tls} ssl crt {crt} alpn h2,http/1.1\n\
         \x20 option forwardfor\n  http-request set-header X-Forwarded-Proto https\n\
         \x20 default_backend app\n\
         backend app\n  http-reuse always\n  server app 127.0.0.1:8080\n",
        crt = crt.display()
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).expect("haproxy.cfg");
    let log = dir.join("haproxy.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["haproxy", "-db", "-f"])
        .arg(&path)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start haproxy");
    wait_up("haproxy", Some(netns), tls, &mut child, &log);
    child
}

/// A proxy's process, stopped (SIGTERM, then waited for) when dropped, a
/// failed run included.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs[runs.len() / 2]
}

/// The median over rounds of the frontend's requests per second against
/// the better peer's in the same round (`runs[setup][round]`, the frontend
/// first): runs a few seconds apart share the machine's state, so this
/// moves less than the ratio of the medians when the machine drifts.
fn paired_ratio(runs: &[Vec<Option<Run>>]) -> f64 {
    let rounds = runs.first().map_or(0, Vec::len);
    let mut ratios: Vec<f64> = (0..rounds)
        .filter_map(|round| {
            let front = runs[0][round]?;
            let peer = runs[1..]
                .iter()
                .filter_map(|setup| setup[round])
                .map(|r| r.rps)
                .reduce(f64::max)?;
            Some(front.rps / peer)
        })
        .collect();
    if ratios.is_empty() {
        return f64::NAN;
    }
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !gearhost_tests::is_root() {
        eprintln!("skipped: the HTTPS benchmark runs a node, which needs root");
        return;
    }
    let quick = std::env::var_os("GEARHOST_BENCH_QUICK").is_some();
    let secs = if quick { 2 } else { 5 };
    let rounds = std::env::var("GEARHOST_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(if quick { 1 } else { 3 });
    // only the rows whose name contains this (any case), e.g. "HTTP/2"
    let only = std::env::var("GEARHOST_BENCH_ROWS")
        .unwrap_or_default()
        .to_lowercase();
    // the same worker threads for each: the node's default, half the cores
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2));

    let pki = tempfile::tempdir().expect("pki");
    test_pki(pki.path(), "wildcard", &["*.gears.test"]);
    let tls_port = free_port();
    let node = TestNode::start_shared(
        87200,
        &format!(
            "domain = \"gears.test\"\n[http]\nworkers = {workers}\n\
             [https]\nlisten = \"127.0.0.1:{tls_port}\"\ncertificate = \"{}\"\nkey = \"{}\"\n",
            pki.path().join("wildcard.pem").display(),
            pki.path().join("wildcard.key").display()
        ),
        "idle-timeout = \"off\"\n",
    );
    let nodejs = cartridge_dir("nodejs-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        nodejs.path().to_str().expect("utf-8"),
    ]);
    node.ok(&["create", "bench", "--cartridge", "nodejs"]);
    let app: PathBuf = workspace_root().join("tests/apps/frontend-app");
    node.ok(&["deploy", "bench", app.to_str().expect("utf-8")]);
    let shown: serde_json::Value =
        serde_json::from_str(&node.ok(&["show", "bench", "--json"])).expect("json");
    let id = shown["id"].as_str().expect("id");
    let netns = node.state_dir().join("netns").join(id);

    let nginx_dir = tempfile::tempdir().expect("nginx dir");
    let (nginx_tls, nginx_plain) = (free_port(), free_port());
    let nginx = Stopped(start_nginx(
        nginx_dir.path(),
        pki.path(),
        &netns,
        nginx_tls,
        nginx_plain,
        workers,
    ));
    let haproxy_dir = tempfile::tempdir().expect("haproxy dir");
    let haproxy_tls = free_port();
    let haproxy = Stopped(start_haproxy(
        haproxy_dir.path(),
        pki.path(),
        &netns,
        haproxy_tls,
        workers,
    ));

    let setups = [
        Setup {
            name: "frontend",
            netns: None,
            tls_port,
            plain_port: Some(node.frontend.port()),
            pids: processes(&node.dir.path().join("node.toml").display().to_string()),
        },
        Setup {
            name: "nginx",
            netns: Some(netns.clone()),
            tls_port: nginx_tls,
            plain_port: Some(nginx_plain),
            pids: processes(&nginx_dir.path().join("nginx.conf").display().to_string()),
        },
        Setup {
            name: "haproxy",
            netns: Some(netns.clone()),
            tls_port: haproxy_tls,
            plain_port: None,
            pids: processes(&haproxy_dir.path().join("haproxy.cfg").display().to_string()),
        },
    ];
    if let Some(hold) = std::env::var_os("GEARHOST_BENCH_HOLD") {
        eprintln!(
            "holding {}s: frontend https://127.0.0.1:{tls_port} (plain {}), nginx {nginx_tls} \
             (plain {nginx_plain}), haproxy {haproxy_tls} in netns {}, host {HOST}",
            hold.to_string_lossy(),
            node.frontend.port(),
            netns.display()
        );
        let secs: u64 = hold.to_string_lossy().parse().unwrap_or(600);
        std::thread::sleep(Duration::from_secs(secs));
    }
    let rows: [(&str, Mode); 6] = [
        (
            "TLS handshakes/s (new connection per request, 50 clients)",
            Mode::Handshakes,
        ),
        ("HTTP/1.1 over TLS, 1 connection", Mode::Http1 { conns: 1 }),
        (
            "HTTP/1.1 over TLS, 50 connections",
            Mode::Http1 { conns: 50 },
        ),
        (
            "HTTP/2, 1 connection (10 streams)",
            Mode::Http2 { conns: 1 },
        ),
        (
            "HTTP/2, 50 connections (10 streams each)",
            Mode::Http2 { conns: 50 },
        ),
        ("plain HTTP/1.1, 1 connection", Mode::Plain),
    ];
    let rows: Vec<(&str, Mode)> = rows
        .into_iter()
        .filter(|(name, _)| name.to_lowercase().contains(&only))
        .collect();
    // warm-up: JIT, pools, caches, session caches
    for setup in &setups {
        for (_, mode) in &rows {
            h2load(setup, *mode, 1);
        }
    }
    // runs[row][setup][round]
    let mut runs: Vec<Vec<Vec<Option<Run>>>> = vec![vec![Vec::new(); setups.len()]; rows.len()];
    for round in 0..rounds {
        for (r, (row, mode)) in rows.iter().enumerate() {
            for (s, setup) in setups.iter().enumerate() {
                let run = h2load(setup, *mode, secs);
                if let Some(run) = run {
                    eprintln!("round {round} {row} {}: {run:?}", setup.name);
                }
                runs[r][s].push(run);
            }
        }
    }
    drop((nginx, haproxy));

    println!(
        "{workers} worker thread(s) each for the frontend, nginx and HAProxy; {rounds} round(s) of {secs} s; \
         median round; paired: the median over rounds of the frontend against the better peer of the same round\n"
    );
    println!(
        "| row | frontend req/s | nginx req/s | HAProxy req/s | frontend / better peer | paired | CPU per request: frontend, nginx, HAProxy |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (r, (row, _)) in rows.iter().enumerate() {
        let m: Vec<Option<Run>> = runs[r]
            .iter()
            .map(|v| {
                let done: Vec<Run> = v.iter().flatten().copied().collect();
                (!done.is_empty()).then(|| median(done))
            })
            .collect();
        let paired = paired_ratio(&runs[r]);
        let show = |run: &Option<Run>| run.map_or("-".to_string(), |r| format!("{:.0}", r.rps));
        let cpu =
            |run: &Option<Run>| run.map_or("-".to_string(), |r| format!("{:.1} µs", r.cpu_us));
        let peer = m[1..]
            .iter()
            .flatten()
            .map(|r| r.rps)
            .fold(f64::NAN, f64::max);
        let ratio = m[0].map_or(f64::NAN, |f| f.rps / peer);
        println!(
            "| {row} | {} | {} | {} | {ratio:.2} | {paired:.2} | {}, {}, {} |",
            show(&m[0]),
            show(&m[1]),
            show(&m[2]),
            cpu(&m[0]),
            cpu(&m[1]),
            cpu(&m[2]),
        );
    }
    node.ok(&["destroy", "bench"]);
}
