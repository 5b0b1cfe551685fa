//! The hook runtime against real guest components built from real guest
//! crates: every host import, the limits (deadline, memory), traps, the
//! manifest's permissions, contract versions, WASI confinement and the
//! compile cache.
//!
//! Long on purpose: every integration test file is a binary of its own that
//! links wasmtime, and on a small build machine each more binary costs more
//! link time than this file's length costs a reader; each test is one
//! scenario, and the helpers they share sit at the end.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearhost_runtime::host::BoxFuture;
use gearhost_runtime::{
    CacheOutcome, CommandSpec, EndpointInfo, ExecOutput, ExitStatus, GearHost, GearInfo, HookCall,
    HookError, HookKind, HookOutcome, HostError, HostRequest, LoadError, LogLevel, LogSource,
    Manifest, Preopen, ProcessInfo, RequestContext, RestartPolicy, Runtime, RuntimeConfig,
    ScratchHost, Signal,
};
use gearhost_tests::cartridge_dir;

fn runtime(cache: &Path) -> Runtime {
    Runtime::new(RuntimeConfig::with_cache_dir(cache.to_path_buf())).expect("runtime")
}

fn gear_info(cartridge: &str) -> GearInfo {
    GearInfo {
        id: "g-0001".into(),
        name: "app".into(),
        namespace: "team".into(),
        cartridge: cartridge.into(),
        home: "/gear".into(),
        endpoints: vec![EndpointInfo {
            name: "http".into(),
            private_port: 8080,
            protocols: vec!["http".into()],
        }],
    }
}

fn scratch(cartridge: &str, dir: &Path) -> Arc<ScratchHost> {
    Arc::new(ScratchHost::new(gear_info(cartridge), dir.to_path_buf()))
}

