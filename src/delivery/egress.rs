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
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{dns::Name, HttpConnector},
    rt::TokioIo,
};
use tokio::net::TcpStream;
use tower::Service;

/// Errors from the connector (hyper and hyper-rustls box them anyway).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
use super::request::BoxFuture;

/// An IPv4 or IPv6 network, written `10.0.0.0/8` or `fd00::/8`.
///
/// Host bits must be zero (`10.0.0.1/8` is rejected as a likely typo); a
/// bare address means that one address (`/32` or `/128`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `a.b.c.d/len`. `len` must be at most 32 (checked by the tests of the
    /// tables below, which are the only callers with literals).
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Self {
        Self {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            len,
        }
    }

    /// An IPv6 network from its eight 16-bit segments.
    pub const fn v6(s: [u16; 8], len: u8) -> Self {
        Self {
            addr: IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            len,
        }
    }

    /// Whether `ip` is inside. An IPv4 network never contains an IPv6
    /// address or the reverse (callers canonicalize IPv4-mapped addresses
    /// first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.len)
            }
            _ => false,
        }
    }
}

/// Whether the first `len` of `bits` bits of `a` and `b` agree.
fn prefix_eq(a: u128, b: u128, bits: u8, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let shift = u32::from(bits - len.min(bits));
    (a >> shift) == (b >> shift)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR network (e.g. 10.0.0.0/8 or fd00::/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        let cidr = Cidr { addr, len };
        let base = cidr.network();
        if base != addr {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                Cidr { addr: base, len }
            ));
        }
        Ok(cidr)
    }
}

impl Cidr {
    /// The address with the host bits cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses a comma-separated list of networks (the `allow_networks` value);
/// empty entries are ignored, so `""` is the empty list.
pub fn parse_networks(value: &str) -> Result<Vec<Cidr>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

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

/// A DNS resolver for `HttpConnector` that returns only the addresses the
/// guard allows.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    guard: Guard,
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str();
            // Port 0: HttpConnector puts the URL's port on every address.
            let resolved = tokio::net::lookup_host((host, 0)).await?;
            let mut allowed = Vec::new();
            let mut first_blocked = None;
            for addr in resolved {
                match guard.blocked(addr.ip(), Some(host)) {
                    None => allowed.push(addr),
                    Some(b) => {
                        tracing::debug!(%host, addr = %addr.ip(), "SSRF guard dropped a resolved address");
                        first_blocked.get_or_insert(b);
                    }
                }
            }
            match (allowed.is_empty(), first_blocked) {
                (true, Some(b)) => Err(b.into()),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// The TCP connector of the delivery client: `HttpConnector` over
/// [`GuardedResolver`], with IP literals and the connected peer checked too.
#[derive(Clone, Debug)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    guard: Guard,
}

impl GuardedConnector {
    /// Wraps `configure(HttpConnector)` (for socket options) with `guard`.
    pub fn new(guard: Guard, configure: impl FnOnce(&mut HttpConnector<GuardedResolver>)) -> Self {
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver {
            guard: guard.clone(),
        });
        configure(&mut inner);
        Self { inner, guard }
    }
}

