//! On-prem BGP ASN validation for Azure VPN gateways and ExpressRoute (Azure "About BGP with VPN
//! Gateway": reserved ASNs; RFC 6996 private ranges, RFC 5398 documentation ASNs, RFC 7300 last
//! ASNs, RFC 6793 AS_TRANS).

use std::fmt;

/// Azure's own ASN on VPN and ExpressRoute gateways: the ASN of the Azure peer.
pub const AZURE_GATEWAY_ASN: u32 = 65515;

/// Why an ASN cannot be used for the on-prem side of an Azure BGP session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AsnError {
    /// Reserved by Azure or IANA; the message says by whom and why.
    #[error("ASN {asn} is reserved: {reason}")]
    Reserved {
        /// The rejected ASN.
        asn: u32,
        /// Who reserves it and for what.
        reason: &'static str,
    },
    /// Not a number in 1..=4294967294.
    #[error("`{0}` is not an ASN (a number 1-4294967294, or asplain/asdot `X.Y`)")]
    Malformed(ShortInput),
}

/// At most 32 bytes of a rejected input, for error messages (config values are hostile).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortInput {
    buf: [u8; 32],
    len: u8,
}

impl ShortInput {
    fn new(s: &str) -> Self {
        let mut buf = [0u8; 32];
        let mut len = 0usize;
        for c in s.chars() {
            let n = c.len_utf8();
            if len + n > buf.len() {
                break;
            }
            c.encode_utf8(&mut buf[len..len + n]);
            len += n;
        }
        ShortInput {
            buf,
            len: u8::try_from(len).unwrap_or(32),
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..usize::from(self.len)).unwrap_or(&[])).unwrap_or("")
    }
}

