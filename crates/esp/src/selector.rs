//! Traffic selectors (RFC 7296 §3.13.1, RFC 4301 §4.4.1): address ranges, IP protocol and port
//! ranges, and matching of an inner IPv4/IPv6 packet against them.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One traffic selector, as IKEv2 carries it: an address range, a protocol (0 = any) and a port
/// range. ICMP type/code are matched like ports (type in the high byte, RFC 4301 §4.4.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// First address (inclusive).
    pub start: IpAddr,
    /// Last address (inclusive); same family as `start`.
    pub end: IpAddr,
    /// IP protocol, 0 for any.
    pub protocol: u8,
    /// First port (inclusive).
    pub start_port: u16,
    /// Last port (inclusive).
    pub end_port: u16,
}

impl TrafficSelector {
    /// All IPv4 addresses, any protocol and port.
    pub const fn any_v4() -> TrafficSelector {
        TrafficSelector {
            start: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            end: IpAddr::V4(Ipv4Addr::BROADCAST),
            protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
        }
    }

    /// All IPv6 addresses, any protocol and port.
    pub const fn any_v6() -> TrafficSelector {
        TrafficSelector {
            start: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            end: IpAddr::V6(Ipv6Addr::new(
                0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
            )),
            protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
        }
    }

    /// A whole prefix, any protocol and port. Host bits of `addr` are ignored; a too long
    /// prefix length is clamped.
    pub fn prefix(addr: IpAddr, len: u8) -> TrafficSelector {
        let (start, end) = match addr {
            IpAddr::V4(a) => {
                let len = u32::from(len.min(32));
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let a = a.to_bits() & mask;
                (
                    IpAddr::V4(Ipv4Addr::from_bits(a)),
                    IpAddr::V4(Ipv4Addr::from_bits(a | !mask)),
                )
            }
            IpAddr::V6(a) => {
                let len = u32::from(len.min(128));
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                let a = a.to_bits() & mask;
                (
                    IpAddr::V6(Ipv6Addr::from_bits(a)),
                    IpAddr::V6(Ipv6Addr::from_bits(a | !mask)),
                )
            }
        };
        TrafficSelector {
            start,
            end,
            protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
        }
    }

    /// Restricts to one protocol.
    pub fn with_protocol(mut self, protocol: u8) -> TrafficSelector {
        self.protocol = protocol;
        self
    }

    /// Restricts to a port range.
    pub fn with_ports(mut self, start: u16, end: u16) -> TrafficSelector {
        self.start_port = start;
        self.end_port = end;
        self
    }

    fn all_ports(&self) -> bool {
        self.start_port == 0 && self.end_port == u16::MAX
    }

    /// Does `(addr, protocol, port)` fall inside this selector? `port` is `None` when the packet
    /// has none (non-first fragment, or a protocol without ports): only port-agnostic selectors
    /// match then (RFC 4301 §7).
    pub fn matches(&self, addr: IpAddr, protocol: u8, port: Option<u16>) -> bool {
        let in_range = match (self.start, self.end, addr) {
            (IpAddr::V4(s), IpAddr::V4(e), IpAddr::V4(a)) => s <= a && a <= e,
            (IpAddr::V6(s), IpAddr::V6(e), IpAddr::V6(a)) => s <= a && a <= e,
            _ => false,
        };
        if !in_range || (self.protocol != 0 && self.protocol != protocol) {
            return false;
        }
        match port {
            _ if self.all_ports() => true,
            Some(p) => self.start_port <= p && p <= self.end_port,
            None => false,
        }
    }
}

/// The fields of an inner packet that selectors look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Upper-layer protocol.
    pub protocol: u8,
    /// Source port (ICMP: type << 8 | code); `None` when not available.
    pub src_port: Option<u16>,
    /// Destination port; `None` when not available.
    pub dst_port: Option<u16>,
}

fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136 | 33)
}

fn ports(proto: u8, l4: &[u8]) -> (Option<u16>, Option<u16>) {
    if has_ports(proto) {
        match l4 {
            [a, b, c, d, ..] => (
                Some(u16::from_be_bytes([*a, *b])),
                Some(u16::from_be_bytes([*c, *d])),
            ),
            _ => (None, None),
        }
    } else if proto == 1 || proto == 58 {
        // ICMP / ICMPv6: type and code in the source "port", destination port 0.
        match l4 {
            [t, c, ..] => (Some(u16::from_be_bytes([*t, *c])), Some(0)),
            _ => (None, None),
        }
    } else {
        (None, None)
    }
}

