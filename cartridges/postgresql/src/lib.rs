//! The PostgreSQL cartridge: a database server in a gear of its own.
//!
//! - `start` initialises a cluster in `app-root/data/postgresql` the first
//!   time (`initdb`, with the installed PostgreSQL version found under
//!   `/usr/lib/postgresql`), generates the credentials of the gear's
//!   database, starts `postgres` on `127.0.0.1:<port>` inside the gear's own
//!   network namespace (supervised, restarted on failure), waits until it
//!   accepts connections and makes sure the role and database exist;
//! - `build` (run by `gear deploy`) initialises the cluster and credentials
//!   without starting the server;
//! - `stop` shuts down fast (`SIGINT`: sessions are ended, then a clean
//!   checkpoint), with `SIGKILL` after a grace period;
//! - `control` offers `status`, `reload` (`SIGHUP`) and `tidy` (vacuum and
//!   analyse every database), and takes part in snapshots: `pre-snapshot`
//!   dumps every database of a running server (`pg_dumpall`) into
//!   `app-root/data/postgresql-snapshot.sql`, so the archive holds a
//!   consistent copy even though the server's files change while they are
//!   read; `post-snapshot` removes the dump; `post-restore` finds it in the
//!   restored data, makes a fresh cluster, loads it, and removes it.
//!
//! The credentials live in the gear's environment (`PGUSER`, `PGPASSWORD`,
//! `PGDATABASE`, `PGHOST`, `PGPORT`, `DATABASE_URL`), which the manifest
//! publishes to gears linked to this one (`gear link APP DB`).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gearhost_sdk::prelude::*;
use gearhost_sdk::{ProcessInfo, ProcessState};

/// Name of the supervised server process.
const SERVER: &str = "postgresql";
/// Name of the endpoint in the manifest.
const ENDPOINT: &str = "postgresql";
/// Port when the manifest declares no endpoint.
const DEFAULT_PORT: u16 = 5432;
/// Where Debian (and most distributions' versioned layouts) install PostgreSQL.
const PG_ROOT: &str = "/usr/lib/postgresql";
/// The bootstrap superuser; reachable only on the unix socket inside the gear.
/// Gear names cannot contain `_`, so it never clashes with the app's role.
const ADMIN: &str = "gear_admin";
/// Length of generated passwords (62 symbols: about 143 bits).
const PASSWORD_LEN: usize = 24;
/// How long `start` waits for the server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(40);
/// How long `stop` waits for a fast shutdown before `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// The dump `pre-snapshot` writes in the gear's data directory.
const DUMP: &str = "postgresql-snapshot.sql";
/// How long a dump, or loading one, may take (within the hook's budget).
const DUMP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Postgresql;

/// Where everything of this gear's cluster is.
struct Layout {
    gear: Gear,
    /// The data directory (`PGDATA`).
    data: PathBuf,
    /// The unix socket directory.
    sockets: PathBuf,
    /// The TCP port on the gear's loopback.
    port: u16,
}

impl Layout {
    fn new() -> Layout {
        let gear = gear();
        Layout {
            data: gear.data_dir().join("postgresql"),
            sockets: gear.runtime_dir().join("postgresql"),
            port: gear.port(ENDPOINT).unwrap_or(DEFAULT_PORT),
            gear,
        }
    }

    /// The major version the data directory was created with, if any.
    fn data_version(&self) -> Result<Option<u32>> {
        let file = self.data.join("PG_VERSION");
        match std::fs::read_to_string(&file) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                Error::new(
                    "bad-data",
                    format!(
                        "{} says {:?}, not a PostgreSQL major version; the data directory is damaged",
                        file.display(),
                        text.trim()
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from(e).context(format!("reading {}", file.display()))),
        }
    }
}

/// `/usr/lib/postgresql/<version>/bin/<program>`
fn bin(version: u32, program: &str) -> String {
    format!("{PG_ROOT}/{version}/bin/{program}")
}

/// The major versions installed on the node, newest first.
fn installed_versions() -> Result<Vec<u32>> {
    let out = Command::new("ls")
        .arg(PG_ROOT)
        .timeout(Duration::from_secs(10))
        .output()
        .map_err(|e| Error::from(e).context(format!("listing {PG_ROOT}")))?;
    Ok(parse_versions(&out.stdout_str()))
}

