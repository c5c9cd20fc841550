//! Behaviour of SAs and the SA database: anti-replay edge cases (RFC 4303 §3.4.3, Appendix A),
//! padding and trailer checks (§2.4, §2.5), TFC dummies (§2.6), inner packet sanity, lifetime
//! limits and sequence exhaustion (§3.3.3, RFC 4301 §4.4.2.1), UDP-4500 demux (RFC 3948) and
//! selector lookups (RFC 4301 §4.4.1).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{all_suites, config, framed, ipv4_packet, pair, seal_packet};
use esp::algo::{NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NEXT_HEADER_NONE};
use esp::crypto::{Backend, CbcKey, DefaultBackend, GcmKey, MAX_MAC_LEN, MacKey};
use esp::{
    Cipher, DropReason, InboundSa, Integrity, LifetimeState, Limits, OutboundSa, Received,
    SaConfig, SaDatabase, SealError, SelectorPolicy, TrafficSelector, Udp4500, classify_udp4500,
};

/// Builds a valid ESP packet around an arbitrary plaintext (payload + padding + trailer),
/// bypassing our seal, so that receive-side checks on malformed trailers can be reached.
fn forge(cfg: &SaConfig, seq: u32, plaintext: &[u8]) -> Vec<u8> {
    let ek = cfg.enc_key.expose_secret();
    let mut p = Vec::new();
    p.extend_from_slice(&cfg.spi.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    if cfg.cipher.is_aead() {
        let n = cfg.cipher.aes_key_len();
        let key = <DefaultBackend as Backend>::gcm(&ek[..n]).unwrap();
        let iv = [7u8; 8];
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&ek[n..]);
        nonce[4..].copy_from_slice(&iv);
        let aad = p.clone();
        p.extend_from_slice(&iv);
        let mut ct = plaintext.to_vec();
        let mut tag = [0u8; 16];
        key.seal(&nonce, &aad, &mut ct, &mut tag).unwrap();
        p.extend_from_slice(&ct);
        p.extend_from_slice(&tag);
    } else {
        let key = <DefaultBackend as Backend>::cbc(ek).unwrap();
        let iv = [9u8; 16];
        p.extend_from_slice(&iv);
        let mut ct = plaintext.to_vec();
        key.encrypt(&iv, &mut ct).unwrap();
        p.extend_from_slice(&ct);
        let mac =
            <DefaultBackend as Backend>::mac(cfg.integrity, cfg.integ_key.expose_secret()).unwrap();
        let mut out = [0u8; MAX_MAC_LEN];
        mac.mac(&[&p], &mut out);
        p.extend_from_slice(&out[..cfg.integrity.icv_len()]);
    }
    p
}

fn gcm_cfg(esn: bool, window: u32) -> SaConfig {
    let mut c = config(0xabcd_0001, Cipher::AesGcm16_256, Integrity::None, esn, 5);
    c.replay_window = window;
    c
}

#[test]
fn replay_duplicate_too_old_far_ahead() {
    let cfg = gcm_cfg(false, 1024);
    let (tx, rx) = pair(&cfg);
    let inner = ipv4_packet(60, 1);
    let pkts: Vec<Vec<u8>> = (0..3000)
        .map(|_| seal_packet(&tx, &inner, NEXT_HEADER_IPV4))
        .collect();
    // Out of order inside the window is fine.
    for i in [10usize, 5, 7, 1023, 0] {
        rx.open(&mut pkts[i].clone()).unwrap();
    }
    // Duplicate.
    assert_eq!(rx.open(&mut pkts[5].clone()), Err(DropReason::Replayed));
    // Far ahead (seq 3000): the window jumps; seq 1977 = 3000 - 1024 + 1 is the oldest inside.
    rx.open(&mut pkts[2999].clone()).unwrap();
    assert_eq!(rx.open(&mut pkts[1975].clone()), Err(DropReason::TooOld)); // seq 1976
    rx.open(&mut pkts[1976].clone()).unwrap(); // seq 1977
    assert_eq!(rx.open(&mut pkts[1976].clone()), Err(DropReason::Replayed));
    assert_eq!(rx.open(&mut pkts[1023].clone()), Err(DropReason::TooOld));
    let s = rx.stats();
    assert_eq!(s.drops.get(DropReason::Replayed), 2);
    assert_eq!(s.drops.get(DropReason::TooOld), 2);
    assert_eq!(s.highest_seq, 3000);
    assert_eq!(s.packets, 7);
}

