//! The host side of the contract's `host` interface (the bindings' `Host`
//! traits on [`HookState`]): every request a hook makes, checked against the
//! call's deadline and the manifest's permissions, recorded, and forwarded to
//! the [`GearHost`](crate::host::GearHost).

use std::time::{Duration, Instant};

use super::HookState;
use super::outcome::{Denial, HostRequest};
use crate::bindings::gearhost::cartridge::{host as wit, types as wt};
use crate::host::{
    CommandSpec, ExitStatus, HookKind, HostError, LogLevel, LogSource, ProcessState,
    RequestContext, RestartPolicy, Signal,
};

fn to_host_error(e: HostError) -> wt::HostError {
    match e {
        HostError::PermissionDenied(m) => wt::HostError::PermissionDenied(m),
        HostError::NotFound(m) => wt::HostError::NotFound(m),
        HostError::Invalid(m) => wt::HostError::Invalid(m),
        HostError::Unavailable(m) => wt::HostError::Unavailable(m),
        HostError::Failed(m) => wt::HostError::Failed(m),
    }
}

fn to_exit(s: ExitStatus) -> wt::ExitStatus {
    match s {
        ExitStatus::Exited(c) => wt::ExitStatus::Exited(c),
        ExitStatus::Signaled(s) => wt::ExitStatus::Signaled(s),
    }
}

fn from_level(l: wt::LogLevel) -> LogLevel {
    match l {
        wt::LogLevel::Trace => LogLevel::Trace,
        wt::LogLevel::Debug => LogLevel::Debug,
        wt::LogLevel::Info => LogLevel::Info,
        wt::LogLevel::Warn => LogLevel::Warn,
        wt::LogLevel::Error => LogLevel::Error,
    }
}

fn from_signal(s: wt::PosixSignal) -> Signal {
    match s {
        wt::PosixSignal::Hup => Signal::Hup,
        wt::PosixSignal::Int => Signal::Int,
        wt::PosixSignal::Quit => Signal::Quit,
        wt::PosixSignal::Kill => Signal::Kill,
        wt::PosixSignal::Usr1 => Signal::Usr1,
        wt::PosixSignal::Usr2 => Signal::Usr2,
        wt::PosixSignal::Term => Signal::Term,
        wt::PosixSignal::Cont => Signal::Cont,
        wt::PosixSignal::Stop => Signal::Stop,
    }
}