fn control(action: &str, args: &[&str]) -> HookCall {
    HookCall::Control {
        action: action.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

fn ok(outcome: &HookOutcome) -> &str {
    match &outcome.result {
        Ok(s) => s,
        Err(e) => panic!("hook failed: {e}\nlogs: {:?}", outcome.logs),
    }
}

fn failed_code(outcome: &HookOutcome) -> (&str, &str) {
    match &outcome.result {
        Err(HookError::Failed { code, message, .. }) => (code, message),
        other => panic!("expected a hook failure, got {other:?}"),
    }
}

/// A stand-in for the node that really runs programs (unconfined: only for
/// testing that the runtime forwards requests and answers faithfully).
#[derive(Default)]
struct DirectHost {
    dir: PathBuf,
    env: Mutex<Vec<(String, String)>>,
    execs: Mutex<Vec<(RequestContext, CommandSpec)>>,
    /// The thread each `env_set` request came in on (the thread polling the hook).
    env_set_threads: Mutex<Vec<std::thread::ThreadId>>,
}

impl GearHost for DirectHost {
    fn gear(&self) -> GearInfo {
        gear_info("full")
    }
    fn preopens(&self) -> Vec<Preopen> {
        vec![Preopen {
            host: self.dir.clone(),
            guest: "/gear".into(),
            writable: true,
        }]
    }
    fn log(&self, _: HookKind, _: LogSource, _: LogLevel, _: &str) {}
    fn env_get(&self, key: &str) -> Option<String> {
        let env = gearhost_sys::lock::lock(&self.env);
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
    fn env_list(&self) -> Vec<(String, String)> {
        gearhost_sys::lock::lock(&self.env).clone()
    }
    fn env_set(&self, key: &str, value: &str) -> Result<(), HostError> {
        gearhost_sys::lock::lock(&self.env_set_threads).push(std::thread::current().id());
        let mut env = gearhost_sys::lock::lock(&self.env);
        env.retain(|(k, _)| k != key);
        env.push((key.into(), value.into()));
        Ok(())
    }
    fn env_unset(&self, key: &str) -> Result<(), HostError> {
        gearhost_sys::lock::lock(&self.env).retain(|(k, _)| k != key);
        Ok(())
    }
    fn exec(
        &self,
        ctx: RequestContext,
        cmd: CommandSpec,
    ) -> BoxFuture<'_, Result<ExecOutput, HostError>> {
        gearhost_sys::lock::lock(&self.execs).push((ctx, cmd.clone()));
        Box::pin(async move {
            let out = tokio::process::Command::new(&cmd.program)
                .args(&cmd.args)
                .output()
                .await
                .map_err(|e| HostError::Failed(e.to_string()))?;
            use std::os::unix::process::ExitStatusExt;
            Ok(ExecOutput {
                status: match out.status.code() {
                    Some(c) => ExitStatus::Exited(c),
                    None => ExitStatus::Signaled(out.status.signal().unwrap_or(0)),
                },
                stdout: out.stdout,
                stderr: out.stderr,
            })
        })
    }
    fn spawn(
        &self,
        _: RequestContext,
        _: &str,
        _: CommandSpec,
        _: RestartPolicy,
    ) -> BoxFuture<'_, Result<u32, HostError>> {
        Box::pin(async { Ok(4242) })
    }
    fn signal(&self, name: &str, _: Signal) -> BoxFuture<'_, Result<(), HostError>> {
        let known = name == "web";
        Box::pin(async move {
            if known {
                Ok(())
            } else {
                Err(HostError::NotFound("no such process".into()))
            }
        })
    }
    fn wait(
        &self,
        _: &str,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<ExitStatus>, HostError>> {
        Box::pin(async move {
            tokio::time::sleep(timeout.min(Duration::from_millis(10))).await;
            Ok(Some(ExitStatus::Signaled(15)))
        })
    }
    fn processes(&self) -> Vec<ProcessInfo> {
        vec![ProcessInfo {
            name: "web".into(),
            pid: Some(4242),
            state: gearhost_runtime::ProcessState::Running,
            restarts: 2,
            last_exit: None,
        }]
    }
}

#[test]
fn the_full_guest_reaches_every_host_import() {
    let cache = tempfile::tempdir().expect("cache");
    full_guest_reaches_every_host_import(&runtime(cache.path()));
}

/// A runtime for few calls links each component against its own imports
/// (see gearhost_runtime's `linking`): the same host, import by import.
#[test]
fn a_runtime_for_few_calls_links_each_component_to_what_it_imports() {
    let cache = tempfile::tempdir().expect("cache");
    let config = RuntimeConfig::with_cache_dir(cache.path().to_path_buf());
    let runtime = Runtime::for_few_calls(config).expect("runtime");
    full_guest_reaches_every_host_import(&runtime);
    // the bounded directory listing stands in for WASI's there too
    let pkg = cartridge_dir("guest-files");
    let gear = tempfile::tempdir().expect("gear");
    let some = gear.path().join("some");
    std::fs::create_dir(&some).expect("dir");
    for i in 0..1_000 {
        std::fs::File::create(some.join(format!("entry-{i:04}"))).expect("create");
    }
    let files = files_cartridge(&runtime, pkg.path(), Duration::from_secs(20));
    let count = rt().block_on(files.call(
        scratch("files", gear.path()),
        control("count", &["/gear/some"]),
    ));
    assert_eq!(ok(&count), "1000 entries");
}

fn full_guest_reaches_every_host_import(runtime: &Runtime) {
    let pkg = cartridge_dir("guest-full");
    let gear = tempfile::tempdir().expect("gear");
    let cartridge = runtime.load_dir(pkg.path()).expect("load");
    assert_eq!(cartridge.info().contract_version, "0.1.0");
    for hook in ["build", "start", "stop", "control"] {
        assert!(
            cartridge.info().hooks.iter().any(|h| h == hook),
            "{hook} missing"
        );
    }
    let host = Arc::new(DirectHost {
        dir: gear.path().to_path_buf(),
        ..Default::default()
    });
    let rt = rt();
    let call = |c: HookCall| rt.block_on(cartridge.call(host.clone(), c));

    let built = call(HookCall::Build);
    ok(&built);
    assert!(
        built
            .logs
            .iter()
            .any(|l| l.source == LogSource::Hook && l.message.contains("build: ok"))
    );
    assert_eq!(host.env_get("FULL_BUILT").as_deref(), Some("1"));

    assert_eq!(
        ok(&call(control("info", &[]))),
        "id=g-0001 name=app namespace=team cartridge=full home=/gear endpoints=http:8080"
    );
    assert_eq!(ok(&call(control("echo", &["a", "b"]))), "a b");
    assert_eq!(ok(&call(control("noop", &[]))), "");
    assert_eq!(
        ok(&call(control("env-set", &["GREETING", "hi there"]))),
        "ok"
    );
    assert_eq!(ok(&call(control("env-get", &["GREETING"]))), "hi there");
    assert!(ok(&call(control("env-list", &[]))).contains("GREETING=hi there"));
    assert_eq!(ok(&call(control("env-unset", &["GREETING"]))), "ok");
    assert_eq!(ok(&call(control("env-get", &["GREETING"]))), "<unset>");
    let bad_key = call(control("env-set", &["1BAD", "x"]));
    assert_eq!(failed_code(&bad_key).0, "invalid");

    let exec = call(control("exec", &["echo", "hello", "gear"]));
    assert_eq!(ok(&exec), "status=exited:0\nstdout=hello gear\n\nstderr=");
    assert!(
        matches!(&exec.requests[..], [HostRequest::Exec { program, outcome, .. }] if program == "echo" && outcome == "exited:0")
    );
    let (ctx, spec) = host.execs.lock().expect("execs")[0].clone();
    assert_eq!(ctx.hook, HookKind::Control);
    assert!(!ctx.network, "only build may get the network");
    assert_eq!(spec.args, ["hello", "gear"]);
    assert_eq!(
        ok(&call(control("exec", &["false"]))),
        "status=exited:1\nstdout=\nstderr="
    );

    assert_eq!(
        ok(&call(control("spawn", &["web", "sleep", "100"]))),
        "pid=4242"
    );
    assert_eq!(ok(&call(control("signal", &["web", "term"]))), "ok");
    assert_eq!(
        failed_code(&call(control("signal", &["nope", "term"]))).0,
        "not-found"
    );
    assert_eq!(ok(&call(control("wait", &["web", "50"]))), "signaled:15");
    assert_eq!(ok(&call(control("processes", &[]))), "web running 2");

    assert_eq!(ok(&call(control("log", &["warn", "careful"]))), "ok");
    let printed = call(control("print", &["to the log"]));
    ok(&printed);
    assert!(
        printed
            .logs
            .iter()
            .any(|l| l.source == LogSource::Stdout && l.message == "to the log")
    );
    assert!(
        printed
            .logs
            .iter()
            .any(|l| l.source == LogSource::Stderr && l.message == "err: to the log")
    );

    let failed = call(control("fail", &["bad-config", "the port is taken"]));
    assert_eq!(failed_code(&failed), ("bad-config", "the port is taken"));
    assert_eq!(
        failed_code(&call(control("no-such-action", &[]))).0,
        "unknown-action"
    );
    // start and stop go through spawn / signal / wait
    ok(&call(HookCall::Start));
    ok(&call(HookCall::Stop));
}

#[test]
fn standalone_hosts_refuse_to_run_programs() {
    let pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let cartridge = runtime(cache.path()).load_dir(pkg.path()).expect("load");
    let host = scratch("full", gear.path());
    let outcome = rt().block_on(cartridge.call(host, control("exec", &["echo", "hi"])));
    let (code, message) = failed_code(&outcome);
    assert_eq!(code, "unavailable");
    assert!(message.contains("needs a gear sandbox"), "{message}");
}

#[test]
fn a_looping_hook_is_stopped_at_its_budget_and_others_keep_running() {
    let loop_pkg = cartridge_dir("guest-loop");
    let full_pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let runtime = runtime(cache.path());
    let mut manifest = Manifest::load_dir(loop_pkg.path()).expect("manifest");
    manifest.limits.timeout = Duration::from_millis(300);
    let wasm = std::fs::read(loop_pkg.path().join("hooks.wasm")).expect("wasm");
    let looper = runtime
        .load(manifest, &wasm, &loop_pkg.path().join("hooks.wasm"))
        .expect("load loop");
    let full = runtime.load_dir(full_pkg.path()).expect("load full");

    // one thread only: the looping hook must yield for the others to run
    let rt = rt();
    let (looped, others) = rt.block_on(async {
        let host = scratch("loop", gear.path());
        let looping = looper.call(host.clone(), control("status", &[]));
        let others = async {
            let mut done = Vec::new();
            for _ in 0..10 {
                let out = full
                    .call(scratch("full", gear.path()), control("noop", &[]))
                    .await;
                done.push((out.result.is_ok(), Instant::now()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            done
        };
        tokio::join!(looping, others)
    });
    match &looped.result {
        Err(HookError::DeadlineExceeded { budget, .. }) => {
            assert_eq!(*budget, Duration::from_millis(300))
        }
        other => panic!("expected a deadline, got {other:?}"),
    }
    assert!(
        looped.elapsed < Duration::from_millis(400),
        "stopped after {:?}, more than budget + 100 ms",
        looped.elapsed
    );
    assert!(looped.elapsed >= Duration::from_millis(300));
    assert!(
        others.iter().all(|(ok, _)| *ok),
        "a well-behaved hook failed meanwhile"
    );

    // and the same cartridge still works afterwards, for every hook
    let build = rt.block_on(looper.call(scratch("loop", gear.path()), HookCall::Build));
    assert!(matches!(
        build.result,
        Err(HookError::DeadlineExceeded { .. })
    ));
    let noop = rt.block_on(full.call(scratch("full", gear.path()), control("noop", &[])));
    assert!(noop.result.is_ok());
}

#[test]
fn the_node_ceiling_caps_a_manifest_budget() {
    let pkg = cartridge_dir("guest-loop");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let config = RuntimeConfig {
        max_timeout: Duration::from_millis(200),
        ..RuntimeConfig::with_cache_dir(cache.path().to_path_buf())
    };
    let cartridge = Runtime::new(config)
        .expect("runtime")
        .load_dir(pkg.path())
        .expect("load");
    let out = rt().block_on(cartridge.call(scratch("loop", gear.path()), HookCall::Start));
    match &out.result {
        Err(
            e @ HookError::DeadlineExceeded {
                budget, ceiling, ..
            },
        ) => {
            assert_eq!(*budget, Duration::from_millis(200));
            assert_eq!(*ceiling, Duration::from_millis(200));
            assert!(e.to_string().contains("raise `limits.timeout`"), "{e}");
        }
        other => panic!("expected a deadline, got {other:?}"),
    }
    assert!(
        out.elapsed < Duration::from_millis(300),
        "{:?}",
        out.elapsed
    );
}

#[test]
fn a_hook_that_eats_memory_is_stopped_at_its_cap() {
    let pkg = cartridge_dir("guest-hog");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let runtime = runtime(cache.path());
    let mut manifest = Manifest::load_dir(pkg.path()).expect("manifest");
    manifest.limits.memory = 32 << 20;
    let wasm = std::fs::read(pkg.path().join("hooks.wasm")).expect("wasm");
    let hog = runtime
        .load(manifest, &wasm, Path::new("hooks.wasm"))
        .expect("load");
    let rt = rt();
    for call in [HookCall::Build, control("status", &[])] {
        let out = rt.block_on(hog.call(scratch("hog", gear.path()), call));
        match &out.result {
            Err(e @ HookError::MemoryLimitExceeded { limit, .. }) => {
                assert_eq!(*limit, 32 << 20);
                assert!(e.to_string().contains("32MiB"), "{e}");
            }
            other => panic!("expected the memory cap, got {other:?}"),
        }
    }
}

#[test]
fn a_panicking_hook_reports_a_trap_with_a_backtrace() {
    let pkg = cartridge_dir("guest-panic");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let cartridge = runtime(cache.path()).load_dir(pkg.path()).expect("load");
    let out = rt().block_on(cartridge.call(scratch("panic", gear.path()), HookCall::Build));
    match &out.result {
        Err(HookError::Trapped {
            trap, backtrace, ..
        }) => {
            assert!(trap.contains("deliberate panic in build"), "{trap}");
            let backtrace = backtrace.as_deref().expect("a backtrace");
            assert!(backtrace.contains("guest_panic"), "{backtrace}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn permissions_from_the_manifest_are_enforced() {
    let pkg = cartridge_dir("guest-trespass");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let cartridge = runtime(cache.path()).load_dir(pkg.path()).expect("load");
    let host = Arc::new(DirectHost {
        dir: gear.path().to_path_buf(),
        ..Default::default()
    });
    let rt = rt();
    let build = rt.block_on(cartridge.call(host.clone(), HookCall::Build));
    match &build.result {
        Err(e @ HookError::PermissionDenied { denials, .. }) => {
            assert_eq!(denials.len(), 1);
            assert_eq!(denials[0].program, "/bin/cat");
            assert_eq!(denials[0].field, "permissions.exec");
            assert!(e.to_string().contains("cartridge.toml"), "{e}");
        }
        other => panic!("expected a permission error, got {other:?}"),
    }
    let start = rt.block_on(cartridge.call(host.clone(), HookCall::Start));
    match &start.result {
        Err(HookError::PermissionDenied { denials, .. }) => {
            assert_eq!(denials[0].request, "spawn");
            assert_eq!(denials[0].program, "sh");
        }
        other => panic!("expected a permission error, got {other:?}"),
    }
    // nothing refused ever reached the host
    assert!(host.execs.lock().expect("execs").is_empty());
    // what is allowed still works
    let allowed = rt.block_on(cartridge.call(host.clone(), control("allowed", &[])));
    assert_eq!(ok(&allowed).trim(), "hi");
    assert_eq!(host.execs.lock().expect("execs").len(), 1);
}

#[test]
fn components_for_another_contract_are_refused_at_load() {
    let cache = tempfile::tempdir().expect("cache");
    let runtime = runtime(cache.path());
    let next = cartridge_dir("guest-wit-next");
    let err = runtime
        .load_dir(next.path())
        .expect_err("must refuse 0.2.0");
    assert!(matches!(err, LoadError::Incompatible { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("0.2.0") && text.contains("newer"), "{text}");

    let none = cartridge_dir("guest-no-hooks");
    let err = runtime
        .load_dir(none.path())
        .expect_err("must refuse a component without hooks");
    assert!(matches!(err, LoadError::Incompatible { .. }), "{err:?}");
    assert!(err.to_string().contains("does not export"), "{err}");
}

#[test]
fn files_that_are_not_components_are_refused_with_advice() {
    let cache = tempfile::tempdir().expect("cache");
    let runtime = runtime(cache.path());
    let pkg = cartridge_dir("guest-full");
    let manifest = Manifest::load_dir(pkg.path()).expect("manifest");
    let cases: [(&[u8], &str); 3] = [
        (b"#!/bin/sh\necho hi\n", "not a WebAssembly file"),
        (b"\0asm\x01\0\0\0", "core WebAssembly module"),
        (b"\0asm\x0d\0\x01\0garbage", "does not compile"),
    ];
    for (bytes, expect) in cases {
        let err = runtime
            .load(manifest.clone(), bytes, Path::new("hooks.wasm"))
            .expect_err("must refuse");
        assert!(matches!(err, LoadError::NotAComponent { .. }), "{err:?}");
        assert!(err.to_string().contains(expect), "{err}");
    }
}

#[test]
fn hooks_cannot_reach_outside_their_gear_directory() {
    let pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("secret"), "top secret").expect("secret");
    std::fs::write(gear.path().join("mine.txt"), "my data").expect("own file");
    std::os::unix::fs::symlink("/etc/passwd", gear.path().join("passwd-link")).expect("symlink");
    std::os::unix::fs::symlink(outside.path(), gear.path().join("outside-dir")).expect("symlink");
    let cartridge = runtime(cache.path()).load_dir(pkg.path()).expect("load");
    let rt = rt();
    let call = |c: HookCall| rt.block_on(cartridge.call(scratch("full", gear.path()), c));

    // positive control: its own files work
    assert_eq!(ok(&call(control("read", &["/gear/mine.txt"]))), "my data");
    assert_eq!(ok(&call(control("read", &["mine.txt"]))), "my data");
    assert_eq!(
        ok(&call(control("write", &["/gear/new.txt", "written"]))),
        "ok"
    );
    assert_eq!(
        std::fs::read_to_string(gear.path().join("new.txt")).expect("new"),
        "written"
    );
    // relative paths resolve against the gear's home, for writes too
    assert_eq!(ok(&call(control("write", &["relative.txt", "here"]))), "ok");
    assert_eq!(
        std::fs::read_to_string(gear.path().join("relative.txt")).expect("relative"),
        "here"
    );

    let secret = outside.path().join("secret");
    let secret = secret.to_str().expect("utf-8");
    for path in [
        "/etc/passwd",
        "/gear/../etc/passwd",
        "../etc/passwd",
        "/gear/../../../../etc/passwd",
        "/gear/passwd-link",
        "/gear/outside-dir/secret",
        secret,
    ] {
        let out = call(control("read", &[path]));
        assert_eq!(
            failed_code(&out).0,
            "io",
            "reading {path} must fail: {:?}",
            out.result
        );
    }
    for path in [
        "/tmp/escape.txt",
        "/gear/../escape.txt",
        "/gear/outside-dir/planted",
    ] {
        let out = call(control("write", &[path, "x"]));
        assert_eq!(failed_code(&out).0, "io", "writing {path} must fail");
    }
    assert!(!outside.path().join("planted").exists());
    assert!(
        failed_code(&call(control("list", &["/"]))).0 == "io" || {
            // a listing of the root shows only the preopen, never the host's root
            let out = call(control("list", &["/"]));
            !ok(&out).contains("etc")
        }
    );
    // a symlink the hook creates cannot point it outside either
    let _ = call(control("symlink", &["/etc/passwd", "/gear/made-link"]));
    assert_eq!(
        failed_code(&call(control("read", &["/gear/made-link"]))).0,
        "io"
    );
}

#[test]
fn components_compile_once_and_a_corrupt_cache_entry_is_rebuilt() {
    let pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let runtime = runtime(cache.path());
    let first = runtime.load_dir(pkg.path()).expect("first load");
    assert_eq!(first.info().cache, CacheOutcome::Compiled);
    let second = runtime.load_dir(pkg.path()).expect("second load");
    assert_eq!(second.info().cache, CacheOutcome::Hit);
    assert!(second.info().load_time < first.info().load_time);

    // flip one byte in the middle of the artifact
    let entry = second.info().cache_path.clone();
    let mut bytes = std::fs::read(&entry).expect("entry");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, &bytes).expect("corrupt");
    let third = runtime.load_dir(pkg.path()).expect("load after corruption");
    assert_eq!(third.info().cache, CacheOutcome::Rebuilt);
    let out = rt().block_on(third.call(
        scratch("full", gear.path()),
        control("echo", &["still", "fine"]),
    ));
    assert_eq!(ok(&out), "still fine");
    // and the rebuilt entry is valid again
    assert_eq!(
        runtime.load_dir(pkg.path()).expect("reload").info().cache,
        CacheOutcome::Hit
    );

    // truncation is caught too
    std::fs::write(&entry, &bytes[..100]).expect("truncate");
    assert_eq!(
        runtime.load_dir(pkg.path()).expect("reload").info().cache,
        CacheOutcome::Rebuilt
    );
}

#[test]
fn a_component_file_changed_after_its_hash_was_stamped_is_read_again() {
    let pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let runtime = runtime(cache.path());
    let first = runtime.load_dir(pkg.path()).expect("first load");
    assert_eq!(first.info().cache, CacheOutcome::Compiled);
    // a file is stamped once it has been left alone for a second
    std::thread::sleep(Duration::from_millis(1100));
    let second = runtime.load_dir(pkg.path()).expect("second load");
    assert_eq!(second.info().cache, CacheOutcome::Hit);
    let stamps: Vec<_> = std::fs::read_dir(cache.path().join("stamps"))
        .expect("the stamps directory")
        .collect();
    assert_eq!(stamps.len(), 1, "one stamp: {stamps:?}");
    let third = runtime.load_dir(pkg.path()).expect("third load");
    assert_eq!(third.info().cache, CacheOutcome::Hit);
    assert_eq!(third.info().content_hash, first.info().content_hash);

    // the same file, rewritten in place with a custom section more (still a valid
    // component) and its modification time put back: a new component, compiled
    let wasm = pkg.path().join("hooks.wasm");
    let mtime = std::fs::metadata(&wasm)
        .and_then(|m| m.modified())
        .expect("mtime");
    let mut bytes = std::fs::read(&wasm).expect("read the component");
    bytes.extend_from_slice(&[0x00, 0x03, 0x01, b'x', b'y']);
    std::fs::write(&wasm, &bytes).expect("rewrite the component");
    std::fs::File::options()
        .write(true)
        .open(&wasm)
        .and_then(|f| f.set_modified(mtime))
        .expect("put the modification time back");
    let fourth = runtime.load_dir(pkg.path()).expect("load after the change");
    assert_eq!(fourth.info().cache, CacheOutcome::Compiled);
    assert_ne!(fourth.info().content_hash, first.info().content_hash);
}

#[test]
fn many_hooks_run_concurrently_on_one_runtime() {
    let pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let cartridge = runtime(cache.path()).load_dir(pkg.path()).expect("load");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..48 {
            let cartridge = cartridge.clone();
            let host = scratch("full", gear.path());
            tasks.push(tokio::spawn(async move {
                let n = i.to_string();
                cartridge.call(host, control("echo", &[&n])).await.result
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("join"));
        }
        out
    });
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.as_deref().ok(), Some(i.to_string().as_str()));
    }
}

// ---------------------------------------------------------------------------
// hostile files: whatever a gear did to the files a hook touches, the hook's
// budget and memory cap hold, and a stuck hook holds nobody else up

/// The `files` test cartridge with its budget set to `timeout`.
fn files_cartridge(
    runtime: &Runtime,
    pkg: &Path,
    timeout: Duration,
) -> gearhost_runtime::Cartridge {
    let mut manifest = Manifest::load_dir(pkg).expect("manifest");
    manifest.limits.timeout = timeout;
    let wasm = std::fs::read(pkg.join("hooks.wasm")).expect("wasm");
    runtime
        .load(manifest, &wasm, &pkg.join("hooks.wasm"))
        .expect("load files")
}

/// Run `f` on a thread of its own and give up after `limit`: a call that
/// hangs fails the test instead of hanging it.
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not end within {limit:?}: the hook's budget did not hold"),
    }
}

fn sh(script: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", script])
        .status()
        .expect("sh");
    assert!(status.success(), "{script}");
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

fn expect_deadline(out: &HookOutcome, budget: Duration) {
    match &out.result {
        Err(HookError::DeadlineExceeded { budget: b, .. }) => assert_eq!(*b, budget),
        other => panic!("expected the budget to end the hook, got {other:?}"),
    }
    assert!(
        out.elapsed >= budget && out.elapsed < budget + Duration::from_millis(250),
        "the hook ended after {:?}, its budget was {budget:?}",
        out.elapsed
    );
}

#[test]
fn a_hook_blocked_opening_a_fifo_ends_at_its_budget_and_others_keep_running() {
    let pkg = cartridge_dir("guest-files");
    let full_pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    // two: a reader and a writer of the same FIFO would meet and both go on
    mkfifo(&gear.path().join("fifo-r"));
    mkfifo(&gear.path().join("fifo-w"));
    let runtime = runtime(cache.path());
    let budget = Duration::from_millis(300);
    let files = files_cartridge(&runtime, pkg.path(), budget);
    let full = runtime.load_dir(full_pkg.path()).expect("load full");
    let dir = gear.path().to_path_buf();

    // one runtime thread, as in the looping test: the stuck hook must not hold it
    let (read, write, others) = within(
        Duration::from_secs(20),
        "a hook opening a FIFO",
        move || {
            rt().block_on(async {
                let read = files.call(scratch("files", &dir), control("read", &["/gear/fifo-r"]));
                let write = files.call(
                    scratch("files", &dir),
                    control("open-write", &["/gear/fifo-w"]),
                );
                let others = async {
                    let mut done = Vec::new();
                    for _ in 0..10 {
                        let out = full.call(scratch("full", &dir), control("noop", &[])).await;
                        done.push((out.result.is_ok(), Instant::now()));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    done
                };
                let started = Instant::now();
                let (read, write, others) = tokio::join!(read, write, others);
                (read, write, (started, others))
            })
        },
    );
    expect_deadline(&read, budget);
    expect_deadline(&write, budget);
    let (started, others) = others;
    assert!(
        others.iter().all(|(ok, _)| *ok),
        "a well-behaved hook failed"
    );
    // the ten calls (and their pauses) ran while the two hooks were stuck
    assert!(
        others
            .iter()
            .all(|(_, at)| at.duration_since(started) < budget),
        "the other hooks waited for the stuck ones"
    );
}

#[test]
fn a_runtime_for_few_calls_runs_the_hook_in_the_caller_and_its_budget_still_holds() {
    let files_pkg = cartridge_dir("guest-files");
    let full_pkg = cartridge_dir("guest-full");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    mkfifo(&gear.path().join("fifo"));
    let runtime = Runtime::for_few_calls(RuntimeConfig::with_cache_dir(cache.path().into()))
        .expect("runtime");
    let budget = Duration::from_millis(300);
    let files = files_cartridge(&runtime, files_pkg.path(), budget);
    let full = runtime.load_dir(full_pkg.path()).expect("load full");
    let host = Arc::new(DirectHost {
        dir: gear.path().to_path_buf(),
        ..DirectHost::default()
    });
    let dir = gear.path().to_path_buf();
    let caller_host = host.clone();
    let (asked, stuck, cancelled, caller) = within(
        Duration::from_secs(20),
        "hooks of a runtime for few calls",
        move || {
            rt().block_on(async {
                let asked = full
                    .call(caller_host, control("env-set", &["WHERE", "here"]))
                    .await;
                // blocked in the kernel on the caller's thread: the watchdog's signal ends it
                let stuck = files
                    .call(scratch("files", &dir), control("read", &["/gear/fifo"]))
                    .await;
                // a cancel from another thread ends it too
                let cancel = gearhost_runtime::Cancel::new();
                let canceller = cancel.clone();
                let cancelling = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    canceller.cancel("the test stopped it");
                });
                let cancelled = files
                    .call_cancellable(
                        scratch("files", &dir),
                        control("read", &["/gear/fifo"]),
                        &cancel,
                    )
                    .await;
                cancelling.join().expect("canceller");
                (asked, stuck, cancelled, std::thread::current().id())
            })
        },
    );
    ok(&asked);
    assert_eq!(
        *gearhost_sys::lock::lock(&host.env_set_threads),
        [caller],
        "the hook's request came from another thread than the caller's"
    );
    expect_deadline(&stuck, budget);
    match &cancelled.result {
        Err(HookError::Cancelled { reason, .. }) => {
            assert!(reason.contains("the test stopped it"), "{reason}");
        }
        other => panic!("expected the cancel to end the hook, got {other:?}"),
    }
    assert!(
        cancelled.elapsed < budget,
        "the cancelled hook ended after {:?}",
        cancelled.elapsed
    );
}

#[test]
fn a_cancelled_hook_blocked_on_a_fifo_ends_within_milliseconds() {
    let pkg = cartridge_dir("guest-files");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    mkfifo(&gear.path().join("fifo"));
    let files = files_cartridge(&runtime(cache.path()), pkg.path(), Duration::from_secs(30));
    let dir = gear.path().to_path_buf();
    let out = within(Duration::from_secs(10), "a cancelled hook", move || {
        rt().block_on(async {
            let cancel = gearhost_runtime::Cancel::new();
            let canceller = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                canceller.cancel("the test stopped it");
            });
            files
                .call_cancellable(
                    scratch("files", &dir),
                    control("read", &["/gear/fifo"]),
                    &cancel,
                )
                .await
        })
    });
    match &out.result {
        Err(e @ HookError::Cancelled { reason, .. }) => {
            assert_eq!(reason, "the test stopped it");
            assert!(
                e.to_string().contains("was stopped before it finished"),
                "{e}"
            );
        }
        other => panic!("expected a cancelled hook, got {other:?}"),
    }
    assert!(
        out.elapsed < Duration::from_millis(500),
        "cancelled after 200 ms, ended after {:?}",
        out.elapsed
    );
}

#[test]
fn a_file_under_a_lease_does_not_hold_a_hook_past_its_budget() {
    let pkg = cartridge_dir("guest-files");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let leased = gear.path().join("leased");
    std::fs::write(&leased, "data").expect("write");
    // a write lease: every open by another process waits until the holder
    // gives it up, or for the kernel's lease-break-time (45 s by default)
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import fcntl, os, signal, sys, time\n\
             signal.signal(signal.SIGIO, lambda *_: None)\n\
             fd = os.open(sys.argv[1], os.O_RDONLY)\n\
             fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)\n\
             print('leased', flush=True)\n\
             time.sleep(120)\n",
        ])
        .arg(&leased)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "leased");
    let budget = Duration::from_millis(300);
    let files = files_cartridge(&runtime(cache.path()), pkg.path(), budget);
    let dir = gear.path().to_path_buf();
    let out = within(
        Duration::from_secs(20),
        "a hook opening a leased file",
        move || {
            rt().block_on(files.call(scratch("files", &dir), control("read", &["/gear/leased"])))
        },
    );
    let _ = holder.kill();
    let _ = holder.wait();
    expect_deadline(&out, budget);
}

