//! Keys are zeroized on drop and never printed.

mod common;

use std::time::Instant;

use common::*;
use ha::*;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// No trace of the 0xde 0xad 0xbe 0xef key pattern, in decimal or in hex.
fn assert_no_key(s: &str) {
    let lower = s.to_lowercase();
    for needle in ["222, 173", "deadbeef", "de ad be ef", "de, ad", "0xde"] {
        assert!(
            !lower.contains(needle),
            "key bytes printed: {needle} in {s}"
        );
    }
}

#[test]
fn debug_never_prints_keys() {
    let (mut tx, mut rx) = pair();
    let snap = Message::Snapshot(snapshot(2, 2));
    for m in every_message().iter().chain([&snap]) {
        let s = format!("{m:?} {m:#?}");
        assert_no_key(&s);
        let has_keys = match m {
            Message::Snapshot(s) => !s.ike.is_empty(),
            Message::UpsertIke(_) | Message::UpsertChild(_) => true,
            _ => false,
        };
        assert_eq!(s.contains("redacted"), has_keys, "{s}");
    }
    let mut table = Replica::new();
    table
        .apply(Instant::now(), rx.open(&tx.seal(&snap).unwrap()).unwrap())
        .unwrap();
    assert_no_key(&format!(
        "{table:?} {:?}",
        table.takeover(Instant::now(), 100)
    ));
    let cfg = ChannelConfig::new(&[0xde; 40], 1, 2).unwrap();
    let s = format!(
        "{cfg:?} {:?} {:?}",
        Sender::new(&cfg, 1).unwrap(),
        Receiver::new(&cfg)
    );
    assert!(
        !s.contains("222") && !s.to_lowercase().contains("de, de"),
        "{s}"
    );
    assert_eq!(format!("{:?}", key(36, 0)), "Secret(<36 bytes redacted>)");
}

#[test]
fn carried_messages_print_lengths_only() {
    let s = format!("{:?}", ike_sa(1).last_response.unwrap());
    assert_eq!(
        s,
        "SentMessage { message_id: 12, fragment_lens: [1232, 655] }"
    );
    // The request in flight is built from key-like bytes: none of them may show.
    let sa = full_ike_sa(3, RequestKind::DeleteIke);
    let f = sa.in_flight.as_ref().unwrap();
    assert_eq!(
        format!("{f:?}"),
        "InFlight { kind: DeleteIke, request: SentMessage { message_id: 9, \
         fragment_lens: [600, 77] }, transmissions: 1 }"
    );
    assert_no_key(&format!("{sa:?} {sa:#?}"));
}

#[test]
fn secrets_are_zeroized() {
    fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
    zeroized_on_drop::<Secret>();
    let mut k = key(32, 7);
    k.zeroize();
    assert!(k.is_empty());
    // Equality compares contents (in constant time), not only lengths.
    assert_eq!(key(32, 1), key(32, 1));
    assert_ne!(key(32, 1), key(32, 2));
    assert_ne!(key(32, 1), key(31, 1));
}