fn outcome<T: std::fmt::Display>(r: &Result<T, HostError>) -> String {
    match r {
        Ok(v) => v.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Most bytes a hook may hand the host in one command (args, env, stdin).
const MAX_COMMAND_BYTES: usize = 8 << 20;

impl HookState {
    /// Refuse requests with effects once the call is over in all but name: past its
    /// deadline or cancelled (the guest is about to be stopped; a thread the watchdog could
    /// not bring back in time must not change the gear after its caller moved on).
    fn still_running(&self) -> Result<(), HostError> {
        if self.cancel.is_cancelled() {
            return Err(HostError::Unavailable(
                "the hook was stopped; the host takes no more requests from it".into(),
            ));
        }
        if Instant::now() >= self.deadline {
            return Err(HostError::Unavailable(
                "the hook's time budget is spent; the host takes no more requests from it".into(),
            ));
        }
        Ok(())
    }

    fn command(&self, cmd: wt::Command) -> Result<CommandSpec, HostError> {
        if cmd.program.is_empty() {
            return Err(HostError::Invalid("the program is empty".into()));
        }
        let size = cmd.program.len()
            + cmd.args.iter().map(String::len).sum::<usize>()
            + cmd
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + cmd.stdin.as_ref().map_or(0, Vec::len);
        if size > MAX_COMMAND_BYTES {
            return Err(HostError::Invalid(
                "the command is larger than 8 MiB".into(),
            ));
        }
        if [&cmd.program]
            .into_iter()
            .chain(&cmd.args)
            .chain(cmd.env.iter().flat_map(|(k, v)| [k, v]))
            .any(|s| s.contains('\0'))
        {
            return Err(HostError::Invalid("the command contains a NUL byte".into()));
        }
        for (k, _) in &cmd.env {
            crate::host::check_env_key(k)?;
        }
        Ok(CommandSpec {
            program: cmd.program,
            args: cmd.args,
            env: cmd.env,
            cwd: cmd.cwd,
            stdin: cmd.stdin,
            timeout: cmd.timeout_ms.map(|ms| Duration::from_millis(ms.into())),
        })
    }

    fn check_permission(&self, request: &'static str, program: &str) -> Result<(), HostError> {
        let perms = &self.shared.manifest.permissions;
        let (list, field) = match request {
            "exec" => (&perms.exec, "permissions.exec"),
            _ => (&perms.spawn, "permissions.spawn"),
        };
        if list.allows(program) {
            return Ok(());
        }
        self.shared.record().denials.push(Denial {
            request,
            program: program.to_string(),
            field,
        });
        let allowed = if list.patterns().is_empty() {
            "nothing".to_string()
        } else {
            list.patterns().join(", ")
        };
        Err(HostError::PermissionDenied(format!(
            "{program:?} is not in {field} of cartridge {} (allowed: {allowed})",
            self.shared.manifest.name
        )))
    }

    fn request_context(&self) -> RequestContext {
        RequestContext {
            hook: self.shared.hook,
            network: self.shared.hook == HookKind::Build
                && self.shared.manifest.permissions.build_network,
        }
    }
}

impl wt::Host for HookState {}

impl wit::Host for HookState {
    async fn gear(&mut self) -> wt::GearInfo {
        let g = self.shared.host.gear();
        wt::GearInfo {
            id: g.id,
            name: g.name,
            namespace: g.namespace,
            cartridge: g.cartridge,
            home: g.home,
            endpoints: g
                .endpoints
                .into_iter()
                .map(|e| wt::Endpoint {
                    name: e.name,
                    private_port: e.private_port,
                    protocols: e.protocols,
                })
                .collect(),
        }
    }

    async fn log(&mut self, level: wt::LogLevel, message: String) {
        let message: String = message.chars().take(16 * 1024).collect();
        self.shared
            .log(LogSource::Hook, from_level(level), &message);
    }

    async fn env_get(&mut self, key: String) -> Option<String> {
        self.shared.host.env_get(&key)
    }

    async fn env_list(&mut self) -> Vec<(String, String)> {
        self.shared.host.env_list()
    }

    async fn env_set(&mut self, key: String, value: String) -> Result<(), wt::HostError> {
        let r = self
            .still_running()
            .and_then(|()| crate::host::check_env_key(&key))
            .and_then(|()| {
                if value.len() > 64 * 1024 || value.contains('\0') {
                    Err(HostError::Invalid(format!(
                        "the value of {key} is longer than 64 KiB or contains a NUL byte"
                    )))
                } else {
                    self.shared.host.env_set(&key, &value)
                }
            });
        self.shared.record().request(HostRequest::EnvSet {
            key,
            value,
            outcome: r.as_ref().map_or_else(|e| e.to_string(), |()| "ok".into()),
        });
        r.map_err(to_host_error)
    }

    async fn env_unset(&mut self, key: String) -> Result<(), wt::HostError> {
        let r = self
            .still_running()
            .and_then(|()| crate::host::check_env_key(&key))
            .and_then(|()| self.shared.host.env_unset(&key));
        self.shared.record().request(HostRequest::EnvUnset {
            key,
            outcome: r.as_ref().map_or_else(|e| e.to_string(), |()| "ok".into()),
        });
        r.map_err(to_host_error)
    }

    async fn exec(&mut self, cmd: wt::Command) -> Result<wt::ExecOutput, wt::HostError> {
        let program = cmd.program.clone();
        let args = cmd.args.clone();
        let r = match self.still_running().and_then(|()| self.command(cmd)) {
            Err(e) => Err(e),
            Ok(spec) => match self.check_permission("exec", &spec.program) {
                Err(e) => Err(e),
                Ok(()) => {
                    let started = Instant::now();
                    let r = self.shared.host.exec(self.request_context(), spec).await;
                    self.shared.record().host_calls += started.elapsed();
                    r
                }
            },
        };
        self.shared.record().request(HostRequest::Exec {
            program,
            args,
            outcome: match &r {
                Ok(out) => out.status.to_string(),
                Err(e) => e.to_string(),
            },
        });
        r.map(|out| wt::ExecOutput {
            status: to_exit(out.status),
            stdout: out.stdout,
            stderr: out.stderr,
        })
        .map_err(to_host_error)
    }

    async fn spawn(
        &mut self,
        name: String,
        cmd: wt::Command,
        restart: wt::RestartPolicy,
    ) -> Result<u32, wt::HostError> {
        let program = cmd.program.clone();
        let args = cmd.args.clone();
        let restart = match restart {
            wt::RestartPolicy::Never => RestartPolicy::Never,
            wt::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
            wt::RestartPolicy::Always => RestartPolicy::Always,
        };
        let r = match crate::manifest::check_name(&name, 32) {
            Err(problem) => Err(HostError::Invalid(format!(
                "process name {name:?}: {problem}"
            ))),
            Ok(()) => match self.still_running().and_then(|()| self.command(cmd)) {
                Err(e) => Err(e),
                Ok(spec) => match self.check_permission("spawn", &spec.program) {
                    Err(e) => Err(e),
                    Ok(()) => {
                        let started = Instant::now();
                        let r = self
                            .shared
                            .host
                            .spawn(self.request_context(), &name, spec, restart)
                            .await;
                        self.shared.record().host_calls += started.elapsed();
                        r
                    }
                },
            },
        };
        self.shared.record().request(HostRequest::Spawn {
            name,
            program,
            args,
            outcome: outcome(&r),
        });
        r.map_err(to_host_error)
    }

    async fn signal(&mut self, name: String, sig: wt::PosixSignal) -> Result<(), wt::HostError> {
        let signal = from_signal(sig);
        let started = Instant::now();
        let r = match self.still_running() {
            Ok(()) => self.shared.host.signal(&name, signal).await,
            Err(e) => Err(e),
        };
        self.shared.record().host_calls += started.elapsed();
        self.shared.record().request(HostRequest::Signal {
            name,
            signal,
            outcome: r.as_ref().map_or_else(|e| e.to_string(), |()| "ok".into()),
        });
        r.map_err(to_host_error)
    }

    async fn wait(
        &mut self,
        name: String,
        timeout_ms: u32,
    ) -> Result<Option<wt::ExitStatus>, wt::HostError> {
        // never wait past the hook's own deadline
        let left = self.deadline.saturating_duration_since(Instant::now());
        let timeout = Duration::from_millis(timeout_ms.into()).min(left);
        let started = Instant::now();
        let r = match self.still_running() {
            Ok(()) => self.shared.host.wait(&name, timeout).await,
            Err(e) => Err(e),
        };
        self.shared.record().host_calls += started.elapsed();
        self.shared.record().request(HostRequest::Wait {
            name,
            timeout_ms,
            outcome: match &r {
                Ok(Some(s)) => s.to_string(),
                Ok(None) => "running".into(),
                Err(e) => e.to_string(),
            },
        });
        r.map(|s| s.map(to_exit)).map_err(to_host_error)
    }

    async fn processes(&mut self) -> Vec<wt::ProcessInfo> {
        self.shared
            .host
            .processes()
            .into_iter()
            .map(|p| wt::ProcessInfo {
                name: p.name,
                pid: p.pid,
                state: match p.state {
                    ProcessState::Starting => wt::ProcessState::Starting,
                    ProcessState::Running => wt::ProcessState::Running,
                    ProcessState::Backoff => wt::ProcessState::Backoff,
                    ProcessState::Stopped => wt::ProcessState::Stopped,
                    ProcessState::Exited => wt::ProcessState::Exited,
                    ProcessState::Failed => wt::ProcessState::Failed,
                },
                restarts: p.restarts,
                last_exit: p.last_exit.map(to_exit),
            })
            .collect()
    }
}
