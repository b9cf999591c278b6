//! The SSRF guard: webhook requests go to public addresses only, unless an
//! operator exempts a network with `allow_networks`.
//!
//! Endpoint URLs are chosen by whoever holds the Admin role, and the broker
//! usually sits inside a network that the outside cannot reach: without a
//! guard, an endpoint could make the broker POST to the cloud metadata
//! service, an internal admin port, or a database on the loopback interface.
//!
//! The check is made on the *address the socket connects to*, not on the URL:
//!
//! - host names are resolved by [`GuardedResolver`] (the system resolver via
//!   `tokio::net::lookup_host`), which drops every blocked address and fails
//!   when none is left; hyper's `HttpConnector` then connects to exactly the
//!   addresses that were checked, so a DNS answer that changes between a
//!   check and the connect (rebinding) cannot slip through;
//! - IP literals in the URL, which `HttpConnector` connects to without asking
//!   the resolver, are checked by [`GuardedConnector`] before connecting;
//! - and, belt and braces, [`GuardedConnector`] checks the connected socket's
//!   peer address before any byte is sent.
//!
//! This runs on every new connection; pooled connections were checked when
//! they were made. A blocked attempt fails with [`Blocked`], which the stack
//! reports as `SendError::Blocked` (retried on the durable schedule, never
//! in process).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use http::Uri;

pub use crate::config::{parse_networks, Cidr};
pub use connect::{GuardedConnector, GuardedResolver};

mod connect;
#[cfg(test)]
mod tests;

/// Errors from the connector (hyper and hyper-rustls box them anyway).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Blocked IPv4 ranges, most specific first (the first match names the
/// category). Sources: the IANA IPv4 Special-Purpose Address Registry and
/// RFC 6890; everything here is either not globally reachable or not a
/// place a webhook belongs.
const BLOCKED_V4: &[(Cidr, &str)] = &[
    (Cidr::v4(0, 0, 0, 0, 8), "unspecified (\"this network\")"),
    (Cidr::v4(255, 255, 255, 255, 32), "broadcast"),
    (
        Cidr::v4(169, 254, 169, 254, 32),
        "cloud metadata (link-local)",
    ),
    (Cidr::v4(127, 0, 0, 0, 8), "loopback"),
    (Cidr::v4(10, 0, 0, 0, 8), "private (RFC 1918)"),
    (Cidr::v4(172, 16, 0, 0, 12), "private (RFC 1918)"),
    (Cidr::v4(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (Cidr::v4(100, 64, 0, 0, 10), "carrier-grade NAT (RFC 6598)"),
    (Cidr::v4(169, 254, 0, 0, 16), "link-local"),
    (
        Cidr::v4(192, 0, 0, 0, 24),
        "reserved (IETF protocol assignments)",
    ),
    (Cidr::v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)"),
    (Cidr::v4(198, 51, 100, 0, 24), "documentation (TEST-NET-2)"),
    (Cidr::v4(203, 0, 113, 0, 24), "documentation (TEST-NET-3)"),
    (Cidr::v4(198, 18, 0, 0, 15), "benchmarking (RFC 2544)"),
    (
        Cidr::v4(192, 88, 99, 0, 24),
        "reserved (6to4 relay anycast)",
    ),
    (Cidr::v4(224, 0, 0, 0, 4), "multicast"),
    (Cidr::v4(240, 0, 0, 0, 4), "reserved (future use)"),
];

/// Blocked IPv6 ranges, most specific first. IPv4-mapped addresses and the
/// prefixes that embed an IPv4 address (NAT64, 6to4, Teredo) are handled by
/// [`classify`] before and after this table.
const BLOCKED_V6: &[(Cidr, &str)] = &[
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (
        Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 96),
        "IPv4-compatible (deprecated)",
    ),
    (
        Cidr::v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96),
        "IPv4-translated (reserved)",
    ),
    (
        Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "private (local-use NAT64)",
    ),
    (
        Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        "reserved (discard-only)",
    ),
    (
        Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation",
    ),
    (Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (Cidr::v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), "benchmarking"),
    (
        Cidr::v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28),
        "reserved (ORCHID)",
    ),
    (
        Cidr::v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),
        "reserved (ORCHIDv2)",
    ),
    (
        Cidr::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        "cloud metadata (unique local)",
    ),
    (
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local (private)",
    ),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "site-local (deprecated)",
    ),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const NAT64: Cidr = Cidr::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Cidr = Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
const TEREDO: Cidr = Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32);

/// Why an address is blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// What kind of address it is, e.g. `loopback`.
    pub category: &'static str,
    /// The blocked range it is in (for an embedded IPv4 address, the IPv4
    /// range).
    pub range: Cidr,
    /// For IPv6 forms that carry an IPv4 address: which form, and the
    /// embedded address that is blocked.
    pub embedded: Option<(&'static str, Ipv4Addr)>,
}

