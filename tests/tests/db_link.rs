//! End to end: a PostgreSQL gear, and app gears that reach it through
//! `gear link` — the real `gear` binary, a real node, the real postgresql
//! cartridge running the machine's PostgreSQL inside a gear, queries made
//! from inside other gears.

use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, json, privileged};

/// Asserts that `gear` has neither a path to the database's port on its loopback nor its
/// credentials in the environment.
fn assert_no_database(node: &TestNode, gear: &str) {
    let out = node.gear(&[
        "exec",
        gear,
        "--",
        "sh",
        "-c",
        "echo \"url=$DATABASE_URL\"; PGPASSWORD=x psql -X -h 127.0.0.1 -p 5432 -U db -d db -c 'select 1'",
    ]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "url=\n");
    assert!(
        stderr(&out).contains("Connection refused"),
        "{}",
        stderr(&out)
    );
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `psql` run inside `gear` with the gear's environment; `-At` output.
fn psql(node: &TestNode, gear: &str, sql: &str) -> std::process::Output {
    node.gear(&[
        "exec",
        gear,
        "--",
        "sh",
        "-c",
        "exec psql -X -At -v ON_ERROR_STOP=1 -c \"$1\"",
        "psql",
        sql,
    ])
}

/// Like [`psql`], insisting that it works; returns its trimmed output.
fn psql_ok(node: &TestNode, gear: &str, sql: &str) -> String {
    let out = psql(node, gear, sql);
    assert!(
        out.status.success(),
        "psql in {gear} failed ({}): {}\nnode log:\n{}",
        out.status,
        stderr(&out),
        node.log()
    );
    stdout(&out).trim().to_string()
}

#[test]
fn a_linked_gear_reaches_its_database_and_no_other_gear_does() {
    if !privileged("the node creates namespaces, cgroups and uids") {
        return;
    }
    let mut node = TestNode::start(63400, "");
    let _carts = node.install_cartridges(&["postgresql-cartridge", "hello-cartridge"]);

    // a database gear starts without a deployment
    node.ok(&["create", "db", "--cartridge", "postgresql"]);
    let started = Instant::now();
    node.ok(&["start", "db"]);
    let first_start = started.elapsed();
    let status = json(&node.ok(&["status", "db", "--json"]));
    assert_eq!(status["state"], "running", "{status}");

    // credentials were generated into the db gear's environment
    let env = json(&node.ok(&["env", "db", "list", "--json"]));
    let effective = &env["effective"];
    let password = effective["PGPASSWORD"].as_str().expect("PGPASSWORD");
    assert_eq!(password.len(), 24, "{env}");
    assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(effective["PGUSER"], "db");
    assert_eq!(effective["PGDATABASE"], "db");
    assert_eq!(effective["PGHOST"], "127.0.0.1");
    assert_eq!(effective["PGPORT"], "5432");
    assert_eq!(
        effective["DATABASE_URL"],
        format!("postgresql://db:{password}@127.0.0.1:5432/db")
    );
    // psql inside the db gear, over TCP with the password, as the app's role
    assert_eq!(
        psql_ok(
            &node,
            "db",
            "select current_user || '|' || current_database() || '|' || (select rolsuper from pg_roles where rolname = current_user)"
        ),
        "db|db|false"
    );
    // a password is needed on TCP
    let refused = node.gear(&[
        "exec",
        "db",
        "--",
        "sh",
        "-c",
        "PGPASSWORD=wrong psql -X -c 'select 1'",
    ]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("password authentication failed"),
        "{}",
        stderr(&refused)
    );
    // a restart keeps the data and the credentials
    psql_ok(
        &node,
        "db",
        "create table kept (v text); insert into kept values ('yes')",
    );
    let started = Instant::now();
    node.ok(&["restart", "db"]);
    let restart = started.elapsed();
    assert_eq!(psql_ok(&node, "db", "select v from kept"), "yes");
    let env_again = json(&node.ok(&["env", "db", "list", "--json"]));
    assert_eq!(env_again["effective"]["PGPASSWORD"], password);

    // the app gear, linked
    node.ok(&["create", "app", "--cartridge", "hello"]);
    let linked = json(&node.ok(&["link", "app", "db", "--json"]));
    assert_eq!(linked["port"], 5432, "{linked}");
    assert_eq!(
        linked["env"],
        serde_json::json!([
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGPASSWORD",
            "PGDATABASE",
            "DATABASE_URL"
        ])
    );
    let seen = node.gear(&[
        "exec",
        "app",
        "--",
        "sh",
        "-c",
        "echo $PGUSER:$PGDATABASE:$PGHOST:$PGPORT:$DATABASE_URL",
    ]);
    assert_eq!(
        stdout(&seen),
        format!("db:db:127.0.0.1:5432:postgresql://db:{password}@127.0.0.1:5432/db\n")
    );
    let started = Instant::now();
    let url_query = node.gear(&[
        "exec",
        "app",
        "--",
        "sh",
        "-c",
        "psql \"$DATABASE_URL\" -X -At -c 'select 1'",
    ]);
    let linked_query = started.elapsed();
    assert_eq!(stdout(&url_query), "1\n", "{}", stderr(&url_query));
    // the app's writes land in the database gear
    psql_ok(
        &node,
        "app",
        "create table visits (n int); insert into visits values (7)",
    );
    assert_eq!(psql_ok(&node, "db", "select n from visits"), "7");
    // where it comes from: the linked layer, and gear show on both sides
    let app_env = json(&node.ok(&["env", "app", "list", "--json"]));
    assert_eq!(app_env["layers"]["linked"]["PGPASSWORD"], password);
    assert!(
        app_env["layers"]["user"]
            .as_object()
            .expect("user")
            .is_empty()
    );
    let shown = json(&node.ok(&["show", "app", "--json"]));
    assert_eq!(shown["links"][0]["gear"], "db", "{shown}");
    assert_eq!(shown["links"][0]["port"], 5432, "{shown}");
    let shown = json(&node.ok(&["show", "db", "--json"]));
    assert_eq!(shown["linked_from"], serde_json::json!(["app"]), "{shown}");
    let text = node.ok(&["show", "app"]);
    assert!(text.contains("link to db on 127.0.0.1:5432"), "{text}");
    // a user variable overrides a linked one; the link's value comes back
    // when it is unset
    node.ok(&["env", "app", "set", "PGDATABASE=other"]);
    let seen = node.gear(&["exec", "app", "--", "sh", "-c", "echo $PGDATABASE"]);
    assert_eq!(stdout(&seen), "other\n");
    node.ok(&["env", "app", "unset", "PGDATABASE"]);

    // a gear that is not linked has no path to the database and no credentials
    node.ok(&["create", "other", "--cartridge", "hello"]);
    assert_no_database(&node, "other");

    // the database cannot be destroyed under the app's feet
    let out = node.gear(&["destroy", "db"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("linked from app") && stderr(&out).contains("gear unlink app db"),
        "{}",
        stderr(&out)
    );
    assert_eq!(psql_ok(&node, "app", "select n from visits"), "7");

    // a node killed with SIGKILL comes back with the link in place
    node.kill9_and_restart();
    node.wait_state("db", "running", 60);
    assert_eq!(psql_ok(&node, "app", "select n from visits"), "7");
    assert_eq!(
        json(&node.ok(&["show", "app", "--json"]))["links"][0]["gear"],
        "db"
    );

    // unlink cuts open connections, closes the port and drops the variables
    let long = std::process::Command::new(gearhost_tests::gear_bin())
        .args([
            "exec",
            "app",
            "--",
            "sh",
            "-c",
            "psql -X -c 'select pg_sleep(60)'",
        ])
        .env("GEARHOST_SOCKET", &node.socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start a long query");
    // wait until the query runs in the database
    let deadline = Instant::now() + Duration::from_secs(20);
    while psql_ok(
        &node,
        "db",
        "select count(*) from pg_stat_activity where query like '%pg_sleep(60)%' and pid <> pg_backend_pid()",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the long query never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let unlinked = Instant::now();
    node.ok(&["unlink", "app", "db"]);
    let cut = long.wait_with_output().expect("long query");
    assert!(!cut.status.success(), "the open connection survived unlink");
    assert!(
        unlinked.elapsed() < Duration::from_secs(10),
        "the connection was not cut at once"
    );
    assert_no_database(&node, "app");
    let shown = json(&node.ok(&["show", "app", "--json"]));
    assert_eq!(shown["links"], serde_json::json!([]), "{shown}");
    // unlinking again changes nothing and says so
    let again = node.ok(&["unlink", "app", "db"]);
    assert!(
        again.contains("not linked to db; nothing was changed"),
        "{again}"
    );

    // now the database can go, and takes everything with it
    let db_id = json(&node.ok(&["show", "db", "--json"]))["id"]
        .as_str()
        .expect("id")
        .to_string();
    node.ok(&["destroy", "db"]);
    assert!(!node.state_dir().join("gears").join(&db_id).exists());
    for name in ["app", "other"] {
        node.ok(&["destroy", name]);
    }
    eprintln!(
        "figures: first db start (initdb included) {first_start:?}, db restart {restart:?}, \
         `gear exec app -- psql $DATABASE_URL -c 'select 1'` {linked_query:?}"
    );
}

#[test]
fn bad_links_are_refused_with_clear_errors_and_leave_nothing_behind() {
    if !privileged("the node runs as root") {
        return;
    }
    let node = TestNode::start(63600, "");
    let _carts =
        node.install_cartridges(&["postgresql-cartridge", "hello-cartridge", "guest-full"]);
    node.ok(&["create", "db", "--cartridge", "postgresql"]);
    node.ok(&["create", "app", "--cartridge", "hello"]);
    node.ok(&["create", "web", "--cartridge", "hello"]);

    let refused = |args: &[&str], code: i32, says: &str| {
        let out = node.gear(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "gear {args:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(says),
            "gear {args:?} did not say {says:?}: {}",
            stderr(&out)
        );
    };
    refused(&["link", "app", "app"], 3, "cannot be linked to itself");
    refused(&["link", "app", "ghost"], 3, "no gear ghost");
    refused(&["link", "ghost", "db"], 3, "no gear ghost");
    // hello listens on 8080 itself: a link to another hello gear would hide it
    refused(&["link", "app", "web"], 1, "listens on port 8080 itself");
    // an app cartridge still needs a deployment to start; the database does not
    refused(&["start", "app"], 3, "nothing deployed");
    // gears of different namespaces cannot be linked (the API refuses; the
    // CLI cannot even say it)
    {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&node.socket).expect("socket");
        s.write_all(
            b"{\"api\":1,\"op\":\"link\",\"gear\":{\"name\":\"app\",\"namespace\":\"default\"},\"to\":{\"name\":\"db\",\"namespace\":\"elsewhere\"}}\n",
        )
        .expect("write");
        let mut line = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut line)
            .expect("read");
        assert!(
            line.contains("\"invalid\"") && line.contains("different namespaces"),
            "{line}"
        );
    }

    // something inside the gear already listens on the port
    node.ok(&["create", "busy", "--cartridge", "full"]);
    node.ok(&[
        "control",
        "busy",
        "spawn",
        "listener",
        "sh",
        "-c",
        "exec python3 -m http.server --bind 127.0.0.1 5432",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = node.gear(&[
            "exec",
            "busy",
            "--",
            "python3",
            "-c",
            "import socket; socket.create_connection(('127.0.0.1', 5432), 1)",
        ]);
        if probe.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the listener never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    refused(&["link", "busy", "db"], 1, "already listens on port 5432");
    let shown = json(&node.ok(&["show", "busy", "--json"]));
    assert_eq!(
        shown["links"],
        serde_json::json!([]),
        "nothing half done: {shown}"
    );
    // once the port is free the same link works: nothing was left holding it
    node.ok(&["control", "busy", "signal", "listener", "term"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = node.gear(&["link", "busy", "db"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the link never worked: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // one link per pair, one gear per port
    node.ok(&["link", "app", "db"]);
    // asking again changes nothing and says so
    let again = node.ok(&["link", "app", "db"]);
    assert!(
        again.contains("already linked to db; nothing was changed"),
        "{again}"
    );
    node.ok(&["create", "db2", "--cartridge", "postgresql"]);
    refused(
        &["link", "app", "db2"],
        1,
        "already reaches db on port 5432",
    );
    let shown = json(&node.ok(&["show", "app", "--json"]));
    assert_eq!(
        shown["links"].as_array().expect("links").len(),
        1,
        "{shown}"
    );
    // the record on disk says the same
    let id = shown["id"].as_str().expect("id");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.state_dir().join("gears").join(id).join("gear.json")).expect("record"),
    )
    .expect("record is JSON");
    assert_eq!(record["links"].as_array().expect("links").len(), 1);

    // destroying the app takes its links with it; then the database can go
    refused(&["destroy", "db"], 1, "linked from app, busy");
    for name in ["app", "busy", "db", "db2", "web"] {
        node.ok(&["destroy", name]);
    }
    let gears = std::fs::read_dir(node.state_dir().join("gears"))
        .expect("gears")
        .count();
    assert_eq!(gears, 0);
}

/// The example app, examples/node-postgres, deployed to a nodejs gear linked
/// to a postgresql gear: each request through the frontend is a row.
#[test]
fn the_node_postgres_example_counts_visits_in_its_linked_database() {
    if !privileged("the node runs as root") {
        return;
    }
    // npm ci fetches the app's packages through the build's egress proxy
    let node = TestNode::start(63800, &gearhost_tests::package_index_egress());
    let _carts = node.install_cartridges(&["postgresql-cartridge", "nodejs-cartridge"]);
    node.ok(&["create", "db", "--cartridge", "postgresql"]);
    node.ok(&["start", "db"]);
    node.ok(&["create", "counter", "--cartridge", "nodejs"]);
    node.ok(&["link", "counter", "db"]);
    let example = gearhost_tests::workspace_root().join("examples/node-postgres");
    let started = Instant::now();
    node.ok(&["deploy", "counter", example.to_str().expect("utf-8")]);
    let deploy = started.elapsed();

    let (code, body) = node.http_get("counter-default", "/");
    assert_eq!(code, 200, "{body}\n{}", node.ok(&["logs", "counter"]));
    assert!(body.starts_with("visits: 1\n"), "{body}");
    let (code, body) = node.http_get("counter-default", "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("visits: 2\n"), "{body}");
    // the rows are in the database gear
    assert_eq!(psql_ok(&node, "db", "select count(*) from visits"), "2");

    // the database stopped: the app says so; started again: it counts on
    node.ok(&["stop", "db"]);
    let (code, body) = node.http_get("counter-default", "/");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("database unavailable"), "{body}");
    node.ok(&["start", "db"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = node.http_get("counter-default", "/");
        if code == 200 {
            assert!(body.starts_with("visits: 3\n"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the app never recovered: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // the rows survive a restart of both gears
    node.ok(&["restart", "db"]);
    node.ok(&["restart", "counter"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = node.http_get("counter-default", "/");
        if code == 200 {
            assert!(body.starts_with("visits: 4\n"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the app never came back: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    node.ok(&["unlink", "counter", "db"]);
    for name in ["counter", "db"] {
        node.ok(&["destroy", name]);
    }
    eprintln!("figures: deploy of examples/node-postgres (npm ci included) {deploy:?}");
}
