//! Traffic selector arithmetic: intersection and responder narrowing (RFC 7296 §2.9).

use crate::wire::TrafficSelector;
use std::net::IpAddr;

fn addr_key(a: IpAddr) -> (u8, u128) {
    match a {
        IpAddr::V4(v) => (4, u128::from(u32::from(v))),
        IpAddr::V6(v) => (6, u128::from(v)),
    }
}

/// Whether a selector is well-formed: same family on both ends, start <= end, ports ordered.
pub fn is_valid(ts: &TrafficSelector) -> bool {
    let (fs, s) = addr_key(ts.start);
    let (fe, e) = addr_key(ts.end);
    fs == fe && s <= e && ts.start_port <= ts.end_port
}

/// The intersection of two selectors, `None` if it is empty.
pub fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    if !is_valid(a) || !is_valid(b) {
        return None;
    }
    let ip_proto = match (a.ip_proto, b.ip_proto) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    if start_port > end_port {
        return None;
    }
    let (fa, sa) = addr_key(a.start);
    let (fb, sb) = addr_key(b.start);
    if fa != fb {
        return None;
    }
    let (_, ea) = addr_key(a.end);
    let (_, eb) = addr_key(b.end);
    let start = if sa >= sb { a.start } else { b.start };
    let end = if ea <= eb { a.end } else { b.end };
    if addr_key(start).1 > addr_key(end).1 {
        return None;
    }
    Some(TrafficSelector {
        ip_proto,
        start_port,
        end_port,
        start,
        end,
    })
}

/// Whether `inner` lies entirely inside `outer`.
pub fn contains(outer: &TrafficSelector, inner: &TrafficSelector) -> bool {
    intersect(outer, inner).is_some_and(|i| i == *inner)
}

/// Responder narrowing: the parts of the initiator's proposed selectors that our policy allows.
/// An empty policy means "any" (route-based tunnels). The result keeps the initiator's order
/// and drops duplicates; empty means TS_UNACCEPTABLE.
pub fn narrow(proposed: &[TrafficSelector], policy: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let any = [TrafficSelector::any_v4(), TrafficSelector::any_v6()];
    let policy = if policy.is_empty() { &any[..] } else { policy };
    let mut out: Vec<TrafficSelector> = Vec::new();
    for p in proposed {
        for q in policy {
            if let Some(i) = intersect(p, q)
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
    }
    out
}

/// The selectors an initiator proposes for a configured list (empty = IPv4 any).
pub fn proposed(configured: &[TrafficSelector]) -> Vec<TrafficSelector> {
    if configured.is_empty() {
        vec![TrafficSelector::any_v4()]
    } else {
        configured.to_vec()
    }
}

/// Whether every selector the responder returned lies inside one we proposed (RFC 7296 §2.9).
pub fn acceptable_reply(proposed: &[TrafficSelector], reply: &[TrafficSelector]) -> bool {
    !reply.is_empty()
        && reply
            .iter()
            .all(|r| proposed.iter().any(|p| contains(p, r)))
}

/// A compact rendering for log lines.
pub fn display(list: &[TrafficSelector]) -> String {
    if list.is_empty() {
        return "any".into();
    }
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn p(a: [u8; 4], l: u8) -> TrafficSelector {
        TrafficSelector::from_prefix(IpAddr::V4(Ipv4Addr::from(a)), l)
    }

    #[test]
    fn narrowing() {
        let any = TrafficSelector::any_v4();
        assert_eq!(
            narrow(&[any], &[p([198, 18, 1, 0], 24)]),
            vec![p([198, 18, 1, 0], 24)]
        );
        assert_eq!(
            narrow(&[p([198, 18, 1, 0], 24)], &[]),
            vec![p([198, 18, 1, 0], 24)]
        );
        assert!(narrow(&[p([198, 18, 1, 0], 24)], &[p([198, 18, 2, 0], 24)]).is_empty());
        assert_eq!(
            narrow(&[p([198, 18, 0, 0], 16)], &[p([198, 18, 2, 0], 24)]),
            vec![p([198, 18, 2, 0], 24)]
        );
        let mut tcp = any;
        tcp.ip_proto = 6;
        let mut udp = any;
        udp.ip_proto = 17;
        assert!(intersect(&tcp, &udp).is_none());
        assert_eq!(intersect(&tcp, &any), Some(tcp));
        assert!(intersect(&any, &TrafficSelector::any_v6()).is_none());
        assert!(acceptable_reply(&[any], &[p([198, 18, 2, 0], 24)]));
        assert!(!acceptable_reply(&[p([198, 18, 2, 0], 24)], &[any]));
    }
}
