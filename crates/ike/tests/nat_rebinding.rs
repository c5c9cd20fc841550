//! NAT rebinding (RFC 7296 §2.23) with a simulated clock: while the IKE SA is UDP-encapsulated,
//! a fresh authenticated message from a new port moves the SA there (answers and later requests
//! follow the peer), while an unauthenticated or replayed one moves nothing.

mod common;
use common::*;
use ike::{ConnectionConfig, DpdAction, DpdConfig};
use std::net::IpAddr;
use std::time::Duration;

fn cfg(local: std::net::Ipv4Addr, remote: std::net::Ipv4Addr, dpd_s: u64) -> ConnectionConfig {
    let mut c = conn(local, remote, "k", "aes256-sha256-modp2048", "aes256gcm16");
    c.force_encap = true;
    c.dpd = Some(DpdConfig {
        delay: Duration::from_secs(dpd_s),
        action: DpdAction::Restart,
    });
    c
}

/// Established pair (A checks liveness after 30 s idle, B after 60 s); then A's first liveness
/// check is held back (lost on the wire) and returned.
fn up_and_capture_a_request() -> (Pair, ike::Transmit) {
    let mut p = Pair::new(cfg(A_IP, B_IP, 30), cfg(B_IP, A_IP, 60));
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.advance(Duration::from_secs(1));
    assert_survivors(&p, 1);
    let before = p.sent.len();
    p.lose = Box::new(|_, t| t.local.ip() == IpAddr::V4(A_IP));
    p.advance(Duration::from_secs(31));
    let req = p.sent[before..]
        .iter()
        .find(|t| t.local.ip() == IpAddr::V4(A_IP))
        .expect("A sent a liveness check")
        .clone();
    p.lose = Box::new(|_, _| false);
    assert_eq!(req.remote.port(), 4500, "encapsulated on 4500");
    (p, req)
}

#[test]
fn authenticated_request_from_a_new_port_moves_the_sa() {
    let (mut p, req) = up_and_capture_a_request();
    let moved = addr(A_IP, 40000);
    p.inject(true, req.remote, moved, &req.payload)
        .expect("B accepts the liveness check from the new port");
    assert_eq!(p.b.counters().peer_moved, 1);
    let answer = p.b.poll_transmit().expect("B answers");
    assert_eq!(answer.remote, moved, "the answer goes to the new mapping");
    // The same request retransmitted from the old address (it was in flight before the NAT
    // changed) is answered from the cache but does not move the SA back.
    let r = p.inject(true, req.remote, req.local, &req.payload);
    assert!(r.is_err(), "a retransmission is not a fresh message: {r:?}");
    while p.b.poll_transmit().is_some() {}
    assert_eq!(
        p.b.counters().peer_moved,
        1,
        "moved back by a retransmission"
    );
    // B's own next request (its liveness check after 60 s idle) goes to the new mapping.
    p.now += Duration::from_secs(61);
    let now = p.now;
    p.b.handle_timeout(now);
    let check =
        p.b.poll_transmit()
            .expect("B checks liveness after 60 s idle");
    assert_eq!(check.remote, moved, "{check:?}");
}

#[test]
fn replayed_or_forged_messages_move_nothing() {
    let (mut p, req) = up_and_capture_a_request();
    // First delivered from the right address: processed, nothing moves.
    p.inject(true, req.remote, req.local, &req.payload)
        .expect("accepted");
    let _ = p.b.poll_transmit();
    assert_eq!(p.b.counters().peer_moved, 0);
    // The same datagram replayed from elsewhere is a retransmission: answered from the cache,
    // but the SA stays where it was.
    let elsewhere = addr(A_IP, 41000);
    let r = p.inject(true, req.remote, elsewhere, &req.payload);
    assert!(r.is_err(), "a replay is not a fresh message: {r:?}");
    assert_eq!(p.b.counters().peer_moved, 0);
    // A forged copy (one bit flipped in the encrypted part) fails integrity and moves nothing.
    let mut forged = req.payload.clone();
    let last = forged.len() - 20;
    forged[last] ^= 1;
    let r = p.inject(true, req.remote, addr(A_IP, 42000), &forged);
    assert!(r.is_err(), "forged message accepted: {r:?}");
    assert_eq!(p.b.counters().peer_moved, 0);
    while p.b.poll_transmit().is_some() {}
    // B's next liveness check still goes to the original address.
    let before = p.sent.len();
    p.advance(Duration::from_secs(70));
    let b_requests: Vec<_> = p.sent[before..]
        .iter()
        .filter(|t| t.local.ip() == IpAddr::V4(B_IP))
        .collect();
    assert!(!b_requests.is_empty());
    assert!(
        b_requests.iter().all(|t| t.remote == req.local),
        "{b_requests:?}"
    );
}
