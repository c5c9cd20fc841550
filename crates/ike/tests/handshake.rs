//! In-memory IKE_SA_INIT + IKE_AUTH between two endpoints (RFC 7296 §1.2, §2.15, §2.17) with a
//! simulated clock: every suite, loss, reordering, cookies, INVALID_KE_PAYLOAD, failures,
//! narrowing, NAT-T forcing, DELETE and liveness.

mod common;
use common::*;
use ike::transform::{EncrId, IntegId};
use ike::wire::TrafficSelector;
use ike::{Event, FailReason};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const IKE_SUITES: &[&str] = &[
    "aes256-sha1-modp1024",
    "aes256-sha256-modp2048",
    "aes256gcm16-prfsha384-ecp384",
    "aes128gcm16-prfsha256-x25519",
];
const ESP_SUITES: &[&str] = &[
    "aes256gcm16",
    "aes256-sha1",
    "aes256-sha256",
    "aes128-sha1",
    "aes128gcm16-esn",
];

fn handshake(ike_p: &str, esp_p: &str, a_initiates: bool) -> (Pair, ike::ChildSa, ike::ChildSa) {
    let mut p = Pair::new(
        conn(A_IP, B_IP, "secret", ike_p, esp_p),
        conn(B_IP, A_IP, "secret", ike_p, esp_p),
    );
    let now = p.now;
    if a_initiates {
        p.a.initiate("site", now).unwrap();
    } else {
        p.b.initiate("site", now).unwrap();
    }
    p.drive();
    let ca = Pair::children(&p.a_events);
    let cb = Pair::children(&p.b_events);
    assert_eq!(
        (ca.len(), cb.len()),
        (1, 1),
        "{ike_p}/{esp_p}: events a={:?} b={:?}",
        p.a_events,
        p.b_events
    );
    let (x, y) = (ca[0].clone(), cb[0].clone());
    assert_mirror(&x, &y);
    assert_eq!(x.initiator, a_initiates);
    (p, x, y)
}

#[test]
fn every_suite_both_directions() {
    for ike_p in IKE_SUITES {
        for esp_p in ESP_SUITES {
            for a_init in [true, false] {
                let (p, x, _) = handshake(ike_p, esp_p, a_init);
                let gcm = esp_p.contains("gcm");
                assert_eq!(
                    x.encr,
                    if gcm {
                        EncrId::ENCR_AES_GCM_16
                    } else {
                        EncrId::ENCR_AES_CBC
                    }
                );
                let bits = if esp_p.starts_with("aes256") {
                    256
                } else {
                    128
                };
                assert_eq!(x.encr_key_bits, bits);
                assert_eq!(
                    x.inbound.encr.len(),
                    usize::from(bits / 8) + if gcm { 4 } else { 0 }
                );
                let integ = match *esp_p {
                    "aes256-sha1" | "aes128-sha1" => Some(IntegId::AUTH_HMAC_SHA1_96),
                    "aes256-sha256" => Some(IntegId::AUTH_HMAC_SHA2_256_128),
                    _ => None,
                };
                assert_eq!(x.integ, integ);
                assert_eq!(x.esn, esp_p.ends_with("-esn"));
                assert_eq!(x.local_ts, vec![TrafficSelector::any_v4()]);
                assert!(!x.udp_encap);
                assert_eq!(x.local.port(), 500);
                assert_eq!(Pair::established(&p.a_events), 1);
                assert_eq!(Pair::established(&p.b_events), 1);
                assert_eq!(p.a.counters().retransmits + p.b.counters().retransmits, 0);
                // 4 messages, nothing dropped.
                assert_eq!(p.sent.len(), 4);
                assert_eq!(p.a.counters().malformed + p.b.counters().malformed, 0);
            }
        }
    }
}

