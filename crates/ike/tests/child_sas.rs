//! Several Child SAs on one IKE SA (RFC 7296 §1.3.1, §2.9): `create_child`, the responder's
//! narrowing against a policy list, PFS and INVALID_KE_PAYLOAD, IKE SA rekeys with many Child
//! SAs, responder connection choice by local address, and INITIAL_CONTACT with crossing setups.

mod common;

use common::*;
use ike::crypto::{Psk, TestRng};
use ike::wire::TrafficSelector;
use ike::{
    ChildPolicy, ChildSa, ConnectionConfig, Endpoint, Event, FailReason, Identity, IkeSaId,
    Transmit,
};
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

fn prefix(a: [u8; 4], l: u8) -> TrafficSelector {
    TrafficSelector::from_prefix(IpAddr::V4(Ipv4Addr::from(a)), l)
}

/// On-prem prefixes (A's side).
fn onprem() -> [TrafficSelector; 2] {
    [prefix([198, 18, 0, 0], 25), prefix([198, 18, 0, 128], 25)]
}

/// Remote prefixes (B's side).
fn vnet() -> [TrafficSelector; 2] {
    [prefix([198, 19, 0, 0], 25), prefix([198, 19, 0, 128], 25)]
}

/// The four (on-prem, vnet) pairs in order.
fn pairs() -> Vec<(TrafficSelector, TrafficSelector)> {
    let (l, r) = (onprem(), vnet());
    vec![(l[0], r[0]), (l[0], r[1]), (l[1], r[0]), (l[1], r[1])]
}

/// Policies of one side: (ours, theirs) for each pair, `mine_first` = on-prem side.
fn policies(onprem_side: bool) -> Vec<ChildPolicy> {
    pairs()
        .into_iter()
        .map(|(l, r)| {
            let (local, remote) = if onprem_side { (l, r) } else { (r, l) };
            ChildPolicy {
                local_ts: vec![local],
                remote_ts: vec![remote],
            }
        })
        .collect()
}

/// A (on-prem, initiator) and B (Azure-like, policy-based), IKE_AUTH proposing the first pair.
fn policy_pair(esp_a: &str, esp_b: &str) -> Pair {
    let mut a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", esp_a);
    a.local_ts = vec![onprem()[0]];
    a.remote_ts = vec![vnet()[0]];
    a.policies = policies(true);
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", esp_b);
    b.policies = policies(false);
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    assert_eq!(
        (
            Pair::established(&p.a_events),
            Pair::established(&p.b_events)
        ),
        (1, 1)
    );
    p
}

fn ike_id(events: &[Event]) -> IkeSaId {
    current_ike(events).expect("an established IKE SA")
}

fn selectors(c: &ChildSa) -> (Vec<TrafficSelector>, Vec<TrafficSelector>) {
    (c.local_ts.clone(), c.remote_ts.clone())
}

/// A's surviving Child SAs by selector pair: (local, remote) -> (inbound, outbound).
fn by_selectors(p: &Pair) -> BTreeMap<(String, String), (u32, u32)> {
    let all = all_children(&p.a_events);
    survivors(&p.a_events)
        .into_iter()
        .map(|(i, (o, _))| {
            let c = &all[&i];
            (
                (format!("{:?}", c.local_ts), format!("{:?}", c.remote_ts)),
                (i, o),
            )
        })
        .collect()
}

fn key(l: TrafficSelector, r: TrafficSelector) -> (String, String) {
    (format!("{:?}", vec![l]), format!("{:?}", vec![r]))
}

