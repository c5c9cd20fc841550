//! IKE SA rekeying (RFC 7296 §1.3.2, §2.18) and its collisions (§2.8.1, §2.25) between two
//! in-memory endpoints with a simulated clock, loss and reordering: Child SAs move to the new
//! IKE SA untouched, the old IKE SA vanishes, simultaneous IKE rekeys leave one IKE SA, and a
//! Child SA rekey during an IKE rekey is retried and succeeds.

mod common;
use common::*;
use ike::{ConnectionConfig, Event, Lifetime};
use std::time::Duration;

fn established(seed: u64, tweak: impl Fn(&mut ConnectionConfig)) -> Pair {
    let mut a = conn(
        A_IP,
        B_IP,
        "k",
        "aes256gcm16-prfsha384-ecp384",
        "aes256gcm16-ecp256",
    );
    let mut b = conn(
        B_IP,
        A_IP,
        "k",
        "aes256gcm16-prfsha384-ecp384",
        "aes256gcm16-ecp256",
    );
    tweak(&mut a);
    tweak(&mut b);
    let mut p = Pair::with_seed(a, b, seed);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(2));
    assert_survivors(&p, 1);
    p
}

fn lossy(p: &mut Pair, seed: u64, percent: u64, jitter_ms: u64) {
    let mut st = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    p.lose = Box::new(move |_, _| {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        st % 100 < percent
    });
    p.jitter_ms = jitter_ms;
}

fn deleted_ike(ev: &[Event]) -> usize {
    ev.iter()
        .filter(|e| matches!(e, Event::IkeSaDeleted { .. }))
        .count()
}

#[test]
fn on_demand_ike_rekey_moves_children() {
    for a_first in [true, false] {
        let mut p = established(1, |_| {});
        let child = assert_survivors(&p, 1)[0];
        let (ia, ib) = (
            current_ike(&p.a_events).unwrap(),
            current_ike(&p.b_events).unwrap(),
        );
        let now = p.now;
        if a_first {
            assert!(p.a.rekey_ike(ia, now));
        } else {
            assert!(p.b.rekey_ike(ib, now));
        }
        p.advance(Duration::from_secs(5));
        let (ra, rb) = (ike_rekeys(&p.a_events), ike_rekeys(&p.b_events));
        assert_eq!(ra.len(), 1);
        assert_eq!(ra, rb, "both sides agree on the new SPIs");
        let (na, nb) = (
            current_ike(&p.a_events).unwrap(),
            current_ike(&p.b_events).unwrap(),
        );
        assert_ne!(na, ia);
        assert_ne!(nb, ib);
        // The old IKE SA is gone on both sides without IkeSaDeleted; the Child SA is untouched.
        assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
        assert_eq!((deleted_ike(&p.a_events), deleted_ike(&p.b_events)), (0, 0));
        assert_eq!(assert_survivors(&p, 1)[0], child);
        assert_eq!(
            (child_deleted(&p.a_events), child_deleted(&p.b_events)),
            (0, 0)
        );
        // The new IKE SA works: a Child SA rekey over it, then a liveness check, then delete.
        let now = p.now;
        assert!(p.b.rekey_child(nb, now));
        p.advance(Duration::from_secs(5));
        let child2 = assert_survivors(&p, 1)[0];
        assert_ne!(child2, child);
        let rek_id = p.a_events.iter().rev().find_map(|e| match e {
            Event::ChildSaRekeyed { id, .. } => Some(*id),
            _ => None,
        });
        assert_eq!(rek_id, Some(na));
        let now = p.now;
        assert!(p.a.send_liveness_check(na, now));
        p.advance(Duration::from_secs(5));
        assert_eq!(Pair::failures(&p.a_events), vec![]);
        // A second IKE rekey from the other side.
        let now = p.now;
        if a_first {
            assert!(p.b.rekey_ike(nb, now));
        } else {
            assert!(p.a.rekey_ike(na, now));
        }
        p.advance(Duration::from_secs(5));
        assert_eq!(ike_rekeys(&p.a_events).len(), 2);
        assert_eq!(ike_rekeys(&p.a_events), ike_rekeys(&p.b_events));
        assert_eq!(assert_survivors(&p, 1)[0], child2);
        let now = p.now;
        let cur = current_ike(&p.a_events).unwrap();
        assert!(p.a.delete_ike_sa(cur, now));
        p.advance(Duration::from_secs(5));
        assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (0, 0));
        assert_eq!((deleted_ike(&p.a_events), deleted_ike(&p.b_events)), (1, 1));
        assert_survivors(&p, 0);
    }
}

