//! Cookies and the hard half-open maximum (RFC 7296 §2.6): a valid cookie proves only that the
//! sender receives at its address, so past four times the cookie threshold a cookie-bearing
//! request may only replace a half-open SA of its own initiator SPI, or is dropped and counted. Found by the `ike_endpoint` fuzz target: before the cap,
//! one cookie admitted any number of half-open SAs.

mod common;

use std::time::Instant;

#[test]
fn one_cookie_does_not_open_unbounded_half_open_sas() {
    let mut b_conn = common::conn(
        common::B_IP,
        common::A_IP,
        "psk",
        "aes128gcm16-prfsha256-x25519",
        "aes256gcm16",
    );
    b_conn.cookie_threshold = 2;
    let a_conn = common::conn(
        common::A_IP,
        common::B_IP,
        "psk",
        "aes128gcm16-prfsha256-x25519",
        "aes256gcm16",
    );
    let now = Instant::now();
    let mut b = ike::Endpoint::new(vec![b_conn], Box::new(ike::crypto::TestRng::new(2)));
    // Two other initiators fill the cookie threshold.
    for seed in [10, 11] {
        let mut x = ike::Endpoint::new(
            vec![a_conn.clone()],
            Box::new(ike::crypto::TestRng::new(seed)),
        );
        x.initiate("site", now).expect("initiate");
        let t = x.poll_transmit().expect("IKE_SA_INIT");
        b.handle(now, t.remote, t.local, &t.payload)
            .expect("below the threshold");
    }
    while b.poll_transmit().is_some() {}
    assert_eq!(b.half_open_count(), 2);
    // A third initiator is asked for a cookie, retries with it, and then 20 variants of its
    // cookie-bearing request arrive (one byte changed near the end, outside Ni and the cookie).
    let mut a = ike::Endpoint::new(vec![a_conn], Box::new(ike::crypto::TestRng::new(1)));
    a.initiate("site", now).expect("initiate");
    let t = a.poll_transmit().expect("IKE_SA_INIT");
    assert_eq!(
        b.handle(now, t.remote, t.local, &t.payload),
        Err(ike::DropReason::CookieRequired)
    );
    let c = b.poll_transmit().expect("COOKIE demand");
    let _ = a.handle(now, c.remote, c.local, &c.payload);
    let with_cookie = a.poll_transmit().expect("request with the cookie");
    for i in 0..20u8 {
        let mut v = with_cookie.payload.clone();
        let n = v.len();
        v[n - 1] ^= i.wrapping_add(1);
        let _ = b.handle(now, with_cookie.remote, with_cookie.local, &v);
        assert!(
            b.half_open_count() <= 8,
            "{} half-open SAs",
            b.half_open_count()
        );
    }
    while b.poll_transmit().is_some() {}
    println!(
        "half-open after 20 cookie-bearing variants: {} (hard maximum 8)",
        b.half_open_count()
    );
    // The genuine cookie-bearing request still gets through (it takes the place of one of its
    // own copies) and the handshake completes.
    assert_eq!(
        b.handle(
            now,
            with_cookie.remote,
            with_cookie.local,
            &with_cookie.payload
        ),
        Ok(())
    );
    assert!(b.half_open_count() <= 8);
    while b.poll_transmit().is_some() {}
    // A fourth initiator with its own cookie finds the table full of other SPIs' SAs: dropped
    // and counted, even with a valid cookie.
    let mut d = ike::Endpoint::new(
        vec![common::conn(
            common::A_IP,
            common::B_IP,
            "psk",
            "aes128gcm16-prfsha256-x25519",
            "aes256gcm16",
        )],
        Box::new(ike::crypto::TestRng::new(99)),
    );
    d.initiate("site", now).expect("initiate");
    let t = d.poll_transmit().expect("IKE_SA_INIT");
    let _ = b.handle(now, t.remote, t.local, &t.payload);
    let c = b.poll_transmit().expect("COOKIE demand");
    let _ = d.handle(now, c.remote, c.local, &c.payload);
    let t = d.poll_transmit().expect("with cookie");
    if b.half_open_count() >= 8 {
        assert_eq!(
            b.handle(now, t.remote, t.local, &t.payload),
            Err(ike::DropReason::HalfOpenLimit)
        );
        assert_eq!(b.counters().half_open_limit, 1);
    }
}
