//! Unit tests of the node configuration: defaults, every section, and the
//! refusals with their advice.

#[test]
fn user_limits_default_and_per_user() {
    let c = NodeConfig::parse(
        "users-group = \"gear-users\"\n[users]\nmax-gears = 3\nmax-memory = \"2GiB\"\n\
         [users.per-user.ada]\nmax-gears = 10\n",
        "u.toml",
    )
    .expect("parse");
    assert_eq!(c.users_group.as_deref(), Some("gear-users"));
    assert_eq!(
        c.user_limits.of("bob"),
        Limit {
            max_gears: Some(3),
            max_memory: Some(2 << 30)
        }
    );
    assert_eq!(
        c.user_limits.of("ada"),
        Limit {
            max_gears: Some(10),
            max_memory: Some(2 << 30)
        },
        "a field left out takes the default's"
    );
    let none = NodeConfig::parse("", "e.toml").expect("parse");
    assert_eq!(none.user_limits.of("ada"), Limit::default());
    let e = NodeConfig::parse("[users]\nmax-memory = \"lots\"\n", "b.toml").expect_err("bad size");
    assert!(e.to_string().contains("users.max-memory"), "{e}");
}

#[test]
fn every_field_has_the_documented_default() {
    let empty = NodeConfig::parse("", "empty.toml").expect("an empty file is a configuration");
    let embedded = NodeConfig::embedded();
    assert_eq!(empty.state_dir, Path::new("/var/lib/gearhost"));
    assert_eq!(empty.socket, Path::new(DEFAULT_SOCKET));
    assert_eq!((empty.uid_min, empty.uid_max), (61000, 62999));
    assert_eq!(
        (
            empty.uid_min,
            empty.uid_max,
            &empty.state_dir,
            &empty.socket
        ),
        (
            embedded.uid_min,
            embedded.uid_max,
            &embedded.state_dir,
            &embedded.socket
        ),
        "the embedded default says what the defaults are"
    );
    let only_gears = NodeConfig::parse("[gears]\nmemory = \"1GiB\"\n", "g.toml").expect("parse");
    assert_eq!((only_gears.uid_min, only_gears.uid_max), (61000, 62999));
}

use super::*;

#[test]
fn the_embedded_default_is_valid() {
    let c = NodeConfig::embedded();
    assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
    assert!(c.uid_min >= 1000);
}

#[test]
fn mistakes_are_named() {
    let e = NodeConfig::parse("schema = 1\nstate-dir = \"rel\"\nsocket = \"/s\"\n[gears]\nuid-min = 2000\nuid-max = 3000\n", "x.toml")
        .expect_err("relative state dir");
    assert!(e.to_string().contains("state-dir"), "{e}");
    let e = NodeConfig::parse("schema = 1\nstate-dir = \"/a\"\nsocket = \"/s\"\ncolour = 1\n[gears]\nuid-min = 2000\nuid-max = 3000\n", "x.toml")
        .expect_err("unknown field");
    assert!(e.to_string().contains("colour"), "{e}");
}

const BASE: &str = "schema = 1\nstate-dir = \"/a\"\nsocket = \"/s\"\n";

#[test]
fn the_deploy_size_limit_has_a_default_and_is_checked() {
    let gears = "[gears]\nuid-min = 2000\nuid-max = 3000\n";
    let c = NodeConfig::parse(&format!("{BASE}{gears}"), "x").expect("defaults");
    assert_eq!(c.max_deploy_size, 1 << 30);
    let c = NodeConfig::parse(&format!("{BASE}{gears}max-deploy-size = \"64MiB\"\n"), "x")
        .expect("set");
    assert_eq!(c.max_deploy_size, 64 << 20);
    let e = NodeConfig::parse(&format!("{BASE}{gears}max-deploy-size = \"lots\"\n"), "x")
        .expect_err("not a size");
    assert!(e.to_string().contains("gears.max-deploy-size"), "{e}");
}

