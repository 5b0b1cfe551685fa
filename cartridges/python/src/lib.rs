//! The python cartridge.
//!
//! - `build` creates a virtualenv in `app-root/runtime/venv` with the
//!   system's `python3` (once; it survives deployments) and installs the
//!   deployment's `requirements.txt` into it with pip, skipping pip when the
//!   requirements did not change since the last build;
//! - `start` serves `wsgi.py` (its `application`) with gunicorn from the
//!   virtualenv, or runs `app.py` with the virtualenv's interpreter, on the
//!   gear's `http` port (also given to the app as `PORT`);
//! - `stop` sends `TERM` and waits (gunicorn finishes requests in flight),
//!   then `KILL`s after the grace period;
//! - `control`: `status`, `reload` (gunicorn reloads its workers on `HUP`;
//!   an `app.py` is restarted), `tidy` (pip's cache).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use gearhost_sdk::prelude::*;

/// The app's process in the gear's supervisor.
const WEB: &str = "web";

/// How long `stop` lets the app finish before `KILL`.
const GRACE: Duration = Duration::from_secs(10);

/// gunicorn workers unless the gear sets `PYTHON_WSGI_WORKERS`.
const DEFAULT_WORKERS: u32 = 2;

/// How the deployment is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `wsgi.py` with an `application`, served by gunicorn.
    Wsgi,
    /// `app.py`, run by the interpreter; it listens on `$PORT` itself.
    Script,
}

impl Mode {
    /// What the deployment in `repo` asks for.
    fn detect(repo: &std::path::Path) -> Result<Mode> {
        if repo.join("wsgi.py").is_file() {
            Ok(Mode::Wsgi)
        } else if repo.join("app.py").is_file() {
            Ok(Mode::Script)
        } else {
            Err(Error::new(
                "no-app",
                "the deployment has neither wsgi.py (a WSGI `application`) nor app.py; \
                 add one at the top of the directory you deploy",
            ))
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Wsgi => "wsgi.py served by gunicorn",
            Mode::Script => "app.py",
        }
    }
}

/// The gear's python layout.
struct Layout {
    gear: Gear,
}

impl Layout {
    fn new() -> Self {
        Self { gear: gear() }
    }

    fn venv(&self) -> PathBuf {
        self.gear.runtime_dir().join("venv")
    }

    fn bin(&self, program: &str) -> String {
        self.venv().join("bin").join(program).display().to_string()
    }

    /// Where the requirements of the last successful install are kept, to
    /// skip pip when a deployment does not change them.
    fn installed_requirements(&self) -> PathBuf {
        self.venv().join("gearhost-requirements.txt")
    }

    fn port(&self) -> Result<u16> {
        self.gear.port("http").ok_or_else(|| {
            Error::new(
                "no-port",
                "the cartridge declares no `http` endpoint; the manifest is broken",
            )
        })
    }

