//! Property tests: seal then open returns the original for every suite, payload lengths
//! 0..=9000 and any sequence number (RFC 4303 §3.3, §3.4); every single-bit flip of a sealed
//! packet is rejected (RFC 4303 §3.4.4).

mod common;

use common::{all_suites, config, framed, ipv4_packet, pair, seal_packet};
use esp::algo::{NEXT_HEADER_IPV4, NEXT_HEADER_NONE};
use esp::{DropReason, InboundSa, OutboundSa};
use proptest::prelude::*;

fn roundtrip(
    suite_idx: usize,
    esn: bool,
    len: usize,
    seq: u64,
    fill: u8,
) -> Result<(), TestCaseError> {
    let (cipher, integ) = all_suites()[suite_idx % all_suites().len()];
    let cfg = config(0x1234_5678, cipher, integ, esn, fill);
    let tx = OutboundSa::new(&cfg).unwrap().with_next_seq(seq);
    // The receiver last saw a number just before `seq` (needed for ESN beyond 2^32).
    let rx = InboundSa::new(&cfg).unwrap().with_highest_seq(seq - 1);
    let (inner, nh) = if len >= 20 {
        (ipv4_packet(len, fill), NEXT_HEADER_IPV4)
    } else {
        // Too short for an IP packet: carry it as a TFC dummy, which opens to a counted drop.
        (vec![fill; len], NEXT_HEADER_NONE)
    };
    let (mut buf, range) = framed(&tx, &inner);
    let esp = tx.seal(&mut buf, range.clone(), nh).unwrap();
    prop_assert_eq!(esp.start, 0);
    prop_assert_eq!(esp.len(), tx.sealed_len(len));
    prop_assert_eq!(
        (esp.len() - tx.headroom() - integ_icv(&tx)) % cipher.block_len(),
        0
    );
    // The plaintext must not be visible in the packet.
    if len >= 32 {
        prop_assert_ne!(&buf[range.clone()], &inner[..]);
    }
    let packet = &mut buf[esp];
    match rx.open(packet) {
        Ok(o) => {
            prop_assert_eq!(o.next_header, NEXT_HEADER_IPV4);
            prop_assert_eq!(o.seq, seq);
            prop_assert_eq!(&packet[o.inner], &inner[..]);
            prop_assert_eq!(rx.stats().packets, 1);
            prop_assert_eq!(rx.stats().bytes, len as u64);
        }
        Err(e) => {
            prop_assert!(len < 20, "open failed: {e:?}");
            prop_assert_eq!(e, DropReason::Dummy);
            prop_assert_eq!(rx.stats().drops.get(DropReason::Dummy), 1);
        }
    }
    // The same packet again is a replay, caught before decryption.
    prop_assert_eq!(rx.open(packet), Err(DropReason::Replayed));
    Ok(())
}

fn integ_icv(sa: &OutboundSa) -> usize {
    sa.suite().icv_len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn seal_open_roundtrip_32bit(suite in 0usize..15, len in 0usize..=9000, seq in 1u64..=u64::from(u32::MAX), fill: u8) {
        roundtrip(suite, false, len, seq, fill)?;
    }

    #[test]
    fn seal_open_roundtrip_esn(suite in 0usize..15, len in 0usize..=9000, seq in 1u64..(1u64 << 62), fill: u8) {
        roundtrip(suite, true, len, seq, fill)?;
    }
}

#[test]
fn every_length_every_suite() {
    // Exhaustive over the lengths where padding changes (0..=64) and a sweep to 9000.
    for idx in 0..all_suites().len() {
        for len in (0..=64)
            .chain((65..=9000).step_by(97))
            .chain([1400, 8900, 9000])
        {
            roundtrip(idx, idx % 2 == 0, len, 1 + len as u64, len as u8).unwrap();
        }
    }
}

#[test]
fn every_single_bit_flip_is_rejected() {
    for (cipher, integ) in all_suites() {
        for esn in [false, true] {
            for len in [20usize, 61] {
                let cfg = config(0x0102_0304, cipher, integ, esn, 9);
                let (tx, rx) = pair(&cfg);
                let inner = ipv4_packet(len, 3);
                let good = seal_packet(&tx, &inner, NEXT_HEADER_IPV4);
                for bit in 0..good.len() * 8 {
                    let mut p = good.clone();
                    p[bit / 8] ^= 1 << (bit % 8);
                    let e = rx.open(&mut p).expect_err("bit flip accepted");
                    assert!(
                        matches!(
                            e,
                            DropReason::AuthFailed
                                | DropReason::WrongSpi
                                | DropReason::BadSequence
                                | DropReason::TooOld
                        ),
                        "{cipher:?}/{integ:?} esn={esn}: flip of bit {bit} gave {e:?}"
                    );
                }
                // Nothing was marked by the forgeries: the genuine packet still opens.
                let mut p = good.clone();
                let o = rx.open(&mut p).unwrap();
                assert_eq!(&p[o.inner], &inner[..]);
                let s = rx.stats();
                assert_eq!(s.drops.total(), good.len() as u64 * 8);
                // Flips in SPI are wrong-SPI drops; everything after the SPI fails authentication
                // (or, for sequence number 0, the sequence check).
                assert_eq!(s.drops.get(DropReason::WrongSpi), 32);
            }
        }
    }
}

#[test]
fn truncated_and_misaligned_packets_are_typed_drops() {
    for (cipher, integ) in all_suites() {
        let cfg = config(0x0102_0304, cipher, integ, false, 1);
        let (tx, rx) = pair(&cfg);
        let good = seal_packet(&tx, &ipv4_packet(40, 0), NEXT_HEADER_IPV4);
        for cut in 0..good.len() {
            let mut p = good[..cut].to_vec();
            let e = rx.open(&mut p).unwrap_err();
            assert!(
                matches!(
                    e,
                    DropReason::Truncated | DropReason::Misaligned | DropReason::AuthFailed
                ),
                "{cipher:?}: cut at {cut} gave {e:?}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(rx.open(&mut longer).is_err());
    }
}
