//! The hello cartridge: a small, friendly example of a Gearhost cartridge.
//!
//! - `build` writes `app-root/runtime/index.html` with a greeting;
//! - `start` serves that directory with `python3 -m http.server` on the
//!   gear's `http` port;
//! - `stop` stops the server gracefully;
//! - `control` offers `status`, `greet [NAME]` and `tidy`.

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use gearhost_sdk::prelude::*;

/// Name of the supervised web server process.
const WEB: &str = "web";

/// The `http` port when the manifest does not declare one.
const DEFAULT_PORT: u16 = 8080;

#[derive(Default)]
struct Hello;

/// `Hello, NAME, from gear GEAR!`
fn greeting(name: &str, gear: &str) -> String {
    format!("Hello, {name}, from gear {gear}!")
}

/// The page `build` writes.
fn page(gear: &Gear) -> String {
    format!(
        "<!doctype html>\n\
         <html lang=\"en\">\n\
         <head><meta charset=\"utf-8\"><title>{name}</title></head>\n\
         <body>\n\
         <h1>{greeting}</h1>\n\
         <p>Served by the <code>{cartridge}</code> cartridge for gear <code>{name}</code> \
         in namespace <code>{namespace}</code>.</p>\n\
         </body>\n\
         </html>\n",
        name = gear.name,
        namespace = gear.namespace,
        cartridge = gear.cartridge,
        greeting = greeting("visitor", &gear.name),
    )
}

/// Removes the `*.log` files directly in `dir`; returns how many and their
/// total size.
fn remove_logs(dir: &Path) -> Result<(usize, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(Error::from(e).context(format!("reading {}", dir.display()))),
    };
    let (mut count, mut bytes) = (0, 0);
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "log") && path.is_file() {
            let size = path.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&path)
                .map_err(|e| Error::from(e).context(format!("removing {}", path.display())))?;
            count += 1;
            bytes += size;
        }
    }
    Ok((count, bytes))
}

impl Cartridge for Hello {
    const ACTIONS: &'static [&'static str] = &["status", "greet", "tidy"];

    fn build(&self) -> Result<()> {
        let gear = gear();
        let dir = gear.runtime_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::from(e).context(format!("creating {}", dir.display())))?;
        let index = dir.join("index.html");
        std::fs::write(&index, page(&gear))
            .map_err(|e| Error::from(e).context(format!("writing {}", index.display())))?;
        info!("build: wrote {}", index.display());
        // a deployed index.html is published beside the greeting
        let deployed = gear.repo_dir().join("index.html");
        if deployed.is_file() {
            let to = dir.join("deployed.html");
            std::fs::copy(&deployed, &to)
                .map_err(|e| Error::from(e).context(format!("copying {}", deployed.display())))?;
            info!(
                "build: published {} as {}",
                deployed.display(),
                to.display()
            );
        }
        Ok(())
    }

    fn start(&self) -> Result<()> {
        let gear = gear();
        let port = gear.port("http").unwrap_or(DEFAULT_PORT);
        let pid = Command::new("python3")
            .args(["-m", "http.server", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(gear.runtime_dir())
            .spawn(WEB, Restart::OnFailure)
            .map_err(|e| Error::from(e).context("cannot start `python3 -m http.server`"))?;
        info!(
            "start: serving {} on port {port} (pid {pid})",
            gear.runtime_dir().display()
        );
        Ok(())
    }

    fn stop(&self) -> Result<()> {
        match process::stop_gracefully(WEB, Duration::from_secs(5))? {
            Some(status) => info!("stop: the web server {status}"),
            None => info!("stop: the web server was not running"),
        }
        Ok(())
    }

    fn control(&self, action: &str, args: &[String]) -> Result<String> {
        match action {
            "status" => {
                let gear = gear();
                let built = gear.runtime_dir().join("index.html").is_file();
                let web = match process::processes().into_iter().find(|p| p.name == WEB) {
                    Some(p) => match p.pid {
                        Some(pid) => format!("{} (pid {pid})", p.state),
                        None => p.state.to_string(),
                    },
                    None => "not started".to_owned(),
                };
                Ok(format!(
                    "gear: {}\nbuilt: {}\nweb: {web}",
                    gear.name,
                    if built {
                        "yes"
                    } else {
                        "no (run the build hook)"
                    },
                ))
            }
            "greet" => {
                let name = if args.is_empty() {
                    "world".to_owned()
                } else {
                    args.join(" ")
                };
                Ok(greeting(&name, &gear().name))
            }
            "tidy" => {
                let (count, bytes) = remove_logs(&gear().logs_dir())?;
                Ok(if count == 0 {
                    "nothing to tidy".to_owned()
                } else {
                    format!("removed {count} log file(s), {bytes} bytes")
                })
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(Hello);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_names_the_gear() {
        assert_eq!(greeting("Ann", "blog"), "Hello, Ann, from gear blog!");
    }

    #[test]
    fn page_greets_visitors() {
        let gear = Gear {
            id: "g1".into(),
            name: "blog".into(),
            namespace: "ann".into(),
            cartridge: "hello".into(),
            home: "/gear".into(),
            endpoints: Vec::new(),
        };
        assert!(page(&gear).contains("<h1>Hello, visitor, from gear blog!</h1>"));
    }
}
