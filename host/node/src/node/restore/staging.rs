//! The staging of a restore: directories beside what they replace (in the
//! same file system and quota), filled from the archive, then swapped in by
//! renames, and swapped back should the restore fail.

use super::*;

/// Where the archive's entries go: staging directories made for them.
pub(super) struct Stage {
    /// `deployments/.restore`: the archive's `deployments/<n>` go below.
    pub(super) deployments: OwnedFd,
    /// `home/app-root/.restore-<id>`: the archive's data goes below.
    pub(super) data: OwnedFd,
    /// The gear's uid, which everything unpacked belongs to.
    pub(super) owner: u32,
    /// The deployments the description holds.
    pub(super) ids: Vec<u32>,
}

/// Where the archive's reader hears where to unpack (or to give up).
pub(super) type Go = std::sync::mpsc::SyncSender<Result<Stage, String>>;

/// The archive's reader: the entries and file bytes it unpacked.
pub(super) type Reader = tokio::task::JoinHandle<Result<(u64, u64), UnpackError>>;

/// The staging directories of one restore, by path, for the swap.
pub(super) struct Staged {
    /// The gear's `deployments`.
    pub(super) deployments: PathBuf,
    /// The gear's `home/app-root`, opened without following a link.
    pub(super) app_root: OwnedFd,
    /// The name of the staged data in `app_root`.
    pub(super) data: String,
    /// The name the old data is moved to in `app_root`.
    pub(super) old_data: String,
}

pub(super) const STAGED_DEPLOYMENTS: &str = ".restore";
const OLD_DEPLOYMENTS: &str = ".restore-old";

impl Staged {
    /// `name` in the app root, as a path that goes through the descriptor
    /// (no link on the way is followed).
    pub(super) fn in_app_root(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.app_root.as_raw_fd())).join(name)
    }

    /// Removes what the restore staged (after a refusal, or the swap).
    pub(super) fn remove_staging(&self) {
        let _ = state::remove_tree(&self.deployments.join(STAGED_DEPLOYMENTS));
        let _ = state::remove_tree(&self.in_app_root(&self.data));
    }

    /// Removes what the swap moved aside (after the restore succeeded).
    pub(super) fn remove_old(&self) {
        let _ = state::remove_tree(&self.deployments.join(OLD_DEPLOYMENTS));
        let _ = state::remove_tree(&self.in_app_root(&self.old_data));
    }

    /// Moves the deployments and data there are aside and the staged ones
    /// in; on a failure half-way, what was moved goes back.
    pub(super) fn swap_in(&self) -> std::io::Result<()> {
        let old = self.deployments.join(OLD_DEPLOYMENTS);
        state::remove_tree(&old)?;
        std::fs::create_dir(&old)?;
        let moved = (|| {
            move_deployments(&self.deployments, &old)?;
            move_deployments(
                &self.deployments.join(STAGED_DEPLOYMENTS),
                &self.deployments,
            )?;
            let at = &self.app_root;
            renameat(at, "data", at, self.old_data.as_str())?;
            renameat(at, self.data.as_str(), at, "data")?;
            Ok(())
        })();
        if moved.is_err() {
            let _ = self.swap_back();
        }
        moved
    }

    /// Puts the deployments and data the swap moved aside back.
    pub(super) fn swap_back(&self) -> std::io::Result<()> {
        let at = &self.app_root;
        if nix::sys::stat::fstatat(
            at,
            self.old_data.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok()
        {
            let _ = state::remove_tree(&self.in_app_root("data"));
            renameat(at, self.old_data.as_str(), at, "data")?;
        }
        let staged = self.deployments.join(STAGED_DEPLOYMENTS);
        state::remove_tree(&staged)?;
        std::fs::create_dir(&staged)?;
        move_deployments(&self.deployments, &staged)?;
        move_deployments(&self.deployments.join(OLD_DEPLOYMENTS), &self.deployments)
    }
}

/// Runs `f` on the staging directories on a thread where blocking is fine.
pub(super) async fn off_thread(
    staged: &Arc<Staged>,
    f: fn(&Staged) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let staged = staged.clone();
    tokio::task::spawn_blocking(move || f(&staged))
        .await
        .map_err(std::io::Error::other)?
}

/// Moves every deployment directory in `from` (`<n>`, and an image
/// deployment's writable layer `.root-<n>`) into `to`.
fn move_deployments(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let name = entry?.file_name();
        let Some(text) = name.to_str() else { continue };
        let number = text.strip_prefix(".root-").unwrap_or(text);
        if number.parse::<u32>().is_ok() {
            std::fs::rename(from.join(&name), to.join(&name))?;
        }
    }
    Ok(())
}

/// Makes the staging directories in the gear's directory `root`.
pub(super) fn stage(root: &Path, uid: u32, meta: &Meta) -> std::io::Result<(Staged, Stage)> {
    let deployments = root.join("deployments");
    let staged = deployments.join(STAGED_DEPLOYMENTS);
    // what a restore the node did not finish left
    state::remove_tree(&staged)?;
    std::fs::create_dir(&staged)?;
    let deployments_fd = open_dir_beneath(root, &["deployments", STAGED_DEPLOYMENTS])?;
    let app_root = open_dir_beneath(root, &["home", "app-root"])?;
    clear_leftovers(&app_root)?;
    let id = new_id();
    let data = format!(".restore-{id}");
    mkdirat(&app_root, data.as_str(), Mode::from_bits_truncate(0o755))?;
    let data_fd = nix::fcntl::openat(
        &app_root,
        data.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    nix::unistd::fchown(&data_fd, Some(uid.into()), Some(uid.into()))?;
    Ok((
        Staged {
            deployments,
            app_root,
            data,
            old_data: format!(".restored-old-{id}"),
        },
        Stage {
            deployments: deployments_fd,
            data: data_fd,
            owner: uid,
            ids: meta.deployments.iter().map(|d| d.id).collect(),
        },
    ))
}

/// Clears what a restore the node did not finish left in the app root
/// (opened as `app_root`): staged data is removed, and data moved aside is
/// put back when the swap stopped before the staged data took its place.
fn clear_leftovers(app_root: &OwnedFd) -> std::io::Result<()> {
    let through = PathBuf::from(format!("/proc/self/fd/{}", app_root.as_raw_fd()));
    let names: Vec<String> = std::fs::read_dir(&through)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let mut has_data = names.iter().any(|n| n == "data");
    for name in &names {
        if name.starts_with(".restored-old-") && !has_data {
            renameat(app_root, name.as_str(), app_root, "data")?;
            has_data = true;
        } else if name.starts_with(".restored-old-") || name.starts_with(".restore-") {
            state::remove_tree(&through.join(name))?;
        }
    }
    Ok(())
}
