//! Node configuration: the TOML an operator writes (`/etc/gearhost/node.toml`),
//! an embedded default that works on a fresh machine, and the validated form
//! the rest of the node reads.

pub mod acme;
pub mod cluster;
pub mod egress;
pub mod https;
pub mod ssh;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use gearhost_runtime::manifest::parse_size;

/// The configuration used when no file is given: state under
/// `/var/lib/gearhost`, socket at `/run/gearhost/node.sock`.
pub const DEFAULT_CONFIG: &str = include_str!("default-node.toml");
/// Where `gear node run` looks for its configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gearhost/node.toml";
/// Where `gear` looks for the node's socket by default.
pub use gearhost_api::DEFAULT_SOCKET;

/// The smallest per-gear disk quota (`gears.disk`, `gears.max-disk`, `gear
/// create --disk`): a gear's empty subvolumes and directories take some of it.
pub const MIN_GEAR_DISK: u64 = 16 << 20;

/// The validated node configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeConfig {
    /// Where gears, cartridges and the compile cache live.
    pub state_dir: PathBuf,
    /// The node API's unix socket.
    pub socket: PathBuf,
    /// Group whose members are operators, as root is: they act on every
    /// namespace and manage cartridges, teams and limits.
    pub operator_group: Option<String>,
    /// Group whose members (with root and the operators) may use the node's
    /// socket; none: every local user may (the socket is 0666).
    pub users_group: Option<String>,
    /// Limits on what each user's gears may take (`[users]`).
    pub user_limits: UserLimits,
    /// Domain of gear host names (`<gear>-<namespace>.<domain>`).
    pub domain: String,
    /// Frontend listen address.
    pub frontend: String,
    /// Where the operator's `/metrics` endpoint listens (none: only through
    /// the node API, `gear node metrics`).
    pub metrics: Option<String>,
    /// A gear with no request through the frontend for this long is idled
    /// (none: gears are never idled automatically).
    pub idle_timeout: Option<Duration>,
    /// A running gear with no request for this long is frozen with the cgroup
    /// freezer (its memory kept, a request thaws it), before `idle_timeout`
    /// stops it (none, or not shorter than `idle_timeout`: gears are never
    /// frozen automatically; `gear idle` still freezes).
    pub freeze_after: Option<Duration>,
    /// When the memory available on the machine (`MemAvailable`) falls below
    /// this many bytes, frozen gears are stopped (marked idle), the largest
    /// first, until it is above again (none: never).
    pub frozen_memory_floor: Option<u64>,
    /// Largest request body the frontend forwards, in bytes.
    pub max_body: u64,
    /// How long a client has to send a complete request head, including the
    /// wait for the next request on a kept-alive connection.
    pub header_timeout: Duration,
    /// How long a gear has to answer a forwarded request with its response head.
    pub response_timeout: Duration,
    /// How long a write to a client may wait without any byte going before
    /// the request (its connection, or its HTTP/2 stream) is cut off.
    pub send_timeout: Duration,
    /// How long the frontend waits for a gear to accept a connection.
    pub connect_timeout: Duration,
    /// Frontend worker threads.
    pub frontend_workers: usize,
    /// Whether the frontend workers pass their sends to the kernel in batches
    /// (io_uring) where the kernel allows it.
    pub frontend_batch_sends: bool,
    /// Lowest gear uid.
    pub uid_min: u32,
    /// Highest gear uid.
    pub uid_max: u32,
    /// The node's cgroup subtree name.
    pub cgroup_subtree: String,
    /// Default per-gear memory limit.
    pub gear_memory: u64,
    /// Default per-gear pids limit.
    pub gear_pids: u64,
    /// Default per-gear cpu quota, millicores.
    pub gear_cpu: u32,
    /// Good deployments kept per gear (failed ones are kept apart, see the node's `deploy::KEEP_FAILED`).
    pub keep_deployments: usize,
    /// Ceiling on start/stop/control hook budgets.
    pub hook_timeout: Duration,
    /// Ceiling on build hook budgets.
    pub build_timeout: Duration,
    /// Ceiling on hook memory.
    pub hook_memory: u64,
    /// Whether builds may ever use the network (the manifest must also ask).
    pub build_network: bool,
    /// How builds that may use the network reach it, and where they may
    /// connect (`[build]`).
    pub build_egress: crate::egress::EgressConfig,
    /// Log files are rotated at this size.
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    pub log_keep: usize,
    /// Crashes within `crash_window` after which a process is marked failed.
    pub crash_limit: u32,
    /// Window for `crash_limit`.
    pub crash_window: Duration,
    /// How long a started gear has to answer on its port.
    pub start_timeout: Duration,
    /// Gear helpers kept prepared and waiting for a start (0: none; see `gearhost_sandbox::warm`).
    pub warm_helpers: usize,
    /// Connections one gear may hold open through the node at once (its
    /// door to the frontend and its links), `gears.max-connections`.
    pub gear_max_connections: usize,
    /// Default per-gear disk quota in bytes, `gears.disk` (none: gears get no
    /// quota unless they ask for one).
    pub gear_disk: Option<u64>,
    /// The largest disk quota a gear may ask for, `gears.max-disk` (none: no
    /// ceiling when `gear_disk` is unset, else `gear_disk`).
    pub gear_max_disk: Option<u64>,
    /// Run with `gears.disk` set although the state directory's file system
    /// cannot enforce quotas, `gears.allow-no-quota`.
    pub allow_no_quota: bool,
    /// Largest deployment (or cartridge) archive the node unpacks: the sum
    /// of its files' sizes, `gears.max-deploy-size`.
    pub max_deploy_size: u64,
    /// The ssh endpoint (`[ssh]`; none: off).
    pub ssh: Option<ssh::SshConfig>,
    /// The frontend's HTTPS listener (`[https]`; none: off).
    pub https: Option<https::HttpsConfig>,
    /// The ACME server aliases' certificates come from (`[acme]`; none: off).
    pub acme: Option<acme::AcmeConfig>,
    /// Membership of a cluster of nodes (`[cluster]`; none: a standalone node).
    pub cluster: Option<cluster::ClusterConfig>,
}

