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
    big.last_response = Some(LastResponse {
        message_id: 1,
        fragments: vec![
            vec![0x42; MAX_RESPONSE_LEN / MAX_RESPONSE_FRAGMENTS];
            MAX_RESPONSE_FRAGMENTS
        ],
    });
    for j in 0..MAX_CHILD_SAS as u32 {
        let owner = spis(j % MAX_IKE_SAS as u32);
        let mut c = child_sa(owner, 0x10_0000 + j);
        c.ts_local.truncate(1);
        s.child.push(c);
        let mut m = mark(0x10_0000 + j, u64::from(j), u64::from(j));
        m.replay_bitmap = vec![0x5555_5555_5555_5555; MAX_REPLAY_WORDS];
        s.marks.push(m);
    }
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
