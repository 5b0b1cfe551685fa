//! What the node answers: one type per kind of answer (see
//! [`Op::Reply`](crate::Op::Reply) for which operation gets which).
//!
//! Answers accept members they do not know, so a node of the same API
//! version may add a member without breaking a client; requests, by
//! contrast, are strict.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

mod cluster;
mod snapshot;
mod store;
pub use cluster::*;
pub use snapshot::*;
pub use store::*;

use serde::{Deserialize, Serialize};

/// What the operator or user wants a gear to be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Desired {
    /// Its processes should run (restarted after a node restart).
    Running,
    /// Stopped on purpose; stays stopped across node restarts.
    Stopped,
}

/// Last known state of a gear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GearState {
    /// Created, nothing deployed yet.
    New,
    /// A deployment is being built.
    Building,
    /// Starting.
    Starting,
    /// Running.
    Running,
    /// Stopping.
    Stopping,
    /// Stopped.
    Stopped,
    /// A process crashed too often, or a hook failed.
    Failed,
    /// Put to sleep by the idler (or `gear idle`): its processes are stopped
    /// while it should be running, and the next request to it through the
    /// frontend starts it again. Kept across node restarts.
    Idle,
    /// Put to sleep by the idler (or `gear idle`) for a short while: its
    /// processes are frozen by the cgroup freezer with their memory kept,
    /// and the next request to it thaws them. After the longer idle timeout
    /// (or under memory pressure on the node) it is stopped and becomes
    /// `idle`. Kept across node restarts.
    Frozen,
}

impl GearState {
    /// The state's name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            GearState::New => "new",
            GearState::Building => "building",
            GearState::Starting => "starting",
            GearState::Running => "running",
            GearState::Stopping => "stopping",
            GearState::Stopped => "stopped",
            GearState::Failed => "failed",
            GearState::Idle => "idle",
            GearState::Frozen => "frozen",
        }
    }
}

impl std::fmt::Display for GearState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        })
    }
}

/// State of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    /// Copied, not built yet (or the build was interrupted).
    Pending,
    /// Built successfully.
    Ready,
    /// The build failed.
    Failed,
}

impl std::fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeploymentState::Pending => "pending",
            DeploymentState::Ready => "ready",
            DeploymentState::Failed => "failed",
        })
    }
}

/// One deployment of a gear's source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Sequence number, unique per gear.
    pub id: u32,
    /// Unix time it was created.
    pub created: u64,
    /// Where the source came from.
    pub source: String,
    /// Build state.
    pub state: DeploymentState,
    /// The build's error, when it failed.
    pub error: Option<String>,
    /// For an image gear: the digest of the image manifest it runs (its source is the
    /// reference it was pulled as).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The port its app serves HTTP on, when the deployment says (an image's first exposed
    /// port, or the one given with `--port`); otherwise the cartridge's `http` endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// The answer to `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's release.
    pub version: String,
    /// The node API version it speaks ([`API_VERSION`](crate::API_VERSION)).
    pub api: u32,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// The domain under which gears get their default host names.
    pub domain: String,
    /// Where the frontend listens, once it does.
    pub frontend: Option<SocketAddr>,
    /// Where the metrics endpoint listens, if configured.
    pub metrics: Option<SocketAddr>,
}

/// A gear's identity and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GearSummary {
    /// The node's id for it.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its cartridge.
    pub cartridge: String,
    /// The uid its processes run as.
    pub uid: u32,
    /// Its SELinux MCS level.
    pub mcs_level: String,
    /// Its state.
    pub state: GearState,
    /// What it should be doing.
    pub desired: Desired,
    /// The deployment it runs.
    pub active_deployment: Option<u32>,
    /// Where the frontend serves it; none for a gear whose cartridge has no
    /// HTTP endpoint (a database is reached through `gear link`).
    pub url: Option<String>,
    /// Whether it takes deployments (`false` for a service such as a
    /// database, which runs what its cartridge brings).
    #[serde(default = "yes")]
    pub takes_deployments: bool,
    /// The cluster node that holds it (none on a standalone node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn yes() -> bool {
    true
}

/// Supervisor state of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessState {
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Waiting to be restarted.
    Backoff,
    /// Stopped on purpose.
    Stopped,
    /// Ended and will not be restarted.
    Exited,
    /// Crashed too often; given up.
    Failed,
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProcessState::Starting => "starting",
            ProcessState::Running => "running",
            ProcessState::Backoff => "backoff",
            ProcessState::Stopped => "stopped",
            ProcessState::Exited => "exited",
            ProcessState::Failed => "failed",
        })
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitStatus {
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

/// One supervised process of a gear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// The name the cartridge gave it.
    pub name: String,
    /// Host pid while running.
    pub pid: Option<u32>,
    /// State.
    pub state: ProcessState,
    /// Restart count.
    pub restarts: u32,
    /// How it last ended.
    pub last_exit: Option<ExitStatus>,
}

