//! End to end: the real cartridges under `cartridges/` (and the tutorial
//! cartridge), installed into a real node through the real `gear` binary,
//! each running its example app from `examples/` in a gear, answering through
//! the frontend.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, privileged, workspace_root};

fn example(name: &str) -> String {
    let dir: PathBuf = workspace_root().join("examples").join(name);
    assert!(dir.is_dir(), "{} is missing", dir.display());
    dir.to_str().expect("utf-8 path").to_string()
}

/// A copy of an example, to change before deploying it.
fn copy_example(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", example(name)))
        .arg(dir.path())
        .status()
        .expect("cp");
    assert!(status.success());
    dir
}

fn install(node: &TestNode, package: &str) -> tempfile::TempDir {
    let dir = cartridge_dir(package);
    node.ok(&["cartridge", "install", dir.path().to_str().expect("utf-8")]);
    dir
}

/// GET until the app answers 200 (a freshly started server may need a moment
/// after its port opens for its first worker), at most 20 s.
fn get_ok(node: &TestNode, label: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = node.http_get(label, path);
        if code == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} from {label} answered {code}: {body}\nnode log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn python_runs_a_plain_app_and_a_wsgi_app_with_requirements() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(
        62000,
        &format!(
            "start-timeout = \"5s\"{}",
            gearhost_tests::package_index_egress()
        ),
    );
    let _python = install(&node, "python-cartridge");

    // app.py, standard library only
    node.ok(&["create", "hello", "--cartridge", "python"]);
    node.ok(&["deploy", "hello", &example("python-hello")]);
    let body = get_ok(&node, "hello-default", "/");
    assert_eq!(body, "Hello from Python in hello!\n");
    let info: serde_json::Value =
        serde_json::from_str(&get_ok(&node, "hello-default", "/info")).expect("json");
    assert_eq!(info["gear"], "hello");
    assert!(info["python"].as_str().is_some_and(|v| v.starts_with('3')));
    let status = node.ok(&["control", "hello", "status"]);
    assert!(status.contains("app: app.py"), "{status}");
    assert!(status.contains("virtualenv: Python 3"), "{status}");
    assert!(status.contains("web: running (pid"), "{status}");

    // wsgi.py with gunicorn from requirements.txt, installed by pip at build
    node.ok(&["create", "wsgi", "--cartridge", "python"]);
    node.ok(&["deploy", "wsgi", &example("python-wsgi")]);
    let body = get_ok(&node, "wsgi-default", "/");
    assert!(
        body.starts_with("Hello from WSGI in wsgi, served by gunicorn/"),
        "{body}"
    );
    let reload = node.ok(&["control", "wsgi", "reload"]);
    assert!(reload.contains("gunicorn is reloading"), "{reload}");
    get_ok(&node, "wsgi-default", "/health");

    // a second deployment with the same requirements does not run pip again
    node.ok(&["deploy", "wsgi", &example("python-wsgi")]);
    let logs = node.ok(&["logs", "wsgi", "--hooks", "-n", "200"]);
    assert!(
        logs.contains("requirements.txt unchanged since the last build; pip skipped"),
        "{logs}"
    );
    get_ok(&node, "wsgi-default", "/");

    // a deployment the cartridge cannot run is refused, and the running
    // deployment keeps serving
    let empty = tempfile::tempdir().expect("src");
    std::fs::write(empty.path().join("README"), "no app here\n").expect("write");
    let out = node.gear(&["deploy", "hello", empty.path().to_str().expect("utf-8")]);
    assert!(!out.status.success(), "an app-less deploy succeeded");
    assert!(
        stderr_of(&out).contains("neither wsgi.py") && stderr_of(&out).contains("app.py"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        get_ok(&node, "hello-default", "/"),
        "Hello from Python in hello!\n"
    );

    // a changed deployment shows the change; rollback restores the old one
    let changed = copy_example("python-hello");
    let app = changed.path().join("app.py");
    let source = std::fs::read_to_string(&app).expect("read");
    std::fs::write(
        &app,
        source.replace("Hello from Python", "Hi again from Python"),
    )
    .expect("write");
    node.ok(&["deploy", "hello", changed.path().to_str().expect("utf-8")]);
    assert_eq!(
        get_ok(&node, "hello-default", "/"),
        "Hi again from Python in hello!\n"
    );
    node.ok(&["rollback", "hello"]);
    assert_eq!(
        get_ok(&node, "hello-default", "/"),
        "Hello from Python in hello!\n"
    );

    // broken apps: each deploy fails with a message that says what went
    // wrong, and the running deployment keeps serving
    let broken = |file: &str, contents: &str| {
        let dir = copy_example("python-hello");
        std::fs::write(dir.path().join(file), contents).expect("write");
        let out = node.gear(&["deploy", "hello", dir.path().to_str().expect("utf-8")]);
        assert!(!out.status.success(), "a broken app deployed: {file}");
        assert_eq!(
            get_ok(&node, "hello-default", "/"),
            "Hello from Python in hello!\n",
            "the previous deployment stopped serving after a broken {file}"
        );
        stderr_of(&out)
    };
    // a syntax error: the app crashes at start, the deploy says so at once
    let started = Instant::now();
    let err = broken("app.py", "def broken(:\n");
    assert!(
        err.contains("did not start")
            && err.contains("exited with code 1 before it answered on port 8080")
            && err.contains("is serving again"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{err}");
    let logs = node.ok(&["logs", "hello", "-n", "50"]);
    assert!(logs.contains("SyntaxError"), "{logs}");
    // the same lines for programs: one JSON object per line
    let lines = node.ok(&["logs", "hello", "-n", "50", "--json"]);
    let entries: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert!(entries.iter().all(|e| e["log"] == "app"), "{lines}");
    assert!(
        entries.iter().any(|e| e["line"]
            .as_str()
            .is_some_and(|l| l.contains("SyntaxError"))),
        "{lines}"
    );
    // an app that never opens its port: the start timeout, then back
    let err = broken("app.py", "import time\nwhile True:\n    time.sleep(1)\n");
    assert!(
        err.contains("did not answer on port 8080 within 5s") && err.contains("is serving again"),
        "{err}"
    );
    // a dependency that does not exist: pip's reason, at build
    let err = broken(
        "requirements.txt",
        "gearhost-no-such-package-for-tests==0.0.1\n",
    );
    assert!(
        err.contains("pip could not install requirements.txt")
            && err.contains("No matching distribution found")
            && err.contains("keeps serving"),
        "{err}"
    );
    let deployments: serde_json::Value =
        serde_json::from_str(&node.ok(&["deployments", "hello", "--json"])).expect("json");
    let states: Vec<&str> = deployments["deployments"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["state"].as_str())
        .collect();
    // the app-less deployment above and these three failed: the newest
    // three failures are kept apart from the good deployments
    assert_eq!(
        states.iter().filter(|s| **s == "failed").count(),
        3,
        "{deployments}"
    );
    assert_eq!(states.last(), Some(&"failed"), "{deployments}");
    assert!(states.contains(&"ready"), "{deployments}");

    // tidy empties pip's cache; stop is graceful and the frontend says so
    let tidy = node.ok(&["control", "wsgi", "tidy"]);
    assert!(tidy.starts_with("removed pip's cache ("), "{tidy}");
    node.ok(&["stop", "wsgi"]);
    assert_eq!(node.http_get("wsgi-default", "/").0, 503);
}

#[test]
fn nodejs_installs_with_npm_and_runs_the_start_script() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(62200, "");
    let _nodejs = install(&node, "nodejs-cartridge");
    node.ok(&["create", "app", "--cartridge", "nodejs"]);
    node.ok(&["deploy", "app", &example("node-hello")]);
    let body = get_ok(&node, "app-default", "/");
    assert!(
        body.starts_with("Hello from Node.js v") && body.ends_with(" in app!\n"),
        "{body}"
    );
    let status = node.ok(&["control", "app", "status"]);
    assert!(
        status.contains("app: npm start (node server.js)"),
        "{status}"
    );
    assert!(status.contains("node: v"), "{status}");

    // stop, then start again through the hooks
    node.ok(&["stop", "app"]);
    assert_eq!(node.http_get("app-default", "/").0, 503);
    node.ok(&["start", "app"]);
    get_ok(&node, "app-default", "/health");
    let reload = node.ok(&["control", "app", "reload"]);
    assert!(reload.starts_with("restarted the app (pid "), "{reload}");
    get_ok(&node, "app-default", "/");

    // broken package.json: a clear refusal, the app keeps running
    let bad = tempfile::tempdir().expect("src");
    std::fs::write(bad.path().join("package.json"), "{ not json").expect("write");
    let out = node.gear(&["deploy", "app", bad.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("package.json is not valid JSON"),
        "{}",
        stderr_of(&out)
    );
    get_ok(&node, "app-default", "/");
}

#[test]
fn static_serves_public_with_content_types_through_nginx() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(62400, "");
    let _static = install(&node, "static-cartridge");
    let created: serde_json::Value =
        serde_json::from_str(&node.ok(&["create", "site", "--cartridge", "static", "--json"]))
            .expect("json");
    node.ok(&["deploy", "site", &example("static-site")]);
    get_ok(&node, "site-default", "/");
    for (path, content_type, needle) in [
        ("/", "text/html", "<h1>A static site"),
        ("/css/site.css", "text/css", "font-family"),
        ("/img/gear.svg", "image/svg+xml", "<svg"),
        ("/data.json", "application/json", "\"served-by\": \"nginx\""),
    ] {
        let (code, headers, body) = node.http_get_with_headers("site-default", path);
        assert_eq!(code, 200, "GET {path}: {body}");
        let got = headers.get("content-type").cloned().unwrap_or_default();
        assert!(
            got.starts_with(content_type),
            "GET {path}: content-type {got:?}, expected {content_type}"
        );
        assert!(body.contains(needle), "GET {path}: {body}");
        assert!(
            headers.get("server").is_some_and(|s| s == "nginx"),
            "GET {path}: {headers:?}"
        );
    }
    // only public/ is served; dotfiles never are
    assert_eq!(node.http_get("site-default", "/README.txt").0, 404);
    assert_eq!(node.http_get("site-default", "/../README.txt").0, 400);
    assert_eq!(node.http_get("site-default", "/.hidden").0, 404);

    // nginx, master and worker, runs as the gear's user
    let uid = created["uid"].as_u64().expect("uid");
    let nginx_uids: Vec<u64> = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| status.lines().next() == Some("Name:\tnginx"))
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .filter(|u| *u == uid)
        .collect();
    assert!(
        nginx_uids.len() >= 2,
        "nginx processes of uid {uid}: {nginx_uids:?}"
    );

    // a changed page is served after a deploy, the old one after a rollback
    let changed = copy_example("static-site");
    std::fs::write(changed.path().join("public/index.html"), "<h1>v2</h1>\n").expect("write");
    node.ok(&["deploy", "site", changed.path().to_str().expect("utf-8")]);
    assert_eq!(get_ok(&node, "site-default", "/"), "<h1>v2</h1>\n");
    node.ok(&["rollback", "site"]);
    assert!(get_ok(&node, "site-default", "/").contains("<h1>A static site"));

    let reload = node.ok(&["control", "site", "reload"]);
    assert!(reload.contains("re-reading its configuration"), "{reload}");
    get_ok(&node, "site-default", "/");
    node.ok(&["stop", "site"]);
    assert_eq!(node.http_get("site-default", "/").0, 503);
}

