//! The value rules of a manifest that other parts of Gearhost share: names
//! (cartridges, endpoints, categories, processes), byte sizes, and the
//! defaults and bounds of hook limits.

use std::time::Duration;

pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub(super) const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);
pub(super) const DEFAULT_MEMORY: u64 = 128 * MIB;
pub(super) const MIN_MEMORY: u64 = 2 * MIB;
pub(super) const MAX_MEMORY: u64 = 4 * GIB;
pub(super) const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
pub(super) const MIB: u64 = 1024 * 1024;
pub(super) const GIB: u64 = 1024 * MIB;
pub(super) const KNOWN_PROTOCOLS: &[&str] = &["http", "https", "websocket", "tcp", "udp"];

/// Check a name made of lower-case letters, digits and single dashes.
/// Returns what is wrong, for messages.
pub fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > max {
        return Err(format!("it is longer than {max} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("it must start with a lower-case letter".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("{bad:?} is not allowed"));
    }
    if name.ends_with('-') || name.contains("--") {
        return Err("dashes must separate words".into());
    }
    Ok(())
}
/// Parse a byte size such as `64MiB`, `1 GiB`, `512KiB` or `4096`.
/// Decimal units (`MB`) are read as their binary counterparts' decimal
/// values (`1MB` = 1,000,000 bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1024,
        "MiB" | "M" => MIB,
        "GiB" | "G" => GIB,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// Format a byte count the way manifests write it.
pub fn format_size(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{}GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{}MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{}KiB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Some(64 * MIB));
        assert_eq!(parse_size("1 GiB"), Some(GIB));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2MB"), Some(2_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
        assert_eq!(format_size(96 * MIB), "96MiB");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("python", 32).is_ok());
        assert!(check_name("my-app2", 32).is_ok());
        for bad in [
            "",
            "Python",
            "1app",
            "a_b",
            "a-",
            "a--b",
            "../x",
            &"a".repeat(33),
        ] {
            assert!(check_name(bad, 32).is_err(), "{bad:?} accepted");
        }
    }
}
