//! The per-process layers applied right before exec: credentials and capabilities,
//! no_new_privs, rlimits and Landlock. Each step is its own function, called in order by the
//! helper.

use std::io;
use std::path::{Path, PathBuf};

use gearhost_sys::proc_status::Status;
use landlock::{
    ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope,
};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};

use crate::protocol::SetupFailure;
use crate::report::{CredentialReport, Enforcement, LandlockReport, RlimitReport};
use crate::spec::Rlimits;
use crate::sys;

/// The Landlock ABI the ruleset is written for (filesystem rights through ioctl on devices,
/// plus signal and abstract-socket scoping). Older kernels enforce what they can; the report
/// says how much.
const LANDLOCK_ABI: ABI = ABI::V6;

fn failure(step: &str, detail: impl Into<String>, err: &io::Error) -> SetupFailure {
    SetupFailure {
        step: step.to_string(),
        detail: format!("{}: {err}", detail.into()),
        errno: err.raw_os_error(),
    }
}

fn nix_failure(step: &str, detail: impl Into<String>, err: nix::Error) -> SetupFailure {
    failure(step, detail, &io::Error::from(err))
}

/// Drops to `uid`/`gid` with no supplementary groups and every capability set empty
/// (bounding and ambient included), then sets `no_new_privs`. Needs `/proc` mounted.
pub(crate) fn drop_credentials(
    uid: u32,
    gid: u32,
    groups: &[u32],
    rootless: bool,
) -> Result<u32, SetupFailure> {
    // In a rootless gear's user namespace setgroups is refused for good (the price of mapping
    // ids without privilege); the caller's groups stay what they are outside.
    if !rootless {
        let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
        setgroups(&groups)
            .map_err(|e| nix_failure("credentials", "set the supplementary groups", e))?;
    }
    let g = Gid::from_raw(gid);
    setresgid(g, g, g).map_err(|e| nix_failure("credentials", format!("setresgid({gid})"), e))?;
    let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    for cap in 0..=last_cap {
        sys::drop_bounding_cap(cap).map_err(|e| {
            failure(
                "credentials",
                format!("drop capability {cap} from the bounding set"),
                &e,
            )
        })?;
    }
    sys::clear_ambient()
        .map_err(|e| failure("credentials", "clear the ambient capabilities", &e))?;
    let u = Uid::from_raw(uid);
    setresuid(u, u, u).map_err(|e| nix_failure("credentials", format!("setresuid({uid})"), e))?;
    sys::clear_capabilities()
        .map_err(|e| failure("credentials", "clear the remaining capability sets", &e))?;
    nix::sys::prctl::set_no_new_privs()
        .map_err(|e| nix_failure("credentials", "set no_new_privs", e))?;
    Ok(last_cap + 1)
}

/// Reads the credentials back from `/proc/self/status`, as the kernel sees them.
pub(crate) fn read_credentials(
    bounding_caps_dropped: u32,
) -> Result<CredentialReport, SetupFailure> {
    let status = Status::own().map_err(|e| failure("credentials", "read /proc/self/status", &e))?;
    // an id counts only when real, effective, saved and file-system ids agree
    let id = |name: &str| {
        status
            .ids(name)
            .filter(|ids| ids.all_equal())
            .map_or(0, |ids| ids.real)
    };
    let caps_empty = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
        .iter()
        .all(|c| status.caps(c) == Some(0));
    Ok(CredentialReport {
        uid: id("Uid"),
        gid: id("Gid"),
        groups_cleared: status.field("Groups").unwrap_or_default().is_empty(),
        bounding_caps_dropped,
        all_capability_sets_empty: caps_empty,
        no_new_privs: status.field("NoNewPrivs") == Some("1"),
        other_fds_closed: true,
        env_cleared: true,
    })
}

