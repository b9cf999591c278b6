//! Networks as configured (`allow_networks`, the ranges in `no_proxy`) and
//! as the SSRF guard's tables write them: a thin newtype over
//! [`ipnet::IpNet`], which does the prefix arithmetic; this file adds the
//! config's text form and its error messages.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;

/// An IPv4 or IPv6 network, written `10.0.0.0/8` or `fd00::/8`.
///
/// Host bits must be zero (`10.0.0.1/8` is rejected as a likely typo); a
/// bare address means that one address (`/32` or `/128`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    /// `a.b.c.d/len`. A `len` over 32 fails to compile in a `const` (and
    /// panics elsewhere): the only callers with literals are the guard's
    /// tables.
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Self {
        Self(IpNet::new_assert(
            IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            len,
        ))
    }

    /// An IPv6 network from its eight 16-bit segments (`len` at most 128,
    /// as for [`Cidr::v4`]).
    pub const fn v6(s: [u16; 8], len: u8) -> Self {
        Self(IpNet::new_assert(
            IpAddr::V6(Ipv6Addr::new(
                s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
            )),
            len,
        ))
    }

    /// Whether `ip` is inside. An IPv4 network never contains an IPv6
    /// address or the reverse (callers canonicalize IPv4-mapped addresses
    /// first).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }

    /// The network as `ipnet` has it.
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `ipnet`'s own parser answers every mistake with one "invalid IP
    /// address syntax"; the address and the length are read apart here so
    /// the message says which part is wrong (and suggests the network when
    /// host bits are set).
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
        let bad_len = || format!("{s:?}: the prefix length must be 0 to {max}");
        let len = match len {
            None => max,
            Some(l) => l.parse::<u8>().map_err(|_| bad_len())?,
        };
        let net = IpNet::new(addr, len).map_err(|_| bad_len())?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        Ok(Self(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
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
