//! Every refusal of the receiver, each counted under its reason and leaving the receiver (and
//! the table behind it) as it was.

mod common;

use std::time::Instant;

use common::*;
use ha::limits::*;
use ha::*;

/// Opens `bytes`, expects a refusal of `kind`, and checks that only that counter moved.
fn refused(rx: &mut Receiver, bytes: &[u8], kind: RefusalKind) -> Refusal {
    let (position, counters) = (rx.position(), rx.counters().clone());
    let err = rx.open(bytes).expect_err("must be refused");
    assert_eq!(err.kind(), kind, "{err}");
    assert_eq!(rx.position(), position, "a refusal moved the receiver");
    assert_eq!(rx.counters().accepted, counters.accepted);
    for k in RefusalKind::ALL {
        let extra = u64::from(k == kind);
        assert_eq!(
            rx.counters().refused(k),
            counters.refused(k) + extra,
            "{k:?}"
        );
    }
    err
}

/// A receiver that has accepted counter 0 of [`EPOCH`], the sender, and the next message
/// (counter 1, not yet delivered).
fn primed(m: &Message) -> (Sender, Receiver, Vec<u8>) {
    let (mut tx, mut rx) = pair();
    rx.open(&tx.seal(&Message::Heartbeat).unwrap()).unwrap();
    let next = tx.seal(m).unwrap();
    (tx, rx, next)
}

/// An IKE SA upsert with every optional part present.
fn upsert() -> Message {
    Message::UpsertIke(Box::new(full_ike_sa(1, RequestKind::DeleteIke)))
}

#[test]
fn tampered_header_is_refused() {
    let (_, mut rx, good) = primed(&upsert());
    for byte in 0..HEADER_LEN {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[byte] ^= 1 << bit;
            let kind = match byte {
                0..=3 => RefusalKind::BadMagic,
                4 => RefusalKind::UnknownVersion,
                // Some flips give another valid type: then the tag fails.
                5 => match MessageType::from_u8(bad[5]) {
                    Some(_) => RefusalKind::Auth,
                    None => RefusalKind::UnknownType,
                },
                6..=9 => RefusalKind::WrongSender,
                // A smaller epoch is stale; a larger one gets a key of its own, which fails.
                10..=17 if bad[byte] < good[byte] => RefusalKind::StaleEpoch,
                10..=17 => RefusalKind::Auth,
                // Counter 1 flipped to 0 is a replay, to anything else the tag fails.
                18..=25 if bad[18..26] == [0; 8] => RefusalKind::Replay,
                18..=25 => RefusalKind::Auth,
                // The length's top bits make it too large, the others mismatch.
                _ => match Header::parse(&bad) {
                    Err(e) => e.kind(),
                    Ok(_) => RefusalKind::LengthMismatch,
                },
            };
            refused(&mut rx, &bad, kind);
        }
    }
    // Nothing moved: the genuine message is still accepted, with nothing missed.
    let got = rx.open(&good).unwrap();
    assert_eq!((got.counter, got.missed, got.new_epoch), (1, 0, false));
}

#[test]
fn tampered_body_is_refused() {
    let (_, mut rx, good) = primed(&upsert());
    for i in HEADER_LEN..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 1 << (i % 8);
        refused(&mut rx, &bad, RefusalKind::Auth);
    }
    assert_eq!(
        rx.counters().refused(RefusalKind::Auth),
        (good.len() - HEADER_LEN) as u64
    );
    assert!(rx.open(&good).is_ok());
}

#[test]
fn truncated_at_every_length_is_refused() {
    let (_, mut rx, good) = primed(&upsert());
    for len in 0..good.len() {
        let kind = if len < HEADER_LEN {
            RefusalKind::Truncated
        } else {
            RefusalKind::LengthMismatch
        };
        refused(&mut rx, &good[..len], kind);
    }
    let mut longer = good.clone();
    longer.push(0);
    refused(&mut rx, &longer, RefusalKind::LengthMismatch);
    // A header whose length cannot even hold the tag.
    let mut short = good[..HEADER_LEN].to_vec();
    short[26..30].copy_from_slice(&15u32.to_be_bytes());
    short.extend_from_slice(&[0; 15]);
    refused(&mut rx, &short, RefusalKind::Truncated);
    assert!(rx.open(&good).is_ok());
}

