//! Golden tests of manifest error messages: every `*.toml` under
//! `tests/manifest-golden/` must be refused with exactly the message in the
//! `*.err` file beside it. Run with `GEARHOST_BLESS=1` to rewrite the `.err`
//! files after an intended change, then review the diff.

use std::path::{Path, PathBuf};

use gearhost_runtime::Manifest;

#[test]
fn manifest_errors_match_their_golden_files() {
    // as cargo says when it runs the test (a binary found fresh in a shared target directory
    // may have been built from a checkout elsewhere)
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/manifest-golden");
    let bless = std::env::var_os("GEARHOST_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "golden cases missing from {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).expect("read case");
        let name = case
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let shown = Path::new("cartridges/web").join(&name);
        let got = match Manifest::parse(&text, &shown) {
            Ok(_) => "(accepted)\n".to_string(),
            Err(e) => format!("{e}\n"),
        };
        let golden = case.with_extension("err");
        if bless {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!("{name}:\n--- want\n{want}--- got\n{got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (GEARHOST_BLESS=1 to update):\n{}",
        failures.join("\n")
    );
}
