//! Traffic selector arithmetic: intersection and responder narrowing (RFC 7296 §2.9).

use crate::config::ChildPolicy;
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

/// Whether `list` (empty = any) holds a selector containing `ts`.
fn covers(list: &[TrafficSelector], ts: &TrafficSelector) -> bool {
    list.is_empty() || list.iter().any(|p| contains(p, ts))
}

/// Responder narrowing against a list of Child SA policies (RFC 7296 §2.9): the initiator's
/// TSi (its side, our remote) and TSr (our local) narrowed against the first policy on which
/// both stay non-empty. A policy that contains the first TSi and the first TSr (which §2.9
/// reserves for the packet that triggered the request) is preferred. Returns the policy's
/// index and the narrowed (TSi, TSr); `None` means TS_UNACCEPTABLE.
pub fn narrow_policies(
    tsi: &[TrafficSelector],
    tsr: &[TrafficSelector],
    policies: &[ChildPolicy],
) -> Option<(usize, Vec<TrafficSelector>, Vec<TrafficSelector>)> {
    let fit = |p: &ChildPolicy| {
        let n_tsi = narrow(tsi, &p.remote_ts);
        let n_tsr = narrow(tsr, &p.local_ts);
        (!n_tsi.is_empty() && !n_tsr.is_empty()).then_some((n_tsi, n_tsr))
    };
    let triggering = match (tsi.first(), tsr.first()) {
        (Some(i), Some(r)) => policies
            .iter()
            .position(|p| covers(&p.remote_ts, i) && covers(&p.local_ts, r)),
        _ => None,
    };
    if let Some(idx) = triggering
        && let Some((a, b)) = fit(&policies[idx])
    {
        return Some((idx, a, b));
    }
    policies
        .iter()
        .enumerate()
        .find_map(|(idx, p)| fit(p).map(|(a, b)| (idx, a, b)))
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

    #[test]
    fn policy_narrowing() {
        let pol = |l: TrafficSelector, r: TrafficSelector| ChildPolicy {
            local_ts: vec![l],
            remote_ts: vec![r],
        };
        let (l1, l2) = (p([198, 19, 0, 0], 25), p([198, 19, 0, 128], 25));
        let (r1, r2) = (p([198, 18, 0, 0], 25), p([198, 18, 0, 128], 25));
        let policies = [pol(l1, r1), pol(l1, r2), pol(l2, r1), pol(l2, r2)];
        // All pairs at once: the first policy.
        let wide = narrow_policies(
            &[p([198, 18, 0, 0], 24)],
            &[p([198, 19, 0, 0], 24)],
            &policies,
        );
        assert_eq!(wide, Some((0, vec![r1], vec![l1])));
        // The first selectors name a triggering packet of the last pair: that policy wins.
        let host = |a| TrafficSelector::from_prefix(IpAddr::V4(Ipv4Addr::from(a)), 32);
        let trig = narrow_policies(
            &[host([198, 18, 0, 200]), p([198, 18, 0, 0], 24)],
            &[host([198, 19, 0, 130]), p([198, 19, 0, 0], 24)],
            &policies,
        );
        assert_eq!(trig.map(|t| t.0), Some(3));
        // Outside every policy.
        assert_eq!(
            narrow_policies(&[p([10, 0, 0, 0], 8)], &[l1], &policies),
            None
        );
        // An empty policy allows anything.
        let any = [ChildPolicy {
            local_ts: vec![],
            remote_ts: vec![],
        }];
        assert_eq!(
            narrow_policies(&[r1], &[l2], &any),
            Some((0, vec![r1], vec![l2]))
        );
    }
}
