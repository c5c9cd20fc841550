//! A standby that takes over the same IKE SAs (issue #14; RFC 7296 §2.1-§2.3, §2.8, §2.18):
//! A (initiator) and B (responder) establish, A's IKE SA is exported and imported into A2, a
//! fresh endpoint with A's configuration, and A is dropped. B must never notice: its requests
//! are answered (a retransmission from the carried response cache, byte for byte), A2's own
//! requests continue the message IDs, rekeys and deletes in both directions work, and B never
//! sees a second IKE SA. Also: requests in flight at export time, refused imports, wrong keys,
//! re-anchored timers, and the responder side with UDP encapsulation.

mod common;

use common::*;
use ike::crypto::{SecretBytes, TestRng};
use ike::proposal::EncrAlg;
use ike::{
    ChildSaStatus, ConnectionConfig, DropReason, Endpoint, Event, IkeSaId, IkeSaState, ImportError,
    Lifetime, QueuedRequest, RequestKind, Transmit,
};
use std::net::IpAddr;
use std::time::Duration;

fn cfg(local: std::net::Ipv4Addr, remote: std::net::Ipv4Addr) -> ConnectionConfig {
    conn(local, remote, "k", "aes256-sha256-modp2048", "aes256gcm16")
}

fn up(a: ConnectionConfig, b: ConnectionConfig) -> Pair {
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).expect("initiate");
    p.advance(Duration::from_secs(1));
    assert_survivors(&p, 1);
    p
}

fn ids(p: &Pair) -> (IkeSaId, IkeSaId) {
    (
        current_ike(&p.a_events).expect("A's IKE SA"),
        current_ike(&p.b_events).expect("B's IKE SA"),
    )
}

fn from(ip: std::net::Ipv4Addr, ts: &[Transmit]) -> Vec<Transmit> {
    ts.iter()
        .filter(|t| t.local.ip() == IpAddr::V4(ip))
        .cloned()
        .collect()
}

fn payloads(ts: &[Transmit]) -> Vec<Vec<u8>> {
    ts.iter().map(|t| t.payload.clone()).collect()
}

/// Replaces one side (`b`: B, else A) with a fresh endpoint of configuration `cfg` holding the
/// imported `state`; the old endpoint is dropped. Nothing may be sent on import.
fn take_over(p: &mut Pair, b: bool, cfg: ConnectionConfig, state: IkeSaState) -> IkeSaId {
    let mut fresh = Endpoint::new(vec![cfg], Box::new(TestRng::new(4242)));
    let now = p.now;
    let id = fresh.import_ike_sa(now, state).expect("import");
    assert!(fresh.poll_transmit().is_none(), "nothing is sent on import");
    let old = if b {
        std::mem::replace(&mut p.b, fresh)
    } else {
        std::mem::replace(&mut p.a, fresh)
    };
    drop(old);
    id
}

fn imported(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::IkeSaImported { .. }))
        .collect()
}

fn no_trouble(p: &Pair) {
    assert_eq!(Pair::failures(&p.a_events), vec![], "A: {:?}", p.a_events);
    assert_eq!(Pair::failures(&p.b_events), vec![], "B: {:?}", p.b_events);
    for c in [p.a.counters(), p.b.counters()] {
        assert_eq!(
            (c.bad_message_id, c.integrity, c.unknown_spi, c.unexpected),
            (0, 0, 0, 0),
            "{c:?}"
        );
    }
}

