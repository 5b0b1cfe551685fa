//! The user guide's examples are tested: every `gear ...` line in a code
//! block of docs/user-guide.md is run here, in the guide's order, through a
//! shell (so its quoting is the reader's), against a real node. The test
//! fails when the guide shows a command that [`STEPS`] does not run, or runs
//! one the guide no longer shows: a new example in the guide needs one line
//! in [`STEPS`] at the place it has in the guide. Gear uids 78200-78399.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gearhost_tests::{TestNode, cartridge_dir, gear_bin, json, privileged, workspace_root};

/// How a step runs its command, and what it checks.
#[derive(Debug, Clone, Copy)]
enum Run {
    /// Succeeds, and its standard output contains each of these.
    Ok(&'static [&'static str]),
    /// Reads `input` on its standard input, succeeds, and its output
    /// contains `shows`.
    Input {
        input: &'static str,
        shows: &'static str,
    },
    /// Exits with `code`, its standard error saying `says` (what the guide
    /// shows happening when there is nothing to act on).
    Refused { code: i32, says: &'static str },
    /// Keeps running (`-f`) after printing `shows` (empty: anything or
    /// nothing); the test then ends it.
    Follows { shows: &'static str },
    /// On a terminal of its own, gets `answer` typed and exits with `code`;
    /// the terminal shows `shows`.
    Terminal {
        answer: &'static str,
        code: i32,
        shows: &'static str,
    },
}

/// One command of the guide and how it is run.
#[derive(Debug, Clone, Copy)]
struct Step {
    command: &'static str,
    run: Run,
    /// What the test does first (what the guide takes as done).
    before: Option<fn(&Guide)>,
    /// What the test checks afterwards.
    then: Option<fn(&Guide)>,
}

const fn step(command: &'static str, run: Run) -> Step {
    Step {
        command,
        run,
        before: None,
        then: None,
    }
}

impl Step {
    const fn before(self, before: fn(&Guide)) -> Step {
        Step {
            before: Some(before),
            ..self
        }
    }

    const fn then(self, then: fn(&Guide)) -> Step {
        Step {
            then: Some(then),
            ..self
        }
    }
}

const fn ok(command: &'static str) -> Step {
    step(command, Run::Ok(&[]))
}

/// Every command of the guide's code blocks, in the guide's order.
const STEPS: &[Step] = &[
    // From your laptop: the key (the rest of that section runs over ssh,
    // which tests/tests/ssh.rs covers)
    step("gear keys add ~/.ssh/id_ed25519.pub", Run::Ok(&["SHA256:"])).before(make_a_key),
    step("gear keys list", Run::Ok(&["SHA256:"])),
    // Create and deploy
    step("gear cartridge list", Run::Ok(&["static", "postgresql"])),
    step(
        "gear create web --cartridge static",
        Run::Ok(&["created gear web"]),
    ),
    step(
        "gear deploy web examples/static-site",
        Run::Ok(&["is active"]),
    ),
    step("gear show web", Run::Ok(&["web-default"])),
    step("gear show web --json", Run::Ok(&["\"name\": \"web\""])),
    // no deploy is in progress: it says so and changes nothing
    step(
        "gear deploy web --cancel",
        Run::Refused {
            code: 1,
            says: "no deploy is in progress on gear web",
        },
    ),
    // The frontend: aliases, access log
    ok("gear alias add web www.example.com"),
    step("gear alias list web", Run::Ok(&["www.example.com"])),
    ok("gear alias remove web www.example.com"),
    step(
        "gear alias add web www.example.com --cert www.pem --key www.key",
        Run::Ok(&["served over HTTPS"]),
    )
    .before(make_certificates),
    step(
        "gear alias cert web www.example.com --cert renewed.pem --key renewed.key",
        Run::Ok(&["valid until"]),
    ),
    // this node has no ACME server (tests/tests/acme.rs runs one): the
    // command says so, and the alias is not kept
    step(
        "gear alias add web shop.example.com --acme",
        Run::Refused {
            code: 3,
            says: "this node has no ACME server",
        },
    ),
    step(
        "gear alias list web",
        Run::Ok(&["www.example.com  https until"]),
    ),
    step(
        "gear https web --redirect on --hsts 1y",
        Run::Ok(&["redirect to HTTPS on"]),
    ),
    step("gear https web", Run::Ok(&["max-age=31557600"])),
    step(
        "gear https web --redirect off --hsts off",
        Run::Ok(&["redirect to HTTPS off, HSTS off"]),
    ),
    ok("gear logs web --access").before(request_web),
    step(
        "gear logs web --access -f",
        Run::Follows { shows: "GET / " },
    ),
    // Idling
    step("gear idle web", Run::Ok(&["frozen"])),
    step("gear idle --stop web", Run::Ok(&["idle"])),
    step("gear unidle web", Run::Ok(&["running"])),
    step("gear show web", Run::Ok(&["memory"])),
    // Listing and names: global options anywhere
    step("gear list -N team", Run::Ok(&["blog"])).before(create_team_gear),
    step("gear -N team list", Run::Ok(&["blog"])),
    step(
        "gear --socket /run/gearhost/node.sock status web",
        Run::Ok(&["running"]),
    ),
    // Shell completion
    ok("gear completions bash > ~/.local/share/bash-completion/completions/gear")
        .before(make_completion_dirs)
        .then(bash_completes_gears),
    step("gear completions zsh > ~/.zfunc/_gear", Run::Ok(&[])).then(zsh_script_is_installed),
    step(
        "gear completions fish > ~/.config/fish/completions/gear.fish",
        Run::Ok(&[]),
    )
    .then(fish_script_is_installed),
    // Start, stop, status
    step("gear status web", Run::Ok(&["running"])),
    ok("gear stop web"),
    ok("gear start web"),
    ok("gear restart web"),
    ok("gear build web"),
    ok("gear control web status"),
    // Deployments and rollback: three deployments to go back among
    step("gear deployments web", Run::Ok(&["*"])).before(deploy_web_twice_more),
    ok("gear rollback web"),
    ok("gear rollback web 3"),
    // Environment
    ok("gear env web set DEBUG=1 GREETING=\"hi there\""),
    ok("gear env web unset DEBUG"),
    step("gear env web list", Run::Ok(&["GREETING=hi there"])),
    // Databases and links
    step(
        "gear create db --cartridge postgresql",
        Run::Ok(&["gear start db"]),
    ),
    ok("gear start db"),
    ok("gear create app --cartridge nodejs"),
    ok("gear link app db"),
    ok("gear deploy app examples/node-postgres"),
    step("gear exec app -- psql -c 'select 1'", Run::Ok(&["(1 row)"])),
    step(
        "gear exec app -- sh -c 'psql \"$DATABASE_URL\"'",
        Run::Input {
            input: "select 40 + 2 as answer;\n",
            shows: "42",
        },
    ),
    step("gear show app", Run::Ok(&["link to db"])),
    ok("gear unlink app db"),
    // Logs
    ok("gear logs web"),
    step("gear logs web -f -n 20", Run::Follows { shows: "" }),
    ok("gear logs web --hooks"),
    step("gear logs web --access", Run::Ok(&["GET / "])),
    // The node's events
    step("gear node events", Run::Ok(&["deploy-done"])),
    step("gear node events -n 200 --gear web", Run::Ok(&["web"])),
    step("gear node events -f", Run::Follows { shows: "started" }),
    step("gear node events --json", Run::Ok(&["\"kind\""])),
    // Inside the gear
    step(
        "gear exec web -- sh -c 'id; ls /gear/app-root'",
        Run::Ok(&["uid="]),
    ),
    step(
        "gear exec web",
        Run::Input {
            input: "echo inside \"$GEAR_NAME\"\n",
            shows: "inside web",
        },
    ),
    ok("gear create api --cartridge python"),
    ok("gear deploy api examples/python-wsgi"),
    step(
        "gear exec api -- gunicorn --version",
        Run::Ok(&["gunicorn"]),
    ),
    step(
        "gear exec api -- python -c 'import sys; print(sys.prefix)'",
        Run::Ok(&["/gear/"]),
    ),
    // Snapshots
    step(
        "gear snapshot web web.tar.gz",
        Run::Ok(&["wrote web.tar.gz", "snapshot of web"]),
    ),
    step("gear snapshot db", Run::Ok(&["wrote db-", ".tar.gz"])),
    ok("gear snapshot web - > web-copy.tar.gz"),
    step(
        "gear restore web web.tar.gz",
        Run::Ok(&["restored gear web", "kept", "running"]),
    ),
    step(
        "gear restore copy - < web-copy.tar.gz",
        Run::Ok(&[
            "created gear copy",
            "alias www.example.com leads to gear web",
        ]),
    ),
    // Destroy
    step(
        "gear destroy web",
        Run::Terminal {
            answer: "n\n",
            code: 1,
            shows: "nothing was destroyed",
        },
    ),
    step("gear destroy web --yes", Run::Ok(&["destroyed gear web"])),
];

/// Placeholders and paths the guide uses, and what the test puts for them:
/// the guide's examples are relative to a checkout of the repository, and
/// its node is the one at the default socket.
fn fixtures(node: &TestNode) -> Vec<(&'static str, String)> {
    let examples = workspace_root().join("examples");
    vec![
        ("examples/", format!("{}/", examples.display())),
        (DEFAULT_SOCKET, node.socket.display().to_string()),
    ]
}

/// The socket the guide's `--socket` example names: the node's default.
const DEFAULT_SOCKET: &str = "/run/gearhost/node.sock";

/// The guide's `gear ...` command lines, in order, without their comments.
fn guide_commands(markdown: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let line = line.trim();
        if in_block && (line == "gear" || line.starts_with("gear ")) {
            commands.push(without_comment(line).to_string());
        }
    }
    commands
}

