//! The do-it-yourself cartridge: the app brings its own scripts.
//!
//! In the deployed directory, `.gear/` may hold:
//!
//! - `build` (optional): run by the `build` hook, in the deployment, with
//!   the build network when the node allows it;
//! - `start` (required): the app's server, started as the supervised process
//!   `app`. It must stay in the foreground (end it with `exec server ...`):
//!   the supervisor restarts it when it exits with a failure;
//! - `stop` (optional): run before the cartridge stops `app` (`TERM`, then
//!   `KILL` after a grace period);
//! - `reload` (optional): run by `gear control NAME reload`; without it,
//!   reload restarts `app`.
//!
//! Each script runs with the gear's environment plus `PORT` (the gear's
//! `http` port), and must be executable (`chmod +x`) with a `#!` line.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use gearhost_sdk::prelude::*;

/// The app's process in the gear's supervisor.
const APP: &str = "app";

/// How long `stop` lets the app finish before `KILL`.
const GRACE: Duration = Duration::from_secs(10);

/// How long `.gear/stop` and `.gear/reload` may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(20);

/// The deployment's `.gear/<name>` script, if it ships one.
fn script(name: &str) -> Option<PathBuf> {
    let path = gear().repo_dir().join(".gear").join(name);
    path.is_file().then_some(path)
}

/// A command that runs `path` in the deployment with `PORT` set.
fn command(path: &std::path::Path) -> Result<Command> {
    let gear = gear();
    let port = gear
        .port("http")
        .ok_or_else(|| Error::new("no-port", "the cartridge declares no `http` endpoint"))?;
    let mut cmd = Command::new(path.display().to_string());
    cmd.current_dir(gear.repo_dir())
        .env("PORT", port.to_string());
    Ok(cmd)
}

/// Explains the usual reason a script does not run.
fn script_failed(name: &str, e: HostError) -> Error {
    Error::from(e).context(format!(
        "cannot run .gear/{name}: it must be executable (`chmod +x .gear/{name}`) \
         and start with a `#!` line naming an interpreter the node has"
    ))
}

/// Runs `.gear/<name>` to completion; `Ok(false)` when the app has none.
fn run_script(name: &str, timeout: Duration) -> Result<bool> {
    let Some(path) = script(name) else {
        return Ok(false);
    };
    let mut cmd = command(&path)?;
    let out = cmd
        .timeout(timeout)
        .output()
        .map_err(|e| script_failed(name, e))?;
    // what the script printed is in the gear's hook log already: the node
    // writes it there line by line while the script runs
    if !out.status.success() {
        return Err(Error::new(
            "script-failed",
            format!(
                ".gear/{name} {}; its output is in the gear's log",
                out.status
            ),
        ));
    }
    Ok(true)
}

fn start_app() -> Result<u32> {
    let path = script("start").ok_or_else(|| {
        Error::new(
            "no-start-script",
            "the deployment has no .gear/start; add an executable script that runs your \
             server in the foreground on $PORT",
        )
    })?;
    let pid = command(&path)?
        .spawn(APP, Restart::OnFailure)
        .map_err(|e| script_failed("start", e))?;
    info!("start: .gear/start is running (pid {pid})");
    Ok(pid)
}

fn stop_app() -> Result<()> {
    if process::is_running(APP) && run_script("stop", SCRIPT_TIMEOUT)? && !process::is_running(APP)
    {
        info!("stop: the app ended with .gear/stop");
        return Ok(());
    }
    // whatever .gear/stop did, the app gets TERM now, KILL after the grace
    match process::stop_gracefully(APP, GRACE)? {
        Some(status) => info!("stop: the app {status}"),
        None => debug!("stop: the app was not running"),
    }
    Ok(())
}

#[derive(Default)]
struct Diy;

impl Cartridge for Diy {
    const ACTIONS: &'static [&'static str] = &["status", "reload"];

    fn build(&self) -> Result<()> {
        if script("start").is_none() {
            return Err(Error::new(
                "no-start-script",
                "the deployment has no .gear/start; add an executable script that runs your \
                 server in the foreground on $PORT",
            ));
        }
        if run_script("build", Duration::from_secs(600))? {
            info!("build: .gear/build succeeded");
        } else {
            info!("build: no .gear/build; nothing to build");
        }
        Ok(())
    }

    fn start(&self) -> Result<()> {
        start_app().map(drop)
    }

    fn stop(&self) -> Result<()> {
        stop_app()
    }

    fn control(&self, action: &str, _args: &[String]) -> Result<String> {
        match action {
            "status" => {
                let scripts: Vec<&str> = ["build", "start", "stop", "reload"]
                    .into_iter()
                    .filter(|name| script(name).is_some())
                    .collect();
                let app = process::find(APP).map_or("not started".to_owned(), |p| p.to_string());
                Ok(format!(
                    "scripts: {}\napp: {app}",
                    if scripts.is_empty() {
                        "none".to_owned()
                    } else {
                        scripts.join(", ")
                    }
                ))
            }
            "reload" => {
                if process::is_running(APP) && run_script("reload", SCRIPT_TIMEOUT)? {
                    return Ok("ran .gear/reload".to_owned());
                }
                stop_app()?;
                let pid = start_app()?;
                Ok(format!("restarted the app (pid {pid})"))
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(Diy);