fn failed(events: &[Event]) -> Vec<(FailReason, bool, Vec<TrafficSelector>, Vec<TrafficSelector>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaFailed {
                reason,
                initiator,
                local_ts,
                remote_ts,
                ..
            } => Some((
                reason.clone(),
                *initiator,
                local_ts.clone(),
                remote_ts.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn ike_gone(events: &[Event]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::IkeSaDeleted { .. } | Event::IkeSaFailed { .. }))
}

/// Sets up the four Child SAs of the 2x2 policies: one in IKE_AUTH, three with `create_child`.
fn four_children() -> Pair {
    let mut p = policy_pair("aes256gcm16", "aes256gcm16");
    let id = ike_id(&p.a_events);
    let now = p.now;
    for (l, r) in pairs().into_iter().skip(1) {
        assert!(p.a.create_child(id, vec![l], vec![r], now));
    }
    p.drive();
    p
}

#[test]
fn four_child_sas_rekeyed_and_deleted_independently() {
    let mut p = four_children();
    let id = ike_id(&p.a_events);
    let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
    assert_eq!((ca.len(), cb.len()), (4, 4));
    assert!(failed(&p.a_events).is_empty() && failed(&p.b_events).is_empty());
    // Exactly the requested selectors, once each; B's are the mirror images.
    let got: HashSet<_> = ca.iter().map(|c| selectors(c)).collect();
    let want: HashSet<_> = pairs()
        .into_iter()
        .map(|(l, r)| (vec![l], vec![r]))
        .collect();
    assert_eq!(got, want);
    let mut spis = HashSet::new();
    for c in &ca {
        assert!(
            spis.insert(c.inbound_spi) && spis.insert(c.outbound_spi),
            "SPIs distinct"
        );
        assert_eq!(c.ike_sa, id);
        let peer = cb
            .iter()
            .find(|x| x.inbound_spi == c.outbound_spi)
            .expect("B holds the mirror");
        assert_mirror(c, peer);
    }
    assert_eq!(ca.iter().filter(|c| c.initiator).count(), 4);
    assert_survivors(&p, 4);

    // Each one rekeyed on its own, alternately by A and by B; the others keep their SPIs.
    for (n, (l, r)) in pairs().into_iter().enumerate() {
        let before = by_selectors(&p);
        let (a_in, a_out) = before[&key(l, r)];
        let now = p.now;
        if n % 2 == 0 {
            assert!(p.a.rekey_child_spi(a_in, now));
        } else {
            assert!(p.b.rekey_child_spi(a_out, now));
        }
        p.drive();
        let after = by_selectors(&p);
        assert_eq!(after.len(), 4);
        for (k, v) in &before {
            if *k == key(l, r) {
                assert_ne!(after[k], *v, "pair {n} rekeyed");
            } else {
                assert_eq!(after[k], *v, "pair {n}: others untouched");
            }
        }
        assert_survivors(&p, 4);
    }
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (4, 4));

    // The peer deletes one: only that one goes, and it can be created again.
    let (l, r) = pairs()[2];
    let (a_in, a_out) = by_selectors(&p)[&key(l, r)];
    let mark = p.a_events.len();
    let now = p.now;
    assert!(p.b.delete_child_sa(a_out, now));
    p.drive();
    let deleted: Vec<u32> = p.a_events[mark..]
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaDeleted { inbound_spi, .. } => Some(*inbound_spi),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, vec![a_in]);
    assert_eq!(assert_survivors(&p, 3).len(), 3);
    let mark = p.a_events.len();
    let now = p.now;
    assert!(p.a.create_child(id, vec![l], vec![r], now));
    p.drive();
    let again = Pair::children(&p.a_events[mark..]);
    assert_eq!(again.len(), 1);
    assert_eq!(selectors(again[0]), (vec![l], vec![r]));
    assert_eq!(again[0].ike_sa, id);
    assert_survivors(&p, 4);
    assert!(!ike_gone(&p.a_events) && !ike_gone(&p.b_events));
}

