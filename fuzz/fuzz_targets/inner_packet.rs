//! Fuzz target for the data plane's inner-packet handling of attacker-controlled bytes (what a
//! decrypted ESP packet or a TUN read hands over): the IPv4 (RFC 791) / IPv6 (RFC 8200) header
//! view `dataplane::wire::parse_ip`, TCP MSS clamping `dataplane::mss::clamp_mss` (RFC 9293
//! §3.7.1, RFC 1624 incremental checksum) and ICMP "fragmentation needed" / ICMPv6 "packet too
//! big" generation `dataplane::icmp::too_big` (RFC 1191 §4, RFC 4443 §3.2). No I/O, no unsafe.
//!
//! Input: one control byte (MTU, MSS limit, local address and checksum-fixing choices), then the
//! packet. Asserts:
//! - no panic, also with output buffers too small for the ICMP error;
//! - `parse_ip`: version 4 or 6, `l4_offset <= total_len <= packet length`, addresses as in the
//!   header;
//! - `too_big`: the error fits the buffer and RFC 1812 §4.3.2.3 (576 octets) / RFC 4443 §2.4 (c)
//!   (1280), parses as IP, goes back to the original source, has valid IP/ICMP checksums, the
//!   right type/code, an MTU not below the protocol minimum, and quotes the original packet;
//! - `clamp_mss`: the length never changes; an unchanged result leaves every byte alone; a
//!   change touches only the TCP header, leaves the MSS option at the limit, keeps a TCP checksum
//!   that was valid before valid after (the control byte can make the input's checksum valid
//!   first), does not change the IP view, and a second clamp changes nothing.
//!
//! Run: `cargo fuzz run --sanitizer none inner_packet -- -max_total_time=300`
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane::icmp::too_big;
use dataplane::mss::clamp_mss;
use dataplane::wire::{
    IpInfo, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, be16, checksum, fold, parse_ip, pseudo_header_sum,
    put_be16, sum16,
};
use libfuzzer_sys::fuzz_target;

const MTUS: [u32; 8] = [0, 67, 68, 576, 1280, 1400, 9000, u32::MAX];
const MSS: [u16; 8] = [0, 20, 536, 1220, 1350, 1360, 1460, u16::MAX];

fn check_info(pkt: &[u8], info: &IpInfo) {
    assert!(info.total_len <= pkt.len());
    assert!(info.l4_offset <= info.total_len);
    match info.version {
        4 => {
            assert!(info.l4_offset >= 20);
            let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
            assert_eq!(info.src, IpAddr::V4(src));
            assert_eq!(info.dst, IpAddr::V4(dst));
        }
        6 => {
            assert!(info.l4_offset >= 40);
            let src: [u8; 16] = pkt[8..24].try_into().expect("16 bytes");
            let dst: [u8; 16] = pkt[24..40].try_into().expect("16 bytes");
            assert_eq!(info.src, IpAddr::V6(Ipv6Addr::from(src)));
            assert_eq!(info.dst, IpAddr::V6(Ipv6Addr::from(dst)));
        }
        v => panic!("parse_ip returned version {v}"),
    }
}

/// The TCP segment of `pkt` (`info.l4_offset..info.total_len`), if it holds a TCP header.
fn tcp_range(pkt: &[u8], info: &IpInfo) -> Option<std::ops::Range<usize>> {
    if info.protocol != PROTO_TCP || info.later_fragment {
        return None;
    }
    let r = info.l4_offset..info.total_len;
    (pkt.get(r.clone())?.len() >= 20).then_some(r)
}

fn tcp_sum(pkt: &[u8], info: &IpInfo, r: &std::ops::Range<usize>) -> u16 {
    let acc = pseudo_header_sum(info.src, info.dst, PROTO_TCP, r.len());
    fold(sum16(acc, &pkt[r.clone()]))
}

