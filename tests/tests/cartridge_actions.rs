//! Each cartridge of this repository lists in its manifest (`actions`, what
//! the node and shell completion know) the same control actions its code
//! implements (`Cartridge::ACTIONS`, what its `control` hook answers to).

use std::path::Path;

use gearhost_tests::workspace_root;

/// The quoted strings of the first `[...]` after `key` in `text`.
fn quoted_list(text: &str, key: &str) -> Option<Vec<String>> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    let open = rest.find('[')?;
    let close = rest[open..].find(']')? + open;
    Some(
        rest[open + 1..close]
            .split(',')
            .map(|item| item.trim().trim_matches('"').to_string())
            .filter(|item| !item.is_empty())
            .collect(),
    )
}

fn check(manifest: &Path, code: &Path) {
    let manifest_text = std::fs::read_to_string(manifest).expect("read the manifest");
    let code_text = std::fs::read_to_string(code).expect("read the code");
    let declared = manifest_text
        .lines()
        .find(|l| l.starts_with("actions = "))
        .and_then(|l| quoted_list(l, "actions ="));
    let implemented = quoted_list(&code_text, "const ACTIONS: &'static [&'static str] = &");
    assert!(
        implemented.is_some(),
        "{} has no ACTIONS constant",
        code.display()
    );
    assert_eq!(
        declared,
        implemented,
        "{} lists other actions than {} implements: make `actions` in the manifest the same as ACTIONS",
        manifest.display(),
        code.display()
    );
}

#[test]
fn manifests_list_the_actions_their_code_implements() {
    let root = workspace_root();
    let mut checked = 0;
    for parent in ["cartridges", "examples"] {
        for entry in std::fs::read_dir(root.join(parent)).expect("list the directory") {
            let dir = entry.expect("entry").path();
            let (manifest, code) = (dir.join("cartridge.toml"), dir.join("src/lib.rs"));
            if manifest.is_file() && code.is_file() {
                check(&manifest, &code);
                checked += 1;
            }
        }
    }
    let template = root.join("host/cli/src/cmd/cartridge_new");
    check(
        &template.join("cartridge.toml.tmpl"),
        &template.join("lib.rs.tmpl"),
    );
    assert!(checked >= 7, "only {checked} cartridges found");
}
