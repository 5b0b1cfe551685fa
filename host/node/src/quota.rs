//! The node's policy on per-gear disk quotas: whether it may start with the
//! configuration it has, the quota each new gear gets, and the calls into the
//! mechanism (`gearhost_sandbox::quota`, btrfs qgroups) for a gear's
//! directories and its use.
//!
//! - `gears.disk` set and the state directory's file system cannot enforce
//!   quotas: the node refuses to start, unless `gears.allow-no-quota = true`
//!   (then gears are created without quotas, and `--disk` is refused).
//! - `gear create --disk SIZE` may ask for at most the ceiling
//!   ([`NodeConfig::disk_ceiling`]) and at least [`MIN_GEAR_DISK`].
//! - The record keeps the quota a gear was given; gears made before quotas
//!   were configured keep none.

use std::path::Path;

use gearhost_sandbox::quota::{Btrfs, QuotaSupport, Usage};

use crate::api::{ApiError, ErrorKind};
use crate::config::{MIN_GEAR_DISK, NodeConfig};

/// What the node does about disk quotas.
#[derive(Debug, Clone)]
pub struct Quotas {
    support: QuotaSupport,
    default: Option<u64>,
    ceiling: Option<u64>,
}

/// `bytes` for people: `64 MiB`, `2 GiB`, `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else if value.fract() < 0.05 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl Quotas {
    /// Looks at the file system of the node's gears and decides whether the
    /// node may start: an error, saying what to do, when `gears.disk` is set
    /// and quotas cannot be enforced there without `gears.allow-no-quota`.
    pub fn open(config: &NodeConfig) -> anyhow::Result<Quotas> {
        let support = gearhost_sandbox::quota::detect(&config.gears_dir());
        Quotas::decide(config, support)
    }

    fn decide(config: &NodeConfig, support: QuotaSupport) -> anyhow::Result<Quotas> {
        if let (Some(disk), QuotaSupport::Unsupported { reason, .. }) = (config.gear_disk, &support)
        {
            if !config.allow_no_quota {
                anyhow::bail!(
                    "gears.disk is set ({} a gear), but the state directory {} cannot enforce disk quotas: {reason}; \
                     prepare a btrfs file system for it (docs/operator-guide.md, \"Disk quotas\"), \
                     or set gears.allow-no-quota = true to run without quotas",
                    human(disk),
                    config.state_dir.display()
                );
            }
            tracing::warn!(
                state = %config.state_dir.display(),
                reason = %reason,
                "gears.disk is set but cannot be enforced; gears.allow-no-quota is true, so gears get no disk quota"
            );
        }
        Ok(Quotas {
            support,
            default: config.gear_disk,
            ceiling: config.disk_ceiling(),
        })
    }

    /// Whether quotas are enforced on this node.
    pub fn enforced(&self) -> bool {
        self.support.enforced()
    }

    /// The quota a new gear gets when it asks for `requested` bytes (none:
    /// the node's default), or a refusal saying what it may ask for instead.
    pub fn for_new_gear(&self, requested: Option<u64>) -> Result<Option<u64>, ApiError> {
        let Some(bytes) = requested else {
            return Ok(self.default.filter(|_| self.enforced()));
        };
        let invalid = |msg: String| ApiError::new(ErrorKind::Invalid, msg);
        if let QuotaSupport::Unsupported { reason, .. } = &self.support {
            return Err(invalid(format!(
                "this node cannot enforce disk quotas ({reason}); create the gear without --disk"
            )));
        }
        if bytes < MIN_GEAR_DISK {
            return Err(invalid(format!(
                "--disk {} is too small: a gear needs at least {}",
                human(bytes),
                human(MIN_GEAR_DISK)
            )));
        }
        if let Some(max) = self.ceiling
            && bytes > max
        {
            return Err(invalid(format!(
                "--disk {} is more than this node allows a gear ({}, gears.max-disk); ask for at most {} or ask the operator",
                human(bytes),
                human(max),
                human(max)
            )));
        }
        Ok(Some(bytes))
    }

    fn btrfs(&self) -> std::io::Result<Btrfs> {
        self.support.btrfs().ok_or_else(|| {
            std::io::Error::other("disk quotas are not enforced on this node's file system")
        })
    }

    /// Makes the quota'd directories of a gear (its `home`, `deployments` and
    /// `logs`, as subvolumes in its qgroup) under `root`, which exists.
    pub fn make_gear(&self, root: &Path, uid: u32, limit: u64) -> std::io::Result<()> {
        self.btrfs()?
            .make_gear(root, uid, limit)
            .map_err(std::io::Error::other)
    }

    /// Removes a gear's subvolumes and qgroup (best effort: the directory
    /// walk that follows removes what is left).
    pub fn remove_gear(&self, root: &Path, uid: u32) {
        if let Ok(btrfs) = self.btrfs()
            && let Err(e) = btrfs.remove_gear(root, uid)
        {
            tracing::warn!(dir = %root.display(), error = %e, "the gear's quota was not removed in full");
        }
    }

    /// The disk use of a gear with a quota.
    pub fn usage(&self, root: &Path, uid: u32) -> std::io::Result<Usage> {
        self.btrfs()?
            .usage(root, uid)
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> NodeConfig {
        NodeConfig::parse(
            &format!("state-dir = \"/srv/gh\"\n[gears]\n{extra}"),
            "node.toml",
        )
        .expect("config")
    }

    fn btrfs() -> QuotaSupport {
        QuotaSupport::Btrfs {
            program: "/usr/bin/btrfs".into(),
        }
    }

    fn ext4() -> QuotaSupport {
        QuotaSupport::Unsupported {
            fs: "ext4".into(),
            reason: "ext4 project quotas are not supported".into(),
        }
    }

    #[test]
    fn a_node_that_cannot_enforce_its_default_refuses_to_start() {
        let e = Quotas::decide(&config("disk = \"2GiB\"\n"), ext4())
            .expect_err("refused")
            .to_string();
        for part in [
            "gears.disk is set (2 GiB a gear)",
            "/srv/gh cannot enforce disk quotas: ext4 project quotas are not supported",
            "docs/operator-guide.md",
            "gears.allow-no-quota = true",
        ] {
            assert!(e.contains(part), "{part:?} in {e}");
        }
        let q = Quotas::decide(&config("disk = \"2GiB\"\nallow-no-quota = true\n"), ext4())
            .expect("allowed without quotas");
        assert_eq!(q.for_new_gear(None).expect("default"), None);
        let e = q.for_new_gear(Some(64 << 20)).expect_err("cannot enforce");
        assert!(e.message.contains("without --disk"), "{}", e.message);
        // without a default the node starts anywhere
        let q = Quotas::decide(&config(""), ext4()).expect("no quotas asked for");
        assert_eq!(q.for_new_gear(None).expect("none"), None);
    }

    #[test]
    fn requests_are_bounded_by_the_ceiling() {
        let q = Quotas::decide(&config("disk = \"1GiB\"\n"), btrfs()).expect("btrfs");
        assert_eq!(q.for_new_gear(None).expect("default"), Some(1 << 30));
        assert_eq!(
            q.for_new_gear(Some(64 << 20)).expect("less"),
            Some(64 << 20)
        );
        let e = q
            .for_new_gear(Some(2 << 30))
            .expect_err("more than the default");
        assert!(
            e.message.contains(
                "--disk 2 GiB is more than this node allows a gear (1 GiB, gears.max-disk)"
            ),
            "{}",
            e.message
        );
        let e = q.for_new_gear(Some(1 << 20)).expect_err("too small");
        assert!(e.message.contains("at least 16 MiB"), "{}", e.message);
        let q = Quotas::decide(&config("disk = \"1GiB\"\nmax-disk = \"4GiB\"\n"), btrfs())
            .expect("btrfs");
        assert_eq!(q.for_new_gear(Some(3 << 30)).expect("under"), Some(3 << 30));
        let q = Quotas::decide(&config(""), btrfs()).expect("btrfs");
        assert_eq!(q.for_new_gear(None).expect("none by default"), None);
        assert_eq!(
            q.for_new_gear(Some(100 << 30)).expect("no ceiling"),
            Some(100 << 30)
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(64 << 20), "64 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
    }
}
