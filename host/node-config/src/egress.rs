//! Where a build may connect: address blocks (CIDR), the ranges refused by
//! default, the operator's allow and deny lists from `[build]` in the node
//! configuration, and the one-line reasons a refusal gives.
//!
//! The order of the checks, first match wins:
//!
//! 1. the loopback and the unspecified addresses: always refused;
//! 2. `build.egress-deny`: refused;
//! 3. `build.egress-allow`: allowed;
//! 4. the special ranges ([`SPECIAL`]: private, shared, link-local,
//!    multicast, documentation, reserved ...): refused;
//! 5. a NAT64 address (`64:ff9b::/96`) whose embedded IPv4 address steps 1-4
//!    refuse: refused;
//! 6. anything else: allowed.
//!
//! The host's own addresses are refused as well, whatever the lists say, but
//! that needs the kernel's routing table and is checked by the proxy
//! (`egress::route`), not here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

/// A block of addresses: an address and the length of its prefix, as in
/// `10.1.2.0/24` or `fd12:3456::/48`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// A CIDR block that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address.
    #[error(
        "{0:?} is not an IP address or address block; write e.g. \"10.1.2.0/24\" or \"fd12:3456::/48\""
    )]
    NotAnAddress(String),
    /// The prefix length is not a number or too long for the family.
    #[error("{text:?} has a prefix length that is not 0 to {max}; write e.g. \"10.1.2.0/24\"")]
    BadPrefix {
        /// The block as written.
        text: String,
        /// The longest prefix of its family.
        max: u8,
    },
    /// Bits set after the prefix (`10.1.2.5/24`): probably a typo.
    #[error("{text:?} has bits set after its /{len} prefix; write {fixed}")]
    HostBits {
        /// The block as written.
        text: String,
        /// Its prefix length.
        len: u8,
        /// The block it probably means.
        fixed: Cidr,
    },
    /// An IPv4-mapped IPv6 block (`::ffff:10.0.0.0/104`).
    #[error(
        "{0:?} is an IPv4-mapped IPv6 block; write the IPv4 block instead (the proxy checks mapped addresses as IPv4)"
    )]
    Mapped(String),
}

impl Cidr {
    /// `a.b.c.d/len`.
    pub const fn v4(a: [u8; 4], len: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            len,
        }
    }

    /// An IPv6 block from its eight 16-bit groups.
    pub const fn v6(g: [u16; 8], len: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(
                g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7],
            )),
            len,
        }
    }

    /// Parse `addr/len`, or a bare address (a block of one).
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress(text.to_string()))?;
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            return Err(CidrError::Mapped(text.to_string()));
        }
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= max && !l.trim().starts_with('+') => n,
                _ => {
                    return Err(CidrError::BadPrefix {
                        text: text.to_string(),
                        max,
                    });
                }
            },
        };
        let cidr = Cidr { addr, len };
        let fixed = Cidr {
            addr: cidr.network(),
            len,
        };
        if fixed.addr != addr {
            return Err(CidrError::HostBits {
                text: text.to_string(),
                len,
                fixed,
            });
        }
        Ok(cidr)
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The first address of the block.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.len))),
        }
    }

    /// Whether `ip` is in the block (an IPv4 block never holds an IPv6
    /// address: map them with [`IpAddr::to_canonical`] first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let m = mask32(self.len);
                u32::from(net) & m == u32::from(ip) & m
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let m = mask128(self.len);
                u128::from(net) & m == u128::from(ip) & m
            }
            _ => false,
        }
    }

    /// Whether every address of this block is in `other`.
    pub fn within(&self, other: &Cidr) -> bool {
        self.len >= other.len && other.contains(self.addr)
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(len.min(32)))
        .unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Addresses no setting opens: a connection to them reaches this host.
pub const NEVER: &[(Cidr, &str)] = &[
    (Cidr::v4([127, 0, 0, 0], 8), "the host's loopback"),
    (
        Cidr::v4([0, 0, 0, 0], 8),
        "\"this network\" (0.0.0.0/8 reaches the host itself)",
    ),
    (
        Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
        "the host's loopback",
    ),
    (
        Cidr::v6([0; 8], 128),
        "the unspecified address (it reaches the host itself)",
    ),
];

