//! The node configuration parser (`NodeConfig::parse`) on arbitrary text:
//! a configuration is either valid or refused with an error that names the
//! file and says what to do, never a panic.

#![no_main]

use gearhost_node_config::NodeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match NodeConfig::parse(text, "node.toml") {
        Ok(config) => {
            assert!(config.uid_min <= config.uid_max);
            assert!(config.state_dir.is_absolute() && config.socket.is_absolute());
            assert!(config.frontend_workers >= 1);
        }
        Err(e) => {
            assert!(e.to_string().starts_with("node.toml: "));
        }
    }
});
