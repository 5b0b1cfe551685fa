//! [`Command`]: run a program inside the gear's sandbox, or start it as a
//! supervised process.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::__private::bindings::gearhost::cartridge::{host, types as wit};
use crate::{Error, HostError};

/// A program to run inside the gear's sandbox, built like
/// [`std::process::Command`].
///
/// The program must be allowed by the manifest: [`output`](Command::output),
/// [`status`](Command::status) and [`run`](Command::run) need it in
/// `permissions.exec`, [`spawn`](Command::spawn) in `permissions.spawn`. It is
/// either an absolute path or a bare name looked up in the gear's `PATH`. It
/// runs with the gear's environment plus what [`env`](Command::env) adds, in
/// the gear's repo directory unless [`current_dir`](Command::current_dir)
/// says otherwise.
///
/// ```no_run
/// use std::time::Duration;
///
/// use gearhost_sdk::{Command, Restart};
///
/// # fn main() -> gearhost_sdk::Result<()> {
/// let out = Command::new("python3")
///     .arg("--version")
///     .timeout(Duration::from_secs(5))
///     .output()?;
/// println!("{}", out.stdout_str().trim());
///
/// let pid = Command::new("python3")
///     .args(["-m", "http.server", "8080"])
///     .env("PYTHONUNBUFFERED", "1")
///     .current_dir("/gear/app-root/runtime")
///     .spawn("web", Restart::OnFailure)?;
/// # let _ = pid;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Command {
    /// A command that runs `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout: None,
        }
    }

    /// Adds one argument.
    pub fn arg(&mut self, arg: impl Into<String>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for this program, on top of the gear's
    /// environment.
    pub fn env(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Runs the program in `dir`, a path inside the gear (default: the gear's
    /// repo directory).
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_string_lossy().into_owned());
        self
    }

    /// Feeds `bytes` to the program's standard input (exec only; a spawned
    /// process gets an empty standard input).
    pub fn stdin(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Kills the program if it runs longer than `timeout` (exec only; the
    /// hook's own budget applies in any case). Resolution is a millisecond.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = Some(timeout);
        self
    }

    /// The program to run.
    pub fn get_program(&self) -> &str {
        &self.program
    }

    /// The arguments, not including the program.
    pub fn get_args(&self) -> &[String] {
        &self.args
    }

    /// Runs the program to completion and collects what it wrote.
    ///
    /// A program that runs but fails is still `Ok`: look at
    /// [`Output::status`], or use [`run`](Command::run).
    ///
    /// # Errors
    ///
    /// The host's refusal: [`HostError::PermissionDenied`] when the manifest
    /// does not allow the program, [`HostError::NotFound`] when it does not
    /// exist, [`HostError::Unavailable`] when the host cannot run programs
    /// here (standalone `gear cartridge call`), and so on.
    pub fn output(&self) -> Result<Output, HostError> {
        let out = host::exec(&self.to_wit())?;
        Ok(Output {
            status: out.status.into(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Runs the program to completion and returns only how it ended.
    ///
    /// # Errors
    ///
    /// As for [`output`](Command::output).
    pub fn status(&self) -> Result<ExitStatus, HostError> {
        self.output().map(|o| o.status)
    }

    /// Runs the program to completion and requires it to succeed.
    ///
    /// # Errors
    ///
    /// The host's refusal mapped to a hook [`Error`], or code
    /// `command-failed` when the program exits unsuccessfully, with the tail
    /// of its standard error in the message.
    pub fn run(&self) -> Result<Output, Error> {
        let out = self.output()?;
        if out.status.success() {
            return Ok(out);
        }
        let stderr = out.stderr_str();
        let tail: Vec<&str> = stderr.trim_end().lines().rev().take(10).collect();
        let mut message = format!("`{self}` {}", out.status);
        if !tail.is_empty() {
            message.push_str(":\n");
            message.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        Err(Error::new("command-failed", message))
    }

    /// Starts the program as a named, supervised, long-running process of the
    /// gear and returns its pid. The supervisor restarts it according to
    /// `restart`, and it keeps running after the hook returns.
    ///
    /// # Errors
    ///
    /// The host's refusal, e.g. [`HostError::PermissionDenied`] when the
    /// program is not in `permissions.spawn`, or an error when a process with
    /// this name is already running.
    pub fn spawn(&self, name: &str, restart: Restart) -> Result<u32, HostError> {
        host::spawn(name, &self.to_wit(), restart.into()).map_err(Into::into)
    }

    fn to_wit(&self) -> wit::Command {
        wit::Command {
            program: self.program.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            stdin: self.stdin.clone(),
            timeout_ms: self
                .timeout
                .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX)),
        }
    }
}

impl fmt::Display for Command {
    /// The command line, quoted where a word needs it.
    ///
    /// ```
    /// let mut cmd = gearhost_sdk::Command::new("echo");
    /// cmd.args(["hello", "big world"]);
    /// assert_eq!(cmd.to_string(), "echo hello 'big world'");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn word(f: &mut fmt::Formatter<'_>, w: &str) -> fmt::Result {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                f.write_str(w)
            } else {
                write!(f, "'{}'", w.replace('\'', r"'\''"))
            }
        }
        word(f, &self.program)?;
        for a in &self.args {
            f.write_str(" ")?;
            word(f, a)?;
        }
        Ok(())
    }
}

/// What an exec'd program did: how it ended and everything it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard output as text; invalid UTF-8 is replaced with `U+FFFD`.
    pub fn stdout_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    /// Standard error as text; invalid UTF-8 is replaced with `U+FFFD`.
    pub fn stderr_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }
}

