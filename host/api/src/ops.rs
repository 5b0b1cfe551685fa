//! The operations a client asks the node for: one type per operation, each
//! tied by [`Op`] to the type of its answer.
//!
//! On the wire an operation is one JSON object whose `op` member names it
//! (see [`Request`]); its other members are the operation's fields. Every
//! operation refuses members it does not know, so a misspelt field is an
//! error and not silently ignored.

use serde::{Deserialize, Serialize};

use crate::reply;
use crate::{GearRef, Op};

/// Declares operation structs and the [`Request`] enum over them, with each
/// operation's reply type and wire name in one place.
macro_rules! ops {
    ($(
        $(#[$meta:meta])*
        $name:ident $wire:literal => $reply:ty { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }
    )*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $name {
                $($(#[$fmeta])* pub $field: $ty,)*
            }

            impl Op for $name {
                type Reply = $reply;
                const NAME: &'static str = $wire;
            }

            impl From<$name> for Request {
                fn from(op: $name) -> Request {
                    Request::$name(op)
                }
            }
        )*

        /// A request to the node: one of the operations, tagged by `op`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "op")]
        pub enum Request {
            $(
                $(#[$meta])*
                #[serde(rename = $wire)]
                $name($name),
            )*
        }

        impl Request {
            /// The operation's name on the wire (`start`, `env-set`, ...).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Request::$name(_) => $wire,)*
                }
            }

            /// Every operation's wire name.
            pub const NAMES: &'static [&'static str] = &[$($wire),*];
        }
    };
}