/// Numeric entries of a directory listing, newest first.
fn parse_versions(listing: &str) -> Vec<u32> {
    let mut versions: Vec<u32> = listing
        .split_whitespace()
        .filter_map(|entry| entry.parse().ok())
        .collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    versions.dedup();
    versions
}

/// Which version runs the cluster: the one that created the data directory,
/// or for a new cluster the newest installed one.
fn pick_version(installed: &[u32], data: Option<u32>) -> Result<u32> {
    match data {
        Some(v) if installed.contains(&v) => Ok(v),
        Some(v) => Err(Error::new(
            "version-missing",
            format!(
                "the data directory was created by PostgreSQL {v}, which is not installed on this node \
                 (found: {}); ask the operator to install postgresql-{v}, or dump and restore the data \
                 with a newer version (pg_upgrade)",
                list_or_none(installed)
            ),
        )),
        None => installed.first().copied().ok_or_else(|| {
            Error::new(
                "not-installed",
                format!(
                    "PostgreSQL is not installed on this node (nothing under {PG_ROOT}); \
                     ask the operator to install it (Debian: apt-get install postgresql)"
                ),
            )
        }),
    }
}

fn list_or_none(versions: &[u32]) -> String {
    if versions.is_empty() {
        "none".into()
    } else {
        versions
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Create the cluster unless it exists; returns the major version that runs
/// it. `initdb` writes into a fresh directory that is renamed into place
/// only when complete, so an interrupted first start is simply redone.
fn ensure_cluster(layout: &Layout) -> Result<u32> {
    let installed = installed_versions()?;
    if let Some(v) = layout.data_version()? {
        return pick_version(&installed, Some(v));
    }
    let version = pick_version(&installed, None)?;
    let partial = layout.data.with_file_name("postgresql.initdb");
    match std::fs::remove_dir_all(&partial) {
        Ok(()) => info!(
            "initdb: removed an unfinished attempt at {}",
            partial.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::from(e).context(format!("removing {}", partial.display()))),
    }
    if let Some(parent) = partial.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::from(e).context(format!("creating {}", parent.display())))?;
    }
    let started = Instant::now();
    Command::new(bin(version, "initdb"))
        .arg("--pgdata")
        .arg(partial.to_string_lossy())
        .args([
            &format!("--username={ADMIN}"),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .current_dir(layout.gear.home.to_string_lossy().as_ref())
        .timeout(Duration::from_secs(120))
        .run()
        .map_err(|e| e.context("initdb failed"))?;
    std::fs::rename(&partial, &layout.data).map_err(|e| {
        Error::from(e).context(format!(
            "moving {} to {}",
            partial.display(),
            layout.data.display()
        ))
    })?;
    info!(
        "initdb: PostgreSQL {version} cluster created in {} ({} ms)",
        layout.data.display(),
        started.elapsed().as_millis()
    );
    Ok(version)
}

/// The database's credentials.
struct Credentials {
    user: String,
    password: String,
    database: String,
}

/// The credentials from the gear's environment, generated the first time;
/// the connection variables are (re)written when they differ.
fn ensure_credentials(layout: &Layout) -> Result<Credentials> {
    let name = &layout.gear.name;
    let user = env::get("PGUSER").unwrap_or_else(|| name.clone());
    let database = env::get("PGDATABASE").unwrap_or_else(|| name.clone());
    let password = match env::get("PGPASSWORD") {
        Some(p) if !p.is_empty() => p,
        _ => {
            info!("credentials: generated a password for role {user}");
            random_password()?
        }
    };
    let url = database_url(&user, &password, layout.port, &database);
    for (key, value) in [
        ("PGHOST", "127.0.0.1".to_string()),
        ("PGPORT", layout.port.to_string()),
        ("PGUSER", user.clone()),
        ("PGPASSWORD", password.clone()),
        ("PGDATABASE", database.clone()),
        ("DATABASE_URL", url),
    ] {
        if env::get(key).as_deref() != Some(value.as_str()) {
            env::set(key, &value).map_err(|e| Error::from(e).context(format!("setting {key}")))?;
        }
    }
    Ok(Credentials {
        user,
        password,
        database,
    })
}

/// `PASSWORD_LEN` characters from `[A-Za-z0-9]`, from the host's random source.
fn random_password() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // bytes below 248 = 4 * 62 map evenly onto the alphabet
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut password = String::with_capacity(PASSWORD_LEN);
    while password.len() < PASSWORD_LEN {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).map_err(|e| {
            Error::new(
                "no-random",
                format!("cannot get random bytes from the host for a password: {e}"),
            )
        })?;
        for b in bytes.into_iter().filter(|b| *b < limit) {
            if password.len() == PASSWORD_LEN {
                break;
            }
            password.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
        }
    }
    Ok(password)
}