#[test]
fn truncated_body_at_every_length_does_not_decode() {
    for m in every_message() {
        let body = encode_body(&m).unwrap();
        for len in 0..body.len() {
            let err = decode_body(m.message_type(), &body[..len]).unwrap_err();
            assert!(matches!(err.problem, Problem::Truncated { .. }), "{err}");
            assert!(err.offset <= len);
        }
        let mut longer = body.to_vec();
        longer.push(0);
        let err = decode_body(m.message_type(), &longer).unwrap_err();
        assert_eq!(err.problem, Problem::Trailing { len: 1 });
    }
}

#[test]
fn wrong_key_is_refused() {
    let other = ChannelConfig::new(&[0x33; 32], MASTER, BACKUP).unwrap();
    let (_, mut rx, good) = primed(&upsert());
    // Same epoch and counter as `good`, another secret.
    let mut tx = Sender::new(&other, EPOCH).unwrap();
    tx.seal(&Message::Heartbeat).unwrap();
    refused(&mut rx, &tx.seal(&upsert()).unwrap(), RefusalKind::Auth);
    // A new epoch under another secret.
    let mut tx = Sender::new(&other, EPOCH + 1).unwrap();
    refused(&mut rx, &tx.seal(&upsert()).unwrap(), RefusalKind::Auth);
    assert!(rx.open(&good).is_ok());
}

#[test]
fn wrong_sender_id_is_refused() {
    let (_, mut rx, good) = primed(&upsert());
    // A third appliance with the right secret.
    let third = ChannelConfig::new(&SECRET, 0x0a00_0003, BACKUP).unwrap();
    let mut tx3 = Sender::new(&third, EPOCH).unwrap();
    refused(
        &mut rx,
        &tx3.seal(&upsert()).unwrap(),
        RefusalKind::WrongSender,
    );
    // The backup's own message reflected back to it.
    let mut own = Sender::new(&backup_config(), EPOCH).unwrap();
    refused(
        &mut rx,
        &own.seal(&upsert()).unwrap(),
        RefusalKind::WrongSender,
    );
    // The master's message to a third appliance: right sender id, but the key names the
    // recipient, so it does not open here.
    let to_third = ChannelConfig::new(&SECRET, MASTER, 0x0a00_0003).unwrap();
    let mut tx = Sender::new(&to_third, EPOCH).unwrap();
    tx.seal(&Message::Heartbeat).unwrap();
    refused(&mut rx, &tx.seal(&upsert()).unwrap(), RefusalKind::Auth);
    assert!(rx.open(&good).is_ok());
}

#[test]
fn replayed_message_is_refused() {
    let (mut tx, mut rx, good) = primed(&upsert());
    assert!(rx.open(&good).is_ok());
    refused(&mut rx, &good, RefusalKind::Replay);
    let later = tx.seal(&Message::Heartbeat).unwrap();
    assert!(rx.open(&later).is_ok());
    refused(&mut rx, &good, RefusalKind::Replay);
    refused(&mut rx, &later, RefusalKind::Replay);
}

#[test]
fn older_epoch_is_refused_and_newer_resets_the_counter() {
    let (mut old, mut rx, _) = primed(&upsert());
    let old_late = old.seal(&Message::Heartbeat).unwrap();
    // The master restarts with a larger epoch; counters start again at 0.
    let mut new = Sender::new(&master_config(), EPOCH + 1).unwrap();
    let got = rx.open(&new.seal(&Message::Heartbeat).unwrap()).unwrap();
    assert_eq!(
        (got.epoch, got.counter, got.new_epoch, got.missed),
        (EPOCH + 1, 0, true, 0)
    );
    assert_eq!(rx.position(), Some((EPOCH + 1, 0)));
    refused(&mut rx, &old_late, RefusalKind::StaleEpoch);
    let mut older = Sender::new(&master_config(), EPOCH - 1).unwrap();
    refused(
        &mut rx,
        &older.seal(&Message::Heartbeat).unwrap(),
        RefusalKind::StaleEpoch,
    );
}