#[test]
fn takeover_continues_the_same_ike_sa() {
    let a_cfg = cfg(A_IP, B_IP);
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, idb) = ids(&p);
    let (child_in, child_out) = assert_survivors(&p, 1)[0];

    // B checks liveness; A answers. That answer is what a retransmission must get again.
    let before = p.sent.len();
    assert!(p.b.send_liveness_check(idb, p.now));
    p.advance(Duration::from_secs(1));
    let req = from(B_IP, &p.sent[before..]);
    let resp = from(A_IP, &p.sent[before..]);
    assert_eq!((req.len(), resp.len()), (1, 1));

    let now = p.now;
    let st = p.a.export_ike_sa(ida, now).expect("established");
    assert_eq!(p.a.export_ike_sas(now), vec![st.clone()]);
    assert_eq!(st.conn, "site");
    assert!(st.initiator);
    assert_eq!(st.id(), ida);
    assert_eq!(st.ispi, ida.0);
    assert_eq!((st.next_msg_id, st.peer_msg_id), (2, 1));
    let last = st.last_response.as_ref().expect("cached response");
    assert_eq!(last.message_id, 0);
    assert_eq!(last.datagrams, payloads(&resp), "the response as sent");
    assert_eq!(st.children.len(), 1);
    let c = &st.children[0];
    assert_eq!((c.inbound_spi, c.outbound_spi), (child_in, child_out));
    assert_eq!(c.status, ChildSaStatus::Active);
    assert!(c.reported);
    assert!(c.rekey_in.is_some() && c.expire_in.is_some());
    assert!(st.rekey_in.is_some() && st.expire_in.is_some());
    assert!(st.established_for >= Duration::from_secs(1));
    assert!(st.in_flight.is_none() && st.queue.is_empty());
    assert!(st.continuable());
    assert!(st.fragmentation && st.initial_contact);
    assert!(!st.nat.udp_encap);

    let id2 = take_over(&mut p, false, a_cfg, st);
    assert_eq!(id2, ida, "the same IKE SA, the same id");
    p.advance(Duration::from_millis(1));
    match imported(&p.a_events).as_slice() {
        [
            Event::IkeSaImported {
                id,
                initiator,
                children,
                conn,
                ..
            },
        ] => {
            assert_eq!((*id, *initiator, conn.as_str()), (ida, true, "site"));
            assert_eq!(children, &vec![(child_in, child_out)]);
        }
        other => panic!("one IkeSaImported expected: {other:?}"),
    }

    // B's last request again (a retransmission): answered from the carried cache, same bytes.
    let r = p.inject(false, req[0].remote, req[0].local, &req[0].payload);
    assert_eq!(r, Err(DropReason::Retransmission));
    let again: Vec<Transmit> = std::iter::from_fn(|| p.a.poll_transmit()).collect();
    assert_eq!(payloads(&again), payloads(&resp), "byte-identical answer");
    assert_eq!(p.a.counters().cached_responses, 1);

    // B's next liveness check: A2 answers, B needs no retransmission.
    assert!(p.b.send_liveness_check(idb, p.now));
    p.advance(Duration::from_secs(30));
    assert_eq!(p.b.counters().retransmits, 0);

    // A2 rekeys the Child SA: message ID 2 continues, B accepts.
    assert!(p.a.rekey_child(ida, p.now));
    p.advance(Duration::from_secs(5));
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (1, 1));
    let (new_in, new_out) = assert_survivors(&p, 1)[0];
    assert_ne!(new_in, child_in);

    // B rekeys the IKE SA: A2 answers and moves the Child SA.
    assert!(p.b.rekey_ike(idb, p.now));
    p.advance(Duration::from_secs(5));
    assert_eq!(ike_rekeys(&p.a_events).len(), 1);
    assert_eq!(ike_rekeys(&p.b_events), ike_rekeys(&p.a_events));
    let (ida2, idb2) = ids(&p);
    assert_ne!(ida2, ida);
    assert_eq!(p.a.ike_sa_count(), 1, "the replaced SA is deleted");
    assert_eq!(assert_survivors(&p, 1)[0], (new_in, new_out));

    // B deletes the Child SA, then the IKE SA: A2 reports both.
    assert!(p.b.delete_child_sa(new_out, p.now));
    p.advance(Duration::from_secs(5));
    assert!(p.a_events.iter().any(|e| matches!(e,
        Event::ChildSaDeleted { inbound_spi, id, .. } if *inbound_spi == new_in && *id == ida2)));
    assert_survivors(&p, 0);
    assert!(p.b.delete_ike_sa(idb2, p.now));
    p.advance(Duration::from_secs(5));
    assert!(
        p.a_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDeleted { id, .. } if *id == ida2))
    );
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (0, 0));

    assert_eq!(
        Pair::established(&p.b_events),
        1,
        "B never saw a new IKE SA"
    );
    assert_eq!(Pair::established(&p.a_events), 1, "only the original's");
    no_trouble(&p);
}