#[test]
fn replay_window_of_8192_and_disabled_window() {
    let cfg = gcm_cfg(false, 8192);
    let (tx, rx) = pair(&cfg);
    let inner = ipv4_packet(20, 1);
    let pkts: Vec<Vec<u8>> = (0..9000)
        .map(|_| seal_packet(&tx, &inner, NEXT_HEADER_IPV4))
        .collect();
    rx.open(&mut pkts[8999].clone()).unwrap(); // seq 9000
    rx.open(&mut pkts[808].clone()).unwrap(); // seq 809 = 9000 - 8192 + 1
    assert_eq!(rx.open(&mut pkts[807].clone()), Err(DropReason::TooOld));
    for p in pkts.iter().take(8999).skip(809) {
        rx.open(&mut p.clone()).unwrap();
    }
    assert_eq!(rx.stats().packets, 8192);

    let mut cfg = gcm_cfg(false, 0);
    cfg.replay_window = 0;
    let (tx, rx) = pair(&cfg);
    let p = seal_packet(&tx, &inner, NEXT_HEADER_IPV4);
    rx.open(&mut p.clone()).unwrap();
    rx.open(&mut p.clone()).unwrap();
}

#[test]
fn replay_and_esn_across_the_32_bit_wrap() {
    for (cipher, integ) in [
        (Cipher::AesGcm16_128, Integrity::None),
        (Cipher::AesCbc256, Integrity::HmacSha256_128),
    ] {
        let cfg = config(0x7777_0000, cipher, integ, true, 2);
        let start = (1u64 << 32) - 8;
        let tx = OutboundSa::new(&cfg).unwrap().with_next_seq(start);
        let rx = InboundSa::new(&cfg).unwrap().with_highest_seq(start - 1);
        let inner = ipv4_packet(100, 4);
        let pkts: Vec<Vec<u8>> = (0..16)
            .map(|_| seal_packet(&tx, &inner, NEXT_HEADER_IPV4))
            .collect();
        // Only the low 32 bits travel.
        assert_eq!(&pkts[8][4..8], &[0, 0, 0, 0]);
        assert_eq!(&pkts[9][4..8], &[0, 0, 0, 1]);
        // Deliver the post-wrap half first, then the pre-wrap half (reordered across the wrap).
        for (i, p) in pkts.iter().enumerate().skip(9) {
            let o = rx.open(&mut p.clone()).unwrap();
            assert_eq!(o.seq, start + i as u64);
        }
        for (i, p) in pkts.iter().enumerate().take(8) {
            let o = rx.open(&mut p.clone()).unwrap();
            assert_eq!(o.seq, start + i as u64);
        }
        // pkts[8] has low bits 0 and full number 2^32: valid with ESN.
        assert_eq!(rx.open(&mut pkts[8].clone()).unwrap().seq, 1 << 32);
        for p in &pkts {
            assert_eq!(rx.open(&mut p.clone()), Err(DropReason::Replayed));
        }
        assert_eq!(rx.stats().highest_seq, start + 15);
        // The sender never used the same 64-bit number twice and keeps going.
        assert_eq!(tx.stats().next_seq, start + 16);
    }
}