/// Ranges refused unless `build.egress-allow` lists them: private networks,
/// addresses that are not on the public internet, and ranges that reach
/// other addresses through translation.
pub const SPECIAL: &[(Cidr, &str)] = &[
    (Cidr::v4([10, 0, 0, 0], 8), "a private range (RFC 1918)"),
    (
        Cidr::v4([100, 64, 0, 0], 10),
        "the shared address space of carrier-grade NAT (RFC 6598)",
    ),
    (
        Cidr::v4([169, 254, 0, 0], 16),
        "link-local (cloud metadata services live here)",
    ),
    (Cidr::v4([172, 16, 0, 0], 12), "a private range (RFC 1918)"),
    (
        Cidr::v4([192, 0, 0, 0], 24),
        "IETF protocol assignments (RFC 6890)",
    ),
    (Cidr::v4([192, 0, 2, 0], 24), "documentation (TEST-NET-1)"),
    (
        Cidr::v4([192, 88, 99, 0], 24),
        "the deprecated 6to4 relay anycast",
    ),
    (Cidr::v4([192, 168, 0, 0], 16), "a private range (RFC 1918)"),
    (
        Cidr::v4([198, 18, 0, 0], 15),
        "benchmarking networks (RFC 2544)",
    ),
    (
        Cidr::v4([198, 51, 100, 0], 24),
        "documentation (TEST-NET-2)",
    ),
    (Cidr::v4([203, 0, 113, 0], 24), "documentation (TEST-NET-3)"),
    (Cidr::v4([224, 0, 0, 0], 4), "multicast"),
    (
        Cidr::v4([240, 0, 0, 0], 4),
        "reserved (and the broadcast address)",
    ),
    (Cidr::v6([0; 8], 96), "IPv4-compatible IPv6 (deprecated)"),
    (
        Cidr::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96),
        "IPv4-mapped IPv6",
    ),
    (
        Cidr::v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96),
        "IPv4-translated IPv6 (SIIT)",
    ),
    (
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local-use NAT64 (RFC 8215)",
    ),
    (Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (
        Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignments (Teredo, ORCHID, benchmarking)",
    ),
    (
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation",
    ),
    (
        Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),
        "6to4 (it embeds IPv4 addresses)",
    ),
    (
        Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        "documentation (RFC 9637)",
    ),
    (
        Cidr::v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),
        "segment routing (SRv6) identifiers",
    ),
    (
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local addresses (IPv6's private range)",
    ),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local (deprecated)",
    ),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// The well-known NAT64 prefix: its addresses stand for the IPv4 address in
/// their last 32 bits.
const NAT64: Cidr = Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);

/// How builds whose cartridge asks for the network reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressMode {
    /// Through the node's egress proxy, checked against the policy.
    Proxy,
    /// Not at all: such builds run like any other, in the gear's own network
    /// namespace.
    None,
}

/// The validated `[build]` settings for build egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EgressConfig {
    /// How builds reach the network.
    pub mode: EgressMode,
    /// Blocks builds may reach although they are in [`SPECIAL`].
    pub allow: Vec<Cidr>,
    /// Blocks builds may never reach.
    pub deny: Vec<Cidr>,
    /// Connections one build may have open through the proxy at a time.
    pub connections: usize,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            mode: EgressMode::Proxy,
            allow: Vec::new(),
            deny: Vec::new(),
            connections: 32,
        }
    }
}

