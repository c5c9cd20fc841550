//! IKE fragmentation (RFC 7383) between two in-memory endpoints: negotiation in IKE_SA_INIT,
//! SKF fragments no larger than `fragment_size` for IKE_AUTH, CREATE_CHILD_SA and
//! INFORMATIONAL, whole-set retransmission under loss, reordering, per-fragment ICV checks and
//! bounds on what a fragment may announce.

mod common;
use common::*;
use ike::wire::{Message, Payload, PayloadType};
use ike::{ConnectionConfig, DropReason, Event};
use std::time::Duration;

const IKE_P: &str = "aes256-sha256-modp2048";
const ESP_P: &str = "aes256-sha256-modp2048";

fn small(size: usize) -> impl Fn(&mut ConnectionConfig) {
    move |c: &mut ConnectionConfig| c.fragment_size = size
}

fn pair(ta: impl Fn(&mut ConnectionConfig), tb: impl Fn(&mut ConnectionConfig), seed: u64) -> Pair {
    let mut a = conn(A_IP, B_IP, "k", IKE_P, ESP_P);
    let mut b = conn(B_IP, A_IP, "k", IKE_P, ESP_P);
    ta(&mut a);
    tb(&mut b);
    Pair::with_seed(a, b, seed)
}

fn is_fragment(data: &[u8]) -> bool {
    Message::parse(data)
        .is_ok_and(|m| matches!(m.payloads.last(), Some(Payload::EncryptedFragment(_))))
}

fn fragments(p: &Pair) -> Vec<&ike::Transmit> {
    p.sent.iter().filter(|t| is_fragment(&t.payload)).collect()
}

#[test]
fn auth_and_rekey_fragmented() {
    let mut p = pair(small(200), small(220), 1);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(2));
    assert_survivors(&p, 1);
    let init_len = p.sent[0].payload.len();
    let frags = fragments(&p);
    assert!(frags.len() >= 4, "{}", frags.len());
    for t in &p.sent {
        let limit = if t.local.ip() == std::net::IpAddr::V4(A_IP) {
            200
        } else {
            220
        };
        if is_fragment(&t.payload) {
            assert!(t.payload.len() <= limit, "{} > {limit}", t.payload.len());
        }
    }
    assert!(init_len > 200, "IKE_SA_INIT is never fragmented");
    assert!(!is_fragment(&p.sent[0].payload));
    // A Child SA rekey with a 2048-bit KE: fragmented both ways, and it works.
    let before = fragments(&p).len();
    let id = current_ike(&p.a_events).unwrap();
    let now = p.now;
    assert!(p.a.rekey_child(id, now));
    p.advance(Duration::from_secs(5));
    assert!(fragments(&p).len() >= before + 4);
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (1, 1));
    assert_survivors(&p, 1);
    // And an IKE SA rekey (the new IKE SA inherits fragmentation).
    let now = p.now;
    assert!(p.b.rekey_ike(current_ike(&p.b_events).unwrap(), now));
    p.advance(Duration::from_secs(5));
    assert_eq!(ike_rekeys(&p.a_events).len(), 1);
    let id = current_ike(&p.a_events).unwrap();
    let now = p.now;
    assert!(p.a.rekey_child(id, now));
    p.advance(Duration::from_secs(5));
    assert_eq!((rekeyed(&p.a_events), rekeyed(&p.b_events)), (2, 2));
    assert_survivors(&p, 1);
    assert_eq!(p.a.counters().integrity + p.b.counters().integrity, 0);
}

#[test]
fn no_fragments_unless_both_support_them() {
    for (fa, fb) in [(true, false), (false, true)] {
        let mut p = pair(
            move |c: &mut ConnectionConfig| {
                c.fragment_size = 300;
                c.fragmentation = fa;
            },
            move |c: &mut ConnectionConfig| {
                c.fragment_size = 300;
                c.fragmentation = fb;
            },
            2,
        );
        let now = p.now;
        p.a.initiate("site", now).unwrap();
        p.advance(Duration::from_secs(2));
        assert_survivors(&p, 1);
        assert!(fragments(&p).is_empty());
        assert!(p.sent.iter().any(|t| t.payload.len() > 300));
    }
}

#[test]
fn lost_fragment_retransmits_the_whole_set() {
    let mut p = pair(small(200), small(200), 3);
    // Lose the second datagram A sends after IKE_SA_INIT (a fragment of IKE_AUTH).
    let mut a_count = 0;
    p.lose = Box::new(move |_, t| {
        if t.local.ip() == std::net::IpAddr::V4(A_IP) {
            a_count += 1;
            return a_count == 3;
        }
        false
    });
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(10));
    assert_survivors(&p, 1);
    assert_eq!(p.a.counters().retransmits, 1);
    // The retransmission resent every fragment of the set.
    let a_frags = fragments(&p)
        .iter()
        .filter(|t| t.local.ip() == std::net::IpAddr::V4(A_IP))
        .count();
    let b_frags = fragments(&p).len() - a_frags;
    assert!(b_frags >= 2);
    assert_eq!(a_frags % 2, 0, "two copies of the same set");
    assert!(a_frags >= 4);
}

#[test]
fn reordered_and_lossy_fragments() {
    let mut ok = 0;
    for seed in 1..=10u64 {
        let mut p = pair(small(180), small(180), seed);
        let mut st = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        p.lose = Box::new(move |_, _| {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            st % 100 < 10
        });
        p.jitter_ms = 500;
        let now = p.now;
        p.a.initiate("site", now).unwrap();
        p.advance(Duration::from_secs(300));
        if Pair::failures(&p.a_events).is_empty() {
            assert_survivors(&p, 1);
            ok += 1;
        }
    }
    assert!(ok >= 8, "{ok}");
}

#[test]
fn forged_and_oversized_fragments_are_dropped() {
    let mut p = pair(small(200), small(200), 4);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(1));
    let auth: Vec<ike::Transmit> = p
        .sent
        .iter()
        .filter(|t| t.local.ip() == std::net::IpAddr::V4(A_IP) && is_fragment(&t.payload))
        .cloned()
        .collect();
    assert!(auth.len() >= 2);
    // A flipped ciphertext octet fails the fragment's ICV.
    let mut bad = auth[0].payload.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        p.inject(true, auth[0].remote, auth[0].local, &bad),
        Err(DropReason::Integrity)
    );
    // A fragment announcing more fragments than allowed is refused before any crypto.
    let m = Message::parse(&auth[0].payload).unwrap();
    let Some(Payload::EncryptedFragment(f)) = m.payloads.last() else {
        panic!("not a fragment")
    };
    let mut big = auth[0].payload.clone();
    let at = f.offset + 6;
    big[at..at + 2].copy_from_slice(&1000u16.to_be_bytes());
    assert_eq!(
        p.inject(true, auth[0].remote, auth[0].local, &big),
        Err(DropReason::Invalid("too many fragments"))
    );
    assert_eq!(m.header.next_payload, PayloadType::SKF);
    assert_eq!(p.b.counters().integrity, 1);
    assert_eq!(p.b.counters().invalid, 1);
    // Neither forgery disturbed the SAs.
    p.advance(Duration::from_secs(5));
    assert_survivors(&p, 1);
    assert!(
        p.b_events
            .iter()
            .all(|e| !matches!(e, Event::IkeSaFailed { .. }))
    );
}