#[test]
fn responder_narrows_to_first_fitting_policy_and_refuses_outside() {
    let wide_l = prefix([198, 18, 0, 0], 24);
    let wide_r = prefix([198, 19, 0, 0], 24);
    let mut a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    a.local_ts = vec![wide_l];
    a.remote_ts = vec![wide_r];
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    b.policies = policies(false);
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    // IKE_AUTH: all pairs proposed, the first policy chosen.
    let ca = Pair::children(&p.a_events);
    assert_eq!(ca.len(), 1);
    assert_eq!(selectors(ca[0]), (vec![onprem()[0]], vec![vnet()[0]]));
    let id = ike_id(&p.a_events);

    // CREATE_CHILD_SA: the first policy that fits (the second here: policy 0 has another
    // remote prefix).
    let mark = p.a_events.len();
    let now = p.now;
    assert!(p.a.create_child(id, vec![wide_l], vec![vnet()[1]], now));
    p.drive();
    let c = Pair::children(&p.a_events[mark..]);
    assert_eq!(c.len(), 1);
    assert_eq!(selectors(c[0]), (vec![onprem()[0]], vec![vnet()[1]]));

    // Outside every policy: TS_UNACCEPTABLE, reported with what we proposed; the IKE SA stays.
    let outside = prefix([10, 1, 0, 0], 16);
    let (ma, mb) = (p.a_events.len(), p.b_events.len());
    let refused = p.b.counters().refused;
    let now = p.now;
    assert!(p.a.create_child(id, vec![outside], vec![vnet()[0]], now));
    p.drive();
    assert_eq!(
        failed(&p.a_events[ma..]),
        vec![(
            FailReason::TsUnacceptable,
            true,
            vec![outside],
            vec![vnet()[0]]
        )]
    );
    assert_eq!(
        failed(&p.b_events[mb..]),
        vec![(
            FailReason::TsUnacceptable,
            false,
            vec![vnet()[0]],
            vec![outside]
        )]
    );
    assert_eq!(p.b.counters().refused, refused + 1);
    assert!(!ike_gone(&p.a_events) && !ike_gone(&p.b_events));
    assert_survivors(&p, 2);
    let now = p.now;
    assert!(p.a.send_liveness_check(id, now));
    p.drive();
    assert!(!ike_gone(&p.a_events));

    // IKE_AUTH outside every policy: the IKE SA comes up, the Child SA fails on both sides.
    let mut a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    a.local_ts = vec![outside];
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    b.policies = policies(false);
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    assert_eq!(Pair::established(&p.a_events), 1);
    let any = TrafficSelector::any_v4();
    assert_eq!(
        failed(&p.a_events),
        vec![(FailReason::TsUnacceptable, true, vec![outside], vec![any])]
    );
    assert_eq!(
        failed(&p.b_events),
        vec![(FailReason::TsUnacceptable, false, vec![any], vec![outside])]
    );
}

/// The CREATE_CHILD_SA requests A sent (IKE header exchange type 36, initiator, request).
fn create_requests(p: &Pair, from: SocketAddr) -> Vec<usize> {
    p.sent
        .iter()
        .filter(|t| t.local.ip() == from.ip())
        .filter(|t| {
            let b = &t.payload;
            b.len() > 28 && b[18] == 36 && b[19] & 0x20 == 0
        })
        .map(|t| t.payload.len())
        .collect()
}

#[test]
fn create_child_with_pfs_carries_ke() {
    let mut sizes = Vec::new();
    for esp_p in ["aes256gcm16", "aes256gcm16-x25519"] {
        let mut p = policy_pair(esp_p, esp_p);
        let id = ike_id(&p.a_events);
        let (l, r) = pairs()[3];
        let now = p.now;
        assert!(p.a.create_child(id, vec![l], vec![r], now));
        p.drive();
        let (ca, cb) = (all_children(&p.a_events), all_children(&p.b_events));
        assert_eq!((ca.len(), cb.len()), (2, 2));
        assert_survivors(&p, 2);
        let reqs = create_requests(&p, addr(A_IP, 500));
        assert_eq!(reqs.len(), 1, "{esp_p}");
        sizes.push(reqs[0]);
    }
    // The PFS request carries a KE payload (4 octets of payload header, 2+2 of group and
    // reserved, 32 of X25519 public value) and the DH transform in its proposal (8 octets).
    // That the PFS keys differ from a derivation without g^ir is a unit test of
    // `sa::child_create`.
    assert_eq!(sizes[1] - sizes[0], 40 + 8, "KE payload in the PFS request");
}

