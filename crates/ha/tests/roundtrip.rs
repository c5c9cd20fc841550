//! Every message type through seal and open, at realistic and at limit sizes; the header layout
//! and the key derivation checked against an independent HKDF and AES-GCM (ring).

mod common;

use common::*;
use ha::limits::*;
use ha::*;

#[test]
fn every_message_type_round_trips() {
    let (mut tx, mut rx) = pair();
    let mut seen = std::collections::HashSet::new();
    for (i, m) in every_message().into_iter().enumerate() {
        let sealed = tx.seal(&m).unwrap();
        let h = Header::parse(&sealed).unwrap();
        assert_eq!(h.message_type, m.message_type());
        assert_eq!((h.sender_id, h.epoch, h.counter), (MASTER, EPOCH, i as u64));
        assert_eq!(h.message_len(), sealed.len());
        let got = rx.open(&sealed).unwrap();
        assert_eq!((got.epoch, got.counter, got.missed), (EPOCH, i as u64, 0));
        assert_eq!(got.new_epoch, i == 0);
        assert_eq!(got.message, m);
        // The plaintext encoding is canonical.
        let body = encode_body(&m).unwrap();
        assert_eq!(sealed.len(), HEADER_LEN + body.len() + TAG_LEN);
        assert_eq!(decode_body(m.message_type(), &body).unwrap(), m);
        seen.insert(m.message_type());
    }
    assert_eq!(seen.len(), MessageType::ALL.len());
    assert_eq!(rx.counters().accepted, every_message().len() as u64);
    assert_eq!(rx.counters().refused_total(), 0);
}

#[test]
fn realistic_snapshot_round_trips() {
    // 200 tunnels with two Child SAs each, half of them holding a two-fragment response.
    let (mut tx, mut rx) = pair();
    let m = Message::Snapshot(snapshot(200, 2));
    let sealed = tx.seal(&m).unwrap();
    assert!(
        sealed.len() > 300_000 && sealed.len() < 1 << 20,
        "{}",
        sealed.len()
    );
    assert_eq!(rx.open(&sealed).unwrap().message, m);
}

fn s_ts() -> TrafficSelector {
    child_sa(spis(0), 1).ts_remote[0]
}

/// A snapshot with every count at its limit and one SA with every length at its limit.
fn limit_snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    for i in 0..MAX_IKE_SAS as u32 {
        let mut sa = ike_sa(i);
        sa.last_response = None;
        s.ike.push(sa);
    }
    let big = &mut s.ike[0];
    big.connection = "x".repeat(MAX_NAME_LEN);
    big.keys.sk_d = key(MAX_KEY_LEN, 9);
    big.last_response = Some(SentMessage {
        message_id: 1,
        fragments: vec![
            vec![0x42; MAX_RESPONSE_LEN / MAX_RESPONSE_FRAGMENTS];
            MAX_RESPONSE_FRAGMENTS
        ],
    });
    big.in_flight = Some(InFlight {
        kind: RequestKind::DeleteIke,
        request: SentMessage {
            message_id: 0,
            fragments: vec![
                vec![0x43; MAX_RESPONSE_LEN / MAX_RESPONSE_FRAGMENTS];
                MAX_RESPONSE_FRAGMENTS
            ],
        },
        transmissions: u32::MAX,
    });
    big.children = (0..MAX_CHILD_LINKS as u32)
        .map(|j| ChildLink {
            inbound_spi: 0x10_0000 + j,
            ..ChildLink::default()
        })
        .collect();
    let ts = s_ts();
    big.queue = vec![
        QueuedWork::CreateChild {
            local_ts: vec![ts; MAX_SELECTORS],
            remote_ts: vec![ts; MAX_SELECTORS],
            group: u16::MAX,
            retried: true,
        };
        MAX_QUEUED
    ];
    for j in 0..MAX_CHILD_SAS as u32 {
        let owner = spis(j % MAX_IKE_SAS as u32);
        let mut c = child_sa(owner, 0x10_0000 + j);
        c.ts_local.truncate(1);
        s.child.push(c);
        s.marks
            .push(mark(0x10_0000 + j, u64::from(j), u64::from(j)));
    }
    // Every mark at MAX_REPLAY_WORDS would not fit in MAX_BODY_LEN.
    s.marks[0].replay_bitmap = vec![0x5555_5555_5555_5555; MAX_REPLAY_WORDS];
    let c = &mut s.child[0];
    c.ts_local = vec![c.ts_remote[0]; MAX_SELECTORS];
    c.ts_remote = vec![c.ts_remote[0]; MAX_SELECTORS];
    c.keys.encr_out = key(MAX_KEY_LEN, 8);
    s
}