/// A gear with its processes: the answer of the lifecycle operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GearView {
    /// Identity and state.
    #[serde(flatten)]
    pub gear: GearSummary,
    /// Its processes.
    pub processes: Vec<Process>,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// Set when the operation found the gear as asked and changed nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// What the operation wants the caller to know (why nothing changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A link from a gear to another, as `show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    /// The gear reached.
    pub gear: String,
    /// The port on the linking gear's loopback.
    pub port: u16,
    /// The variables the reached gear's cartridge publishes.
    pub env: Vec<String>,
    /// Unix time the link was made.
    pub created: u64,
}

/// The answer to `show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GearDetail {
    /// The gear with its processes.
    #[serde(flatten)]
    pub view: GearView,
    /// Its deployments.
    pub deployments: Vec<Deployment>,
    /// The names of its effective variables.
    pub env: Vec<String>,
    /// Its home directory on the node.
    pub home: PathBuf,
    /// The gears it reaches.
    pub links: Vec<LinkInfo>,
    /// Its extra host names.
    pub aliases: Vec<String>,
    /// The gears that reach it.
    pub linked_from: Vec<String>,
    /// Its disk use against its quota (none: the gear has no quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskUsage>,
    /// The memory its processes hold now, in bytes, as its cgroup counts it
    /// (page cache included); a frozen gear keeps holding it. None when
    /// nothing of it runs or it cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
}

/// A gear's disk use against its quota, as the kernel counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskUsage {
    /// Bytes the gear uses: its home, deployments and logs.
    pub used: u64,
    /// Its quota in bytes; writes past it fail with "Disk quota exceeded".
    pub limit: u64,
}

/// The answer to `destroy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroyed {
    /// The gear destroyed (`name-namespace`).
    pub destroyed: String,
    /// Its uid, free again.
    pub uid_released: u32,
}

/// The answer to `deploy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The new deployment, now active.
    pub deployment: u32,
    /// The gear's state afterwards.
    pub state: GearState,
    /// Where the frontend serves it (none without an HTTP endpoint).
    pub url: Option<String>,
}

/// The answer to `build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Built {
    /// The deployment built.
    pub built: u32,
}

/// The answer to `control`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlOutput {
    /// What the action printed.
    pub output: String,
}

/// The answer to `deployments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentList {
    /// The active deployment.
    pub active: Option<u32>,
    /// Every deployment kept.
    pub deployments: Vec<Deployment>,
}

/// The answer to `rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The deployment now active.
    pub active: u32,
}

/// The answer to `env-set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvChanged {
    /// What the caller should know (running processes keep their environment).
    pub note: String,
}

/// The answer to `env-unset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRemoved {
    /// The keys removed.
    pub unset: Vec<String>,
    /// The keys asked for that were not set (nothing to remove).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// A gear's variables by where they come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvLayers {
    /// Set by the node.
    pub system: BTreeMap<String, String>,
    /// Set by the cartridge's hooks.
    pub cartridge: BTreeMap<String, String>,
    /// Given by the cartridge to the app's primary process (`PORT`,
    /// `VIRTUAL_ENV`, `NODE_ENV`...); `gear exec` gets them too. Absent from
    /// nodes that did not have the layer.
    #[serde(default)]
    pub process: BTreeMap<String, String>,
    /// Published by the gears this one is linked to.
    pub linked: BTreeMap<String, String>,
    /// Set by the user.
    pub user: BTreeMap<String, String>,
}

/// The answer to `env-list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// The layers.
    pub layers: EnvLayers,
    /// What the gear's processes get.
    pub effective: BTreeMap<String, String>,
}

/// The answer to `link`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Linked {
    /// The gear that reaches.
    pub gear: String,
    /// The gear reached.
    pub to: String,
    /// The port on `gear`'s loopback.
    pub port: u16,
    /// The variables `gear` receives.
    pub env: Vec<String>,
    /// Set when the link existed already.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// What the caller should know (a restart, or why nothing changed).
    pub note: Option<String>,
}

/// The answer to `unlink`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlinked {
    /// The gear that reached.
    pub gear: String,
    /// The gear it reached.
    pub to: String,
    /// Set when there was no such link.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// What the caller should know (a restart, or why nothing changed).
    pub note: Option<String>,
}

