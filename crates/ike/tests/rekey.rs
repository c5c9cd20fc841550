//! Child SA rekeying with CREATE_CHILD_SA (RFC 7296 §1.3.3, §2.8) between two in-memory
//! endpoints with a simulated clock: scheduled (soft lifetime with jitter) and on-demand
//! rekeys from either side, with and without PFS, hard expiry, loss and reordering,
//! make-before-break events, Child SA delete and graceful shutdown.

mod common;
use common::*;
use ike::{ConnectionConfig, Event, Lifetime};
use std::time::Duration;

fn short(c: &mut ConnectionConfig, rekey: u64, life: u64, jitter: u64) {
    c.child_lifetime = Lifetime {
        rekey_time: Duration::from_secs(rekey),
        life_time: Duration::from_secs(life),
        jitter: Duration::from_secs(jitter),
    };
}

fn pair(esp_p: &str, a_life: (u64, u64, u64), b_life: (u64, u64, u64), seed: u64) -> Pair {
    let mut a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", esp_p);
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", esp_p);
    short(&mut a, a_life.0, a_life.1, a_life.2);
    short(&mut b, b_life.0, b_life.1, b_life.2);
    let mut p = Pair::with_seed(a, b, seed);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(5));
    assert_eq!(assert_survivors(&p, 1).len(), 1);
    p
}

const LONG: (u64, u64, u64) = (100_000, 200_000, 0);

fn ike_id(p: &Pair, a: bool) -> ike::IkeSaId {
    let ev = if a { &p.a_events } else { &p.b_events };
    ev.iter()
        .find_map(|e| match e {
            Event::IkeSaEstablished { id, .. } => Some(*id),
            _ => None,
        })
        .unwrap()
}

#[test]
fn scheduled_rekey_without_pfs() {
    // A rekeys at 100 s minus up to 10 s of jitter; B would only at 1000 s.
    let mut p = pair("aes256gcm16", (100, 200, 10), (1000, 2000, 0), 1);
    let first = assert_survivors(&p, 1)[0];
    // pair() already spent 5 s: 89 s since the Child SA came up.
    p.advance(Duration::from_secs(84));
    assert_eq!(
        rekeyed(&p.a_events),
        0,
        "not before the soft lifetime minus jitter"
    );
    p.advance(Duration::from_secs(15));
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (1, 1));
    let now = assert_survivors(&p, 1)[0];
    assert_ne!(now, first);
    // A initiated: outbound switches at once; B (responder) waits for the DELETE.
    let a_ev = p.a_events.iter().find_map(|e| match e {
        Event::ChildSaRekeyed {
            outbound_now,
            old_inbound_spi,
            new,
            ..
        } => Some((*outbound_now, *old_inbound_spi, new.initiator)),
        _ => None,
    });
    assert_eq!(a_ev, Some((true, first.0, true)));
    let b_ev = p.b_events.iter().find_map(|e| match e {
        Event::ChildSaRekeyed {
            outbound_now,
            old_inbound_spi,
            ..
        } => Some((*outbound_now, *old_inbound_spi)),
        _ => None,
    });
    assert_eq!(b_ev, Some((false, first.1)));
    // The old SA is deleted on both sides after the new one was reported.
    assert_eq!(
        (child_deleted(&p.a_events), child_deleted(&p.b_events)),
        (1, 1)
    );
    let pos_new = p
        .b_events
        .iter()
        .position(|e| matches!(e, Event::ChildSaRekeyed { .. }))
        .unwrap();
    let pos_del = p
        .b_events
        .iter()
        .position(
            |e| matches!(e, Event::ChildSaDeleted { inbound_spi, .. } if *inbound_spi == first.1),
        )
        .unwrap();
    assert!(pos_new < pos_del);
    // 20 further rekeys over 2000 s: still exactly one pair, the IKE SA untouched.
    p.advance(Duration::from_secs(2000));
    assert!(rekeyed(&p.a_events) >= 20, "{}", rekeyed(&p.a_events));
    assert_eq!(rekeyed(&p.a_events), rekeyed(&p.b_events));
    assert_survivors(&p, 1);
    assert_eq!(Pair::failures(&p.a_events), vec![]);
}

#[test]
fn scheduled_rekey_with_pfs_from_responder() {
    for esp_p in [
        "aes256gcm16-x25519",
        "aes128-sha256-modp2048",
        "aes256gcm16-ecp384",
    ] {
        // B (the IKE responder) rekeys first.
        let mut p = pair(esp_p, LONG, (60, 120, 5), 2);
        let first = assert_survivors(&p, 1)[0];
        p.advance(Duration::from_secs(70));
        assert_eq!(
            (rekeyed(&p.a_events), rekeyed(&p.b_events)),
            (1, 1),
            "{esp_p}"
        );
        let now = assert_survivors(&p, 1)[0];
        assert_ne!(now, first);
        let (ca, cb) = (all_children(&p.a_events), all_children(&p.b_events));
        // New keys, unrelated to the old ones.
        assert_ne!(ca[&now.0].inbound, ca[&first.0].inbound);
        assert!(cb[&now.1].initiator && !ca[&now.0].initiator);
    }
}