#[test]
fn multiple_proposals_follow_initiator_order() {
    let mut a = conn(
        A_IP,
        B_IP,
        "k",
        "aes128-sha256-ecp256,aes256-sha256-modp2048",
        "aes128-sha256,aes256gcm16",
    );
    a.esn_allowed = false;
    let b = conn(
        B_IP,
        A_IP,
        "k",
        "aes256-sha256-modp2048,aes128-sha256-ecp256",
        "aes256gcm16,aes128-sha256",
    );
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    let ca = Pair::children(&p.a_events);
    assert_eq!(ca.len(), 1);
    // The initiator's first ESP proposal wins although the responder prefers GCM.
    assert_eq!(ca[0].encr, EncrId::ENCR_AES_CBC);
    assert_eq!(ca[0].integ, Some(IntegId::AUTH_HMAC_SHA2_256_128));
    assert_mirror(ca[0], Pair::children(&p.b_events)[0]);
}

#[test]
fn retransmission_under_loss() {
    // Lose the first IKE_SA_INIT request, the first IKE_SA_INIT response and the first
    // IKE_AUTH response: every leg needs a retransmission or the response cache.
    let mut p = Pair::new(
        conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256-sha256"),
        conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256-sha256"),
    );
    // Send order: 0 INIT req (lost), 1 INIT req, 2 INIT resp (lost), 3 INIT req (retx),
    // 4 INIT resp (from cache), 5 AUTH req, 6 AUTH resp (lost), ...
    p.lose = Box::new(move |seq, _| matches!(seq, 0 | 2 | 6));
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
    assert_eq!(
        (ca.len(), cb.len()),
        (1, 1),
        "{:?} {:?}",
        p.a_events,
        p.b_events
    );
    assert_mirror(ca[0], cb[0]);
    assert!(p.a.counters().retransmits >= 3, "{:?}", p.a.counters());
    assert!(p.b.counters().cached_responses >= 2, "{:?}", p.b.counters());
    // Exponential backoff: 4 s, then 8 s; the whole thing took at least 4 + 8 + 4 seconds.
    assert!(
        p.now - p.start >= Duration::from_secs(16),
        "{:?}",
        p.now - p.start
    );
}

#[test]
fn random_loss_and_reordering() {
    let mut ok = 0;
    for seed in 1..=12u64 {
        let mut p = Pair::with_seed(
            conn(
                A_IP,
                B_IP,
                "k",
                "aes128gcm16-prfsha256-x25519",
                "aes256gcm16",
            ),
            conn(
                B_IP,
                A_IP,
                "k",
                "aes128gcm16-prfsha256-x25519",
                "aes256gcm16",
            ),
            seed,
        );
        let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15);
        p.lose = Box::new(move |_, _| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % 100 < 30
        });
        p.jitter_ms = 3000;
        let now = p.now;
        p.a.initiate("site", now).unwrap();
        p.drive();
        let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
        match (ca.len(), cb.len()) {
            (1, 1) => {
                assert_mirror(ca[0], cb[0]);
                ok += 1;
            }
            // With 30 % loss five tries can all fail: then the initiator must report a timeout
            // and nothing may be half-established on its side.
            (0, _) => assert_eq!(
                Pair::failures(&p.a_events),
                vec![FailReason::Timeout],
                "seed {seed}"
            ),
            other => panic!("seed {seed}: {other:?}"),
        }
        // Nothing is left pending but the Child SA lifetimes (hours away, Azure defaults).
        let later = p.now + Duration::from_secs(20_000);
        assert!(
            p.a.poll_timeout().is_none_or(|t| t > later)
                && p.b.poll_timeout().is_none_or(|t| t > later),
            "seed {seed}"
        );
    }
    assert!(ok >= 9, "only {ok} of 12 lossy handshakes completed");
}

#[test]
fn gives_up_after_retransmissions() {
    let mut p = Pair::new(
        conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256-sha256"),
        conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256-sha256"),
    );
    p.lose = Box::new(|_, _| true);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    assert_eq!(Pair::failures(&p.a_events), vec![FailReason::Timeout]);
    assert_eq!(p.sent.len(), 5, "5 transmissions in all");
    // 4 + 8 + 16 + 32 + 64 s.
    assert_eq!(p.now - p.start, Duration::from_secs(124));
    assert_eq!(p.a.ike_sa_count(), 0);
}