/// The answer to `alias-add` and `alias-remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasChanged {
    /// The gear.
    pub gear: String,
    /// The host name added or removed, as the node stores it (lower case,
    /// no trailing dot).
    pub hostname: String,
    /// The gear's aliases afterwards.
    pub aliases: Vec<String>,
    /// Set when the gear had the alias already (add).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

/// The answer to `alias-list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNames {
    /// The gear.
    pub gear: String,
    /// Its default host name.
    pub name: String,
    /// Its extra host names.
    pub aliases: Vec<String>,
    /// The certificates the aliases are served with over HTTPS (those with
    /// one, or with one on its way from ACME).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<AliasTls>,
}

/// An alias's certificate, as the frontend has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasTls {
    /// The alias.
    pub hostname: String,
    /// When its certificate expires (RFC 3339), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Its certificate comes from the node's ACME server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acme: bool,
    /// Why the last ACME order failed, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the ACME server is asked again after a failure (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_try: Option<String>,
}

/// The answer to `metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsText {
    /// The Prometheus text exposition.
    pub text: String,
}

/// The answer to `node-stop`: the node is stopping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStopping {
    /// Whether the gears' processes are stopped too (else they keep running).
    pub gears: bool,
    /// The node's pid, to wait for its end.
    pub pid: u32,
}

/// The answer to `node-restart`: the node is restarting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRestarting {
    /// The node's pid (the same after the restart).
    pub pid: u32,
    /// The binary the node executes again.
    pub binary: String,
}

/// What a node's resume did with the gears an earlier node left (`node-resume`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeOutcome {
    /// Whether the resume has finished (else the lists are what it did so far).
    pub done: bool,
    /// When the node started its resume (unix milliseconds).
    pub started_ms: u64,
    /// How long the resume took, in milliseconds (once done).
    #[serde(default)]
    pub took_ms: u64,
    /// The node's pid.
    pub pid: u32,
    /// How many gears the node looked at.
    pub gears: usize,
    /// Gears whose processes kept running and were taken back.
    pub adopted: Vec<String>,
    /// Gears started again, each with why they were not taken back.
    pub started: Vec<ResumeStart>,
    /// Gears not to run (stopped, idle, never deployed).
    pub not_running: usize,
}

/// A gear a resume started again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeStart {
    /// `<namespace>/<name>`.
    pub gear: String,
    /// Why it was not taken back.
    pub why: String,
    /// Whether it started (else the error).
    pub error: Option<String>,
}

/// How the command of an `exec` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecEnd {
    /// It exited with this code.
    Exit(i32),
    /// A signal ended it.
    Signal(i32),
}

/// The answer to `whoami`: the caller as the node sees it (from the
/// socket's peer credentials, never from what the client says).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerInfo {
    /// The caller's uid.
    pub uid: u32,
    /// Its user name.
    pub user: String,
    /// Whether it is an operator (root, or a member of the operator group).
    pub operator: bool,
    /// The namespaces it may act in (an operator may act in every one).
    pub namespaces: Vec<String>,
}

/// What kind of namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NamespaceKind {
    /// A user's own namespace: its name is the user's name, and the user is
    /// its only member.
    User,
    /// A shared namespace an operator made, with the members it lists.
    Team,
}

impl std::fmt::Display for NamespaceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NamespaceKind::User => "user",
            NamespaceKind::Team => "team",
        })
    }
}

/// A namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    /// Its name.
    pub name: String,
    /// User or team.
    pub kind: NamespaceKind,
    /// User names of its members.
    pub members: Vec<String>,
    /// How many gears it holds.
    pub gears: usize,
}

/// The answer to `namespace-delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceDeleted {
    /// The namespace deleted.
    pub deleted: String,
}

/// How a request the audit log records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditOutcome {
    /// Done.
    Ok,
    /// Refused before anything was done (not allowed, over a limit, invalid).
    Refused,
    /// Tried, and failed.
    Failed,
}

/// One entry of the node's audit log: a request that changes something, or
/// any request the node refused for who sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the request ended (RFC 3339, UTC).
    pub time: String,
    /// The caller's uid.
    pub uid: u32,
    /// Its user name (empty when it has none).
    pub user: String,
    /// The namespace the request named, if any.
    pub namespace: Option<String>,
    /// The gear the request named, if any.
    pub gear: Option<String>,
    /// The operation (`create`, `deploy`, `namespace-add-member`, ...).
    pub verb: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The error's message, when it did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer to `audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    /// The entries, oldest first.
    pub entries: Vec<AuditEntry>,
}

