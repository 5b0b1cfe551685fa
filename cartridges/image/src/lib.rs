//! The image cartridge: the gear runs a container image.
//!
//! The node pulls the image, makes its layers the gear's root and writes
//! what the image says to run into the deployment as `image.json`
//! (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, the HTTP port and the `User`
//! it asks for). These hooks start that command as the supervised process
//! `app`, in the image's working directory, with the image's environment
//! under the gear's own variables and `PORT` set to the port the frontend
//! sends HTTP to. Whatever user the image asks for, its processes run as the
//! gear's own uid (with the root group), never as root.

#![forbid(unsafe_code)]

use std::time::Duration;

use gearhost_sdk::prelude::*;
use serde::Deserialize;

/// The app's process in the gear's supervisor.
const APP: &str = "app";

/// How long `stop` lets the app finish before `KILL`.
const GRACE: Duration = Duration::from_secs(10);

/// What the node writes into an image deployment.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Image {
    reference: String,
    digest: String,
    #[serde(default)]
    entrypoint: Vec<String>,
    #[serde(default)]
    cmd: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// Variables the node sets for every gear (an image's `PATH` among them:
/// the node takes it from the image); the image's own values are not passed.
fn set_by_node(key: &str) -> bool {
    key.starts_with("GEAR_") || matches!(key, "PATH" | "HOME" | "USER" | "LOGNAME" | "HOSTNAME")
}

fn image() -> Result<Image> {
    let path = gear().repo_dir().join("image.json");
    let text = std::fs::read(&path).map_err(|e| {
        Error::new(
            "no-image",
            format!(
                "the deployment holds no image ({}: {e}); deploy one with `gear deploy NAME REF`",
                path.display()
            ),
        )
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        Error::new(
            "bad-image",
            format!("the deployment's image.json cannot be read: {e}; deploy the image again"),
        )
    })
}

impl Image {
    /// `Entrypoint` followed by `Cmd`, as the image says.
    fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }

    fn working_dir(&self) -> String {
        self.working_dir
            .clone()
            .filter(|d| d.starts_with('/'))
            .unwrap_or_else(|| "/".to_owned())
    }

    /// The command that runs the image's app.
    fn command(&self) -> Result<Command> {
        let argv = self.argv();
        let Some((program, args)) = argv.split_first() else {
            return Err(Error::new(
                "nothing-to-run",
                format!(
                    "{} has neither Entrypoint nor Cmd; deploy an image that says what to run",
                    self.reference
                ),
            ));
        };
        let dir = self.working_dir();
        // `./server` is relative to the working directory
        let program = if !program.starts_with('/') && program.contains('/') {
            format!(
                "{}/{}",
                dir.trim_end_matches('/'),
                program.trim_start_matches("./")
            )
        } else {
            program.clone()
        };
        let mut cmd = Command::new(program);
        cmd.args(args.iter().cloned()).current_dir(&dir);
        for pair in &self.env {
            if let Some((key, value)) = pair.split_once('=')
                && !key.is_empty()
                && !set_by_node(key)
            {
                cmd.env(key, value);
            }
        }
        if let Some(port) = gear().port("http") {
            cmd.env("PORT", port.to_string());
        }
        Ok(cmd)
    }
}

fn start_app() -> Result<u32> {
    let image = image()?;
    let cmd = image.command()?;
    let pid = cmd.spawn(APP, Restart::OnFailure).map_err(|e| {
        Error::from(e).context(format!(
            "cannot start {} from {}: the program must exist in the image",
            cmd, image.reference
        ))
    })?;
    info!("start: {cmd} is running (pid {pid})");
    Ok(pid)
}

#[derive(Default)]
struct ImageCartridge;

impl Cartridge for ImageCartridge {
    const ACTIONS: &'static [&'static str] = &["status", "reload"];

    fn build(&self) -> Result<()> {
        let image = image()?;
        let cmd = image.command()?;
        info!("build: {} ({})", image.reference, image.digest);
        info!("build: it runs {cmd} in {}", image.working_dir());
        if let Some(user) = image
            .user
            .as_deref()
            .filter(|u| !matches!(*u, "" | "0" | "root"))
        {
            info!("build: the image asks for user {user}; it runs as the gear's own uid");
        }
        Ok(())
    }

    fn start(&self) -> Result<()> {
        start_app().map(drop)
    }

    fn stop(&self) -> Result<()> {
        match process::stop_gracefully(APP, GRACE)? {
            Some(status) => info!("stop: the app {status}"),
            None => debug!("stop: the app was not running"),
        }
        Ok(())
    }

    fn control(&self, action: &str, _args: &[String]) -> Result<String> {
        match action {
            "status" => {
                let image = image()?;
                let app = process::find(APP).map_or("not started".to_owned(), |p| p.to_string());
                Ok(format!(
                    "image: {}\ndigest: {}\ncommand: {}\napp: {app}",
                    image.reference,
                    image.digest,
                    image.command()?
                ))
            }
            "reload" => {
                process::stop_gracefully(APP, GRACE)?;
                let pid = start_app()?;
                Ok(format!("restarted the app (pid {pid})"))
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(ImageCartridge);
