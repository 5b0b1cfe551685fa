//! Who may do what on a node many people share.
//!
//! The caller is who the socket's peer credentials say (never what the
//! client sends): root and the members of `operator-group` are operators and
//! may act everywhere; any other local user acts in the namespaces it
//! belongs to — its own, named after it, and the teams an operator added it
//! to; a uid of the gears' range is never a caller. [`authorize`] decides
//! every request before the node does anything, and a refusal says what the
//! caller may do instead without naming what it may not see. Teams are kept
//! in `<state>/namespaces.json`, written atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use gearhost_sys::lock::lock;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ErrorKind, GearRef, Request, reply};
use crate::config::NodeConfig;
use crate::state;

/// Who is calling, as the node established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Peer uid.
    pub uid: u32,
    /// Its user name.
    pub user: String,
    /// Root, or a member of the operator group.
    pub operator: bool,
    /// Whether it came through the node's ssh endpoint.
    pub ssh: SshRole,
}

/// How a caller reached the node through its ssh endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SshRole {
    /// It did not: a local caller.
    #[default]
    Local,
    /// The endpoint itself (sshd asking whose key logs in): it may look up
    /// keys and nothing else.
    Endpoint,
    /// A session of the user whose key logged in.
    User,
    /// Another node of the cluster, asking for its half of an operation
    /// between nodes (the arrival of a moved gear), on behalf of the caller
    /// it names.
    Node,
}

/// Establishes who is calling: from the socket's peer credentials, or, for
/// the node's ssh endpoint (its login account's uid, `ssh_uid`), the user
/// its session acts for (`as_user`). Only that account may name another
/// user; only the trusted `gear` program runs as it, as sshd's forced
/// command, so the claim is as good as the key that logged in.
pub fn identify_as(
    uid: u32,
    gid: u32,
    as_user: Option<&str>,
    ssh_uid: Option<u32>,
    config: &NodeConfig,
) -> Result<Caller, ApiError> {
    if ssh_uid == Some(uid) {
        let Some(user) = as_user else {
            return Ok(Caller {
                uid,
                user: config
                    .ssh
                    .as_ref()
                    .map_or_else(String::new, |s| s.user.clone()),
                operator: false,
                ssh: SshRole::Endpoint,
            });
        };
        check_namespace_name(user)?;
        // a key's owner who is a local operator is one through ssh too
        let operator = match nix::unistd::User::from_name(user) {
            Ok(Some(local)) => {
                local.uid.is_root()
                    || config
                        .operator_group
                        .as_deref()
                        .is_some_and(|g| in_group(g, local.uid.as_raw(), local.gid.as_raw(), user))
            }
            _ => false,
        };
        return Ok(Caller {
            uid,
            user: user.to_string(),
            operator,
            ssh: SshRole::User,
        });
    }
    if as_user.is_some() {
        return Err(ApiError::new(
            ErrorKind::Denied,
            "only the node's ssh endpoint may act for another user; send the request as yourself",
        ));
    }
    identify(uid, gid, config)
}

/// Whether the user `name` (uid `uid`, primary gid `gid`) is in `group`.
fn in_group(group: &str, uid: u32, gid: u32, name: &str) -> bool {
    let Ok(Some(g)) = nix::unistd::Group::from_name(group) else {
        return false;
    };
    if g.gid.as_raw() == gid {
        return true;
    }
    if g.mem.iter().any(|m| m == name) {
        return true;
    }
    // the user's own primary group, from its passwd entry
    matches!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Ok(Some(u)) if u.gid == g.gid
    )
}

