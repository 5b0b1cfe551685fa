//! Test cartridge that reaches every host import. Its `control` actions are
//! small, scriptable probes whose outputs the host's tests assert on exactly.

use std::time::Duration;

use gearhost_sdk::log::Level;
use gearhost_sdk::prelude::*;

#[derive(Default)]
struct Full;

/// `exited:<code>` or `signaled:<signal>`.
fn status_str(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(code) => format!("exited:{code}"),
        ExitStatus::Signaled(sig) => format!("signaled:{sig}"),
    }
}

/// The error for a malformed action call.
fn usage(usage: &str) -> Error {
    Error::new("bad-args", format!("usage: {usage}"))
}

/// Argument `i`, or a usage error.
fn arg<'a>(args: &'a [String], i: usize, usage_text: &str) -> Result<&'a str> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| usage(usage_text))
}

/// Arguments from `i` on, joined by spaces (at least one required).
fn rest(args: &[String], i: usize, usage_text: &str) -> Result<String> {
    match args.get(i..) {
        Some(r) if !r.is_empty() => Ok(r.join(" ")),
        _ => Err(usage(usage_text)),
    }
}

/// Creates a symbolic link at `link` pointing to `target`.
fn symlink(target: &str, link: &str) -> std::io::Result<()> {
    // The one stable std function that makes symlinks on every target,
    // WASI included (`std::os::wasi::fs::symlink_path` is still unstable).
    #[allow(deprecated)]
    std::fs::soft_link(target, link)
}

impl Cartridge for Full {
    const ACTIONS: &'static [&'static str] = &[
        "noop",
        "echo",
        "info",
        "env-set",
        "env-get",
        "env-unset",
        "env-list",
        "exec",
        "spawn",
        "signal",
        "wait",
        "processes",
        "read",
        "write",
        "list",
        "symlink",
        "log",
        "print",
        "fail",
    ];

    fn build(&self) -> Result<()> {
        info!("build: ok");
        env::set("FULL_BUILT", "1")?;
        Ok(())
    }

    fn start(&self) -> Result<()> {
        Command::new("sleep")
            .arg("1000")
            .spawn("web", Restart::OnFailure)?;
        Ok(())
    }

    fn stop(&self) -> Result<()> {
        process::stop_gracefully("web", Duration::from_secs(2))?;
        Ok(())
    }

    fn control(&self, action: &str, args: &[String]) -> Result<String> {
        match action {
            "noop" => Ok(String::new()),
            "echo" => Ok(args.join(" ")),
            "info" => {
                let g = gear();
                let endpoints: Vec<String> = g
                    .endpoints
                    .iter()
                    .map(|e| format!("{}:{}", e.name, e.private_port))
                    .collect();
                Ok(format!(
                    "id={} name={} namespace={} cartridge={} home={} endpoints={}",
                    g.id,
                    g.name,
                    g.namespace,
                    g.cartridge,
                    g.home.display(),
                    endpoints.join(",")
                ))
            }
            "env-set" => {
                let u = "env-set KEY VALUE";
                env::set(arg(args, 0, u)?, arg(args, 1, u)?)?;
                Ok("ok".into())
            }
            "env-get" => {
                let key = arg(args, 0, "env-get KEY")?;
                Ok(env::get(key).unwrap_or_else(|| "<unset>".into()))
            }
            "env-unset" => {
                env::unset(arg(args, 0, "env-unset KEY")?)?;
                Ok("ok".into())
            }
            "env-list" => {
                let lines: Vec<String> = env::list()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                Ok(lines.join("\n"))
            }
            "exec" => {
                let program = arg(args, 0, "exec PROGRAM [ARGS...]")?;
                let out = Command::new(program).args(&args[1..]).output()?;
                Ok(format!(
                    "status={}\nstdout={}\nstderr={}",
                    status_str(out.status),
                    out.stdout_str(),
                    out.stderr_str()
                ))
            }
            "spawn" => {
                let u = "spawn [--restart=never|on-failure|always] NAME PROGRAM [ARGS...]";
                let (restart, args) = match args.first().map(String::as_str) {
                    Some("--restart=never") => (Restart::Never, &args[1..]),
                    Some("--restart=on-failure") => (Restart::OnFailure, &args[1..]),
                    Some("--restart=always") => (Restart::Always, &args[1..]),
                    Some(a) if a.starts_with("--") => return Err(usage(u)),
                    _ => (Restart::Never, args),
                };
                let name = arg(args, 0, u)?;
                let program = arg(args, 1, u)?;
                let pid = Command::new(program)
                    .args(&args[2..])
                    .spawn(name, restart)?;
                Ok(format!("pid={pid}"))
            }
            "signal" => {
                let u = "signal NAME SIGNAL";
                let name = arg(args, 0, u)?;
                let sig: Signal = arg(args, 1, u)?.parse().map_err(
                    |e: gearhost_sdk::process::ParseSignalError| {
                        Error::new("bad-args", e.to_string())
                    },
                )?;
                process::signal(name, sig)?;
                Ok("ok".into())
            }
            "wait" => {
                let u = "wait NAME MILLISECONDS";
                let name = arg(args, 0, u)?;
                let ms: u64 = arg(args, 1, u)?.parse().map_err(|_| usage(u))?;
                Ok(match process::wait(name, Duration::from_millis(ms))? {
                    None => "running".into(),
                    Some(status) => status_str(status),
                })
            }
            "processes" => {
                let lines: Vec<String> = process::processes()
                    .iter()
                    .map(|p| format!("{} {} {}", p.name, p.state, p.restarts))
                    .collect();
                Ok(lines.join("\n"))
            }
            "read" => {
                let path = arg(args, 0, "read PATH")?;
                let bytes = std::fs::read(path)?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            "write" => {
                let u = "write PATH CONTENT";
                let path = arg(args, 0, u)?;
                std::fs::write(path, rest(args, 1, u)?)?;
                Ok("ok".into())
            }
            "list" => {
                let dir = arg(args, 0, "list DIR")?;
                let mut names = Vec::new();
                for entry in std::fs::read_dir(dir)? {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
                names.sort();
                Ok(names.join("\n"))
            }
            "symlink" => {
                let u = "symlink TARGET LINK";
                symlink(arg(args, 0, u)?, arg(args, 1, u)?)?;
                Ok("ok".into())
            }
            "log" => {
                let u = "log LEVEL MESSAGE";
                let level: Level =
                    arg(args, 0, u)?
                        .parse()
                        .map_err(|e: gearhost_sdk::log::ParseLevelError| {
                            Error::new("bad-args", e.to_string())
                        })?;
                gearhost_sdk::log::log(level, &rest(args, 1, u)?);
                Ok("ok".into())
            }
            "print" => {
                let message = rest(args, 0, "print MESSAGE")?;
                println!("{message}");
                eprintln!("err: {message}");
                Ok("ok".into())
            }
            "fail" => {
                let u = "fail CODE MESSAGE";
                Err(Error::new(arg(args, 0, u)?, rest(args, 1, u)?))
            }
            other => Err(Error::unknown_action(other, Self::ACTIONS)),
        }
    }
}

gearhost_sdk::export_cartridge!(Full);
