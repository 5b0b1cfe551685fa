//! My first cartridge: the one `docs/cartridge-guide.md` builds step by step.
//!
//! - `build` checks that the deployment has an `index.html` and records
//!   what was built in `app-root/runtime/build-info.txt`;
//! - `start` serves the deployed files with `python3 -m http.server` on the
//!   gear's `http` port;
//! - `stop` stops the server gracefully;
//! - `control status` says whether it runs and what was built.

#![forbid(unsafe_code)]

use std::time::Duration;

use gearhost_sdk::prelude::*;

/// The name the web server runs under in the gear's supervisor.
const WEB: &str = "web";

#[derive(Default)]
struct MyFirst;

impl Cartridge for MyFirst {
    const ACTIONS: &'static [&'static str] = &["status"];

    fn build(&self) -> Result<()> {
        let gear = gear();
        let index = gear.repo_dir().join("index.html");
        if !index.is_file() {
            return Err(Error::new(
                "no-index",
                "the deployment has no index.html; add one at the top of the directory you deploy",
            ));
        }
        let files = std::fs::read_dir(gear.repo_dir())?.count();
        fs::create_dir_all(gear.runtime_dir())?;
        fs::write(
            gear.runtime_dir().join("build-info.txt"),
            format!("{files} entries deployed\n"),
        )?;
        info!("build: {files} entries ready to serve");
        Ok(())
    }

    fn start(&self) -> Result<()> {
        let gear = gear();
        let port = gear
            .port("http")
            .ok_or_else(|| Error::new("no-port", "the manifest declares no `http` endpoint"))?;
        let pid = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(gear.repo_dir())
            .spawn(WEB, Restart::OnFailure)?;
        info!("start: serving on port {port} (pid {pid})");
        Ok(())
    }

    fn stop(&self) -> Result<()> {
        process::stop_gracefully(WEB, Duration::from_secs(5))?;
        Ok(())
    }

    fn control(&self, action: &str, _args: &[String]) -> Result<String> {
        match action {
            "status" => {
                let web = process::find(WEB).map_or("not started".to_owned(), |p| p.to_string());
                let built = std::fs::read_to_string(gear().runtime_dir().join("build-info.txt"))
                    .unwrap_or_else(|_| "not built yet\n".to_owned());
                Ok(format!("web: {web}\nbuild: {built}"))
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(MyFirst);