/// The blocked range `ip` is in, without regard to any allowlist; `None`
/// for a public address.
pub fn classify(ip: IpAddr) -> Option<Block> {
    blocks(ip).into_iter().next()
}

/// Every reason `ip` is blocked, without regard to any allowlist: its own
/// range, or each blocked IPv4 address it embeds (Teredo embeds two, the
/// server and the client, and both are routed to).
fn blocks(ip: IpAddr) -> Vec<Block> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).into_iter().collect(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return embedded("IPv4-mapped", v4).into_iter().collect();
            }
            if let Some(b) = lookup(BLOCKED_V6, ip) {
                return vec![b];
            }
            embedded_v4(v6)
                .into_iter()
                .filter_map(|(how, v4)| embedded(how, v4))
                .collect()
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<Block> {
    lookup(BLOCKED_V4, IpAddr::V4(ip))
}

fn lookup(table: &[(Cidr, &'static str)], ip: IpAddr) -> Option<Block> {
    table
        .iter()
        .find(|(range, _)| range.contains(ip))
        .map(|(range, category)| Block {
            category,
            range: *range,
            embedded: None,
        })
}

fn embedded(how: &'static str, v4: Ipv4Addr) -> Option<Block> {
    classify_v4(v4).map(|b| Block {
        embedded: Some((how, v4)),
        ..b
    })
}

/// The IPv4 addresses an IPv6 address routes to through a translation or
/// tunnelling prefix: NAT64 (`64:ff9b::/96`, the last 32 bits), 6to4
/// (`2002::/16`, bits 16–47) and Teredo (`2001::/32`: the server in bits
/// 32–63, the client's public address inverted in the last 32 bits).
fn embedded_v4(v6: Ipv6Addr) -> Vec<(&'static str, Ipv4Addr)> {
    let ip = IpAddr::V6(v6);
    let bits = u128::from(v6);
    let at = |shift: u32| Ipv4Addr::from((bits >> shift) as u32);
    if NAT64.contains(ip) {
        vec![("NAT64", at(0))]
    } else if SIX_TO_FOUR.contains(ip) {
        vec![("6to4", at(80))]
    } else if TEREDO.contains(ip) {
        vec![
            ("Teredo server", at(64)),
            ("Teredo client", Ipv4Addr::from(!(bits as u32))),
        ]
    } else {
        Vec::new()
    }
}

/// A blocked connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The address that was refused.
    pub addr: IpAddr,
    /// The host name it was resolved from, if the URL named one.
    pub host: Option<String>,
    /// Why.
    pub block: Block,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocked by SSRF guard: {}", self.addr)?;
        if let Some(host) = &self.host {
            write!(f, " (resolved from {host})")?;
        }
        write!(f, " is {}", describe(&self.block))
    }
}

impl std::error::Error for Blocked {}

/// `loopback in 127.0.0.0/8`, plus how an embedded IPv4 address was found.
pub fn describe(b: &Block) -> String {
    match b.embedded {
        None => format!("{} in {}", b.category, b.range),
        Some((how, v4)) => format!("{} in {} ({how} {v4})", b.category, b.range),
    }
}

/// The policy: blocked ranges minus the operator's allowlist.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    allow: Arc<[Cidr]>,
}

impl Guard {
    /// A guard that exempts `allow` (the `allow_networks` setting).
    pub fn new(allow: &[Cidr]) -> Self {
        Self {
            allow: allow.into(),
        }
    }

    /// Why `ip` may not be connected to, or `None` if it may.
    ///
    /// An IPv4-mapped address is judged as the IPv4 address it is (so
    /// `127.0.0.0/8` in the allowlist also allows `::ffff:127.0.0.1`); an
    /// address that embeds a blocked IPv4 address is allowed when the
    /// allowlist covers the embedded address — every one of them: a Teredo
    /// address whose server is allowed but whose client is the metadata
    /// service is blocked.
    pub fn check(&self, ip: IpAddr) -> Option<Block> {
        let canonical = ip.to_canonical();
        if self.allowed(ip) || self.allowed(canonical) {
            return None;
        }
        blocks(ip)
            .into_iter()
            .find(|b| !b.embedded.is_some_and(|(_, v4)| self.allowed(v4.into())))
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|n| n.contains(ip))
    }

    fn blocked(&self, ip: IpAddr, host: Option<&str>) -> Option<Blocked> {
        self.check(ip).map(|block| Blocked {
            addr: ip,
            host: host.map(str::to_owned),
            block,
        })
    }
}

/// The URL's host as an IP address, if it is an IP literal; parsed exactly
/// as `HttpConnector` parses it, so every literal it connects to without
/// resolving is one this returns.
pub fn literal_ip(uri: &Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .or_else(|_| host.parse::<Ipv6Addr>().map(IpAddr::V6))
        .ok()
}

/// Finds a [`Blocked`] among an error's causes.
pub fn find_blocked<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Blocked> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(b) = e.downcast_ref::<Blocked>() {
            return Some(b);
        }
        cur = e.source();
    }
    None
}