#[test]
fn snapshot_at_every_limit_round_trips_and_one_more_is_refused() {
    let (mut tx, mut rx) = pair();
    let s = limit_snapshot();
    let m = Message::Snapshot(s.clone());
    let sealed = tx.seal(&m).unwrap();
    assert_eq!(rx.open(&sealed).unwrap().message, m);

    let mut over = |f: &dyn Fn(&mut Snapshot)| {
        let mut s = s.clone();
        f(&mut s);
        let before = tx.next_counter();
        let r = tx.seal(&Message::Snapshot(s));
        assert_eq!(
            tx.next_counter(),
            before,
            "a refused message uses no counter"
        );
        match r {
            Err(SealError::Invalid(Problem::TooLong { .. })) => {}
            other => panic!("expected TooLong, got {other:?}"),
        }
    };
    over(&|s| {
        let mut sa = ike_sa(MAX_IKE_SAS as u32);
        sa.last_response = None;
        s.ike.push(sa);
    });
    over(&|s| {
        let spi = 0x20_0000;
        s.child.push(child_sa(spis(0), spi));
        s.marks.push(mark(spi, 0, 0));
    });
    over(&|s| s.ike[0].connection.push('x'));
    over(&|s| s.ike[0].keys.sk_pr = key(MAX_KEY_LEN + 1, 0));
    over(&|s| {
        let r = s.ike[0].last_response.as_mut().unwrap();
        r.fragments[0].push(0);
    });
    over(&|s| {
        let r = s.ike[0].last_response.as_mut().unwrap();
        r.fragments.pop();
        r.fragments.push(Vec::new());
        r.fragments.push(Vec::new());
    });
    over(&|s| {
        let ts = s.child[0].ts_remote[0];
        s.child[0].ts_local.push(ts);
    });
    over(&|s| s.child[0].keys.integ_in = key(MAX_KEY_LEN + 1, 0));
    over(&|s| s.marks[0].replay_bitmap.push(0));
    over(&|s| {
        s.ike[0].children.push(ChildLink {
            inbound_spi: 7,
            ..ChildLink::default()
        })
    });
    over(&|s| s.ike[0].queue.push(QueuedWork::RekeyIke));
    over(&|s| match &mut s.ike[0].queue[5] {
        QueuedWork::CreateChild { remote_ts, .. } => remote_ts.push(s_ts()),
        _ => unreachable!(),
    });
    over(&|s| {
        let r = &mut s.ike[0].in_flight.as_mut().unwrap().request;
        r.fragments[3].push(0);
    });
    over(&|s| {
        let r = &mut s.ike[0].in_flight.as_mut().unwrap().request;
        r.fragments.pop();
        r.fragments.push(Vec::new());
        r.fragments.push(Vec::new());
    });
}