/// Applies the rlimits of the spec, lowering any request above the current hard limit to it
/// (raising a hard limit needs CAP_SYS_RESOURCE, which the node may not have).
pub(crate) fn apply_rlimits(r: &Rlimits) -> Result<Vec<RlimitReport>, SetupFailure> {
    let wanted = [
        ("nofile", Resource::RLIMIT_NOFILE, r.nofile),
        ("nproc", Resource::RLIMIT_NPROC, r.nproc),
        ("core", Resource::RLIMIT_CORE, r.core),
        ("fsize", Resource::RLIMIT_FSIZE, r.fsize),
        ("memlock", Resource::RLIMIT_MEMLOCK, r.memlock),
    ];
    let mut out = Vec::new();
    for (name, resource, value) in wanted {
        let Some(requested) = value else {
            continue;
        };
        let (_, hard) = getrlimit(resource).map_err(|e| {
            nix_failure("rlimits", format!("read RLIMIT_{}", name.to_uppercase()), e)
        })?;
        let applied = if hard != libc::RLIM_INFINITY && requested > hard {
            hard
        } else {
            requested
        };
        setrlimit(resource, applied, applied).map_err(|e| {
            nix_failure(
                "rlimits",
                format!("set RLIMIT_{} to {applied}", name.to_uppercase()),
                e,
            )
        })?;
        out.push(RlimitReport {
            resource: name.to_string(),
            requested,
            applied,
            clamped: applied != requested,
        });
    }
    Ok(out)
}

fn landlock_failure(detail: String) -> SetupFailure {
    SetupFailure {
        step: "landlock".into(),
        detail,
        errno: None,
    }
}

/// Restricts the calling process with Landlock: read and execute everywhere, full access
/// below `writable_dirs`, read-write on `writable_files`; signals and abstract unix sockets
/// scoped to the gear.
pub(crate) fn apply_landlock(
    writable_dirs: &[PathBuf],
    writable_files: &[PathBuf],
) -> Result<LandlockReport, SetupFailure> {
    let kernel_abi = sys::landlock_abi();
    let abi = LANDLOCK_ABI;
    let err = |what: &str, e: &dyn std::fmt::Display| landlock_failure(format!("{what}: {e}"));
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| err("handle filesystem access", &e))?
        .scope(Scope::from_all(abi))
        .map_err(|e| err("scope signals and sockets", &e))?
        .create()
        .map_err(|e| err("create the ruleset", &e))?;
    let open = |p: &Path| PathFd::new(p).map_err(|e| err(&format!("open {}", p.display()), &e));
    ruleset = ruleset
        .add_rule(PathBeneath::new(
            open(Path::new("/"))?,
            AccessFs::from_read(abi),
        ))
        .map_err(|e| err("allow reading /", &e))?;
    let mut writable = Vec::new();
    for dir in writable_dirs {
        ruleset = ruleset
            .add_rule(PathBeneath::new(open(dir)?, AccessFs::from_all(abi)))
            .map_err(|e| err(&format!("allow writing below {}", dir.display()), &e))?;
        writable.push(dir.clone());
    }
    for file in writable_files {
        if !file.exists() {
            continue;
        }
        ruleset = ruleset
            .add_rule(PathBeneath::new(open(file)?, AccessFs::from_file(abi)))
            .map_err(|e| err(&format!("allow writing {}", file.display()), &e))?;
        writable.push(file.clone());
    }
    let status = ruleset
        .restrict_self()
        .map_err(|e| err("restrict the process", &e))?;
    Ok(LandlockReport {
        kernel_abi,
        requested_abi: abi as u32,
        enforcement: match status.ruleset {
            RulesetStatus::FullyEnforced => Enforcement::Full,
            RulesetStatus::PartiallyEnforced => Enforcement::Partial,
            RulesetStatus::NotEnforced => Enforcement::None,
        },
        writable,
    })
}

/// Restricts the gear's init process: no filesystem access beyond what it already holds open.
pub(crate) fn lock_down_init() -> Result<(), SetupFailure> {
    let abi = LANDLOCK_ABI;
    let err =
        |e: &dyn std::fmt::Display| landlock_failure(format!("restrict the init process: {e}"));
    Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| err(&e))?
        .create()
        .map_err(|e| err(&e))?
        .restrict_self()
        .map_err(|e| err(&e))?;
    Ok(())
}