/// `line` up to a `#` that starts a shell comment (after a blank, outside
/// quotes), trimmed.
fn without_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return line[..at].trim_end(),
            _ => {}
        }
        previous = c;
    }
    line.trim_end()
}

/// The node the guide is run against, and what ran so far.
struct Guide {
    node: TestNode,
    /// A directory of its own to run the commands in.
    cwd: tempfile::TempDir,
    /// `PATH` with this build's `gear` first.
    path: String,
    ran: std::cell::RefCell<Vec<String>>,
}

impl Guide {
    fn shell(&self, command: &str) -> Command {
        let mut line = command.to_string();
        for (placeholder, value) in fixtures(&self.node) {
            line = line.replace(placeholder, &value);
        }
        let mut c = Command::new("sh");
        c.args(["-c", &format!("exec {line}")])
            .current_dir(self.cwd.path())
            .env("PATH", &self.path)
            .env("GEARHOST_SOCKET", &self.node.socket)
            .env("HOME", self.cwd.path())
            .env_remove("GEARHOST_NAMESPACE");
        c
    }

    fn context(&self, command: &str, out: &[u8], err: &[u8]) -> String {
        format!(
            "the guide's `{command}`\nstdout: {}\nstderr: {}\nnode log (end):\n{}",
            String::from_utf8_lossy(out),
            String::from_utf8_lossy(err),
            tail(&self.node.log(), 40)
        )
    }