#[test]
fn counter_reuse_is_refused() {
    // Two senders with the same epoch (a misuse): the second's counters are replays.
    let (mut a, mut rx) = pair();
    let mut b = Sender::new(&master_config(), EPOCH).unwrap();
    rx.open(&a.seal(&Message::Heartbeat).unwrap()).unwrap();
    rx.open(&a.seal(&Message::Heartbeat).unwrap()).unwrap();
    refused(&mut rx, &b.seal(&upsert()).unwrap(), RefusalKind::Replay);
    refused(&mut rx, &b.seal(&upsert()).unwrap(), RefusalKind::Replay);
}

#[test]
fn a_forged_newer_epoch_does_not_move_the_receiver() {
    let (_, mut rx, good) = primed(&upsert());
    let mut forged = good.clone();
    forged[10..18].copy_from_slice(&(EPOCH + 1_000).to_be_bytes());
    refused(&mut rx, &forged, RefusalKind::Auth);
    let mut forged = good.clone();
    forged[18..26].copy_from_slice(&u64::MAX.to_be_bytes());
    refused(&mut rx, &forged, RefusalKind::Auth);
    // Had either moved the receiver, this would be stale or a replay.
    assert!(rx.open(&good).is_ok());
}

#[test]
fn gaps_are_reported() {
    let (mut tx, mut rx) = pair();
    rx.open(&tx.seal(&Message::Heartbeat).unwrap()).unwrap();
    tx.seal(&Message::Heartbeat).unwrap();
    tx.seal(&Message::Heartbeat).unwrap();
    let got = rx.open(&tx.seal(&Message::Heartbeat).unwrap()).unwrap();
    assert_eq!((got.counter, got.missed), (3, 2));
    // A receiver that starts late sees how much of the epoch it missed.
    let mut late = Receiver::new(&backup_config());
    let got = late.open(&tx.seal(&Message::Heartbeat).unwrap()).unwrap();
    assert_eq!((got.counter, got.missed, got.new_epoch), (4, 4, true));
}

#[test]
fn oversized_lengths_are_refused() {
    let (_, mut rx, good) = primed(&Message::Heartbeat);
    for length in [MAX_SEALED_LEN as u32 + 1, u32::MAX] {
        let mut bad = good.clone();
        bad[26..30].copy_from_slice(&length.to_be_bytes());
        let err = refused(&mut rx, &bad, RefusalKind::TooLarge);
        assert_eq!(err, Refusal::TooLarge { length });
        // Also from the header alone, as a stream reader would see it.
        assert_eq!(
            Header::parse(&bad[..HEADER_LEN]),
            Err(Refusal::TooLarge { length })
        );
    }
    // Counts and lengths in a body beyond their limits, and beyond the bytes present.
    let cases: Vec<(MessageType, Vec<u8>, &str)> = vec![
        (
            MessageType::Marks,
            (MAX_MARKS as u32 + 1).to_be_bytes().to_vec(),
            "marks",
        ),
        (MessageType::Marks, u32::MAX.to_be_bytes().to_vec(), "marks"),
        (
            MessageType::Snapshot,
            (MAX_IKE_SAS as u32 + 1).to_be_bytes().to_vec(),
            "IKE SAs",
        ),
        (
            MessageType::UpsertIke,
            (MAX_NAME_LEN as u32 + 1).to_be_bytes().to_vec(),
            "connection name",
        ),
    ];
    for (t, body, what) in cases {
        let err = decode_body(t, &body).unwrap_err();
        assert!(
            matches!(err.problem, Problem::TooLong { what: w, .. } if w == what),
            "{err}"
        );
    }
    // A count within its limit but larger than what follows: refused before allocating.
    let err = decode_body(MessageType::Marks, &1000u32.to_be_bytes()).unwrap_err();
    assert!(matches!(err.problem, Problem::Truncated { .. }));
    // A key longer than its limit inside an otherwise valid IKE SA.
    let mut body = encode_body(&Message::UpsertIke(Box::new(ike_sa(2))))
        .unwrap()
        .to_vec();
    let name_len = 4 + "azure-westeurope-2".len();
    let sk_d_at = name_len + 16 + 1 + 7 + 7 + 3 + 10;
    assert_eq!(body[sk_d_at..sk_d_at + 4], 32u32.to_be_bytes());
    body[sk_d_at..sk_d_at + 4].copy_from_slice(&(MAX_KEY_LEN as u32 + 1).to_be_bytes());
    let err = decode_body(MessageType::UpsertIke, &body).unwrap_err();
    assert_eq!(err.offset, sk_d_at);
    assert!(matches!(err.problem, Problem::TooLong { what: "key", .. }));
}