#[test]
fn scheduled_ike_and_child_rekeys_under_loss() {
    let lifetimes = |c: &mut ConnectionConfig| {
        c.ike_lifetime = Lifetime {
            rekey_time: Duration::from_secs(90),
            life_time: Duration::from_secs(400),
            jitter: Duration::from_secs(30),
        };
        c.child_lifetime = Lifetime {
            rekey_time: Duration::from_secs(60),
            life_time: Duration::from_secs(400),
            jitter: Duration::from_secs(20),
        };
    };
    let mut kept = 0;
    for seed in 1..=10u64 {
        let mut p = established(seed, lifetimes);
        lossy(&mut p, seed, 10, 1500);
        p.advance(Duration::from_secs(900));
        p.lose = Box::new(|_, _| false);
        p.jitter_ms = 0;
        p.advance(Duration::from_secs(30));
        if !Pair::failures(&p.a_events).is_empty() || !Pair::failures(&p.b_events).is_empty() {
            continue;
        }
        kept += 1;
        assert!(ike_rekeys(&p.a_events).len() >= 5, "seed {seed}");
        assert_eq!(
            ike_rekeys(&p.a_events),
            ike_rekeys(&p.b_events),
            "seed {seed}"
        );
        assert!(rekeyed(&p.a_events) >= 8, "seed {seed}");
        // A replaced IKE SA whose DELETE response was lost retransmits its DELETE to an SPI
        // the peer already dropped, then goes after its retransmissions (124 s): within that
        // time both sides come down to exactly one IKE SA.
        let mut single = false;
        for _ in 0..200 {
            if (p.a.ike_sa_count(), p.b.ike_sa_count()) == (1, 1) {
                single = true;
                break;
            }
            p.advance(Duration::from_secs(1));
        }
        assert!(
            single,
            "seed {seed}: {} {}",
            p.a.ike_sa_count(),
            p.b.ike_sa_count()
        );
        p.advance(Duration::from_secs(1));
        assert_survivors(&p, 1);
    }
    assert!(kept >= 7, "only {kept} runs kept their IKE SA");
}

#[test]
fn simultaneous_ike_rekeys_leave_one() {
    let mut a_won = 0;
    for seed in 1..=16u64 {
        let mut p = established(seed, |_| {});
        let child = assert_survivors(&p, 1)[0];
        if seed > 8 {
            lossy(&mut p, seed, 15, 1000);
        }
        let (ia, ib) = (
            current_ike(&p.a_events).unwrap(),
            current_ike(&p.b_events).unwrap(),
        );
        let now = p.now;
        assert!(p.a.rekey_ike(ia, now));
        assert!(p.b.rekey_ike(ib, now));
        p.advance(Duration::from_secs(200));
        p.lose = Box::new(|_, _| false);
        p.advance(Duration::from_secs(30));
        if !Pair::failures(&p.a_events).is_empty() || !Pair::failures(&p.b_events).is_empty() {
            assert_survivors(&p, 0);
            continue;
        }
        let (ra, rb) = (ike_rekeys(&p.a_events), ike_rekeys(&p.b_events));
        assert_eq!(ra.len(), 1, "seed {seed}: {ra:?}");
        assert_eq!(ra, rb, "seed {seed}");
        assert_eq!(
            (p.a.ike_sa_count(), p.b.ike_sa_count()),
            (1, 1),
            "seed {seed}"
        );
        assert_eq!(assert_survivors(&p, 1)[0], child);
        if ra[0].0 == current_ike(&p.a_events).unwrap().0 {
            a_won += 1;
        }
    }
    assert!(a_won > 0, "the nonce decides; A never won");
}

#[test]
fn child_rekey_during_ike_rekey() {
    for seed in 1..=12u64 {
        let mut p = established(seed, |_| {});
        let child = assert_survivors(&p, 1)[0];
        if seed > 6 {
            lossy(&mut p, seed, 10, 800);
        }
        let ia = current_ike(&p.a_events).unwrap();
        let now = p.now;
        // A rekeys the IKE SA while B rekeys the Child SA.
        assert!(p.a.rekey_ike(ia, now));
        assert!(p.b.rekey_child_spi(child.1, now));
        p.advance(Duration::from_secs(200));
        p.lose = Box::new(|_, _| false);
        p.advance(Duration::from_secs(30));
        if !Pair::failures(&p.a_events).is_empty() || !Pair::failures(&p.b_events).is_empty() {
            assert_survivors(&p, 0);
            continue;
        }
        assert_eq!(ike_rekeys(&p.a_events).len(), 1, "seed {seed}");
        assert_eq!(ike_rekeys(&p.a_events), ike_rekeys(&p.b_events));
        // The Child SA rekey happened exactly once (directly, or retried after
        // TEMPORARY_FAILURE) and left one pair.
        assert_eq!(
            (rekeyed(&p.a_events), rekeyed(&p.b_events)),
            (1, 1),
            "seed {seed}"
        );
        assert_ne!(assert_survivors(&p, 1)[0], child);
        assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
    }
}