    fn run(&self, step: &Step) {
        let command = step.command;
        eprintln!("guide: {command}");
        if let Some(before) = step.before {
            before(self);
        }
        match step.run {
            Run::Ok(shows) => self.run_ok(command, "", shows),
            Run::Input { input, shows } => self.run_ok(command, input, &[shows]),
            Run::Follows { shows } => self.follow(command, shows),
            Run::Refused { code, says } => self.refused(command, code, says),
            Run::Terminal {
                answer,
                code,
                shows,
            } => self.on_terminal(command, answer, code, shows),
        }
        if let Some(then) = step.then {
            then(self);
        }
        self.ran.borrow_mut().push(command.to_string());
    }

    fn run_ok(&self, command: &str, input: &str, shows: &[&str]) {
        let mut child = self
            .shell(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sh");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        drop(stdin);
        let out = child.wait_with_output().expect("wait");
        let context = self.context(command, &out.stdout, &out.stderr);
        assert!(out.status.success(), "failed ({}): {context}", out.status);
        let stdout = String::from_utf8_lossy(&out.stdout);
        for expected in shows {
            assert!(stdout.contains(expected), "no {expected:?} in {context}");
        }
    }

    fn refused(&self, command: &str, code: i32, says: &str) {
        let out = self
            .shell(command)
            .stdin(Stdio::null())
            .output()
            .expect("run sh");
        let context = self.context(command, &out.stdout, &out.stderr);
        assert_eq!(out.status.code(), Some(code), "{context}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "no {says:?} in {context}"
        );
    }

    fn follow(&self, command: &str, shows: &str) {
        let mut child = self
            .shell(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sh");
        let mut stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        std::thread::sleep(Duration::from_millis(1500));
        let still = child.try_wait().expect("try_wait").is_none();
        let _ = child.kill();
        let status = child.wait().expect("wait");
        let text = reader.join().expect("reader");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let context = self.context(command, text.as_bytes(), err.as_bytes());
        assert!(still, "did not keep following (ended {status}): {context}");
        assert!(text.contains(shows), "no {shows:?} in {context}");
    }

    fn on_terminal(&self, command: &str, answer: &str, code: i32, shows: &str) {
        let mut line = format!("exec {command}");
        for (placeholder, value) in fixtures(&self.node) {
            line = line.replace(placeholder, &value);
        }
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .current_dir(self.cwd.path())
            .env("PATH", &self.path)
            .env("GEARHOST_SOCKET", &self.node.socket)
            .env("HOME", self.cwd.path())
            .env_remove("GEARHOST_NAMESPACE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run script (util-linux)");
        let mut stdin = child.stdin.take().expect("stdin");
        // the answer once the question is up; stdin stays open until the command ends
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(answer.as_bytes()).expect("type the answer");
        let mut text = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut text)
            .expect("read the terminal");
        let status = child.wait().expect("wait for script");
        drop(stdin);
        let context = self.context(command, text.as_bytes(), b"");
        assert_eq!(status.code(), Some(code), "{context}");
        assert!(
            text.contains(shows),
            "no {shows:?} on the terminal: {context}"
        );
    }
}

fn tail(text: &str, lines: usize) -> String {
    gearhost_tests::tail_of(text, lines)
}

/// A request to web, for its access log.
fn request_web(guide: &Guide) {
    let (code, body) = guide.node.http_get("web-default", "/");
    assert_eq!(code, 200, "{body}");
}

/// Two more deployments of web, so that the guide's rollbacks have
/// deployments to go back to (the one before, and 3).
fn deploy_web_twice_more(guide: &Guide) {
    let site = workspace_root().join("examples/hello-site");
    for _ in 0..2 {
        guide
            .node
            .ok(&["deploy", "web", site.to_str().expect("utf-8")]);
    }
    let listed = json(&guide.node.ok(&["deployments", "web", "--json"]));
    assert_eq!(listed["active"], 3, "{listed}");
}

/// A gear in namespace team, for the guide's `-N team`.
fn create_team_gear(guide: &Guide) {
    guide
        .node
        .ok(&["-N", "team", "create", "blog", "--cartridge", "static"]);
}

/// The certificates the guide attaches to www.example.com (self-signed: the
/// node checks key, name and validity, not who signed).
fn make_certificates(guide: &Guide) {
    for stem in ["www", "renewed"] {
        let (key, pem) = (format!("{stem}.key"), format!("{stem}.pem"));
        gearhost_tests::openssl(
            guide.cwd.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=www.example.com",
                "-addext",
                "subjectAltName=DNS:www.example.com",
                "-keyout",
                &key,
                "-out",
                &pem,
            ],
        );
    }
}

