//! `gear cartridge install oci://REF`: the node pulls a cartridge from an OCI
//! registry (`gearhost_oci`: every blob verified by digest and size, the
//! config's contract checked before the component is fetched), stages it
//! like a directory install and installs it the same way, recording where
//! it came from (`origin.json` beside the manifest).

use std::path::Path;

use super::*;
use crate::api::reply;
use crate::api::{ApiError, ErrorKind};

/// The file beside an installed cartridge's manifest that says which registry
/// artifact it came from.
pub(super) const ORIGIN_FILE: &str = "origin.json";

/// The longest a pull may take, every request included: a registry that
/// stalls fails the install instead of holding it.
const PULL_TIME: std::time::Duration = std::time::Duration::from_secs(600);

impl Node {
    /// Pulls, verifies and installs the cartridge at `reference`.
    pub async fn cartridge_pull(
        &self,
        reference: &str,
        insecure: bool,
        credentials: Option<crate::api::ops::RegistryCredentials>,
    ) -> ApiResult<reply::CartridgeSummary> {
        let target = registry_target(reference, insecure, credentials)?;
        let refused = |e: String| {
            ApiError::new(
                ErrorKind::Invalid,
                format!("{reference} was refused, nothing was installed: {e}"),
            )
        };
        let pulled = tokio::time::timeout(PULL_TIME, gearhost_oci::pull(&target, check_contract))
            .await
            .unwrap_or_else(|_| {
                Err(gearhost_oci::OciError::Registry {
                    registry: target.registry().to_string(),
                    message: format!("no whole answer within {} s", PULL_TIME.as_secs()),
                })
            })
            .map_err(|e| match e {
                gearhost_oci::OciError::Registry { .. } => ApiError::new(
                    ErrorKind::Failed,
                    format!(
                        "cannot pull {reference}, nothing was installed: {e}{}",
                        if insecure {
                            ""
                        } else {
                            " (a registry on loopback that speaks plain HTTP needs --insecure)"
                        }
                    ),
                ),
                other => refused(other.to_string()),
            })?;
        let manifest = match &pulled.manifest {
            Some(m) => m.clone(),
            None => gearhost_oci::custom_section(&pulled.wasm, gearhost_oci::MANIFEST_SECTION)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    refused(format!(
                        "the artifact carries no cartridge.toml: neither a {} layer nor a `{}` custom section in its component",
                        gearhost_oci::MANIFEST_LAYER,
                        gearhost_oci::MANIFEST_SECTION
                    ))
                })?,
        };
        let store = self.config.cartridges_dir();
        std::fs::create_dir_all(&store).map_err(internal)?;
        let staging = store.join(format!(
            ".incoming.{}.pull.{}",
            std::process::id(),
            next_pull()
        ));
        let origin = reply::CartridgeOrigin {
            reference: reference
                .strip_prefix("oci://")
                .unwrap_or(reference)
                .to_string(),
            digest: pulled.digest.clone(),
        };
        let staged = stage(&staging, &manifest, &pulled.wasm).map_err(refused);
        let result = staged.and_then(|()| self.install_unpacked(&staging, Some(&origin)));
        let _ = crate::state::remove_tree(&staging);
        result.map_err(|e| {
            if e.kind == ErrorKind::Invalid && !e.message.contains("nothing was installed") {
                refused(e.message)
            } else {
                e
            }
        })
    }
}

/// Where a pull goes: `reference` with the client's credentials.
pub(super) fn registry_target(
    reference: &str,
    insecure: bool,
    credentials: Option<crate::api::ops::RegistryCredentials>,
) -> ApiResult<gearhost_oci::Target> {
    let credentials = credentials.map(|c| gearhost_oci::Credentials {
        username: c.username,
        password: c.password,
    });
    gearhost_oci::Target::new(reference, insecure, credentials).map_err(|e| invalid(e.to_string()))
}

fn next_pull() -> u64 {
    static PULLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    PULLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Accepts a config whose component exports the hooks of a contract this
/// node implements (the component itself is checked again when it loads).
fn check_contract(config: &gearhost_oci::WasmConfig) -> Result<(), String> {
    use gearhost_runtime::{CONTRACT_PACKAGE, CONTRACT_VERSION};
    let interface = format!("{CONTRACT_PACKAGE}/hooks");
    let Some(version) = config.exported_version(&interface) else {
        let exports = config
            .component
            .as_ref()
            .map(|c| c.exports.join(", "))
            .unwrap_or_default();
        return Err(format!(
            "its config says the component exports [{exports}], not {interface}: it is not a cartridge"
        ));
    };
    match semver::Version::parse(version) {
        Ok(v) if v.major == CONTRACT_VERSION.major && v.minor == CONTRACT_VERSION.minor => Ok(()),
        Ok(v) => Err(format!(
            "it exports {interface}@{v}, and this node implements contract {CONTRACT_VERSION}; \
             install a version of the cartridge built for it"
        )),
        Err(_) => Err(format!(
            "it exports {interface}@{version}, an unreadable version"
        )),
    }
}

/// Writes the manifest and the component where the manifest puts it.
fn stage(dir: &Path, manifest: &[u8], wasm: &[u8]) -> Result<(), String> {
    let _ = crate::state::remove_tree(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let manifest_path = dir.join(gearhost_runtime::manifest::MANIFEST_FILE);
    std::fs::write(&manifest_path, manifest).map_err(|e| e.to_string())?;
    // where the component goes; the whole manifest is checked by the install
    let text = std::str::from_utf8(manifest).map_err(|_| "its cartridge.toml is not UTF-8")?;
    let table: toml::Table =
        toml::from_str(text).map_err(|e| format!("its cartridge.toml: {e}"))?;
    let relative = table
        .get("hooks")
        .and_then(toml::Value::as_str)
        .ok_or("its cartridge.toml names no `hooks` component")?;
    let relative = Path::new(relative);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "its manifest puts the component at {}, outside the cartridge",
            relative.display()
        ));
    }
    let hooks = dir.join(relative);
    if let Some(parent) = hooks.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(&hooks, wasm).map_err(|e| e.to_string())
}

/// The origin recorded for the cartridge installed in `dir`, if any.
pub(super) fn origin_of(dir: &Path) -> Option<reply::CartridgeOrigin> {
    let text = std::fs::read(dir.join(ORIGIN_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}
