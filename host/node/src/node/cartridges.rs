//! The node's cartridge store: install (validate, precompile, copy in
//! atomically), list, remove, and look-up by name.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::AtomicU64;

use gearhost_runtime::Cartridge;

use super::*;
use crate::api::reply;
use crate::api::{ApiError, ErrorKind};
use crate::unpack;

/// Tells apart the staging directories of installs running at once.
static INCOMING: AtomicU64 = AtomicU64::new(0);

impl Node {
    /// Install the cartridge the client streams as a tar archive on
    /// `archive` (`source` only labels it): unpacked into a staging
    /// directory of the store under the rules of [`crate::unpack`] (owned by
    /// the node), validated and precompiled, then swapped in atomically.
    pub async fn cartridge_install(
        &self,
        source: &str,
        archive: OwnedFd,
    ) -> ApiResult<reply::CartridgeSummary> {
        let store = self.config.cartridges_dir();
        std::fs::create_dir_all(&store).map_err(internal)?;
        remove_stale_staging(&store);
        let staging = store.join(format!(
            ".incoming.{}.{}",
            std::process::id(),
            INCOMING.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let limits = unpack::Limits {
            max_bytes: self.config.max_deploy_size,
            max_entries: unpack::MAX_ENTRIES,
        };
        let at = staging.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let _ = crate::state::remove_tree(&at);
            let input = unpack::PatientReader::new(archive, unpack::IDLE_TIMEOUT);
            unpack::unpack(input, &at, limits, None)
        })
        .await
        .map_err(internal)?;
        if let Err(e) = unpacked {
            let _ = crate::state::remove_tree(&staging);
            return Err(invalid(format!(
                "the cartridge from {source} was refused, nothing was installed: {e}"
            )));
        }
        let result = self.install_unpacked(&staging, None);
        let _ = crate::state::remove_tree(&staging);
        result
    }

    /// Validate the cartridge unpacked in `dir` and move its manifest and
    /// hooks component into the store, with the registry artifact it came
    /// from if any.
    pub(super) fn install_unpacked(
        &self,
        dir: &Path,
        origin: Option<&reply::CartridgeOrigin>,
    ) -> ApiResult<reply::CartridgeSummary> {
        let loaded = self
            .runtime
            .load_dir(dir)
            .map_err(|e| invalid(e.to_string()))?;
        let name = loaded.manifest().name.clone();
        let dest = self.config.cartridges_dir().join(&name);
        let staging = self
            .config
            .cartridges_dir()
            .join(format!(".{name}.installing"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(internal)?;
        let copy = (|| -> std::io::Result<()> {
            std::fs::copy(
                dir.join(gearhost_runtime::manifest::MANIFEST_FILE),
                staging.join(gearhost_runtime::manifest::MANIFEST_FILE),
            )?;
            let hooks = &loaded.manifest().hooks;
            if let Some(parent) = hooks.parent() {
                std::fs::create_dir_all(staging.join(parent))?;
            }
            std::fs::copy(loaded.manifest().hooks_path(dir), staging.join(hooks))?;
            if let Some(origin) = origin {
                let json = serde_json::to_vec(origin).map_err(std::io::Error::other)?;
                std::fs::write(staging.join(super::cartridge_pull::ORIGIN_FILE), json)?;
            }
            let old = self.config.cartridges_dir().join(format!(".{name}.old"));
            let _ = std::fs::remove_dir_all(&old);
            if dest.exists() {
                std::fs::rename(&dest, &old)?;
            }
            std::fs::rename(&staging, &dest)?;
            let _ = std::fs::remove_dir_all(&old);
            std::fs::File::open(self.config.cartridges_dir())?.sync_all()
        })();
        if let Err(e) = copy {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(internal(format!("cannot install cartridge {name}: {e}")));
        }
        let installed = self
            .runtime
            .load_dir(&dest)
            .map_err(|e| invalid(e.to_string()))?;
        let summary = reply::CartridgeSummary {
            origin: origin.cloned(),
            ..cartridge_summary(&installed)
        };
        lock(&self.cartridges).insert(name, installed);
        self.rebuild_routes();
        Ok(summary)
    }

    /// Installed cartridges.
    pub fn cartridge_list(&self) -> Vec<reply::CartridgeSummary> {
        let store = self.config.cartridges_dir();
        lock(&self.cartridges)
            .values()
            .map(|c| reply::CartridgeSummary {
                origin: super::cartridge_pull::origin_of(&store.join(&c.manifest().name)),
                ..cartridge_summary(c)
            })
            .collect()
    }

    /// Remove a cartridge no gear uses.
    pub fn cartridge_remove(&self, name: &str) -> ApiResult<reply::CartridgeRemoved> {
        let users: Vec<String> = lock(&self.gears)
            .values()
            .map(|g| g.record())
            .filter(|r| r.cartridge == name)
            .map(|r| r.label())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "cartridge {name} is used by {}; destroy those gears first",
                    users.join(", ")
                ),
            ));
        }
        if lock(&self.cartridges).remove(name).is_none() {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("no cartridge named {name} is installed; see `gear cartridge list`"),
            ));
        }
        let _ = std::fs::remove_dir_all(self.config.cartridges_dir().join(name));
        self.rebuild_routes();
        Ok(reply::CartridgeRemoved {
            removed: name.to_string(),
        })
    }

    pub(crate) fn cartridge(&self, name: &str) -> ApiResult<Cartridge> {
        let cartridges = lock(&self.cartridges);
        cartridges.get(name).cloned().ok_or_else(|| {
            let names: Vec<String> = cartridges.keys().cloned().collect();
            let hint = match super::did_you_mean(name, &names) {
                Some(near) => format!("did you mean {near}? (`gear cartridge list` shows them all)"),
                None => "see `gear cartridge list`; an operator installs cartridges with `gear cartridge install DIR`".to_string(),
            };
            ApiError::new(
                ErrorKind::NotFound,
                format!("no cartridge named {name} is installed; {hint}"),
            )
        })
    }
}

/// Remove the staging directories an earlier node process left when it
/// stopped in the middle of an install (this process's own are in use).
fn remove_stale_staging(store: &Path) {
    let own = format!(".incoming.{}.", std::process::id());
    let Ok(entries) = std::fs::read_dir(store) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".incoming.") && !name.starts_with(&own) {
            let _ = crate::state::remove_tree(&entry.path());
        }
    }
}

pub(super) fn cartridge_summary(c: &Cartridge) -> reply::CartridgeSummary {
    let m = c.manifest();
    reply::CartridgeSummary {
        name: m.name.clone(),
        version: m.version.to_string(),
        display_name: m.display_name.clone(),
        description: m.description.clone(),
        endpoints: m
            .endpoints
            .iter()
            .map(|e| reply::Endpoint {
                name: e.name.clone(),
                private_port: e.private_port,
                protocols: e.protocols.clone(),
            })
            .collect(),
        actions: m.actions.clone(),
        contract: c.info().contract_version.clone(),
        sha256: c.info().content_hash.clone(),
        origin: None,
    }
}
