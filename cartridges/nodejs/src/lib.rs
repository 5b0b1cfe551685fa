//! The nodejs cartridge.
//!
//! - `build` installs the deployment's dependencies when it has a
//!   `package.json`: `npm ci` when a `package-lock.json` pins them, else
//!   `npm install`, without dev dependencies (`NODE_ENV=production`). The
//!   dependencies live in the deployment's own `node_modules/`, with a stamp
//!   of the manifests they were installed from: building the same
//!   deployment again (as a rollback does) skips npm and needs no network;
//! - `start` runs `npm start` when `package.json` has a `start` script, else
//!   `node server.js`, with `PORT` set to the gear's `http` port;
//! - `stop` sends `TERM` and waits, then `KILL`s after the grace period;
//! - `control`: `status`, `reload` (a restart: node has no standard reload),
//!   `tidy` (npm's cache).

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use gearhost_sdk::prelude::*;

/// The app's process in the gear's supervisor.
const WEB: &str = "web";

/// How long `stop` lets the app finish before `KILL`.
const GRACE: Duration = Duration::from_secs(10);

/// How the deployment is started.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `npm start` runs `scripts.start` from package.json.
    StartScript(String),
    /// `node server.js`.
    ServerJs,
}

impl Entry {
    fn detect(repo: &Path) -> Result<Entry> {
        if let Some(script) = start_script(repo)? {
            return Ok(Entry::StartScript(script));
        }
        if repo.join("server.js").is_file() {
            return Ok(Entry::ServerJs);
        }
        Err(Error::new(
            "no-app",
            "the deployment has neither a `start` script in package.json nor server.js; \
             add one of them",
        ))
    }

    fn describe(&self) -> String {
        match self {
            Entry::StartScript(script) => format!("npm start ({script})"),
            Entry::ServerJs => "node server.js".to_owned(),
        }
    }
}

/// The deployment's `package.json`, if it has one.
fn package_json(repo: &Path) -> Result<Option<serde_json::Value>> {
    let path = repo.join("package.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path)?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::new(
            "bad-package-json",
            format!("package.json is not valid JSON ({e}); fix it and deploy again"),
        )
    })
}

/// Where the build records what `node_modules/` was installed from.
const STAMP: &str = "node_modules/.gearhost-installed";

/// What `node_modules/` is installed from: the deployment's package.json
/// and its lock file, as one text.
fn installed_stamp(repo: &Path) -> Option<String> {
    let mut stamp = std::fs::read_to_string(repo.join("package.json")).ok()?;
    for lock in ["package-lock.json", "npm-shrinkwrap.json"] {
        if let Ok(text) = std::fs::read_to_string(repo.join(lock)) {
            stamp.push_str(&format!("\n--- {lock}\n{text}"));
        }
    }
    Some(stamp)
}

/// `scripts.start` of the deployment's package.json.
fn start_script(repo: &Path) -> Result<Option<String>> {
    Ok(package_json(repo)?
        .and_then(|p| p.get("scripts")?.get("start")?.as_str().map(str::to_owned)))
}

/// npm with the settings a gear needs: no update checks, no audit calls, no
/// funding messages, no colour codes in the log.
fn npm(args: &[&str]) -> Command {
    let mut cmd = Command::new("npm");
    cmd.args(args.iter().copied())
        .env("NODE_ENV", "production")
        .env("npm_config_update_notifier", "false")
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_color", "false")
        .env("npm_config_loglevel", "warn");
    cmd
}

fn start_app() -> Result<u32> {
    let gear = gear();
    let repo = gear.repo_dir();
    let entry = Entry::detect(&repo)?;
    let port = gear
        .port("http")
        .ok_or_else(|| Error::new("no-port", "the cartridge declares no `http` endpoint"))?
        .to_string();
    let mut cmd = match &entry {
        Entry::StartScript(_) => npm(&["start"]),
        Entry::ServerJs => {
            let mut cmd = Command::new("node");
            cmd.arg("server.js").env("NODE_ENV", "production");
            cmd
        }
    };
    let pid = cmd
        .current_dir(&repo)
        .env("PORT", &port)
        .spawn(WEB, Restart::OnFailure)?;
    info!("start: {} on port {port} (pid {pid})", entry.describe());
    Ok(pid)
}

#[derive(Default)]
struct NodeJs;

impl Cartridge for NodeJs {
    const ACTIONS: &'static [&'static str] = &["status", "reload", "tidy"];

    fn build(&self) -> Result<()> {
        let repo = gear().repo_dir();
        let entry = Entry::detect(&repo)?;
        if package_json(&repo)?.is_none() {
            info!("build: no package.json; nothing to install");
        } else if installed_stamp(&repo).is_some_and(|stamp| {
            std::fs::read_to_string(repo.join(STAMP)).ok().as_deref() == Some(stamp.as_str())
        }) {
            info!("build: node_modules was installed from this package.json; npm skipped");
        } else {
            let locked = repo.join("package-lock.json").is_file()
                || repo.join("npm-shrinkwrap.json").is_file();
            let args: &[&str] = if locked {
                &["ci", "--omit=dev"]
            } else {
                &["install", "--omit=dev"]
            };
            let out = npm(args).current_dir(&repo).run().map_err(|e| {
                e.context(format!(
                    "`npm {}` failed (packages come from the registry through the node's \
                     build egress proxy: a refused address is named in `gear logs --hooks`)",
                    args[0]
                ))
            })?;
            let summary = out
                .stdout_str()
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("dependencies installed")
                .trim()
                .to_owned();
            info!("build: npm {}: {summary}", args[0]);
            if let Some(stamp) = installed_stamp(&repo) {
                fs::create_dir_all(repo.join("node_modules"))?;
                fs::write(repo.join(STAMP), stamp)?;
            }
        }
        info!("build: ready to run {}", entry.describe());
        Ok(())
    }

    fn start(&self) -> Result<()> {
        start_app().map(drop)
    }

    fn stop(&self) -> Result<()> {
        match process::stop_gracefully(WEB, GRACE)? {
            Some(status) => info!("stop: the app {status}"),
            None => debug!("stop: the app was not running"),
        }
        Ok(())
    }

    fn control(&self, action: &str, _args: &[String]) -> Result<String> {
        match action {
            "status" => {
                let entry = Entry::detect(&gear().repo_dir())
                    .map_or_else(|e| e.message().to_owned(), |e| e.describe());
                let node = Command::new("node")
                    .arg("--version")
                    .output()
                    .map(|o| o.stdout_str().trim().to_owned())
                    .unwrap_or_else(|e| format!("unknown ({})", e.message()));
                let web = process::find(WEB).map_or("not started".to_owned(), |p| p.to_string());
                Ok(format!("app: {entry}\nnode: {node}\nweb: {web}"))
            }
            "reload" => {
                process::stop_gracefully(WEB, GRACE)?;
                let pid = start_app()?;
                Ok(format!("restarted the app (pid {pid})"))
            }
            "tidy" => {
                let cache = gear().home.join(".npm/_cacache");
                let bytes = fs::size_of(&cache);
                fs::remove_dir_all(&cache)?;
                Ok(format!("removed npm's cache ({bytes} bytes)"))
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(NodeJs);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_entries() {
        assert_eq!(
            Entry::StartScript("node app.js".into()).describe(),
            "npm start (node app.js)"
        );
        assert_eq!(Entry::ServerJs.describe(), "node server.js");
    }
}