/// Establishes who is calling from the socket's peer credentials, or says
/// why that caller may not use the node.
pub fn identify(uid: u32, gid: u32, config: &NodeConfig) -> Result<Caller, ApiError> {
    if (config.uid_min..=config.uid_max).contains(&uid) {
        return Err(ApiError::new(
            ErrorKind::Denied,
            format!(
                "uid {uid} belongs to this node's gears ({}..={}); gears do not use the node API",
                config.uid_min, config.uid_max
            ),
        ));
    }
    let user = match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ if uid == 0 => "root".to_string(),
        _ => {
            return Err(ApiError::new(
                ErrorKind::Denied,
                format!(
                    "uid {uid} has no user name on this machine; the node knows callers by name (add the user to /etc/passwd or your directory)"
                ),
            ));
        }
    };
    let operator = uid == 0
        || config
            .operator_group
            .as_deref()
            .is_some_and(|g| in_group(g, uid, gid, &user));
    if !operator
        && let Some(group) = config.users_group.as_deref()
        && !in_group(group, uid, gid, &user)
    {
        return Err(ApiError::new(
            ErrorKind::Denied,
            format!(
                "{user} may not use this node: it serves the members of the {group} group; ask an operator to add you"
            ),
        ));
    }
    Ok(Caller {
        uid,
        user,
        operator,
        ssh: SshRole::Local,
    })
}

/// A team namespace, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Team {
    members: BTreeSet<String>,
    created: u64,
    created_by: String,
}

/// The node's team namespaces.
#[derive(Debug)]
pub struct Namespaces {
    path: PathBuf,
    teams: Mutex<BTreeMap<String, Team>>,
}

fn denied(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::Denied, message)
}

fn operators_only(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if caller.operator {
        Ok(())
    } else {
        Err(denied(format!(
            "only operators {what}; {} is not one (root and the operator group are)",
            caller.user
        )))
    }
}

impl Namespaces {
    /// Loads `<state>/namespaces.json` (none yet: no teams).
    pub fn open(config: &NodeConfig) -> anyhow::Result<Namespaces> {
        let path = config.state_dir.join("namespaces.json");
        let teams = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a namespace list ({e}); restore it from a backup or remove it (teams are then gone)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Ok(Namespaces {
            path,
            teams: Mutex::new(teams),
        })
    }

