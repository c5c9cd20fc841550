//! TCP MSS clamping on SYN segments crossing the tunnel (RFC 9293 section 3.7.1, RFC 6691), with the
//! TCP checksum fixed incrementally (RFC 1624).
//!
//! The configured value applies to IPv4; for IPv6 it is lowered by 20 bytes, the difference between
//! the fixed IPv6 and IPv4 header lengths, so that both give the same on-the-wire packet size.

use crate::wire::{IpInfo, PROTO_TCP, be16, checksum_update16, put_be16};

/// TCP option kinds (RFC 9293 section 3.2).
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const TCP_FLAG_SYN: u8 = 0x02;

/// Clamps the MSS option of a TCP SYN (or SYN-ACK) in `pkt` to `max_mss` (for IPv4; IPv6 uses
/// `max_mss - 20`). Returns true when the packet was changed. Anything that is not a well-formed
/// first-fragment TCP SYN is left alone.
pub fn clamp_mss(pkt: &mut [u8], info: &IpInfo, max_mss: u16) -> bool {
    if info.protocol != PROTO_TCP || info.later_fragment {
        return false;
    }
    let limit = if info.version == 6 {
        max_mss.saturating_sub(20)
    } else {
        max_mss
    };
    let pkt = match pkt.get_mut(..info.total_len) {
        Some(p) => p,
        None => return false,
    };
    let tcp = info.l4_offset;
    let Some(&flags) = pkt.get(tcp + 13) else {
        return false;
    };
    if flags & TCP_FLAG_SYN == 0 {
        return false;
    }
    let Some(&off_byte) = pkt.get(tcp + 12) else {
        return false;
    };
    let hdr_len = usize::from(off_byte >> 4) * 4;
    if hdr_len < 20 || tcp + hdr_len > pkt.len() {
        return false;
    }
    // Walk the options, bounded by the header length.
    let mut i = tcp + 20;
    let end = tcp + hdr_len;
    while i < end {
        let kind = pkt[i];
        match kind {
            OPT_END => return false,
            OPT_NOP => i += 1,
            _ => {
                let Some(&len) = pkt.get(i + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || i + len > end {
                    return false;
                }
                if kind == OPT_MSS && len == 4 {
                    let Some(mss) = be16(pkt, i + 2) else {
                        return false;
                    };
                    if mss <= limit {
                        return false;
                    }
                    let Some(ck) = be16(pkt, tcp + 16) else {
                        return false;
                    };
                    // The MSS option starts at an even offset from the TCP header only when
                    // preceded by an even number of bytes; the checksum works on 16-bit words
                    // aligned to the TCP header, so handle both alignments.
                    let rel = i + 2 - tcp;
                    let new_ck = if rel.is_multiple_of(2) {
                        checksum_update16(ck, mss, limit)
                    } else {
                        // Unaligned: the two bytes straddle words [rel-1, rel] and [rel+1, rel+2].
                        let w1_old = be16(pkt, i + 1).unwrap_or(0);
                        let w2_old = be16(pkt, i + 3).unwrap_or(0);
                        let nb = limit.to_be_bytes();
                        let w1_new = (w1_old & 0xff00) | u16::from(nb[0]);
                        let w2_new = (u16::from(nb[1]) << 8) | (w2_old & 0x00ff);
                        let c = checksum_update16(ck, w1_old, w1_new);
                        checksum_update16(c, w2_old, w2_new)
                    };
                    if put_be16(pkt, i + 2, limit).is_none()
                        || put_be16(pkt, tcp + 16, new_ck).is_none()
                    {
                        return false;
                    }
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_ip;
    use std::net::IpAddr;

    /// Independent full TCP checksum over the pseudo-header and segment, computed byte by byte
    /// without the crate's helpers.
    fn tcp_checksum_ok(pkt: &[u8]) -> bool {
        let mut words: Vec<u8> = Vec::new();
        let (l4, seg_len) = if pkt[0] >> 4 == 4 {
            let ihl = ((pkt[0] & 0xf) * 4) as usize;
            let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
            words.extend_from_slice(&pkt[12..20]);
            words.extend_from_slice(&[0, 6]);
            words.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
            (ihl, total - ihl)
        } else {
            let plen = u16::from_be_bytes([pkt[4], pkt[5]]) as usize;
            words.extend_from_slice(&pkt[8..40]);
            words.extend_from_slice(&(plen as u32).to_be_bytes());
            words.extend_from_slice(&[0, 0, 0, 6]);
            (40, plen)
        };
        words.extend_from_slice(&pkt[l4..l4 + seg_len]);
        if words.len() % 2 == 1 {
            words.push(0);
        }
        let mut sum: u64 = 0;
        for w in words.chunks(2) {
            sum += ((w[0] as u64) << 8) | w[1] as u64;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    fn set_tcp_checksum(pkt: &mut [u8]) {
        let info = parse_ip(pkt).unwrap();
        let l4 = info.l4_offset;
        pkt[l4 + 16] = 0;
        pkt[l4 + 17] = 0;
        let len = info.total_len - l4;
        let acc = crate::wire::pseudo_header_sum(info.src, info.dst, 6, len);
        let c = crate::wire::fold(crate::wire::sum16(acc, &pkt[l4..info.total_len]));
        pkt[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        assert!(tcp_checksum_ok(pkt));
    }

    /// A SYN from 198.18.1.2:40000 to 198.19.1.2:5201 with options `opts`.
    fn syn_v4(opts: &[u8], flags: u8) -> Vec<u8> {
        let tcp_len = 20 + opts.len();
        let total = 20 + tcp_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[198, 18, 1, 2]);
        p[16..20].copy_from_slice(&[198, 19, 1, 2]);
        let c = crate::wire::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&0x12345678u32.to_be_bytes());
        p[32] = ((tcp_len / 4) as u8) << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&64240u16.to_be_bytes());
        p[40..].copy_from_slice(opts);
        set_tcp_checksum(&mut p);
        p
    }

    fn syn_v6(opts: &[u8]) -> Vec<u8> {
        let tcp_len = 20 + opts.len();
        let mut p = vec![0u8; 40 + tcp_len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        let s: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let d: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
        p[8..24].copy_from_slice(&s.octets());
        p[24..40].copy_from_slice(&d.octets());
        p[40 + 12] = ((tcp_len / 4) as u8) << 4;
        p[40 + 13] = 0x02;
        p[60..].copy_from_slice(opts);
        set_tcp_checksum(&mut p);
        p
    }

    fn mss_of(pkt: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([pkt[at], pkt[at + 1]])
    }

    #[test]
    fn clamps_syn_v4_and_checksum_verifies() {
        // MSS 1460, SACK permitted, timestamps, NOP, window scale: the Linux SYN layout.
        let opts = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let mut p = syn_v4(&opts, 0x02);
        let info = parse_ip(&p).unwrap();
        assert!(clamp_mss(&mut p, &info, 1350));
        assert_eq!(mss_of(&p, 42), 1350);
        assert!(tcp_checksum_ok(&p));
    }

    #[test]
    fn clamps_syn_ack_and_unaligned_option() {
        // A NOP first puts the MSS value at an odd offset from the TCP header.
        let opts = [1, 2, 4, 0x23, 0x28, 1, 1, 1];
        let mut p = syn_v4(&opts, 0x12);
        let info = parse_ip(&p).unwrap();
        assert!(clamp_mss(&mut p, &info, 1350));
        assert_eq!(mss_of(&p, 43), 1350);
        assert!(tcp_checksum_ok(&p));
    }

    #[test]
    fn leaves_small_mss_and_non_syn_alone() {
        let opts = [2, 4, 0x04, 0x00];
        let mut p = syn_v4(&opts, 0x02);
        let orig = p.clone();
        let info = parse_ip(&p).unwrap();
        assert!(!clamp_mss(&mut p, &info, 1350));
        assert_eq!(p, orig);
        let opts = [2, 4, 0x05, 0xb4];
        let mut p = syn_v4(&opts, 0x10); // ACK only
        let orig = p.clone();
        assert!(!clamp_mss(&mut p, &info, 1350));
        assert_eq!(p, orig);
    }

    #[test]
    fn clamps_ipv6_to_value_minus_20() {
        let opts = [2, 4, 0xff, 0xc4, 1, 1, 1, 0];
        let mut p = syn_v6(&opts);
        let info = parse_ip(&p).unwrap();
        assert!(matches!(info.src, IpAddr::V6(_)));
        assert!(clamp_mss(&mut p, &info, 1350));
        assert_eq!(mss_of(&p, 62), 1330);
        assert!(tcp_checksum_ok(&p));
    }

    #[test]
    fn malformed_options_never_panic() {
        for bad in [
            vec![2u8, 0, 0, 0],
            vec![2, 40, 0, 0],
            vec![5, 1, 0, 0],
            vec![2, 4, 0xff, 0xff, 2, 4, 0xff],
        ] {
            let mut padded = bad.clone();
            while padded.len() % 4 != 0 {
                padded.push(0);
            }
            let mut p = syn_v4(&padded, 0x02);
            let info = parse_ip(&p).unwrap();
            clamp_mss(&mut p, &info, 1350);
            // data offset pointing past the packet
            p[32] = 0xf0;
            clamp_mss(&mut p, &info, 1350);
        }
    }
}
