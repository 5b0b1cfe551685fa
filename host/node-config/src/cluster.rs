//! `[cluster]`: the node as a member of a cluster of nodes that agree through
//! etcd (membership, the uid/MCS district, gear names and placement). Off
//! unless the section lists etcd endpoints; a node without it is the
//! standalone node it always was.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The node's cluster membership, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    /// The etcd endpoints (`http://host:port`), any member of the etcd cluster.
    pub etcd: Vec<String>,
    /// This node's name in the cluster: unique, stable across restarts.
    pub node_name: String,
    /// Where other nodes reach this one (node-to-node traffic).
    pub listen: std::net::SocketAddr,
    /// The file holding the secret every node of the cluster shares, which
    /// authenticates node-to-node traffic (root-owned, not readable by others).
    pub secret_file: PathBuf,
    /// The prefix of every key the cluster keeps in etcd, so that several
    /// clusters (or other tools) can share one etcd.
    pub prefix: String,
    /// How long the node's lease lives without a heartbeat: after that the
    /// cluster counts the node as gone.
    pub lease_ttl: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawCluster {
    etcd: Option<Vec<String>>,
    node_name: Option<String>,
    listen: Option<String>,
    secret_file: Option<PathBuf>,
    prefix: Option<String>,
    lease_ttl: Option<String>,
}

/// A node name: lower-case letters, digits and `-`, starting with a letter,
/// at most 63 characters (it is used in keys and host names).
pub fn valid_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl RawCluster {
    /// The membership, or none when no etcd endpoint is given; the error is
    /// the problem and what to do.
    pub(crate) fn resolve(self) -> Result<Option<ClusterConfig>, (String, &'static str)> {
        let Some(etcd) = self.etcd else {
            if self.node_name.is_some() || self.listen.is_some() || self.secret_file.is_some() {
                return Err((
                    "`[cluster]` sets options but no `etcd` endpoints".into(),
                    "add `etcd = [\"http://10.0.0.1:2379\", ...]` to join a cluster, or remove the section",
                ));
            }
            return Ok(None);
        };
        if etcd.is_empty() {
            return Err((
                "`cluster.etcd` lists no endpoint".into(),
                "list at least one member of the etcd cluster, e.g. [\"http://10.0.0.1:2379\"]",
            ));
        }
        for endpoint in &etcd {
            let rest = endpoint
                .strip_prefix("http://")
                .or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
                return Err((
                    format!("`cluster.etcd` endpoint {endpoint:?} is not http://HOST:PORT"),
                    "write each endpoint as http://HOST:PORT (the client URL of an etcd member)",
                ));
            }
        }
        let node_name = self.node_name.ok_or((
            "`[cluster]` has no `node-name`".to_string(),
            "give the node a name unique in the cluster, e.g. `node-name = \"node-a\"`",
        ))?;
        if !valid_node_name(&node_name) {
            return Err((
                format!("`cluster.node-name` {node_name:?} is not a usable node name"),
                "use lower-case letters, digits and - (at most 63), starting with a letter",
            ));
        }
        let listen = self.listen.ok_or((
            "`[cluster]` has no `listen` address".to_string(),
            "give the address other nodes reach this one at, e.g. `listen = \"10.0.0.1:7701\"`",
        ))?;
        let listen = listen.parse().map_err(|_| {
            (
                format!("`cluster.listen` {listen:?} is not an address and port"),
                "use e.g. \"10.0.0.1:7701\" (an address the other nodes can reach, not 0.0.0.0)",
            )
        })?;
        let secret_file = self.secret_file.ok_or((
            "`[cluster]` has no `secret-file`".to_string(),
            "create a file of at least 32 random bytes, the same on every node (e.g. `head -c 48 /dev/urandom | base64 > /etc/gearhost/cluster.secret; chmod 600 ...`), and name it in `secret-file`",
        ))?;
        if !secret_file.is_absolute() {
            return Err((
                "`cluster.secret-file` is not an absolute path".into(),
                "give the file's full path",
            ));
        }
        let prefix = self.prefix.unwrap_or_else(|| "/gearhost".into());
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            return Err((
                format!("`cluster.prefix` {prefix:?} is not a key prefix"),
                "use a path-like prefix such as \"/gearhost\" (leading /, no trailing /)",
            ));
        }
        let lease_ttl = match self.lease_ttl {
            None => Duration::from_secs(10),
            Some(text) => humantime::parse_duration(&text)
                .ok()
                .filter(|d| (Duration::from_secs(2)..=Duration::from_secs(300)).contains(d))
                .ok_or((
                    format!("`cluster.lease-ttl` {text:?} is not a duration from 2s to 5m"),
                    "use e.g. \"10s\": the time after which a silent node counts as gone",
                ))?,
        };
        Ok(Some(ClusterConfig {
            etcd,
            node_name,
            listen,
            secret_file,
            prefix,
            lease_ttl,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ClusterConfig>, (String, &'static str)> {
        let raw: RawCluster = toml::from_str(text).expect("toml");
        raw.resolve()
    }

    #[test]
    fn a_full_section_resolves_and_an_empty_one_is_off() {
        assert_eq!(parse("").expect("empty"), None);
        let c = parse(
            "etcd = [\"http://127.0.0.1:2379\"]\nnode-name = \"node-a\"\nlisten = \"127.0.0.1:7701\"\nsecret-file = \"/etc/gearhost/cluster.secret\"\nlease-ttl = \"6s\"\n",
        )
        .expect("valid")
        .expect("on");
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.prefix, "/gearhost");
        assert_eq!(c.lease_ttl, Duration::from_secs(6));
    }

    #[test]
    fn each_mistake_is_named_with_what_to_do() {
        let base = "etcd = [\"http://127.0.0.1:2379\"]\nlisten = \"127.0.0.1:7701\"\nsecret-file = \"/s\"\n";
        for (text, says) in [
            ("node-name = \"a\"\n", "no `etcd`"),
            (
                "etcd = []\nnode-name = \"a\"\nlisten = \"127.0.0.1:1\"\nsecret-file = \"/s\"\n",
                "no endpoint",
            ),
            (
                "etcd = [\"127.0.0.1:2379\"]\nnode-name = \"a\"\nlisten = \"127.0.0.1:1\"\nsecret-file = \"/s\"\n",
                "not http://",
            ),
            (base, "no `node-name`"),
            (&format!("{base}node-name = \"Node_A\"\n"), "node name"),
            (
                "etcd = [\"http://e:1\"]\nnode-name = \"a\"\nsecret-file = \"/s\"\n",
                "no `listen`",
            ),
            (
                "etcd = [\"http://e:1\"]\nnode-name = \"a\"\nlisten = \"127.0.0.1:1\"\n",
                "no `secret-file`",
            ),
            (
                &format!("{base}node-name = \"a\"\nlease-ttl = \"1s\"\n"),
                "2s to 5m",
            ),
            (
                &format!("{base}node-name = \"a\"\nprefix = \"x/\"\n"),
                "prefix",
            ),
        ] {
            let (problem, help) = parse(text).expect_err(text);
            assert!(problem.contains(says), "{text}: {problem}");
            assert!(!help.is_empty());
        }
    }
}
