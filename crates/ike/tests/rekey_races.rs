//! Races between a Child SA rekey and the next one (RFC 7296 §2.25), with a simulated network
//! where messages are delivered by hand: the peer rekeys the SA our rekey just created before
//! our side has seen the response that created it. That request must be answered with
//! TEMPORARY_FAILURE (try again), not CHILD_SA_NOT_FOUND (after which the peer rightly deletes
//! the SA), and the tunnel must end with exactly one Child SA pair.

mod common;
use common::*;
use std::time::Duration;

/// Delivers one datagram to the endpoint it is addressed to.
fn deliver(p: &mut Pair, t: &ike::Transmit) -> Result<(), ike::DropReason> {
    let to_b = t.remote.ip() == std::net::IpAddr::V4(B_IP);
    p.inject(to_b, t.remote, t.local, &t.payload)
}

#[test]
fn rekey_of_an_sa_whose_creation_response_is_still_in_flight_is_retried_not_dropped() {
    let mut p = Pair::new(
        conn(A_IP, B_IP, "k", "aes256-sha256-modp2048", "aes256gcm16"),
        conn(B_IP, A_IP, "k", "aes256-sha256-modp2048", "aes256gcm16"),
    );
    let now = p.now;
    p.a.initiate("site", now).expect("initiate");
    p.advance(Duration::from_secs(1));
    let (x_in_a, _) = assert_survivors(&p, 1)[0];

    // A rekeys X; B answers (creating Y) but the answer is held back.
    let now = p.now;
    assert!(p.a.rekey_child_spi(x_in_a, now));
    let req = p.a.poll_transmit().expect("A's CREATE_CHILD_SA");
    deliver(&mut p, &req).expect("B answers");
    let resp = p.b.poll_transmit().expect("B's response");
    while let Some(e) = p.b.poll_event() {
        p.b_events.push(e);
    }
    let y_in_b = match p.b_events.last() {
        Some(ike::Event::ChildSaRekeyed { new, .. }) => new.inbound_spi,
        other => panic!("B did not take the rekey: {other:?}"),
    };
    // B rekeys Y at once; its request overtakes its response.
    assert!(p.b.rekey_child_spi(y_in_b, now));
    let req2 = p.b.poll_transmit().expect("B's CREATE_CHILD_SA for Y");
    let r = deliver(&mut p, &req2);
    assert_eq!(
        r,
        Err(ike::DropReason::Refused(
            ike::wire::NotifyType::TEMPORARY_FAILURE
        )),
        "A must ask B to try again, not deny Y exists"
    );
    let answer2 = p.a.poll_transmit().expect("A's answer");
    deliver(&mut p, &answer2).expect("B takes the answer");
    // Now the held response, then let everything settle (B retries after 2-10 s).
    deliver(&mut p, &resp).expect("A takes the response");
    p.advance(Duration::from_secs(30));
    let survivors = assert_survivors(&p, 1);
    let deleted_by_b_without_successor = p.b_events.iter().any(
        |e| matches!(e, ike::Event::ChildSaDeleted { inbound_spi, .. } if *inbound_spi == y_in_b),
    ) && survivors.iter().all(|(_, o)| *o == y_in_b);
    assert!(!deleted_by_b_without_successor);
    println!(
        "A's rekey of X, B's rekey of the new SA overtaking the response: one pair left {survivors:x?}, {} rekeys seen by B",
        rekeyed(&p.b_events)
    );
}
