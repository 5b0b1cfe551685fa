//! The sandbox spec: everything a gear process is given, in one validated value.

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::selinux::McsLevel;

/// Directories of the gear's root that the sandbox builds itself; binds may not land on them.
const RESERVED_TARGETS: &[&str] = &[
    "/", "/proc", "/dev", "/sys", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/etc", "/tmp",
];

/// What a gear process is started with. Build one, then hand it to
/// [`Sandbox::spawn`](crate::Sandbox::spawn).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// The gear's id; used in cgroup and diagnostic names (`[a-z0-9_-]`, at most 64 bytes).
    pub gear_id: String,
    /// The hostname the gear sees in its own UTS namespace.
    pub hostname: String,
    /// The gear's unprivileged uid (never 0).
    pub uid: u32,
    /// The gear's unprivileged gid (never 0).
    pub gid: u32,
    /// The gear's home on the host; bind-mounted read-write.
    pub home: PathBuf,
    /// Where the home appears inside the gear, e.g. `/gear`.
    pub home_target: PathBuf,
    /// A directory tree mounted on the host that becomes the gear's `/` (an image's overlay,
    /// mounted by the node with [`crate::overlay::mount_overlay`]); every process gets a clone
    /// of that one mount, writable but `nosuid` and `nodev`. `/proc`, `/dev`, `/tmp`, the
    /// identity files of `/etc`, the home and the binds are added on top as for any gear.
    /// Without it the root is built from the host's system directories, read-only.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Extra read-only binds (host path to path inside the gear).
    #[serde(default)]
    pub ro_binds: Vec<Bind>,
    /// Extra read-write binds (host path to path inside the gear).
    #[serde(default)]
    pub rw_binds: Vec<Bind>,
    /// The command and its arguments; a bare name is looked up in the gear's `PATH`.
    pub argv: Vec<String>,
    /// The whole environment of the gear process; nothing is inherited from the node.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory inside the gear; defaults to `home_target`.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Where the gear's cgroup lives.
    pub cgroup: CgroupPlacement,
    /// The SELinux label to run under when SELinux is enabled; `None` means
    /// `system_u:system_r:gear_t` with the MCS level derived from `uid`.
    #[serde(default)]
    pub selinux: Option<SelinuxLabel>,
    /// Network namespace mode.
    #[serde(default)]
    pub network: NetworkMode,
    /// Join the network namespace bound at this path (see [`crate::netns`])
    /// instead of creating one; overrides `network`. All processes of a gear
    /// share its namespace this way.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Standard input, output and error of the gear process.
    #[serde(skip)]
    pub stdio: StdioSpec,
    /// When true the gear outlives the process that started it; otherwise it is killed when
    /// that process dies.
    #[serde(default)]
    pub detached: bool,
    /// When true (and stdout or stderr is [`Stdio::Piped`]), the gear's init keeps a copy of
    /// the reading end of each such pipe, never read, at [`crate::protocol::KEPT_STDOUT_FD`]
    /// and [`crate::protocol::KEPT_STDERR_FD`], and the pipes are enlarged to
    /// [`crate::protocol::KEPT_PIPE_BYTES`]: while nobody reads them (the node is down) the
    /// command writes on until they are full and then waits, never getting `SIGPIPE`, and a
    /// later node takes the reading ends back (see [`crate::Adopted`]). Meant with `detached`.
    #[serde(default)]
    pub keep_output: bool,
    /// Explicit path of the `gearhost-init` helper; see [`crate::find_init`] for the default.
    #[serde(default)]
    pub init_path: Option<PathBuf>,
}

/// A bind mount from the host into the gear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    /// Host path. Below the gear's home no symlink may appear on the way; elsewhere the path is
    /// resolved once on the node and then opened without following symlinks.
    pub source: PathBuf,
    /// Absolute path inside the gear.
    pub target: PathBuf,
}