#[test]
fn cookies_above_threshold() {
    let a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256-sha256");
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256-sha256");
    b.cookie_threshold = 0;
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
    assert_eq!((ca.len(), cb.len()), (1, 1));
    assert_mirror(ca[0], cb[0]);
    assert_eq!(p.b.counters().cookies_sent, 1);
    // 2 extra messages: the COOKIE demand and the repeated request.
    assert_eq!(p.sent.len(), 6);
}

#[test]
fn cookie_demand_creates_no_state() {
    let a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256-sha256");
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256-sha256");
    b.cookie_threshold = 1;
    let mut p = Pair::new(a, b);
    let now = p.now;
    // Keep B's SAs half-open: lose A's IKE_AUTH requests and its cookie-bearing retries
    // (header octet 18 is the exchange type, octet 16 the first payload type).
    p.lose = Box::new(|_, t| {
        t.local.ip() == IpAddr::V4(A_IP) && (t.payload[18] == 35 || t.payload[16] == 41)
    });
    p.a.initiate("site", now).unwrap();
    p.drive_for(Duration::from_secs(1));
    assert_eq!(p.b.half_open_count(), 1);
    // A second initiator SA now gets a COOKIE demand and B keeps only one half-open SA.
    p.a.initiate("site", now).unwrap();
    p.drive_for(Duration::from_secs(1));
    assert_eq!(p.b.half_open_count(), 1);
    assert_eq!(p.b.counters().cookies_sent, 1);
}

