//! `[https]`: the frontend's TLS listener and the operator's certificate for
//! every gear's default name (`*.<domain>`). Off unless `listen` is set.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The HTTPS listener, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpsConfig {
    /// Where the frontend takes TLS connections.
    pub listen: String,
    /// The operator's certificate chain (PEM) for `*.<domain>`, with its key;
    /// none: only names with a certificate of their own (aliases) are served.
    pub certificate: Option<(PathBuf, PathBuf)>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawHttps {
    listen: Option<String>,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl RawHttps {
    /// The listener, or none when `listen` is unset; the error is the
    /// problem and what to do.
    pub(crate) fn resolve(self) -> Result<Option<HttpsConfig>, (String, &'static str)> {
        let certificate = match (self.certificate, self.key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err((
                    "`https.certificate` and `https.key` go together".into(),
                    "give both files (the certificate chain and its private key, PEM), or neither",
                ));
            }
        };
        let Some(listen) = self.listen else {
            if certificate.is_some() {
                return Err((
                    "`[https]` names a certificate but no `listen` address".into(),
                    "add `listen = \"0.0.0.0:443\"`, or remove the section",
                ));
            }
            return Ok(None);
        };
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                format!("`https.listen` {listen:?} is not an address and port"),
                "use e.g. \"0.0.0.0:443\" or \"[::]:443\"",
            ));
        }
        if certificate
            .as_ref()
            .is_some_and(|(c, k)| !c.is_absolute() || !k.is_absolute())
        {
            return Err((
                "`https.certificate` and `https.key` must be absolute paths".into(),
                "give the files' full paths",
            ));
        }
        Ok(Some(HttpsConfig {
            listen,
            certificate,
        }))
    }
}