#[test]
fn retransmitted_request_gets_the_cached_fragments() {
    let mut a_cfg = cfg(A_IP, B_IP);
    a_cfg.fragment_size = 170;
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, idb) = ids(&p);
    // B asks for an additional Child SA; A's answer needs several SKF fragments (RFC 7383).
    let before = p.sent.len();
    assert!(p.b.create_child(idb, vec![], vec![], p.now));
    p.advance(Duration::from_secs(1));
    assert_survivors(&p, 2);
    let req = from(B_IP, &p.sent[before..]);
    let resp = from(A_IP, &p.sent[before..]);
    assert_eq!(req.len(), 1);
    assert!(resp.len() > 1, "fragmented answer: {}", resp.len());

    let st = p.a.export_ike_sa(ida, p.now).expect("established");
    assert_eq!(
        st.last_response.as_ref().map(|r| r.datagrams.clone()),
        Some(payloads(&resp))
    );
    assert_eq!(st.children.len(), 2);
    take_over(&mut p, false, a_cfg, st);
    let r = p.inject(false, req[0].remote, req[0].local, &req[0].payload);
    assert_eq!(r, Err(DropReason::Retransmission));
    let again: Vec<Transmit> = std::iter::from_fn(|| p.a.poll_transmit()).collect();
    assert_eq!(
        payloads(&again),
        payloads(&resp),
        "every fragment again, same bytes"
    );

    // And the next request from B is a new one, fragmented answer and all.
    assert!(p.b.rekey_child(idb, p.now));
    p.advance(Duration::from_secs(5));
    assert_eq!(rekeyed(&p.a_events), 2);
    assert_survivors(&p, 2);
    assert_eq!(Pair::established(&p.b_events), 1);
    no_trouble(&p);
}

#[test]
fn timers_are_reanchored_at_import() {
    let mut a_cfg = cfg(A_IP, B_IP);
    a_cfg.child_lifetime = Lifetime {
        rekey_time: Duration::from_secs(600),
        life_time: Duration::from_secs(900),
        jitter: Duration::ZERO,
    };
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, _) = ids(&p);
    p.advance(Duration::from_secs(199));
    let st = p.a.export_ike_sa(ida, p.now).expect("established");
    let rekey_in = st.children[0].rekey_in.expect("scheduled");
    assert!(
        (Duration::from_secs(399)..=Duration::from_secs(401)).contains(&rekey_in),
        "{rekey_in:?}"
    );
    let expire_in = st.children[0].expire_in.expect("scheduled");
    assert_eq!(expire_in - rekey_in, Duration::from_secs(300));
    // The state reaches the standby 100 s late (the master lived on without news meanwhile):
    // its timers count from the import, so the rekey comes 100 s later than the original's.
    p.advance(Duration::from_secs(100));
    assert_eq!(rekeyed(&p.a_events), 0);
    take_over(&mut p, false, a_cfg, st);
    p.advance(rekey_in - Duration::from_secs(1));
    assert_eq!(
        rekeyed(&p.a_events),
        0,
        "not before the re-anchored soft lifetime"
    );
    p.advance(Duration::from_secs(3));
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (1, 1));
    assert!(
        p.a_events.iter().any(|e| matches!(
            e,
            Event::ChildSaRekeyed {
                outbound_now: true,
                ..
            }
        )),
        "A2 started it"
    );
    assert_survivors(&p, 1);
    assert_eq!(Pair::established(&p.b_events), 1);
    no_trouble(&p);
}

/// A's liveness check is in flight at export; `answered`: B got it and answered, but the
/// answer was lost with A; otherwise the request itself was lost.
fn in_flight_liveness(answered: bool) {
    let a_cfg = cfg(A_IP, B_IP);
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, _) = ids(&p);
    assert!(p.a.send_liveness_check(ida, p.now));
    let st = p.a.export_ike_sa(ida, p.now).expect("established");
    let f = st.in_flight.as_ref().expect("in flight");
    assert_eq!(f.kind, RequestKind::Liveness);
    assert_eq!((f.request.message_id, f.transmissions), (2, 1));
    assert_eq!(st.next_msg_id, 3);
    assert!(st.continuable());
    let t = p.a.poll_transmit().expect("the request");
    assert_eq!(f.request.datagrams, vec![t.payload.clone()]);
    if answered {
        p.b.handle(p.now, t.remote, t.local, &t.payload)
            .expect("B answers");
        assert!(p.b.poll_transmit().is_some(), "answer lost");
    }
    take_over(&mut p, false, a_cfg, st);
    p.advance(Duration::from_secs(3));
    assert_eq!(
        p.a.counters().retransmits,
        0,
        "one timeout after the import"
    );
    p.advance(Duration::from_secs(2));
    assert_eq!(p.a.counters().retransmits, 1, "the same request again");
    assert_eq!(
        p.b.counters().cached_responses,
        u64::from(answered),
        "B answers a request it saw from its cache (RFC 7296 §2.1)"
    );
    // Message ID 3 next: B takes it.
    assert!(p.a.rekey_child(ida, p.now));
    p.advance(Duration::from_secs(5));
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (1, 1));
    assert_survivors(&p, 1);
    assert_eq!(Pair::established(&p.b_events), 1);
    no_trouble(&p);
}