/// Opening a socket fails (`ENXIO`, an I/O error to the guest), a symlink
/// loop ends in `ELOOP`: neither waits.
#[test]
fn sockets_and_symlink_loops_fail_at_once() {
    let pkg = cartridge_dir("guest-files");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let _listener =
        std::os::unix::net::UnixListener::bind(gear.path().join("socket")).expect("bind");
    std::os::unix::fs::symlink("b", gear.path().join("a")).expect("symlink");
    std::os::unix::fs::symlink("a", gear.path().join("b")).expect("symlink");
    let files = files_cartridge(&runtime(cache.path()), pkg.path(), Duration::from_secs(5));
    let rt = rt();
    for (path, kind) in [("/gear/socket", "I/O error"), ("/gear/a", "FilesystemLoop")] {
        let out = rt.block_on(files.call(scratch("files", gear.path()), control("read", &[path])));
        let (code, message) = failed_code(&out);
        assert_eq!(code, "io");
        assert!(message.contains(kind), "{path}: {message}");
        assert!(!message.contains("Interrupted"), "{path}: {message}");
        assert!(
            out.elapsed < Duration::from_secs(1),
            "{path}: {:?}",
            out.elapsed
        );
    }
}

#[test]
fn a_sparse_terabyte_file_is_held_by_the_memory_cap_and_the_budget() {
    let pkg = cartridge_dir("guest-files");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    std::fs::File::create(gear.path().join("huge"))
        .and_then(|f| f.set_len(1 << 40))
        .expect("sparse file");
    let runtime = runtime(cache.path());
    let files = files_cartridge(&runtime, pkg.path(), Duration::from_secs(10));
    let rt = rt();
    // into memory by its size: the reservation fails at once, in the guest
    let read = rt.block_on(files.call(
        scratch("files", gear.path()),
        control("read", &["/gear/huge"]),
    ));
    let (code, message) = failed_code(&read);
    assert_eq!(code, "io");
    assert!(message.starts_with("OutOfMemory"), "{message}");
    // into memory as it comes: stopped at the cap (32 MiB)
    let slurp = rt.block_on(files.call(
        scratch("files", gear.path()),
        control("slurp", &["/gear/huge"]),
    ));
    assert!(
        matches!(slurp.result, Err(HookError::MemoryLimitExceeded { limit, .. }) if limit == 32 << 20),
        "{:?}",
        slurp.result
    );
    // read through, keeping nothing: stopped at the budget
    let budget = Duration::from_millis(300);
    let files = files_cartridge(&runtime, pkg.path(), budget);
    let scan = rt.block_on(files.call(
        scratch("files", gear.path()),
        control("scan", &["/gear/huge"]),
    ));
    expect_deadline(&scan, budget);
}