/// `postgresql://user:password@127.0.0.1:port/database`, percent-encoded.
fn database_url(user: &str, password: &str, port: u16, database: &str) -> String {
    format!(
        "postgresql://{}:{}@127.0.0.1:{port}/{}",
        percent_encode(user),
        percent_encode(password),
        percent_encode(database)
    )
}

/// Percent-encode everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `'text'` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `"name"` as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// SQL that makes the role and database exist with the given credentials
/// (idempotent: run at every start, so a changed `PGPASSWORD` takes effect).
fn credentials_sql(c: &Credentials) -> String {
    let (user, db) = (literal(&c.user), literal(&c.database));
    format!(
        "SELECT format('CREATE ROLE %I LOGIN', {user}) \
         WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {user})\\gexec\n\
         ALTER ROLE {role} WITH LOGIN NOSUPERUSER PASSWORD {password};\n\
         SELECT format('CREATE DATABASE %I OWNER %I', {db}, {user}) \
         WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {db})\\gexec\n",
        role = ident(&c.user),
        password = literal(&c.password),
    )
}

/// Run SQL as the superuser over the gear-private unix socket.
fn admin_sql(layout: &Layout, version: u32, sql: &str) -> Result<Output> {
    Command::new(bin(version, "psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            ADMIN,
            "-d",
            "postgres",
        ])
        .arg("-h")
        .arg(layout.sockets.to_string_lossy())
        .args(["-p", &layout.port.to_string()])
        .current_dir(layout.gear.home.to_string_lossy().as_ref())
        .stdin(sql)
        .timeout(Duration::from_secs(30))
        .run()
}