    fn save(&self, teams: &BTreeMap<String, Team>) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec_pretty(teams)
            .map_err(|e| ApiError::new(ErrorKind::Failed, e.to_string()))?;
        state::write_atomic(&self.path, &bytes)
            .map_err(|e| ApiError::new(ErrorKind::Failed, e.to_string()))
    }

    /// Whether `caller` may act on gears of namespace `namespace`.
    pub fn may_act(&self, caller: &Caller, namespace: &str) -> bool {
        caller.operator
            || namespace == caller.user
            || lock(&self.teams)
                .get(namespace)
                .is_some_and(|t| t.members.contains(&caller.user))
    }

    /// The namespaces `user` belongs to: its own, then its teams.
    pub fn of_user(&self, user: &str) -> Vec<String> {
        let mut out = vec![user.to_string()];
        out.extend(
            lock(&self.teams)
                .iter()
                .filter(|(_, t)| t.members.contains(user))
                .map(|(n, _)| n.clone()),
        );
        out
    }

    /// Every team's name.
    pub fn team_names(&self) -> Vec<String> {
        lock(&self.teams).keys().cloned().collect()
    }

    /// The view of namespace `name` (a team, or a user's own).
    pub fn info(&self, name: &str, gears: usize) -> reply::NamespaceInfo {
        match lock(&self.teams).get(name) {
            Some(t) => reply::NamespaceInfo {
                name: name.to_string(),
                kind: reply::NamespaceKind::Team,
                members: t.members.iter().cloned().collect(),
                gears,
            },
            None => reply::NamespaceInfo {
                name: name.to_string(),
                kind: reply::NamespaceKind::User,
                members: vec![name.to_string()],
                gears,
            },
        }
    }

    /// `namespace-create`: a team; its name may not be a user's.
    pub fn create(&self, caller: &Caller, name: &str, members: &[String]) -> Result<(), ApiError> {
        operators_only(caller, "create team namespaces")?;
        check_namespace_name(name)?;
        if user_exists(name) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "{name} is a user's name, and so that user's own namespace; give the team another name"
                ),
            ));
        }
        for m in members {
            check_user(m)?;
        }
        let mut teams = lock(&self.teams);
        if teams.contains_key(name) {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "namespace {name} exists already; add members with `gear namespace add-member {name} USER`"
                ),
            ));
        }
        let mut next = teams.clone();
        next.insert(
            name.to_string(),
            Team {
                members: members.iter().cloned().collect(),
                created: state::now(),
                created_by: caller.user.clone(),
            },
        );
        self.save(&next)?;
        *teams = next;
        Ok(())
    }

    /// `namespace-delete`: only a team without gears.
    pub fn delete(&self, caller: &Caller, name: &str, gears: usize) -> Result<(), ApiError> {
        operators_only(caller, "delete team namespaces")?;
        let mut teams = lock(&self.teams);
        if !teams.contains_key(name) {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no team namespace {name}; see `gear namespace list`"),
            ));
        }
        if gears > 0 {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("namespace {name} still holds {gears} gear(s); destroy them first"),
            ));
        }
        let mut next = teams.clone();
        next.remove(name);
        self.save(&next)?;
        *teams = next;
        Ok(())
    }

    /// Adds (`add`) or removes a member of team `name`.
    pub fn change_member(
        &self,
        caller: &Caller,
        name: &str,
        user: &str,
        add: bool,
    ) -> Result<(), ApiError> {
        operators_only(caller, "manage the members of team namespaces")?;
        if add {
            check_user(user)?;
        }
        let mut teams = lock(&self.teams);
        let Some(team) = teams.get(name) else {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no team namespace {name}; create it with `gear namespace create {name}`"),
            ));
        };
        if add == team.members.contains(user) {
            return Ok(());
        }
        let mut next = teams.clone();
        if let Some(t) = next.get_mut(name) {
            if add {
                t.members.insert(user.to_string());
            } else {
                t.members.remove(user);
            }
        }
        self.save(&next)?;
        *teams = next;
        Ok(())
    }
}

fn check_namespace_name(name: &str) -> Result<(), ApiError> {
    gearhost_runtime::manifest::check_name(name, 32).map_err(|problem| {
        ApiError::new(
            ErrorKind::Invalid,
            format!(
                "invalid namespace {name:?}: {problem}; use 1-32 lower-case letters, digits and single dashes, starting with a letter"
            ),
        )
    })
}

/// A user name keys may be given to: a name a namespace could have (the
/// user's own namespace is named after it).
pub fn check_user_name(name: &str) -> Result<(), ApiError> {
    gearhost_runtime::manifest::check_name(name, 32).map_err(|problem| {
        ApiError::new(
            ErrorKind::Invalid,
            format!(
                "invalid user name {name:?}: {problem}; a user's name is its namespace's, 1-32 \
                 lower-case letters, digits and single dashes, starting with a letter"
            ),
        )
    })
}

fn user_exists(name: &str) -> bool {
    matches!(nix::unistd::User::from_name(name), Ok(Some(_)))
}

fn check_user(name: &str) -> Result<(), ApiError> {
    if user_exists(name) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::Invalid,
            format!("there is no user {name:?} on this machine"),
        ))
    }
}

/// The refusal for a namespace the caller does not belong to: the same
/// whether or not it exists or holds the gear, so it tells nothing about
/// other tenants.
fn not_yours(caller: &Caller, ns: &Namespaces, namespace: &str) -> ApiError {
    denied(format!(
        "{} may not act in namespace {namespace}; your namespaces are {} (choose one with -N); an operator adds members to teams",
        caller.user,
        ns.of_user(&caller.user).join(", ")
    ))
}

