//! Typed errors: [`Error`] is what a hook returns, [`HostError`] is what the
//! host answers when it refuses or fails a request.

use std::fmt;

use crate::__private::bindings::gearhost::cartridge::types as wit;

/// The result type of hooks and of most SDK helpers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A hook failure: a short, stable `code` for machines and a `message` for
/// people.
///
/// Returning `Err(Error)` from a hook is the normal way to fail: the host shows
/// the message to the user and keeps the gear as it was. (A panic is different:
/// the host reports it as a crash of the cartridge.)
///
/// Errors from the host convert with `?`, each [`HostError`] variant mapping to
/// a stable code (see [`HostError::code`]); I/O errors from `std` become code
/// `io`.
///
/// ```
/// use gearhost_sdk::{Error, HostError};
///
/// let e = Error::new("bad-config", "`port` must be a number; fix it in the gear's env");
/// assert_eq!(e.code(), "bad-config");
///
/// let e = Error::from(HostError::PermissionDenied("`sh` is not in permissions.exec".into()));
/// assert_eq!(e.code(), "permission-denied");
/// assert_eq!(e.message(), "`sh` is not in permissions.exec");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: String,
    message: String,
}

impl Error {
    /// An error with a machine-readable `code` (lower-case, dash-separated,
    /// e.g. `missing-file`) and a `message` that says what went wrong and what
    /// to do about it.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The error for a `control` action this cartridge does not implement,
    /// with code `unknown-action` and a message listing the `supported` ones.
    ///
    /// ```
    /// use gearhost_sdk::Error;
    ///
    /// let e = Error::unknown_action("reboot", &["status", "tidy"]);
    /// assert_eq!(e.code(), "unknown-action");
    /// assert_eq!(
    ///     e.message(),
    ///     "unknown action `reboot`; this cartridge supports: status, tidy"
    /// );
    /// ```
    pub fn unknown_action(action: &str, supported: &[&str]) -> Self {
        let message = if supported.is_empty() {
            format!("unknown action `{action}`; this cartridge has no control actions")
        } else {
            format!(
                "unknown action `{action}`; this cartridge supports: {}",
                supported.join(", ")
            )
        };
        Self::new("unknown-action", message)
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what was being done, keeping the code.
    ///
    /// ```
    /// use gearhost_sdk::Error;
    ///
    /// let e = Error::new("io", "No such file or directory").context("reading app.conf");
    /// assert_eq!(e.message(), "reading app.conf: No such file or directory");
    /// ```
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Error {}

impl From<HostError> for Error {
    fn from(e: HostError) -> Self {
        Self::new(e.code(), e.into_message())
    }
}

impl From<std::io::Error> for Error {
    /// Code `io`, with the operating system's description as the message.
    fn from(e: std::io::Error) -> Self {
        Self::new("io", e.to_string())
    }
}

impl From<Error> for wit::HookError {
    fn from(e: Error) -> Self {
        Self {
            code: e.code,
            message: e.message,
        }
    }
}

/// Why the host refused or could not do what a hook asked. Mirrors the WIT
/// `host-error` variant; each payload is the host's explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The cartridge's manifest does not allow this (e.g. a program that is
    /// not listed in `permissions.exec`). Code `permission-denied`.
    PermissionDenied(String),
    /// The thing named does not exist (a process name, a program).
    /// Code `not-found`.
    NotFound(String),
    /// The request itself is malformed (an empty program, a bad env key).
    /// Code `invalid`.
    Invalid(String),
    /// The host cannot do this here, e.g. no sandbox is available when a hook
    /// runs standalone under `gear cartridge call`. Code `unavailable`.
    Unavailable(String),
    /// The host tried and failed (an I/O error, a start-up failure).
    /// Code `host-failed`.
    Failed(String),
}

impl HostError {
    /// The stable code this error maps to in a hook [`Error`]:
    /// `permission-denied`, `not-found`, `invalid`, `unavailable` or
    /// `host-failed`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::PermissionDenied(_) => "permission-denied",
            Self::NotFound(_) => "not-found",
            Self::Invalid(_) => "invalid",
            Self::Unavailable(_) => "unavailable",
            Self::Failed(_) => "host-failed",
        }
    }

    /// The host's explanation.
    pub fn message(&self) -> &str {
        match self {
            Self::PermissionDenied(m)
            | Self::NotFound(m)
            | Self::Invalid(m)
            | Self::Unavailable(m)
            | Self::Failed(m) => m,
        }
    }

    fn into_message(self) -> String {
        match self {
            Self::PermissionDenied(m)
            | Self::NotFound(m)
            | Self::Invalid(m)
            | Self::Unavailable(m)
            | Self::Failed(m) => m,
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Self::PermissionDenied(_) => "permission denied",
            Self::NotFound(_) => "not found",
            Self::Invalid(_) => "invalid request",
            Self::Unavailable(_) => "unavailable",
            Self::Failed(_) => "host failed",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for HostError {}

impl From<wit::HostError> for HostError {
    fn from(e: wit::HostError) -> Self {
        match e {
            wit::HostError::PermissionDenied(m) => Self::PermissionDenied(m),
            wit::HostError::NotFound(m) => Self::NotFound(m),
            wit::HostError::Invalid(m) => Self::Invalid(m),
            wit::HostError::Unavailable(m) => Self::Unavailable(m),
            wit::HostError::Failed(m) => Self::Failed(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_errors_map_to_stable_codes() {
        let cases = [
            (HostError::PermissionDenied("a".into()), "permission-denied"),
            (HostError::NotFound("b".into()), "not-found"),
            (HostError::Invalid("c".into()), "invalid"),
            (HostError::Unavailable("d".into()), "unavailable"),
            (HostError::Failed("e".into()), "host-failed"),
        ];
        for (host, code) in cases {
            let message = host.message().to_owned();
            let e = Error::from(host);
            assert_eq!(e.code(), code);
            assert_eq!(e.message(), message);
        }
    }

    #[test]
    fn io_errors_have_code_io() {
        let e = Error::from(std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
        assert_eq!(e.code(), "io");
        assert_eq!(e.message(), "gone");
    }

    #[test]
    fn display_shows_message_then_code() {
        let e = Error::new("bad-config", "port is not a number");
        assert_eq!(e.to_string(), "port is not a number (bad-config)");
        let h = HostError::Unavailable("no sandbox here".into());
        assert_eq!(h.to_string(), "unavailable: no sandbox here");
    }
}
