//! Hook-call benchmark, side by side in one run:
//!
//! 1. warm: cached `InstancePre` -> new store -> instantiate -> `control("noop")` -> drop;
//! 2. cold: `gear cartridge call DIR control --action noop` in a fresh process,
//!    loading the component from the precompiled cache;
//! 3. shell: the same trivial work as an OpenShift-style `bin/control` bash
//!    script (reads a few env files, echoes);
//! 4. compile from scratch vs load from the cache;
//! 5. host memory per loaded cartridge.
//!
//! Run: `cargo build --release -p gearhost-cli && cargo bench -p gearhost-tests --bench hooks`.
//! Results and method: docs/performance.md.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gearhost_runtime::{GearInfo, HookCall, Runtime, RuntimeConfig, ScratchHost};

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.95), samples[0])
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

const SHELL_HOOK: &str = r#"#!/bin/bash
# an OpenShift v2 style bin/control: source the gear's env files, act on $1
set -e
GEAR_HOME="$1"
ACTION="$2"
for f in "$GEAR_HOME"/env/*; do
  [ -f "$f" ] || continue
  name="$(basename "$f")"
  value="$(< "$f")"
  export "$name=$value"
done
case "$ACTION" in
  noop)
    ;;
  status)
    if [ -f "$GEAR_HOME/app-root/runtime/pid" ]; then
      echo "running"
    else
      echo "stopped"
    fi
    ;;
  start|stop|restart|tidy)
    echo "$ACTION requested for $GEAR_NAME"
    ;;
  *)
    echo "unknown action $ACTION" >&2
    exit 1
    ;;
esac
echo ""
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var_os("GEARHOST_BENCH_QUICK").is_some();
    let warm_n = if quick { 200 } else { 5000 };
    let cold_n = if quick { 10 } else { 100 };

    let pkg = gearhost_tests::cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache dir");
    let gear_dir = tempfile::tempdir().expect("gear dir");
    for sub in ["env", "app-root/runtime"] {
        std::fs::create_dir_all(gear_dir.path().join(sub)).expect("gear layout");
    }
    for (k, v) in [
        ("GEAR_NAME", "app"),
        ("GEAR_NAMESPACE", "team"),
        ("GEAR_PORT", "8080"),
        ("GEAR_HOME", "/gear"),
    ] {
        std::fs::write(gear_dir.path().join("env").join(k), v).expect("env file");
    }

    // 4. compile from scratch vs load from cache
    let wasm = std::fs::read(pkg.path().join("hooks.wasm")).expect("wasm");
    let mut compile = Vec::new();
    let mut load = Vec::new();
    for i in 0..if quick { 3 } else { 10 } {
        let fresh = tempfile::tempdir().expect("fresh cache");
        let rt = Runtime::new(RuntimeConfig::with_cache_dir(fresh.path().to_path_buf()))
            .expect("runtime");
        let t = Instant::now();
        let c = rt.load_dir(pkg.path()).expect("compile");
        compile.push(t.elapsed());
        assert_eq!(
            c.info().cache,
            gearhost_runtime::CacheOutcome::Compiled,
            "run {i}"
        );
        let t = Instant::now();
        let c = rt.load_dir(pkg.path()).expect("load");
        load.push(t.elapsed());
        assert_eq!(c.info().cache, gearhost_runtime::CacheOutcome::Hit);
    }

    // 1. warm calls
    let runtime =
        Runtime::new(RuntimeConfig::with_cache_dir(cache.path().to_path_buf())).expect("runtime");
    let cartridge = runtime.load_dir(pkg.path()).expect("load");
    let host = Arc::new(ScratchHost::new(
        GearInfo {
            id: "bench".into(),
            name: "bench".into(),
            namespace: "bench".into(),
            cartridge: "full".into(),
            home: "/gear".into(),
            endpoints: vec![],
        },
        gear_dir.path().to_path_buf(),
    ));
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio");
    let call = || HookCall::Control {
        action: "noop".into(),
        args: vec![],
    };
    for _ in 0..200 {
        let out = tokio.block_on(cartridge.call(host.clone(), call()));
        assert!(out.result.is_ok(), "{:?}", out.result);
    }
    let mut warm = Vec::with_capacity(warm_n);
    let mut setup = Vec::with_capacity(warm_n);
    let mut inst = Vec::with_capacity(warm_n);
    for _ in 0..warm_n {
        let t = Instant::now();
        let out = tokio.block_on(cartridge.call(host.clone(), call()));
        warm.push(t.elapsed());
        setup.push(out.setup);
        inst.push(out.instantiate.unwrap_or_default());
        debug_assert!(out.result.is_ok());
    }
    let (setup50, _, _) = stats(setup);
    let (inst50, _, _) = stats(inst);

    // 2. cold calls in a fresh process, from the precompiled cache
    let gear = gearhost_tests::gear_bin();
    let cold_cmd = || {
        let mut c = Command::new(&gear);
        c.args(["cartridge", "call"])
            .arg(pkg.path())
            .args(["control", "--action", "noop", "--gear-dir"])
            .arg(gear_dir.path())
            .env("GEARHOST_CACHE_DIR", cache.path());
        c
    };
    let first = cold_cmd().output().expect("gear");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let mut cold = Vec::new();
    for _ in 0..cold_n {
        let t = Instant::now();
        let out = cold_cmd().output().expect("gear");
        cold.push(t.elapsed());
        assert!(out.status.success());
    }

    // 3. the shell hook
    let script = gear_dir.path().join("control.sh");
    std::fs::write(&script, SHELL_HOOK).expect("script");
    let mut shell = Vec::new();
    for _ in 0..cold_n.max(50) {
        let t = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .arg(gear_dir.path())
            .arg("noop")
            .output()
            .expect("bash");
        shell.push(t.elapsed());
        assert!(out.status.success());
    }

    // 5. memory per loaded cartridge: every load deserializes its own copy of
    // the compiled component and builds its own InstancePre; keep 40 of them
    // and warm each with one call
    let loaded_n = 40;
    let before = gearhost_tests::rss_kib(std::process::id());
    let mut keep = Vec::new();
    for _ in 0..loaded_n {
        let c = runtime.load_dir(pkg.path()).expect("load");
        let out = tokio.block_on(c.call(host.clone(), call()));
        assert!(out.result.is_ok());
        keep.push(c);
    }
    let after = gearhost_tests::rss_kib(std::process::id());

    let (w50, w95, wmin) = stats(warm);
    let (c50, c95, cmin) = stats(cold);
    let (s50, s95, smin) = stats(shell);
    let (comp50, _, _) = stats(compile);
    let (load50, _, _) = stats(load);
    println!(
        "hook call benchmark (guest-full, {} bytes of wasm)",
        wasm.len()
    );
    println!("{:<44} {:>10} {:>10} {:>10}", "", "median", "p95", "min");
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        format!("warm WASM hook call (n={warm_n})"),
        fmt(w50),
        fmt(w95),
        fmt(wmin)
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        format!("cold `gear cartridge call` process (n={cold_n})"),
        fmt(c50),
        fmt(c95),
        fmt(cmin)
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "bash hook script",
        fmt(s50),
        fmt(s95),
        fmt(smin)
    );
    println!(
        "  of which store set-up {} and instantiation {} (medians)",
        fmt(setup50),
        fmt(inst50)
    );
    println!("compile from scratch (median): {}", fmt(comp50));
    println!("load from cache (median):      {}", fmt(load50));
    println!(
        "warm vs shell: {:.0}x faster; cold vs shell: {:.2}x the shell's time",
        s50.as_secs_f64() / w50.as_secs_f64(),
        c50.as_secs_f64() / s50.as_secs_f64()
    );
    println!(
        "host memory per loaded cartridge: {} KiB (RSS {} -> {} KiB over {loaded_n} loads)",
        (after.saturating_sub(before)) / loaded_n as u64,
        before,
        after
    );
    drop(keep);
}
