//! The artifact's config: the CNCF Wasm OCI config (`application/vnd.wasm.config.v0+json`).

use serde::{Deserialize, Serialize};

/// The config of a Wasm artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// When the artifact was made (RFC 3339).
    pub created: String,
    /// Who made it, if said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component.
    pub os: String,
    /// The digests of the artifact's layers, in order.
    #[serde(default)]
    pub layer_digests: Vec<String>,
    /// What the component imports and exports; absent for a core module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<Component>,
}

/// A component's interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Exported interfaces (full names, e.g. `gearhost:cartridge/hooks@0.1.0`).
    #[serde(default)]
    pub exports: Vec<String>,
    /// Imported interfaces.
    #[serde(default)]
    pub imports: Vec<String>,
    /// The WIT world it targets, if said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl WasmConfig {
    /// The config of a component with `layer_digests`, made now, or at
    /// `SOURCE_DATE_EPOCH` when set (so the same cartridge pushed twice has
    /// the same digest, as reproducible builds expect).
    pub fn new(component: Component, layer_digests: Vec<String>) -> WasmConfig {
        let made = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or_else(std::time::SystemTime::now, |secs| {
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
            });
        WasmConfig {
            created: humantime::format_rfc3339_seconds(made).to_string(),
            author: None,
            architecture: "wasm".into(),
            os: "wasip2".into(),
            layer_digests,
            component: Some(component),
        }
    }

    /// The version of the interface `package/name@` the component exports, if it does.
    pub fn exported_version(&self, interface: &str) -> Option<&str> {
        let prefix = format!("{interface}@");
        self.component
            .as_ref()?
            .exports
            .iter()
            .find_map(|e| e.strip_prefix(&prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_reads_and_writes_the_cncf_field_names() {
        let text = r#"{"created":"2024-01-01T00:00:00Z","architecture":"wasm","os":"wasip2",
            "layerDigests":["sha256:aa"],"component":{"exports":["gearhost:cartridge/hooks@0.1.0"],
            "imports":["wasi:io/streams@0.2.0"],"target":null}}"#;
        let c: WasmConfig = serde_json::from_str(text).expect("parses");
        assert_eq!(
            c.exported_version("gearhost:cartridge/hooks"),
            Some("0.1.0")
        );
        assert_eq!(c.exported_version("gearhost:cartridge/host"), None);
        let back = serde_json::to_value(&c).expect("writes");
        assert_eq!(back["layerDigests"][0], "sha256:aa");
        assert_eq!(back["architecture"], "wasm");
    }
}