/// What a gear asks of HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GearHttpsOptions {
    /// Plain HTTP is redirected to HTTPS (for names with a certificate).
    pub redirect: bool,
    /// HSTS max-age in seconds, when it is sent.
    pub hsts_max_age: Option<u64>,
    /// With redirect on: the gear's names that have no certificate, whose
    /// plain-HTTP requests are therefore not redirected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub without_certificate: Vec<String>,
}

/// A certificate attached to an alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasCertificate {
    /// The alias.
    pub hostname: String,
    /// When the certificate expires (RFC 3339, UTC).
    pub not_after: String,
    /// Its issuer.
    pub issuer: String,
}

/// An ssh key of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The user it logs in as.
    pub user: String,
    /// `SHA256:` and the base64 of the key's SHA-256, as `ssh-keygen -l` shows it.
    pub fingerprint: String,
    /// Its type (`ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, ...).
    pub kind: String,
    /// Its size in bits.
    pub bits: u32,
    /// The comment of the key line (often `user@host`).
    pub comment: String,
    /// When it was added (RFC 3339, UTC).
    pub added: String,
}

/// Who owns an ssh key, as the ssh endpoint asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyOwner {
    /// The user, if the key is known.
    pub user: Option<String>,
}

/// A gear's git repository, as the ssh endpoint reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRepo {
    /// Its path on the node.
    pub path: std::path::PathBuf,
    /// The branch whose pushes deploy.
    pub branch: String,
}

/// What happened to a gear, in the node's event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeEventKind {
    /// A deploy began (its sources were unpacked).
    DeployStarted,
    /// A deploy ended with its deployment active.
    DeployDone,
    /// A deploy failed (build or start); the reason says which.
    DeployFailed,
    /// A deploy was cancelled (`gear deploy --cancel`, Ctrl-C twice).
    DeployCancelled,
    /// The gear's processes were started (its start hook succeeded).
    Started,
    /// The gear's processes were stopped.
    Stopped,
    /// An app process ended on its own with a failure, or by a signal.
    Crashed,
    /// The supervisor restarted a process that had ended.
    Restarted,
    /// The supervisor gave up restarting a process that kept crashing.
    GaveUp,
    /// The gear was put to sleep for lack of requests.
    Idled,
    /// A request woke the idle gear.
    Woke,
    /// Waking the idle gear failed.
    WakeFailed,
    /// An earlier deployment was activated.
    RolledBack,
    /// A cartridge hook failed.
    HookFailed,
    /// A node that started found the gear's processes still running from an earlier node
    /// and took them back (same pids).
    Adopted,
    /// A node that started found the gear's processes not as the earlier node recorded
    /// them, stopped what was left and started the gear again; the reason says what differed.
    NotAdopted,
    /// The gear's processes were frozen (cgroup freezer) for lack of requests, or by
    /// `gear idle`; they keep their memory.
    Froze,
    /// The frozen gear's processes were thawed: a request came, or something had to reach
    /// them (`gear exec`, a hook, a stop).
    Thawed,
}

impl NodeEventKind {
    /// The name on the wire and in logs (`deploy-started`, `crashed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeEventKind::DeployStarted => "deploy-started",
            NodeEventKind::DeployDone => "deploy-done",
            NodeEventKind::DeployFailed => "deploy-failed",
            NodeEventKind::DeployCancelled => "deploy-cancelled",
            NodeEventKind::Started => "started",
            NodeEventKind::Stopped => "stopped",
            NodeEventKind::Crashed => "crashed",
            NodeEventKind::Restarted => "restarted",
            NodeEventKind::GaveUp => "gave-up",
            NodeEventKind::Idled => "idled",
            NodeEventKind::Woke => "woke",
            NodeEventKind::WakeFailed => "wake-failed",
            NodeEventKind::RolledBack => "rolled-back",
            NodeEventKind::HookFailed => "hook-failed",
            NodeEventKind::Adopted => "adopted",
            NodeEventKind::NotAdopted => "not-adopted",
            NodeEventKind::Froze => "froze",
            NodeEventKind::Thawed => "thawed",
        }
    }
}

impl std::fmt::Display for NodeEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event of the node's event log (`node-events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// Its number: increasing over the node's life, so a follower can tell
    /// what it has seen.
    pub seq: u64,
    /// When it happened (RFC 3339, UTC).
    pub time: String,
    /// The gear's namespace.
    pub namespace: String,
    /// The gear's name.
    pub gear: String,
    /// What happened.
    pub kind: NodeEventKind,
    /// Why, or what came of it, for people.
    pub reason: String,
    /// The deployment it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<u32>,
}

/// The answer to `deploy-cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployCancelled {
    /// The deployment whose deploy was cancelled.
    pub deployment: u32,
}