#[test]
fn authentic_but_malformed_body_is_refused_and_changes_nothing() {
    let (_, mut rx, good) = primed(&Message::Heartbeat);
    // Sealed by an independent implementation with the right key: the tag verifies.
    let cases: [(u8, &[u8]); 4] = [
        (7, &[0]),                   // a heartbeat with a byte
        (5, &[0, 0, 1]),             // a truncated SPI
        (6, &[0, 0, 0, 1, 0, 0, 0]), // a truncated mark
        (4, &[0; 17]),               // a trailing byte
    ];
    for (t, body) in cases {
        let err = refused(&mut rx, &ring_seal(t, 5, body), RefusalKind::Malformed);
        assert!(matches!(err, Refusal::Malformed(_)));
    }
    // An inconsistent snapshot, a Child SA without its IKE SA: the IKE SA cut from a valid one.
    let s = snapshot(1, 1);
    let full = encode_body(&Message::Snapshot(s.clone())).unwrap();
    let ike_len = encode_body(&Message::UpsertIke(Box::new(s.ike[0].clone())))
        .unwrap()
        .len();
    let mut body = 0u32.to_be_bytes().to_vec();
    body.extend_from_slice(&full[4 + ike_len..]);
    let err = refused(&mut rx, &ring_seal(1, 6, &body), RefusalKind::Malformed);
    assert!(matches!(
        err,
        Refusal::Malformed(DecodeError {
            problem: Problem::Dangling { .. },
            ..
        })
    ));
    // Counter 1 is still free.
    assert_eq!(rx.open(&good).unwrap().counter, 1);
}

#[test]
fn bad_configurations_are_refused() {
    assert_eq!(
        ChannelConfig::new(&[1; 31], 1, 2).unwrap_err(),
        ConfigError::SecretTooShort { len: 31 }
    );
    assert_eq!(
        ChannelConfig::new(&[1; 32], 7, 7).unwrap_err(),
        ConfigError::SameIds(7)
    );
    assert!(ChannelConfig::new(&[1; 64], 1, 2).is_ok());
}

#[test]
fn refused_messages_never_reach_the_table() {
    let (mut tx, mut rx) = pair();
    let mut table = Replica::new();
    let now = Instant::now();
    let snap = tx.seal(&Message::Snapshot(snapshot(2, 2))).unwrap();
    table.apply(now, rx.open(&snap).unwrap()).unwrap();
    let before: Vec<_> = table
        .child_sas()
        .map(|(c, m)| (c.clone(), m.clone()))
        .collect();
    let remove = tx.seal(&Message::RemoveIke(spis(0))).unwrap();
    let mut tampered = remove.clone();
    *tampered.last_mut().unwrap() ^= 1;
    for bad in [&tampered[..], &snap[..], &remove[..remove.len() - 1]] {
        // Refused: there is no `Received` to apply, and the table is untouched.
        assert!(rx.open(bad).is_err());
    }
    let after: Vec<_> = table
        .child_sas()
        .map(|(c, m)| (c.clone(), m.clone()))
        .collect();
    assert_eq!(before, after);
    assert!(table.in_sync());
    // The genuine removal still applies, in order, with nothing missed.
    table.apply(now, rx.open(&remove).unwrap()).unwrap();
    assert_eq!(table.ike_sas().count(), 1);
    assert!(table.in_sync());
}