#[test]
fn frontend_settings_have_defaults_and_are_checked() {
    let c = NodeConfig::parse(
        &format!("{BASE}[gears]\nuid-min = 2000\nuid-max = 3000\n"),
        "x",
    )
    .expect("defaults");
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(24 * 3600)));
    assert_eq!(c.max_body, 1 << 30);
    assert_eq!(c.metrics, None);
    assert!(c.frontend_workers >= 1);
    let c = NodeConfig::parse(
        &format!(
            "{BASE}metrics = \"127.0.0.1:9180\"\n[gears]\nuid-min = 2000\nuid-max = 3000\nidle-timeout = \"off\"\n\
             [http]\nmax-body = \"1MiB\"\nheader-timeout = \"5s\"\n"
        ),
        "x",
    )
    .expect("set");
    assert_eq!(c.idle_timeout, None);
    assert_eq!(c.max_body, 1 << 20);
    assert_eq!(c.header_timeout, Duration::from_secs(5));
    assert_eq!(c.metrics.as_deref(), Some("127.0.0.1:9180"));
    for (bad, named) in [
        (
            "[gears]\nuid-min = 2000\nuid-max = 3000\nidle-timeout = \"10ms\"\n",
            "idle-timeout",
        ),
        (
            "[gears]\nuid-min = 2000\nuid-max = 3000\n[http]\nmax-body = \"0\"\n",
            "max-body",
        ),
        (
            "[gears]\nuid-min = 2000\nuid-max = 3000\n[http]\nresponse-timeout = \"0s\"\n",
            "response-timeout",
        ),
        (
            "metrics = \"everywhere\"\n[gears]\nuid-min = 2000\nuid-max = 3000\n",
            "metrics",
        ),
        (
            "[gears]\nuid-min = 2000\nuid-max = 3000\n[http]\nkeepalive = 1\n",
            "keepalive",
        ),
    ] {
        let e = NodeConfig::parse(&format!("{BASE}{bad}"), "x").expect_err(bad);
        assert!(e.to_string().contains(named), "{e}");
    }
}

#[test]
fn freezing_settings_have_defaults_and_are_checked() {
    let gears = "[gears]\nuid-min = 2000\nuid-max = 3000\n";
    let c = NodeConfig::parse(&format!("{BASE}{gears}"), "x").expect("defaults");
    assert_eq!(c.freeze_after, Some(Duration::from_secs(600)));
    assert_eq!(c.frozen_memory_floor, Some(256 << 20));
    let c = NodeConfig::parse(
        &format!(
            "{BASE}{gears}idle-timeout = \"10s\"\nfreeze-after = \"1s\"\nfrozen-memory-floor = \"1024GiB\"\n"
        ),
        "x",
    )
    .expect("set");
    assert_eq!(c.freeze_after, Some(Duration::from_secs(1)));
    assert_eq!(c.frozen_memory_floor, Some(1 << 40));
    // a freeze that would come after the stop never comes
    let c = NodeConfig::parse(
        &format!("{BASE}{gears}idle-timeout = \"2s\"\nfreeze-after = \"5s\"\n"),
        "x",
    )
    .expect("set");
    assert_eq!(c.freeze_after, None);
    // freezing without idling
    let c = NodeConfig::parse(
        &format!(
            "{BASE}{gears}idle-timeout = \"off\"\nfreeze-after = \"1m\"\nfrozen-memory-floor = \"off\"\n"
        ),
        "x",
    )
    .expect("set");
    assert_eq!(
        (c.idle_timeout, c.freeze_after, c.frozen_memory_floor),
        (None, Some(Duration::from_secs(60)), None)
    );
    for (bad, named) in [
        ("freeze-after = \"10ms\"\n", "freeze-after"),
        ("freeze-after = \"soon\"\n", "freeze-after"),
        ("frozen-memory-floor = \"lots\"\n", "frozen-memory-floor"),
    ] {
        let e = NodeConfig::parse(&format!("{BASE}{gears}{bad}"), "x").expect_err(bad);
        assert!(e.to_string().contains(named), "{e}");
    }
}

