//! Minimal zero-copy views of inner IPv4 (RFC 791) and IPv6 (RFC 8200) headers, and the Internet
//! checksum (RFC 1071) with incremental update (RFC 1624), for the packets that cross the TUN.
//!
//! Only what the data plane needs: version, addresses, the upper-layer protocol and its offset,
//! the DF flag and fragment offset. Every accessor is bounds checked; a packet that is too short
//! or inconsistent is rejected with `None`, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of TCP (IANA "Assigned Internet Protocol Numbers").
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of ICMP for IPv4.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number (next header) of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
/// ESP "next header" value for an inner IPv4 packet (tunnel mode, RFC 4303 section 2.6).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// ESP "next header" value for an inner IPv6 packet.
pub const NEXT_HEADER_IPV6: u8 = 41;
/// ESP "next header" value of a dummy packet (RFC 4303 section 2.6), dropped silently.
pub const NEXT_HEADER_NONE: u8 = 59;

/// Length of a fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;

/// Reads a big-endian u16 at `at`, if present.
#[inline]
pub fn be16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Writes a big-endian u16 at `at`; returns `None` when out of bounds.
#[inline]
pub fn put_be16(buf: &mut [u8], at: usize, v: u16) -> Option<()> {
    let b = buf.get_mut(at..at.checked_add(2)?)?;
    b.copy_from_slice(&v.to_be_bytes());
    Some(())
}

/// A parsed view of an inner IP header: where the upper layer starts and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpInfo {
    /// 4 or 6.
    pub version: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Upper-layer protocol (after IPv6 extension headers that we skip).
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the packet.
    pub l4_offset: usize,
    /// Total packet length according to the header (never more than the buffer).
    pub total_len: usize,
    /// IPv4 Don't Fragment flag (always true for IPv6, which routers never fragment).
    pub dont_fragment: bool,
    /// True when this is a non-first fragment (no upper-layer header present).
    pub later_fragment: bool,
}

/// ESP next-header value that describes this inner packet.
impl IpInfo {
    pub fn next_header(&self) -> u8 {
        if self.version == 4 {
            NEXT_HEADER_IPV4
        } else {
            NEXT_HEADER_IPV6
        }
    }
}

/// Parses the IP header of `pkt` (IPv4 or IPv6). Returns `None` for anything malformed.
pub fn parse_ip(pkt: &[u8]) -> Option<IpInfo> {
    let first = *pkt.first()?;
    match first >> 4 {
        4 => parse_ipv4(pkt),
        6 => parse_ipv6(pkt),
        _ => None,
    }
}

fn parse_ipv4(pkt: &[u8]) -> Option<IpInfo> {
    if pkt.len() < IPV4_MIN_HEADER_LEN {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total_len = usize::from(be16(pkt, 2)?);
    if ihl < IPV4_MIN_HEADER_LEN || total_len < ihl || total_len > pkt.len() {
        return None;
    }
    let flags_frag = be16(pkt, 6)?;
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
    Some(IpInfo {
        version: 4,
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        protocol: pkt[9],
        l4_offset: ihl,
        total_len,
        dont_fragment: flags_frag & 0x4000 != 0,
        later_fragment: flags_frag & 0x1fff != 0,
    })
}

fn ipv6_addr(b: &[u8]) -> Option<Ipv6Addr> {
    let a: [u8; 16] = b.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

fn parse_ipv6(pkt: &[u8]) -> Option<IpInfo> {
    if pkt.len() < IPV6_HEADER_LEN {
        return None;
    }
    let total_len = IPV6_HEADER_LEN + usize::from(be16(pkt, 4)?);
    if total_len > pkt.len() {
        return None;
    }
    let src = ipv6_addr(pkt.get(8..24)?)?;
    let dst = ipv6_addr(pkt.get(24..40)?)?;
    // Skip the extension headers that can precede an upper-layer header (RFC 8200 section 4),
    // a bounded number of times.
    let mut next = pkt[6];
    let mut off = IPV6_HEADER_LEN;
    let mut later_fragment = false;
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let nh = *pkt.get(off)?;
                let len = (usize::from(*pkt.get(off + 1)?) + 1) * 8;
                next = nh;
                off = off.checked_add(len)?;
            }
            44 => {
                let nh = *pkt.get(off)?;
                let frag = be16(pkt, off + 2)?;
                later_fragment = frag & 0xfff8 != 0;
                next = nh;
                off = off.checked_add(8)?;
            }
            _ => break,
        }
    }
    if off > total_len {
        return None;
    }
    Some(IpInfo {
        version: 6,
        src: IpAddr::V6(src),
        dst: IpAddr::V6(dst),
        protocol: next,
        l4_offset: off,
        total_len,
        dont_fragment: true,
        later_fragment,
    })
}