#[test]
fn create_child_follows_invalid_ke_payload_once() {
    // A's first ESP proposal uses ECP-256 (its KE); B allows only X25519.
    let mut p = policy_pair(
        "aes256gcm16-ecp256,aes256gcm16-x25519",
        "aes256gcm16-x25519",
    );
    let id = ike_id(&p.a_events);
    let (l, r) = pairs()[1];
    let now = p.now;
    assert!(p.a.create_child(id, vec![l], vec![r], now));
    p.drive();
    assert_eq!(p.b.counters().refused, 1, "one INVALID_KE_PAYLOAD");
    assert_eq!(create_requests(&p, addr(A_IP, 500)).len(), 2, "one retry");
    assert!(failed(&p.a_events).is_empty());
    assert_survivors(&p, 2);

    // A group we do not offer: no retry, ChildSaFailed.
    let mut p = policy_pair("aes256gcm16-ecp256", "aes256gcm16-x25519");
    let id = ike_id(&p.a_events);
    let now = p.now;
    assert!(p.a.create_child(id, vec![l], vec![r], now));
    p.drive();
    // Without a common group the responder already refuses the proposal.
    let f = failed(&p.a_events);
    assert_eq!(f.len(), 1);
    assert!(f[0].1 && f[0].2 == vec![l] && f[0].3 == vec![r]);
    assert!(matches!(
        f[0].0,
        FailReason::NoProposalChosen | FailReason::InvalidKePayload
    ));
    assert_eq!(create_requests(&p, addr(A_IP, 500)).len(), 1);
}

#[test]
fn ike_rekey_moves_four_child_sas_and_a_queued_create() {
    let mut p = four_children();
    let before = assert_survivors(&p, 4);
    let old = ike_id(&p.a_events);
    let now = p.now;
    assert!(p.a.rekey_ike(old, now));
    // The rekey is outstanding: this create waits and must run on the new IKE SA.
    let (l, r) = pairs()[0];
    assert!(p.a.create_child(old, vec![l], vec![r], now));
    p.drive();
    let new = ike_id(&p.a_events);
    assert_ne!(new, old);
    assert_eq!(ike_rekeys(&p.a_events).len(), 1);
    // All four moved with their SPIs, plus the new one on the new IKE SA.
    let after = survivors(&p.a_events);
    assert_eq!(after.len(), 5);
    for (i, o) in &before {
        assert_eq!(after.get(i), Some(&(*o, new)), "moved with its SPIs");
    }
    let added: Vec<_> = after
        .keys()
        .filter(|i| !before.iter().any(|b| b.0 == **i))
        .collect();
    assert_eq!(added.len(), 1);
    let c = &all_children(&p.a_events)[added[0]];
    assert_eq!(c.ike_sa, new);
    assert_eq!(selectors(c), (vec![l], vec![r]));
    assert_survivors(&p, 5);
    assert!(failed(&p.a_events).is_empty());
}

// ------------------------------------------------------------------ hand-driven endpoints

/// Delivers every datagram in flight, one at a time, 1 ms apart; `a_ips` are A's addresses.
/// `b_wildcard` hands B its datagrams on an unspecified local address (a wildcard socket).
fn exchange(
    a: &mut Endpoint,
    b: &mut Endpoint,
    now: &mut Instant,
    a_ip: Ipv4Addr,
    b_wildcard: bool,
) -> Vec<Transmit> {
    let mut log = Vec::new();
    for _ in 0..1000 {
        let mut out: Vec<Transmit> = Vec::new();
        while let Some(t) = a.poll_transmit() {
            out.push(t);
        }
        while let Some(t) = b.poll_transmit() {
            out.push(t);
        }
        if out.is_empty() {
            return log;
        }
        for t in out {
            *now += Duration::from_millis(1);
            if t.remote.ip() == IpAddr::V4(a_ip) {
                let _ = a.handle(*now, t.remote, t.local, &t.payload);
            } else {
                let local = if b_wildcard {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), t.remote.port())
                } else {
                    t.remote
                };
                let _ = b.handle(*now, local, t.local, &t.payload);
            }
            log.push(t);
        }
    }
    panic!("exchange does not end");
}

