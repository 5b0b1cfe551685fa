//! A gear's environment, layered like OpenShift's: system variables the node
//! sets (`GEAR_*`, `PATH`, `HOME`), the cartridge's (set by its hooks), the
//! process's (what the cartridge gives the program it starts, such as `PORT`,
//! `VIRTUAL_ENV` or `NODE_ENV`), the linked gears' (what the cartridges of
//! gears it is linked to publish, see [`crate::links`]) and the user's
//! (`gear env set`). Precedence, lowest first: cartridge, process, linked,
//! user, system: a link overrides what the app's cartridge guessed, the user
//! can override a link and the cartridge's choices, and nobody overrides the
//! system layer. The app's processes, `gear exec` and `gear env list` all
//! merge the same layers ([`Layers::effective`]); `gear exec` gets the
//! process layer of the app's primary process. Which variables are the system's, and the defaults under all
//! layers (`LANG`), is [`gearhost_runtime::sysenv`]'s to say: the runtime
//! holds cartridges to the same list.

use std::collections::BTreeMap;

use gearhost_runtime::sysenv;

use serde::Serialize;

use crate::procs::{GEAR_HOME, GEAR_PATH, GEAR_REPO};
use crate::state::GearRecord;

/// Whether `key` belongs to the system layer.
pub fn is_system_key(key: &str) -> bool {
    sysenv::is_system_key(key)
}

/// The system layer for a gear: a value for every key of
/// [`sysenv::SYSTEM_KEYS`] and the gear's `GEAR_*` variables.
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
    set("GEAR_DNS", format!("{}.{domain}", gear.label()));
    if let Some(port) = port {
        set("GEAR_PORT", port.to_string());
        set("GEAR_IP", "127.0.0.1".into());
    }
    set("HOME", GEAR_HOME.into());
    set("PATH", GEAR_PATH.into());
    set("USER", gear.name.clone());
    set("LOGNAME", gear.name.clone());
    // the gear's UTS namespace carries its name as the host name
    set("HOSTNAME", gear.name.clone());
    env
}