#[test]
fn in_flight_liveness_check_lost_is_retransmitted_by_the_standby() {
    in_flight_liveness(false);
}

#[test]
fn in_flight_liveness_check_answered_is_answered_again_from_the_peer_cache() {
    in_flight_liveness(true);
}

#[test]
fn in_flight_child_delete_completes_on_the_standby() {
    let a_cfg = cfg(A_IP, B_IP);
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, _) = ids(&p);
    // A second Child SA, so the IKE SA keeps one.
    assert!(p.a.create_child(ida, vec![], vec![], p.now));
    p.advance(Duration::from_secs(1));
    let (gone, _) = assert_survivors(&p, 2)[0];
    assert!(p.a.delete_child_sa(gone, p.now));
    let st = p.a.export_ike_sa(ida, p.now).expect("established");
    assert_eq!(
        st.in_flight.as_ref().map(|f| f.kind),
        Some(RequestKind::DeleteChild { inbound_spi: gone })
    );
    let c = st
        .children
        .iter()
        .find(|c| c.inbound_spi == gone)
        .expect("child");
    assert_eq!(c.status, ChildSaStatus::Deleting);
    while p.a.poll_transmit().is_some() {} // lost with A
    take_over(&mut p, false, a_cfg, st);
    p.advance(Duration::from_secs(10));
    assert!(
        p.a_events.iter().any(
            |e| matches!(e, Event::ChildSaDeleted { inbound_spi, .. } if *inbound_spi == gone)
        )
    );
    assert_survivors(&p, 1);
    no_trouble(&p);
}

#[test]
fn create_child_sa_in_flight_is_refused_and_a_fresh_ike_sa_follows() {
    let a_cfg = cfg(A_IP, B_IP);
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, idb) = ids(&p);
    let (child_in, _) = assert_survivors(&p, 1)[0];
    let now = p.now;
    let mut kinds = Vec::new();
    // Each of our CREATE_CHILD_SA requests, exported while outstanding, on a clone of A's
    // state (the request never leaves A).
    for start in 0..3 {
        let mut a = Endpoint::new(vec![a_cfg.clone()], Box::new(TestRng::new(9)));
        let st = p.a.export_ike_sa(ida, now).expect("established");
        a.import_ike_sa(now, st).expect("import");
        match start {
            0 => assert!(a.rekey_child(ida, now)),
            1 => assert!(a.rekey_ike(ida, now)),
            _ => assert!(a.create_child(ida, vec![], vec![], now)),
        }
        let st = a.export_ike_sa(ida, now).expect("established");
        let kind = st.in_flight.as_ref().expect("in flight").kind;
        assert!(!kind.continues_after_import() && !st.continuable());
        let mut a2 = Endpoint::new(vec![a_cfg.clone()], Box::new(TestRng::new(10)));
        assert_eq!(
            a2.import_ike_sa(now, st),
            Err(ImportError::ExchangeInFlight(kind))
        );
        assert_eq!(a2.ike_sa_count(), 0);
        assert!(a2.poll_event().is_none() && a2.poll_transmit().is_none());
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        vec![
            RequestKind::RekeyChild {
                inbound_spi: child_in
            },
            RequestKind::RekeyIke,
            RequestKind::CreateChild
        ]
    );
    // The fallback: the standby starts a fresh IKE SA with INITIAL_CONTACT; B drops the old
    // one (RFC 7296 §3.10.1).
    let fresh = Endpoint::new(vec![a_cfg], Box::new(TestRng::new(11)));
    drop(std::mem::replace(&mut p.a, fresh));
    let now = p.now;
    p.a.initiate("site", now).expect("initiate");
    p.advance(Duration::from_secs(2));
    assert_eq!(Pair::established(&p.b_events), 2);
    assert!(
        p.b_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDeleted { id, .. } if *id == idb))
    );
    assert_eq!(p.b.ike_sa_count(), 1);
}