/// A standby takes an inbound SA over (issue #14): the window exported from the live SA and
/// restored into a new one with the same keys decides every packet the same way, across the
/// 32-bit wrap with ESN (inference of the high-order bits included) and without.
#[test]
fn window_state_moves_to_a_standby_sa_with_the_same_decisions() {
    for (cipher, integ, esn) in [
        (Cipher::AesGcm16_256, Integrity::None, true),
        (Cipher::AesCbc256, Integrity::HmacSha256_128, true),
        (Cipher::AesGcm16_128, Integrity::None, false),
    ] {
        let what = format!("{cipher:?}/{integ:?} esn={esn}");
        let mut cfg = config(0x7777_0002, cipher, integ, esn, 4);
        cfg.replay_window = 256;
        // 3000 packets; with ESN the 1500th carries 2^32 (low bits 0).
        let start = if esn { (1u64 << 32) - 1500 } else { 1 };
        let tx = OutboundSa::new(&cfg).unwrap().with_next_seq(start);
        let inner = ipv4_packet(80, 9);
        let pkts: Vec<Vec<u8>> = (0..3000)
            .map(|_| seal_packet(&tx, &inner, NEXT_HEADER_IPV4))
            .collect();
        assert_eq!(tx.next_seq(), start + 3000, "{what}");
        let live = InboundSa::new(&cfg).unwrap().with_highest_seq(start - 1);
        // Up to packet 1600: in order with every 7th lost, some reordered (late by up to 40),
        // a few duplicates, and a straggler far left of the window.
        let mut order: Vec<usize> = (0..1600).filter(|i| i % 7 != 3).collect();
        for i in (0..order.len() - 40).step_by(13) {
            order.swap(i, i + 40);
        }
        order.extend([1590, 1100, 1595, 20]);
        for &i in &order {
            let _ = live.open(&mut pkts[i].clone());
        }
        let state = live.window_state();
        // 1599 was among the lost.
        assert_eq!(state.highest, start + 1598, "{what}");
        assert_eq!(state.bitmap.len(), 4, "{what}: 256 packets");
        assert_eq!(live.stats().highest_seq, state.highest, "{what}");
        let standby = InboundSa::new(&cfg).unwrap().with_window(&state);
        assert_eq!(standby.window_state(), state, "{what}");
        assert_eq!(standby.replay_window_size(), 256, "{what}");
        // Every packet, in an order that moves the window on and back: the same answers.
        // Right after the restore the window (256 back from packet 1598) spans the wrap: the
        // numbers just before 2^32 get their high-order bits inferred from the older epoch.
        let mut rest: Vec<usize> = (0..3000).collect();
        rest.rotate_left(1250);
        let mut seen = std::collections::BTreeSet::new();
        for i in rest {
            let a = live.open(&mut pkts[i].clone());
            let b = standby.open(&mut pkts[i].clone());
            assert_eq!(a, b, "{what}: packet {i} (seq {:#x})", start + i as u64);
            seen.insert(a.map(|_| "accepted").unwrap_or_else(|e| e.name()));
        }
        assert!(
            seen.contains("accepted") && seen.contains("replayed") && seen.len() >= 3,
            "{what}: {seen:?}"
        );
        assert_eq!(live.window_state(), standby.window_state(), "{what}");
    }
}