fn events(ep: &mut Endpoint) -> Vec<Event> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

fn named(name: &str, local: SocketAddr, remote: SocketAddr) -> ConnectionConfig {
    ConnectionConfig::new(
        name,
        local,
        remote,
        Psk::from("k"),
        ike("aes256-sha256-modp2048"),
        esp("aes256gcm16"),
    )
}

#[test]
fn responder_picks_connection_by_local_address() {
    let b_ips = [
        Ipv4Addr::new(192, 0, 2, 2),
        Ipv4Addr::new(192, 0, 2, 3),
        Ipv4Addr::new(192, 0, 2, 4),
    ];
    let gw = Identity::Fqdn("gw.example".into());
    let site = Identity::Fqdn("onprem.example".into());
    let a_conns = (0..3)
        .map(|i| {
            let mut c = named(&format!("t{i}"), addr(A_IP, 500), addr(b_ips[i], 500));
            c.local_id = site.clone();
            c.remote_id = Some(gw.clone());
            c
        })
        .collect();
    let b_conns = (0..3)
        .map(|i| {
            let mut c = named(&format!("r{i}"), addr(b_ips[i], 500), addr(A_IP, 500));
            c.local_id = gw.clone();
            c.remote_id = Some(site.clone());
            c
        })
        .collect();
    let mut a = Endpoint::new(a_conns, Box::new(TestRng::new(1)));
    let mut b = Endpoint::new(b_conns, Box::new(TestRng::new(2)));
    let mut now = Instant::now();
    for i in 0..3 {
        a.initiate(&format!("t{i}"), now).unwrap();
        exchange(&mut a, &mut b, &mut now, A_IP, false);
    }
    let eb = events(&mut b);
    let ups: Vec<(String, SocketAddr)> = eb
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaEstablished { conn, local, .. } => Some((conn.clone(), *local)),
            _ => None,
        })
        .collect();
    assert_eq!(
        ups,
        (0..3)
            .map(|i| (format!("r{i}"), addr(b_ips[i], 500)))
            .collect::<Vec<_>>()
    );
    let children: Vec<String> = eb
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaEstablished(c) => Some(c.conn.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(children, vec!["r0", "r1", "r2"]);
    assert_eq!(Pair::children(&events(&mut a)).len(), 3);
}

#[test]
fn wildcard_local_socket() {
    let mut a = Endpoint::new(
        vec![named("site", addr(A_IP, 500), addr(B_IP, 500))],
        Box::new(TestRng::new(1)),
    );
    let mut b = Endpoint::new(
        vec![named("site", addr(B_IP, 500), addr(A_IP, 500))],
        Box::new(TestRng::new(2)),
    );
    let mut now = Instant::now();
    a.initiate("site", now).unwrap();
    let log = exchange(&mut a, &mut b, &mut now, A_IP, true);
    assert!(
        log.iter()
            .filter(|t| t.local.ip() != IpAddr::V4(A_IP))
            .all(|t| t.local == addr(B_IP, 500))
    );
    let (ea, eb) = (events(&mut a), events(&mut b));
    assert_eq!(
        (Pair::children(&ea).len(), Pair::children(&eb).len()),
        (1, 1)
    );
    assert_mirror(Pair::children(&ea)[0], Pair::children(&eb)[0]);
}

fn deliver(to: &mut Endpoint, t: &Transmit, now: Instant) -> Transmit {
    to.handle(now, t.remote, t.local, &t.payload)
        .expect("message accepted");
    let r = to.poll_transmit().expect("an answer");
    assert!(to.poll_transmit().is_none());
    r
}