#[test]
fn diy_runs_the_scripts_the_app_ships() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(62600, "");
    let _diy = install(&node, "diy-cartridge");
    let created: serde_json::Value =
        serde_json::from_str(&node.ok(&["create", "shell", "--cartridge", "diy", "--json"]))
            .expect("json");
    node.ok(&["deploy", "shell", &example("diy-shell")]);
    assert!(get_ok(&node, "shell-default", "/").contains("do-it-yourself gear"));
    // .gear/build ran as the gear's user, in the deployment
    let built = get_ok(&node, "shell-default", "/build.txt");
    let id = created["id"].as_str().expect("id");
    assert!(
        built.starts_with("built at ") && built.trim_end().ends_with(&format!("by {id}")),
        "{built}"
    );
    let status = node.ok(&["control", "shell", "status"]);
    assert!(status.contains("scripts: build, start, stop"), "{status}");
    assert!(status.contains("app: running (pid"), "{status}");

    node.ok(&["stop", "shell"]);
    assert_eq!(node.http_get("shell-default", "/").0, 503);
    let logs = node.ok(&["logs", "shell", "--hooks", "-n", "200"]);
    assert!(logs.contains("stop[stop:stdout] diy: stopping"), "{logs}");

    // a deployment without .gear/start is refused with advice
    let bare = tempfile::tempdir().expect("src");
    std::fs::write(bare.path().join("index.html"), "hi").expect("write");
    let out = node.gear(&["deploy", "shell", bare.path().to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("no .gear/start"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn the_tutorial_cartridge_serves_a_deployment() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let node = TestNode::start(62800, "");
    let _first = install(&node, "my-first-cartridge");
    node.ok(&["create", "first", "--cartridge", "my-first"]);
    node.ok(&["deploy", "first", &example("hello-site")]);
    let page = get_ok(&node, "first-default", "/");
    let expected = std::fs::read_to_string(workspace_root().join("examples/hello-site/index.html"))
        .expect("read");
    assert_eq!(page, expected);
    let status = node.ok(&["control", "first", "status"]);
    assert!(status.contains("web: running (pid"), "{status}");
    assert!(status.contains("entries deployed"), "{status}");
    let out = node.gear(&["deploy", "first", &example("python-hello")]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("has no index.html"),
        "{}",
        stderr_of(&out)
    );
}