/// An IKE SA whose tail is easy to address, its body, and `p`: the offset of its children
/// count. From `p`: children count(4), link spi(4) status(1) rekey(opt: 1, absent)
/// expire(opt: 9) group(2) reported(1); queue count(4) at p+22, tag(1) at p+26, spi(4);
/// in_flight flag at p+31, kind tag at p+32, spi(4), message_id(4), fragments count at p+41.
fn addressable() -> (IkeSaReplica, Vec<u8>, usize) {
    let mut sa = ike_sa(2);
    sa.timers = IkeTimers::default();
    sa.children.clear();
    sa.queue.clear();
    sa.in_flight = None;
    let bare = encode_body(&Message::UpsertIke(Box::new(sa.clone()))).unwrap();
    let p = bare.len() - 4 - 1 - 4 - 4;
    sa.children = vec![ChildLink {
        inbound_spi: 0x51,
        status: ChildStatus::Deleting,
        rekey_in_ms: None,
        expire_in_ms: Some(1),
        rekey_group: 0,
        reported: true,
    }];
    sa.queue = vec![QueuedWork::RekeyChild { inbound_spi: 0x51 }];
    sa.in_flight = Some(in_flight(RequestKind::DeleteChild { inbound_spi: 0x51 }, 8));
    let body = encode_body(&Message::UpsertIke(Box::new(sa.clone())))
        .unwrap()
        .to_vec();
    (sa, body, p)
}

#[test]
fn unknown_tags_and_bad_flags_in_an_ike_sa_are_refused() {
    let (sa, body, p) = addressable();
    assert_eq!(body[p..p + 4], 1u32.to_be_bytes());
    assert_eq!(body[p + 8], 3, "Deleting");
    assert_eq!(body[p + 26], 0, "RekeyChild");
    assert_eq!(body[p + 31..p + 33], [1, 2], "in flight, DeleteChild");
    assert_eq!(body[p + 41..p + 45], 2u32.to_be_bytes());
    assert_eq!(
        decode_body(MessageType::UpsertIke, &body).unwrap(),
        Message::UpsertIke(Box::new(sa))
    );
    let cases: &[(usize, u8, &str)] = &[
        (p - 12, 2, "initial contact flag"),
        (p - 3, 2, "idle time"),
        (p - 1, 0xff, "expiry time"),
        (p + 8, 4, "Child SA status"),
        (p + 8, 0xff, "Child SA status"),
        (p + 9, 2, "rekey time"),
        (p + 21, 2, "reported flag"),
        (p + 26, 5, "queued work"),
        (p + 26, 0x80, "queued work"),
        (p + 31, 2, "request in flight flag"),
        (p + 32, 7, "request kind"),
        (p + 32, 0xff, "request kind"),
    ];
    for &(at, value, what) in cases {
        let mut bad = body.clone();
        bad[at] = value;
        let err = decode_body(MessageType::UpsertIke, &bad).unwrap_err();
        assert_eq!(
            err,
            DecodeError {
                offset: at,
                problem: Problem::BadValue { what }
            }
        );
    }
    // Every tag in range decodes to its variant (lengths permitting) and re-encodes the same.
    for tag in 0..=3u8 {
        let mut ok = body.clone();
        ok[p + 8] = tag;
        let m = decode_body(MessageType::UpsertIke, &ok).unwrap();
        assert_eq!(&encode_body(&m).unwrap()[..], &ok[..]);
    }
}