/// What a gear's environment holds unless a layer says otherwise
/// ([`sysenv::DEFAULTS`]).
fn defaults() -> BTreeMap<String, String> {
    sysenv::DEFAULTS
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// The effective environment, by layer.
#[derive(Debug, Clone, Serialize)]
pub struct Layers {
    /// Set by the node.
    pub system: BTreeMap<String, String>,
    /// Set by the cartridge's hooks.
    pub cartridge: BTreeMap<String, String>,
    /// Given by the cartridge to the program it starts (for `gear exec` and
    /// `gear env list`: to the app's primary process at its last start).
    pub process: BTreeMap<String, String>,
    /// Published by the gears this one is linked to.
    pub linked: BTreeMap<String, String>,
    /// Set by the user.
    pub user: BTreeMap<String, String>,
}

impl From<Layers> for crate::api::reply::EnvLayers {
    fn from(l: Layers) -> Self {
        crate::api::reply::EnvLayers {
            system: l.system,
            cartridge: l.cartridge,
            process: l.process,
            linked: l.linked,
            user: l.user,
        }
    }
}

impl Layers {
    /// Merge: the node's defaults, cartridge over them, process over
    /// cartridge, linked over those, user over those, system over all; then
    /// [`activate`] a virtualenv the result names.
    pub fn effective(&self) -> BTreeMap<String, String> {
        let mut env = defaults();
        env.extend(self.cartridge.clone());
        env.extend(self.process.clone());
        env.extend(self.linked.clone());
        env.extend(self.user.clone());
        env.extend(self.system.clone());
        activate(&mut env);
        env
    }

    /// These layers with `process` as the process layer (what one program is
    /// started with).
    pub fn for_process(&self, process: &[(String, String)]) -> Layers {
        Layers {
            process: process
                .iter()
                .filter(|(k, _)| !is_system_key(k))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

/// What a virtualenv's `activate` does, for an environment whose
/// `VIRTUAL_ENV` names one inside the gear: its `bin` goes first on `PATH`,
/// so `python`, `pip` and what the app installed are found by name. Only a
/// directory under the gear's home is put there; the rest of `PATH` stays the
/// system's.
pub fn activate(env: &mut BTreeMap<String, String>) {
    let Some(venv) = env.get("VIRTUAL_ENV") else {
        return;
    };
    let venv = venv.trim_end_matches('/');
    let inside = venv.starts_with(&format!("{GEAR_HOME}/"))
        && !venv.contains(':')
        && !venv.split('/').any(|c| c == "..");
    if !inside {
        return;
    }
    let path = format!("{venv}/bin:{GEAR_PATH}");
    env.insert("PATH".into(), path);
}

/// The most variables one layer a user or a cartridge writes may hold.
pub const MAX_LAYER_KEYS: usize = 256;

/// The most bytes (names and values) one such layer may hold: the record
/// that keeps it is rewritten at every change, and every process of the gear
/// gets it.
pub const MAX_LAYER_BYTES: usize = 256 * 1024;

/// Whether `layer` with `changes` set in it stays within [`MAX_LAYER_KEYS`]
/// and [`MAX_LAYER_BYTES`]; `what` names the layer in the message.
pub fn check_room<'a>(
    layer: &BTreeMap<String, String>,
    changes: impl IntoIterator<Item = (&'a str, &'a str)>,
    what: &str,
) -> Result<(), String> {
    let mut next = layer.clone();
    for (k, v) in changes {
        next.insert(k.to_string(), v.to_string());
    }
    let bytes: usize = next.iter().map(|(k, v)| k.len() + v.len()).sum();
    if next.len() > MAX_LAYER_KEYS || bytes > MAX_LAYER_BYTES {
        return Err(format!(
            "{what} would hold {} variables and {bytes} bytes; a layer holds at most \
             {MAX_LAYER_KEYS} variables and {MAX_LAYER_BYTES} bytes: unset some first",
            next.len()
        ));
    }
    Ok(())
}

/// Variables a user may not set although they are not the node's: the
/// cartridge sets them for the app from what the node gives it, and another
/// value would break the gear. Each with the reason.
pub const CARTRIDGE_OWNED: &[(&str, &str)] = &[(
    "PORT",
    "it is the port the cartridge tells the app to listen on: the gear's endpoint \
     (GEAR_PORT), the only port the frontend forwards to, so an app listening on another \
     one would never be reached",
)];

/// Check a user-supplied variable: a valid name that is neither a system one
/// nor one of [`CARTRIDGE_OWNED`].
pub fn check_user_key(key: &str) -> Result<(), String> {
    gearhost_runtime::host::check_env_key(key).map_err(|e| e.to_string())?;
    if is_system_key(key) {
        return Err(format!(
            "{key} is set by the node and cannot be overridden (nor can {}); choose another name",
            sysenv::describe_system_keys()
        ));
    }
    if let Some((_, why)) = CARTRIDGE_OWNED.iter().find(|(k, _)| *k == key) {
        return Err(format!("{key} cannot be set: {why}; choose another name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_has_room_for_so_many_variables_and_bytes() {
        let mut layer = BTreeMap::new();
        for i in 0..MAX_LAYER_KEYS {
            layer.insert(format!("K{i}"), "v".to_string());
        }
        assert!(check_room(&layer, [("K0", "changed")], "layer").is_ok());
        let err = check_room(&layer, [("NEW", "x")], "the layer").expect_err("one too many");
        assert!(
            err.starts_with("the layer would hold 257 variables"),
            "{err}"
        );
        let big = "x".repeat(MAX_LAYER_BYTES);
        assert!(check_room(&BTreeMap::new(), [("BIG", big.as_str())], "layer").is_err());
    }

    #[test]
    fn what_the_node_sets_is_exactly_what_users_may_not_set() {
        let record: GearRecord = serde_json::from_value(serde_json::json!({
            "version": 1, "id": "0123456789abcdef", "name": "web", "namespace": "team",
            "cartridge": "python", "uid": 61000, "mcs_level": "s0:c1,c2", "created": 0,
            "desired": "stopped", "state": "new", "failure": null, "cartridge_env": {},
            "user_env": {}, "deployments": [], "active": null, "next_deployment": 1
        }))
        .expect("record");
        let system = system_layer(&record, Some(8080), "localhost");
        for key in system.keys() {
            assert!(
                check_user_key(key).is_err(),
                "{key} is set by the node but accepted"
            );
        }
        // and every name the list reserves is one the node does set
        for key in sysenv::SYSTEM_KEYS {
            assert!(system.contains_key(*key), "{key} is reserved but not set");
        }
        // the defaults are there unless a layer says otherwise, and any layer may
        for (key, value) in sysenv::DEFAULTS {
            assert!(check_user_key(key).is_ok(), "{key} is a default");
            let plain = Layers {
                system: system.clone(),
                cartridge: BTreeMap::new(),
                process: BTreeMap::new(),
                linked: BTreeMap::new(),
                user: BTreeMap::new(),
            };
            assert_eq!(plain.effective()[*key], *value);
            let by_cartridge = Layers {
                cartridge: map(&[(key, "x")]),
                ..plain
            };
            assert_eq!(by_cartridge.effective()[*key], "x");
        }
        // a default is not a system key: the user's value takes effect
        assert!(check_user_key("LANG").is_ok());
        let layers = Layers {
            system: system_layer(&record, Some(8080), "localhost"),
            cartridge: BTreeMap::new(),
            process: BTreeMap::new(),
            linked: BTreeMap::new(),
            user: map(&[("LANG", "de_DE.UTF-8")]),
        };
        assert_eq!(layers.effective()["LANG"], "de_DE.UTF-8");
        let without = Layers {
            user: BTreeMap::new(),
            ..layers
        };
        assert_eq!(without.effective()["LANG"], "C.UTF-8");
    }

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
            process: map(&[
                ("NODE_ENV", "production"),
                ("A", "process"),
                ("B", "process"),
            ]),
            linked: map(&[("DATABASE_URL", "postgresql://db"), ("PGUSER", "db")]),
            user: map(&[
                ("PGUSER", "me"),
                ("GEAR_NAME", "ignored"),
                ("NODE_ENV", "development"),
            ]),
        };
        let env = layers.effective();
        assert_eq!(env["NODE_ENV"], "development", "the user beats the process");
        assert_eq!(env["A"], "process", "the process beats the cartridge");
        assert_eq!(env["B"], "process");
        assert_eq!(
            env["DATABASE_URL"], "postgresql://db",
            "a link beats the cartridge"
        );
        assert_eq!(env["PGUSER"], "me", "the user beats a link");
        assert_eq!(env["GEAR_NAME"], "app", "nobody beats the system");
    }

    #[test]
    fn a_virtualenv_inside_the_gear_goes_first_on_the_path() {
        let mut env = map(&[
            ("VIRTUAL_ENV", "/gear/app-root/runtime/venv"),
            ("PATH", GEAR_PATH),
        ]);
        activate(&mut env);
        assert_eq!(
            env["PATH"],
            format!("/gear/app-root/runtime/venv/bin:{GEAR_PATH}")
        );
        for outside in ["/usr", "/gear/../usr", "/gear/a:/tmp", "relative"] {
            let mut env = map(&[("VIRTUAL_ENV", outside), ("PATH", GEAR_PATH)]);
            activate(&mut env);
            assert_eq!(env["PATH"], GEAR_PATH, "{outside}");
        }
    }

    #[test]
    fn what_the_cartridge_owns_is_refused_with_the_reason() {
        let err = check_user_key("PORT").expect_err("PORT is the cartridge's");
        assert!(err.contains("frontend forwards to"), "{err}");
        assert!(check_user_key("NODE_ENV").is_ok());
        assert!(check_user_key("VIRTUAL_ENV").is_ok());
    }
}
