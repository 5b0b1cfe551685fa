//! What the `gear` and `gearhost-node` programs share about being a program:
//! their log output on stderr, and how they print an error with its causes.

/// Log to stderr at the level `-v` flags ask for (none: warnings, and the
/// node's event log, one line per event; `-v` info, `-vv` debug, more:
/// trace), unless `GEARHOST_LOG` gives a filter.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn,gearhost_node::events=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GEARHOST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The error and its causes, one per line after the first, without
/// repeating text that a cause already contains.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join("\n  caused by: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_follow_the_error_once_each() {
        let e = anyhow::anyhow!("cannot read /x: denied")
            .context("cannot read /x: denied")
            .context("loading the cartridge");
        assert_eq!(
            error_text(&e),
            "loading the cartridge\n  caused by: cannot read /x: denied"
        );
    }
}
