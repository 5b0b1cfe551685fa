//! The static cartridge: nginx serves the deployment's files.
//!
//! - `build` picks the document root (the deployment's `public/` when it has
//!   one, else its top), renders an nginx configuration for the gear into
//!   `app-root/runtime/nginx/` and checks it with `nginx -t`;
//! - `start` runs nginx in the foreground on the gear's `http` port, as the
//!   gear's user, with every path it writes inside the gear;
//! - `stop` asks nginx to finish (`QUIT`: graceful), then `KILL`s after the
//!   grace period;
//! - `control`: `status`, `reload` (`HUP`: nginx re-reads its configuration
//!   without dropping connections), `tidy` (nginx's temporary files).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use gearhost_sdk::prelude::*;

mod mime;

/// nginx's process in the gear's supervisor.
const WEB: &str = "web";

/// How long `stop` lets nginx finish requests in flight.
const GRACE: Duration = Duration::from_secs(5);

/// Where nginx's configuration and writable files live in the gear.
struct Layout {
    gear: Gear,
}

impl Layout {
    fn new() -> Self {
        Self { gear: gear() }
    }

    fn prefix(&self) -> PathBuf {
        self.gear.runtime_dir().join("nginx")
    }

    fn conf(&self) -> PathBuf {
        self.prefix().join("nginx.conf")
    }

    fn temp(&self) -> PathBuf {
        self.prefix().join("tmp")
    }

    /// `public/` of the deployment when it has one, else its top.
    fn document_root(&self) -> PathBuf {
        let repo = self.gear.repo_dir();
        let public = repo.join("public");
        if public.is_dir() { public } else { repo }
    }

    /// nginx's command line for this gear; `extra` goes before the flags.
    fn nginx(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new("nginx");
        cmd.args(extra.iter().copied())
            .args(["-p", &self.prefix().display().to_string()])
            .args(["-c", &self.conf().display().to_string()])
            // before the configuration is read, log to stderr, not /var/log
            .args(["-e", "stderr"]);
        cmd
    }
}

/// The configuration nginx runs with in the gear.
fn render(layout: &Layout, port: u16, root: &Path) -> String {
    let prefix = layout.prefix();
    let temp = layout.temp();
    let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("    {kind}_temp_path {};\n", temp.join(kind).display()))
        .collect();
    format!(
        "# rendered by the static cartridge's build hook; a new deployment renders it again\n\
         daemon off;\n\
         worker_processes 1;\n\
         pid {pid};\n\
         error_log stderr warn;\n\
         events {{\n    worker_connections 1024;\n}}\n\
         http {{\n\
         {types}\
         \x20   default_type application/octet-stream;\n\
         \x20   charset utf-8;\n\
         \x20   charset_types text/css text/plain text/xml application/javascript application/json image/svg+xml;\n\
         \x20   access_log /dev/stdout combined;\n\
         \x20   sendfile on;\n\
         \x20   tcp_nopush on;\n\
         \x20   keepalive_timeout 65s;\n\
         \x20   server_tokens off;\n\
         \x20   gzip on;\n\
         \x20   gzip_types text/css text/plain text/xml application/javascript application/json image/svg+xml;\n\
         {temp_paths}\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       root {root};\n\
         \x20       index index.html index.htm;\n\
         \x20       location / {{\n\
         \x20           try_files $uri $uri/ =404;\n\
         \x20       }}\n\
         \x20       location ~ /\\. {{\n\
         \x20           return 404;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        pid = prefix.join("nginx.pid").display(),
        types = mime::types_block(),
        root = root.display(),
    )
}

fn start_nginx(layout: &Layout) -> Result<u32> {
    if !layout.conf().is_file() {
        return Err(Error::new(
            "not-built",
            "the gear has no nginx configuration yet; deploy, or run `gear build`",
        ));
    }
    let pid = layout.nginx(&[]).spawn(WEB, Restart::OnFailure)?;
    info!(
        "start: nginx serving {} (pid {pid})",
        layout.document_root().display()
    );
    Ok(pid)
}

#[derive(Default)]
struct Static;

impl Cartridge for Static {
    const ACTIONS: &'static [&'static str] = &["status", "reload", "tidy"];

    fn build(&self) -> Result<()> {
        let layout = Layout::new();
        let port = layout
            .gear
            .port("http")
            .ok_or_else(|| Error::new("no-port", "the cartridge declares no `http` endpoint"))?;
        let root = layout.document_root();
        for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir_all(layout.temp().join(kind))?;
        }
        fs::write(layout.conf(), render(&layout, port, &root))?;
        layout
            .nginx(&["-t", "-q"])
            .run()
            .map_err(|e| e.context("nginx refused the rendered configuration"))?;
        if !root.join("index.html").is_file() {
            warn!(
                "build: {} has no index.html; `/` will answer 404",
                root.display()
            );
        }
        info!("build: nginx will serve {}", root.display());
        Ok(())
    }

    fn start(&self) -> Result<()> {
        start_nginx(&Layout::new()).map(drop)
    }

    fn stop(&self) -> Result<()> {
        // QUIT is nginx's graceful shutdown; TERM would drop connections
        if process::is_running(WEB) {
            process::signal(WEB, Signal::Quit)?;
            if process::wait(WEB, GRACE)?.is_some() {
                info!("stop: nginx finished");
                return Ok(());
            }
        }
        if let Some(status) = process::stop_gracefully(WEB, Duration::from_secs(1))? {
            info!("stop: nginx {status}");
        }
        Ok(())
    }

    fn control(&self, action: &str, _args: &[String]) -> Result<String> {
        let layout = Layout::new();
        match action {
            "status" => {
                let web = process::find(WEB).map_or("not started".to_owned(), |p| p.to_string());
                Ok(format!(
                    "document root: {}\nconfiguration: {}\nnginx: {web}",
                    layout.document_root().display(),
                    if layout.conf().is_file() {
                        "rendered"
                    } else {
                        "missing (run the build)"
                    },
                ))
            }
            "reload" => {
                if process::is_running(WEB) {
                    process::signal(WEB, Signal::Hup)?;
                    Ok("nginx is re-reading its configuration".to_owned())
                } else {
                    let pid = start_nginx(&layout)?;
                    Ok(format!("nginx was not running; started it (pid {pid})"))
                }
            }
            "tidy" => {
                let mut bytes = 0;
                for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    let dir = layout.temp().join(kind);
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        bytes += fs::size_of(entry.path());
                        let path = entry.path();
                        if path.is_dir() {
                            fs::remove_dir_all(&path)?;
                        } else {
                            fs::remove_file(&path)?;
                        }
                    }
                }
                Ok(format!("removed nginx's temporary files ({bytes} bytes)"))
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(Static);