impl FlowKey {
    /// Extracts the flow key from an IPv4 or IPv6 packet. Returns `None` for anything that is
    /// not a well-formed IP header.
    pub fn parse(packet: &[u8]) -> Option<FlowKey> {
        match packet.first()? >> 4 {
            4 => {
                let h = packet.get(..20)?;
                let ihl = usize::from(h[0] & 0x0f) * 4;
                let proto = h[9];
                let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
                let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
                let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
                let (sp, dp) = if frag_off == 0 {
                    ports(proto, packet.get(ihl..).unwrap_or(&[]))
                } else {
                    (None, None)
                };
                Some(FlowKey {
                    src,
                    dst,
                    protocol: proto,
                    src_port: sp,
                    dst_port: dp,
                })
            }
            6 => {
                let h = packet.get(..40)?;
                let mut s = [0u8; 16];
                s.copy_from_slice(&h[8..24]);
                let mut d = [0u8; 16];
                d.copy_from_slice(&h[24..40]);
                let mut proto = h[6];
                let mut off = 40usize;
                let mut first_fragment = true;
                // Walk at most 8 extension headers (hop-by-hop, routing, fragment, dest opts).
                for _ in 0..8 {
                    match proto {
                        0 | 43 | 60 => {
                            let e = packet.get(off..off + 2)?;
                            proto = e[0];
                            off += (usize::from(e[1]) + 1) * 8;
                        }
                        44 => {
                            let e = packet.get(off..off + 4)?;
                            proto = e[0];
                            if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                                first_fragment = false;
                            }
                            off += 8;
                        }
                        _ => break,
                    }
                }
                let (sp, dp) = if first_fragment {
                    ports(proto, packet.get(off..).unwrap_or(&[]))
                } else {
                    (None, None)
                };
                Some(FlowKey {
                    src: IpAddr::V6(Ipv6Addr::from(s)),
                    dst: IpAddr::V6(Ipv6Addr::from(d)),
                    protocol: proto,
                    src_port: sp,
                    dst_port: dp,
                })
            }
            _ => None,
        }
    }
}

/// The selectors of one Child SA: a packet from `local` to `remote` belongs to it when its
/// source matches one local selector and its destination one remote selector (IKEv2 TSi/TSr).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SelectorPolicy {
    /// Our side's selectors (source of outbound packets).
    pub local: Vec<TrafficSelector>,
    /// The peer's side (destination of outbound packets).
    pub remote: Vec<TrafficSelector>,
}

impl SelectorPolicy {
    /// Any-to-any over IPv4 and IPv6 (route-based tunnels, as Azure uses).
    pub fn any() -> SelectorPolicy {
        SelectorPolicy {
            local: vec![TrafficSelector::any_v4(), TrafficSelector::any_v6()],
            remote: vec![TrafficSelector::any_v4(), TrafficSelector::any_v6()],
        }
    }

    /// Does an outbound packet with this flow key belong here?
    pub fn matches_outbound(&self, k: &FlowKey) -> bool {
        self.local
            .iter()
            .any(|t| t.matches(k.src, k.protocol, k.src_port))
            && self
                .remote
                .iter()
                .any(|t| t.matches(k.dst, k.protocol, k.dst_port))
    }

    /// Does an inbound (decrypted) packet with this flow key belong here?
    pub fn matches_inbound(&self, k: &FlowKey) -> bool {
        self.remote
            .iter()
            .any(|t| t.matches(k.src, k.protocol, k.src_port))
            && self
                .local
                .iter()
                .any(|t| t.matches(k.dst, k.protocol, k.dst_port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0]);
        p
    }

    #[test]
    fn prefix_and_ports() {
        let pol = SelectorPolicy {
            local: vec![TrafficSelector::prefix("198.18.1.0".parse().unwrap(), 24)],
            remote: vec![
                TrafficSelector::prefix("198.19.0.0".parse().unwrap(), 16)
                    .with_protocol(17)
                    .with_ports(53, 53),
            ],
        };
        let k = FlowKey::parse(&v4_udp([198, 18, 1, 7], [198, 19, 4, 4], 40000, 53)).unwrap();
        assert!(pol.matches_outbound(&k));
        let k = FlowKey::parse(&v4_udp([198, 18, 1, 7], [198, 19, 4, 4], 40000, 54)).unwrap();
        assert!(!pol.matches_outbound(&k));
        let k = FlowKey::parse(&v4_udp([198, 18, 2, 7], [198, 19, 4, 4], 40000, 53)).unwrap();
        assert!(!pol.matches_outbound(&k));
        assert!(SelectorPolicy::any().matches_outbound(&k));
        assert_eq!(FlowKey::parse(&[0x45, 0]), None);
        assert_eq!(FlowKey::parse(&[]), None);
    }
}
