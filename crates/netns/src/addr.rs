//! The address safety rule: only RFC 5737 (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24), RFC 2544
//! (198.18.0.0/15), 169.254.21.0/24 and 169.254.22.0/24 (RFC 3927 link-local, used for tunnel and BGP links) may be
//! configured by the lab and the tests.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use crate::{Error, Result};

/// The ranges every address-setting function accepts (network, prefix length).
pub const ALLOWED_RANGES: [(Ipv4Addr, u8); 6] = [
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(169, 254, 21, 0), 24),
    (Ipv4Addr::new(169, 254, 22, 0), 24),
];

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// An IPv4 address with a prefix length (`198.18.1.10/24`); the host bits are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The address (host bits kept, as for an interface address).
    pub addr: Ipv4Addr,
    /// The prefix length, 0..=32.
    pub len: u8,
}

impl Ipv4Cidr {
    /// Builds a prefix; `None` if `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then_some(Self { addr, len })
    }
    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & mask(self.len))
    }
    /// The prefix with host bits cleared, e.g. `198.18.1.0/24` for `198.18.1.10/24`.
    pub fn net(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: self.network(),
            len: self.len,
        }
    }
    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.network())
    }
    /// Whether all of `other` is inside this prefix.
    pub fn covers(&self, other: &Ipv4Cidr) -> bool {
        other.len >= self.len && self.contains(other.network())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;
    /// Parses `a.b.c.d/len`, or a bare address as `/32`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidAddress(s.to_string());
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        let addr = a.parse::<Ipv4Addr>().map_err(|_| bad())?;
        Ipv4Cidr::new(addr, l).ok_or_else(bad)
    }
}

/// Whether `ip` is inside one of [`ALLOWED_RANGES`] (IPv6 is never allowed).
pub fn is_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => ALLOWED_RANGES
            .iter()
            .any(|&(net, len)| Ipv4Cidr { addr: net, len }.contains(v4)),
        IpAddr::V6(_) => false,
    }
}

/// Refuses an address outside [`ALLOWED_RANGES`].
pub fn check_addr(ip: IpAddr) -> Result<()> {
    if is_allowed(ip) {
        Ok(())
    } else {
        Err(Error::AddressNotAllowed(ip.to_string()))
    }
}

/// Parses `a.b.c.d/len` (or a bare address) and refuses it unless the whole prefix lies inside one of
/// [`ALLOWED_RANGES`] (so neither the address nor its on-link route can reach anything else).
pub fn check_cidr(s: &str) -> Result<Ipv4Cidr> {
    let c: Ipv4Cidr = s.trim().parse()?;
    let ok = ALLOWED_RANGES
        .iter()
        .any(|&(net, len)| Ipv4Cidr { addr: net, len }.covers(&c));
    if ok {
        Ok(c)
    } else {
        Err(Error::AddressNotAllowed(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_and_refused() {
        for ok in [
            "192.0.2.1",
            "198.51.100.254",
            "203.0.113.9",
            "198.18.1.10",
            "198.19.255.1",
            "169.254.21.1",
            "169.254.22.1",
        ] {
            assert!(is_allowed(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "192.0.3.1",
            "198.20.0.1",
            "169.254.23.1",
            "8.8.8.8",
            "127.0.0.1",
            "::1",
            "2001:db8::1",
        ] {
            assert!(!is_allowed(bad.parse().unwrap()), "{bad}");
            assert!(matches!(
                check_addr(bad.parse().unwrap()),
                Err(Error::AddressNotAllowed(_))
            ));
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            check_cidr("198.18.1.10/24").unwrap().net().to_string(),
            "198.18.1.0/24"
        );
        assert!(check_cidr("198.18.0.0/15").is_ok());
        assert!(check_cidr("169.254.21.1/30").is_ok());
        assert!(check_cidr("192.0.2.1").is_ok());
        assert!(matches!(
            check_cidr("198.18.0.0/14"),
            Err(Error::AddressNotAllowed(_))
        ));
        assert!(matches!(
            check_cidr("192.0.2.1/16"),
            Err(Error::AddressNotAllowed(_))
        ));
        assert!(matches!(
            check_cidr("0.0.0.0/0"),
            Err(Error::AddressNotAllowed(_))
        ));
        assert!(matches!(
            check_cidr("192.0.2.1/33"),
            Err(Error::InvalidAddress(_))
        ));
        assert!(matches!(
            check_cidr("garbage"),
            Err(Error::InvalidAddress(_))
        ));
    }

    #[test]
    fn cidr_math() {
        let c: Ipv4Cidr = "198.19.1.10/24".parse().unwrap();
        assert!(c.contains("198.19.1.200".parse().unwrap()));
        assert!(!c.contains("198.19.2.1".parse().unwrap()));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(all.covers(&c));
    }
}