/// `pg_isready` on the TCP address linked gears use: `Ok(true)` once the
/// server accepts connections.
fn is_ready(layout: &Layout, version: u32) -> Result<(bool, String)> {
    let out = Command::new(bin(version, "pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &layout.port.to_string(), "-t", "2"])
        .current_dir(layout.gear.home.to_string_lossy().as_ref())
        .timeout(Duration::from_secs(5))
        .output()?;
    Ok((out.status.success(), out.stdout_str().trim().to_string()))
}

/// Whether `postmaster.pid` says a server started at or after `since`
/// (unix seconds) is ready. The postmaster writes its status there (PG 10
/// and later), so waiting costs no connection attempts, which a server
/// still recovering would log as errors.
fn postmaster_ready(layout: &Layout, since: u64) -> bool {
    std::fs::read_to_string(layout.data.join("postmaster.pid"))
        .is_ok_and(|text| lock_file_ready(&text, since))
}

/// Line 3 of `postmaster.pid` is the start time, line 8 the status.
fn lock_file_ready(text: &str, since: u64) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    let started = lines.get(2).and_then(|l| l.trim().parse::<u64>().ok());
    let status = lines.get(7).map(|l| l.trim());
    started.is_some_and(|t| t >= since) && status == Some("ready")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The server process, as the supervisor knows it.
fn server_process() -> Option<ProcessInfo> {
    process::processes().into_iter().find(|p| p.name == SERVER)
}

fn server_alive() -> bool {
    server_process().is_some_and(|p| {
        matches!(
            p.state,
            ProcessState::Running | ProcessState::Starting | ProcessState::Backoff
        )
    })
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::from(e).context(format!("creating {}", dir.display())))
}

/// Starts `postgres` on the cluster (supervised) and waits until it
/// accepts connections.
fn launch(layout: &Layout, version: u32) -> Result<()> {
    create_dir(&layout.sockets)?;
    let port = layout.port.to_string();
    let since = unix_now();
    let pid = Command::new(bin(version, "postgres"))
        .arg("-D")
        .arg(layout.data.to_string_lossy())
        .args(["-h", "127.0.0.1", "-p", &port, "-k"])
        .arg(layout.sockets.to_string_lossy())
        .args([
            "-c",
            "unix_socket_permissions=0700",
            "-c",
            "logging_collector=off",
        ])
        .current_dir(layout.data.to_string_lossy().as_ref())
        .spawn(SERVER, Restart::OnFailure)
        .map_err(|e| Error::from(e).context("cannot start postgres"))?;
    info!("start: postgres {version} started as pid {pid}");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        // the lock file first (no connection attempts), then one real check
        if postmaster_ready(layout, since) && is_ready(layout, version)?.0 {
            return Ok(());
        }
        if !server_alive() {
            return Err(Error::new(
                "server-exited",
                format!(
                    "postgres ended while starting; see `gear logs {}` for why",
                    layout.gear.name
                ),
            ));
        }
        if Instant::now() >= deadline {
            let (_, said) = is_ready(layout, version)?;
            return Err(Error::new(
                "not-ready",
                format!(
                    "postgres did not accept connections within {} s ({said}); see `gear logs {}`",
                    READY_TIMEOUT.as_secs(),
                    layout.gear.name
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `pre-snapshot`: every database of a running server dumped into the
/// data directory (written aside, then renamed: a dump there is whole).
fn dump_for_snapshot(layout: &Layout) -> Result<String> {
    let dump = layout.gear.data_dir().join(DUMP);
    remove_file(&dump)?;
    let Some(version) = layout.data_version()? else {
        return Ok("no cluster yet: nothing to dump".into());
    };
    if !server_alive() {
        return Ok(
            "postgres is stopped: its data directory is at rest and is carried as it is".into(),
        );
    }
    let partial = dump.with_extension("sql.partial");
    remove_file(&partial)?;
    let started = Instant::now();
    Command::new(bin(version, "pg_dumpall"))
        .args(["-U", ADMIN, "-h"])
        .arg(layout.sockets.to_string_lossy())
        .args(["-p", &layout.port.to_string(), "-f"])
        .arg(partial.to_string_lossy())
        .current_dir(layout.gear.home.to_string_lossy().as_ref())
        .timeout(DUMP_TIMEOUT)
        .run()
        .map_err(|e| e.context("pg_dumpall failed"))?;
    std::fs::rename(&partial, &dump)
        .map_err(|e| Error::from(e).context(format!("moving the dump to {}", dump.display())))?;
    let size = std::fs::metadata(&dump).map_or(0, |m| m.len());
    Ok(format!(
        "dumped every database ({size} bytes) into app-root/data/{DUMP} in {} ms",
        started.elapsed().as_millis()
    ))
}

/// `post-restore`: when the restored data holds a dump (the server ran when
/// the snapshot was taken, so its copied files may be torn), a fresh cluster
/// is made and the dump loaded into it; the server is stopped again after.
fn load_after_restore(cartridge: &Postgresql, layout: &Layout) -> Result<String> {
    let dump = layout.gear.data_dir().join(DUMP);
    if !dump.exists() {
        return Ok("no dump in the restored data: the data directory was at rest".into());
    }
    let started = Instant::now();
    match std::fs::remove_dir_all(&layout.data) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::from(e).context(format!("removing {}", layout.data.display())));
        }
    }
    let version = ensure_cluster(layout)?;
    launch(layout, version)?;
    let loaded = load_dump(layout, version, &dump).and_then(|()| {
        let credentials = ensure_credentials(layout)?;
        admin_sql(layout, version, &credentials_sql(&credentials))
            .map(drop)
            .map_err(|e| e.context("cannot set the role's password"))
    });
    let stopped = cartridge.stop();
    loaded?;
    stopped?;
    remove_file(&dump)?;
    Ok(format!(
        "loaded the snapshot's dump into a fresh PostgreSQL {version} cluster in {} ms",
        started.elapsed().as_millis()
    ))
}

/// Runs the dump through `psql` as the superuser. The fresh cluster has
/// its superuser already, so the dump's `CREATE ROLE` of it fails; any other
/// error fails the load.
fn load_dump(layout: &Layout, version: u32, dump: &Path) -> Result<()> {
    let out = Command::new(bin(version, "psql"))
        .args([
            "-X",
            "-q",
            "-o",
            "/dev/null",
            "-U",
            ADMIN,
            "-d",
            "postgres",
            "-h",
        ])
        .arg(layout.sockets.to_string_lossy())
        .args(["-p", &layout.port.to_string(), "-f"])
        .arg(dump.to_string_lossy())
        .current_dir(layout.gear.home.to_string_lossy().as_ref())
        .timeout(DUMP_TIMEOUT)
        .output()?;
    let expected = format!("role \"{ADMIN}\" already exists");
    let errors = unexpected_errors(&out.stderr_str(), &expected);
    if !out.status.success() || !errors.is_empty() {
        return Err(Error::new(
            "load-failed",
            format!(
                "loading the snapshot's dump failed ({}): {}",
                out.status,
                errors.join("; ")
            ),
        ));
    }
    Ok(())
}

/// The `ERROR:` lines of psql's output other than `expected`.
fn unexpected_errors(stderr: &str, expected: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains(expected))
        .map(|l| l.trim().to_string())
        .take(5)
        .collect()
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from(e).context(format!("removing {}", path.display()))),
    }
}

