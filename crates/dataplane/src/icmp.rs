//! Path MTU signalling towards inner senders: ICMP "fragmentation needed and DF set" (RFC 792,
//! RFC 1191 section 4) and ICMPv6 "packet too big" (RFC 4443 section 3.2, RFC 8201), written into a
//! caller-owned buffer that the worker then writes to the TUN device.
//!
//! No error is generated about an ICMP error message, a non-first fragment, or a packet whose
//! source is unspecified, multicast or broadcast (RFC 1812 section 4.3.2.7, RFC 4443 section 2.4 (e)).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::wire::{
    IpInfo, PROTO_ICMP, PROTO_ICMPV6, checksum, fold, pseudo_header_sum, put_be16, sum16,
};

/// At most this many bytes of ICMPv4 error packet (RFC 1812 section 4.3.2.3: 576).
const ICMPV4_MAX: usize = 576;
/// At most this many bytes of ICMPv6 error packet (IPv6 minimum MTU, RFC 4443 section 2.4 (c)).
const ICMPV6_MAX: usize = 1280;
/// The lowest MTU we ever advertise: IPv4 minimum (RFC 791: 68) and IPv6 minimum (1280).
const MIN_MTU_V4: u16 = 68;
const MIN_MTU_V6: u32 = 1280;

/// Writes into `out` an ICMP error telling the sender of `pkt` that packets to its destination must
/// not exceed `mtu` bytes. `local` is the address to send it from; `None` uses the original
/// destination (what the data plane does: an error written into the TUN must not carry one of
/// the host's own addresses as source, or Linux drops it as a martian). Returns the length
/// written, or `None` when no ICMP must be sent for this packet.
pub fn too_big(
    pkt: &[u8],
    info: &IpInfo,
    mtu: u32,
    local: Option<IpAddr>,
    out: &mut [u8],
) -> Option<usize> {
    if info.later_fragment || !source_may_receive_errors(info.src) {
        return None;
    }
    let orig = pkt.get(..info.total_len)?;
    match (info.src, info.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            if !info.dont_fragment || is_icmp_error_v4(orig, info) {
                return None;
            }
            let from = match local {
                Some(IpAddr::V4(a)) => a,
                _ => dst,
            };
            let mtu = u16::try_from(mtu).unwrap_or(u16::MAX).max(MIN_MTU_V4);
            icmpv4_frag_needed(orig, from, src, mtu, out)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            if is_icmp_error_v6(orig, info) {
                return None;
            }
            let from = match local {
                Some(IpAddr::V6(a)) => a,
                _ => dst,
            };
            icmpv6_packet_too_big(orig, from, src, mtu.max(MIN_MTU_V6), out)
        }
        _ => None,
    }
}

