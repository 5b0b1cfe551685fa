//! `[acme]`: where the frontend gets certificates for aliases that ask for
//! one (`gear alias add NAME HOST --acme`): an ACME server (RFC 8555), such as
//! Let's Encrypt or a private one. Off unless `directory` is set.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The ACME server, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcmeConfig {
    /// The server's directory URL.
    pub directory: String,
    /// A contact address for the account (none: no contact).
    pub email: Option<String>,
    /// A CA bundle (PEM) the server's own HTTPS certificate is checked
    /// against, for a private server; none: the usual web roots.
    pub ca: Option<PathBuf>,
    /// A certificate is renewed when it has less than this left.
    pub renew_before: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawAcme {
    directory: Option<String>,
    email: Option<String>,
    ca: Option<PathBuf>,
    renew_before: Option<String>,
}

impl RawAcme {
    /// The server, or none when `directory` is unset; the error is the
    /// problem and what to do.
    pub(crate) fn resolve(self) -> Result<Option<AcmeConfig>, (String, &'static str)> {
        let Some(directory) = self.directory else {
            if self.email.is_some() || self.ca.is_some() || self.renew_before.is_some() {
                return Err((
                    "`[acme]` sets options but no `directory`".into(),
                    "add `directory = \"https://acme-v02.api.letsencrypt.org/directory\"` (or your server's), or remove the section",
                ));
            }
            return Ok(None);
        };
        if !directory.starts_with("https://") {
            return Err((
                format!("`acme.directory` {directory:?} is not an https:// URL"),
                "give the ACME server's directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory",
            ));
        }
        if self
            .email
            .as_ref()
            .is_some_and(|e| !e.contains('@') || e.contains(char::is_whitespace))
        {
            return Err((
                "`acme.email` is not an e-mail address".into(),
                "give an address such as ops@example.org, or leave it out",
            ));
        }
        if self.ca.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err((
                "`acme.ca` is not an absolute path".into(),
                "give the CA bundle's full path",
            ));
        }
        let renew_before = match &self.renew_before {
            None => Duration::from_secs(30 * 24 * 3600),
            Some(text) => humantime::parse_duration(text).map_err(|_| {
                (
                    format!("`acme.renew-before` {text:?} is not a duration"),
                    "write e.g. \"30days\"",
                )
            })?,
        };
        Ok(Some(AcmeConfig {
            directory,
            email: self.email,
            ca: self.ca,
            renew_before,
        }))
    }
}
