//! Per-gear disk quotas enforced by the kernel: what the file system under the
//! node's gears can enforce ([`detect`]), and the one mechanism Gearhost uses,
//! btrfs qgroups ([`Btrfs`]).
//!
//! A gear with a quota gets three btrfs subvolumes in its directory, `home`,
//! `deployments` and `logs`, each created inside the level-1 qgroup
//! `1/<gear uid>`, and that qgroup carries the limit on referenced bytes: what
//! the gear writes in its home, the deployments the node copies for it and
//! the logs the node writes for it all count against one limit. The gear's
//! record (`gear.json`) and its network namespace binding stay in the plain
//! directory above them, outside the quota, so the node can always record
//! what happens to a full gear. A write past the limit fails with `EDQUOT`.
//! btrfs counts bytes, not inodes: every file's metadata is counted in the
//! bytes, so millions of empty files fill the quota too.
//!
//! Everything goes through the `btrfs` program from btrfs-progs (its output
//! read with `--raw`), so nothing here needs unsafe code. The gear's seccomp
//! filter refuses the ioctls that create subvolumes and snapshots: a
//! subvolume a gear made would sit outside its qgroup.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `BTRFS_SUPER_MAGIC`.
const BTRFS_MAGIC: i64 = 0x9123_683e;
/// `EXT4_SUPER_MAGIC` (ext2 and ext3 share it).
const EXT4_MAGIC: i64 = 0xef53;
/// `XFS_SUPER_MAGIC`.
const XFS_MAGIC: i64 = 0x5846_5342;

/// The subvolumes of a gear with a quota, under its directory.
pub const GEAR_SUBVOLUMES: [&str; 3] = ["home", "deployments", "logs"];

/// What the file system under a directory can enforce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum QuotaSupport {
    /// btrfs with quotas enabled and the `btrfs` program at hand: per-gear
    /// limits are enforced.
    Btrfs {
        /// The `btrfs` program.
        program: PathBuf,
    },
    /// Quotas cannot be enforced here; `reason` says why and what to do.
    Unsupported {
        /// The file system's name (`ext4`, `xfs`, `btrfs`, `tmpfs`, ...).
        fs: String,
        /// Why, and what to do about it.
        reason: String,
    },
}

impl QuotaSupport {
    /// Whether per-gear quotas are enforced.
    pub fn enforced(&self) -> bool {
        matches!(self, QuotaSupport::Btrfs { .. })
    }

    /// A [`Btrfs`] handle when quotas are enforced.
    pub fn btrfs(&self) -> Option<Btrfs> {
        match self {
            QuotaSupport::Btrfs { program } => Some(Btrfs {
                program: program.clone(),
            }),
            QuotaSupport::Unsupported { .. } => None,
        }
    }
}

/// The nearest existing directory at or above `dir`: a state directory that
/// is not made yet lives on its parent's file system.
fn existing(dir: &Path) -> &Path {
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    at
}

/// Where the `btrfs` program is (`$PATH`, then the usual places).
pub fn find_btrfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("btrfs"))
        .find(|p| p.is_file())
}

fn fs_name(magic: i64) -> String {
    match magic {
        BTRFS_MAGIC => "btrfs".into(),
        EXT4_MAGIC => "ext4".into(),
        XFS_MAGIC => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        0x2fc1_2fc1 => "zfs".into(),
        other => format!("a file system of type {other:#x}"),
    }
}

/// What the file system holding `dir` (or, when `dir` does not exist yet,
/// its nearest existing parent) can enforce. On btrfs this runs
/// `btrfs qgroup show` once, to learn whether quotas are enabled.
pub fn detect(dir: &Path) -> QuotaSupport {
    let at = existing(dir);
    let magic = match nix::sys::statfs::statfs(at) {
        // the type's width differs between C libraries and architectures
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => st.filesystem_type().0 as i64,
        Err(e) => {
            return QuotaSupport::Unsupported {
                fs: "unknown".into(),
                reason: format!("cannot read the file system of {}: {e}", at.display()),
            };
        }
    };
    let fs = fs_name(magic);
    match magic {
        BTRFS_MAGIC => {
            let Some(program) = find_btrfs() else {
                return QuotaSupport::Unsupported {
                    fs,
                    reason: "btrfs, but the `btrfs` program is not installed; install btrfs-progs"
                        .into(),
                };
            };
            let out = Command::new(&program)
                .args(["qgroup", "show", "--raw"])
                .arg(at)
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => QuotaSupport::Btrfs { program },
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    let reason = if err.contains("not enabled") {
                        format!(
                            "btrfs with quotas off; enable them with `btrfs quota enable {}`",
                            at.display()
                        )
                    } else {
                        format!(
                            "btrfs, but `btrfs qgroup show` failed: {}",
                            err.trim().lines().last().unwrap_or("no message")
                        )
                    };
                    QuotaSupport::Unsupported { fs, reason }
                }
                Err(e) => QuotaSupport::Unsupported {
                    fs,
                    reason: format!("btrfs, but {} cannot be run: {e}", program.display()),
                },
            }
        }
        EXT4_MAGIC | XFS_MAGIC => {
            let kernel = if Path::new("/proc/sys/fs/quota").exists() {
                "the kernel has quota support"
            } else {
                "this kernel is built without quota support (CONFIG_QUOTA)"
            };
            QuotaSupport::Unsupported {
                reason: format!(
                    "{fs} project quotas are not supported by this build of Gearhost ({kernel}); put the state directory on btrfs with quotas enabled (docs/operator-guide.md, disk quotas)"
                ),
                fs,
            }
        }
        _ => QuotaSupport::Unsupported {
            reason: format!(
                "{fs} has no per-gear quota Gearhost can use; put the state directory on btrfs with quotas enabled (docs/operator-guide.md, disk quotas)"
            ),
            fs,
        },
    }
}

