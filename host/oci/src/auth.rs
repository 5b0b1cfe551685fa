//! Registry credentials, found where Docker keeps them: a file the caller
//! names, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`;
//! in it, `auths.<registry>.auth` (base64 of `user:password`) or
//! `username` and `password`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::OciError;

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The credentials for `registry` from `file`, or from Docker's usual
/// places when `file` is `None`; `Ok(None)` when there are none (an
/// anonymous pull or push).
pub fn credentials_for(
    registry: &str,
    file: Option<&Path>,
) -> Result<Option<Credentials>, OciError> {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => match default_file() {
            Some(p) if p.exists() => p,
            _ => return Ok(None),
        },
    };
    let text = std::fs::read(&path)
        .map_err(|e| OciError::Credentials(format!("cannot read {}: {e}", path.display())))?;
    let config: DockerConfig = serde_json::from_slice(&text).map_err(|e| {
        OciError::Credentials(format!(
            "{} is not a Docker config file: {e}",
            path.display()
        ))
    })?;
    let wanted = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| wanted.iter().any(|w| k.trim_end_matches('/') == w))
        .map(|(_, e)| e)
    else {
        if let Some(store) = &config.creds_store {
            return Err(OciError::Credentials(format!(
                "{} keeps credentials in the helper docker-credential-{store}, which gear does not run; \
                 write them to a file (`auths`) and name it with --auth-file",
                path.display()
            )));
        }
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    let Some(encoded) = &entry.auth else {
        return Ok(None);
    };
    let decoded = gearhost_sys::base64::decode(encoded.trim())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            OciError::Credentials(format!(
                "the credentials for {registry} in {} are not base64 of user:password",
                path.display()
            ))
        })?;
    let (username, password) = decoded.split_once(':').ok_or_else(|| {
        OciError::Credentials(format!(
            "the credentials for {registry} in {} have no user:password",
            path.display()
        ))
    })?;
    Ok(Some(Credentials {
        username: username.to_string(),
        password: password.to_string(),
    }))
}

fn default_file() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_auths_of_a_docker_config() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("config.json");
        // "ops:s3cret"
        std::fs::write(
            &file,
            r#"{"auths":{"https://127.0.0.1:5000":{"auth":"b3BzOnMzY3JldA=="},
                "other:5000":{"username":"u","password":"p"}}}"#,
        )
        .expect("write");
        let c = credentials_for("127.0.0.1:5000", Some(&file))
            .expect("reads")
            .expect("found");
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("ops", "s3cret")
        );
        let c = credentials_for("other:5000", Some(&file))
            .expect("reads")
            .expect("found");
        assert_eq!(c.username, "u");
        assert!(
            credentials_for("third:5000", Some(&file))
                .expect("reads")
                .is_none()
        );
        assert!(
            !format!("{c:?}").contains('p'),
            "the password is not printed"
        );
        std::fs::write(&file, r#"{"credsStore":"desktop"}"#).expect("write");
        let e = credentials_for("third:5000", Some(&file)).expect_err("a helper");
        assert!(e.to_string().contains("--auth-file"), "{e}");
        std::fs::write(&file, "not json").expect("write");
        assert!(credentials_for("x", Some(&file)).is_err());
    }
}