/// How a process ended.
///
/// ```
/// use gearhost_sdk::ExitStatus;
///
/// assert!(ExitStatus::Exited(0).success());
/// assert_eq!(ExitStatus::Exited(3).code(), Some(3));
/// assert_eq!(ExitStatus::Signaled(9).signal(), Some(9));
/// assert_eq!(ExitStatus::Signaled(9).to_string(), "was killed by signal 9");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal number.
    Signaled(i32),
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }

    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            Self::Exited(c) => Some(c),
            Self::Signaled(_) => None,
        }
    }

    /// The signal number, if it was killed by a signal.
    pub fn signal(self) -> Option<i32> {
        match self {
            Self::Exited(_) => None,
            Self::Signaled(s) => Some(s),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "exited with code {c}"),
            Self::Signaled(s) => write!(f, "was killed by signal {s}"),
        }
    }
}

impl From<wit::ExitStatus> for ExitStatus {
    fn from(s: wit::ExitStatus) -> Self {
        match s {
            wit::ExitStatus::Exited(c) => Self::Exited(c),
            wit::ExitStatus::Signaled(s) => Self::Signaled(s),
        }
    }
}

/// When the supervisor restarts a spawned process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Never: it runs once.
    Never,
    /// Only when it exits unsuccessfully or is killed.
    OnFailure,
    /// Whenever it exits.
    Always,
}

impl From<Restart> for wit::RestartPolicy {
    fn from(r: Restart) -> Self {
        match r {
            Restart::Never => Self::Never,
            Restart::OnFailure => Self::OnFailure,
            Restart::Always => Self::Always,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_collects_everything() {
        let mut cmd = Command::new("python3");
        cmd.arg("-m")
            .args(["http.server", "8080"])
            .env("A", "1")
            .envs([("B", "2")])
            .current_dir("/gear/app-root/runtime")
            .stdin("input")
            .timeout(Duration::from_secs(2));
        let w = cmd.to_wit();
        assert_eq!(w.program, "python3");
        assert_eq!(w.args, ["-m", "http.server", "8080"]);
        assert_eq!(
            w.env,
            [("A".to_owned(), "1".to_owned()), ("B".into(), "2".into())]
        );
        assert_eq!(w.cwd.as_deref(), Some("/gear/app-root/runtime"));
        assert_eq!(w.stdin.as_deref(), Some(&b"input"[..]));
        assert_eq!(w.timeout_ms, Some(2000));
    }

    #[test]
    fn huge_timeouts_saturate() {
        let w = Command::new("x").timeout(Duration::MAX).to_wit();
        assert_eq!(w.timeout_ms, Some(u32::MAX));
    }

    #[test]
    fn display_quotes_awkward_words() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'hi'", ""]);
        assert_eq!(cmd.to_string(), r"sh -c 'echo '\''hi'\''' ''");
    }
}
