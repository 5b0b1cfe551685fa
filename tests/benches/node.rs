//! Node benchmark, one run against a real node driven by the real `gear`:
//!
//! 1. `gear create` + `gear start` to the first answer through the frontend,
//!    for a trivial app (python3's `http.server` in a gear), over 100 gears;
//! 2. the node's own memory (RSS) with 0, 100 and 1,000 gears that run
//!    nothing;
//! 3. the hooks' share of a deploy: for deploys of a Python app, the time the
//!    hook machinery and hook code took (the node logs it per hook call),
//!    against the deploy's wall-clock time.
//!
//! Run as root: `cargo build --release -p gearhost-cli -p gearhost-sandbox &&
//! cargo bench -p gearhost-tests --bench node`. Results: docs/performance.md.

use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, rss_kib, workspace_root};

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.95))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A cartridge that starts python3's web server without needing a deploy.
fn bench_cartridge() -> tempfile::TempDir {
    let dir = cartridge_dir("my-first-cartridge");
    let manifest = dir.path().join("cartridge.toml");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let text =
        text.replace("name = \"my-first\"", "name = \"bench\"") + "\n[deploy]\nrequired = false\n";
    std::fs::write(&manifest, text).expect("manifest");
    dir
}

/// GET / until it answers 200.
fn first_answer(node: &TestNode, label: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if node.http_get(label, "/").0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{label} never answered");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sum of the hooks' own time in the node's hook log lines of `gear`, in ms.
fn hook_times(node: &TestNode, gear: &str) -> (f64, usize) {
    let log = node.ok(&["logs", gear, "--hooks", "-n", "100000"]);
    let mut total = 0.0;
    let mut calls = 0;
    for line in log.lines() {
        if let Some(rest) = line.split("(hook ").nth(1)
            && let Some(value) = rest.split(" ms").next()
            && let Ok(v) = value.parse::<f64>()
        {
            total += v;
            calls += 1;
        }
    }
    (total, calls)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        gearhost_tests::is_root(),
        "the node benchmark runs a real node: run it as root"
    );
    let gears: usize = std::env::var("GEARHOST_BENCH_GEARS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let started_n: usize = std::env::var("GEARHOST_BENCH_STARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(gears);

    let node = TestNode::start_with_uids(40000, gears as u32 + 10, "");
    let cart = bench_cartridge();
    node.ok(&["cartridge", "install", cart.path().to_str().expect("utf-8")]);
    std::thread::sleep(Duration::from_millis(500));
    let rss_empty = rss_kib(node.pid());

    // 1. create + start to first answer
    let mut total = Vec::new();
    let mut create = Vec::new();
    let mut start = Vec::new();
    for i in 0..started_n {
        let name = format!("b{i}");
        let t0 = Instant::now();
        node.ok(&["create", &name, "--cartridge", "bench"]);
        let t1 = Instant::now();
        node.ok(&["start", &name]);
        let t2 = Instant::now();
        first_answer(&node, &format!("{name}-default"));
        total.push(t0.elapsed());
        create.push(t1 - t0);
        start.push(t2 - t1);
    }
    let (total_med, total_p95) = stats(total);
    let (create_med, create_p95) = stats(create);
    let (start_med, start_p95) = stats(start);

    // 2. node memory with gears that run nothing
    for i in 0..started_n {
        node.ok(&["stop", &format!("b{i}")]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_100 = rss_kib(node.pid());
    let t = Instant::now();
    for i in started_n..gears {
        node.ok(&["create", &format!("b{i}"), "--cartridge", "bench"]);
    }
    let create_rest = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss_all = rss_kib(node.pid());

    // 3. the hooks' share of a deploy
    let python = cartridge_dir("python-cartridge");
    node.ok(&[
        "cartridge",
        "install",
        python.path().to_str().expect("utf-8"),
    ]);
    node.ok(&["create", "py", "--cartridge", "python"]);
    let app = workspace_root().join("examples/python-hello");
    let app = app.to_str().expect("utf-8");
    // the first deploy makes the virtualenv; the bench measures the next ones
    node.ok(&["deploy", "py", app]);
    let (before, calls_before) = hook_times(&node, "py");
    let deploys = 10;
    let mut wall = Duration::ZERO;
    for _ in 0..deploys {
        let t = Instant::now();
        node.ok(&["deploy", "py", app]);
        wall += t.elapsed();
    }
    let (after, calls_after) = hook_times(&node, "py");
    let hook_ms = after - before;
    let wall_ms = wall.as_secs_f64() * 1000.0;

    println!("node benchmark");
    println!(
        "create + start to first answer (n={started_n}): median {}, p95 {}",
        ms(total_med),
        ms(total_p95)
    );
    println!(
        "  of which gear create: median {}, p95 {}; gear start (start hook, until the port answers): median {}, p95 {}",
        ms(create_med),
        ms(create_p95),
        ms(start_med),
        ms(start_p95)
    );
    println!(
        "node RSS: {} KiB with 0 gears, {} KiB with {started_n}, {} KiB with {gears} (all stopped)",
        rss_empty, rss_100, rss_all
    );
    println!(
        "  {:.1} KiB per gear; {} more creates took {}",
        (rss_all.saturating_sub(rss_empty)) as f64 / gears as f64,
        gears - started_n,
        ms(create_rest)
    );
    println!(
        "deploy of examples/python-hello (n={deploys}, virtualenv reused): {:.1} ms each; hooks' own time {:.2} ms over {} hook calls = {:.2}% of the deploy",
        wall_ms / deploys as f64,
        hook_ms / deploys as f64,
        (calls_after - calls_before) / deploys,
        100.0 * hook_ms / wall_ms
    );
}