fn source_may_receive_errors(src: IpAddr) -> bool {
    match src {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

fn is_icmp_error_v4(pkt: &[u8], info: &IpInfo) -> bool {
    if info.protocol != PROTO_ICMP {
        return false;
    }
    // Informational types: echo reply 0, echo 8, timestamp 13/14, info 15/16, mask 17/18.
    match pkt.get(info.l4_offset) {
        Some(t) => !matches!(t, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18),
        None => true,
    }
}

fn is_icmp_error_v6(pkt: &[u8], info: &IpInfo) -> bool {
    if info.protocol != PROTO_ICMPV6 {
        return false;
    }
    // ICMPv6 error types are 0..=127 (RFC 4443 section 2.1).
    match pkt.get(info.l4_offset) {
        Some(t) => *t < 128,
        None => true,
    }
}

fn icmpv4_frag_needed(
    orig: &[u8],
    from: Ipv4Addr,
    to: Ipv4Addr,
    mtu: u16,
    out: &mut [u8],
) -> Option<usize> {
    let quote = orig.len().min(ICMPV4_MAX - 28);
    let total = 20 + 8 + quote;
    let out = out.get_mut(..total)?;
    out.fill(0);
    // IPv4 header.
    out[0] = 0x45;
    put_be16(out, 2, total as u16)?;
    out[8] = 64; // TTL
    out[9] = PROTO_ICMP;
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&to.octets());
    let c = checksum(&out[..20]);
    put_be16(out, 10, c)?;
    // ICMP: type 3 code 4, unused 16 bits, next-hop MTU (RFC 1191 section 4).
    out[20] = 3;
    out[21] = 4;
    put_be16(out, 26, mtu)?;
    out[28..].copy_from_slice(orig.get(..quote)?);
    let c = checksum(&out[20..]);
    put_be16(out, 22, c)?;
    Some(total)
}

fn icmpv6_packet_too_big(
    orig: &[u8],
    from: Ipv6Addr,
    to: Ipv6Addr,
    mtu: u32,
    out: &mut [u8],
) -> Option<usize> {
    let quote = orig.len().min(ICMPV6_MAX - 48);
    let icmp_len = 8 + quote;
    let total = 40 + icmp_len;
    let out = out.get_mut(..total)?;
    out.fill(0);
    out[0] = 0x60;
    put_be16(out, 4, icmp_len as u16)?;
    out[6] = PROTO_ICMPV6;
    out[7] = 64; // hop limit
    out[8..24].copy_from_slice(&from.octets());
    out[24..40].copy_from_slice(&to.octets());
    // ICMPv6 type 2 (packet too big), code 0, MTU (RFC 4443 section 3.2).
    out[40] = 2;
    out[41] = 0;
    out[44..48].copy_from_slice(&mtu.to_be_bytes());
    out[48..].copy_from_slice(orig.get(..quote)?);
    let acc = pseudo_header_sum(IpAddr::V6(from), IpAddr::V6(to), PROTO_ICMPV6, icmp_len);
    let c = fold(sum16(acc, &out[40..]));
    put_be16(out, 42, c)?;
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_ip;

    fn v4_packet(len: usize, df: bool, proto: u8) -> Vec<u8> {
        let mut p = vec![0xabu8; len];
        p[0] = 0x45;
        p[1] = 0;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&[0, 1]);
        p[6] = if df { 0x40 } else { 0 };
        p[7] = 0;
        p[8] = 64;
        p[9] = proto;
        p[10] = 0;
        p[11] = 0;
        p[12..16].copy_from_slice(&[198, 18, 1, 2]);
        p[16..20].copy_from_slice(&[198, 19, 1, 2]);
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn frag_needed_v4() {
        let p = v4_packet(1500, true, 17);
        let info = parse_ip(&p).unwrap();
        let mut out = [0u8; 1600];
        let local = IpAddr::V4(Ipv4Addr::new(169, 254, 21, 1));
        let n = too_big(&p, &info, 1400, Some(local), &mut out).unwrap();
        assert_eq!(n, 576);
        let r = &out[..n];
        let ri = parse_ip(r).unwrap();
        assert_eq!(ri.src, local);
        assert_eq!(ri.dst, info.src);
        assert_eq!(ri.protocol, PROTO_ICMP);
        assert_eq!(checksum(&r[..20]), 0, "IP header checksum");
        assert_eq!(checksum(&r[20..]), 0, "ICMP checksum");
        assert_eq!((r[20], r[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([r[26], r[27]]), 1400);
        assert_eq!(&r[28..48], &p[..20], "quotes the original header");
    }

    #[test]
    fn no_icmp_without_df_or_for_errors() {
        let mut out = [0u8; 1600];
        let p = v4_packet(1500, false, 17);
        assert!(too_big(&p, &parse_ip(&p).unwrap(), 1400, None, &mut out).is_none());
        let mut p = v4_packet(1500, true, PROTO_ICMP);
        p[20] = 3; // an ICMP error itself
        assert!(too_big(&p, &parse_ip(&p).unwrap(), 1400, None, &mut out).is_none());
        p[20] = 8; // echo request: gets an error
        assert!(too_big(&p, &parse_ip(&p).unwrap(), 1400, None, &mut out).is_some());
        // Output buffer too small: no panic, no packet.
        let mut small = [0u8; 100];
        assert!(too_big(&p, &parse_ip(&p).unwrap(), 1400, None, &mut small).is_none());
    }

    #[test]
    fn packet_too_big_v6() {
        let len = 1500;
        let mut p = vec![0x5au8; len];
        p[0] = 0x60;
        p[1] = 0;
        p[2] = 0;
        p[3] = 0;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        let s: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        let d: Ipv6Addr = "2001:db8:2::2".parse().unwrap();
        p[8..24].copy_from_slice(&s.octets());
        p[24..40].copy_from_slice(&d.octets());
        let info = parse_ip(&p).unwrap();
        let mut out = [0u8; 2000];
        let n = too_big(&p, &info, 1400, None, &mut out).unwrap();
        assert_eq!(n, 1280);
        let r = &out[..n];
        let ri = parse_ip(r).unwrap();
        assert_eq!(ri.src, IpAddr::V6(d));
        assert_eq!(ri.dst, IpAddr::V6(s));
        assert_eq!(ri.protocol, PROTO_ICMPV6);
        // Verify the ICMPv6 checksum independently: pseudo-header + message sums to 0xffff.
        let mut sum: u64 = 0;
        let mut words = Vec::new();
        words.extend_from_slice(&r[8..40]);
        words.extend_from_slice(&((n - 40) as u32).to_be_bytes());
        words.extend_from_slice(&[0, 0, 0, 58]);
        words.extend_from_slice(&r[40..]);
        for w in words.chunks(2) {
            sum += ((w[0] as u64) << 8) | w[1] as u64;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert_eq!(r[40], 2);
        assert_eq!(u32::from_be_bytes([r[44], r[45], r[46], r[47]]), 1400);
        // MTU below the IPv6 minimum is raised to 1280.
        let n = too_big(&p, &info, 1000, None, &mut out).unwrap();
        assert_eq!(
            u32::from_be_bytes([out[44], out[45], out[46], out[47]]),
            1280
        );
        assert_eq!(n, 1280);
    }
}