    /// The Python version the virtualenv was made with (from `pyvenv.cfg`).
    fn venv_version(&self) -> Option<String> {
        let cfg = std::fs::read_to_string(self.venv().join("pyvenv.cfg")).ok()?;
        cfg.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == "version" || key.trim() == "version_info")
                .then(|| value.trim().to_owned())
        })
    }

    /// Whether the virtualenv exists and its interpreter still runs (a
    /// system upgrade of python3 can break it).
    fn venv_works(&self) -> bool {
        self.venv().join("pyvenv.cfg").is_file()
            && Command::new(self.bin("python"))
                .args(["-c", "import sys"])
                .timeout(Duration::from_secs(20))
                .status()
                .is_ok_and(ExitStatus::success)
    }

    fn create_venv(&self) -> Result<()> {
        fs::remove_dir_all(self.venv())?;
        fs::create_dir_all(self.gear.runtime_dir())?;
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(self.venv().display().to_string())
            .run()
            .map_err(|e| {
                e.context("cannot create the virtualenv (is python3-venv installed on the node?)")
            })?;
        info!(
            "build: created a virtualenv with Python {}",
            self.venv_version()
                .unwrap_or_else(|| "(unknown version)".into())
        );
        Ok(())
    }

    fn install_requirements(&self) -> Result<()> {
        let requirements = self.gear.repo_dir().join("requirements.txt");
        if !requirements.is_file() {
            info!("build: no requirements.txt; nothing to install");
            return Ok(());
        }
        let wanted = fs::read_to_string(&requirements)?;
        let installed = std::fs::read_to_string(self.installed_requirements()).ok();
        if installed.as_deref() == Some(wanted.as_str()) {
            info!("build: requirements.txt unchanged since the last build; pip skipped");
            return Ok(());
        }
        let out = Command::new(self.bin("pip"))
            .args([
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
                "--requirement",
            ])
            .arg(requirements.display().to_string())
            .env("PIP_NO_COLOR", "1")
            .run()
            .map_err(|e| {
                e.context(
                    "pip could not install requirements.txt (packages come from an index \
                     through the node's build egress proxy: a refused address is named in \
                     `gear logs --hooks`)",
                )
            })?;
        let summary = out
            .stdout_str()
            .lines()
            .rev()
            .find(|l| {
                l.starts_with("Successfully installed") || l.starts_with("Requirement already")
            })
            .unwrap_or("requirements installed")
            .to_owned();
        info!("build: {summary}");
        fs::write(self.installed_requirements(), wanted)?;
        Ok(())
    }

    fn start(&self) -> Result<u32> {
        let repo = self.gear.repo_dir();
        let mode = Mode::detect(&repo)?;
        let port = self.port()?.to_string();
        let mut cmd = match mode {
            Mode::Wsgi => {
                let gunicorn = self.venv().join("bin/gunicorn");
                if !gunicorn.is_file() {
                    return Err(Error::new(
                        "no-wsgi-server",
                        "wsgi.py needs a WSGI server: add `gunicorn` to requirements.txt and deploy again",
                    ));
                }
                let workers = env::get("PYTHON_WSGI_WORKERS")
                    .and_then(|w| w.parse::<u32>().ok())
                    .filter(|w| (1..=64).contains(w))
                    .unwrap_or(DEFAULT_WORKERS);
                let mut cmd = Command::new(self.bin("gunicorn"));
                cmd.args(["--bind", &format!("127.0.0.1:{port}")])
                    .args(["--workers", &workers.to_string()])
                    .args([
                        "--graceful-timeout",
                        &GRACE.as_secs().saturating_sub(2).to_string(),
                    ])
                    .args(["--access-logfile", "-", "--error-logfile", "-"])
                    .arg("wsgi:application");
                cmd
            }
            Mode::Script => {
                let mut cmd = Command::new(self.bin("python"));
                cmd.arg("app.py");
                cmd
            }
        };
        // bin/python links to the system's interpreter, outside what the hook
        // sees: look at the link itself
        if std::fs::symlink_metadata(self.venv().join("bin/python")).is_err() {
            return Err(Error::new(
                "not-built",
                "the gear has no virtualenv yet; deploy, or run `gear build`",
            ));
        }
        let pid = cmd
            .current_dir(&repo)
            .env("PORT", &port)
            .env("PYTHONUNBUFFERED", "1")
            .env("VIRTUAL_ENV", self.venv().display().to_string())
            .spawn(WEB, Restart::OnFailure)?;
        info!("start: {} on port {port} (pid {pid})", mode.describe());
        Ok(pid)
    }
}

#[derive(Default)]
struct Python;

impl Cartridge for Python {
    const ACTIONS: &'static [&'static str] = &["status", "reload", "tidy"];

    fn build(&self) -> Result<()> {
        let layout = Layout::new();
        let mode = Mode::detect(&layout.gear.repo_dir())?;
        if layout.venv_works() {
            debug!("build: reusing the virtualenv");
        } else {
            layout.create_venv()?;
        }
        layout.install_requirements()?;
        if mode == Mode::Wsgi && !layout.venv().join("bin/gunicorn").is_file() {
            return Err(Error::new(
                "no-wsgi-server",
                "wsgi.py needs a WSGI server: add `gunicorn` to requirements.txt",
            ));
        }
        info!("build: ready to run {}", mode.describe());
        Ok(())
    }

    fn start(&self) -> Result<()> {
        Layout::new().start().map(drop)
    }

    fn stop(&self) -> Result<()> {
        match process::stop_gracefully(WEB, GRACE)? {
            Some(status) => info!("stop: the app {status}"),
            None => debug!("stop: the app was not running"),
        }
        Ok(())
    }

    fn control(&self, action: &str, _args: &[String]) -> Result<String> {
        let layout = Layout::new();
        match action {
            "status" => {
                let mode = Mode::detect(&layout.gear.repo_dir())
                    .map_or_else(|e| e.message().to_owned(), |m| m.describe().to_owned());
                let venv = layout
                    .venv_version()
                    .map_or("none (run the build)".to_owned(), |v| format!("Python {v}"));
                let web = process::find(WEB).map_or("not started".to_owned(), |p| p.to_string());
                Ok(format!("app: {mode}\nvirtualenv: {venv}\nweb: {web}"))
            }
            "reload" => {
                let wsgi = Mode::detect(&layout.gear.repo_dir())? == Mode::Wsgi;
                if wsgi && process::is_running(WEB) {
                    process::signal(WEB, Signal::Hup)?;
                    return Ok("gunicorn is reloading its workers".to_owned());
                }
                process::stop_gracefully(WEB, GRACE)?;
                let pid = layout.start()?;
                Ok(format!("restarted the app (pid {pid})"))
            }
            "tidy" => {
                let cache = layout.gear.home.join(".cache/pip");
                let bytes = fs::size_of(&cache);
                fs::remove_dir_all(&cache)?;
                Ok(format!("removed pip's cache ({bytes} bytes)"))
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(Python);
