//! Rekey collisions (RFC 7296 §2.8.1, §2.25) between two in-memory endpoints with a simulated
//! clock, loss and reordering: both sides rekey the same Child SA at once (exactly one survivor,
//! both directions, mirrored on both sides), a rekey crossing a DELETE of the same SA
//! (TEMPORARY_FAILURE or CHILD_SA_NOT_FOUND, nothing half-installed), and lifetimes that fire
//! on both sides at nearly the same moment.

mod common;
use common::*;
use ike::{ConnectionConfig, Event, IkeSaId, Lifetime};
use std::time::Duration;

fn established(seed: u64, esp_p: &str, tweak: impl Fn(&mut ConnectionConfig)) -> Pair {
    let mut a = conn(A_IP, B_IP, "k", "aes128gcm16-prfsha256-x25519", esp_p);
    let mut b = conn(B_IP, A_IP, "k", "aes128gcm16-prfsha256-x25519", esp_p);
    tweak(&mut a);
    tweak(&mut b);
    let mut p = Pair::with_seed(a, b, seed);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(2));
    assert_survivors(&p, 1);
    p
}

fn ike_id(ev: &[Event]) -> IkeSaId {
    ev.iter()
        .find_map(|e| match e {
            Event::IkeSaEstablished { id, .. } => Some(*id),
            _ => None,
        })
        .expect("IKE SA established")
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

#[test]
fn simultaneous_child_rekey_one_survivor() {
    let mut a_won = 0;
    let mut b_won = 0;
    for seed in 1..=16u64 {
        let esp_p = if seed % 2 == 0 {
            "aes256gcm16"
        } else {
            "aes256gcm16-ecp256"
        };
        let mut p = established(seed, esp_p, |_| {});
        let first = assert_survivors(&p, 1)[0];
        let (ia, ib) = (ike_id(&p.a_events), ike_id(&p.b_events));
        let now = p.now;
        assert!(p.a.rekey_child(ia, now));
        assert!(p.b.rekey_child(ib, now));
        p.advance(Duration::from_secs(30));
        let now_pair = assert_survivors(&p, 1)[0];
        assert_ne!(now_pair, first, "seed {seed}");
        // Both exchanges completed (nothing refused); exactly one new SA was reported on each
        // side, the redundant one (lowest of the four nonces, §2.8.1) never reached a driver.
        assert_eq!(
            (rekeyed(&p.a_events), rekeyed(&p.b_events)),
            (1, 1),
            "seed {seed}"
        );
        assert_eq!(
            p.a.counters().refused + p.b.counters().refused,
            0,
            "seed {seed}"
        );
        assert_eq!(
            (child_deleted(&p.a_events), child_deleted(&p.b_events)),
            (1, 1)
        );
        let (ca, _) = (all_children(&p.a_events), all_children(&p.b_events));
        if ca[&now_pair.0].initiator {
            a_won += 1;
        } else {
            b_won += 1;
        }
        // Later rekeys still work.
        let now = p.now;
        assert!(p.b.rekey_child(ib, now));
        p.advance(Duration::from_secs(30));
        assert_ne!(assert_survivors(&p, 1)[0], now_pair);
    }
    // Nonces decide: both sides win some.
    assert!(a_won > 0 && b_won > 0, "a {a_won} b {b_won}");
}

#[test]
fn simultaneous_child_rekey_with_loss_and_reordering() {
    let mut checked = 0;
    for seed in 1..=24u64 {
        let mut p = established(seed, "aes256gcm16-x25519", |_| {});
        let (ia, ib) = (ike_id(&p.a_events), ike_id(&p.b_events));
        lossy(&mut p, seed, 20, 1500);
        let now = p.now;
        assert!(p.a.rekey_child(ia, now));
        assert!(p.b.rekey_child(ib, now));
        p.advance(Duration::from_secs(200));
        p.lose = Box::new(|_, _| false);
        p.jitter_ms = 0;
        p.advance(Duration::from_secs(60));
        if !Pair::failures(&p.a_events).is_empty() || !Pair::failures(&p.b_events).is_empty() {
            assert_survivors(&p, 0);
            continue;
        }
        assert_survivors(&p, 1);
        checked += 1;
    }
    assert!(checked >= 16, "only {checked} runs kept their IKE SA");
}

#[test]
fn lifetimes_firing_together() {
    // Same lifetimes without jitter: both sides fire at the same instant, every time.
    let same = |c: &mut ConnectionConfig| {
        c.child_lifetime = Lifetime {
            rekey_time: Duration::from_secs(30),
            life_time: Duration::from_secs(90),
            jitter: Duration::ZERO,
        }
    };
    for seed in 1..=6u64 {
        let mut p = established(seed, "aes256gcm16", same);
        p.advance(Duration::from_secs(300));
        assert!(
            rekeyed(&p.a_events) >= 8,
            "seed {seed}: {}",
            rekeyed(&p.a_events)
        );
        assert_eq!(rekeyed(&p.a_events), rekeyed(&p.b_events));
        assert_eq!(Pair::failures(&p.a_events), vec![]);
        // Mid-exchange snapshot allowed: let the last DELETE finish first.
        p.advance(Duration::from_secs(1));
        assert_survivors(&p, 1);
    }
}

#[test]
fn rekey_crossing_delete() {
    for seed in 1..=12u64 {
        let mut p = established(seed, "aes256gcm16", |_| {});
        let first = assert_survivors(&p, 1)[0];
        if seed > 6 {
            lossy(&mut p, seed, 15, 800);
        }
        let now = p.now;
        // A deletes the SA while B rekeys it.
        assert!(p.a.delete_child_sa(first.0, now));
        assert!(p.b.rekey_child_spi(first.1, now));
        p.advance(Duration::from_secs(200));
        p.lose = Box::new(|_, _| false);
        p.advance(Duration::from_secs(30));
        if !Pair::failures(&p.a_events).is_empty() || !Pair::failures(&p.b_events).is_empty() {
            assert_survivors(&p, 0);
            continue;
        }
        // The deleted SA is gone on both sides; B's rekey did not resurrect it and left
        // nothing half-installed.
        assert_survivors(&p, 0);
        assert_eq!(
            (rekeyed(&p.a_events), rekeyed(&p.b_events)),
            (0, 0),
            "seed {seed}"
        );
        assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
    }
}

#[test]
fn rekey_after_peer_deleted_child_is_refused() {
    let mut p = established(3, "aes256gcm16", |_| {});
    let first = assert_survivors(&p, 1)[0];
    let now = p.now;
    assert!(p.a.delete_child_sa(first.0, now));
    p.advance(Duration::from_secs(5));
    assert_survivors(&p, 0);
    // The SA is gone: asking for its rekey is refused locally.
    let now = p.now;
    assert!(!p.b.rekey_child_spi(first.1, now));
    assert!(!p.b.delete_child_sa(first.1, now));
}