#[test]
fn bad_states_are_refused_without_side_effects() {
    let a_cfg = cfg(A_IP, B_IP);
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, idb) = ids(&p);
    assert!(p.b.send_liveness_check(idb, p.now));
    p.advance(Duration::from_secs(1));
    let now = p.now;
    let good = p.a.export_ike_sa(ida, now).expect("established");
    let mut a2 = Endpoint::new(vec![a_cfg.clone()], Box::new(TestRng::new(5)));
    let refuse = |a2: &mut Endpoint, st: IkeSaState| {
        let r = a2.import_ike_sa(now, st);
        assert!(r.is_err(), "{r:?}");
        r.unwrap_err()
    };

    let mut st = good.clone();
    st.conn = "elsewhere".into();
    assert_eq!(
        refuse(&mut a2, st),
        ImportError::UnknownConnection("elsewhere".into())
    );

    // Every key one octet too long, then one too short.
    for grow in [true, false] {
        for k in 0..7 {
            let mut st = good.clone();
            let keys = &mut st.keys;
            let key = [
                &mut keys.sk_d,
                &mut keys.sk_ai,
                &mut keys.sk_ar,
                &mut keys.sk_ei,
                &mut keys.sk_er,
                &mut keys.sk_pi,
                &mut keys.sk_pr,
            ]
            .into_iter()
            .nth(k)
            .expect("seven keys");
            let mut v = key.as_bytes().to_vec();
            if grow {
                v.push(0);
            } else {
                v.pop();
            }
            *key = SecretBytes::new(v);
            assert!(
                matches!(refuse(&mut a2, st), ImportError::Keys(_)),
                "key {k}"
            );
        }
    }

    let mut st = good.clone();
    st.suite.encr = EncrAlg::aes_cbc(128);
    assert!(matches!(
        refuse(&mut a2, st),
        ImportError::ConfigMismatch(_)
    ));
    let mut st = good.clone();
    st.children[0].suite.encr = EncrAlg::aes_gcm16(128);
    assert!(matches!(
        refuse(&mut a2, st),
        ImportError::ConfigMismatch(_)
    ));
    let mut st = good.clone();
    st.local = addr(std::net::Ipv4Addr::new(192, 0, 2, 99), 500);
    assert!(matches!(
        refuse(&mut a2, st),
        ImportError::ConfigMismatch(_)
    ));

    let malformed: Vec<(&str, Mangle)> = vec![
        ("zero SPI", |s| s.rspi = 0),
        ("cache for another ID", |s| {
            s.last_response.as_mut().expect("cached").message_id = 7
        }),
        ("empty cache", |s| {
            s.last_response.as_mut().expect("cached").datagrams.clear()
        }),
        ("garbage cache", |s| {
            s.last_response.as_mut().expect("cached").datagrams = vec![vec![1, 2, 3]]
        }),
        ("rekeying without exchange", |s| {
            s.children[0].status = ChildSaStatus::Rekeying
        }),
        ("reserved SPI", |s| s.children[0].inbound_spi = 7),
        ("SPI twice", |s| {
            let c = s.children[0].clone();
            s.children.push(c)
        }),
        ("queue for unknown child", |s| {
            s.queue
                .push(QueuedRequest::DeleteChild { inbound_spi: 4096 })
        }),
        ("lifetime beyond the clock", |s| {
            s.rekey_in = Some(Duration::MAX)
        }),
        ("child lifetime beyond the clock", |s| {
            s.children[0].expire_in = Some(Duration::MAX)
        }),
    ];
    for (what, f) in malformed {
        let mut st = good.clone();
        f(&mut st);
        assert!(
            matches!(refuse(&mut a2, st), ImportError::Malformed(_)),
            "{what}"
        );
    }
    assert_eq!(a2.ike_sa_count(), 0);
    assert!(a2.poll_event().is_none() && a2.poll_transmit().is_none());

    // The good state imports once; twice is a duplicate.
    assert_eq!(a2.import_ike_sa(now, good.clone()), Ok(ida));
    assert_eq!(
        a2.import_ike_sa(now, good.clone()),
        Err(ImportError::Duplicate(ida.0))
    );
    // Another IKE SA claiming the same Child SA.
    let mut other = good.clone();
    other.ispi ^= 1;
    other.last_response = None; // its headers name the other SPIs
    assert_eq!(
        a2.import_ike_sa(now, other),
        Err(ImportError::ChildSpiInUse(good.children[0].inbound_spi))
    );
    assert_eq!(a2.ike_sa_count(), 1);
    // An age beyond the clock is not an error: it is re-anchored at `now`.
    assert!(a2.forget_ike_sa(ida));
    let mut old = good.clone();
    old.established_for = Duration::MAX;
    old.idle_for = Some(Duration::MAX);
    assert_eq!(a2.import_ike_sa(now, old), Ok(ida));
    assert!(a2.forget_ike_sa(ida));
    assert!(!a2.forget_ike_sa(ida));
    assert_eq!(
        a2.import_ike_sa(now, good),
        Ok(ida),
        "forget frees every table"
    );
}

