//! Density: a real node driven by the real `gear` with N gears (GEARHOST_BENCH_GEARS, default
//! 10,000), most of them never started, R of them running (GEARHOST_BENCH_RUNNING, default
//! 200: a diy app whose `.gear/start` is one small perl process listening on its port).
//!
//! At checkpoints of the gear count (100, 1,000, N) it measures what must not grow with the
//! count: the time of a `gear create` (four clients at once, and alone), of `gear status` of
//! one gear, of one running gear's life (`gear start`, `gear idle`, a wake from frozen, `gear
//! idle --stop`, a wake from stopped), and of `gear list` (all gears, JSON; under 100 ms), and
//! what must grow only linearly: the node's resident memory, its open descriptors and the
//! state directory's size. With the R running, a wake from frozen and from stopped through the
//! frontend, and a `gear node restart` with every gear adopted.
//!
//! Run as root: `cargo build --release -p gearhost-cli -p gearhost-node -p gearhost-sandbox &&
//! cargo bench -p gearhost-tests --bench density`. Creating 10,000 gears takes a few minutes on
//! two cores. Gear uids 300000-310199. Results: docs/performance.md.

use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, json, rss_kib};

/// The smallest app that counts as answering: listens on the app's port and sleeps.
const START: &str = "#!/bin/sh\nexec perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalAddr => \"127.0.0.1:$ENV{PORT}\", Listen => 16, ReuseAddr => 1) or die \"listen: $!\"; while (my $c = $s->accept) { print $c \"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok\"; close $c }'\n";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// The lifecycle of gear `g0` (deployed, a listening perl app), timed at a checkpoint.
#[derive(Clone, Copy)]
struct Life {
    start_ms: f64,
    freeze_ms: f64,
    wake_frozen_ms: f64,
    stop_ms: f64,
    wake_stopped_ms: f64,
}

fn life(node: &TestNode) -> Life {
    let rounds = 10;
    let (mut start, mut freeze, mut wake_frozen, mut stop, mut wake_stopped) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        node.ok(&["stop", "g0"]);
        start.push(timed(|| drop(node.ok(&["start", "g0"]))));
        assert_eq!(node.http_get("g0-default", "/").0, 200);
        freeze.push(timed(|| drop(node.ok(&["idle", "g0"]))));
        wake_frozen.push(timed(|| {
            assert_eq!(node.http_get("g0-default", "/").0, 200);
        }));
        stop.push(timed(|| drop(node.ok(&["idle", "--stop", "g0"]))));
        wake_stopped.push(timed(|| {
            assert_eq!(node.http_get("g0-default", "/").0, 200);
        }));
    }
    Life {
        start_ms: median_ms(start),
        freeze_ms: median_ms(freeze),
        wake_frozen_ms: median_ms(wake_frozen),
        stop_ms: median_ms(stop),
        wake_stopped_ms: median_ms(wake_stopped),
    }
}

/// One checkpoint's figures.
struct Checkpoint {
    gears: usize,
    create_ms: f64,
    alone_ms: f64,
    status_ms: f64,
    list_ms: f64,
    /// One running gear's lifecycle at this count (medians): start, freeze, wake from frozen,
    /// stop by idling, wake from stopped.
    life: Life,
    rss_kib: u64,
    fds: usize,
    state_kib: u64,
}