ops! {
    /// Is the node there? Answers its version, API version and addresses.
    Ping "ping" => reply::NodeInfo {}
    /// Install (or upgrade) the cartridge in a directory.
    ///
    /// The cartridge's files are not named by path: the request carries one
    /// descriptor (SCM_RIGHTS), the read end of a pipe on which the client
    /// writes a tar archive of the cartridge directory (`cartridge.toml`
    /// and the hooks component), read with the client's own rights. The
    /// node unpacks it into a staging directory of its store under the same
    /// rules as a deployment, then validates it. The cartridge's name comes
    /// from its manifest.
    CartridgeInstall "cartridge-install" => reply::CartridgeSummary {
        /// Where the cartridge came from (the client's directory name), a
        /// label for the node's log; never opened by the node.
        source: String,
    }
    /// Install a cartridge from an OCI registry: the node pulls the artifact,
    /// verifies every digest and size, and installs it as a directory install
    /// does, recording where it came from.
    CartridgePull "cartridge-pull" => reply::CartridgeSummary {
        /// `registry/namespace/name:version` or `registry/namespace/name@sha256:...`.
        reference: String,
        /// Plain HTTP instead of HTTPS (a registry on loopback only).
        #[serde(default)]
        insecure: bool,
        /// The credentials the client found for the registry (none: anonymous).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials: Option<RegistryCredentials>,
    }
    /// Installed cartridges.
    CartridgeList "cartridge-list" => Vec<reply::CartridgeSummary> {}
    /// Pull a container image into the node's image store (`linux/amd64`),
    /// every blob verified, its layers unpacked and shared.
    ImagePull "image-pull" => reply::ImageSummary {
        /// `registry/repository:tag` or `registry/repository@sha256:...`.
        reference: String,
        /// Plain HTTP instead of HTTPS (a registry on loopback only).
        #[serde(default)]
        insecure: bool,
        /// The credentials the client found for the registry (none: anonymous).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials: Option<RegistryCredentials>,
    }
    /// The images in the node's image store.
    ImageList "image-list" => Vec<reply::ImageSummary> {}
    /// Remove the images no gear uses, and the layers no image left uses.
    ImagePrune "image-prune" => reply::ImagesPruned {}
    /// Remove an installed cartridge no gear uses.
    CartridgeRemove "cartridge-remove" => reply::CartridgeRemoved {
        /// Cartridge name.
        name: String,
    }
    /// Create a gear.
    Create "create" => reply::GearSummary {
        /// The gear.
        gear: GearRef,
        /// Its cartridge.
        cartridge: String,
        /// Its disk quota in bytes (none: the node's default, `gears.disk`);
        /// at most the node's `gears.max-disk`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk: Option<u64>,
        /// The cluster node to place it on (none: the node the placement
        /// policy chooses; a standalone node: itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    }
    /// All gears.
    List "list" => Vec<reply::GearView> {}
    /// One gear in detail.
    Show "show" => reply::GearDetail {
        /// The gear.
        gear: GearRef,
    }
    /// Stop and remove a gear, leaving nothing behind.
    Destroy "destroy" => reply::Destroyed {
        /// The gear.
        gear: GearRef,
    }
    /// Deploy a source directory: new deployment, build, activate, restart.
    ///
    /// The sources are not named by path: the request carries one descriptor
    /// (SCM_RIGHTS), the read end of a pipe on which the client writes a tar
    /// archive of the directory, read with the client's own rights. The node
    /// unpacks it into the new deployment (never outside it; no devices,
    /// FIFOs, sockets or hard links; within `gears.max-deploy-size`), and
    /// the end of the archive is the end of the sources.
    Deploy "deploy" => reply::Deployed {
        /// The gear.
        gear: GearRef,
        /// Where the sources came from (the client's directory), a label
        /// kept in the deployment record and shown by `gear deployments`;
        /// never opened by the node.
        source: String,
    }
    /// Deploy a container image to a gear of the `image` cartridge: the image
    /// is pulled (`linux/amd64`, every blob verified, layers shared), made a
    /// new deployment, activated, and the gear restarted onto it.
    DeployImage "deploy-image" => reply::Deployed {
        /// The gear.
        gear: GearRef,
        /// `registry/repository:tag` or `registry/repository@sha256:...`.
        reference: String,
        /// Plain HTTP instead of HTTPS (a registry on loopback only).
        #[serde(default)]
        insecure: bool,
        /// The credentials the client found for the registry (none: anonymous).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials: Option<RegistryCredentials>,
        /// The port the image's app serves HTTP on (default: its first
        /// exposed TCP port, else the cartridge's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    }
    /// Run the build hook on the active deployment.
    Build "build" => reply::Built {
        /// The gear.
        gear: GearRef,
    }
    /// Start the gear.
    Start "start" => reply::GearView {
        /// The gear.
        gear: GearRef,
    }
    /// Stop the gear.
    Stop "stop" => reply::GearView {
        /// The gear.
        gear: GearRef,
    }
    /// Stop, then start.
    Restart "restart" => reply::GearView {
        /// The gear.
        gear: GearRef,
    }
    /// State and processes.
    Status "status" => reply::GearView {
        /// The gear.
        gear: GearRef,
    }
    /// Run the cartridge's control hook.
    Control "control" => reply::ControlOutput {
        /// The gear.
        gear: GearRef,
        /// Action name.
        action: String,
        /// Arguments.
        args: Vec<String>,
    }
    /// Deployment history.
    Deployments "deployments" => reply::DeploymentList {
        /// The gear.
        gear: GearRef,
    }
    /// Activate an earlier deployment (default: the one before the active one).
    Rollback "rollback" => reply::RolledBack {
        /// The gear.
        gear: GearRef,
        /// Deployment id.
        id: Option<u32>,
    }
    /// Set user variables.
    EnvSet "env-set" => reply::EnvChanged {
        /// The gear.
        gear: GearRef,
        /// `KEY`, value pairs.
        vars: Vec<(String, String)>,
    }
    /// Remove user variables.
    EnvUnset "env-unset" => reply::EnvRemoved {
        /// The gear.
        gear: GearRef,
        /// Keys.
        keys: Vec<String>,
    }
    /// The effective environment, by layer.
    EnvList "env-list" => reply::Environment {
        /// The gear.
        gear: GearRef,
    }
    /// The gear's logs, as [`Event::Line`](crate::Event::Line) events; the
    /// answer marks the end (with `follow`, when the gear is gone).
    Logs "logs" => () {
        /// The gear.
        gear: GearRef,
        /// Last lines to show.
        lines: usize,
        /// Keep streaming new lines.
        follow: bool,
        /// Show hook logs instead of process output.
        hooks: bool,
        /// Show the frontend's access log of the gear's requests instead.
        #[serde(default)]
        access: bool,
    }
    /// Link `gear` to `to`: `to`'s primary endpoint becomes reachable on
    /// `gear`'s own loopback, and `gear` receives what `to`'s cartridge
    /// publishes. Both gears are in the same namespace.
    Link "link" => reply::Linked {
        /// The gear that gets access (the app).
        gear: GearRef,
        /// The gear it reaches (the database).
        to: GearRef,
    }
    /// Remove a link made by [`Link`].
    Unlink "unlink" => reply::Unlinked {
        /// The gear that had access.
        gear: GearRef,
        /// The gear it reached.
        to: GearRef,
    }
    /// Add a host name the frontend routes to the gear.
    AliasAdd "alias-add" => reply::AliasChanged {
        /// The gear.
        gear: GearRef,
        /// The host name, e.g. `www.example.com`.
        hostname: String,
    }
    /// Remove an alias.
    AliasRemove "alias-remove" => reply::AliasChanged {
        /// The gear.
        gear: GearRef,
        /// The host name.
        hostname: String,
    }
    /// Attach a TLS certificate to one of the gear's aliases: the chain
    /// (PEM, leaf first) and its private key (PEM), read by the client with
    /// its own rights. The node checks that they belong together, cover the
    /// name and are valid now, keeps them readable by root only, and serves
    /// them from the next handshake on.
    AliasCert "alias-cert" => reply::AliasCertificate {
        /// The gear.
        gear: GearRef,
        /// The alias.
        hostname: String,
        /// The certificate chain, PEM.
        certificate: String,
        /// Its private key, PEM.
        key: String,
    }
    /// Get the alias's certificate from the node's ACME server (ordered now,
    /// renewed before it expires, its state in `alias-list`).
    AliasAcme "alias-acme" => reply::AliasCertificate {
        /// The gear.
        gear: GearRef,
        /// The alias.
        hostname: String,
    }
    /// Change what the gear asks of HTTPS (a field left out stays as it
    /// is; none: just show it): redirect plain HTTP to HTTPS for its names
    /// that have a certificate, and send HSTS over TLS (`hsts-max-age` 0
    /// turns it off).
    HttpsSet "https-set" => reply::GearHttpsOptions {
        /// The gear.
        gear: GearRef,
        /// Redirect plain HTTP to HTTPS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redirect: Option<bool>,
        /// HSTS max-age in seconds (0: off).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hsts_max_age: Option<u64>,
    }
    /// The gear's host names.
    AliasList "alias-list" => reply::HostNames {
        /// The gear.
        gear: GearRef,
    }
    /// Put a running gear to sleep: freeze it (`frozen`: its next request
    /// through the frontend thaws it), or with `stop` stop it and mark it
    /// idle (its next request starts it again). With `stop`, a frozen gear
    /// is stopped too.
    Idle "idle" => reply::GearView {
        /// The gear.
        gear: GearRef,
        /// Stop it rather than freeze it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stop: bool,
    }
    /// Start an idle gear now, or thaw a frozen one.
    Unidle "unidle" => reply::GearView {
        /// The gear.
        gear: GearRef,
    }
    /// Who the node sees calling: uid, user name, whether an operator, and
    /// the namespaces the caller may act in.
    Whoami "whoami" => reply::CallerInfo {}
    /// Create a team namespace (operators only), with its first members.
    NamespaceCreate "namespace-create" => reply::NamespaceInfo {
        /// The namespace.
        name: String,
        /// User names of its members.
        members: Vec<String>,
    }
    /// Delete a team namespace without gears (operators only).
    NamespaceDelete "namespace-delete" => reply::NamespaceDeleted {
        /// The namespace.
        name: String,
    }
    /// Add a user to a team namespace (operators only).
    NamespaceAddMember "namespace-add-member" => reply::NamespaceInfo {
        /// The namespace.
        name: String,
        /// The user's name.
        user: String,
    }
    /// Remove a user from a team namespace (operators only).
    NamespaceRemoveMember "namespace-remove-member" => reply::NamespaceInfo {
        /// The namespace.
        name: String,
        /// The user's name.
        user: String,
    }
    /// The namespaces the caller may act in (an operator: all of them).
    NamespaceList "namespace-list" => Vec<reply::NamespaceInfo> {}
    /// The last entries of the node's audit log (operators only).
    Audit "audit" => reply::AuditLog {
        /// How many of the last entries.
        lines: usize,
    }
    /// The node's metrics in the Prometheus text format.
    Metrics "metrics" => reply::MetricsText {}
    /// Stop the node (operators only). The gears' processes keep running
    /// for the next node to take back, unless `gears` asks to stop them
    /// too (their desired states are kept: the next node starts what should
    /// run). The node exits once the answer is sent.
    NodeStop "node-stop" => reply::NodeStopping {
        /// Stop every gear's processes as well.
        #[serde(default)]
        gears: bool,
    }
    /// Restart the node in place (operators only): it stops accepting, lets the
    /// requests in flight finish, and executes its binary again (the file on
    /// disk now, so a replaced binary is an upgrade) in the same process,
    /// handing the new image its listening sockets: connections that arrive
    /// meanwhile wait in the listen backlogs. The gears' processes keep
    /// running and are taken back. The answer comes before the restart.
    NodeRestart "node-restart" => reply::NodeRestarting {}
    /// What the node's last resume did with the gears of the node before it
    /// (operators only): which were taken back, which were started again and why.
    NodeResume "node-resume" => reply::ResumeOutcome {}
    /// The nodes of the cluster this node belongs to, up or down, with
    /// their load; a standalone node lists itself alone.
    NodeList "node-list" => Vec<reply::ClusterNode> {}
    /// Add an ssh public key (one `authorized_keys` line: type, base64,
    /// comment) to a user's keys: the caller's own, or `user`'s (operators).
    KeysAdd "keys-add" => reply::KeyInfo {
        /// Whose key (none: the caller's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The key line.
        key: String,
    }
    /// A user's ssh keys (the caller's own; `user`'s or everyone's with
    /// `all` for operators).
    KeysList "keys-list" => Vec<reply::KeyInfo> {
        /// Whose keys (none: the caller's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Everyone's (operators).
        #[serde(default)]
        all: bool,
    }
    /// Remove an ssh key by its fingerprint (`SHA256:...`).
    KeysRemove "keys-remove" => reply::KeyInfo {
        /// Whose key (none: the caller's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Its fingerprint.
        fingerprint: String,
    }
    /// Which user owns an ssh key (type and base64, as sshd's
    /// `AuthorizedKeysCommand` is given them): asked by the node's ssh
    /// endpoint only.
    KeysLookup "keys-lookup" => reply::KeyOwner {
        /// The key's type (`ssh-ed25519`, ...).
        kind: String,
        /// The key, base64.
        key: String,
    }
    /// The gear's git repository, for a push (`write`) or a clone through
    /// the node's ssh endpoint: the path the endpoint runs git on, created
    /// at the first use.
    GitAccess "git-access" => reply::GitRepo {
        /// The gear.
        gear: GearRef,
        /// Whether to push to it.
        write: bool,
    }
    /// The node's event log (deploys, starts, stops, crashes, restarts,
    /// idles, wakes, rollbacks, hook failures), each event a
    /// [`Event::Line`](crate::Event::Line) holding a [`reply::NodeEvent`] in
    /// JSON, oldest first; the answer marks the end. Operators see every
    /// gear's events, a user those of the namespaces it may act in.
    NodeEvents "node-events" => () {
        /// How many of the last events to send first.
        lines: usize,
        /// Keep sending events as they happen.
        follow: bool,
        /// Only this gear's events.
        #[serde(default)]
        gear: Option<GearRef>,
    }
    /// Cancel the deploy in progress on the gear: its hooks are stopped, the
    /// new deployment is marked failed ("cancelled") and the one before it
    /// keeps serving. The deploy's own caller gets the failure.
    DeployCancel "deploy-cancel" => reply::DeployCancelled {
        /// The gear.
        gear: GearRef,
        /// Cancel only if this deployment is the one being deployed (what
        /// the deploy's own client sends: it never cancels another's).
        #[serde(default)]
        deployment: Option<u32>,
    }
    /// Write an archive of the gear: its kept deployments, its data
    /// (`app-root/data`) and its environment, with a `snapshot.json` that
    /// describes it (see docs/ARCHITECTURE.md). The cartridge takes part
    /// through its `pre-snapshot` and `post-snapshot` actions when it lists
    /// them.
    ///
    /// The archive is not written to a path: the request carries one
    /// descriptor (SCM_RIGHTS), the write end of a pipe the client reads the
    /// gzip-compressed tar archive from; the end of the stream is the end
    /// of the archive, and the answer says how long it was.
    Snapshot "snapshot" => reply::Snapshotted {
        /// The gear.
        gear: GearRef,
    }
    /// Bring a gear back from an archive `snapshot` wrote: create it if it
    /// does not exist, else replace its deployments, data and environment
    /// (the cartridge takes part through `pre-restore` and `post-restore`).
    /// A refused or failed restore leaves the gear as it was.
    ///
    /// The request carries one descriptor, the read end of a pipe on which
    /// the client writes the archive; it is unpacked under the rules of a
    /// deployment (no `..`, no absolute paths, nothing through a link,
    /// sizes bounded).
    Restore "restore" => reply::Restored {
        /// The gear: the one in the archive, or another name to restore it as.
        gear: GearRef,
        /// Where the archive came from (the client's file), a label for
        /// messages; never opened by the node.
        source: String,
    }
    /// Move a gear to another node of the cluster (operators): its requests
    /// are held, it is stopped, its archive (as `snapshot` writes it) goes
    /// to the other node, which brings it back under the same id, uid, MCS
    /// level, name and aliases, takes its placement in one transaction and
    /// starts it if it ran; then this node's copy is removed and the held
    /// requests go to the other node. A move that fails before the other
    /// node takes the placement leaves the gear where it was, started again
    /// if it ran.
    Move "move" => reply::Moved {
        /// The gear.
        gear: GearRef,
        /// The node to move it to.
        node: String,
    }
    /// The other half of `move`, sent by the node that holds a gear to the
    /// node it moves to, never by a client: bring gear `id` in from the
    /// archive that follows (one descriptor, as for `restore`), take its
    /// placement, then let it wake on requests (`wake`) or start it now
    /// (`start`).
    Receive "receive" => reply::Restored {
        /// The gear.
        gear: GearRef,
        /// Its id in the cluster.
        id: String,
        /// The node it comes from.
        from: String,
        /// It wakes when a request comes (it ran or was idle).
        wake: bool,
        /// It starts now (it ran).
        start: bool,
        /// The user it belongs to, if a user (not an operator) made it.
        #[serde(default)]
        owner: Option<String>,
    }
    /// Sent by the node that holds a stateless gear to another node, never
    /// by a client: keep the archive that follows (one descriptor, as for
    /// `restore`) as the gear's replica, to bring the gear back from should
    /// its node die.
    Replicate "replicate" => reply::Replicated {
        /// The gear.
        gear: GearRef,
        /// Its id in the cluster.
        id: String,
        /// The user it belongs to, if a user (not an operator) made it.
        #[serde(default)]
        owner: Option<String>,
    }
    /// Sent by the failover leader to the node that keeps a dead node's
    /// gear's replica, never by a client: bring the gear back from it here,
    /// take its placement and start it.
    Recover "recover" => reply::Restored {
        /// The gear.
        gear: GearRef,
        /// Its id in the cluster.
        id: String,
        /// The node that died with it.
        from: String,
    }
    /// Run a command in the gear's sandbox with the caller's stdio, passed as
    /// descriptors with the request: stdin, stdout, stderr, and on a terminal
    /// optionally a pipe that gets a byte whenever the caller's window
    /// changes size.
    Exec "exec" => reply::ExecEnd {
        /// The gear.
        gear: GearRef,
        /// Command and arguments.
        argv: Vec<String>,
    }
}

/// A user name and password (or token) for an OCI registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    /// The user.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}