#[test]
fn mutated_states_never_panic() {
    let a_cfg = cfg(A_IP, B_IP);
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, idb) = ids(&p);
    assert!(p.b.send_liveness_check(idb, p.now));
    p.advance(Duration::from_secs(1));
    assert!(p.a.delete_child_sa(assert_survivors(&p, 1)[0].0, p.now));
    let now = p.now;
    let good = p.a.export_ike_sa(ida, now).expect("established");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ok = 0;
    for _ in 0..3000 {
        let mut st = good.clone();
        for _ in 0..1 + rnd() % 3 {
            let v = rnd();
            match rnd() % 16 {
                0 => st.ispi = v,
                1 => st.rspi = v,
                2 => st.initiator = !st.initiator,
                3 => st.next_msg_id = v as u32,
                4 => st.peer_msg_id = v as u32,
                5 => st.keys.sk_ei = SecretBytes::new(vec![v as u8; (v % 48) as usize]),
                6 => st.keys.sk_ai = SecretBytes::new(vec![v as u8; (v % 48) as usize]),
                7 => {
                    st.suite.encr =
                        EncrAlg::new(ike::transform::EncrId(v as u16 % 32), Some(v as u16 % 300))
                }
                8 => st.suite.integ = Some(ike::transform::IntegId(v as u16 % 16)),
                9 => st.rekey_in = Some(Duration::from_nanos(v)),
                10 => {
                    if let Some(r) = st.last_response.as_mut()
                        && let Some(d) = r.datagrams.first_mut()
                        && !d.is_empty()
                    {
                        let i = (v as usize) % d.len();
                        d[i] ^= 1 << (v % 8);
                    }
                }
                11 => {
                    if let Some(f) = st.in_flight.as_mut() {
                        f.transmissions = v as u32;
                        f.request.message_id = (v >> 32) as u32;
                    }
                }
                12 => st
                    .children
                    .iter_mut()
                    .for_each(|c| c.inbound_spi = v as u32),
                13 => st.children.clear(),
                14 => st.queue.push(QueuedRequest::RekeyChild {
                    inbound_spi: v as u32,
                }),
                _ => st.established_for = Duration::from_secs(v),
            }
        }
        let mut a2 = Endpoint::new(vec![a_cfg.clone()], Box::new(TestRng::new(v_seed(ok))));
        if let Ok(id) = a2.import_ike_sa(now, st) {
            ok += 1;
            // Whatever imported runs without panicking.
            a2.handle_timeout(now + Duration::from_secs(3600));
            assert!(a2.forget_ike_sa(id) || a2.ike_sa_count() == 0);
        }
    }
    assert!(ok > 0, "some mutations are harmless");
}

/// Spoils one field of a state.
type Mangle = fn(&mut IkeSaState);

fn v_seed(n: u64) -> u64 {
    n.wrapping_mul(31).wrapping_add(7)
}

