//! The one list of a gear's system environment: the variables the node sets
//! in every gear and nobody else may (`GEAR_*`, `PATH`, `HOME`, `USER`,
//! `LOGNAME`, `HOSTNAME`), and the defaults it gives every gear that anyone
//! may override (`LANG`).
//!
//! The runtime checks hooks and manifests against it (a cartridge can neither
//! set nor publish a system variable), and the node builds a gear's system
//! layer from it and checks `gear env set` against it.

/// Every variable whose name starts with this is the node's.
pub const SYSTEM_PREFIX: &str = "GEAR_";

/// The variables outside [`SYSTEM_PREFIX`] that the node sets in every gear
/// and nobody else may: the gear's identity as a Unix account.
pub const SYSTEM_KEYS: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "HOSTNAME"];

/// What every gear's environment holds unless one of its layers (the
/// cartridge's, a link's, the user's) says otherwise. A locale is a
/// preference, not the node's to enforce, so `gear env set LANG=...` takes
/// effect.
pub const DEFAULTS: &[(&str, &str)] = &[("LANG", "C.UTF-8")];

/// Whether `key` belongs to the node's system layer of a gear's environment:
/// set by the node only, never by a cartridge, a user or a link.
pub fn is_system_key(key: &str) -> bool {
    key.starts_with(SYSTEM_PREFIX) || SYSTEM_KEYS.contains(&key)
}

/// The system variables as people read them in a message:
/// `GEAR_*, PATH, HOME, USER, LOGNAME or HOSTNAME`.
pub fn describe_system_keys() -> String {
    let mut names = format!("{SYSTEM_PREFIX}*");
    for (i, key) in SYSTEM_KEYS.iter().enumerate() {
        names.push_str(if i + 1 == SYSTEM_KEYS.len() {
            " or "
        } else {
            ", "
        });
        names.push_str(key);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_not_system_keys() {
        for (key, _) in DEFAULTS {
            assert!(!is_system_key(key), "{key} is both a default and reserved");
            assert!(crate::host::check_env_key(key).is_ok(), "{key}");
        }
        assert!(!is_system_key("LANG"));
    }

    #[test]
    fn the_system_keys_are_the_prefix_and_the_list() {
        for key in [
            "GEAR_ID",
            "GEAR_ANYTHING",
            "PATH",
            "HOME",
            "USER",
            "LOGNAME",
            "HOSTNAME",
        ] {
            assert!(is_system_key(key), "{key}");
        }
        for key in ["GEAR", "LANG", "TERM", "DATABASE_URL", "path"] {
            assert!(!is_system_key(key), "{key}");
        }
        assert_eq!(
            describe_system_keys(),
            "GEAR_*, PATH, HOME, USER, LOGNAME or HOSTNAME"
        );
    }
}