/// The key the guide's `gear keys add` adds, made as `ssh-keygen` would.
fn make_a_key(guide: &Guide) {
    let dir = guide.cwd.path().join(".ssh");
    std::fs::create_dir_all(&dir).expect("make ~/.ssh");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "guide@laptop", "-f"])
        .arg(dir.join("id_ed25519"))
        .output()
        .expect("ssh-keygen");
    assert!(out.status.success(), "{out:?}");
}

/// The directories the guide's install lines write to (it says to make them).
fn make_completion_dirs(guide: &Guide) {
    for dir in [
        ".local/share/bash-completion/completions",
        ".zfunc",
        ".config/fish/completions",
    ] {
        std::fs::create_dir_all(guide.cwd.path().join(dir)).expect("make the directory");
    }
}

/// The installed bash script, loaded as bash-completion would, completes
/// the gears of the caller's namespace.
fn bash_completes_gears(guide: &Guide) {
    let script = guide
        .cwd
        .path()
        .join(".local/share/bash-completion/completions/gear");
    let program = format!(
        "source '{}'; COMP_WORDS=(gear status ''); COMP_CWORD=2; \
         _gear_with_names gear '' status; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .env("PATH", &guide.path)
        .env("GEARHOST_SOCKET", &guide.node.socket)
        .env_remove("GEARHOST_NAMESPACE")
        .output()
        .expect("run bash");
    let names = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["web"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn installed(guide: &Guide, path: &str, has: &str) {
    let text = std::fs::read_to_string(guide.cwd.path().join(path)).expect("the installed script");
    assert!(text.contains(has), "{path} lacks {has:?}");
}

fn zsh_script_is_installed(guide: &Guide) {
    installed(guide, ".zfunc/_gear", "#compdef gear");
    installed(guide, ".zfunc/_gear", "gear complete line");
}

fn fish_script_is_installed(guide: &Guide) {
    installed(
        guide,
        ".config/fish/completions/gear.fish",
        "gear complete line",
    );
}

fn guide_path() -> PathBuf {
    workspace_root().join("docs/user-guide.md")
}

#[test]
fn comments_are_cut_outside_quotes_only() {
    assert_eq!(
        without_comment("gear show web   # a comment"),
        "gear show web"
    );
    assert_eq!(
        without_comment("gear exec web -- sh -c 'echo #1; id'  # more"),
        "gear exec web -- sh -c 'echo #1; id'"
    );
    assert_eq!(
        without_comment("gear env web set A=b#c"),
        "gear env web set A=b#c"
    );
    let extracted = guide_commands("x\n```sh\ngear a   # c\n  gear b\ncat x\n```\ngear outside\n");
    assert_eq!(extracted, ["gear a", "gear b"]);
}

#[test]
fn every_command_the_guide_shows_is_in_the_steps_in_its_order() {
    // no node needed: this is the list the real run below goes through
    let markdown = std::fs::read_to_string(guide_path()).expect("read the user guide");
    let shown = guide_commands(&markdown);
    let steps: Vec<&str> = STEPS.iter().map(|s| s.command).collect();
    assert_same(&shown, &steps);
}

/// The guide's commands and the ones run must be the same, in the same order.
fn assert_same(shown: &[String], ran: &[&str]) {
    for (at, (s, r)) in shown.iter().zip(ran).enumerate() {
        assert_eq!(
            s, r,
            "command {at} of the guide is `{s}` but the test runs `{r}` there: \
             add a step for the guide's command to STEPS in tests/tests/guide.rs \
             (or fix the guide)"
        );
    }
    assert!(
        shown.len() == ran.len(),
        "the guide shows {} commands and the test runs {}: {}",
        shown.len(),
        ran.len(),
        if shown.len() > ran.len() {
            format!("not run: {:?}", &shown[ran.len()..])
        } else {
            format!("no longer in the guide: {:?}", &ran[shown.len()..])
        }
    );
}

#[test]
fn the_guide_s_commands_work_as_shown() {
    if !privileged("the node creates gears") {
        return;
    }
    // npm and pip fetch the examples' packages through the build's egress proxy
    // it serves HTTPS too (aliases with their own certificates only)
    let https = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let node = TestNode::start_shared(
        78200,
        &format!("[https]\nlisten = \"127.0.0.1:{https}\"\n"),
        &format!(
            "start-timeout = \"60s\"{}",
            gearhost_tests::package_index_egress()
        ),
    );
    // the operator's part: the cartridges the guide uses
    let mut cartridges = Vec::new();
    for package in [
        "static-cartridge",
        "postgresql-cartridge",
        "nodejs-cartridge",
        "python-cartridge",
    ] {
        let dir = cartridge_dir(package);
        node.ok(&["cartridge", "install", dir.path().to_str().expect("utf-8")]);
        cartridges.push(dir);
    }
    let bin_dir: &Path = gear_bin()
        .parent()
        .expect("gear's directory")
        .to_owned()
        .leak();
    let guide = Guide {
        node,
        cwd: tempfile::tempdir().expect("working directory"),
        path: format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        ran: std::cell::RefCell::new(Vec::new()),
    };
    let started = Instant::now();
    for step in STEPS {
        guide.run(step);
    }
    eprintln!(
        "figures: the guide's {} commands in {:?}",
        STEPS.len(),
        started.elapsed()
    );

    let markdown = std::fs::read_to_string(guide_path()).expect("read the user guide");
    let ran = guide.ran.borrow();
    let ran: Vec<&str> = ran.iter().map(String::as_str).collect();
    assert_same(&guide_commands(&markdown), &ran);
}