/// How a message names a gear (`name` in `namespace`) to a caller acting in
/// namespace `asking`: by name within the caller's namespace, and as
/// "another tenant's gear" outside it, so that no tenant learns the names of
/// another's gears.
pub fn other_gear(asking: &str, name: &str, namespace: &str) -> String {
    if asking == namespace {
        format!("gear {name} in namespace {namespace}")
    } else {
        "a gear of another namespace".to_string()
    }
}

/// Decides whether `caller` may send `request` at all. Requests that name a
/// gear need the caller in its namespace; cartridges, teams, the audit log
/// and the metrics are the operators'.
pub fn authorize(caller: &Caller, ns: &Namespaces, request: &Request) -> Result<(), ApiError> {
    let gear_in = |g: &GearRef| {
        if ns.may_act(caller, &g.namespace) {
            Ok(())
        } else {
            Err(not_yours(caller, ns, &g.namespace))
        }
    };
    if caller.ssh == SshRole::Endpoint {
        return match request {
            Request::KeysLookup(_) => Ok(()),
            other => Err(denied(format!(
                "the ssh endpoint's own account may only look up keys, not {}",
                other.name()
            ))),
        };
    }
    let own_or_operator = |user: &Option<String>, what: &str| match user {
        Some(u) if *u != caller.user => operators_only(caller, what),
        _ => Ok(()),
    };
    match request {
        Request::KeysAdd(op) => own_or_operator(&op.user, "manage other users' keys"),
        Request::KeysRemove(op) => own_or_operator(&op.user, "manage other users' keys"),
        Request::KeysList(op) if op.all => operators_only(caller, "list every user's keys"),
        Request::KeysList(op) => own_or_operator(&op.user, "list other users' keys"),
        Request::KeysLookup(_) => operators_only(caller, "look up whose a key is"),
        Request::CartridgeInstall(_) | Request::CartridgePull(_) | Request::CartridgeRemove(_) => {
            operators_only(caller, "install and remove cartridges")
        }
        Request::ImagePull(_) | Request::ImageList(_) | Request::ImagePrune(_) => {
            operators_only(caller, "manage the node's images")
        }
        Request::Metrics(_) => operators_only(caller, "read the node's metrics"),
        Request::Audit(_) => operators_only(caller, "read the audit log"),
        Request::NodeStop(_) => operators_only(caller, "stop the node"),
        Request::NodeRestart(_) => operators_only(caller, "restart the node"),
        Request::NodeResume(_) => operators_only(caller, "read what the node's resume did"),
        Request::NodeList(_) => operators_only(caller, "list the cluster's nodes"),
        Request::Move(_) => operators_only(caller, "move gears between nodes"),
        Request::Receive(_) | Request::Replicate(_) | Request::Recover(_)
            if caller.ssh == SshRole::Node =>
        {
            Ok(())
        }
        Request::Receive(_) | Request::Replicate(_) | Request::Recover(_) => Err(denied(
            "receive, replicate and recover are what nodes of a cluster send each other (moves, failover); use `gear move`"
                .to_string(),
        )),
        Request::NamespaceCreate(_)
        | Request::NamespaceDelete(_)
        | Request::NamespaceAddMember(_)
        | Request::NamespaceRemoveMember(_) => operators_only(caller, "manage team namespaces"),
        Request::Ping(_)
        | Request::Whoami(_)
        | Request::List(_)
        | Request::CartridgeList(_)
        | Request::NamespaceList(_) => Ok(()),
        // without a gear, what a user is sent is filtered to its namespaces
        Request::NodeEvents(op) => op.gear.as_ref().map_or(Ok(()), gear_in),
        Request::Link(op) => gear_in(&op.gear).and_then(|()| gear_in(&op.to)),
        Request::Unlink(op) => gear_in(&op.gear).and_then(|()| gear_in(&op.to)),
        other => match gear_of(other) {
            Some(g) => gear_in(g),
            None => Err(denied(format!(
                "{} is not an operation this node lets callers use",
                other.name()
            ))),
        },
    }
}

