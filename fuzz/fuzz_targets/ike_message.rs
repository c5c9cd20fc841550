//! Fuzz target for the IKEv2 endpoint (RFC 7296 §2-§3): arbitrary datagrams fed to a responder
//! with no state, to an initiator waiting for its IKE_SA_INIT response, and to both sides of an
//! established IKE SA (SPIs patched in so the SK payload path is reached), on port 500 and on
//! port 4500 (RFC 3948 non-ESP marker). The endpoint must never panic and must stay usable.
//!
//! Run: `cargo fuzz run --sanitizer none ike_message -- -max_total_time=60`
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ike::crypto::{Psk, TestRng};
use ike::proposal::Proposal;
use ike::{ConnectionConfig, Endpoint, Event};
use libfuzzer_sys::fuzz_target;

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn conn(local: Ipv4Addr, remote: Ipv4Addr) -> ConnectionConfig {
    let ike = ["aes128gcm16-prfsha256-x25519", "aes256-sha256-ecp256"]
        .iter()
        .map(|p| Proposal::parse_ike(p).expect("valid"))
        .collect();
    let esp = ["aes256gcm16", "aes128-sha1-esn"]
        .iter()
        .map(|p| Proposal::parse_esp(p).expect("valid"))
        .collect();
    ConnectionConfig::new(
        "fuzz",
        sa(local, 500),
        sa(remote, 500),
        Psk::from("fuzz-psk"),
        ike,
        esp,
    )
}

fn epoch() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

/// Moves every datagram between the two endpoints until both are quiet (bounded).
fn pump(a: &mut Endpoint, b: &mut Endpoint, now: Instant) {
    for _ in 0..32 {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            moved = true;
            let _ = b.handle(now, t.remote, t.local, &t.payload);
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            let _ = a.handle(now, t.remote, t.local, &t.payload);
        }
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
        if !moved {
            return;
        }
    }
}

struct Established {
    a: Endpoint,
    b: Endpoint,
    ispi: u64,
    rspi: u64,
}

fn established() -> &'static Mutex<Established> {
    static E: OnceLock<Mutex<Established>> = OnceLock::new();
    E.get_or_init(|| {
        let mut a = Endpoint::new(vec![conn(A, B)], Box::new(TestRng::new(1)));
        let mut b = Endpoint::new(vec![conn(B, A)], Box::new(TestRng::new(2)));
        let now = epoch();
        a.initiate("fuzz", now).expect("initiate");
        let mut ids = None;
        for _ in 0..32 {
            while let Some(t) = a.poll_transmit() {
                let _ = b.handle(now, t.remote, t.local, &t.payload);
            }
            while let Some(t) = b.poll_transmit() {
                let _ = a.handle(now, t.remote, t.local, &t.payload);
            }
            while let Some(e) = a.poll_event() {
                if let Event::IkeSaEstablished { ispi, rspi, .. } = e {
                    ids = Some((ispi, rspi));
                }
            }
            while b.poll_event().is_some() {}
        }
        let (ispi, rspi) = ids.expect("the fuzz world's handshake completes");
        Mutex::new(Established { a, b, ispi, rspi })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let now = epoch() + Duration::from_secs(1);
    let natt = sel & 0x80 != 0;
    let port = if natt { 4500 } else { 500 };
    let wrap = |body: &[u8]| -> Vec<u8> {
        let mut v = Vec::with_capacity(body.len() + 4);
        if natt {
            v.extend_from_slice(&[0, 0, 0, 0]);
        }
        v.extend_from_slice(body);
        v
    };
    match sel & 0x03 {
        // A responder with no state.
        0 => {
            let mut b = Endpoint::new(vec![conn(B, A)], Box::new(TestRng::new(3)));
            let _ = b.handle(now, sa(B, port), sa(A, port), &wrap(rest));
            while b.poll_transmit().is_some() {}
            b.handle_timeout(now + Duration::from_secs(3600));
            while b.poll_event().is_some() {}
        }
        // An initiator waiting for its IKE_SA_INIT response; its SPI is patched in.
        1 => {
            let mut a = Endpoint::new(vec![conn(A, B)], Box::new(TestRng::new(4)));
            let id = a.initiate("fuzz", now).expect("initiate");
            while a.poll_transmit().is_some() {}
            let mut body = rest.to_vec();
            if body.len() >= 8 {
                body[..8].copy_from_slice(&id.0.to_be_bytes());
            }
            let _ = a.handle(now, sa(A, port), sa(B, port), &wrap(&body));
            while a.poll_transmit().is_some() {}
            while a.poll_event().is_some() {}
            a.handle_timeout(now + Duration::from_secs(3600));
        }
        // Either side of an established IKE SA, with both SPIs patched in.
        _ => {
            let mut e = established().lock().unwrap_or_else(|p| p.into_inner());
            let mut body = rest.to_vec();
            if body.len() >= 16 {
                body[..8].copy_from_slice(&e.ispi.to_be_bytes());
                body[8..16].copy_from_slice(&e.rspi.to_be_bytes());
            }
            let e = &mut *e;
            if sel & 0x01 == 0 {
                let _ = e.b.handle(now, sa(B, port), sa(A, port), &wrap(&body));
            } else {
                let _ = e.a.handle(now, sa(A, port), sa(B, port), &wrap(&body));
            }
            pump(&mut e.a, &mut e.b, now);
        }
    }
});