#[test]
fn wrong_key_bytes_fail_authentication_at_both_ends() {
    let a_cfg = cfg(A_IP, B_IP);
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, idb) = ids(&p);
    let mut st = p.a.export_ike_sa(ida, p.now).expect("established");
    let flip = |k: &SecretBytes| {
        let mut v = k.as_bytes().to_vec();
        v[0] ^= 0x80;
        SecretBytes::new(v)
    };
    st.keys.sk_ai = flip(&st.keys.sk_ai);
    st.keys.sk_ar = flip(&st.keys.sk_ar);
    st.keys.sk_ei = flip(&st.keys.sk_ei);
    st.keys.sk_er = flip(&st.keys.sk_er);
    take_over(&mut p, false, a_cfg, st);
    // B's liveness check: A2 cannot authenticate it (nor its retransmissions).
    assert!(p.b.send_liveness_check(idb, p.now));
    p.advance(Duration::from_secs(1));
    assert_eq!(p.a.counters().integrity, 1);
    // A2's own request: B cannot authenticate it.
    assert!(p.a.send_liveness_check(ida, p.now));
    p.advance(Duration::from_secs(1));
    assert_eq!(p.b.counters().integrity, 1);
    // Both give up after their retransmissions; every copy was dropped, nothing answered.
    p.advance(Duration::from_secs(600));
    let tries = u64::from(ike::RetransmitConfig::default().tries);
    assert_eq!(p.a.counters().integrity, tries);
    assert_eq!(p.b.counters().integrity, tries);
    assert_eq!(Pair::failures(&p.b_events), vec![ike::FailReason::Timeout]);
    assert!(Pair::failures(&p.a_events).contains(&ike::FailReason::Timeout));
    assert_eq!(Pair::established(&p.b_events), 1);
}

#[test]
fn debug_prints_no_secret() {
    let a_cfg = cfg(A_IP, B_IP);
    let mut p = up(a_cfg, cfg(B_IP, A_IP));
    let (ida, idb) = ids(&p);
    assert!(p.b.send_liveness_check(idb, p.now));
    p.advance(Duration::from_secs(1));
    assert!(p.a.send_liveness_check(ida, p.now));
    let st = p.a.export_ike_sa(ida, p.now).expect("established");
    let dbg = format!("{st:?} {st:#?}");
    let k = &st.keys;
    for key in [
        &k.sk_d, &k.sk_ai, &k.sk_ar, &k.sk_ei, &k.sk_er, &k.sk_pi, &k.sk_pr,
    ] {
        let b = key.as_bytes();
        assert!(b.len() >= 16);
        assert!(
            !dbg.contains(&hex::encode(&b[..6])),
            "hex key bytes in {dbg}"
        );
        let dec = format!("{:?}", &b[..6]);
        assert!(
            !dbg.contains(dec.trim_end_matches(']')),
            "key bytes in {dbg}"
        );
        let pretty = format!("{:#?}", &b[..3]);
        assert!(
            !dbg.contains(pretty.trim_end_matches(']').trim_end()),
            "key bytes in {dbg}"
        );
    }
    for m in [
        st.last_response.as_ref().expect("cached"),
        &st.in_flight.as_ref().expect("in flight").request,
    ] {
        let d = &m.datagrams[0];
        let dec = format!("{:?}", &d[d.len() - 6..]);
        assert!(
            !dbg.contains(dec.trim_end_matches(']')),
            "message bytes in {dbg}"
        );
    }
    assert!(dbg.contains("redacted"));
}

#[test]
fn responder_takeover_with_udp_encapsulation() {
    let mut a_cfg = cfg(A_IP, B_IP);
    a_cfg.force_encap = true;
    let b_cfg = cfg(B_IP, A_IP);
    let mut p = up(a_cfg, b_cfg.clone());
    let (ida, idb) = ids(&p);
    let st = p.b.export_ike_sa(idb, p.now).expect("established");
    assert!(!st.initiator);
    assert_eq!(st.id(), idb);
    assert_eq!(st.rspi, idb.0);
    assert!(st.nat.udp_encap, "{:?}", st.nat);
    assert!(st.nat.peer_behind_nat && !st.nat.local_behind_nat);
    assert_eq!((st.local.port(), st.remote.port()), (4500, 4500));
    assert_eq!((st.next_msg_id, st.peer_msg_id), (0, 2));
    take_over(&mut p, true, b_cfg, st);
    p.advance(Duration::from_millis(1));
    assert!(p.b_events.iter().any(|e| matches!(
        e,
        Event::IkeSaImported {
            udp_encap: true,
            initiator: false,
            ..
        }
    )));

    // A's requests: a liveness check, a Child SA rekey, an IKE SA rekey. B2 answers them all.
    assert!(p.a.send_liveness_check(ida, p.now));
    p.advance(Duration::from_secs(1));
    assert!(p.a.rekey_child(ida, p.now));
    p.advance(Duration::from_secs(2));
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (1, 1));
    // B2's own request (message ID 0 of its role) over UDP 4500.
    assert!(p.b.send_liveness_check(idb, p.now));
    p.advance(Duration::from_secs(1));
    assert!(p.a.rekey_ike(ida, p.now));
    p.advance(Duration::from_secs(2));
    assert_eq!(ike_rekeys(&p.a_events).len(), 1);
    assert_eq!(ike_rekeys(&p.b_events), ike_rekeys(&p.a_events));
    assert_survivors(&p, 1);
    assert_eq!(p.a.counters().retransmits + p.b.counters().retransmits, 0);
    assert_eq!(
        Pair::established(&p.a_events),
        1,
        "A never saw a new IKE SA"
    );
    no_trouble(&p);
}