/// Limits on what one user's gears may take together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// Most gears the user may own (none: no limit).
    pub max_gears: Option<u32>,
    /// Most memory the user's gears may be given together, in bytes (each
    /// gear counts with its memory limit; none: no limit).
    pub max_memory: Option<u64>,
}

/// Per-user limits: a default, and the users with limits of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserLimits {
    /// What every user gets unless named below.
    pub default: Limit,
    /// Users with limits of their own (a field left out takes the default's).
    pub per_user: std::collections::BTreeMap<String, Limit>,
}

impl UserLimits {
    /// The limits of `user`.
    pub fn of(&self, user: &str) -> Limit {
        match self.per_user.get(user) {
            Some(own) => Limit {
                max_gears: own.max_gears.or(self.default.max_gears),
                max_memory: own.max_memory.or(self.default.max_memory),
            },
            None => self.default,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}\n  help: {help}")]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub path: String,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub help: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default = "default_schema")]
    schema: u32,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_socket")]
    socket: PathBuf,
    operator_group: Option<String>,
    users_group: Option<String>,
    #[serde(default)]
    users: RawUsers,
    #[serde(default = "default_domain")]
    domain: String,
    #[serde(default = "default_frontend")]
    frontend: String,
    metrics: Option<String>,
    #[serde(default)]
    gears: RawGears,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    hooks: RawHooks,
    #[serde(default)]
    build: RawBuild,
    #[serde(default)]
    logs: RawLogs,
    #[serde(default)]
    ssh: ssh::RawSsh,
    #[serde(default)]
    https: https::RawHttps,
    #[serde(default)]
    acme: acme::RawAcme,
    #[serde(default)]
    cluster: cluster::RawCluster,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimit {
    max_gears: Option<u32>,
    max_memory: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawUsers {
    max_gears: Option<u32>,
    max_memory: Option<String>,
    #[serde(default)]
    per_user: std::collections::BTreeMap<String, RawLimit>,
}

fn default_schema() -> u32 {
    1
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/gearhost")
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_domain() -> String {
    "localhost".into()
}
fn default_frontend() -> String {
    "127.0.0.1:8000".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGears {
    #[serde(default = "default_uid_min")]
    uid_min: u32,
    #[serde(default = "default_uid_max")]
    uid_max: u32,
    #[serde(default = "default_subtree")]
    cgroup_subtree: String,
    #[serde(default = "default_gear_memory")]
    memory: String,
    #[serde(default = "default_gear_pids")]
    pids: u64,
    #[serde(default = "default_gear_cpu")]
    cpu_millicores: u32,
    #[serde(default = "default_keep")]
    keep_deployments: usize,
    #[serde(default = "default_crash_limit")]
    crash_limit: u32,
    #[serde(default = "default_crash_window")]
    crash_window: String,
    #[serde(default = "default_start_timeout")]
    start_timeout: String,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: String,
    #[serde(default = "default_freeze_after")]
    freeze_after: String,
    #[serde(default = "default_frozen_memory_floor")]
    frozen_memory_floor: String,
    #[serde(default = "default_warm_helpers")]
    warm_helpers: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default)]
    disk: Option<String>,
    #[serde(default)]
    max_disk: Option<String>,
    #[serde(default)]
    allow_no_quota: bool,
    #[serde(default = "default_max_deploy_size")]
    max_deploy_size: String,
}

fn default_uid_min() -> u32 {
    61000
}

fn default_uid_max() -> u32 {
    62999
}

impl Default for RawGears {
    /// What an empty `[gears]` table gives.
    fn default() -> Self {
        RawGears {
            uid_min: default_uid_min(),
            uid_max: default_uid_max(),
            cgroup_subtree: default_subtree(),
            memory: default_gear_memory(),
            pids: default_gear_pids(),
            cpu_millicores: default_gear_cpu(),
            keep_deployments: default_keep(),
            crash_limit: default_crash_limit(),
            crash_window: default_crash_window(),
            start_timeout: default_start_timeout(),
            idle_timeout: default_idle_timeout(),
            freeze_after: default_freeze_after(),
            frozen_memory_floor: default_frozen_memory_floor(),
            warm_helpers: default_warm_helpers(),
            max_connections: default_max_connections(),
            disk: None,
            max_disk: None,
            allow_no_quota: false,
            max_deploy_size: default_max_deploy_size(),
        }
    }
}

fn default_max_deploy_size() -> String {
    "1GiB".into()
}

fn default_max_connections() -> usize {
    256
}

fn default_warm_helpers() -> usize {
    1
}

fn default_idle_timeout() -> String {
    "24h".into()
}

fn default_freeze_after() -> String {
    "10m".into()
}

fn default_frozen_memory_floor() -> String {
    "256MiB".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHttp {
    #[serde(default = "default_max_body")]
    max_body: String,
    #[serde(default = "default_header_timeout")]
    header_timeout: String,
    #[serde(default = "default_response_timeout")]
    response_timeout: String,
    #[serde(default = "default_send_timeout")]
    send_timeout: String,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: String,
    #[serde(default)]
    workers: usize,
    #[serde(default = "default_true")]
    batch_sends: bool,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            max_body: default_max_body(),
            header_timeout: default_header_timeout(),
            response_timeout: default_response_timeout(),
            send_timeout: default_send_timeout(),
            connect_timeout: default_connect_timeout(),
            workers: 0,
            batch_sends: true,
        }
    }
}

fn default_max_body() -> String {
    "1GiB".into()
}
fn default_header_timeout() -> String {
    "60s".into()
}
fn default_response_timeout() -> String {
    "300s".into()
}
fn default_send_timeout() -> String {
    "60s".into()
}
fn default_connect_timeout() -> String {
    "5s".into()
}

fn default_start_timeout() -> String {
    "30s".into()
}

fn default_subtree() -> String {
    "gearhost".into()
}
fn default_gear_memory() -> String {
    "512MiB".into()
}
fn default_gear_pids() -> u64 {
    512
}
fn default_gear_cpu() -> u32 {
    1000
}
fn default_keep() -> usize {
    5
}
fn default_crash_limit() -> u32 {
    5
}
fn default_crash_window() -> String {
    "60s".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHooks {
    #[serde(default = "default_hook_timeout")]
    max_timeout: String,
    #[serde(default = "default_build_timeout")]
    max_build_timeout: String,
    #[serde(default = "default_hook_memory")]
    max_memory: String,
    #[serde(default = "default_true")]
    build_network: bool,
}

impl Default for RawHooks {
    fn default() -> Self {
        RawHooks {
            max_timeout: default_hook_timeout(),
            max_build_timeout: default_build_timeout(),
            max_memory: default_hook_memory(),
            build_network: true,
        }
    }
}

fn default_hook_timeout() -> String {
    "5m".into()
}
fn default_build_timeout() -> String {
    "30m".into()
}
fn default_hook_memory() -> String {
    "512MiB".into()
}
fn default_true() -> bool {
    true
}

/// `[build]`: the network of builds whose cartridge may use it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBuild {
    #[serde(default = "default_egress")]
    egress: String,
    #[serde(default)]
    egress_allow: Vec<String>,
    #[serde(default)]
    egress_deny: Vec<String>,
    #[serde(default = "default_egress_connections")]
    egress_connections: usize,
}

impl Default for RawBuild {
    fn default() -> Self {
        RawBuild {
            egress: default_egress(),
            egress_allow: Vec::new(),
            egress_deny: Vec::new(),
            egress_connections: default_egress_connections(),
        }
    }
}

fn default_egress() -> String {
    "proxy".into()
}
fn default_egress_connections() -> usize {
    32
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLogs {
    #[serde(default = "default_log_size")]
    max_size: String,
    #[serde(default = "default_log_keep")]
    keep: usize,
}

impl Default for RawLogs {
    fn default() -> Self {
        RawLogs {
            max_size: default_log_size(),
            keep: default_log_keep(),
        }
    }
}

fn default_log_size() -> String {
    "10MiB".into()
}
fn default_log_keep() -> usize {
    3
}

impl NodeConfig {
    /// The embedded default configuration.
    pub fn embedded() -> NodeConfig {
        match NodeConfig::parse(DEFAULT_CONFIG, "<embedded default>") {
            Ok(c) => c,
            Err(e) => unreachable!("the embedded default configuration is valid: {e}"),
        }
    }

    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            problem: format!("cannot read the node configuration: {e}"),
            help: "create it (see docs/operator-guide.md), or run without --config to use the embedded default"
                .into(),
        })?;
        NodeConfig::parse(&text, &path.display().to_string())
    }