/// Resource limits of one gear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Memory limit in bytes, swap included (so swap cannot be used to escape it).
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes and threads in the gear.
    pub pids: Option<u64>,
    /// CPU quota in millicores (1000 = one full CPU), at least 10.
    pub cpu_millicores: Option<u32>,
    /// Size of the gear's private `/tmp` (tmpfs, charged to the gear's memory).
    pub tmp_bytes: u64,
    /// Per-process rlimits.
    pub rlimits: Rlimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: None,
            pids: None,
            cpu_millicores: None,
            tmp_bytes: 64 << 20,
            rlimits: Rlimits::default(),
        }
    }
}

/// Per-process rlimits; each `Some` value sets both the soft and hard limit. A value above the
/// node's own hard limit is clamped to it (and the report says so).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE`: open files.
    pub nofile: Option<u64>,
    /// `RLIMIT_NPROC`: processes of the gear's uid.
    pub nproc: Option<u64>,
    /// `RLIMIT_CORE`: core dump size; 0 by default.
    pub core: Option<u64>,
    /// `RLIMIT_FSIZE`: largest file the gear may write.
    pub fsize: Option<u64>,
    /// `RLIMIT_MEMLOCK`: locked memory.
    pub memlock: Option<u64>,
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            nofile: Some(4096),
            nproc: None,
            core: Some(0),
            fsize: None,
            memlock: Some(64 << 10),
        }
    }
}

/// Where the gear's cgroup is created: `<controller root>/<subtree>/<leaf>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupPlacement {
    /// The node's subtree, e.g. `gearhost`, or a path of names below the
    /// cgroup roots, e.g. `gearhost/<gear id>` for a gear's group (see
    /// [`crate::cgroup::ensure_group`]).
    pub subtree: String,
    /// The gear's own cgroup name below the subtree, usually the gear id.
    pub leaf: String,
}

/// An SELinux process label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelinuxLabel {
    /// SELinux user, e.g. `system_u`.
    pub user: String,
    /// SELinux role, e.g. `system_r`.
    pub role: String,
    /// Process type, e.g. `gear_t`.
    #[serde(rename = "type")]
    pub type_: String,
    /// File type the gear's home is labelled with, e.g. `gear_file_t`.
    pub file_type: String,
    /// MCS level; `None` derives it from the gear's uid.
    pub level: Option<McsLevel>,
}

impl Default for SelinuxLabel {
    fn default() -> Self {
        SelinuxLabel {
            user: "system_u".into(),
            role: "system_r".into(),
            type_: "gear_t".into(),
            file_type: "gear_file_t".into(),
            level: None,
        }
    }
}

/// Which network the gear sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Its own network namespace with only `lo`, which is up.
    #[default]
    Isolated,
    /// The host's network (for builds whose manifest allows the network).
    Host,
}

/// One standard stream of the gear process.
#[derive(Debug, Clone, Default)]
pub enum Stdio {
    /// `/dev/null`.
    #[default]
    Null,
    /// The caller's own stream.
    Inherit,
    /// A new pipe; the caller's end is taken from [`Sandboxed`](crate::Sandboxed).
    Piped,
    /// A file, pipe, socket or terminal the caller opened.
    Fd(Arc<File>),
}

/// Standard input, output and error of the gear process.
#[derive(Debug, Clone, Default)]
pub struct StdioSpec {
    /// Standard input.
    pub stdin: Stdio,
    /// Standard output.
    pub stdout: Stdio,
    /// Standard error.
    pub stderr: Stdio,
    /// Give the command a terminal instead: a pseudo-terminal made in the gear's own `/dev/pts`,
    /// the command's controlling terminal and its three standard streams (the three fields
    /// above must then be [`Stdio::Null`]). The caller gets the other side from
    /// [`Sandboxed::take_terminal`](crate::Sandboxed::take_terminal).
    pub terminal: bool,
}

