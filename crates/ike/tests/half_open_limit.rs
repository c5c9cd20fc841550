//! Cookies and the hard half-open maximum (RFC 7296 §2.6): a valid cookie proves only that the
//! sender receives at its address, so past four times the cookie threshold a cookie-bearing
//! request may only replace a half-open SA of its own initiator SPI, or is dropped and counted. Found by the `ike_endpoint` fuzz target: before the cap,
//! one cookie admitted any number of half-open SAs.

mod common;

use std::time::Instant;

/// B (responder, cookies above `cookie_threshold` half-open SAs) and A (initiator) configurations.
fn responder_and_initiator(
    cookie_threshold: usize,
) -> (ike::ConnectionConfig, ike::ConnectionConfig) {
    let mut b = common::conn(
        common::B_IP,
        common::A_IP,
        "psk",
        "aes128gcm16-prfsha256-x25519",
        "aes256gcm16",
    );
    b.cookie_threshold = cookie_threshold;
    let a = common::conn(
        common::A_IP,
        common::B_IP,
        "psk",
        "aes128gcm16-prfsha256-x25519",
        "aes256gcm16",
    );
    (b, a)
}

#[test]
fn one_cookie_does_not_open_unbounded_half_open_sas() {
    let (b_conn, a_conn) = responder_and_initiator(2);
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

#[test]
fn cookie_secret_rotates_and_old_cookies_expire() {
    // RFC 7296 §2.6: the secret behind cookies is replaced every COOKIE_SECRET_LIFETIME; a cookie
    // stays good for one more lifetime (a peer that got it just before the rotation), then a
    // fresh one is demanded.
    let (b_conn, a_conn) = responder_and_initiator(1);
    let t0 = Instant::now();
    let mut b = ike::Endpoint::new(vec![b_conn], Box::new(ike::crypto::TestRng::new(3)));
    let mut filler = ike::Endpoint::new(
        vec![a_conn.clone()],
        Box::new(ike::crypto::TestRng::new(20)),
    );
    filler.initiate("site", t0).expect("initiate");
    let t = filler.poll_transmit().expect("IKE_SA_INIT");
    b.handle(t0, t.remote, t.local, &t.payload)
        .expect("below the threshold");
    while b.poll_transmit().is_some() {}
    // Two more initiators get cookies at t0 and keep their cookie-bearing requests.
    let mut cookie_request = |seed: u64| {
        let mut x = ike::Endpoint::new(
            vec![a_conn.clone()],
            Box::new(ike::crypto::TestRng::new(seed)),
        );
        x.initiate("site", t0).expect("initiate");
        let t = x.poll_transmit().expect("IKE_SA_INIT");
        assert_eq!(
            b.handle(t0, t.remote, t.local, &t.payload),
            Err(ike::DropReason::CookieRequired)
        );
        let c = b.poll_transmit().expect("COOKIE demand");
        let _ = x.handle(t0, c.remote, c.local, &c.payload);
        (x.poll_transmit().expect("request with the cookie"), c)
    };
    let (early, demand) = cookie_request(21);
    let (late, _) = cookie_request(22);
    let lifetime = ike::COOKIE_SECRET_LIFETIME;
    // One lifetime later the secret rotates; a cookie from before is still accepted.
    let t1 = t0 + lifetime + std::time::Duration::from_secs(1);
    assert_eq!(
        b.handle(t1, early.remote, early.local, &early.payload),
        Ok(()),
        "a cookie from just before the rotation"
    );
    while b.poll_transmit().is_some() {}
    // Two lifetimes later the secret has rotated again: the other cookie from t0 is refused and
    // a fresh one, from a new secret, demanded.
    let t2 = t1 + lifetime + std::time::Duration::from_secs(1);
    assert_eq!(
        b.handle(t2, late.remote, late.local, &late.payload),
        Err(ike::DropReason::CookieRequired)
    );
    let fresh = b.poll_transmit().expect("a new COOKIE demand");
    assert_ne!(fresh.payload, demand.payload);
}
