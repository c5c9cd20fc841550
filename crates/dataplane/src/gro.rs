//! Receive coalescing of decrypted TCP segments into one TUN write (software GRO): consecutive
//! in-order segments of one flow (RFC 9293 section 3.4 sequence space) become one packet behind a
//! virtio-net header (virtio 1.2 section 5.1.6.2: `VIRTIO_NET_HDR_GSO_TCPV4/6`,
//! `VIRTIO_NET_HDR_F_NEEDS_CSUM`), which the kernel takes as one GSO skb. Everything else is
//! written at once, in place, behind a zero header (no copy). Allocation free.
//!
//! A segment joins the packet being built only when it is a pure ACK (PSH allowed, which closes
//! the packet), carries the same addresses, ports, ACK number, window, IP TOS/TTL and identical
//! TCP options, continues the sequence exactly, is no larger than the first segment, and its
//! own TCP checksum verifies (coalesced packets are handed up with a partial checksum, so the
//! kernel would not check them again).

use std::io;
use std::ops::Range;

use crate::wire::{PROTO_TCP, be16, fold, pseudo_header_sum, put_be16, sum16};

/// Length of the virtio-net header (`struct virtio_net_hdr`).
pub(crate) const VNET_HDR_LEN: usize = 10;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const F_NEEDS_CSUM: u8 = 1;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Most segments in one coalesced packet (the kernel's GRO limit is 64).
const MAX_SEGMENTS: usize = 64;
const MAX_IP_LEN: usize = 65535;

/// Facts about an eligible TCP segment.
#[derive(Debug, Clone, Copy)]
struct Seg {
    v6: bool,
    iph_len: usize,
    hdr_len: usize,
    seq: u32,
    psh: bool,
    payload: usize,
}

/// Is `p` (a whole inner packet) a TCP segment we may coalesce? Verifies its checksum.
fn candidate(p: &[u8]) -> Option<Seg> {
    let first = *p.first()?;
    let (v6, iph_len) = match first >> 4 {
        4 => {
            // No options, not a fragment, total length exact.
            if first & 0x0f != 5 || p.len() < 40 || p[9] != PROTO_TCP {
                return None;
            }
            if usize::from(be16(p, 2)?) != p.len() || be16(p, 6)? & 0x3fff != 0 {
                return None;
            }
            (false, 20)
        }
        6 => {
            if p.len() < 60 || p[6] != PROTO_TCP || usize::from(be16(p, 4)?) + 40 != p.len() {
                return None;
            }
            (true, 40)
        }
        _ => return None,
    };
    let tcph_len = usize::from(*p.get(iph_len + 12)? >> 4) * 4;
    if !(20..=60).contains(&tcph_len) || p.len() <= iph_len + tcph_len {
        return None;
    }
    let flags = p[iph_len + 13];
    if flags != TCP_ACK && flags != TCP_ACK | TCP_PSH {
        return None;
    }
    let hdr_len = iph_len + tcph_len;
    // Checksum over pseudo-header and segment must verify.
    let (src, dst) = if v6 {
        (ip6(&p[8..24]), ip6(&p[24..40]))
    } else {
        (ip4(&p[12..16]), ip4(&p[16..20]))
    };
    let acc = pseudo_header_sum(src, dst, PROTO_TCP, p.len() - iph_len);
    if fold(sum16(acc, &p[iph_len..])) != 0 {
        return None;
    }
    let seq = u32::from_be_bytes([
        p[iph_len + 4],
        p[iph_len + 5],
        p[iph_len + 6],
        p[iph_len + 7],
    ]);
    Some(Seg {
        v6,
        iph_len,
        hdr_len,
        seq,
        psh: flags & TCP_PSH != 0,
        payload: p.len() - hdr_len,
    })
}

fn ip4(b: &[u8]) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn ip6(b: &[u8]) -> std::net::IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    std::net::IpAddr::V6(a.into())
}

/// Builds coalesced packets for one TUN queue.
#[derive(Debug)]
pub(crate) struct Coalescer {
    /// `[virtio-net header][IP][TCP][payload...]`.
    buf: Vec<u8>,
    /// Bytes used in `buf`, header included; 0 when empty.
    len: usize,
    seg: Seg,
    /// Payload size of the first segment (the GSO size).
    gso: usize,
    count: usize,
    next_seq: u32,
    /// No further segment may join (short segment or PSH seen).
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self {
            buf: vec![0; VNET_HDR_LEN + MAX_IP_LEN],
            len: 0,
            seg: Seg {
                v6: false,
                iph_len: 0,
                hdr_len: 0,
                seq: 0,
                psh: false,
                payload: 0,
            },
            gso: 0,
            count: 0,
            next_seq: 0,
            closed: true,
        }
    }
}

