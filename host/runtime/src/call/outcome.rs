//! What a hook call reports: which hook ([`HookCall`]), how it ended
//! ([`HookError`]), what it logged and asked of the host, and the bounded
//! [`Record`] those are collected in while the call runs.

use std::time::Duration;

use serde::Serialize;

use crate::host::{HookKind, LogLevel, LogSource, Signal};
use crate::manifest::format_size;

/// Most log lines recorded in one call's report (all still reach the host).
const REPORT_LOG_CAP: usize = 1000;
/// Most host requests recorded in one call's report.
const REPORT_REQUEST_CAP: usize = 1000;
/// Most bytes of text (log messages, request arguments) a call's report
/// holds: a hook's report lives in the node's memory until the call ends.
const REPORT_BYTES_CAP: usize = 1 << 20;

/// Which hook to call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookCall {
    /// `build()`
    Build,
    /// `start()`
    Start,
    /// `stop()`
    Stop,
    /// `control(action, args)`
    Control {
        /// Action name.
        action: String,
        /// Arguments.
        args: Vec<String>,
    },
}

impl HookCall {
    /// The hook this calls.
    pub fn kind(&self) -> HookKind {
        match self {
            HookCall::Build => HookKind::Build,
            HookCall::Start => HookKind::Start,
            HookCall::Stop => HookKind::Stop,
            HookCall::Control { .. } => HookKind::Control,
        }
    }
}

/// A permission check that failed during a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// `exec` or `spawn`.
    pub request: &'static str,
    /// The program asked for.
    pub program: String,
    /// The manifest field that would have to allow it.
    pub field: &'static str,
}

/// Something a hook asked the host to do, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum HostRequest {
    /// `env-set`
    EnvSet {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// `ok` or the error.
        outcome: String,
    },
    /// `env-unset`
    EnvUnset {
        /// Key.
        key: String,
        /// `ok` or the error.
        outcome: String,
    },
    /// `exec`
    Exec {
        /// Program.
        program: String,
        /// Arguments.
        args: Vec<String>,
        /// Exit status or the error.
        outcome: String,
    },
    /// `spawn`
    Spawn {
        /// Process name.
        name: String,
        /// Program.
        program: String,
        /// Arguments.
        args: Vec<String>,
        /// Pid or the error.
        outcome: String,
    },
    /// `signal`
    Signal {
        /// Process name.
        name: String,
        /// Signal.
        signal: Signal,
        /// `ok` or the error.
        outcome: String,
    },
    /// `wait`
    Wait {
        /// Process name.
        name: String,
        /// Timeout in milliseconds.
        timeout_ms: u32,
        /// Exit status, `running`, or the error.
        outcome: String,
    },
}

/// A log line captured during a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// `host.log`, stdout or stderr.
    pub source: LogSource,
    /// Severity.
    pub level: LogLevel,
    /// Text.
    pub message: String,
}

/// How a hook call ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HookError {
    /// The hook returned an error value.
    #[error("the {hook} hook of cartridge {cartridge} failed ({code}): {message}")]
    Failed {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// The cartridge's error code.
        code: String,
        /// The cartridge's message.
        message: String,
    },
    /// The hook asked for something its manifest does not allow, and failed.
    #[error(
        "the {hook} hook of cartridge {cartridge} was refused {}: {message}; if the cartridge really needs it, add it to its cartridge.toml",
        describe_denials(denials)
    )]
    PermissionDenied {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// What was refused.
        denials: Vec<Denial>,
        /// The hook's own message, or the trap.
        message: String,
    },
    /// The hook trapped (a panic, an unreachable, a bad memory access).
    #[error("the {hook} hook of cartridge {cartridge} crashed: {trap}; this is a bug in the cartridge, report it with the backtrace below to its author{}", backtrace.as_deref().map(|b| format!("\n{b}")).unwrap_or_default())]
    Trapped {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// The trap and the guest's last words on stderr (e.g. its panic message).
        trap: String,
        /// The wasm backtrace, when available.
        backtrace: Option<String>,
    },
    /// The hook ran past its wall-clock budget and was stopped.
    #[error("the {hook} hook of cartridge {cartridge} ran past its {} budget and was stopped; make the hook finish sooner, or raise `limits.{}` in its cartridge.toml (the node caps it at {})", humantime::format_duration(*budget), limit_field(*hook), humantime::format_duration(*ceiling))]
    DeadlineExceeded {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// The budget it had.
        #[serde(serialize_with = "serialize_duration")]
        budget: Duration,
        /// The node's ceiling for such budgets.
        #[serde(serialize_with = "serialize_duration")]
        ceiling: Duration,
    },
    /// The hook tried to grow its memory past its cap and was stopped.
    #[error("the {hook} hook of cartridge {cartridge} tried to use more than its {} of memory and was stopped; reduce what it keeps in memory, or raise `limits.memory` in its cartridge.toml", format_size(*limit))]
    MemoryLimitExceeded {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// The cap, in bytes.
        limit: u64,
    },
    /// The hook was stopped from outside before it finished (its caller
    /// cancelled it, e.g. `gear stop` of a gear whose deploy was running).
    #[error("the {hook} hook of cartridge {cartridge} was stopped before it finished: {reason}")]
    Cancelled {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// Why it was stopped.
        reason: String,
    },
    /// The host could not run the hook at all.
    #[error("cannot run the {hook} hook of cartridge {cartridge}: {message}")]
    Host {
        /// Cartridge name.
        cartridge: String,
        /// Hook.
        hook: HookKind,
        /// What went wrong.
        message: String,
    },
}

