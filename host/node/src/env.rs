//! A gear's environment, layered like OpenShift's: system variables the node
//! sets (`GEAR_*`, `PATH`, `HOME`), the cartridge's (set by its hooks), the
//! linked gears' (what the cartridges of gears it is linked to publish, see
//! [`crate::links`]) and the user's (`gear env set`). Precedence, lowest
//! first: cartridge, linked, user, system: a link overrides what the app's
//! cartridge guessed, the user can override a link, and nobody overrides the
//! system layer.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::procs::{GEAR_HOME, GEAR_PATH, GEAR_REPO};
use crate::state::GearRecord;

/// Whether `key` belongs to the system layer.
pub fn is_system_key(key: &str) -> bool {
    gearhost_runtime::host::is_system_env_key(key)
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
    /// Published by the gears this one is linked to.
    pub linked: BTreeMap<String, String>,
    /// Set by the user.
    pub user: BTreeMap<String, String>,
}

impl Layers {
    /// Merge: linked over cartridge, user over both, system over all.
    pub fn effective(&self) -> BTreeMap<String, String> {
        let mut env = self.cartridge.clone();
        env.extend(self.linked.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_merge_cartridge_linked_user_system() {
        let layers = Layers {
            system: map(&[("GEAR_NAME", "app")]),
            cartridge: map(&[("DATABASE_URL", "sqlite://x"), ("A", "cartridge")]),
            linked: map(&[("DATABASE_URL", "postgresql://db"), ("PGUSER", "db")]),
            user: map(&[("PGUSER", "me"), ("GEAR_NAME", "ignored")]),
        };
        let env = layers.effective();
        assert_eq!(
            env["DATABASE_URL"], "postgresql://db",
            "a link beats the cartridge"
        );
        assert_eq!(env["PGUSER"], "me", "the user beats a link");
        assert_eq!(env["GEAR_NAME"], "app", "nobody beats the system");
        assert_eq!(env["A"], "cartridge");
    }
}