fn ike_ups(events: &[Event]) -> Vec<(IkeSaId, bool, Instant)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaEstablished {
                id,
                initiator,
                started,
                ..
            } => Some((*id, *initiator, *started)),
            _ => None,
        })
        .collect()
}

#[test]
fn simultaneous_initiation_keeps_both_and_initial_contact_still_cleans_up() {
    let mut a = Endpoint::new(
        vec![named("site", addr(A_IP, 500), addr(B_IP, 500))],
        Box::new(TestRng::new(1)),
    );
    let mut b = Endpoint::new(
        vec![named("site", addr(B_IP, 500), addr(A_IP, 500))],
        Box::new(TestRng::new(2)),
    );
    let t0 = Instant::now();
    let ms = |n: u64| t0 + Duration::from_millis(n);
    // Both initiate at the same moment; the messages cross. SA 1 is A's, SA 2 is B's; B's SA 2
    // is up before A's IKE_AUTH for SA 1 (with INITIAL_CONTACT) reaches B, but after its
    // IKE_SA_INIT did.
    a.initiate("site", t0).unwrap();
    b.initiate("site", t0).unwrap();
    let a_init = a.poll_transmit().unwrap();
    let b_init = b.poll_transmit().unwrap();
    let b_resp1 = deliver(&mut b, &a_init, ms(1));
    let a_resp2 = deliver(&mut a, &b_init, ms(2));
    let b_auth2 = deliver(&mut b, &a_resp2, ms(3));
    let a_auth2_resp = deliver(&mut a, &b_auth2, ms(4));
    b.handle(
        ms(5),
        a_auth2_resp.remote,
        a_auth2_resp.local,
        &a_auth2_resp.payload,
    )
    .unwrap();
    let a_auth1 = deliver(&mut a, &b_resp1, ms(6));
    let b_auth1_resp = deliver(&mut b, &a_auth1, ms(7));
    a.handle(
        ms(8),
        b_auth1_resp.remote,
        b_auth1_resp.local,
        &b_auth1_resp.payload,
    )
    .unwrap();
    let (ea, eb) = (events(&mut a), events(&mut b));
    assert!(!ike_gone(&ea) && !ike_gone(&eb), "{eb:?}");
    assert_eq!((a.ike_sa_count(), b.ike_sa_count()), (2, 2));
    let (ua, ub) = (ike_ups(&ea), ike_ups(&eb));
    assert_eq!(ua.len(), 2);
    assert_eq!(ub.len(), 2);
    // `started`: IKE_SA_INIT sent (initiator) or received (responder).
    assert!(ua.contains(&(ua.iter().find(|u| u.1).unwrap().0, true, t0)));
    assert!(ua.iter().any(|u| !u.1 && u.2 == ms(2)));
    assert!(ub.iter().any(|u| u.1 && u.2 == t0));
    assert!(ub.iter().any(|u| !u.1 && u.2 == ms(1)));
    assert_eq!(
        (Pair::children(&ea).len(), Pair::children(&eb).len()),
        (2, 2)
    );

    // Neither crossing IKE_AUTH carried INITIAL_CONTACT: each side had the other's setup under
    // way (RFC 7296 §3.10.1: it asserts the IKE SA is the only one).
    // A real re-initiation later, by A rebooted (no state left): its INITIAL_CONTACT drops both
    // older IKE SAs at B.
    let mut a = Endpoint::new(
        vec![named("site", addr(A_IP, 500), addr(B_IP, 500))],
        Box::new(TestRng::new(3)),
    );
    let mut now = t0 + Duration::from_secs(60);
    a.initiate("site", now).unwrap();
    exchange(&mut a, &mut b, &mut now, A_IP, false);
    let eb = events(&mut b);
    let deleted: HashSet<IkeSaId> = eb
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaDeleted { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, ub.iter().map(|u| u.0).collect::<HashSet<_>>());
    assert_eq!(b.ike_sa_count(), 1);
    assert_eq!(ike_ups(&eb).len(), 1);
}