#[test]
fn a_device_that_never_ends_is_held_by_the_memory_cap() {
    if !gearhost_tests::privileged("making a device node takes root") {
        return;
    }
    let pkg = cartridge_dir("guest-files");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    // the same device as /dev/zero: endless, and of size 0
    sh(&format!("mknod {}/zero c 1 5", gear.path().display()));
    let files = files_cartridge(&runtime(cache.path()), pkg.path(), Duration::from_secs(5));
    let out = rt().block_on(files.call(
        scratch("files", gear.path()),
        control("read", &["/gear/zero"]),
    ));
    assert!(
        matches!(out.result, Err(HookError::MemoryLimitExceeded { .. })),
        "{:?}",
        out.result
    );
}

#[test]
fn a_huge_directory_is_listed_as_the_hook_reads_it() {
    let pkg = cartridge_dir("guest-files");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    let many = gear.path().join("many");
    std::fs::create_dir(&many).expect("dir");
    let n = 200_000;
    for i in 0..n {
        std::fs::File::create(many.join(format!("entry-with-a-longish-name-{i:08}")))
            .expect("create");
    }
    let runtime = runtime(cache.path());
    let files = files_cartridge(&runtime, pkg.path(), Duration::from_secs(20));
    let rt = rt();
    // all of it, one entry at a time
    let count = rt.block_on(files.call(
        scratch("files", gear.path()),
        control("count", &["/gear/many"]),
    ));
    assert_eq!(ok(&count), format!("{n} entries"));
    // the first entry does not wait for the rest: the host does not read
    // (and keep) the whole directory before the hook sees one entry
    let first = rt.block_on(files.call(
        scratch("files", gear.path()),
        control("first", &["/gear/many"]),
    ));
    assert!(
        ok(&first).starts_with("entry-with-a-longish-name-"),
        "{:?}",
        first.result
    );
    assert!(
        first.elapsed < Duration::from_millis(100),
        "the first entry of {n} took {:?}",
        first.elapsed
    );
    // and a listing that takes too long ends at the budget
    let budget = Duration::from_millis(20);
    let short = files_cartridge(&runtime, pkg.path(), budget);
    let out = rt.block_on(short.call(
        scratch("files", gear.path()),
        control("count", &["/gear/many"]),
    ));
    expect_deadline(&out, budget);
}

#[test]
fn a_tree_deeper_than_a_path_can_be_ends_in_an_error() {
    let pkg = cartridge_dir("guest-files");
    let cache = tempfile::tempdir().expect("cache");
    let gear = tempfile::tempdir().expect("gear");
    // 3000 levels of `d`: its deepest paths are longer than PATH_MAX
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys\n\
             os.mkdir(sys.argv[1])\n\
             fd = os.open(sys.argv[1], os.O_RDONLY)\n\
             for _ in range(3000):\n\
             \x20   os.mkdir('d', dir_fd=fd)\n\
             \x20   fd = os.open('d', os.O_RDONLY, dir_fd=fd)\n",
        ])
        .arg(gear.path().join("deep"))
        .status()
        .expect("python3");
    assert!(status.success());
    let files = files_cartridge(&runtime(cache.path()), pkg.path(), Duration::from_secs(10));
    let out = within(
        Duration::from_secs(30),
        "a walk of a deep tree",
        move || {
            rt().block_on(files.call(
                scratch("files", gear.path()),
                control("walk", &["/gear/deep"]),
            ))
        },
    );
    println!("{:?} after {:?}", out.result, out.elapsed);
}