#[test]
fn forget_drops_silently() {
    let mut p = up(cfg(A_IP, B_IP), cfg(B_IP, A_IP));
    let (ida, idb) = ids(&p);
    p.advance(Duration::from_millis(1));
    let events = p.a_events.len();
    assert!(p.a.forget_ike_sa(ida));
    assert!(p.a.poll_transmit().is_none() && p.a.poll_event().is_none());
    assert_eq!(p.a.ike_sa_count(), 0);
    assert!(p.a.poll_timeout().is_none());
    assert!(p.b.send_liveness_check(idb, p.now));
    p.advance(Duration::from_secs(1));
    assert_eq!(p.a.counters().unknown_spi, 1);
    assert_eq!(p.a_events.len(), events);
}

#[test]
fn export_covers_only_established_current_sas() {
    let mut p = Pair::new(cfg(A_IP, B_IP), cfg(B_IP, A_IP));
    let now = p.now;
    let id = p.a.initiate("site", now).expect("initiate");
    assert!(p.a.export_ike_sas(now).is_empty(), "not yet established");
    assert!(p.a.export_ike_sa(id, now).is_none());
    p.advance(Duration::from_secs(1));
    assert_eq!(p.a.export_ike_sas(p.now).len(), 1);
    assert_eq!(p.b.export_ike_sas(p.now).len(), 1);
    // While the rekeyed SA waits for its DELETE, only its successor is exported.
    assert!(p.a.rekey_ike(id, p.now));
    p.advance(Duration::from_millis(25));
    assert_eq!(
        p.a.ike_sa_count(),
        2,
        "old SA waits for the DELETE's answer"
    );
    let (new_a, _) = ids(&p);
    let all = p.a.export_ike_sas(p.now);
    assert_eq!(
        all.iter().map(IkeSaState::id).collect::<Vec<_>>(),
        vec![new_a]
    );
    assert!(p.a.export_ike_sa(id, p.now).is_none());
    assert_eq!(all[0].children.len(), 1);
    assert_eq!((all[0].next_msg_id, all[0].peer_msg_id), (0, 0));
}

#[test]
fn queued_work_starts_at_the_first_timeout_after_import() {
    let a_cfg = cfg(A_IP, B_IP);
    let mut p = up(a_cfg.clone(), cfg(B_IP, A_IP));
    let (ida, _) = ids(&p);
    assert!(p.a.create_child(ida, vec![], vec![], p.now));
    p.advance(Duration::from_secs(1));
    let kids = assert_survivors(&p, 2);
    let mut st = p.a.export_ike_sa(ida, p.now).expect("established");
    // As mapped from a replica that carries a Child SA's status but not the queue: one Child SA
    // marked for deletion without its DELETE queued, a rekey of the other queued.
    let (gone, kept) = (kids[0].0, kids[1].0);
    for c in &mut st.children {
        if c.inbound_spi == gone {
            c.status = ChildSaStatus::Deleting;
        }
    }
    st.queue = vec![QueuedRequest::RekeyChild { inbound_spi: kept }];
    take_over(&mut p, false, a_cfg, st);
    let now = p.now;
    assert_eq!(
        p.a.poll_timeout(),
        Some(now),
        "due at once, but not sent by the import"
    );
    p.advance(Duration::from_secs(5));
    assert!(
        p.a_events.iter().any(
            |e| matches!(e, Event::ChildSaDeleted { inbound_spi, .. } if *inbound_spi == gone)
        )
    );
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (1, 1));
    assert_survivors(&p, 1);
    no_trouble(&p);
}