/// Why a spec was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A field has a value the sandbox cannot use.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong and what to use instead.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Checks a cgroup/gear name: non-empty, at most 64 bytes, `[A-Za-z0-9_.-]`, not `.`/`..`.
fn check_name(field: &'static str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > 64 {
        return Err(invalid(field, "use 1 to 64 characters"));
    }
    if name == "." || name == ".." {
        return Err(invalid(field, "`.` and `..` are not names"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(invalid(
            field,
            format!("{name:?}: use only letters, digits, `_`, `.` and `-`"),
        ));
    }
    Ok(())
}

/// Checks a path inside the gear: absolute, normal components only, valid UTF-8-free of NUL.
fn check_inner_path(field: &'static str, path: &Path) -> Result<(), SpecError> {
    if !path.is_absolute() {
        return Err(invalid(
            field,
            format!("{} must be absolute", path.display()),
        ));
    }
    for c in path.components() {
        match c {
            Component::RootDir | Component::Normal(_) => {}
            _ => {
                return Err(invalid(
                    field,
                    format!("{} must not contain `.` or `..`", path.display()),
                ));
            }
        }
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(invalid(field, "paths may not contain NUL bytes"));
    }
    Ok(())
}

/// Checks a bind or home target: not the root, not one of the directories the sandbox builds,
/// and not below `/proc`, `/dev` or `/sys`.
fn check_target(field: &'static str, path: &Path) -> Result<(), SpecError> {
    check_inner_path(field, path)?;
    if RESERVED_TARGETS.iter().any(|r| path == Path::new(r)) {
        return Err(invalid(
            field,
            format!(
                "{} is built by the sandbox itself; pick another target",
                path.display()
            ),
        ));
    }
    for below in ["/proc", "/dev", "/sys", "/usr", "/etc"] {
        if path.starts_with(below) {
            return Err(invalid(
                field,
                format!(
                    "{} lies below {below}, which the sandbox owns",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

impl SandboxSpec {
    /// A spec with the defaults filled in: isolated network, default limits, `/dev/null` stdio,
    /// cwd = `home_target`, cgroup leaf = gear id below `gearhost`.
    pub fn new(
        gear_id: impl Into<String>,
        uid: u32,
        gid: u32,
        home: impl Into<PathBuf>,
        argv: Vec<String>,
    ) -> Self {
        let gear_id = gear_id.into();
        SandboxSpec {
            hostname: gear_id.clone(),
            cgroup: CgroupPlacement {
                subtree: "gearhost".into(),
                leaf: gear_id.clone(),
            },
            gear_id,
            uid,
            gid,
            home: home.into(),
            home_target: PathBuf::from("/gear"),
            root: None,
            ro_binds: Vec::new(),
            rw_binds: Vec::new(),
            argv,
            env: Vec::new(),
            cwd: None,
            limits: Limits::default(),
            selinux: None,
            network: NetworkMode::Isolated,
            netns: None,
            stdio: StdioSpec::default(),
            detached: false,
            keep_output: false,
            init_path: None,
        }
    }

    /// The working directory inside the gear.
    pub fn effective_cwd(&self) -> &Path {
        self.cwd.as_deref().unwrap_or(&self.home_target)
    }

    /// Checks every field; [`Sandbox::spawn`](crate::Sandbox::spawn) calls this first.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("gear_id", &self.gear_id)?;
        let s = &self.stdio;
        if s.terminal
            && [&s.stdin, &s.stdout, &s.stderr]
                .iter()
                .any(|x| !matches!(x, Stdio::Null))
        {
            return Err(invalid(
                "stdio",
                "a terminal is the command's stdin, stdout and stderr; leave those at Null",
            ));
        }
        if self.hostname.is_empty()
            || self.hostname.len() > 64
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            || self.hostname.starts_with('-')
        {
            return Err(invalid(
                "hostname",
                "use 1 to 64 letters, digits, `-` and `.`, not starting with `-`",
            ));
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(invalid(
                "uid/gid",
                "a gear never runs as root; give it an id from the node's range",
            ));
        }
        if !self.home.is_absolute() {
            return Err(invalid(
                "home",
                format!("{} must be an absolute host path", self.home.display()),
            ));
        }
        check_target("home_target", &self.home_target)?;
        if let Some(root) = &self.root
            && (!root.is_absolute() || root.components().any(|c| c == Component::ParentDir))
        {
            return Err(invalid(
                "root",
                format!(
                    "{} must be an absolute host path without `..`",
                    root.display()
                ),
            ));
        }
        let mut targets = vec![self.home_target.clone()];
        for (field, binds) in [("ro_binds", &self.ro_binds), ("rw_binds", &self.rw_binds)] {
            for bind in binds {
                if !bind.source.is_absolute() {
                    return Err(invalid(
                        field,
                        format!("source {} must be absolute", bind.source.display()),
                    ));
                }
                check_target(field, &bind.target)?;
                if targets.contains(&bind.target) {
                    return Err(invalid(
                        field,
                        format!("{} is mounted twice", bind.target.display()),
                    ));
                }
                targets.push(bind.target.clone());
            }
        }
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(invalid("argv", "give at least the program to run"));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(invalid("argv", "arguments may not contain NUL bytes"));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(invalid(
                    "env",
                    format!("{key:?}: names are non-empty without `=`; no NUL anywhere"),
                ));
            }
        }
        check_inner_path("cwd", self.effective_cwd())?;
        // one name, or a path of names (a gear's group below the node's subtree)
        for part in self.cgroup.subtree.split('/') {
            check_name("cgroup.subtree", part)?;
        }
        check_name("cgroup.leaf", &self.cgroup.leaf)?;
        if let Some(m) = self.limits.memory_bytes
            && m < (8 << 20)
        {
            return Err(invalid("limits.memory_bytes", "use at least 8 MiB"));
        }
        if self.limits.pids == Some(0) {
            return Err(invalid("limits.pids", "use at least 1"));
        }
        if let Some(c) = self.limits.cpu_millicores
            && c < 10
        {
            return Err(invalid(
                "limits.cpu_millicores",
                "use at least 10 (the kernel's smallest quota is 1 ms per 100 ms)",
            ));
        }
        if self.limits.tmp_bytes < 4096 {
            return Err(invalid("limits.tmp_bytes", "use at least 4096"));
        }
        if let Some(label) = &self.selinux {
            for (field, value) in [
                ("user", &label.user),
                ("role", &label.role),
                ("type", &label.type_),
                ("file_type", &label.file_type),
            ] {
                if value.is_empty()
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(invalid(
                        "selinux",
                        format!("{field} {value:?}: use letters, digits and `_`"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec::new(
            "g1",
            5000,
            5000,
            "/var/lib/gearhost/gears/g1",
            vec!["/bin/true".into()],
        )
    }

    #[test]
    fn default_spec_is_valid() {
        assert_eq!(spec().validate(), Ok(()));
        assert_eq!(spec().effective_cwd(), Path::new("/gear"));
    }

    #[test]
    fn root_ids_are_refused() {
        let mut s = spec();
        s.uid = 0;
        assert!(matches!(
            s.validate(),
            Err(SpecError::Invalid {
                field: "uid/gid",
                ..
            })
        ));
    }

    #[test]
    fn targets_must_be_clean_and_outside_reserved_dirs() {
        for bad in [
            "relative",
            "/gear/../etc",
            "/proc/x",
            "/",
            "/tmp",
            "/usr/local/x",
            "/dev/shm/x",
        ] {
            let mut s = spec();
            s.home_target = PathBuf::from(bad);
            assert!(s.validate().is_err(), "{bad} accepted");
        }
        let mut s = spec();
        s.ro_binds.push(Bind {
            source: "/opt/x".into(),
            target: "/gear".into(),
        });
        assert!(s.validate().is_err(), "double target accepted");
    }

    #[test]
    fn names_and_env_are_checked() {
        let mut s = spec();
        s.cgroup.leaf = "../escape".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.env.push(("A=B".into(), "x".into()));
        assert!(s.validate().is_err());
        let mut s = spec();
        s.argv.clear();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.limits.cpu_millicores = Some(5);
        assert!(s.validate().is_err());
    }

    #[test]
    fn spec_round_trips_through_json() {
        let mut s = spec();
        s.selinux = Some(SelinuxLabel::default());
        let json = serde_json::to_string(&s).expect("serialize");
        let back: SandboxSpec = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.gear_id, s.gear_id);
        assert_eq!(back.limits, s.limits);
        assert_eq!(back.selinux, s.selinux);
    }
}