fn limit_field(hook: HookKind) -> &'static str {
    if hook == HookKind::Build {
        "build-timeout"
    } else {
        "timeout"
    }
}

fn describe_denials(denials: &[Denial]) -> String {
    denials
        .iter()
        .map(|d| format!("{} of {:?} (not in {})", d.request, d.program, d.field))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Serialize a duration as milliseconds with a fraction.
pub(crate) fn serialize_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

pub(super) fn serialize_option_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize_duration(d, s),
        None => s.serialize_none(),
    }
}

/// Everything about one finished hook call.
#[derive(Debug, Clone, Serialize)]
pub struct HookOutcome {
    /// The hook.
    pub hook: HookKind,
    /// `Ok(output)` (the `control` text; empty for other hooks) or how it failed.
    pub result: Result<String, HookError>,
    /// What it logged (`host.log`, stdout, stderr), capped.
    pub logs: Vec<LogLine>,
    /// What it asked the host to do.
    pub requests: Vec<HostRequest>,
    /// Permission checks that failed.
    pub denials: Vec<Denial>,
    /// Wall-clock time of the call, instantiation included.
    #[serde(rename = "elapsed_ms", serialize_with = "serialize_duration")]
    pub elapsed: Duration,
    /// Of which: preparing the store (WASI context, limits).
    #[serde(rename = "setup_ms", serialize_with = "serialize_duration")]
    pub setup: Duration,
    /// Of which: instantiating the component, when it got that far.
    #[serde(
        rename = "instantiate_ms",
        serialize_with = "serialize_option_duration"
    )]
    pub instantiate: Option<Duration>,
    /// Of which: waiting on the host for what the hook asked of it (programs
    /// run with `exec`, processes started with `spawn`, `wait`, `signal`).
    /// The rest of `elapsed` is the hook machinery and the hook's own code.
    #[serde(rename = "host_calls_ms", serialize_with = "serialize_duration")]
    pub host_calls: Duration,
}

#[derive(Debug, Default)]
pub(super) struct Record {
    pub(super) logs: Vec<LogLine>,
    pub(super) requests: Vec<HostRequest>,
    pub(super) denials: Vec<Denial>,
    pub(super) stderr_tail: Vec<String>,
    pub(super) dropped_log_lines: usize,
    pub(super) dropped_requests: usize,
    /// Bytes of text held in `logs` and `requests`.
    bytes: usize,
    pub(super) host_calls: Duration,
}

impl Record {
    pub(super) fn log(&mut self, source: LogSource, level: LogLevel, message: String) {
        if source == LogSource::Stderr {
            if self.stderr_tail.len() == 20 {
                self.stderr_tail.remove(0);
            }
            self.stderr_tail.push(message.clone());
        }
        if self.logs.len() < REPORT_LOG_CAP && self.bytes + message.len() <= REPORT_BYTES_CAP {
            self.bytes += message.len();
            self.logs.push(LogLine {
                source,
                level,
                message,
            });
        } else {
            self.dropped_log_lines += 1;
        }
    }

    pub(super) fn request(&mut self, request: HostRequest) {
        let weight = request.text_len();
        if self.requests.len() < REPORT_REQUEST_CAP && self.bytes + weight <= REPORT_BYTES_CAP {
            self.bytes += weight;
            self.requests.push(request);
        } else {
            self.dropped_requests += 1;
        }
    }
}

impl HostRequest {
    /// How many bytes of text the request holds.
    fn text_len(&self) -> usize {
        let args = |a: &[String]| a.iter().map(String::len).sum::<usize>();
        match self {
            HostRequest::EnvSet {
                key,
                value,
                outcome,
            } => key.len() + value.len() + outcome.len(),
            HostRequest::EnvUnset { key, outcome } => key.len() + outcome.len(),
            HostRequest::Exec {
                program,
                args: a,
                outcome,
            } => program.len() + args(a) + outcome.len(),
            HostRequest::Spawn {
                name,
                program,
                args: a,
                outcome,
            } => name.len() + program.len() + args(a) + outcome.len(),
            HostRequest::Signal { name, outcome, .. } | HostRequest::Wait { name, outcome, .. } => {
                name.len() + outcome.len()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calls_report_holds_a_bounded_amount_of_text() {
        let mut record = Record::default();
        let big = "x".repeat(64 * 1024);
        for _ in 0..100 {
            record.request(HostRequest::EnvSet {
                key: "K".into(),
                value: big.clone(),
                outcome: "ok".into(),
            });
            record.log(LogSource::Hook, LogLevel::Info, big.clone());
        }
        assert!(record.bytes <= REPORT_BYTES_CAP, "{}", record.bytes);
        // 1 MiB holds 15 of them, whatever their kind
        assert_eq!(record.requests.len() + record.logs.len(), 15);
        assert_eq!(record.dropped_requests + record.dropped_log_lines, 185);
    }
}