#[test]
fn invalid_ke_payload_retry() {
    let a = conn(
        A_IP,
        B_IP,
        "k",
        "aes256-sha256-ecp256-modp2048",
        "aes256-sha256",
    );
    let b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256-sha256");
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
    assert_eq!((ca.len(), cb.len()), (1, 1), "{:?}", p.a_events);
    assert_mirror(ca[0], cb[0]);
    assert_eq!(p.b.counters().refused, 1);
    assert_eq!(p.sent.len(), 6);
    // The retried request carries a MODP-2048 KE payload (256 octets).
    let retry = ike::wire::Message::parse(&p.sent[2].payload).unwrap();
    match retry.find(ike::wire::PayloadType::KE) {
        Some(ike::wire::Payload::Ke(ke)) => assert_eq!((ke.group, ke.data.len()), (14, 256)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_psk_fails_on_both_sides() {
    for a_init in [true, false] {
        let mut p = Pair::new(
            conn(
                A_IP,
                B_IP,
                "right",
                "aes256-sha256-modp2048",
                "aes256-sha256",
            ),
            conn(
                B_IP,
                A_IP,
                "wrong",
                "aes256-sha256-modp2048",
                "aes256-sha256",
            ),
        );
        let now = p.now;
        if a_init {
            p.a.initiate("site", now).unwrap();
        } else {
            p.b.initiate("site", now).unwrap();
        }
        p.drive();
        assert!(Pair::children(&p.a_events).is_empty() && Pair::children(&p.b_events).is_empty());
        assert_eq!(
            Pair::failures(&p.a_events),
            vec![FailReason::AuthenticationFailed]
        );
        assert_eq!(
            Pair::failures(&p.b_events),
            vec![FailReason::AuthenticationFailed]
        );
        assert_eq!(p.a.ike_sa_count() + p.b.ike_sa_count(), 0);
    }
}

#[test]
fn no_common_proposal() {
    let mut p = Pair::new(
        conn(A_IP, B_IP, "k", "aes128-sha256-ecp256", "aes256-sha256"),
        conn(B_IP, A_IP, "k", "aes256-sha1-modp1024", "aes256-sha256"),
    );
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    assert_eq!(
        Pair::failures(&p.a_events),
        vec![FailReason::NoProposalChosen]
    );
    assert_eq!(p.b.counters().refused, 1);
    assert_eq!(
        p.b.ike_sa_count(),
        0,
        "a refused IKE_SA_INIT leaves no state"
    );
    // ESP mismatch: the IKE SA comes up, the Child SA is refused on both sides.
    let mut p = Pair::new(
        conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes128gcm16"),
        conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256-sha1"),
    );
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    assert_eq!(Pair::established(&p.a_events), 1);
    let child_fail = |ev: &[Event]| {
        ev.iter().any(|e| {
            matches!(
                e,
                Event::ChildSaFailed {
                    reason: FailReason::NoProposalChosen,
                    ..
                }
            )
        })
    };
    assert!(
        child_fail(&p.a_events) && child_fail(&p.b_events),
        "{:?} {:?}",
        p.a_events,
        p.b_events
    );
}

fn prefix(a: [u8; 4], l: u8) -> TrafficSelector {
    TrafficSelector::from_prefix(IpAddr::V4(Ipv4Addr::from(a)), l)
}

#[test]
fn selector_narrowing() {
    // Initiator proposes any-to-any; the responder narrows to its configured prefixes.
    let a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    b.local_ts = vec![prefix([198, 19, 2, 0], 24)];
    b.remote_ts = vec![prefix([198, 18, 1, 0], 24)];
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
    assert_eq!((ca.len(), cb.len()), (1, 1));
    assert_mirror(ca[0], cb[0]);
    assert_eq!(ca[0].local_ts, vec![prefix([198, 18, 1, 0], 24)]);
    assert_eq!(ca[0].remote_ts, vec![prefix([198, 19, 2, 0], 24)]);

    // A wider proposal narrowed to a sub-prefix.
    let mut a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    a.local_ts = vec![prefix([198, 18, 0, 0], 16)];
    a.remote_ts = vec![prefix([198, 19, 0, 0], 16)];
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    b.local_ts = vec![prefix([198, 19, 2, 0], 24)];
    b.remote_ts = vec![prefix([198, 18, 1, 0], 24)];
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    let ca = Pair::children(&p.a_events);
    assert_eq!(ca[0].local_ts, vec![prefix([198, 18, 1, 0], 24)]);

    // Disjoint: TS_UNACCEPTABLE.
    let mut a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    a.local_ts = vec![prefix([198, 18, 5, 0], 24)];
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
    b.remote_ts = vec![prefix([198, 18, 1, 0], 24)];
    let mut p = Pair::new(a, b);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    let ts_fail = |ev: &[Event]| {
        ev.iter().any(|e| {
            matches!(
                e,
                Event::ChildSaFailed {
                    reason: FailReason::TsUnacceptable,
                    ..
                }
            )
        })
    };
    assert!(ts_fail(&p.a_events) && ts_fail(&p.b_events));
}

#[test]
fn force_encap_moves_to_4500() {
    for (fa, fb) in [(true, false), (false, true)] {
        let mut a = conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
        a.force_encap = fa;
        let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256gcm16");
        b.force_encap = fb;
        let mut p = Pair::new(a, b);
        let now = p.now;
        p.a.initiate("site", now).unwrap();
        p.drive();
        let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
        assert_eq!((ca.len(), cb.len()), (1, 1));
        assert_mirror(ca[0], cb[0]);
        assert!(ca[0].udp_encap && cb[0].udp_encap);
        assert_eq!((ca[0].local.port(), ca[0].remote.port()), (4500, 4500));
        // IKE_AUTH went over 4500 with the non-ESP marker.
        assert_eq!(p.sent[2].local.port(), 4500);
        assert_eq!(&p.sent[2].payload[..4], &[0, 0, 0, 0]);
        assert_eq!(p.sent[0].local.port(), 500);
    }
}

#[test]
fn delete_and_liveness() {
    let (mut p, x, _) = handshake("aes256-sha256-modp2048", "aes256-sha256", true);
    let id = x.ike_sa;
    let now = p.now;
    assert!(p.a.send_liveness_check(id, now));
    p.drive();
    assert_eq!(p.sent.len(), 6);
    // Only the Child SA lifetime timer (hours away) is left.
    assert!(
        p.a.poll_timeout()
            .is_none_or(|t| t > p.now + Duration::from_secs(20_000))
    );
    let now = p.now;
    assert!(p.b.delete_ike_sa(Pair::children(&p.b_events)[0].ike_sa, now));
    p.drive();
    let deleted = |ev: &[Event]| {
        ev.iter()
            .filter(|e| matches!(e, Event::IkeSaDeleted { .. }))
            .count()
    };
    let child_deleted = |ev: &[Event]| {
        ev.iter()
            .filter(|e| matches!(e, Event::ChildSaDeleted { .. }))
            .count()
    };
    assert_eq!((deleted(&p.a_events), deleted(&p.b_events)), (1, 1));
    assert_eq!(
        (child_deleted(&p.a_events), child_deleted(&p.b_events)),
        (1, 1)
    );
    assert_eq!(p.a.ike_sa_count() + p.b.ike_sa_count(), 0);
}

#[test]
fn half_open_expires() {
    let mut p = Pair::new(
        conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256-sha256"),
        conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256-sha256"),
    );
    // Only the first INIT request gets through.
    p.lose = Box::new(|seq, _| seq > 0);
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    assert_eq!(p.b.counters().half_open_expired, 1);
    assert_eq!(
        Pair::failures(&p.b_events),
        vec![FailReason::HalfOpenExpired]
    );
    assert_eq!(p.b.ike_sa_count(), 0);
}

#[test]
fn garbage_is_counted_not_answered() {
    let (mut p, x, _) = handshake("aes256-sha256-modp2048", "aes256-sha256", true);
    let before = p.sent.len();
    let (b_local, a_addr) = (x.remote, x.local);
    // Random junk, a truncated header, an unknown SPI, a corrupted copy of a real message.
    assert!(matches!(
        p.inject(true, b_local, a_addr, &[1, 2, 3]),
        Err(ike::DropReason::Malformed(_))
    ));
    let mut bogus = p.sent[2].payload.clone();
    bogus[0] ^= 0xff;
    assert_eq!(
        p.inject(true, b_local, a_addr, &bogus),
        Err(ike::DropReason::UnknownSpi)
    );
    let mut corrupt = p.sent[2].payload.clone();
    let n = corrupt.len();
    corrupt[n - 1] ^= 1;
    // A retransmitted-looking IKE_AUTH with a bad ICV is not answered from the cache.
    assert_eq!(
        p.inject(true, b_local, a_addr, &corrupt),
        Err(ike::DropReason::Integrity)
    );
    // The genuine retransmission is.
    let genuine = p.sent[2].payload.clone();
    assert_eq!(
        p.inject(true, b_local, a_addr, &genuine),
        Err(ike::DropReason::Retransmission)
    );
    p.drive();
    assert_eq!(p.sent.len(), before + 1);
    assert_eq!(p.b.counters().integrity, 1);
    assert_eq!(p.b.counters().malformed, 1);
    assert_eq!(p.b.counters().unknown_spi, 1);
    // The SA still works.
    let now = p.now;
    assert!(p.a.send_liveness_check(x.ike_sa, now));
    p.drive();
    assert!(
        p.a_events
            .iter()
            .all(|e| !matches!(e, Event::IkeSaFailed { .. }))
    );
}

#[test]
fn endpoint_is_send() {
    fn is_send<T: Send>() {}
    is_send::<ike::Endpoint>();
}

/// The first IKE_SA_INIT request A would send.
fn first_init_request() -> (Pair, Vec<u8>) {
    let mut p = Pair::new(
        conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256-sha256"),
        conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256-sha256"),
    );
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    let t = p.a.poll_transmit().unwrap();
    (p, t.payload)
}

#[test]
fn unsupported_critical_payload_is_refused() {
    let (mut p, req) = first_init_request();
    // Insert an unknown payload type 200 with the critical bit in front of the chain.
    let mut m = req[..28].to_vec();
    m[16] = 200;
    m.extend_from_slice(&[req[16], 0x80, 0, 6, 0xde, 0xad]);
    m.extend_from_slice(&req[28..]);
    let len = m.len() as u32;
    m[24..28].copy_from_slice(&len.to_be_bytes());
    let (b, a) = (addr(B_IP, 500), addr(A_IP, 500));
    assert_eq!(
        p.inject(true, b, a, &m),
        Err(ike::DropReason::Refused(
            ike::wire::NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD
        ))
    );
    let answer = p.b.poll_transmit().expect("answered");
    let msg = ike::wire::Message::parse(&answer.payload).unwrap();
    let n = msg
        .notify(ike::wire::NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
        .expect("notify");
    assert_eq!(n.data, vec![200]);
    assert_eq!(p.b.ike_sa_count(), 0);
    // Without the critical bit the unknown payload is skipped and the handshake proceeds.
    m[29] = 0;
    assert_eq!(p.inject(true, b, a, &m), Ok(()));
    assert_eq!(p.b.ike_sa_count(), 1);
}

#[test]
fn higher_major_version_is_answered() {
    let (mut p, mut req) = first_init_request();
    req[17] = 0x30;
    let (b, a) = (addr(B_IP, 500), addr(A_IP, 500));
    assert_eq!(
        p.inject(true, b, a, &req),
        Err(ike::DropReason::Refused(
            ike::wire::NotifyType::INVALID_MAJOR_VERSION
        ))
    );
    let answer = p.b.poll_transmit().expect("answered");
    let msg = ike::wire::Message::parse(&answer.payload).unwrap();
    assert_eq!(
        msg.notify(ike::wire::NotifyType::INVALID_MAJOR_VERSION)
            .map(|n| n.data.clone()),
        Some(vec![0x20])
    );
    // From an unknown peer: silently dropped.
    let stranger = addr(Ipv4Addr::new(203, 0, 113, 9), 500);
    assert!(matches!(
        p.inject(true, b, stranger, &req),
        Err(ike::DropReason::Malformed(_))
    ));
    assert!(p.b.poll_transmit().is_none());
    assert_eq!(p.b.ike_sa_count(), 0);
}

#[test]
fn unknown_peer_and_wrong_mode_get_no_answer() {
    let (mut p, req) = first_init_request();
    let stranger = addr(Ipv4Addr::new(203, 0, 113, 9), 500);
    assert_eq!(
        p.inject(true, addr(B_IP, 500), stranger, &req),
        Err(ike::DropReason::NoConnection)
    );
    assert!(p.b.poll_transmit().is_none());
    let mut b = conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256-sha256");
    b.mode = ike::ConnectionMode::InitiatorOnly;
    let mut p = Pair::new(
        conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256-sha256"),
        b,
    );
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive_for(Duration::from_secs(1));
    assert_eq!(p.b.counters().no_connection, 1);
    assert_eq!(p.b.ike_sa_count(), 0);
}

#[test]
fn mutated_copies_do_not_disturb_the_handshake() {
    // Before every genuine datagram the receiver gets corrupted copies of it (byte flips at
    // many positions, truncations); what it answers to them is discarded. The genuine exchange
    // must still complete with mirrored Child SAs.
    for ike_p in ["aes256-sha256-modp2048", "aes128gcm16-prfsha256-x25519"] {
        let mut p = Pair::new(
            conn(A_IP, B_IP, "k", ike_p, "aes256gcm16"),
            conn(B_IP, A_IP, "k", ike_p, "aes256gcm16"),
        );
        let now = p.now;
        p.a.initiate("site", now).unwrap();
        let mut injected = 0;
        for _round in 0..6 {
            let from_a: Vec<_> = std::iter::from_fn(|| p.a.poll_transmit()).collect();
            let from_b: Vec<_> = std::iter::from_fn(|| p.b.poll_transmit()).collect();
            if from_a.is_empty() && from_b.is_empty() {
                break;
            }
            for (to_b, list) in [(true, from_a), (false, from_b)] {
                for t in list {
                    let (local, remote) = (t.remote, t.local);
                    let body_start = if local.port() == 4500 { 4 } else { 0 };
                    // IKE_SA_INIT responses are unauthenticated by design: a changed SPI,
                    // COOKIE, nonce or KE value in one is only detectable at IKE_AUTH (an on-path
                    // attacker can always deny service, RFC 7296 §5). Corrupt only their
                    // initiator SPI (and truncate them); corrupt everything else anywhere.
                    let init_response = t.payload[body_start + 18] == 34 && !to_b;
                    let end = if init_response {
                        body_start + 8
                    } else {
                        t.payload.len()
                    };
                    for pos in (body_start..end).step_by(if init_response { 1 } else { 5 }) {
                        let mut m = t.payload.clone();
                        m[pos] ^= 0x5a;
                        let _ = p.inject(to_b, local, remote, &m);
                        injected += 1;
                    }
                    for cut in [
                        body_start + 3,
                        body_start + 27,
                        t.payload.len() / 2,
                        t.payload.len() - 1,
                    ] {
                        let _ = p.inject(to_b, local, remote, &t.payload[..cut]);
                        injected += 1;
                    }
                    // Drop whatever the corrupted copies provoked.
                    if to_b {
                        while p.b.poll_transmit().is_some() {}
                    } else {
                        while p.a.poll_transmit().is_some() {}
                    }
                    // The corrupted IKE_SA_INIT copies that changed the SPI are new half-open
                    // SAs: past the threshold the genuine request gets a COOKIE demand first.
                    let r = p.inject(to_b, local, remote, &t.payload);
                    assert!(
                        matches!(r, Ok(()) | Err(ike::DropReason::CookieRequired)),
                        "{r:?}"
                    );
                }
            }
            while let Some(e) = p.a.poll_event() {
                p.a_events.push(e);
            }
            while let Some(e) = p.b.poll_event() {
                p.b_events.push(e);
            }
        }
        let (ca, cb) = (Pair::children(&p.a_events), Pair::children(&p.b_events));
        assert_eq!(
            (ca.len(), cb.len()),
            (1, 1),
            "{ike_p}: {:?} / {:?}",
            p.a_events,
            p.b_events
        );
        assert_mirror(ca[0], cb[0]);
        assert!(injected > 150, "{injected}");
        assert!(p.b.counters().integrity > 0 && p.a.counters().integrity > 0);
        assert!(Pair::failures(&p.a_events).is_empty());
        assert!(p.b.counters().cookies_sent > 0, "{:?}", p.b.counters());
    }
}

#[test]
fn initial_contact_replaces_stale_sas() {
    // B keeps an established IKE SA; A "reboots" (a fresh endpoint with the same config) and
    // connects again with INITIAL_CONTACT: B drops the stale SA and its Child SA.
    let (mut p, _, y) = handshake("aes256-sha256-modp2048", "aes256gcm16", true);
    p.a = ike::Endpoint::new(
        vec![conn(
            A_IP,
            B_IP,
            "secret",
            "aes256-sha256-modp2048",
            "aes256gcm16",
        )],
        Box::new(ike::crypto::TestRng::new(77)),
    );
    p.a_events.clear();
    p.b_events.clear();
    let now = p.now;
    p.a.initiate("site", now).unwrap();
    p.drive();
    assert_eq!(Pair::children(&p.a_events).len(), 1);
    assert!(
        p.b_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaDeleted { id, .. } if *id == y.ike_sa))
    );
    assert!(p.b_events.iter().any(
        |e| matches!(e, Event::ChildSaDeleted { inbound_spi, .. } if *inbound_spi == y.inbound_spi)
    ));
    assert_eq!(p.b.ike_sa_count(), 1);
}

#[test]
fn debug_output_holds_no_key_material() {
    let (p, x, _) = handshake("aes256-sha256-modp2048", "aes256-sha256", true);
    let dbg = format!("{x:?} {:?} {:?} {:?}", p.a_events, p.a, p.a.connections());
    assert!(dbg.contains("redacted"));
    for key in [
        &x.inbound.encr,
        &x.inbound.integ,
        &x.outbound.encr,
        &x.outbound.integ,
    ] {
        let b = key.as_bytes();
        assert!(
            !dbg.contains(&format!("{:?}", &b[..8])),
            "key octets in Debug output"
        );
        assert!(
            !dbg.contains(&hex::encode(&b[..8])),
            "key hex in Debug output"
        );
    }
    assert!(!dbg.contains("secret\""), "PSK in Debug output");
}
