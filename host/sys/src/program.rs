//! What the `gear` and `gearhost-node` programs share about being a program:
//! their log output on stderr, and how they print an error with its causes.

/// Log to stderr at the level `-v` flags ask for (none: warnings, and the
/// node's event log, one line per event; `-v` info, `-vv` debug, more:
/// trace), unless `GEARHOST_LOG` gives a filter: comma-separated
/// `TARGET=LEVEL` pairs and at most one bare `LEVEL` for the rest
/// (`warn,gearhost_node::frontend=debug`); a target matches itself and the
/// modules below it. (Targets only, no span or field filters: those need a
/// regular-expression engine, which every start of `gear` paid for.)
pub fn init_tracing(verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = match verbose {
        0 => "warn,gearhost_node::events=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = filter_from(std::env::var("GEARHOST_LOG").ok().as_deref(), default);
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}

/// The filter `given` describes, else `default` (with a warning on stderr
/// when `given` cannot be read).
fn filter_from(given: Option<&str>, default: &str) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::Targets;
    if let Some(text) = given.filter(|t| !t.trim().is_empty()) {
        match text.parse::<Targets>() {
            Ok(filter) => return filter,
            Err(e) => eprintln!(
                "warning: GEARHOST_LOG={text:?} is not a filter ({e}); write TARGET=LEVEL pairs and a LEVEL, e.g. warn,gearhost_node=debug"
            ),
        }
    }
    default
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::level_filters::LevelFilter::WARN))
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
    use tracing::Level;

    #[test]
    fn the_log_filter_reads_targets_and_levels() {
        let filter = filter_from(Some("warn,gearhost_node::frontend=debug"), "info");
        assert!(filter.would_enable("gearhost_node::frontend::route", &Level::DEBUG));
        assert!(!filter.would_enable("gearhost_node::frontend", &Level::TRACE));
        assert!(filter.would_enable("gearhost_node::node", &Level::WARN));
        assert!(!filter.would_enable("gearhost_node::node", &Level::INFO));
        // unreadable or empty: the default
        let filter = filter_from(Some("gearhost_node=loud"), "info");
        assert!(filter.would_enable("anything", &Level::INFO));
        assert!(!filter.would_enable("anything", &Level::DEBUG));
        let filter = filter_from(Some(" "), "warn,gearhost_node::events=info");
        assert!(filter.would_enable("gearhost_node::events", &Level::INFO));
        assert!(!filter.would_enable("gearhost_node::node", &Level::INFO));
    }

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