#[test]
fn on_demand_rekey_both_apis_under_loss() {
    let mut p = pair("aes256gcm16-ecp256", LONG, LONG, 3);
    let first = assert_survivors(&p, 1)[0];
    let id = ike_id(&p, true);
    // Lose the first CREATE_CHILD_SA request and the first DELETE response.
    let base = p.sent.len() as u64;
    p.lose = Box::new(move |seq, _| seq == base || seq == base + 3);
    let now = p.now;
    assert!(p.a.rekey_child(id, now));
    p.advance(Duration::from_secs(60));
    let second = assert_survivors(&p, 1)[0];
    assert_ne!(second, first);
    assert!(p.a.counters().retransmits >= 1);
    // B's data plane hits its soft byte limit on its inbound SA.
    let now = p.now;
    assert!(p.b.rekey_child_spi(second.1, now));
    assert!(!p.b.rekey_child_spi(0xdead_beef, now));
    p.advance(Duration::from_secs(60));
    let third = assert_survivors(&p, 1)[0];
    assert_ne!(third, second);
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (2, 2));
    assert_eq!(
        (child_deleted(&p.a_events), child_deleted(&p.b_events)),
        (2, 2)
    );
}

#[test]
fn rekey_with_reordering_and_random_loss() {
    for seed in 1..=8u64 {
        let mut p = pair("aes256gcm16-x25519", (50, 400, 20), (55, 400, 20), seed);
        let mut st = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        p.lose = Box::new(move |_, _| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            st % 100 < 10
        });
        p.jitter_ms = 2000;
        p.advance(Duration::from_secs(300));
        p.lose = Box::new(|_, _| false);
        p.jitter_ms = 0;
        p.advance(Duration::from_secs(30));
        if !Pair::failures(&p.a_events).is_empty() || !Pair::failures(&p.b_events).is_empty() {
            // Five lost transmissions in a row end the IKE SA on both sides: nothing survives.
            assert_survivors(&p, 0);
            continue;
        }
        assert!(rekeyed(&p.a_events) >= 3, "seed {seed}");
        // Wait for any DELETE of a replaced SA still in flight at the cut.
        let s = survivors(&p.a_events).len();
        assert!(s == 1 || s == 2, "seed {seed}: {s}");
        if s == 2 {
            p.advance(Duration::from_secs(20));
        }
        assert_survivors(&p, 1);
    }
}

#[test]
fn hard_lifetime_deletes_unreplaced_child() {
    // A's soft lifetime lies beyond its hard one: the SA is deleted, never rekeyed.
    let mut p = pair("aes256gcm16", (500, 100, 0), LONG, 4);
    p.advance(Duration::from_secs(94));
    assert_survivors(&p, 1);
    p.advance(Duration::from_secs(5));
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (0, 0));
    assert_eq!(
        (child_deleted(&p.a_events), child_deleted(&p.b_events)),
        (1, 1)
    );
    assert_survivors(&p, 0);
    // The IKE SA lives on.
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
}

#[test]
fn delete_child_and_shutdown() {
    let mut p = pair("aes256gcm16", LONG, LONG, 5);
    let first = assert_survivors(&p, 1)[0];
    let now = p.now;
    assert!(p.b.delete_child_sa(first.1, now));
    assert!(!p.b.delete_child_sa(first.1, now), "already deleting");
    p.advance(Duration::from_secs(5));
    assert_survivors(&p, 0);
    assert_eq!(
        (child_deleted(&p.a_events), child_deleted(&p.b_events)),
        (1, 1)
    );
    // Graceful shutdown: A deletes its IKE SA, both sides report it.
    let now = p.now;
    p.a.shutdown(now);
    p.advance(Duration::from_secs(5));
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (0, 0));
    let del = |ev: &[Event]| {
        ev.iter()
            .filter(|e| matches!(e, Event::IkeSaDeleted { .. }))
            .count()
    };
    assert_eq!((del(&p.a_events), del(&p.b_events)), (1, 1));
}

#[test]
fn shutdown_with_child_and_pending_rekey() {
    let mut p = pair("aes256gcm16", LONG, LONG, 6);
    let id = ike_id(&p, true);
    let now = p.now;
    assert!(p.a.rekey_child(id, now));
    p.a.shutdown(now);
    p.advance(Duration::from_secs(10));
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (0, 0));
    assert_survivors(&p, 0);
}

#[test]
fn child_rekey_follows_invalid_ke_payload() {
    // A offers ECP-256 first (its KE), then X25519; B allows only X25519: B answers
    // INVALID_KE_PAYLOAD and A repeats the rekey with an X25519 KE.
    let mut a = conn(
        A_IP,
        B_IP,
        "k",
        "aes256-sha256-modp2048",
        "aes256gcm16-ecp256,aes256gcm16-x25519",
    );
    let b = conn(
        B_IP,
        A_IP,
        "k",
        "aes256-sha256-modp2048",
        "aes256gcm16-x25519",
    );
    short(&mut a, 100_000, 200_000, 0);
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(2));
    let first = assert_survivors(&p, 1)[0];
    let now = p.now;
    assert!(p.a.rekey_child(ike_id(&p, true), now));
    p.advance(Duration::from_secs(5));
    assert_eq!(p.b.counters().refused, 1, "one INVALID_KE_PAYLOAD");
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (1, 1));
    assert_ne!(assert_survivors(&p, 1)[0], first);
}

#[test]
fn ike_hard_lifetime_deletes_the_ike_sa() {
    let mut a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    let b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    // Soft lifetime beyond the hard one: never rekeyed, deleted at 100 s.
    a.ike_lifetime = Lifetime {
        rekey_time: Duration::from_secs(500),
        life_time: Duration::from_secs(100),
        jitter: Duration::ZERO,
    };
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(99));
    assert_survivors(&p, 1);
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
    p.advance(Duration::from_secs(3));
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (0, 0));
    let del = |ev: &[Event]| {
        ev.iter()
            .filter(|e| matches!(e, Event::IkeSaDeleted { .. }))
            .count()
    };
    assert_eq!((del(&p.a_events), del(&p.b_events)), (1, 1));
    assert_survivors(&p, 0);
}