/// One's-complement sum of `data` added to `acc` (RFC 1071), partially folded (the result is at
/// most 0xffff); an odd trailing byte is padded with zero. Sums 64-bit words with end-around
/// carry (RFC 1071 section 2 (B)): 2^16 = 1 modulo 0xffff, so the folded result is the same.
pub fn sum16(acc: u32, data: &[u8]) -> u32 {
    let mut s = u64::from(acc);
    let mut add = |w: u64| {
        let (r, c) = s.overflowing_add(w);
        s = r + u64::from(c);
    };
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        add(u64::from_be_bytes([
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
        ]));
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        add(u64::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = rest.remainder() {
        add(u64::from(*last) << 8);
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u32
}

/// Folds a 32-bit accumulator into the 16-bit one's-complement checksum (complemented).
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(0, data))
}

/// Sum of the pseudo-header (RFC 793 / RFC 8200 section 8.1) for `src`, `dst`, `proto`, `len`.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let acc = sum_addr(sum_addr(0, src), dst);
    let len = len as u32;
    acc.wrapping_add(u32::from(proto))
        .wrapping_add(len >> 16)
        .wrapping_add(len & 0xffff)
}

fn sum_addr(acc: u32, a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(a) => sum16(acc, &a.octets()),
        IpAddr::V6(a) => sum16(acc, &a.octets()),
    }
}

/// Incrementally updates checksum `hc` when a 16-bit field changes from `old` to `new`
/// (RFC 1624 equation 3: HC' = ~(~HC + ~m + m')).
pub fn checksum_update16(hc: u16, old: u16, new: u16) -> u16 {
    let mut acc = u32::from(!hc) + u32::from(!old) + u32::from(new);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum of 0001 f203 f4f5 f6f7 is ddf2 (checksum 220d).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn wide_sum_matches_bytewise_sum() {
        let data: Vec<u8> = (0..1501u32).map(|i| (i * 151 + 7) as u8).collect();
        for len in [0, 1, 2, 7, 8, 9, 15, 16, 17, 1499, 1500, 1501] {
            let mut acc: u32 = 0;
            for c in data[..len].chunks(2) {
                acc += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
            }
            assert_eq!(
                fold(sum16(0xfffe, &data[..len])),
                fold(acc + 0xfffe),
                "len {len}"
            );
        }
    }

    #[test]
    fn incremental_matches_full() {
        let mut data = [
            0x45u8, 0, 0, 40, 1, 2, 0x40, 0, 64, 6, 0, 0, 198, 18, 1, 1, 198, 19, 1, 1,
        ];
        let c = checksum(&data);
        put_be16(&mut data, 10, c).unwrap();
        assert_eq!(checksum(&data), 0);
        let old = be16(&data, 4).unwrap();
        put_be16(&mut data, 4, 0xbeef).unwrap();
        let c2 = checksum_update16(c, old, 0xbeef);
        put_be16(&mut data, 10, c2).unwrap();
        assert_eq!(checksum(&data), 0);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse_ip(&[]).is_none());
        assert!(parse_ip(&[0x45, 0, 0]).is_none());
        // total length beyond the buffer
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[3] = 200;
        assert!(parse_ip(&p).is_none());
        // bad IHL
        p[0] = 0x41;
        p[3] = 20;
        assert!(parse_ip(&p).is_none());
        assert!(parse_ip(&[0x60; 39]).is_none());
        assert!(parse_ip(&[0x10; 60]).is_none());
    }

    #[test]
    fn parse_ipv6_with_hop_by_hop() {
        let mut p = vec![0u8; 40 + 8 + 20];
        p[0] = 0x60;
        put_be16(&mut p, 4, 28).unwrap();
        p[6] = 0; // hop-by-hop
        p[40] = PROTO_TCP;
        p[41] = 0;
        let info = parse_ip(&p).unwrap();
        assert_eq!(info.protocol, PROTO_TCP);
        assert_eq!(info.l4_offset, 48);
        assert_eq!(info.total_len, 68);
    }
}