/// The outbound counter: read with `next_seq`, and a standby that starts its SA beyond the
/// mark plus the replication interval is accepted by the unchanged peer.
#[test]
fn standby_outbound_sa_starts_beyond_the_mark() {
    let cfg = config(0x7777_0003, Cipher::AesGcm16_256, Integrity::None, true, 5);
    let (live, peer) = pair(&cfg);
    let peer = peer.with_highest_seq(0);
    let inner = ipv4_packet(60, 2);
    assert_eq!(live.next_seq(), 1);
    for _ in 0..100 {
        peer.open(&mut seal_packet(&live, &inner, NEXT_HEADER_IPV4))
            .unwrap();
    }
    let mark = live.next_seq();
    assert_eq!(mark, 101);
    assert_eq!(live.stats().next_seq, mark);
    // Sent after the last mark, fewer than the interval: the standby never learns of them.
    for _ in 0..30 {
        peer.open(&mut seal_packet(&live, &inner, NEXT_HEADER_IPV4))
            .unwrap();
    }
    let interval = 64;
    let standby = OutboundSa::new(&cfg)
        .unwrap()
        .with_next_seq(mark + interval);
    assert_eq!(standby.next_seq(), mark + interval);
    assert_eq!(standby.stats().packets, 0);
    let o = peer
        .open(&mut seal_packet(&standby, &inner, NEXT_HEADER_IPV4))
        .unwrap();
    assert_eq!(o.seq, mark + interval);
    assert_eq!(standby.next_seq(), mark + interval + 1);
    assert_eq!(standby.stats().packets, 1);
}

#[test]
fn esn_high_bits_are_authenticated() {
    // A receiver that believes it is in another 2^32 epoch must fail the ICV, not accept.
    for (cipher, integ) in [
        (Cipher::AesGcm16_128, Integrity::None),
        (Cipher::AesCbc128, Integrity::HmacSha1_96),
    ] {
        let cfg = config(0x7777_0001, cipher, integ, true, 3);
        let tx = OutboundSa::new(&cfg)
            .unwrap()
            .with_next_seq((5 << 32) + 100);
        let rx = InboundSa::new(&cfg)
            .unwrap()
            .with_highest_seq((6 << 32) + 50);
        let p = seal_packet(&tx, &ipv4_packet(20, 0), NEXT_HEADER_IPV4);
        assert_eq!(rx.open(&mut p.clone()), Err(DropReason::AuthFailed));
    }
}