/// Why the proxy refused an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An address no setting opens ([`NEVER`]).
    Never {
        /// The address.
        addr: IpAddr,
        /// What it is.
        what: &'static str,
    },
    /// An address of this host (the kernel routes it locally).
    ThisHost {
        /// The address.
        addr: IpAddr,
    },
    /// In the operator's deny list.
    Denied {
        /// The address.
        addr: IpAddr,
        /// The entry of `build.egress-deny`.
        block: Cidr,
    },
    /// In a special range that the allow list does not open.
    Special {
        /// The address.
        addr: IpAddr,
        /// The range.
        block: Cidr,
        /// What the range is.
        what: &'static str,
    },
    /// A NAT64 address standing for a refused IPv4 address.
    Nat64 {
        /// The address.
        addr: IpAddr,
        /// Why its IPv4 address is refused.
        inner: Box<Refusal>,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Never { addr, what } => {
                write!(f, "{addr} is {what}, which builds never reach")
            }
            Refusal::ThisHost { addr } => write!(
                f,
                "{addr} is an address of this host, which builds never reach"
            ),
            Refusal::Denied { addr, block } => write!(
                f,
                "{addr} is in {block}, listed in `build.egress-deny` of the node configuration"
            ),
            Refusal::Special { addr, block, what } => write!(
                f,
                "{addr} is in {block}, {what}, which builds reach only if `build.egress-allow` of the node configuration lists it"
            ),
            Refusal::Nat64 { addr, inner } => {
                write!(f, "{addr} is NAT64 for an IPv4 address: {inner}")
            }
        }
    }
}

impl EgressConfig {
    /// Whether a build may connect to `ip`, by the lists alone (the caller
    /// also asks the kernel whether `ip` is this host's).
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        if let Some((_, what)) = NEVER.iter().find(|(b, _)| b.contains(ip)) {
            return Err(Refusal::Never { addr: ip, what });
        }
        if let Some(block) = self.deny.iter().find(|b| b.contains(ip)) {
            return Err(Refusal::Denied {
                addr: ip,
                block: *block,
            });
        }
        if self.allow.iter().any(|b| b.contains(ip)) {
            return Ok(());
        }
        if let Some((block, what)) = SPECIAL.iter().find(|(b, _)| b.contains(ip)) {
            return Err(Refusal::Special {
                addr: ip,
                block: *block,
                what,
            });
        }
        if let IpAddr::V6(v6) = ip
            && NAT64.contains(ip)
        {
            let o = v6.octets();
            let inner = IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            if let Err(refusal) = self.check(inner) {
                return Err(Refusal::Nat64 {
                    addr: ip,
                    inner: Box::new(refusal),
                });
            }
        }
        Ok(())
    }
}