#[test]
fn every_variant_round_trips() {
    let mut sas: Vec<IkeSaReplica> = REQUEST_KINDS
        .iter()
        .enumerate()
        .map(|(i, &kind)| full_ike_sa(i as u32, kind))
        .collect();
    // And with nothing optional.
    let mut bare = ike_sa(100);
    bare.last_response = None;
    bare.in_flight = None;
    bare.children.clear();
    bare.queue.clear();
    bare.timers = IkeTimers::default();
    sas.push(bare);
    let (mut tx, mut rx) = pair();
    for sa in &sas {
        let m = Message::UpsertIke(Box::new(sa.clone()));
        let body = encode_body(&m).unwrap();
        assert_eq!(decode_body(MessageType::UpsertIke, &body).unwrap(), m);
        assert_eq!(rx.open(&tx.seal(&m).unwrap()).unwrap().message, m);
    }
    let kinds: std::collections::HashSet<_> = sas
        .iter()
        .filter_map(|sa| sa.in_flight.as_ref().map(|f| format!("{:?}", f.kind)))
        .collect();
    assert_eq!(kinds.len(), 7);
    // All of them in one snapshot, with the Child SAs of some of their links.
    let mut s = Snapshot {
        ike: sas,
        ..Snapshot::default()
    };
    for (j, status) in STATUSES.iter().enumerate() {
        let spi = child_spi(0, j as u32);
        assert_eq!(s.ike[0].children[j].status, *status);
        let mut c = child_sa(spis(0), spi);
        c.dh = 0x1f00 | j as u16;
        c.initiator = j % 2 == 0;
        s.child.push(c);
        s.marks.push(mark(spi, 1, 1));
    }
    let m = Message::Snapshot(s);
    assert_eq!(rx.open(&tx.seal(&m).unwrap()).unwrap().message, m);
}

#[test]
fn new_fields_are_laid_out_as_documented() {
    // From `peer_fragmentation` on, an IKE SA ends: initial_contact, the four timers,
    // children, queue, in_flight, flags.
    let mut sa = ike_sa(2);
    sa.timers = IkeTimers {
        established_for_ms: 0x0102_0304_0506_0708,
        idle_for_ms: None,
        rekey_in_ms: Some(9),
        expire_in_ms: None,
    };
    sa.children = vec![ChildLink {
        inbound_spi: 0xc1c2_c3c4,
        status: ChildStatus::Rekeyed,
        rekey_in_ms: None,
        expire_in_ms: Some(5),
        rekey_group: 0x0013,
        reported: true,
    }];
    sa.queue = vec![
        QueuedWork::DeleteChild { inbound_spi: 0xaa },
        QueuedWork::CreateChild {
            local_ts: Vec::new(),
            remote_ts: vec![s_ts()],
            group: 0x001f,
            retried: false,
        },
    ];
    sa.in_flight = Some(InFlight {
        kind: RequestKind::RekeyChild { inbound_spi: 0xbb },
        request: SentMessage {
            message_id: 0x11,
            fragments: vec![vec![0xee; 3]],
        },
        transmissions: 2,
    });
    sa.flags = 0xf1f2_f3f4;
    let mut tail: Vec<u8> = vec![1, 1]; // peer_fragmentation, initial_contact
    tail.extend_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
    tail.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0]);
    tail.extend_from_slice(&[0, 0, 0, 1, 0xc1, 0xc2, 0xc3, 0xc4, 2, 0]);
    tail.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 5, 0x00, 0x13, 1]);
    tail.extend_from_slice(&[0, 0, 0, 2, 1, 0, 0, 0, 0xaa, 4, 0, 0, 0, 0, 0, 0, 0, 1]);
    // 172.16.0.0-172.16.255.255, any protocol and port.
    tail.extend_from_slice(&[4, 0, 0, 0, 0xff, 0xff, 172, 16, 0, 0, 172, 16, 255, 255]);
    tail.extend_from_slice(&[0x00, 0x1f, 0]);
    tail.extend_from_slice(&[1, 4, 0, 0, 0, 0xbb, 0, 0, 0, 0x11, 0, 0, 0, 1]);
    tail.extend_from_slice(&[0, 0, 0, 3, 0xee, 0xee, 0xee, 0, 0, 0, 2]);
    tail.extend_from_slice(&0xf1f2_f3f4u32.to_be_bytes());
    let body = encode_body(&Message::UpsertIke(Box::new(sa))).unwrap();
    assert!(
        body.ends_with(&tail),
        "{:x?}",
        &body[body.len() - tail.len()..]
    );

    // A Child SA: ... esn(bool) dh(u16) initiator(bool) keys ..., then four lifetimes.
    let mut c = child_sa(spis(0), 3);
    c.dh = 0x0e0f;
    c.initiator = true;
    c.lifetime = ChildLifetime {
        soft_bytes: Some(1),
        hard_bytes: None,
        soft_packets: None,
        hard_packets: Some(2),
    };
    let body = encode_body(&Message::UpsertChild(Box::new(c.clone()))).unwrap();
    let esn_at = 8 + 8 + 4 + 4 + 1 + 1 + 6;
    assert_eq!(body[esn_at], 0);
    assert_eq!(body[esn_at + 1..esn_at + 4], [0x0e, 0x0f, 1]);
    let mut lifetimes = vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];
    let c_ = &c.counters;
    for v in [c_.bytes_in, c_.bytes_out, c_.packets_in, c_.packets_out] {
        lifetimes.extend_from_slice(&v.to_be_bytes());
    }
    assert!(body.ends_with(&lifetimes));
}