#[test]
fn concurrent_open_accepts_each_sequence_number_once() {
    let cfg = gcm_cfg(false, 1024);
    let (tx, rx) = pair(&cfg);
    let rx = Arc::new(rx);
    let inner = ipv4_packet(64, 0);
    let pkts: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..2000)
            .map(|_| seal_packet(&tx, &inner, NEXT_HEADER_IPV4))
            .collect(),
    );
    let accepted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (rx, pkts, accepted) = (Arc::clone(&rx), Arc::clone(&pkts), Arc::clone(&accepted));
            std::thread::spawn(move || {
                // Every thread offers every packet, in a different order.
                for k in 0..pkts.len() {
                    let i = if t % 2 == 0 { k } else { pkts.len() - 1 - k };
                    if rx.open(&mut pkts[i].clone()).is_ok() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let n = accepted.load(Ordering::Relaxed);
    // Never more than once each; packets that fell out of the window may be lost.
    assert!(n <= 2000, "{n} accepted");
    let s = rx.stats();
    assert_eq!(s.packets as usize, n);
    assert_eq!(s.drops.total() as usize, 4 * 2000 - n);
}

#[test]
fn concurrent_seal_uses_unique_sequence_numbers() {
    let cfg = gcm_cfg(false, 8192);
    let (tx, rx) = pair(&cfg);
    let tx = Arc::new(tx);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let tx = Arc::clone(&tx);
            std::thread::spawn(move || {
                let inner = ipv4_packet(40, 1);
                (0..500)
                    .map(|_| seal_packet(&tx, &inner, NEXT_HEADER_IPV4))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<Vec<u8>> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let mut seqs: Vec<u32> = all
        .iter()
        .map(|p| u32::from_be_bytes(p[4..8].try_into().unwrap()))
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 2000);
    for p in &mut all {
        rx.open(p).unwrap();
    }
}

#[test]
fn padding_trailer_and_next_header_checks() {
    for (cipher, integ) in all_suites() {
        let cfg = config(0x5151_0000, cipher, integ, false, 8);
        let rx = InboundSa::new(&cfg).unwrap();
        let b = cipher.block_len();
        let inner = ipv4_packet(20, 0);
        // Build payload + padding + trailer with chosen pad bytes, aligned.
        let build = |pad_bytes: &[u8], pad_len: u8, nh: u8, payload: &[u8]| {
            let mut pt = payload.to_vec();
            pt.extend_from_slice(pad_bytes);
            pt.push(pad_len);
            pt.push(nh);
            assert_eq!(pt.len() % b, 0);
            pt
        };
        let pad_n = (b - (inner.len() + 2) % b) % b + b; // one extra block of padding
        let good_pad: Vec<u8> = (1..=pad_n as u8).collect();
        let mut seq = 1;
        let mut next = || {
            seq += 1;
            seq
        };
        // Valid (with more padding than needed, allowed by §2.4).
        let o = rx
            .open(&mut forge(
                &cfg,
                next(),
                &build(&good_pad, pad_n as u8, 4, &inner),
            ))
            .unwrap();
        assert_eq!(o.inner.len(), 20);
        // Wrong padding byte.
        let mut bad = good_pad.clone();
        bad[1] = 0;
        assert_eq!(
            rx.open(&mut forge(
                &cfg,
                next(),
                &build(&bad, pad_n as u8, 4, &inner)
            )),
            Err(DropReason::BadPadding)
        );
        // Pad length beyond the data.
        assert_eq!(
            rx.open(&mut forge(&cfg, next(), &build(&good_pad, 250, 4, &inner))),
            Err(DropReason::BadTrailer)
        );
        // Unknown next header (transport-mode TCP).
        assert_eq!(
            rx.open(&mut forge(
                &cfg,
                next(),
                &build(&good_pad, pad_n as u8, 6, &inner)
            )),
            Err(DropReason::UnsupportedNextHeader)
        );
        // IPv6 next header over an IPv4 packet.
        assert_eq!(
            rx.open(&mut forge(
                &cfg,
                next(),
                &build(&good_pad, pad_n as u8, NEXT_HEADER_IPV6, &inner)
            )),
            Err(DropReason::BadInnerPacket)
        );
        let s = rx.stats().drops;
        assert_eq!(
            (s.get(DropReason::BadPadding), s.get(DropReason::BadTrailer)),
            (1, 1)
        );
    }
}

#[test]
fn dummy_packets_and_inner_sanity() {
    let cfg = config(
        0x5252_0000,
        Cipher::AesCbc192,
        Integrity::HmacSha384_192,
        false,
        1,
    );
    let (tx, rx) = pair(&cfg);
    // TFC dummy: dropped and counted.
    let mut p = seal_packet(&tx, &[0xaa; 33], NEXT_HEADER_NONE);
    assert_eq!(rx.open(&mut p), Err(DropReason::Dummy));
    assert_eq!(rx.stats().drops.get(DropReason::Dummy), 1);
    // Inner IPv4 followed by TFC padding: the range excludes the padding.
    let mut inner = ipv4_packet(48, 0);
    inner.extend_from_slice(&[0u8; 30]);
    let mut p = seal_packet(&tx, &inner, NEXT_HEADER_IPV4);
    let o = rx.open(&mut p).unwrap();
    assert_eq!(o.inner.len(), 48);
    // IPv4 total length beyond the payload.
    let mut inner = ipv4_packet(48, 0);
    inner[2..4].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(
        rx.open(&mut seal_packet(&tx, &inner, NEXT_HEADER_IPV4)),
        Err(DropReason::BadInnerPacket)
    );
    // Version 6 under next header 4.
    let mut inner = ipv4_packet(48, 0);
    inner[0] = 0x60;
    assert_eq!(
        rx.open(&mut seal_packet(&tx, &inner, NEXT_HEADER_IPV4)),
        Err(DropReason::BadInnerPacket)
    );
    // A real IPv6 packet under next header 41.
    let mut v6 = vec![0u8; 40 + 12];
    v6[0] = 0x60;
    v6[4..6].copy_from_slice(&12u16.to_be_bytes());
    v6[6] = 17;
    v6[7] = 64;
    let o = rx
        .open(&mut seal_packet(&tx, &v6, NEXT_HEADER_IPV6))
        .unwrap();
    assert_eq!((o.next_header, o.inner.len()), (NEXT_HEADER_IPV6, 52));
}

#[test]
fn seal_checks_room_and_ranges() {
    let cfg = config(0x5353_0000, Cipher::AesGcm16_128, Integrity::None, false, 1);
    let tx = OutboundSa::new(&cfg).unwrap();
    let inner = ipv4_packet(30, 0);
    let (mut buf, range) = framed(&tx, &inner);
    assert_eq!(
        tx.seal(&mut buf, range.start - 1..range.end, 4),
        Err(SealError::NoHeadroom)
    );
    let short = range.end + tx.tailroom(30) - 1;
    assert_eq!(
        tx.seal(&mut buf[..short], range.clone(), 4),
        Err(SealError::NoTailroom)
    );
    let (hi, lo) = (50, 40);
    assert_eq!(tx.seal(&mut buf, hi..lo, 4), Err(SealError::BadRange));
    assert_eq!(tx.seal(&mut buf, 20..10_000, 4), Err(SealError::BadRange));
    assert_eq!(tx.stats().errors.total(), 4);
    // Nothing consumed a sequence number.
    assert_eq!(tx.stats().next_seq, 1);
    assert!(tx.seal(&mut buf, range, 4).is_ok());
}

#[test]
fn sequence_number_never_wraps() {
    let cfg = config(0x5454_0000, Cipher::AesGcm16_128, Integrity::None, false, 1);
    let tx = OutboundSa::new(&cfg)
        .unwrap()
        .with_next_seq(u64::from(u32::MAX) - 1);
    let inner = ipv4_packet(20, 0);
    let (mut buf, range) = framed(&tx, &inner);
    tx.seal(&mut buf.clone(), range.clone(), 4).unwrap();
    assert_eq!(tx.lifetime(), LifetimeState::RekeyNeeded);
    assert!(tx.rekey_signal_pending());
    assert!(tx.take_rekey_signal());
    assert!(!tx.rekey_signal_pending());
    assert!(!tx.take_rekey_signal());
    tx.seal(&mut buf.clone(), range.clone(), 4).unwrap(); // seq 2^32 - 1, the last one
    assert_eq!(
        tx.seal(&mut buf, range.clone(), 4),
        Err(SealError::SequenceExhausted)
    );
    assert_eq!(tx.lifetime(), LifetimeState::Expired);
    assert_eq!(tx.seal(&mut buf, range, 4), Err(SealError::Expired));
}

#[test]
fn lifetime_limits_in_packets_and_bytes() {
    let mut cfg = config(
        0x5555_0000,
        Cipher::AesCbc128,
        Integrity::HmacSha256_128,
        false,
        1,
    );
    cfg.limits = Limits {
        soft_packets: Some(3),
        hard_packets: Some(5),
        soft_bytes: None,
        hard_bytes: None,
    };
    let (tx, rx) = pair(&cfg);
    let inner = ipv4_packet(100, 0);
    let mut pkts = Vec::new();
    for i in 1..=5 {
        pkts.push(seal_packet(&tx, &inner, NEXT_HEADER_IPV4));
        let want = match i {
            1 | 2 => LifetimeState::Active,
            3 | 4 => LifetimeState::RekeyNeeded,
            _ => LifetimeState::Expired,
        };
        assert_eq!(tx.lifetime(), want, "after {i} packets");
    }
    assert!(tx.take_rekey_signal());
    let (mut buf, range) = framed(&tx, &inner);
    assert_eq!(tx.seal(&mut buf, range, 4), Err(SealError::Expired));
    for p in &mut pkts {
        rx.open(p).unwrap();
    }
    assert_eq!(rx.lifetime(), LifetimeState::Expired);
    let mut extra = pkts[0].clone();
    assert_eq!(rx.open(&mut extra), Err(DropReason::Expired));

    let mut cfg = config(0x5556_0000, Cipher::AesGcm16_256, Integrity::None, false, 1);
    cfg.limits = Limits {
        soft_bytes: Some(250),
        hard_bytes: Some(1000),
        ..Limits::default()
    };
    let tx = OutboundSa::new(&cfg).unwrap();
    let mut n = 0;
    while tx.lifetime() != LifetimeState::Expired && n < 100 {
        seal_packet(&tx, &inner, NEXT_HEADER_IPV4);
        n += 1;
        if n == 3 {
            assert_eq!(tx.lifetime(), LifetimeState::RekeyNeeded);
        }
    }
    assert_eq!(n, 10);
    assert_eq!(tx.stats().bytes, 1000);
}

#[test]
fn udp4500_demux_and_database() {
    let cfg_a = config(0x0a0a_0a0a, Cipher::AesGcm16_256, Integrity::None, false, 1);
    let cfg_b = config(
        0x0b0b_0b0b,
        Cipher::AesCbc256,
        Integrity::HmacSha512_256,
        true,
        2,
    );
    let (tx_a, rx_a) = pair(&cfg_a);
    let (tx_b, rx_b) = pair(&cfg_b);
    let mut db: SaDatabase<&'static str> = SaDatabase::new();
    let site = SelectorPolicy {
        local: vec![TrafficSelector::prefix("198.18.0.0".parse().unwrap(), 16)],
        remote: vec![TrafficSelector::prefix("198.19.0.0".parse().unwrap(), 16)],
    };
    db.insert_inbound(Arc::new(rx_a), None);
    // SA b only carries traffic from 198.19.0.0/16 (its remote) to 198.18.0.0/16.
    db.insert_inbound(Arc::new(rx_b), Some(site.clone()));
    let tx_a = Arc::new(tx_a);
    let tx_b = Arc::new(tx_b);
    db.push_outbound(site, Arc::clone(&tx_b), "peer-b");
    db.push_outbound(SelectorPolicy::any(), Arc::clone(&tx_a), "peer-a");

    // Outbound lookup: 198.18/16 -> 198.19/16 goes to b, anything else to a.
    let inner = ipv4_packet(40, 0);
    let e = db.lookup_outbound(&inner).unwrap();
    assert_eq!((e.peer, e.sa.spi()), ("peer-b", 0x0b0b_0b0b));
    let mut other = inner.clone();
    other[16..20].copy_from_slice(&[203, 0, 113, 9]);
    assert_eq!(db.lookup_outbound(&other).unwrap().peer, "peer-a");
    assert!(db.lookup_outbound(&[0x45]).is_none());

    // Inbound: ESP for a, ESP for b (but the inner packet is from the wrong side).
    let mut pa = seal_packet(&tx_a, &inner, NEXT_HEADER_IPV4);
    assert_eq!(classify_udp4500(&pa), Udp4500::Esp);
    match db.receive_udp4500(&mut pa).unwrap() {
        Received::Esp { sa, opened } => {
            assert_eq!(sa.spi(), 0x0a0a_0a0a);
            assert_eq!(&pa[opened.inner], &inner[..]);
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut pb = seal_packet(&tx_b, &inner, NEXT_HEADER_IPV4);
    assert_eq!(
        db.receive_udp4500(&mut pb).unwrap_err(),
        DropReason::PolicyMismatch
    );
    let mut reverse = ipv4_packet(40, 0);
    reverse[12..16].copy_from_slice(&[198, 19, 1, 1]);
    reverse[16..20].copy_from_slice(&[198, 18, 1, 1]);
    let mut pb = seal_packet(&tx_b, &reverse, NEXT_HEADER_IPV4);
    assert!(matches!(
        db.receive_udp4500(&mut pb),
        Ok(Received::Esp { .. })
    ));
    assert_eq!(
        db.inbound(0x0b0b_0b0b)
            .unwrap()
            .stats()
            .drops
            .get(DropReason::PolicyMismatch),
        1
    );

    // IKE, keepalive, runts and unknown SPIs.
    let mut ike = vec![0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    assert!(matches!(db.receive_udp4500(&mut ike), Ok(Received::Ike)));
    assert!(matches!(
        db.receive_udp4500(&mut [0xff]),
        Ok(Received::Keepalive)
    ));
    assert_eq!(
        db.receive_udp4500(&mut [1, 2, 3]).unwrap_err(),
        DropReason::NotEsp
    );
    let mut unknown = pa.clone();
    unknown[0] ^= 0x80;
    assert_eq!(
        db.receive_udp4500(&mut unknown).unwrap_err(),
        DropReason::UnknownSpi
    );
    let clone = db.clone();
    assert_eq!(clone.stats().unknown_spi, 1);
    assert_eq!(clone.stats().malformed, 1);

    // Rekey: swap the outbound SA, drop the old inbound SA.
    let cfg_c = config(0x0c0c_0c0c, Cipher::AesGcm16_128, Integrity::None, false, 3);
    let tx_c = Arc::new(OutboundSa::new(&cfg_c).unwrap());
    assert_eq!(db.replace_outbound_sa(0x0b0b_0b0b, &tx_c), 1);
    assert_eq!(db.lookup_outbound(&inner).unwrap().sa.spi(), 0x0c0c_0c0c);
    assert!(db.remove_inbound(0x0b0b_0b0b).is_some());
    assert_eq!(db.remove_outbound(0x0a0a_0a0a), 1);
    assert!(db.lookup_outbound(&other).is_none());
}

#[test]
fn config_validation() {
    let good = config(0x1000, Cipher::AesGcm16_128, Integrity::None, false, 1);
    assert!(OutboundSa::new(&good).is_ok());
    let mut c = good.clone();
    c.integrity = Integrity::HmacSha1_96;
    assert!(InboundSa::new(&c).is_err());
    let mut c = good.clone();
    c.spi = 255;
    assert!(InboundSa::new(&c).is_err());
    let mut c = good.clone();
    c.enc_key = esp::KeyMaterial::from_slice(&[0; 16]);
    assert!(InboundSa::new(&c).is_err());
    let mut c = config(
        0x1000,
        Cipher::AesCbc128,
        Integrity::HmacSha256_128,
        false,
        1,
    );
    c.integ_key = esp::KeyMaterial::from_slice(&[0; 20]);
    assert!(InboundSa::new(&c).is_err());
    // Keys never show up in Debug output.
    let dbg = format!("{good:?}");
    assert!(dbg.contains("redacted"));
    assert!(!dbg.contains(&format!("{:?}", &good.enc_key.expose_secret()[..4])));
}

#[test]
fn hard_limit_without_soft_limit_still_expires() {
    let mut cfg = config(0x5557_0000, Cipher::AesGcm16_256, Integrity::None, false, 1);
    cfg.limits = Limits {
        hard_packets: Some(2),
        ..Limits::default()
    };
    let tx = OutboundSa::new(&cfg).unwrap();
    let inner = ipv4_packet(100, 0);
    seal_packet(&tx, &inner, NEXT_HEADER_IPV4);
    assert_eq!(tx.lifetime(), LifetimeState::Active);
    seal_packet(&tx, &inner, NEXT_HEADER_IPV4);
    assert_eq!(tx.lifetime(), LifetimeState::Expired);
    let (mut buf, range) = framed(&tx, &inner);
    assert_eq!(tx.seal(&mut buf, range, 4), Err(SealError::Expired));
}