/// The gear a request names, if it names one.
pub fn gear_of(request: &Request) -> Option<&GearRef> {
    Some(match request {
        Request::Create(op) => &op.gear,
        Request::Show(op) => &op.gear,
        Request::Destroy(op) => &op.gear,
        Request::Deploy(op) => &op.gear,
        Request::DeployImage(op) => &op.gear,
        Request::Build(op) => &op.gear,
        Request::Start(op) => &op.gear,
        Request::Stop(op) => &op.gear,
        Request::Restart(op) => &op.gear,
        Request::Status(op) => &op.gear,
        Request::Control(op) => &op.gear,
        Request::Deployments(op) => &op.gear,
        Request::Rollback(op) => &op.gear,
        Request::EnvSet(op) => &op.gear,
        Request::EnvUnset(op) => &op.gear,
        Request::EnvList(op) => &op.gear,
        Request::Logs(op) => &op.gear,
        Request::Link(op) => &op.gear,
        Request::Unlink(op) => &op.gear,
        Request::AliasAdd(op) => &op.gear,
        Request::AliasRemove(op) => &op.gear,
        Request::AliasList(op) => &op.gear,
        Request::Idle(op) => &op.gear,
        Request::Unidle(op) => &op.gear,
        Request::Exec(op) => &op.gear,
        Request::GitAccess(op) => &op.gear,
        Request::AliasCert(op) => &op.gear,
        Request::HttpsSet(op) => &op.gear,
        Request::AliasAcme(op) => &op.gear,
        Request::DeployCancel(op) => &op.gear,
        Request::Snapshot(op) => &op.gear,
        Request::Restore(op) => &op.gear,
        Request::Move(op) => &op.gear,
        Request::Receive(op) => &op.gear,
        Request::Replicate(op) => &op.gear,
        Request::Recover(op) => &op.gear,
        Request::NodeEvents(op) => return op.gear.as_ref(),
        Request::KeysAdd(_)
        | Request::KeysList(_)
        | Request::KeysRemove(_)
        | Request::KeysLookup(_)
        | Request::Ping(_)
        | Request::CartridgeInstall(_)
        | Request::CartridgePull(_)
        | Request::ImagePull(_)
        | Request::ImageList(_)
        | Request::ImagePrune(_)
        | Request::CartridgeList(_)
        | Request::CartridgeRemove(_)
        | Request::List(_)
        | Request::Whoami(_)
        | Request::NamespaceCreate(_)
        | Request::NamespaceDelete(_)
        | Request::NamespaceAddMember(_)
        | Request::NamespaceRemoveMember(_)
        | Request::NamespaceList(_)
        | Request::Audit(_)
        | Request::Metrics(_)
        | Request::NodeStop(_)
        | Request::NodeRestart(_)
        | Request::NodeResume(_)
        | Request::NodeList(_) => return None,
    })
}