    /// Parse and validate configuration text.
    pub fn parse(text: &str, path: &str) -> Result<NodeConfig, ConfigError> {
        let err = |problem: String, help: &str| ConfigError {
            path: path.to_string(),
            problem,
            help: help.to_string(),
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| err(format!("not valid TOML: {}", e.message()), "fix the syntax"))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            err(
                format!("field `{field}`: {}", e.into_inner().message()),
                "check the field against docs/operator-guide.md",
            )
        })?;
        if raw.schema != 1 {
            return Err(err(
                format!("unsupported schema {}", raw.schema),
                "set `schema = 1`",
            ));
        }
        for (name, p) in [("state-dir", &raw.state_dir), ("socket", &raw.socket)] {
            if !p.is_absolute() {
                return Err(err(
                    format!("`{name}` must be an absolute path, not {}", p.display()),
                    "give a full path starting with /",
                ));
            }
        }
        let g = &raw.gears;
        if g.uid_min < 1000 || g.uid_min > g.uid_max {
            return Err(err(
                format!("uid range {}..={} is not usable", g.uid_min, g.uid_max),
                "use uid-min >= 1000 and uid-max >= uid-min, outside the range of real users",
            ));
        }
        if gearhost_runtime::manifest::check_name(&g.cgroup_subtree, 64).is_err() {
            return Err(err(
                format!("invalid cgroup-subtree {:?}", g.cgroup_subtree),
                "use lower-case letters, digits and dashes",
            ));
        }
        let size = |field: &str, v: &str| {
            parse_size(v).ok_or_else(|| {
                err(
                    format!("invalid size {v:?} in `{field}`"),
                    "use e.g. \"512MiB\"",
                )
            })
        };
        let duration = |field: &str, v: &str| {
            humantime::parse_duration(v).map_err(|e| {
                err(
                    format!("invalid duration {v:?} in `{field}`: {e}"),
                    "use e.g. \"30s\" or \"5m\"",
                )
            })
        };
        if raw.domain.is_empty()
            || !raw
                .domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(err(
                format!("invalid domain {:?}", raw.domain),
                "use a DNS name such as \"localhost\" or \"apps.example.com\"",
            ));
        }
        let positive = |field: &str, v: &str| {
            let d = duration(field, v)?;
            if d.is_zero() {
                return Err(err(
                    format!("`{field}` is zero"),
                    "give a duration longer than zero, e.g. \"30s\"",
                ));
            }
            Ok(d)
        };
        let idle_timeout = match g.idle_timeout.as_str() {
            "off" | "never" => None,
            v => {
                let d = duration("gears.idle-timeout", v)?;
                if d < Duration::from_secs(1) {
                    return Err(err(
                        format!("`gears.idle-timeout` {v:?} is shorter than a second"),
                        "give at least \"1s\" (minutes or hours are usual), or \"off\" to never idle gears",
                    ));
                }
                Some(d)
            }
        };
        let freeze_after = match g.freeze_after.as_str() {
            "off" | "never" => None,
            v => {
                let d = duration("gears.freeze-after", v)?;
                if d < Duration::from_millis(100) {
                    return Err(err(
                        format!("`gears.freeze-after` {v:?} is shorter than 100ms"),
                        "give at least \"100ms\" (minutes are usual), or \"off\" to never freeze gears on their own",
                    ));
                }
                // frozen only on the way to idle: not when they would be stopped first
                idle_timeout.is_none_or(|stop| d < stop).then_some(d)
            }
        };
        let frozen_memory_floor = match g.frozen_memory_floor.as_str() {
            "off" | "never" => None,
            v => Some(size("gears.frozen-memory-floor", v)?),
        };
        let max_body = size("http.max-body", &raw.http.max_body)?;
        if max_body == 0 {
            return Err(err(
                "`http.max-body` is zero".into(),
                "give the largest request body to accept, e.g. \"100MiB\"",
            ));
        }
        for (field, addr) in [
            ("frontend", Some(&raw.frontend)),
            ("metrics", raw.metrics.as_ref()),
        ] {
            if let Some(addr) = addr
                && addr.parse::<std::net::SocketAddr>().is_err()
            {
                return Err(err(
                    format!("`{field}` {addr:?} is not an address and port"),
                    "use e.g. \"127.0.0.1:8000\" or \"[::1]:8000\"",
                ));
            }
        }
        if raw.http.workers > 256 {
            return Err(err(
                format!("`http.workers` is {}", raw.http.workers),
                "give at most 256 (one per core is the most that helps), or 0 for half the cores",
            ));
        }
        let build_egress = {
            use crate::egress::{EgressConfig, EgressMode, parse_list};
            let b = &raw.build;
            let mode = match b.egress.as_str() {
                "proxy" => EgressMode::Proxy,
                "none" => EgressMode::None,
                other => {
                    return Err(err(
                        format!("`build.egress` is {other:?}"),
                        "use \"proxy\" (builds reach the network through the node's egress proxy) or \"none\" (builds get no network)",
                    ));
                }
            };
            let list = |field: &str, entries: &[String], allow: bool| {
                parse_list(field, entries, allow).map_err(|problem| {
                    err(
                        problem,
                        "list address blocks such as \"10.1.2.0/24\" or \"fd12:3456::/48\" (see docs/operator-guide.md, build egress)",
                    )
                })
            };
            if b.egress_connections == 0 || b.egress_connections > 4096 {
                return Err(err(
                    format!("`build.egress-connections` is {}", b.egress_connections),
                    "give the connections one build may have open at once, from 1 to 4096 (32 is plenty for pip and npm)",
                ));
            }
            EgressConfig {
                mode,
                allow: list("build.egress-allow", &b.egress_allow, true)?,
                deny: list("build.egress-deny", &b.egress_deny, false)?,
                connections: b.egress_connections,
            }
        };
        let disk = |field: &str, v: &Option<String>| -> Result<Option<u64>, ConfigError> {
            let Some(v) = v else { return Ok(None) };
            let bytes = size(field, v)?;
            if bytes < MIN_GEAR_DISK {
                return Err(err(
                    format!("`{field}` {v:?} is below the smallest gear quota, 16MiB"),
                    "give at least \"16MiB\" (a gear's empty directories take some of it), e.g. \"2GiB\"",
                ));
            }
            Ok(Some(bytes))
        };
        let gear_disk = disk("gears.disk", &g.disk)?;
        let gear_max_disk = disk("gears.max-disk", &g.max_disk)?;
        if let (Some(d), Some(max)) = (gear_disk, gear_max_disk)
            && max < d
        {
            return Err(err(
                format!("`gears.max-disk` ({max} bytes) is below `gears.disk` ({d} bytes)"),
                "make gears.max-disk at least gears.disk: it is the most a gear may ask for with `gear create --disk`",
            ));
        }
        let frontend_workers = match raw.http.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2)),
            n => n,
        };
        let limit = |field: &str, max_gears: Option<u32>, max_memory: &Option<String>| {
            Ok::<_, ConfigError>(Limit {
                max_gears,
                max_memory: match max_memory {
                    Some(m) => Some(size(field, m)?),
                    None => None,
                },
            })
        };
        let mut per_user = std::collections::BTreeMap::new();
        for (user, l) in &raw.users.per_user {
            per_user.insert(
                user.clone(),
                limit(
                    &format!("users.per-user.{user}.max-memory"),
                    l.max_gears,
                    &l.max_memory,
                )?,
            );
        }
        let user_limits = UserLimits {
            default: limit(
                "users.max-memory",
                raw.users.max_gears,
                &raw.users.max_memory,
            )?,
            per_user,
        };
        // the sections in modules of their own say what is wrong and what to do
        let section = |(problem, help): (String, &str)| err(problem, help);
        let ssh = raw.ssh.resolve().map_err(section)?;
        let https = raw.https.resolve().map_err(section)?;
        let acme = raw.acme.resolve().map_err(section)?;
        let cluster = raw.cluster.resolve().map_err(section)?;
        Ok(NodeConfig {
            state_dir: raw.state_dir,
            socket: raw.socket,
            operator_group: raw.operator_group,
            users_group: raw.users_group,
            user_limits,
            domain: raw.domain,
            frontend: raw.frontend,
            metrics: raw.metrics,
            idle_timeout,
            freeze_after,
            frozen_memory_floor,
            max_body,
            header_timeout: positive("http.header-timeout", &raw.http.header_timeout)?,
            response_timeout: positive("http.response-timeout", &raw.http.response_timeout)?,
            send_timeout: positive("http.send-timeout", &raw.http.send_timeout)?,
            connect_timeout: positive("http.connect-timeout", &raw.http.connect_timeout)?,
            frontend_workers,
            frontend_batch_sends: raw.http.batch_sends,
            uid_min: g.uid_min,
            uid_max: g.uid_max,
            cgroup_subtree: g.cgroup_subtree.clone(),
            gear_memory: size("gears.memory", &g.memory)?,
            gear_pids: g.pids,
            gear_cpu: g.cpu_millicores,
            keep_deployments: g.keep_deployments.max(1),
            crash_limit: g.crash_limit.max(1),
            crash_window: duration("gears.crash-window", &g.crash_window)?,
            start_timeout: duration("gears.start-timeout", &g.start_timeout)?,
            warm_helpers: g.warm_helpers,
            gear_max_connections: g.max_connections,
            gear_disk,
            gear_max_disk,
            allow_no_quota: g.allow_no_quota,
            max_deploy_size: size("gears.max-deploy-size", &g.max_deploy_size)?,
            hook_timeout: duration("hooks.max-timeout", &raw.hooks.max_timeout)?,
            build_timeout: duration("hooks.max-build-timeout", &raw.hooks.max_build_timeout)?,
            hook_memory: size("hooks.max-memory", &raw.hooks.max_memory)?,
            build_network: raw.hooks.build_network,
            build_egress,
            log_max_bytes: size("logs.max-size", &raw.logs.max_size)?,
            log_keep: raw.logs.keep,
            ssh,
            https,
            acme,
            cluster,
        })
    }

    /// The largest disk quota `gear create --disk` may ask for: `gears.max-disk`,
    /// else `gears.disk`; none when neither is set (a quota asked for only
    /// narrows a gear that would have none).
    pub fn disk_ceiling(&self) -> Option<u64> {
        self.gear_max_disk.or(self.gear_disk)
    }

    /// `<state>/gears`
    pub fn gears_dir(&self) -> PathBuf {
        self.state_dir.join("gears")
    }

    /// `<state>/netns`: the pins of the gears' network namespaces, a private mount of its own
    /// (`gearhost_sandbox::netns::prepare_pins`).
    pub fn netns_dir(&self) -> PathBuf {
        self.state_dir.join("netns")
    }

    /// `<state>/cartridges`
    pub fn cartridges_dir(&self) -> PathBuf {
        self.state_dir.join("cartridges")
    }

    /// `<state>/cache`
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }
}

#[cfg(test)]
mod tests;