#[test]
fn counts_of_an_ike_sa_beyond_their_limits_are_refused() {
    let (_, body, p) = addressable();
    let cases: &[(usize, u32, Problem)] = &[
        (
            p,
            MAX_CHILD_LINKS as u32 + 1,
            Problem::TooLong {
                what: "Child SA links",
                max: MAX_CHILD_LINKS,
                got: MAX_CHILD_LINKS as u64 + 1,
            },
        ),
        (
            p + 22,
            MAX_QUEUED as u32 + 1,
            Problem::TooLong {
                what: "queued work",
                max: MAX_QUEUED,
                got: MAX_QUEUED as u64 + 1,
            },
        ),
        (
            p + 41,
            MAX_RESPONSE_FRAGMENTS as u32 + 1,
            Problem::TooLong {
                what: "request fragments",
                max: MAX_RESPONSE_FRAGMENTS,
                got: MAX_RESPONSE_FRAGMENTS as u64 + 1,
            },
        ),
        (
            p + 41,
            0,
            Problem::BadValue {
                what: "request in flight without fragments",
            },
        ),
        (
            p + 45,
            MAX_RESPONSE_LEN as u32 + 1,
            Problem::TooLong {
                what: "request fragment",
                max: MAX_RESPONSE_LEN,
                got: MAX_RESPONSE_LEN as u64 + 1,
            },
        ),
    ];
    for &(at, value, problem) in cases {
        let mut bad = body.clone();
        bad[at..at + 4].copy_from_slice(&value.to_be_bytes());
        let err = decode_body(MessageType::UpsertIke, &bad).unwrap_err();
        assert_eq!(
            err,
            DecodeError {
                offset: at,
                problem
            }
        );
    }
    // Within the limit but more than is there: refused before allocating.
    let mut bad = body[..p + 26].to_vec();
    bad[p + 22..p + 26].copy_from_slice(&(MAX_QUEUED as u32).to_be_bytes());
    let err = decode_body(MessageType::UpsertIke, &bad).unwrap_err();
    assert_eq!(
        err,
        DecodeError {
            offset: p + 26,
            problem: Problem::Truncated {
                what: "queued work"
            }
        }
    );

    // The request's fragments together beyond MAX_RESPONSE_LEN, each within it.
    let mut sa = ike_sa(2);
    sa.in_flight.as_mut().unwrap().request.fragments =
        vec![vec![1; MAX_RESPONSE_LEN / 2], vec![2; MAX_RESPONSE_LEN / 2]];
    let mut body = encode_body(&Message::UpsertIke(Box::new(sa.clone())))
        .unwrap()
        .to_vec();
    decode_body(MessageType::UpsertIke, &body).unwrap();
    sa.in_flight.as_mut().unwrap().request.fragments[1].push(3);
    assert!(matches!(
        encode_body(&Message::UpsertIke(Box::new(sa))),
        Err(Problem::TooLong {
            what: "request in flight",
            ..
        })
    ));
    // Grow the second fragment's length field by one and insert the byte.
    let second = body.len() - 4 - 4 - MAX_RESPONSE_LEN / 2 - 4;
    assert_eq!(
        body[second..second + 4],
        (MAX_RESPONSE_LEN as u32 / 2).to_be_bytes()
    );
    body[second..second + 4].copy_from_slice(&(MAX_RESPONSE_LEN as u32 / 2 + 1).to_be_bytes());
    body.insert(second + 4, 3);
    let err = decode_body(MessageType::UpsertIke, &body).unwrap_err();
    assert_eq!(
        err,
        DecodeError {
            offset: second,
            problem: Problem::TooLong {
                what: "request in flight",
                max: MAX_RESPONSE_LEN,
                got: MAX_RESPONSE_LEN as u64 + 1
            }
        }
    );

    // Queued selectors and replay words one beyond their limit.
    let mut sa = ike_sa(2);
    sa.queue = vec![QueuedWork::CreateChild {
        local_ts: vec![child_sa(spis(0), 1).ts_remote[0]; MAX_SELECTORS + 1],
        remote_ts: Vec::new(),
        group: 0,
        retried: false,
    }];
    assert!(matches!(
        encode_body(&Message::UpsertIke(Box::new(sa))),
        Err(Problem::TooLong {
            what: "local selectors",
            ..
        })
    ));
    let mut m = mark(1, 2, 3);
    m.replay_bitmap = vec![0; MAX_REPLAY_WORDS];
    let mut body = encode_body(&Message::Marks(vec![m.clone()]))
        .unwrap()
        .to_vec();
    decode_body(MessageType::Marks, &body).unwrap();
    m.replay_bitmap.push(0);
    assert!(encode_body(&Message::Marks(vec![m])).is_err());
    body[24..28].copy_from_slice(&(MAX_REPLAY_WORDS as u32 + 1).to_be_bytes());
    body.extend_from_slice(&[0; 8]);
    let err = decode_body(MessageType::Marks, &body).unwrap_err();
    assert_eq!(err.offset, 24);
    assert!(matches!(
        err.problem,
        Problem::TooLong {
            what: "replay bitmap",
            max: 1024,
            ..
        }
    ));
}