impl Coalescer {
    /// Takes the inner packet `buf[pkt]`; `buf` has at least [`VNET_HDR_LEN`] bytes free before
    /// `pkt` (the decrypted ESP header and IV), which a direct write uses for its header.
    pub(crate) fn push(
        &mut self,
        buf: &mut [u8],
        pkt: Range<usize>,
        write: &mut impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        let Some(p) = buf.get(pkt.clone()) else {
            return Ok(());
        };
        let Some(s) = candidate(p) else {
            self.flush(write)?;
            return write_plain(buf, pkt, write);
        };
        if self.can_append(p, &s) {
            let at = self.len;
            self.buf[at..at + s.payload].copy_from_slice(&p[s.hdr_len..]);
            self.len += s.payload;
            self.count += 1;
            self.next_seq = s.seq.wrapping_add(s.payload as u32);
            if s.psh {
                let flags_at = VNET_HDR_LEN + s.iph_len + 13;
                self.buf[flags_at] |= TCP_PSH;
            }
            self.closed = s.psh || s.payload < self.gso || self.count >= MAX_SEGMENTS;
            return Ok(());
        }
        self.flush(write)?;
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + p.len()].copy_from_slice(p);
        self.len = VNET_HDR_LEN + p.len();
        self.seg = s;
        self.gso = s.payload;
        self.count = 1;
        self.next_seq = s.seq.wrapping_add(s.payload as u32);
        self.closed = s.psh;
        Ok(())
    }

    fn can_append(&self, p: &[u8], s: &Seg) -> bool {
        if self.len == 0 || self.closed {
            return false;
        }
        let h = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.seg.hdr_len];
        if s.v6 != self.seg.v6
            || s.hdr_len != self.seg.hdr_len
            || s.seq != self.next_seq
            || s.payload > self.gso
            || self.len + s.payload > VNET_HDR_LEN + MAX_IP_LEN
        {
            return false;
        }
        let ip = s.iph_len;
        let same_ip = if s.v6 {
            // Version/traffic class/flow label, next header and hop limit, addresses.
            h[0..4] == p[0..4] && h[6..40] == p[6..40]
        } else {
            // TOS, flags, TTL, protocol, addresses.
            h[1] == p[1] && h[6] == p[6] && h[8..10] == p[8..10] && h[12..20] == p[12..20]
        };
        // Ports, ACK number, data offset, window, options (everything but seq, flags, checksum,
        // urgent pointer must match; flags were checked to be ACK or ACK|PSH).
        same_ip
            && h[ip..ip + 4] == p[ip..ip + 4]
            && h[ip + 8..ip + 13] == p[ip + 8..ip + 13]
            && h[ip + 14..ip + 16] == p[ip + 14..ip + 16]
            && h[ip + 20..s.hdr_len] == p[ip + 20..s.hdr_len]
    }

    /// Writes the packet being built, if any.
    pub(crate) fn flush(
        &mut self,
        write: &mut impl FnMut(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let len = std::mem::take(&mut self.len);
        let s = self.seg;
        let hdr = &mut self.buf[..len];
        hdr[..VNET_HDR_LEN].fill(0);
        if self.count > 1 {
            let ip_len = len - VNET_HDR_LEN;
            let pkt = &mut hdr[VNET_HDR_LEN..];
            let (src, dst) = if s.v6 {
                put_be16(pkt, 4, (ip_len - 40) as u16);
                (ip6(&pkt[8..24]), ip6(&pkt[24..40]))
            } else {
                put_be16(pkt, 2, ip_len as u16);
                put_be16(pkt, 10, 0);
                let c = fold(sum16(0, &pkt[..20]));
                put_be16(pkt, 10, c);
                (ip4(&pkt[12..16]), ip4(&pkt[16..20]))
            };
            // CHECKSUM_PARTIAL: the checksum field holds the folded pseudo-header sum.
            let partial = !fold(pseudo_header_sum(src, dst, PROTO_TCP, ip_len - s.iph_len));
            put_be16(pkt, s.iph_len + 16, partial);
            hdr[0] = F_NEEDS_CSUM;
            hdr[1] = if s.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            hdr[2..4].copy_from_slice(&(s.hdr_len as u16).to_ne_bytes());
            hdr[4..6].copy_from_slice(&(self.gso as u16).to_ne_bytes());
            hdr[6..8].copy_from_slice(&(s.iph_len as u16).to_ne_bytes());
            hdr[8..10].copy_from_slice(&16u16.to_ne_bytes());
        }
        self.count = 0;
        self.closed = true;
        write(&self.buf[..len]).map(drop)
    }
}