/// Parse one list of the configuration (`field` names it in messages).
/// Entries wholly inside [`NEVER`] are refused in the allow list: they
/// could never take effect.
pub fn parse_list(field: &str, entries: &[String], allow: bool) -> Result<Vec<Cidr>, String> {
    let mut out = Vec::with_capacity(entries.len());
    for text in entries {
        let cidr = Cidr::parse(text).map_err(|e| format!("`{field}`: {e}"))?;
        if allow && let Some((_, what)) = NEVER.iter().find(|(b, _)| cidr.within(b)) {
            return Err(format!(
                "`{field}` lists {cidr}, {what}, which builds never reach whatever the configuration says; remove it"
            ));
        }
        out.push(cidr);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn blocks_parse_and_contain() {
        let c = Cidr::parse("10.1.2.0/24").expect("v4");
        assert!(c.contains(ip("10.1.2.255")));
        assert!(!c.contains(ip("10.1.3.0")));
        assert!(!c.contains(ip("::ffff:10.1.2.1")), "families do not mix");
        assert_eq!(c.to_string(), "10.1.2.0/24");
        let c = Cidr::parse("fd12:3456::/32").expect("v6");
        assert!(c.contains(ip("fd12:3456:ffff::1")));
        assert!(!c.contains(ip("fd12:3457::1")));
        assert_eq!(Cidr::parse("192.0.2.7").expect("bare").prefix_len(), 32);
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("all")
                .contains(ip("8.8.8.8"))
        );
        assert!(Cidr::parse("::/0").expect("all").contains(ip("2a00::1")));
        assert!(
            Cidr::parse("10.1.2.0/25")
                .expect("a")
                .within(&Cidr::parse("10.1.2.0/24").expect("b"))
        );
        assert!(
            !Cidr::parse("10.1.2.0/23")
                .expect("a")
                .within(&Cidr::parse("10.1.2.0/24").expect("b"))
        );
    }

    #[test]
    fn bad_blocks_say_what_to_write() {
        for (bad, says) in [
            ("10.1.2.0/33", "prefix length that is not 0 to 32"),
            ("fd00::/129", "not 0 to 128"),
            ("10.1.2.0/x", "prefix length"),
            ("10.1.2.0/+8", "prefix length"),
            ("example.com/24", "not an IP address"),
            ("10.1.2/24", "not an IP address"),
            ("10.1.2.5/24", "write 10.1.2.0/24"),
            ("fd00::1/64", "write fd00::/64"),
            ("::ffff:10.0.0.0/104", "write the IPv4 block"),
        ] {
            let e = Cidr::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_defaults_refuse_the_host_and_private_ranges() {
        let p = EgressConfig::default();
        for (addr, says) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("0.0.0.0", "this network"),
            ("::", "unspecified"),
            ("10.0.0.1", "RFC 1918"),
            ("172.31.255.255", "RFC 1918"),
            ("192.168.1.1", "RFC 1918"),
            ("::ffff:192.168.1.1", "RFC 1918"),
            ("100.100.0.1", "carrier-grade NAT"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("192.0.2.1", "TEST-NET-1"),
            ("fd00::1", "unique local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2002:a00:1::1", "6to4"),
            ("::10.0.0.1", "IPv4-compatible"),
            ("64:ff9b::a00:1", "NAT64"),
            ("64:ff9b::7f00:1", "loopback"),
        ] {
            let refusal = p.check(ip(addr)).expect_err(addr);
            let text = refusal.to_string();
            assert!(text.contains(says), "{addr}: {text}");
        }
        for addr in [
            "8.8.8.8",
            "151.101.0.223",
            "2a04:4e42::223",
            "64:ff9b::808:808",
        ] {
            assert_eq!(p.check(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn the_operator_opens_and_closes_ranges() {
        let p = EgressConfig {
            allow: vec![
                Cidr::parse("10.1.2.0/24").expect("allow"),
                Cidr::parse("0.0.0.0/0").expect("allow everything"),
            ],
            deny: vec![
                Cidr::parse("10.1.2.128/25").expect("deny"),
                Cidr::parse("8.8.8.0/24").expect("deny"),
            ],
            ..EgressConfig::default()
        };
        assert_eq!(p.check(ip("10.1.2.1")), Ok(()));
        assert_eq!(
            p.check(ip("192.168.0.1")),
            Ok(()),
            "0.0.0.0/0 opens private ranges"
        );
        // deny wins over allow
        let e = p.check(ip("10.1.2.200")).expect_err("denied").to_string();
        assert!(
            e.contains("10.1.2.128/25") && e.contains("build.egress-deny"),
            "{e}"
        );
        assert!(p.check(ip("8.8.8.8")).is_err());
        // no list opens the loopback
        let e = p.check(ip("127.0.0.1")).expect_err("never").to_string();
        assert!(e.contains("never reach"), "{e}");
        // the refusal names the setting to change
        let e = EgressConfig::default()
            .check(ip("10.9.9.9"))
            .expect_err("private")
            .to_string();
        assert!(
            e.contains("10.9.9.9") && e.contains("10.0.0.0/8") && e.contains("build.egress-allow"),
            "{e}"
        );
    }

    #[test]
    fn lists_refuse_what_cannot_take_effect() {
        let e =
            parse_list("build.egress-allow", &["127.0.0.1/32".into()], true).expect_err("loopback");
        assert!(e.contains("127.0.0.1/32") && e.contains("remove it"), "{e}");
        assert!(parse_list("build.egress-deny", &["127.0.0.1/32".into()], false).is_ok());
        assert!(parse_list("build.egress-allow", &["0.0.0.0/0".into()], true).is_ok());
        let e = parse_list("build.egress-deny", &["nope".into()], false).expect_err("bad");
        assert!(e.starts_with("`build.egress-deny`"), "{e}");
    }
}