#[test]
fn an_ike_sa_listing_a_child_sa_twice_is_refused() {
    let (mut tx, _) = pair();
    let mut sa = ike_sa(3);
    assert_eq!(sa.children.len(), 3);
    sa.check().unwrap();
    let dup = sa.children[0].inbound_spi;
    sa.children[2].inbound_spi = dup;
    sa.children[2].status = ChildStatus::Rekeyed;
    let expected = Problem::Duplicate {
        what: "Child SA link",
    };
    assert_eq!(sa.check(), Err(expected));
    assert_eq!(
        tx.seal(&Message::UpsertIke(Box::new(sa.clone()))),
        Err(SealError::Invalid(expected))
    );
    let mut s = snapshot(4, 2);
    s.ike[3] = sa.clone();
    assert_eq!(s.check(), Err(expected));
    assert_eq!(
        tx.seal(&Message::Snapshot(s)),
        Err(SealError::Invalid(expected))
    );
    assert_eq!(tx.next_counter(), 0);

    // Written by hand: the decoder refuses it too, at the children count...
    let mut good = ike_sa(3);
    good.children[2].inbound_spi = 0x7777_0000;
    let mut body = encode_body(&Message::UpsertIke(Box::new(good.clone())))
        .unwrap()
        .to_vec();
    let at = (0..body.len() - 4)
        .find(|&i| body[i..i + 4] == 0x7777_0000u32.to_be_bytes())
        .unwrap();
    body[at..at + 4].copy_from_slice(&dup.to_be_bytes());
    let err = decode_body(MessageType::UpsertIke, &body).unwrap_err();
    assert_eq!(err.problem, expected);
    // Two links before it: spi(4) status(1) rekey(opt) expire(opt) group(2) reported(1).
    let links_at = at - (4 + 1 + 9 + 9 + 2 + 1) - (4 + 1 + 9 + 1 + 2 + 1) - 4;
    assert_eq!(body[links_at..links_at + 4], 3u32.to_be_bytes());
    assert_eq!(err.offset, links_at);
    // ...and the receiver as malformed, changing nothing.
    let (_, mut rx, next) = primed(&Message::Heartbeat);
    let err = refused(&mut rx, &ring_seal(2, 1, &body), RefusalKind::Malformed);
    assert_eq!(
        err,
        Refusal::Malformed(DecodeError {
            offset: links_at,
            problem: expected
        })
    );
    assert_eq!(rx.open(&next).unwrap().counter, 1);
}

#[test]
fn child_sa_flags_are_canonical() {
    let c = child_sa(spis(0), 3);
    let body = encode_body(&Message::UpsertChild(Box::new(c))).unwrap();
    let initiator_at = 8 + 8 + 4 + 4 + 1 + 1 + 6 + 1 + 2;
    assert_eq!(body[initiator_at], 1, "3 % 3 == 0: initiator");
    for (at, v, what) in [
        (initiator_at, 2, "initiator"),
        (initiator_at - 3, 2, "ESN flag"),
    ] {
        let mut bad = body.to_vec();
        bad[at] = v;
        assert_eq!(
            decode_body(MessageType::UpsertChild, &bad).unwrap_err(),
            DecodeError {
                offset: at,
                problem: Problem::BadValue { what }
            }
        );
    }
}