/// A gear's disk use against its limit, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes referenced by the gear's subvolumes.
    pub used: u64,
    /// The limit (none: the qgroup has no limit).
    pub limit: Option<u64>,
}

/// A quota failure, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {detail}")]
pub struct QuotaError {
    /// What was being done.
    pub action: String,
    /// What went wrong.
    pub detail: String,
}

/// btrfs qgroups through the `btrfs` program.
#[derive(Debug, Clone)]
pub struct Btrfs {
    program: PathBuf,
}

/// The qgroup of the gear with uid `uid`: level 1, numbered by the uid, which
/// is unique among the node's gears.
pub fn qgroup_of(uid: u32) -> String {
    format!("1/{uid}")
}

/// How long [`Btrfs::remove_gear`] tries to destroy the gear's qgroup while
/// btrfs drops its deleted subvolumes, before it leaves the qgroup for the
/// next gear with the uid.
const DROP_WAIT: Duration = Duration::from_secs(10);

impl Btrfs {
    fn run(&self, action: &str, args: &[&std::ffi::OsStr]) -> Result<String, QuotaError> {
        let out = Command::new(&self.program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| QuotaError {
                action: action.to_string(),
                detail: format!("cannot run {}: {e}", self.program.display()),
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(QuotaError {
                action: action.to_string(),
                detail: format!(
                    "`btrfs {}` failed: {}",
                    args.iter()
                        .map(|a| a.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(" "),
                    err.trim()
                ),
            })
        }
    }

    /// Makes the quota'd part of a gear's directory `root` (which exists):
    /// qgroup `1/<uid>` limited to `limit` bytes of referenced data, and the
    /// subvolumes [`GEAR_SUBVOLUMES`] created inside it. A qgroup left by an
    /// earlier gear with the same uid is reused. On failure whatever was made
    /// is removed again.
    pub fn make_gear(&self, root: &Path, uid: u32, limit: u64) -> Result<(), QuotaError> {
        let group = qgroup_of(uid);
        let r = root.as_os_str();
        if let Err(e) = self.run(
            "create the gear's qgroup",
            &["qgroup".as_ref(), "create".as_ref(), group.as_ref(), r],
        ) && !e.detail.contains("File exists")
        {
            return Err(e);
        }
        let made = (|| {
            self.run(
                "limit the gear's qgroup",
                &[
                    "qgroup".as_ref(),
                    "limit".as_ref(),
                    limit.to_string().as_ref(),
                    group.as_ref(),
                    r,
                ],
            )?;
            for sub in GEAR_SUBVOLUMES {
                let path = root.join(sub);
                self.run(
                    "create the gear's subvolume",
                    &[
                        "subvolume".as_ref(),
                        "create".as_ref(),
                        "-i".as_ref(),
                        group.as_ref(),
                        path.as_os_str(),
                    ],
                )?;
            }
            Ok(())
        })();
        if made.is_err() {
            let _ = self.remove_gear(root, uid);
        }
        made
    }

    /// Removes the subvolumes of a gear's directory `root` (whatever is in
    /// them) and, once btrfs has dropped them, its qgroup. What cannot be
    /// removed is left (the directory walk that follows removes an empty
    /// subvolume too, and a qgroup left behind is reused by the next gear
    /// with the uid) and the last failure returned.
    pub fn remove_gear(&self, root: &Path, uid: u32) -> Result<(), QuotaError> {
        let subvolumes: Vec<PathBuf> = GEAR_SUBVOLUMES
            .iter()
            .map(|s| root.join(s))
            .filter(|p| p.exists())
            .collect();
        if !subvolumes.is_empty() {
            let mut args: Vec<&std::ffi::OsStr> = vec!["subvolume".as_ref(), "delete".as_ref()];
            args.push("--commit-after".as_ref());
            args.extend(subvolumes.iter().map(|p| p.as_os_str()));
            self.run("delete the gear's subvolumes", &args)?;
        }
        // the qgroup goes once btrfs has dropped what it counted: each commit
        // lets the cleaner drop deleted subvolumes, and a later one removes
        // their qgroups (and so their relation to the gear's); until then the
        // gear's qgroup is busy. (`btrfs subvolume sync` would wait for the
        // cleaner's own next round, up to the commit interval.)
        let parent = root.parent().unwrap_or(root);
        let start = Instant::now();
        let group = qgroup_of(uid);
        loop {
            let _ = self.run(
                "commit the file system",
                &["filesystem".as_ref(), "sync".as_ref(), parent.as_os_str()],
            );
            let destroyed = self.run(
                "destroy the gear's qgroup",
                &[
                    "qgroup".as_ref(),
                    "destroy".as_ref(),
                    group.as_ref(),
                    parent.as_os_str(),
                ],
            );
            match destroyed {
                Ok(_) => return Ok(()),
                // gone already (a create that failed before making it)
                Err(e) if e.detail.contains("No such file") => return Ok(()),
                Err(_) if start.elapsed() < DROP_WAIT => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => {
                    return Err(QuotaError {
                        detail: format!(
                            "{} (btrfs did not let it go within {} s of the subvolumes' deletion)",
                            e.detail,
                            start.elapsed().as_secs()
                        ),
                        ..e
                    });
                }
            }
        }
    }

    /// The gear's use and limit, read from qgroup `1/<uid>` through the
    /// gear's `home` subvolume under `root`.
    pub fn usage(&self, root: &Path, uid: u32) -> Result<Usage, QuotaError> {
        let home = root.join("home");
        let out = self.run(
            "read the gear's disk use",
            &[
                "qgroup".as_ref(),
                "show".as_ref(),
                "--raw".as_ref(),
                "-r".as_ref(),
                "-F".as_ref(),
                home.as_os_str(),
            ],
        )?;
        parse_usage(&out, &qgroup_of(uid)).map_err(|detail| QuotaError {
            action: "read the gear's disk use".into(),
            detail,
        })
    }
}

/// The row of `group` in the output of `btrfs qgroup show --raw -r`:
///
/// ```text
/// Qgroupid    Referenced    Exclusive  Max referenced   Path
/// --------    ----------    ---------  --------------   ----
/// 0/256         67059712     67059712            none   gears/a/home
/// 1/71000       67092480     67092480        67108864   <0 member qgroups>
/// ```
fn parse_usage(out: &str, group: &str) -> Result<Usage, String> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if header.get(..5) != Some(&["Qgroupid", "Referenced", "Exclusive", "Max", "referenced"]) {
        return Err(format!(
            "`btrfs qgroup show` printed an unexpected header: {:?}",
            header.join(" ")
        ));
    }
    for line in lines {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first() != Some(&group) {
            continue;
        }
        let number = |i: usize| -> Result<Option<u64>, String> {
            match cols.get(i) {
                Some(&"none") => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("qgroup {group}: {v:?} is not a byte count")),
                None => Err(format!("qgroup {group}: short line {line:?}")),
            }
        };
        return Ok(Usage {
            used: number(1)?.unwrap_or(0),
            limit: number(3)?,
        });
    }
    Err(format!(
        "qgroup {group} is missing; the gear's quota was removed outside the node"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "\
Qgroupid    Referenced    Exclusive  Max referenced   Path 
--------    ----------    ---------  --------------   ---- 
0/256         67059712     67059712            none   gears/a/home
1/71000       67092480     67092480        67108864   <0 member qgroups>
1/71001          49152        49152            none   <0 member qgroups>
";

    #[test]
    fn usage_is_read_from_the_gears_row() {
        assert_eq!(
            parse_usage(SHOW, "1/71000"),
            Ok(Usage {
                used: 67_092_480,
                limit: Some(64 << 20)
            })
        );
        assert_eq!(
            parse_usage(SHOW, "1/71001"),
            Ok(Usage {
                used: 49152,
                limit: None
            })
        );
        let e = parse_usage(SHOW, "1/5").expect_err("no row");
        assert!(e.contains("missing"), "{e}");
        let e = parse_usage("Qgroupid Rfer Excl\n", "1/5").expect_err("header");
        assert!(e.contains("unexpected header"), "{e}");
        let e = parse_usage(&SHOW.replace("67108864", "64MiB"), "1/71000").expect_err("units");
        assert!(e.contains("not a byte count"), "{e}");
    }

    #[test]
    fn a_directory_not_made_yet_is_judged_by_its_parent() {
        let dir = tempfile::tempdir().expect("dir");
        let support = detect(&dir.path().join("state/gears"));
        let direct = detect(dir.path());
        assert_eq!(support, direct);
        if let QuotaSupport::Unsupported { reason, .. } = &support {
            assert!(
                reason.contains("btrfs"),
                "the reason says what to do: {reason}"
            );
        }
    }
}