#[test]
fn disk_quotas_are_optional_and_checked() {
    let gears = "[gears]\nuid-min = 2000\nuid-max = 3000\n";
    let c = NodeConfig::parse(&format!("{BASE}{gears}"), "x").expect("defaults");
    assert_eq!(
        (c.gear_disk, c.gear_max_disk, c.allow_no_quota),
        (None, None, false)
    );
    assert_eq!(c.disk_ceiling(), None);
    assert_eq!(
        (
            NodeConfig::embedded().gear_disk,
            NodeConfig::embedded().allow_no_quota
        ),
        (None, false)
    );
    let c = NodeConfig::parse(&format!("{BASE}{gears}disk = \"2GiB\"\n"), "x").expect("disk");
    assert_eq!((c.gear_disk, c.gear_max_disk), (Some(2 << 30), None));
    assert_eq!(
        c.disk_ceiling(),
        Some(2 << 30),
        "no ceiling given: the default is the most"
    );
    let c = NodeConfig::parse(
        &format!("{BASE}{gears}disk = \"2GiB\"\nmax-disk = \"10GiB\"\nallow-no-quota = true\n"),
        "x",
    )
    .expect("all three");
    assert_eq!(
        (c.gear_disk, c.gear_max_disk),
        (Some(2 << 30), Some(10 << 30))
    );
    assert_eq!(c.disk_ceiling(), Some(10 << 30));
    assert!(c.allow_no_quota);
    let c = NodeConfig::parse(&format!("{BASE}{gears}max-disk = \"1GiB\"\n"), "x")
        .expect("a ceiling alone");
    assert_eq!((c.gear_disk, c.disk_ceiling()), (None, Some(1 << 30)));
    for (bad, named) in [
        ("disk = \"lots\"", "invalid size \"lots\" in `gears.disk`"),
        ("disk = \"1MiB\"", "below the smallest gear quota"),
        ("max-disk = \"4KiB\"", "`gears.max-disk`"),
        ("disk = \"2GiB\"\nmax-disk = \"1GiB\"", "below `gears.disk`"),
        ("disk = 5", "gears.disk"),
        ("allow-no-quota = \"yes\"", "allow-no-quota"),
    ] {
        let e = NodeConfig::parse(&format!("{BASE}{gears}{bad}\n"), "x")
            .expect_err(bad)
            .to_string();
        assert!(e.contains(named), "{bad}: {e}");
        assert!(e.contains("help:"), "{e}");
    }
}

#[test]
fn build_egress_has_defaults_and_is_checked() {
    use crate::egress::{Cidr, EgressMode};
    let gears = "[gears]\nuid-min = 2000\nuid-max = 3000\n";
    let c = NodeConfig::parse(&format!("{BASE}{gears}"), "x").expect("defaults");
    assert_eq!(c.build_egress.mode, EgressMode::Proxy);
    assert!(c.build_egress.allow.is_empty() && c.build_egress.deny.is_empty());
    assert_eq!(c.build_egress.connections, 32);
    assert_eq!(NodeConfig::embedded().build_egress, c.build_egress);
    let c = NodeConfig::parse(
        &format!(
            "{BASE}{gears}[build]\negress = \"proxy\"\negress-allow = [\"10.1.2.0/24\", \"fd12:3456::/48\"]\n\
             egress-deny = [\"203.0.113.7\"]\negress-connections = 8\n"
        ),
        "x",
    )
    .expect("set");
    assert_eq!(
        c.build_egress.allow,
        [
            Cidr::parse("10.1.2.0/24").expect("cidr"),
            Cidr::parse("fd12:3456::/48").expect("cidr")
        ]
    );
    assert_eq!(
        c.build_egress.deny,
        [Cidr::parse("203.0.113.7/32").expect("cidr")]
    );
    assert_eq!(c.build_egress.connections, 8);
    let c = NodeConfig::parse(&format!("{BASE}{gears}[build]\negress = \"none\"\n"), "x")
        .expect("none");
    assert_eq!(c.build_egress.mode, EgressMode::None);
    for (bad, named) in [
        ("egress = \"direct\"", "`build.egress` is \"direct\""),
        ("egress-allow = [\"10.1.2.0/33\"]", "`build.egress-allow`"),
        ("egress-allow = [\"10.1.2.5/24\"]", "write 10.1.2.0/24"),
        ("egress-deny = [\"mirror.lan\"]", "`build.egress-deny`"),
        ("egress-allow = [\"127.0.0.1\"]", "never reach"),
        ("egress-connections = 0", "egress-connections"),
        ("egress-allow = \"10.0.0.0/8\"", "egress-allow"),
        ("egres = \"none\"", "egres"),
    ] {
        let e = NodeConfig::parse(&format!("{BASE}{gears}[build]\n{bad}\n"), "x")
            .expect_err(bad)
            .to_string();
        assert!(e.contains(named), "{bad}: {e}");
        assert!(e.contains("help:"), "{e}");
    }
}