/// Writes `buf[pkt]` behind a zero virtio-net header placed in the bytes before it.
fn write_plain(
    buf: &mut [u8],
    pkt: Range<usize>,
    write: &mut impl FnMut(&[u8]) -> io::Result<usize>,
) -> io::Result<()> {
    let Some(start) = pkt.start.checked_sub(VNET_HDR_LEN) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no room for the virtio-net header",
        ));
    };
    let Some(h) = buf.get_mut(start..pkt.start) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "packet outside the buffer",
        ));
    };
    h.fill(0);
    match buf.get(start..pkt.end) {
        Some(b) => write(b).map(drop),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "packet outside the buffer",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP segment 198.19.1.2:5201 -> 198.18.1.2:40000 with `payload` bytes at `seq`,
    /// a timestamp option and a valid checksum, at offset 16 of a buffer (as after ESP open).
    fn segment(seq: u32, payload: usize, flags: u8, fill: u8) -> (Vec<u8>, Range<usize>) {
        let tcph = 32;
        let total = 20 + tcph + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[198, 19, 1, 2]);
        p[16..20].copy_from_slice(&[198, 18, 1, 2]);
        let c = fold(sum16(0, &p[..20]));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&5201u16.to_be_bytes());
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&77u32.to_be_bytes());
        p[32] = ((tcph / 4) as u8) << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&500u16.to_be_bytes());
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        for b in &mut p[52..] {
            *b = fill;
        }
        let acc = pseudo_header_sum(ip4(&p[12..16]), ip4(&p[16..20]), 6, total - 20);
        let c = fold(sum16(acc, &p[20..]));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        let mut buf = vec![0xeeu8; 16];
        buf.extend_from_slice(&p);
        let r = 16..buf.len();
        (buf, r)
    }

    #[test]
    fn coalesces_in_order_segments_and_writes_others_in_place() {
        let mut c = Coalescer::default();
        let mut written: Vec<Vec<u8>> = Vec::new();
        let mut w = |b: &[u8]| {
            written.push(b.to_vec());
            Ok(b.len())
        };
        for i in 0..4u32 {
            let (mut b, r) = segment(1000 + i * 1000, 1000, TCP_ACK, i as u8);
            c.push(&mut b, r, &mut w).unwrap();
        }
        // A short last segment with PSH closes the packet.
        let (mut b, r) = segment(5000, 300, TCP_ACK | TCP_PSH, 9);
        c.push(&mut b, r, &mut w).unwrap();
        // A SYN is not coalesced: it flushes and goes out on its own.
        let (mut b, r) = segment(9000, 10, 0x02, 1);
        c.push(&mut b, r, &mut w).unwrap();
        c.flush(&mut w).unwrap();
        assert_eq!(written.len(), 2);
        let big = &written[0];
        let (h, pkt) = big.split_at(VNET_HDR_LEN);
        assert_eq!(h[0], F_NEEDS_CSUM);
        assert_eq!(h[1], GSO_TCPV4);
        assert_eq!(u16::from_ne_bytes([h[2], h[3]]), 52);
        assert_eq!(u16::from_ne_bytes([h[4], h[5]]), 1000);
        assert_eq!(u16::from_ne_bytes([h[6], h[7]]), 20);
        assert_eq!(u16::from_ne_bytes([h[8], h[9]]), 16);
        assert_eq!(pkt.len(), 52 + 4300);
        assert_eq!(usize::from(be16(pkt, 2).unwrap()), pkt.len());
        assert_eq!(fold(sum16(0, &pkt[..20])), 0, "IP header checksum");
        assert_eq!(pkt[33], TCP_ACK | TCP_PSH);
        for i in 0..4 {
            assert!(
                pkt[52 + i * 1000..52 + (i + 1) * 1000]
                    .iter()
                    .all(|b| *b == i as u8)
            );
        }
        assert!(pkt[4052..].iter().all(|b| *b == 9));
        // Completing the partial checksum as the kernel would gives a valid TCP checksum.
        let mut full = pkt.to_vec();
        let c = fold(sum16(0, &full[20..]));
        full[36..38].copy_from_slice(&c.to_be_bytes());
        let acc = pseudo_header_sum(ip4(&full[12..16]), ip4(&full[16..20]), 6, full.len() - 20);
        assert_eq!(fold(sum16(acc, &full[20..])), 0);
        // The SYN went out unchanged behind a zero header.
        let (_, syn_r) = segment(9000, 10, 0x02, 1);
        let (syn_buf, _) = segment(9000, 10, 0x02, 1);
        assert_eq!(&written[1][..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&written[1][VNET_HDR_LEN..], &syn_buf[syn_r]);
    }

    #[test]
    fn gaps_bad_checksums_and_different_flows_are_not_merged() {
        let mut c = Coalescer::default();
        let mut n = 0usize;
        let mut w = |_: &[u8]| {
            n += 1;
            Ok(0)
        };
        let (mut b, r) = segment(1000, 100, TCP_ACK, 1);
        c.push(&mut b, r, &mut w).unwrap();
        let (mut b, r) = segment(1200, 100, TCP_ACK, 1); // gap
        c.push(&mut b, r, &mut w).unwrap();
        let (mut b, r) = segment(1300, 100, TCP_ACK, 1);
        let last = b.len() - 1;
        b[last] ^= 0xff; // bad checksum
        c.push(&mut b, r, &mut w).unwrap();
        let (mut b, r) = segment(1300, 100, TCP_ACK, 1);
        b[16 + 23] ^= 1; // other destination port: other flow
        c.push(&mut b, r, &mut w).unwrap();
        c.flush(&mut w).unwrap();
        assert_eq!(n, 4);
        // Garbage is written as is (the kernel drops it), never panics.
        let mut junk = vec![0u8; 20];
        let mut w2 = |_: &[u8]| Ok(0);
        c.push(&mut junk, 12..20, &mut w2).unwrap();
        assert!(
            c.push(&mut junk, 2..20, &mut w2).is_err(),
            "no room for the header"
        );
    }
}