impl Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some(b) = literal_ip(&uri).and_then(|ip| self.guard.blocked(ip, None)) {
            return Box::pin(std::future::ready(Err(b.into())));
        }
        let guard = self.guard.clone();
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            // Every path above already checked the address; this makes the
            // rule hold for whatever a future HttpConnector might do.
            let peer = io.inner().peer_addr()?;
            match guard.blocked(peer.ip(), None) {
                Some(b) => Err(b.into()),
                None => Ok(io),
            }
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn category(s: &str) -> Option<&'static str> {
        classify(ip(s)).map(|b| b.category)
    }

    #[test]
    fn tables_are_well_formed() {
        for (c, _) in BLOCKED_V4.iter().chain(BLOCKED_V6) {
            let max = if c.addr.is_ipv4() { 32 } else { 128 };
            assert!(c.len <= max, "{c}");
            assert_eq!(c.network(), c.addr, "{c} has host bits");
            assert_eq!(c.to_string().parse::<Cidr>(), Ok(*c));
        }
    }

    #[test]
    fn ipv4_ranges() {
        for (addr, want) in [
            ("0.0.0.0", "unspecified (\"this network\")"),
            ("0.1.2.3", "unspecified (\"this network\")"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", "private (RFC 1918)"),
            ("10.255.255.255", "private (RFC 1918)"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("100.64.0.1", "carrier-grade NAT (RFC 6598)"),
            ("100.127.255.255", "carrier-grade NAT (RFC 6598)"),
            ("100.100.100.200", "carrier-grade NAT (RFC 6598)"),
            ("169.254.169.254", "cloud metadata (link-local)"),
            ("169.254.0.1", "link-local"),
            ("192.0.0.170", "reserved (IETF protocol assignments)"),
            ("192.0.2.1", "documentation (TEST-NET-1)"),
            ("198.51.100.7", "documentation (TEST-NET-2)"),
            ("203.0.113.9", "documentation (TEST-NET-3)"),
            ("198.18.0.1", "benchmarking (RFC 2544)"),
            ("198.19.255.255", "benchmarking (RFC 2544)"),
            ("192.88.99.1", "reserved (6to4 relay anycast)"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved (future use)"),
            ("255.255.255.255", "broadcast"),
        ] {
            assert_eq!(category(addr), Some(want), "{addr}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "11.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
        ] {
            assert_eq!(category(public), None, "{public}");
        }
    }

    #[test]
    fn ipv6_ranges() {
        for (addr, want) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::7f00:1", "IPv4-compatible (deprecated)"),
            ("::808:808", "IPv4-compatible (deprecated)"),
            ("::ffff:0:808:808", "IPv4-translated (reserved)"),
            ("64:ff9b:1::1", "private (local-use NAT64)"),
            ("100::1", "reserved (discard-only)"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "reserved (ORCHID)"),
            ("2001:20::1", "reserved (ORCHIDv2)"),
            ("fd00:ec2::254", "cloud metadata (unique local)"),
            ("fc00::1", "unique local (private)"),
            ("fdff:ffff::1", "unique local (private)"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
        ] {
            assert_eq!(category(addr), Some(want), "{addr}");
        }
        for public in [
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450::1",
            "fbff::1",
            "fe00::1",
            "2001:db9::1",
        ] {
            assert_eq!(category(public), None, "{public}");
        }
    }

    #[test]
    fn ipv4_embedded_in_ipv6() {
        for (addr, how, v4, want) in [
            ("::ffff:127.0.0.1", "IPv4-mapped", "127.0.0.1", "loopback"),
            (
                "::ffff:10.1.2.3",
                "IPv4-mapped",
                "10.1.2.3",
                "private (RFC 1918)",
            ),
            (
                "::ffff:169.254.169.254",
                "IPv4-mapped",
                "169.254.169.254",
                "cloud metadata (link-local)",
            ),
            ("64:ff9b::7f00:1", "NAT64", "127.0.0.1", "loopback"),
            (
                "64:ff9b::a9fe:a9fe",
                "NAT64",
                "169.254.169.254",
                "cloud metadata (link-local)",
            ),
            ("2002:7f00:1::1", "6to4", "127.0.0.1", "loopback"),
            (
                "2002:c0a8:101::",
                "6to4",
                "192.168.1.1",
                "private (RFC 1918)",
            ),
            // Teredo server 10.0.0.1; client 8.8.8.8 (stored inverted).
            (
                "2001:0:a00:1::f7f7:f7f7",
                "Teredo server",
                "10.0.0.1",
                "private (RFC 1918)",
            ),
            // Server 8.8.8.8; client 127.0.0.1, inverted: 80ff:fffe.
            (
                "2001:0:808:808::80ff:fffe",
                "Teredo client",
                "127.0.0.1",
                "loopback",
            ),
        ] {
            let b = classify(ip(addr)).unwrap_or_else(|| panic!("{addr} not blocked"));
            assert_eq!(b.category, want, "{addr}");
            assert_eq!(b.embedded, Some((how, v4.parse().unwrap())), "{addr}");
        }
        for public in [
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:808:808::f7f7:f7f7",
        ] {
            assert_eq!(classify(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn allowlist_exempts_ranges_and_their_mapped_forms() {
        let guard = Guard::new(&parse_networks("127.0.0.0/8, ::1/128,fd12::/16").unwrap());
        for allowed in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "fd12::5",
            "8.8.8.8",
        ] {
            assert_eq!(guard.check(ip(allowed)), None, "{allowed}");
        }
        for blocked in ["10.0.0.1", "169.254.169.254", "fd13::1", "::ffff:10.0.0.1"] {
            assert!(guard.check(ip(blocked)).is_some(), "{blocked}");
        }
        let none = Guard::default();
        assert!(none.check(ip("127.0.0.1")).is_some());
        assert!(none.check(ip("::ffff:127.0.0.1")).is_some());
    }

    /// Issue #21: with the Teredo server's network allowed, a blocked
    /// client address (here the metadata service, obfuscated) still blocks;
    /// every embedded address must pass, in every embedding form.
    #[test]
    fn every_embedded_ipv4_must_pass_the_allowlist() {
        let guard = Guard::new(&parse_networks("10.20.0.0/16").unwrap());
        // Server 10.20.0.5 (0a14:0005); client 169.254.169.254, inverted.
        let b = guard
            .check(ip("2001:0:a14:5::5601:5601"))
            .expect("the Teredo client is the metadata service");
        assert_eq!(
            b.embedded,
            Some(("Teredo client", "169.254.169.254".parse().unwrap()))
        );
        // Client 10.20.0.6 (inverted f5eb:fff9), server 127.0.0.1.
        let b = guard
            .check(ip("2001:0:7f00:1::f5eb:fff9"))
            .expect("the Teredo server is loopback");
        assert_eq!(
            b.embedded,
            Some(("Teredo server", "127.0.0.1".parse().unwrap()))
        );
        // Both in the allowed network: allowed.
        assert_eq!(guard.check(ip("2001:0:a14:5::f5eb:fff9")), None);
        // Server allowed, client public: allowed.
        assert_eq!(guard.check(ip("2001:0:a14:5::f7f7:f7f7")), None);
        // The single-address forms of an allowed address pass, of a blocked
        // one do not.
        for allowed in ["::ffff:10.20.0.5", "64:ff9b::a14:5", "2002:a14:5::1"] {
            assert_eq!(guard.check(ip(allowed)), None, "{allowed}");
        }
        for blocked in [
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2002:a15:5::1",
        ] {
            assert!(guard.check(ip(blocked)).is_some(), "{blocked}");
        }
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_networks("").unwrap(), vec![]);
        assert_eq!(
            parse_networks("10.0.0.0/8,fd00::/8, 192.0.2.1").unwrap(),
            vec![
                Cidr::v4(10, 0, 0, 0, 8),
                Cidr::v6([0xfd00, 0, 0, 0, 0, 0, 0, 0], 8),
                Cidr::v4(192, 0, 2, 1, 32),
            ]
        );
        assert!(Cidr::v4(0, 0, 0, 0, 0).contains(ip("8.8.8.8")));
        assert!(!Cidr::v4(0, 0, 0, 0, 0).contains(ip("::1")));
        for (bad, why) in [
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("10.0.0.0/x", "prefix length"),
            ("example.com/8", "not a CIDR"),
            ("10.0.0/8", "not a CIDR"),
        ] {
            let err = parse_networks(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn literal_hosts() {
        let lit = |u: &str| literal_ip(&u.parse().unwrap());
        assert_eq!(lit("http://127.0.0.1:8080/x"), Some(ip("127.0.0.1")));
        assert_eq!(
            lit("http://[::ffff:127.0.0.1]:80/"),
            Some(ip("::ffff:127.0.0.1"))
        );
        assert_eq!(lit("https://[::1]/"), Some(ip("::1")));
        assert_eq!(lit("https://example.com/"), None);
        // Not a literal to HttpConnector either: resolved, then checked.
        assert_eq!(lit("http://2130706433/"), None);
    }

    #[test]
    fn blocked_messages() {
        let guard = Guard::default();
        let b = guard.blocked(ip("169.254.169.254"), None).unwrap();
        assert_eq!(
            b.to_string(),
            "blocked by SSRF guard: 169.254.169.254 is cloud metadata (link-local) in 169.254.169.254/32"
        );
        let b = guard.blocked(ip("::ffff:127.0.0.1"), None).unwrap();
        assert_eq!(
            b.to_string(),
            "blocked by SSRF guard: ::ffff:127.0.0.1 is loopback in 127.0.0.0/8 (IPv4-mapped 127.0.0.1)"
        );
        let b = guard.blocked(ip("127.0.0.1"), Some("localhost")).unwrap();
        assert_eq!(
            b.to_string(),
            "blocked by SSRF guard: 127.0.0.1 (resolved from localhost) is loopback in 127.0.0.0/8"
        );
    }

    /// A listener on 127.0.0.1 and a connector to it by `host`.
    async fn connect(host: &str, allow: &[Cidr]) -> Result<TokioIo<TcpStream>, BoxError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut c = GuardedConnector::new(Guard::new(allow), |h| h.enforce_http(false));
        let uri: Uri = format!("http://{host}:{port}/").parse().unwrap();
        std::future::poll_fn(|cx| c.poll_ready(cx)).await?;
        c.call(uri).await
    }

    #[tokio::test]
    async fn the_connector_checks_literals_names_and_the_allowlist() {
        for host in ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost"] {
            let err = connect(host, &[]).await.unwrap_err();
            let b = find_blocked(&*err).unwrap_or_else(|| panic!("{host}: {err}"));
            assert!(b.to_string().contains("loopback"), "{host}: {b}");
        }
        // Not literals to HttpConnector: resolved (getaddrinfo reads them
        // as 127.0.0.1), then checked like any name.
        for host in ["2130706433", "127.1", "0x7f.0.0.1"] {
            let err = connect(host, &[]).await.unwrap_err();
            assert!(find_blocked(&*err).is_some(), "{host}: {err}");
        }
        let allow = parse_networks("127.0.0.0/8").unwrap();
        for host in ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost"] {
            // `localhost` may also resolve to ::1 (dropped, not allowed);
            // 127.0.0.1 is left and accepts.
            connect(host, &allow)
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
    }
}
