//! The cartridge manifest parser (`Manifest::parse`) on arbitrary text: a
//! manifest is either valid or refused with an error that can be shown
//! (file, field, line and column), and a valid one serialises.

#![no_main]

use std::path::Path;

use gearhost_runtime::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(text, Path::new("cartridge.toml")) {
        Ok(manifest) => {
            serde_json::to_string(&manifest).expect("a manifest serialises");
            assert!(manifest.limits.memory > 0);
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.is_empty());
        }
    }
});
