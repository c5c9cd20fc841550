//! Dead peer detection scheduled by the Endpoint (RFC 7296 §1.4, §2.4) and INITIAL_CONTACT
//! (§3.10.1) with a simulated clock: idle liveness checks, ESP traffic as liveness, give-up
//! with restart / clear, and a rebooted peer.

mod common;
use common::*;
use ike::crypto::TestRng;
use ike::{ConnectionConfig, DpdAction, DpdConfig, Endpoint, Event, FailReason};
use std::time::Duration;

fn cfg(
    local: std::net::Ipv4Addr,
    remote: std::net::Ipv4Addr,
    dpd: Option<DpdAction>,
) -> ConnectionConfig {
    let mut c = conn(local, remote, "k", "aes256-sha256-modp2048", "aes256gcm16");
    c.dpd = dpd.map(|action| DpdConfig {
        delay: Duration::from_secs(45),
        action,
    });
    c
}

fn up(a: Option<DpdAction>, b: Option<DpdAction>) -> Pair {
    let mut p = Pair::new(cfg(A_IP, B_IP, a), cfg(B_IP, A_IP, b));
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(1));
    assert_survivors(&p, 1);
    p
}

fn sent_by_a(p: &Pair) -> usize {
    p.sent
        .iter()
        .filter(|t| t.local.ip() == std::net::IpAddr::V4(A_IP))
        .count()
}

#[test]
fn idle_liveness_checks_are_answered() {
    let mut p = up(Some(DpdAction::Restart), None);
    let before = sent_by_a(&p);
    p.advance(Duration::from_secs(44));
    assert_eq!(sent_by_a(&p), before, "no check before the idle time");
    p.advance(Duration::from_secs(2));
    assert_eq!(
        sent_by_a(&p),
        before + 1,
        "one empty INFORMATIONAL after 45 s idle"
    );
    // Over 10 minutes: one check per 45 s, all answered, nothing fails.
    p.advance(Duration::from_secs(600));
    let checks = sent_by_a(&p) - before;
    assert!((13..=15).contains(&checks), "{checks}");
    assert_eq!(Pair::failures(&p.a_events), vec![]);
    assert_eq!(p.a.counters().retransmits, 0);
    // B has no DPD configured and sends nothing of its own.
    assert_eq!(p.b.counters().sent as usize, checks + 2);
    assert_survivors(&p, 1);
}

#[test]
fn esp_traffic_counts_as_liveness() {
    let mut p = up(Some(DpdAction::Restart), None);
    let spi = assert_survivors(&p, 1)[0].0;
    let before = sent_by_a(&p);
    for _ in 0..30 {
        p.advance(Duration::from_secs(10));
        let now = p.now;
        assert!(p.a.note_inbound_traffic(spi, now));
    }
    assert_eq!(
        sent_by_a(&p),
        before,
        "traffic every 10 s: no liveness check in 300 s"
    );
    assert!(!p.a.note_inbound_traffic(0x0bad_0bad, p.now));
    // Traffic stops: the check comes 45 s after the last packet.
    p.advance(Duration::from_secs(44));
    assert_eq!(sent_by_a(&p), before);
    p.advance(Duration::from_secs(2));
    assert_eq!(sent_by_a(&p), before + 1);
}

#[test]
fn dead_peer_restart_and_initial_contact() {
    let mut p = up(Some(DpdAction::Restart), None);
    let old_a = survivors(&p.a_events);
    // B reboots: all its state is gone.
    p.b = Endpoint::new(vec![cfg(B_IP, A_IP, None)], Box::new(TestRng::new(77)));
    p.b_events.clear();
    // 45 s idle, then 5 unanswered transmissions (4+8+16+32+64 s), then A gives up and
    // re-initiates; the new IKE_AUTH carries INITIAL_CONTACT.
    p.advance(Duration::from_secs(45 + 124 + 5));
    assert_eq!(Pair::failures(&p.a_events), vec![FailReason::Timeout]);
    assert_eq!(Pair::established(&p.a_events), 2);
    let now_a = assert_survivors(&p, 1);
    assert!(!old_a.contains_key(&now_a[0].0));
    assert_eq!((p.a.ike_sa_count(), p.b.ike_sa_count()), (1, 1));
    // The old Child SA was reported deleted on A before the new one came up.
    let del = p
        .a_events
        .iter()
        .position(|e| matches!(e, Event::ChildSaDeleted { .. }))
        .unwrap();
    let est = p
        .a_events
        .iter()
        .rposition(|e| matches!(e, Event::ChildSaEstablished(_)))
        .unwrap();
    assert!(del < est);
}

#[test]
fn dead_peer_clear_does_not_restart() {
    let mut p = up(Some(DpdAction::Clear), None);
    p.lose = Box::new(|_, _| true);
    p.advance(Duration::from_secs(400));
    assert_eq!(Pair::failures(&p.a_events), vec![FailReason::Timeout]);
    assert_eq!(p.a.ike_sa_count(), 0);
    assert_eq!(Pair::established(&p.a_events), 1);
    assert!(survivors(&p.a_events).is_empty());
}

#[test]
fn rebooted_peer_initiating_clears_stale_sas() {
    let mut p = up(None, None);
    let old = assert_survivors(&p, 1)[0];
    // B reboots and initiates itself: its IKE_AUTH carries INITIAL_CONTACT.
    p.b = Endpoint::new(vec![cfg(B_IP, A_IP, None)], Box::new(TestRng::new(78)));
    p.b_events.clear();
    let now = p.now;
    p.b.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(2));
    let deleted: Vec<u32> = p
        .a_events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaDeleted { inbound_spi, .. } => Some(*inbound_spi),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, vec![old.0]);
    assert_eq!(p.a.ike_sa_count(), 1);
    let now_pair = assert_survivors(&p, 1)[0];
    assert_ne!(now_pair, old);
}