impl Cartridge for Postgresql {
    const ACTIONS: &'static [&'static str] = &[
        "status",
        "reload",
        "tidy",
        "pre-snapshot",
        "post-snapshot",
        "post-restore",
    ];

    fn build(&self) -> Result<()> {
        let layout = Layout::new();
        let version = ensure_cluster(&layout)?;
        ensure_credentials(&layout)?;
        info!("build: PostgreSQL {version} cluster ready; `gear start` runs it");
        Ok(())
    }

    fn start(&self) -> Result<()> {
        let started = Instant::now();
        let layout = Layout::new();
        let version = ensure_cluster(&layout)?;
        let credentials = ensure_credentials(&layout)?;
        launch(&layout, version)?;
        admin_sql(&layout, version, &credentials_sql(&credentials))
            .map_err(|e| e.context("cannot create the role and database"))?;
        info!(
            "start: PostgreSQL {version} accepts connections on 127.0.0.1:{}, database {} for role {} ({} ms)",
            layout.port,
            credentials.database,
            credentials.user,
            started.elapsed().as_millis()
        );
        Ok(())
    }

    fn stop(&self) -> Result<()> {
        // SIGINT is PostgreSQL's fast shutdown: sessions are ended and the
        // server checkpoints; SIGTERM would wait for every client to leave
        match process::signal(SERVER, Signal::Int) {
            Ok(()) => {}
            Err(HostError::NotFound(_)) => {
                info!("stop: postgres was not running");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(status) = process::wait(SERVER, STOP_GRACE)? {
            info!("stop: postgres shut down ({status})");
            return Ok(());
        }
        warn!(
            "stop: postgres did not shut down within {} s; killing it (the next start recovers from the WAL)",
            STOP_GRACE.as_secs()
        );
        process::signal(SERVER, Signal::Kill)?;
        match process::wait(SERVER, Duration::from_secs(5))? {
            Some(status) => {
                info!("stop: postgres {status}");
                Ok(())
            }
            None => Err(Error::new(
                "stop-failed",
                "postgres is still running 5 s after SIGKILL; the node's log may say why",
            )),
        }
    }

    fn control(&self, action: &str, _args: &[String]) -> Result<String> {
        match action {
            "status" => {
                let layout = Layout::new();
                let server = server_process()
                    .map_or_else(|| "not started".to_string(), |p| process_text(&p));
                let Some(version) = layout.data_version()? else {
                    return Ok(format!(
                        "cluster: not initialised yet (`gear start {}` creates it)\nserver: {server}",
                        layout.gear.name
                    ));
                };
                let (_, said) = is_ready(&layout, version)?;
                Ok(format!(
                    "version: PostgreSQL {version}\ndata: {}\nserver: {server}\nconnections: {said}\ndatabase: {} (role {})",
                    layout.data.display(),
                    env::get("PGDATABASE").unwrap_or_default(),
                    env::get("PGUSER").unwrap_or_default(),
                ))
            }
            "reload" => {
                process::signal(SERVER, Signal::Hup).map_err(|e| match e {
                    HostError::NotFound(_) => Error::new(
                        "not-running",
                        "postgres is not running, so there is nothing to reload; start the gear",
                    ),
                    other => other.into(),
                })?;
                Ok("postgres reloads its configuration (pg_hba.conf, postgresql.conf)".into())
            }
            "tidy" => {
                let layout = Layout::new();
                let Some(version) = layout.data_version()? else {
                    return Ok("nothing to tidy: the cluster is not initialised yet".into());
                };
                if !server_alive() {
                    return Err(Error::new(
                        "not-running",
                        "postgres is not running; start the gear, then tidy",
                    ));
                }
                let started = Instant::now();
                Command::new(bin(version, "vacuumdb"))
                    .args(["--all", "--analyze", "--quiet", "-U", ADMIN, "-h"])
                    .arg(layout.sockets.to_string_lossy())
                    .args(["-p", &layout.port.to_string()])
                    .current_dir(layout.gear.home.to_string_lossy().as_ref())
                    .timeout(Duration::from_secs(25))
                    .run()?;
                Ok(format!(
                    "vacuumed and analysed every database in {} ms",
                    started.elapsed().as_millis()
                ))
            }
            "pre-snapshot" => dump_for_snapshot(&Layout::new()),
            "post-snapshot" => {
                remove_file(&gear().data_dir().join(DUMP))?;
                Ok("removed the snapshot's dump".into())
            }
            "post-restore" => load_after_restore(self, &Layout::new()),
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

fn process_text(p: &ProcessInfo) -> String {
    match p.pid {
        Some(pid) => format!("{} (pid {pid}, restarted {} times)", p.state, p.restarts),
        None => format!("{} (restarted {} times)", p.state, p.restarts),
    }
}

gearhost_sdk::export_cartridge!(Postgresql);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_newest_first_and_ignore_other_entries() {
        assert_eq!(parse_versions("13\n15\nlib\n9\n15\n"), [15, 13, 9]);
        assert!(parse_versions("").is_empty());
    }

    #[test]
    fn the_data_directory_decides_the_version() {
        assert_eq!(pick_version(&[16, 15], Some(15)).ok(), Some(15));
        assert_eq!(pick_version(&[16, 15], None).ok(), Some(16));
        let missing = pick_version(&[16], Some(14)).expect_err("14 is gone");
        assert!(missing.message().contains("postgresql-14"), "{missing}");
        let none = pick_version(&[], None).expect_err("nothing installed");
        assert_eq!(none.code(), "not-installed");
    }

    #[test]
    fn only_a_fresh_lock_file_that_says_ready_counts() {
        let file = |start: u64, status: &str| {
            format!(
                "2\n/gear/app-root/data/postgresql\n{start}\n5432\n/sock\n127.0.0.1\n0 1\n{status}\n"
            )
        };
        assert!(lock_file_ready(&file(100, "ready   "), 100));
        assert!(!lock_file_ready(&file(100, "starting"), 100));
        assert!(!lock_file_ready(&file(99, "ready"), 100), "a stale file");
        assert!(!lock_file_ready("2\n/x\n", 0), "a file being written");
    }

    #[test]
    fn only_the_superusers_own_role_may_fail_when_a_dump_is_loaded() {
        let said = "psql:/gear/app-root/data/postgresql-snapshot.sql:18: ERROR:  role \"gear_admin\" already exists\n";
        assert!(unexpected_errors(said, "role \"gear_admin\" already exists").is_empty());
        let worse = format!("{said}psql:x.sql:40: ERROR:  relation \"t\" already exists\n");
        let errors = unexpected_errors(&worse, "role \"gear_admin\" already exists");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("relation"), "{errors:?}");
    }

    #[test]
    fn urls_encode_what_would_break_them() {
        assert_eq!(
            database_url("blog-db", "a:b@c/d", 5432, "blog-db"),
            "postgresql://blog-db:a%3Ab%40c%2Fd@127.0.0.1:5432/blog-db"
        );
    }

    #[test]
    fn sql_quotes_names_and_passwords() {
        let sql = credentials_sql(&Credentials {
            user: "my-db".into(),
            password: "it's".into(),
            database: "my-db".into(),
        });
        assert!(sql.contains("ALTER ROLE \"my-db\" WITH LOGIN NOSUPERUSER PASSWORD 'it''s';"));
        assert!(sql.contains("WHERE rolname = 'my-db')\\gexec\n"));
        assert!(sql.contains("CREATE DATABASE %I OWNER %I', 'my-db', 'my-db')"));
    }
}
