//! Child SA rekey collisions where both CREATE_CHILD_SA exchanges complete (RFC 7296 §2.8.1),
//! the way strongSwan behaves: it answers a colliding rekey instead of refusing it, and closes
//! the SA created with the lowest of the four nonces. Our endpoint does the same by default
//! (`refuse_colliding_rekey = false`); with `true` on one side it refuses when its nonce is
//! higher. A pair in memory replays the case found against strongSwan in
//! `tests/lifecycle_stress.rs`: when our initiator nonce was the lower one we deleted our new
//! SA while the peer, by the four-nonce rule, deleted its own, and the tunnel was lost.
//! Each side's events are also replayed through a model of the appliance's data plane (new
//! inbound at once, outbound now or on the old SA's DELETE) to check that an outbound SA exists
//! at every step and ends on the surviving SA.

mod common;
use common::*;
use ike::{Event, IkeSaId};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

fn established(seed: u64, a_refuses: bool, b_refuses: bool) -> Pair {
    let mut a = conn(
        A_IP,
        B_IP,
        "k",
        "aes128gcm16-prfsha256-x25519",
        "aes256gcm16",
    );
    let mut b = conn(
        B_IP,
        A_IP,
        "k",
        "aes128gcm16-prfsha256-x25519",
        "aes256gcm16",
    );
    a.refuse_colliding_rekey = a_refuses;
    b.refuse_colliding_rekey = b_refuses;
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

/// The appliance's handling of Child SA events (crates/hybridgw daemon.rs): returns the outbound
/// SPI in use after the events, and the number of events after which there was none (once a
/// first SA existed).
fn dataplane_model(events: &[Event]) -> (Option<u32>, usize) {
    let mut inbound: BTreeSet<u32> = BTreeSet::new();
    let mut outbound: Option<u32> = None;
    // (old inbound SPI, new outbound SPI) waiting for the old SA's DELETE.
    let mut pending: Vec<(u32, u32)> = Vec::new();
    let mut gaps = 0;
    let mut started = false;
    for e in events {
        match e {
            Event::ChildSaEstablished(c) => {
                inbound.insert(c.inbound_spi);
                outbound = Some(c.outbound_spi);
                started = true;
            }
            Event::ChildSaRekeyed {
                old_inbound_spi,
                new,
                outbound_now,
                ..
            } => {
                inbound.insert(new.inbound_spi);
                if *outbound_now {
                    outbound = Some(new.outbound_spi);
                } else {
                    pending.push((*old_inbound_spi, new.outbound_spi));
                }
            }
            Event::ChildSaDeleted {
                inbound_spi,
                outbound_spi,
                ..
            } => {
                if let Some(i) = pending.iter().position(|(o, _)| o == inbound_spi) {
                    outbound = Some(pending.swap_remove(i).1);
                }
                inbound.remove(inbound_spi);
                if outbound == Some(*outbound_spi) {
                    outbound = None;
                }
            }
            _ => {}
        }
        if started && outbound.is_none() {
            gaps += 1;
        }
    }
    (outbound, gaps)
}

/// Both sides rekey the only Child SA at the same instant; returns (A's new SA won?).
fn collide(p: &mut Pair, seed: u64) -> bool {
    let first = assert_survivors(p, 1)[0];
    let (ia, ib) = (current_ike(&p.a_events), current_ike(&p.b_events));
    let (ia, ib) = (
        ia.unwrap_or_else(|| ike_id(&p.a_events)),
        ib.unwrap_or_else(|| ike_id(&p.b_events)),
    );
    let now = p.now;
    assert!(p.a.rekey_child(ia, now));
    assert!(p.b.rekey_child(ib, now));
    p.advance(Duration::from_secs(30));
    let now_pair = assert_survivors(p, 1)[0];
    assert_ne!(now_pair, first, "seed {seed}: no rekey took effect");
    for (side, ev, out) in [
        ("a", &p.a_events, now_pair.1),
        ("b", &p.b_events, now_pair.0),
    ] {
        let (active, gaps) = dataplane_model(ev);
        assert_eq!(
            active,
            Some(out),
            "seed {seed}: side {side} sends on {active:x?}, the survivor's outbound is {out:x}: {ev:?}"
        );
        assert_eq!(
            gaps, 0,
            "seed {seed}: side {side} had no outbound SA: {ev:?}"
        );
    }
    all_children(&p.a_events)[&now_pair.0].initiator
}

#[test]
fn strongswan_like_peer_answers_colliding_rekeys_one_survivor_with_outbound() {
    // A refuses with TEMPORARY_FAILURE when its nonce is higher, B answers every colliding
    // rekey (strongSwan). When A's nonce is lower both exchanges complete and the four nonces
    // decide; A and B must agree on the survivor.
    let (mut a_won, mut b_won) = (0, 0);
    for seed in 1..=24u64 {
        let mut p = established(seed, true, false);
        for round in 0..3 {
            if collide(&mut p, seed * 10 + round) {
                a_won += 1;
            } else {
                b_won += 1;
            }
        }
        assert_eq!(
            (Pair::failures(&p.a_events), Pair::failures(&p.b_events)),
            (vec![], vec![])
        );
    }
    println!("collisions with a strongSwan-like peer: A's SA survived {a_won}, B's {b_won}");
    assert!(a_won > 0 && b_won > 0, "a {a_won} b {b_won}");
}

#[test]
fn both_sides_answer_colliding_rekeys_four_nonces_decide() {
    let (mut a_won, mut b_won) = (0, 0);
    for seed in 1..=24u64 {
        let mut p = established(seed, false, false);
        for round in 0..3 {
            if collide(&mut p, seed * 10 + round) {
                a_won += 1;
            } else {
                b_won += 1;
            }
        }
        // Only the survivor remains and no redundant SA was ever reported to a driver.
        let reported: HashMap<u32, ike::ChildSa> = all_children(&p.a_events);
        assert_eq!(
            reported.len(),
            1 + 3,
            "seed {seed}: A reported a redundant SA: {:?}",
            p.a_events
        );
    }
    println!("collisions, both answering: A's SA survived {a_won}, B's {b_won}");
    assert!(a_won > 0 && b_won > 0, "a {a_won} b {b_won}");
}

#[test]
fn colliding_rekeys_both_completing_with_loss_and_reordering() {
    let mut checked = 0;
    for seed in 1..=24u64 {
        let mut p = established(seed, seed % 2 == 0, false);
        let (ia, ib) = (ike_id(&p.a_events), ike_id(&p.b_events));
        let mut st = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        p.lose = Box::new(move |_, _| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            st % 100 < 15
        });
        p.jitter_ms = 800;
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
        let pair = assert_survivors(&p, 1)[0];
        assert_eq!(dataplane_model(&p.a_events).0, Some(pair.1), "seed {seed}");
        assert_eq!(dataplane_model(&p.b_events).0, Some(pair.0), "seed {seed}");
        checked += 1;
    }
    assert!(checked >= 16, "only {checked} runs kept their IKE SA");
}
