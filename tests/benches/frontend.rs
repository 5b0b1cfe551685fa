//! Frontend benchmark, side by side in one run with `wrk` against one
//! trivial app (the `GET /` of `tests/apps/frontend-app`, node's `http`
//! module, in a real gear of the `nodejs` cartridge):
//!
//! 1. **direct**: wrk inside the gear's network namespace, to the app's
//!    private port;
//! 2. **frontend**: wrk on the host, through the node's frontend, routed by
//!    the `Host` header into the gear's namespace;
//! 3. **nginx**: wrk to Debian's nginx configured as a reverse proxy to the
//!    same app (upstream keep-alive, the same forwarding headers, a buffered
//!    access log, as many workers as the frontend has threads); nginx runs in
//!    the gear's network namespace, since that is the only place the app can
//!    be reached from without the node.
//!
//! Each is measured for throughput (2 threads, 50 connections) and for
//! latency at low load (1 connection), in three interleaved rounds; the
//! median round is reported. Then the node's memory per idle kept-alive client
//! connection (2,000 of them). Then the wake times, from frozen and from
//! stopped: the gear is frozen (`gear idle`) or stopped (`gear idle --stop`)
//! and one request wakes it (a thaw, or a start); the time from sending the
//! request to the first byte of the answer, over 20 wakes of each, interleaved.
//!
//! Run as root on a quiet machine: `cargo build --release -p gearhost-cli -p
//! gearhost-sandbox && cargo bench -p gearhost-tests --bench frontend`.
//! Needs `wrk`, `nginx` (nginx-light) and `nsenter`. Results:
//! docs/performance.md. `GEARHOST_BENCH_UNBATCHED=1` runs the frontend with
//! `http.batch-sends = false` (one send call per connection, like nginx);
//! `GEARHOST_BENCH_QUICK=1` runs 2-second rounds;
//! `GEARHOST_BENCH_HOLD=<seconds>` keeps everything up that long before measuring
//! (for profiling by hand; the addresses are printed);
//! `GEARHOST_BENCH_WAKES_ONLY=1` measures only the wake times (no wrk, no
//! nginx); `GEARHOST_BENCH_UID_MIN=<uid>` moves the node's 200 gear uids.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, workspace_root};

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    requests: f64,
    /// CPU time the proxy (the node, or nginx) used per request, µs.
    cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_duration_ms(text: &str) -> f64 {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text, "ms"), |i| text.split_at(i));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// CPU time (user + system) used so far by every thread of these processes, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let tick = *TICK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let mut ticks = 0u64;
    for pid in pids {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // fields after the command name, which may contain spaces
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    ticks as f64 / tick
}

/// Processes whose command line contains `needle`, and their children.
fn processes(needle: &str) -> Vec<u32> {
    let mut found: Vec<u32> = Vec::new();
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
    for (pid, _, cmdline) in &all {
        if cmdline.contains(needle) {
            found.push(*pid);
        }
    }
    let parents = found.clone();
    for (pid, ppid, _) in &all {
        if parents.contains(ppid) && !found.contains(pid) {
            found.push(*pid);
        }
    }
    found
}

fn wrk(
    netns: Option<&Path>,
    url: &str,
    host: Option<&str>,
    threads: u32,
    conns: u32,
    secs: u32,
    proxy: &[u32],
) -> Run {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("wrk");
            c
        }
        None => Command::new("wrk"),
    };
    cmd.args([
        format!("-t{threads}"),
        format!("-c{conns}"),
        format!("-d{secs}s"),
        "--latency".into(),
    ]);
    if let Some(host) = host {
        cmd.args(["-H", &format!("Host: {host}")]);
    }
    let cpu_before = cpu_seconds(proxy);
    let out = cmd.arg(url).output().expect("run wrk");
    let cpu = cpu_seconds(proxy) - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk saw errors against {url}:\n{text}"
    );
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no {prefix} in wrk's output:\n{text}"))
            .to_string()
    };
    let requests: f64 = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    Run {
        rps: field("Requests/sec:").parse().unwrap_or(f64::NAN),
        requests,
        cpu_us: cpu * 1e6 / requests,
        p50_ms: parse_duration_ms(&field("50%")),
        p99_ms: parse_duration_ms(&field("99%")),
    }
}