impl fmt::Display for ShortInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ShortInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What kind of ASN an accepted one is (for `check-config` output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsnKind {
    /// 16-bit private use, 64512-65534 (RFC 6996).
    Private16,
    /// 32-bit private use, 4200000000-4294967294 (RFC 6996).
    Private32,
    /// Public (assigned by a registry; must be yours).
    Public,
}

/// The reserved ranges, inclusive, each with its reason. One fact in one place.
const RESERVED: &[(u32, u32, &str)] = &[
    (
        0,
        0,
        "ASN 0 is reserved by RFC 7607 and never valid in a BGP session",
    ),
    (
        8074,
        8075,
        "Microsoft's own ASNs (reserved by Azure for its services)",
    ),
    (
        12076,
        12076,
        "Microsoft's ExpressRoute edge (MSEE) ASN, reserved by Azure",
    ),
    (
        23456,
        23456,
        "AS_TRANS (RFC 6793), the 16-bit stand-in for 4-byte ASNs, reserved by IANA",
    ),
    (
        64496,
        64511,
        "reserved by IANA for documentation (RFC 5398)",
    ),
    (
        65515,
        65515,
        "Azure's VPN/ExpressRoute gateway ASN: the on-prem side must differ from the Azure peer",
    ),
    (65517, 65520, "reserved by Azure (gateway internal use)"),
    (
        65535,
        65551,
        "reserved by IANA (65535 by RFC 7300, 65536-65551 for documentation by RFC 5398)",
    ),
    (
        4_294_967_295,
        4_294_967_295,
        "the last 4-byte ASN is reserved by IANA (RFC 7300)",
    ),
];

/// Checks an ASN for the on-prem side of a BGP session with Azure (VPN gateway or ExpressRoute):
/// reserved ASNs are refused with the reason; private and public ones are accepted.
pub fn check_onprem_asn(asn: u32) -> Result<AsnKind, AsnError> {
    for &(lo, hi, reason) in RESERVED {
        if (lo..=hi).contains(&asn) {
            return Err(AsnError::Reserved { asn, reason });
        }
    }
    Ok(match asn {
        64512..=65534 => AsnKind::Private16,
        4_200_000_000..=4_294_967_294 => AsnKind::Private32,
        _ => AsnKind::Public,
    })
}

/// Parses an ASN written as asplain (`65010`, `4200000001`) or asdot (`1.10`, RFC 5396) and checks
/// it with [`check_onprem_asn`].
pub fn parse_onprem_asn(s: &str) -> Result<u32, AsnError> {
    let bad = || AsnError::Malformed(ShortInput::new(s));
    let t = s.trim();
    let digits = |x: &str| !x.is_empty() && x.len() <= 10 && x.bytes().all(|b| b.is_ascii_digit());
    let asn = if let Some((hi, lo)) = t.split_once('.') {
        if !digits(hi) || !digits(lo) {
            return Err(bad());
        }
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        (u32::from(hi) << 16) | u32::from(lo)
    } else {
        if !digits(t) {
            return Err(bad());
        }
        t.parse::<u32>().map_err(|_| bad())?
    };
    check_onprem_asn(asn).map(|_| asn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_are_refused_with_a_reason() {
        for asn in [
            0,
            8074,
            8075,
            12076,
            23456,
            64496,
            64500,
            64511,
            65515,
            65517,
            65518,
            65519,
            65520,
            65535,
            65536,
            65551,
            4_294_967_295,
        ] {
            match check_onprem_asn(asn) {
                Err(AsnError::Reserved { asn: a, reason }) => {
                    assert_eq!(a, asn);
                    assert!(!reason.is_empty());
                }
                other => panic!("{asn}: {other:?}"),
            }
        }
        let msg = check_onprem_asn(65515).unwrap_err().to_string();
        assert!(msg.contains("65515") && msg.contains("Azure"), "{msg}");
        let msg = check_onprem_asn(12076).unwrap_err().to_string();
        assert!(msg.contains("ExpressRoute"), "{msg}");
        let msg = check_onprem_asn(23456).unwrap_err().to_string();
        assert!(msg.contains("AS_TRANS"), "{msg}");
    }

    #[test]
    fn private_and_public_are_accepted() {
        assert_eq!(check_onprem_asn(64512), Ok(AsnKind::Private16));
        assert_eq!(check_onprem_asn(65010), Ok(AsnKind::Private16));
        assert_eq!(check_onprem_asn(65514), Ok(AsnKind::Private16));
        assert_eq!(check_onprem_asn(65516), Ok(AsnKind::Private16));
        assert_eq!(check_onprem_asn(65521), Ok(AsnKind::Private16));
        assert_eq!(check_onprem_asn(65534), Ok(AsnKind::Private16));
        assert_eq!(check_onprem_asn(4_200_000_000), Ok(AsnKind::Private32));
        assert_eq!(check_onprem_asn(4_294_967_294), Ok(AsnKind::Private32));
        assert_eq!(check_onprem_asn(1), Ok(AsnKind::Public));
        assert_eq!(check_onprem_asn(8073), Ok(AsnKind::Public));
        assert_eq!(check_onprem_asn(8076), Ok(AsnKind::Public));
        assert_eq!(check_onprem_asn(12075), Ok(AsnKind::Public));
        assert_eq!(check_onprem_asn(65552), Ok(AsnKind::Public));
        assert_eq!(check_onprem_asn(397_000), Ok(AsnKind::Public));
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_onprem_asn("65010"), Ok(65010));
        assert_eq!(parse_onprem_asn(" 4200000001 "), Ok(4_200_000_001));
        assert_eq!(parse_onprem_asn("2.0"), Ok(131_072));
        assert!(matches!(
            parse_onprem_asn("1.10"),
            Err(AsnError::Reserved { asn: 65546, .. })
        ));
        assert!(matches!(
            parse_onprem_asn("65515"),
            Err(AsnError::Reserved { .. })
        ));
        for bad in [
            "",
            "-1",
            "+5",
            "4294967296",
            "1.65536",
            "a",
            "1..2",
            "1.",
            "12345678901",
            "６５０１０",
        ] {
            assert!(
                matches!(parse_onprem_asn(bad), Err(AsnError::Malformed(_))),
                "{bad}"
            );
        }
        let long = "x".repeat(1000);
        let msg = parse_onprem_asn(&long).unwrap_err().to_string();
        assert!(msg.len() < 120, "{msg}");
    }
}