fn checkpoint(node: &TestNode, gears: usize, create_ms: f64) -> Checkpoint {
    let life = life(node);
    let status_ms = median_ms(
        (0..30)
            .map(|_| timed(|| drop(node.ok(&["status", "g0"]))))
            .collect(),
    );
    let list_ms = median_ms(
        (0..10)
            .map(|_| timed(|| drop(node.ok(&["list", "--json"]))))
            .collect(),
    );
    let pid = node.pid();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let du = std::process::Command::new("du")
        .args(["-sk", "--apparent-size"])
        .arg(node.state_dir())
        .output()
        .expect("du");
    let state_kib = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // a create with nothing else going on: made and destroyed again, so the count stays (last:
    // a destroyed gear's network namespace is torn down by the kernel in the background)
    let alone_ms = if create_ms.is_nan() {
        f64::NAN
    } else {
        eprintln!("{gears} gears: creating one at a time");
        median_ms(
            (0..20)
                .map(|i| {
                    let name = format!("alone{i}");
                    let ms = timed(|| drop(node.ok(&["create", &name, "--cartridge", "diy"])));
                    node.ok(&["destroy", &name, "--yes"]);
                    ms
                })
                .collect(),
        )
    };
    let c = Checkpoint {
        gears,
        create_ms,
        alone_ms,
        status_ms,
        list_ms,
        life,
        rss_kib: rss_kib(pid),
        fds,
        state_kib,
    };
    eprintln!(
        "{} gears: create {:.1} ms (alone {:.1} ms), status {:.1} ms, list {:.1} ms, start {:.1} ms, freeze {:.1} ms, wake from frozen {:.1} ms, stop {:.1} ms, wake from stopped {:.1} ms, node RSS {} KiB, {} fds, state {} KiB",
        c.gears,
        c.create_ms,
        c.alone_ms,
        c.status_ms,
        c.list_ms,
        c.life.start_ms,
        c.life.freeze_ms,
        c.life.wake_frozen_ms,
        c.life.stop_ms,
        c.life.wake_stopped_ms,
        c.rss_kib,
        c.fds,
        c.state_kib
    );
    c
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        gearhost_tests::is_root(),
        "the density benchmark runs a real node: run it as root"
    );
    let n = env_or("GEARHOST_BENCH_GEARS", 10_000);
    let running = env_or("GEARHOST_BENCH_RUNNING", 200).min(n);
    let node = TestNode::start_with_uids(300_000, (n + 200) as u32, "");
    let diy = cartridge_dir("diy-cartridge");
    node.ok(&["cartridge", "install", diy.path().to_str().expect("utf-8")]);
    let src = gearhost_tests::apps::tree(&[(".gear/start", START)]);
    let src_path = src.path().to_str().expect("utf-8").to_string();

    // gears are made in rounds up to each checkpoint, four at a time; the create time of a
    // checkpoint is the median of the last 100 creates before it
    let marks: Vec<usize> = [100, 1_000, n]
        .into_iter()
        .filter(|&m| m <= n)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // g0 runs from the start: its start, idling and wakes are timed at every checkpoint
    node.ok(&["create", "g0", "--cartridge", "diy"]);
    node.ok(&["deploy", "g0", &src_path]);
    let mut made = 1;
    let mut checkpoints = Vec::new();
    let total = Instant::now();
    for mark in marks {
        let threads = 4;
        let times = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for k in 0..threads {
                let (node, times) = (&node, &times);
                s.spawn(move || {
                    for i in (made + k..mark).step_by(threads) {
                        let ms = timed(|| {
                            drop(node.ok(&["create", &format!("g{i}"), "--cartridge", "diy"]))
                        });
                        gearhost_sys::lock::lock(times).push((i, ms));
                    }
                });
            }
        });
        let mut times = times.into_inner().expect("times");
        times.sort_by_key(|(i, _)| *i);
        let last: Vec<f64> = times.iter().rev().take(100).map(|(_, ms)| *ms).collect();
        made = mark;
        checkpoints.push(checkpoint(&node, mark, median_ms(last)));
    }
    eprintln!(
        "{n} gears created in {:.0} s",
        total.elapsed().as_secs_f64()
    );

    // R gears running
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..4 {
            let (node, src_path) = (&node, &src_path);
            s.spawn(move || {
                for i in (k..running).step_by(4) {
                    node.ok(&["deploy", &format!("g{i}"), src_path]);
                }
            });
        }
    });
    eprintln!(
        "{running} gears deployed and running in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let with_running = checkpoint(&node, n, f64::NAN);

    // wakes through the frontend, from frozen and from stopped
    let wakes = running.min(20);
    let mut frozen = Vec::new();
    let mut stopped = Vec::new();
    for i in 0..wakes {
        let gear = format!("g{i}");
        let label = format!("{gear}-default");
        node.ok(&["idle", &gear]);
        frozen.push(timed(|| assert_eq!(node.http_get(&label, "/").0, 200)));
        node.ok(&["idle", "--stop", &gear]);
        stopped.push(timed(|| assert_eq!(node.http_get(&label, "/").0, 200)));
    }
    let (frozen_ms, stopped_ms) = (median_ms(frozen), median_ms(stopped));

    // a restart with every gear: the API answers again, and every running gear is adopted
    let restart_ms = timed(|| {
        node.ok(&["node", "restart"]);
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let out = node.gear(&["node", "check", "--json"]);
            let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if check["resume"]["done"] == true
                && check["resume"]["adopted"].as_array().map_or(0, Vec::len) >= running
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the restart did not finish: {check}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let list = json(&node.ok(&["list", "--json"]));
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(n),
        "every gear listed after the restart"
    );

    println!(
        "\n| gears | create (4 clients) | create (alone) | status | list (JSON) | node RSS | node fds | state dir |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for c in checkpoints.iter().chain(std::iter::once(&with_running)) {
        let (create, alone) = if c.create_ms.is_nan() {
            (format!("({running} running)"), String::new())
        } else {
            (
                format!("{:.1} ms", c.create_ms),
                format!("{:.1} ms", c.alone_ms),
            )
        };
        println!(
            "| {} | {create} | {alone} | {:.1} ms | {:.1} ms | {:.1} MiB | {} | {:.1} MiB |",
            c.gears,
            c.status_ms,
            c.list_ms,
            c.rss_kib as f64 / 1024.0,
            c.fds,
            c.state_kib as f64 / 1024.0
        );
    }
    println!(
        "\n| gears | `gear start` | `gear idle` (freeze) | wake from frozen | `gear idle --stop` | wake from stopped |"
    );
    println!("|---|---|---|---|---|---|");
    for c in checkpoints.iter().chain(std::iter::once(&with_running)) {
        let l = c.life;
        println!(
            "| {}{} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            c.gears,
            if c.create_ms.is_nan() {
                format!(", {running} running")
            } else {
                String::new()
            },
            l.start_ms,
            l.freeze_ms,
            l.wake_frozen_ms,
            l.stop_ms,
            l.wake_stopped_ms
        );
    }
    println!(
        "\nwith {n} gears, {running} running: wake from frozen {frozen_ms:.1} ms, from stopped {stopped_ms:.1} ms (median of {wakes}); `gear node restart` to every running gear adopted {restart_ms:.0} ms"
    );
    node.ok(&["node", "stop", "--gears"]);
    drop(node);
}
