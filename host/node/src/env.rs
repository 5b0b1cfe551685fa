//! A gear's environment, layered like OpenShift's: system variables the node
//! sets (`GEAR_*`, `PATH`, `HOME`), then the cartridge's (set by its hooks),
//! then the user's (`gear env set`). Users and cartridges cannot override
//! system variables.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::procs::{GEAR_HOME, GEAR_PATH, GEAR_REPO};
use crate::state::GearRecord;

/// Whether `key` belongs to the system layer.
pub fn is_system_key(key: &str) -> bool {
    key.starts_with("GEAR_") || matches!(key, "PATH" | "HOME" | "USER" | "LOGNAME" | "HOSTNAME")
}

/// The system layer for a gear.
pub fn system_layer(
    gear: &GearRecord,
    port: Option<u16>,
    domain: &str,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("GEAR_ID", gear.id.clone());
    set("GEAR_NAME", gear.name.clone());
    set("GEAR_NAMESPACE", gear.namespace.clone());
    set("GEAR_CARTRIDGE", gear.cartridge.clone());
    set("GEAR_HOME", GEAR_HOME.into());
    set("GEAR_REPO_DIR", GEAR_REPO.into());
    set("GEAR_DATA_DIR", format!("{GEAR_HOME}/app-root/data"));
    set("GEAR_RUNTIME_DIR", format!("{GEAR_HOME}/app-root/runtime"));
    set("GEAR_LOG_DIR", format!("{GEAR_HOME}/app-root/logs"));
    set(
        "GEAR_DNS",
        format!("{}-{}.{domain}", gear.name, gear.namespace),
    );
    if let Some(port) = port {
        set("GEAR_PORT", port.to_string());
        set("GEAR_IP", "127.0.0.1".into());
    }
    set("HOME", GEAR_HOME.into());
    set("PATH", GEAR_PATH.into());
    set("USER", gear.name.clone());
    set("LANG", "C.UTF-8".into());
    env
}

/// The effective environment, by layer.
#[derive(Debug, Clone, Serialize)]
pub struct Layers {
    /// Set by the node.
    pub system: BTreeMap<String, String>,
    /// Set by the cartridge's hooks.
    pub cartridge: BTreeMap<String, String>,
    /// Set by the user.
    pub user: BTreeMap<String, String>,
}

impl Layers {
    /// Merge: user over cartridge; system over both.
    pub fn effective(&self) -> BTreeMap<String, String> {
        let mut env = self.cartridge.clone();
        env.extend(self.user.clone());
        env.extend(self.system.clone());
        env
    }
}

/// Check a user-supplied variable: a valid name that is not a system one.
pub fn check_user_key(key: &str) -> Result<(), String> {
    gearhost_runtime::host::check_env_key(key).map_err(|e| e.to_string())?;
    if is_system_key(key) {
        return Err(format!(
            "{key} is set by the node and cannot be overridden; pick a name without the GEAR_ prefix"
        ));
    }
    Ok(())
}