fn median_run(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let rps = runs[runs.len() / 2].rps;
    let mut p50: Vec<f64> = runs.iter().map(|r| r.p50_ms).collect();
    let mut p99: Vec<f64> = runs.iter().map(|r| r.p99_ms).collect();
    p50.sort_by(f64::total_cmp);
    p99.sort_by(f64::total_cmp);
    let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_us).collect();
    cpu.sort_by(f64::total_cmp);
    Run {
        rps,
        requests: runs.iter().map(|r| r.requests).sum(),
        cpu_us: cpu[cpu.len() / 2],
        p50_ms: p50[p50.len() / 2],
        p99_ms: p99[p99.len() / 2],
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// nginx as a reverse proxy to the app, inside the gear's network namespace.
#[allow(
    clippy::zombie_processes,
    reason = "the child is returned; the caller stops and waits for it"
)]
fn start_nginx(dir: &Path, netns: &Path, app_port: u16, port: u16, workers: usize) -> Child {
    let d = dir.display();
    let conf = format!(
        "user root;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log {d}/access.log combined buffer=64k flush=1s;\n\
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
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
    // wait until it answers
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["curl", "-sf", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return child;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nginx did not come up: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Time from sending a request to the first byte of its answer.
fn time_to_first_byte(node: &TestNode, host: &str) -> Duration {
    let mut s = std::net::TcpStream::connect(node.frontend).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let start = Instant::now();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut first = [0u8; 1];
    s.read_exact(&mut first).expect("first byte");
    let elapsed = start.elapsed();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        String::from_utf8_lossy(&rest).starts_with("TTP/1.1 200"),
        "the woken gear answered {}",
        String::from_utf8_lossy(&rest)
    );
    elapsed
}

/// The wake figures: `wakes` wakes from frozen and as many from stopped,
/// interleaved, each the time to the first byte of the request that woke the
/// gear. Printed as two lines of text.
fn wake_figures(node: &TestNode, host: &str, wakes: usize) -> String {
    let mut frozen = Vec::new();
    let mut stopped = Vec::new();
    for _ in 0..wakes {
        node.ok(&["idle", "bench"]);
        frozen.push(time_to_first_byte(node, host));
        node.ok(&["idle", "--stop", "bench"]);
        stopped.push(time_to_first_byte(node, host));
    }
    let m = node.metrics();
    let count = |key: &str| m.get(key).copied().unwrap_or(0.0);
    let line = |what: &str, mut times: Vec<Duration>, counted: String| {
        times.sort();
        let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        format!(
            "wake from {what} to first byte over {} wakes: median {:.1} ms, p95 {:.1} ms, min {:.1} ms ({counted})",
            times.len(),
            pick(0.5).as_secs_f64() * 1000.0,
            pick(0.95).as_secs_f64() * 1000.0,
            times[0].as_secs_f64() * 1000.0
        )
    };
    format!(
        "{} (target: median <= 30 ms)\n{}",
        line(
            "frozen",
            frozen,
            format!(
                "{} thaws counted",
                count("gearhost_frontend_thaws_total{gear=\"bench-default\"}")
            )
        ),
        line(
            "stopped",
            stopped,
            format!(
                "{} wake-ups counted",
                count("gearhost_frontend_wakeups_total{gear=\"bench-default\"}")
            )
        )
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if !gearhost_tests::is_root() {
        eprintln!("skipped: the frontend benchmark runs a node, which needs root");
        return;
    }
    let quick = std::env::var_os("GEARHOST_BENCH_QUICK").is_some();
    let secs = if quick { 2 } else { 10 };
    let rounds = if quick { 1 } else { 3 };
    let wakes = if quick { 5 } else { 20 };

    // the frontend and nginx get the same number of worker threads: the
    // node's default, half the cores (the apps need the rest)
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2));
    let batch_sends = std::env::var_os("GEARHOST_BENCH_UNBATCHED").is_none();
    let uid_min = std::env::var("GEARHOST_BENCH_UID_MIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60600);
    // nothing sleeps on its own: every wake measured is asked for
    let node = TestNode::start(
        uid_min,
        &format!(
            "idle-timeout = \"off\"\nfreeze-after = \"off\"\nfrozen-memory-floor = \"off\"\n\
             [http]\nworkers = {workers}\nbatch-sends = {batch_sends}"
        ),
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
    let host = "bench-default.localhost";
    let app_port = 8080;
    if std::env::var_os("GEARHOST_BENCH_WAKES_ONLY").is_some() {
        // one request first, as the full run has had many
        time_to_first_byte(&node, host);
        println!("{}", wake_figures(&node, host, wakes));
        node.ok(&["destroy", "bench"]);
        return;
    }

    let nginx_dir = tempfile::tempdir().expect("nginx dir");
    let nginx_port = free_port();
    let mut nginx = start_nginx(nginx_dir.path(), &netns, app_port, nginx_port, workers);

    let direct_url = format!("http://127.0.0.1:{app_port}/");
    let frontend_url = format!("http://127.0.0.1:{}/", node.frontend.port());
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/");
    let node_pids = processes(&node.dir.path().join("node.toml").display().to_string());
    let nginx_pids = processes(&nginx_dir.path().join("nginx.conf").display().to_string());
    type Setup<'a> = (
        &'a str,
        Option<&'a Path>,
        &'a str,
        Option<&'a str>,
        &'a [u32],
    );
    let setups: [Setup<'_>; 3] = [
        ("direct", Some(&netns), &direct_url, None, &[]),
        ("frontend", None, &frontend_url, Some(host), &node_pids),
        ("nginx", Some(&netns), &nginx_url, Some(host), &nginx_pids),
    ];
    // warm-up: JIT, pools, caches
    if let Some(hold) = std::env::var_os("GEARHOST_BENCH_HOLD") {
        // For profiling by hand: everything is up; drive it with wrk, attach perf.
        eprintln!(
            "holding {}s: frontend {frontend_url} (Host: {host}), nginx {nginx_url}, node pids {node_pids:?}, nginx pids {nginx_pids:?}, app netns {}",
            hold.to_string_lossy(),
            netns.display()
        );
        let secs: u64 = hold.to_string_lossy().parse().unwrap_or(600);
        std::thread::sleep(Duration::from_secs(secs));
    }
    for (_, ns, url, h, pids) in &setups {
        wrk(*ns, url, *h, 2, 50, 2, pids);
    }
    let mut load: Vec<Vec<Run>> = vec![Vec::new(); 3];
    let mut single: Vec<Vec<Run>> = vec![Vec::new(); 3];
    for round in 0..rounds {
        for (i, (name, ns, url, h, pids)) in setups.iter().enumerate() {
            let r = wrk(*ns, url, *h, 2, 50, secs, pids);
            eprintln!("round {round} {name} 50 connections: {r:?}");
            load[i].push(r);
            let r = wrk(*ns, url, *h, 1, 1, secs, pids);
            eprintln!("round {round} {name} 1 connection: {r:?}");
            single[i].push(r);
        }
    }
    let m = node.metrics();
    let batched = (
        m["gearhost_frontend_batching_workers"],
        m["gearhost_frontend_batched_sends_total"],
        m["gearhost_frontend_send_batches_total"],
    );
    // a graceful stop: the master takes its workers with it
    let _ = Command::new("kill")
        .arg("-QUIT")
        .arg(nginx.id().to_string())
        .status();
    let _ = nginx.wait();

    // memory per idle client connection: each has had one answer and waits
    let idle_count = if quick { 200 } else { 2000 };
    let rss_before = gearhost_tests::rss_kib(node.pid());
    let mut idle = Vec::with_capacity(idle_count);
    for _ in 0..idle_count {
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", node.frontend.port())).expect("connect");
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .expect("request");
        let mut answer = [0u8; 512];
        let mut got = 0;
        while !answer[..got].ends_with(b"hello from bench\n") {
            let n = s.read(&mut answer[got..]).expect("answer");
            assert!(n > 0, "closed before the answer");
            got += n;
        }
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = gearhost_tests::rss_kib(node.pid());
    let per_connection = rss_after.saturating_sub(rss_before) as f64 / idle_count as f64;
    drop(idle);

    // wake from frozen and from stopped
    let woken = wake_figures(&node, host, wakes);

    println!("{workers} worker thread(s) each for the frontend and nginx");
    println!(
        "frontend send batching (http.batch-sends = {batch_sends}): {} worker(s) batching, {} sends in {} batches (mean {:.1} per batch)\n",
        batched.0,
        batched.1,
        batched.2,
        batched.1 / batched.2.max(1.0)
    );
    println!(
        "| setup | req/s (50 conns) | p50 | p99 | proxy CPU per request | req/s (1 conn) | p50 | p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut medians = Vec::new();
    for (i, (name, ..)) in setups.iter().enumerate() {
        let l = median_run(load[i].clone());
        let s = median_run(single[i].clone());
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.0} | {:.3} ms | {:.3} ms |",
            l.rps,
            l.p50_ms,
            l.p99_ms,
            if i == 0 {
                "-".to_string()
            } else {
                format!("{:.1} µs", l.cpu_us)
            },
            s.rps,
            s.p50_ms,
            s.p99_ms
        );
        medians.push((l, s));
    }
    let (direct, frontend, nginx) = (medians[0], medians[1], medians[2]);
    println!();
    println!(
        "frontend throughput / nginx: {:.2} (target >= 1.00)",
        frontend.0.rps / nginx.0.rps
    );
    println!(
        "proxy CPU per request at 50 connections: frontend {:.1} µs, nginx {:.1} µs",
        frontend.0.cpu_us, nginx.0.cpu_us
    );
    println!(
        "frontend p99 added over direct: {:.3} ms at 1 connection, {:.3} ms at 50 (target <= 1 ms)",
        frontend.1.p99_ms - direct.1.p99_ms,
        frontend.0.p99_ms - direct.0.p99_ms
    );
    println!(
        "nginx p99 added over direct: {:.3} ms at 1 connection, {:.3} ms at 50",
        nginx.1.p99_ms - direct.1.p99_ms,
        nginx.0.p99_ms - direct.0.p99_ms
    );
    println!(
        "node memory per idle client connection: {per_connection:.1} KiB ({idle_count} connections, node RSS {rss_before} -> {rss_after} KiB)"
    );
    println!("{woken}");
    node.ok(&["destroy", "bench"]);
}