fn check_too_big(pkt: &[u8], info: &IpInfo, mtu: u32, local: Option<IpAddr>, out: &[u8]) {
    let o = out;
    let oi = parse_ip(o).expect("the generated ICMP error parses");
    assert_eq!(oi.total_len, o.len(), "ICMP error length field");
    assert_eq!(oi.version, info.version);
    assert_eq!(oi.dst, info.src, "the error goes back to the sender");
    let expect_src = match (local, info.src) {
        (Some(l @ IpAddr::V4(_)), IpAddr::V4(_)) | (Some(l @ IpAddr::V6(_)), IpAddr::V6(_)) => l,
        _ => info.dst,
    };
    assert_eq!(oi.src, expect_src);
    let l4 = oi.l4_offset;
    let orig = &pkt[..info.total_len];
    if info.version == 4 {
        assert!(o.len() <= 576);
        assert_eq!(oi.protocol, PROTO_ICMP);
        assert_eq!(checksum(&o[..20]), 0, "IPv4 header checksum");
        assert_eq!(checksum(&o[20..]), 0, "ICMP checksum");
        assert_eq!((o[20], o[21]), (3, 4));
        let adv = be16(o, 26).expect("MTU field");
        assert!(adv >= 68);
        assert_eq!(u32::from(adv), mtu.clamp(68, 65535));
        assert!(info.dont_fragment);
    } else {
        assert!(o.len() <= 1280);
        assert_eq!(oi.protocol, PROTO_ICMPV6);
        let acc = pseudo_header_sum(oi.src, oi.dst, PROTO_ICMPV6, o.len() - l4);
        assert_eq!(fold(sum16(acc, &o[l4..])), 0, "ICMPv6 checksum");
        assert_eq!((o[l4], o[l4 + 1]), (2, 0));
        let adv = u32::from_be_bytes(o[l4 + 4..l4 + 8].try_into().expect("4 bytes"));
        assert_eq!(adv, mtu.max(1280));
    }
    let quote = &o[l4 + 8..];
    assert!(!quote.is_empty() || orig.is_empty());
    assert!(
        orig.starts_with(quote),
        "the error quotes the original packet"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut pkt = rest.to_vec();
    let Some(info) = parse_ip(&pkt) else {
        return;
    };
    check_info(&pkt, &info);

    // ICMP too big.
    let mtu = MTUS[usize::from(ctl & 0x07)];
    let local = match (ctl >> 3) & 0x03 {
        1 => Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
        2 => Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
        _ => None,
    };
    let mut out = vec![0u8; 1500];
    if let Some(n) = too_big(&pkt, &info, mtu, local, &mut out) {
        assert!(n <= out.len());
        check_too_big(&pkt, &info, mtu, local, &out[..n]);
        // Every shorter buffer is refused, never overrun.
        for short in [0, 20, 40, n / 2, n - 1] {
            let mut small = vec![0u8; short.min(n - 1)];
            assert_eq!(too_big(&pkt, &info, mtu, local, &mut small), None);
        }
    }

    // MSS clamping.
    let limit = MSS[usize::from(ctl >> 5)];
    let tcp = tcp_range(&pkt, &info);
    if let (Some(r), true) = (&tcp, ctl & 0x04 != 0) {
        // Make the checksum valid first, so its incremental update is checked.
        put_be16(&mut pkt, r.start + 16, 0).expect("TCP header present");
        let c = tcp_sum(&pkt, &info, r);
        put_be16(&mut pkt, r.start + 16, c).expect("TCP header present");
    }
    let valid_before = tcp.as_ref().is_some_and(|r| tcp_sum(&pkt, &info, r) == 0);
    let before = pkt.clone();
    let changed = clamp_mss(&mut pkt, &info, limit);
    assert_eq!(pkt.len(), before.len());
    if !changed {
        assert_eq!(pkt, before, "clamp_mss said unchanged but wrote");
        return;
    }
    let r = tcp.expect("only TCP is clamped");
    let hdr_len = usize::from(pkt[r.start + 12] >> 4) * 4;
    for (i, (a, b)) in before.iter().zip(&pkt).enumerate() {
        if a != b {
            assert!(
                i >= r.start && i < r.start + hdr_len,
                "byte {i} outside the TCP header changed"
            );
        }
    }
    if valid_before {
        assert_eq!(
            tcp_sum(&pkt, &info, &r),
            0,
            "TCP checksum broken by clamping"
        );
    }
    assert_eq!(parse_ip(&pkt), Some(info));
    let mut again = pkt.clone();
    assert!(
        !clamp_mss(&mut again, &info, limit),
        "a second clamp changed the packet"
    );
    assert_eq!(again, pkt);
});