#[test]
fn empty_responses_and_mixed_selectors_are_not_sent() {
    let (mut tx, _) = pair();
    let mut sa = ike_sa(1);
    sa.last_response.as_mut().unwrap().fragments.clear();
    assert!(matches!(
        tx.seal(&Message::UpsertIke(Box::new(sa))),
        Err(SealError::Invalid(Problem::BadValue { .. }))
    ));
    let mut sa = ike_sa(1);
    sa.in_flight.as_mut().unwrap().request.fragments.clear();
    assert!(matches!(
        tx.seal(&Message::UpsertIke(Box::new(sa))),
        Err(SealError::Invalid(Problem::BadValue {
            what: "request in flight without fragments"
        }))
    ));
    let mut c = child_sa(spis(1), 5);
    c.ts_local[0].end = "::1".parse().unwrap();
    assert!(matches!(
        tx.seal(&Message::UpsertChild(Box::new(c))),
        Err(SealError::Invalid(Problem::BadValue { .. }))
    ));
    assert_eq!(tx.next_counter(), 0);
}

#[test]
fn header_layout_is_as_documented() {
    let (mut tx, _) = pair();
    tx.seal(&Message::Heartbeat).unwrap();
    let sealed = tx.seal(&Message::RemoveChild { inbound_spi: 7 }).unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(b"HGHA");
    expected.push(1);
    expected.push(5);
    expected.extend_from_slice(&MASTER.to_be_bytes());
    expected.extend_from_slice(&EPOCH.to_be_bytes());
    expected.extend_from_slice(&1u64.to_be_bytes());
    expected.extend_from_slice(&(4u32 + 16).to_be_bytes());
    assert_eq!(&sealed[..HEADER_LEN], &expected[..]);
    assert_eq!(sealed.len(), HEADER_LEN + 4 + TAG_LEN);
}

#[test]
fn an_independent_aes_gcm_opens_what_we_seal() {
    let (mut tx, mut rx) = pair();
    let sealed = tx.seal(&Message::RemoveIke(spis(3))).unwrap();
    let plain = ring_open(&sealed, MASTER, BACKUP);
    let mut expected = spis(3).initiator.to_be_bytes().to_vec();
    expected.extend_from_slice(&spis(3).responder.to_be_bytes());
    assert_eq!(plain, expected);
    for m in every_message() {
        let sealed = tx.seal(&m).unwrap();
        assert_eq!(
            &ring_open(&sealed, MASTER, BACKUP)[..],
            &encode_body(&m).unwrap()[..]
        );
    }
    // And we open what it seals.
    let body = [0u8, 0, 0, 42];
    let got = rx.open(&ring_seal(5, 1000, &body)).unwrap();
    assert_eq!(got.message, Message::RemoveChild { inbound_spi: 42 });
}

#[test]
fn the_backup_can_send_too() {
    // After a takeover the roles swap: B's sender, A's receiver, another key.
    let mut tx = Sender::new(&backup_config(), EPOCH + 1).unwrap();
    let mut rx = Receiver::new(&master_config());
    let sealed = tx.seal(&Message::Heartbeat).unwrap();
    assert_eq!(rx.open(&sealed).unwrap().message, Message::Heartbeat);
    assert_eq!(ring_open(&sealed, BACKUP, MASTER), Vec::<u8>::new());
}
