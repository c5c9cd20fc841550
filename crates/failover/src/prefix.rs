//! IPv4 prefixes (RFC 4632 CIDR notation) as used in route and BGP configuration: the host bits
//! must be zero, so a typo such as `198.18.1.1/24` is an error rather than a silent widening.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network prefix with zero host bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

/// A prefix that does not parse or has host bits set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// Not `a.b.c.d/len`.
    #[error("not an IPv4 prefix `a.b.c.d/len`")]
    Syntax,
    /// The length is over 32.
    #[error("prefix length {0} is over 32")]
    Length(u8),
    /// Host bits are set.
    #[error("{addr}/{len} has host bits set (did you mean {net}/{len}?)")]
    HostBits {
        /// The address as written.
        addr: Ipv4Addr,
        /// The length.
        len: u8,
        /// The network address.
        net: Ipv4Addr,
    },
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

impl Ipv4Prefix {
    /// A prefix; refuses lengths over 32 and set host bits.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, PrefixError> {
        if len > 32 {
            return Err(PrefixError::Length(len));
        }
        let net = Ipv4Addr::from(u32::from(addr) & mask(len));
        if net != addr {
            return Err(PrefixError::HostBits { addr, len, net });
        }
        Ok(Ipv4Prefix { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is the default route `0.0.0.0/0`.
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }

    /// Whether `other` is inside this prefix (equal or more specific).
    pub fn covers(&self, other: &Ipv4Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = PrefixError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s.trim().split_once('/').ok_or(PrefixError::Syntax)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| PrefixError::Syntax)?;
        if l.is_empty() || l.len() > 2 || !l.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PrefixError::Syntax);
        }
        let len: u8 = l.parse().map_err(|_| PrefixError::Syntax)?;
        Ipv4Prefix::new(addr, len)
    }
}

impl serde::Serialize for Ipv4Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let p: Ipv4Prefix = "198.18.1.0/24".parse().unwrap();
        assert_eq!(p.to_string(), "198.18.1.0/24");
        assert!(p.contains("198.18.1.77".parse().unwrap()));
        assert!(!p.contains("198.18.2.1".parse().unwrap()));
        assert!(p.covers(&"198.18.1.128/25".parse().unwrap()));
        assert!(!p.covers(&"198.18.0.0/23".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Ipv4Prefix>().unwrap().is_default());
        assert!(matches!(
            "198.18.1.1/24".parse::<Ipv4Prefix>(),
            Err(PrefixError::HostBits { .. })
        ));
        for bad in [
            "",
            "198.18.1.0",
            "198.18.1.0/",
            "198.18.1.0/33",
            "198.18.1.0/+4",
            "x/8",
            "1.2.3.4/008",
        ] {
            assert!(bad.parse::<Ipv4Prefix>().is_err(), "{bad}");
        }
        assert!(Ipv4Prefix::new(Ipv4Addr::UNSPECIFIED, 40).is_err());
    }
}