/// Whether a request changes something (the audit log records those).
pub fn changes_something(request: &Request) -> bool {
    !matches!(
        request,
        Request::Ping(_)
            | Request::List(_)
            | Request::Show(_)
            | Request::Status(_)
            | Request::Deployments(_)
            | Request::EnvList(_)
            | Request::Logs(_)
            | Request::AliasList(_)
            | Request::CartridgeList(_)
            | Request::ImageList(_)
            | Request::Metrics(_)
            | Request::Whoami(_)
            | Request::NamespaceList(_)
            | Request::Audit(_)
            | Request::KeysList(_)
            | Request::KeysLookup(_)
            | Request::GitAccess(_)
            | Request::NodeEvents(_)
            | Request::NodeList(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ops;

    fn namespaces() -> (tempfile::TempDir, Namespaces) {
        let dir = tempfile::tempdir().expect("state");
        let mut config = NodeConfig::embedded();
        config.state_dir = dir.path().to_path_buf();
        let ns = Namespaces::open(&config).expect("open");
        (dir, ns)
    }

    fn user(name: &str) -> Caller {
        Caller {
            uid: 5000,
            user: name.into(),
            operator: false,
            ssh: SshRole::Local,
        }
    }

    fn root() -> Caller {
        Caller {
            uid: 0,
            user: "root".into(),
            operator: true,
            ssh: SshRole::Local,
        }
    }

    fn start(name: &str, namespace: &str) -> Request {
        ops::Start {
            gear: GearRef {
                name: name.into(),
                namespace: namespace.into(),
            },
        }
        .into()
    }

    #[test]
    fn snapshots_and_restores_are_for_the_gears_namespace_and_restores_are_audited() {
        let (_dir, ns) = namespaces();
        let gear = |namespace: &str| GearRef {
            name: "web".into(),
            namespace: namespace.into(),
        };
        let daemon = user("daemon");
        for namespace in ["daemon", "bin"] {
            let snapshot = Request::from(ops::Snapshot {
                gear: gear(namespace),
            });
            let restore = Request::from(ops::Restore {
                gear: gear(namespace),
                source: "web.tar.gz".into(),
            });
            for request in [&snapshot, &restore] {
                assert_eq!(gear_of(request), Some(&gear(namespace)));
                assert_eq!(
                    authorize(&daemon, &ns, request).is_ok(),
                    namespace == "daemon",
                    "{} in {namespace}",
                    request.name()
                );
                assert!(authorize(&root(), &ns, request).is_ok());
                assert!(changes_something(request), "{}", request.name());
            }
        }
    }

    #[test]
    fn users_act_in_their_own_namespace_and_their_teams_only() {
        let (_dir, ns) = namespaces();
        // "root" and "daemon" exist on every machine, so they can be members
        ns.create(&root(), "team-a", &["daemon".into()])
            .expect("team");
        let daemon = user("daemon");
        assert!(authorize(&daemon, &ns, &start("web", "daemon")).is_ok());
        assert!(authorize(&daemon, &ns, &start("web", "team-a")).is_ok());
        let e = authorize(&daemon, &ns, &start("web", "bin")).expect_err("not its namespace");
        assert_eq!(e.kind, ErrorKind::Denied);
        assert!(
            e.message.contains("your namespaces are daemon, team-a"),
            "{e}"
        );
        // the same refusal whether or not the gear or namespace exists
        let e2 = authorize(&daemon, &ns, &start("other", "bin")).expect_err("same");
        assert_eq!(
            e.message.replace("web", ""),
            e2.message.replace("other", "")
        );
        assert!(authorize(&root(), &ns, &start("web", "bin")).is_ok());
        // removed from the team: no longer
        ns.change_member(&root(), "team-a", "daemon", false)
            .expect("remove");
        assert!(authorize(&daemon, &ns, &start("web", "team-a")).is_err());
    }

    #[test]
    fn cartridges_teams_audit_and_metrics_are_for_operators() {
        let (_dir, ns) = namespaces();
        let daemon = user("daemon");
        for r in [
            Request::from(ops::CartridgeRemove { name: "x".into() }),
            ops::Metrics {}.into(),
            ops::Audit { lines: 5 }.into(),
            ops::NodeStop { gears: false }.into(),
            ops::NodeRestart {}.into(),
            ops::NodeResume {}.into(),
            ops::NodeList {}.into(),
            ops::NamespaceCreate {
                name: "t".into(),
                members: vec![],
            }
            .into(),
        ] {
            let e = authorize(&daemon, &ns, &r).expect_err(r.name());
            assert!(e.message.contains("only operators"), "{e}");
            assert!(authorize(&root(), &ns, &r).is_ok());
        }
        assert!(authorize(&daemon, &ns, &ops::CartridgeList {}.into()).is_ok());
        assert!(ns.create(&daemon, "t", &[]).is_err());
    }

    #[test]
    fn teams_persist_and_their_names_are_checked() {
        let (dir, ns) = namespaces();
        let e = ns
            .create(&root(), "daemon", &[])
            .expect_err("a user's name");
        assert_eq!(e.kind, ErrorKind::Conflict);
        let e = ns.create(&root(), "Team", &[]).expect_err("bad name");
        assert_eq!(e.kind, ErrorKind::Invalid);
        let e = ns
            .create(&root(), "team-b", &["no-such-user-here".into()])
            .expect_err("unknown member");
        assert!(e.message.contains("no user"), "{e}");
        ns.create(&root(), "team-b", &["daemon".into()])
            .expect("team");
        let mut config = NodeConfig::embedded();
        config.state_dir = dir.path().to_path_buf();
        let again = Namespaces::open(&config).expect("reopen");
        assert_eq!(again.of_user("daemon"), vec!["daemon", "team-b"]);
        let e = again
            .delete(&root(), "team-b", 1)
            .expect_err("holds a gear");
        assert!(e.message.contains("destroy them first"), "{e}");
        again.delete(&root(), "team-b", 0).expect("empty team");
        assert_eq!(again.of_user("daemon"), vec!["daemon"]);
    }

    #[test]
    fn keys_are_the_owners_and_the_ssh_account_only_looks_them_up() {
        let (_dir, ns) = namespaces();
        let ada = user("ada");
        let add = |who: Option<&str>| -> Request {
            ops::KeysAdd {
                user: who.map(str::to_string),
                key: "ssh-ed25519 AAAA".into(),
            }
            .into()
        };
        authorize(&ada, &ns, &add(None)).expect("her own");
        authorize(&ada, &ns, &add(Some("ada"))).expect("her own, named");
        let e = authorize(&ada, &ns, &add(Some("bob"))).expect_err("bob's");
        assert_eq!(e.kind, ErrorKind::Denied);
        authorize(&root(), &ns, &add(Some("bob"))).expect("an operator");
        let all: Request = ops::KeysList {
            user: None,
            all: true,
        }
        .into();
        assert!(authorize(&ada, &ns, &all).is_err());
        let lookup: Request = ops::KeysLookup {
            kind: "ssh-ed25519".into(),
            key: "AAAA".into(),
        }
        .into();
        assert!(authorize(&ada, &ns, &lookup).is_err(), "not for users");
        let endpoint = Caller {
            uid: 999,
            user: "gear".into(),
            operator: false,
            ssh: SshRole::Endpoint,
        };
        authorize(&endpoint, &ns, &lookup).expect("the endpoint looks keys up");
        let e = authorize(&endpoint, &ns, &start("web", "gear")).expect_err("nothing else");
        assert!(e.message.contains("may only look up keys"), "{e}");
    }

    #[test]
    fn only_the_ssh_account_may_name_the_user_it_acts_for() {
        let mut config = NodeConfig::embedded();
        config.uid_min = 70000;
        config.uid_max = 70100;
        // root naming a user is refused, like anyone who is not the endpoint
        let e = identify_as(0, 0, Some("ada"), Some(999), &config).expect_err("root");
        assert_eq!(e.kind, ErrorKind::Denied);
        let e = identify_as(0, 0, Some("ada"), None, &config).expect_err("no endpoint");
        assert_eq!(e.kind, ErrorKind::Denied);
        let ada = identify_as(999, 999, Some("ada"), Some(999), &config).expect("the endpoint");
        assert_eq!((ada.user.as_str(), ada.ssh), ("ada", SshRole::User));
        assert!(!ada.operator, "ada is no local operator");
        let bare = identify_as(999, 999, None, Some(999), &config).expect("the endpoint");
        assert_eq!(bare.ssh, SshRole::Endpoint);
        let e = identify_as(999, 999, Some("Not A Name"), Some(999), &config).expect_err("name");
        assert_eq!(e.kind, ErrorKind::Invalid);
    }
}
