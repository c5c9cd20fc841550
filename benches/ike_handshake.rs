//! A full in-memory IKEv2 handshake (RFC 7296 IKE_SA_INIT + IKE_AUTH with PSK and the first
//! Child SA, both sides, no network) per key exchange group, to set beside strongSwan's ~7 ms
//! for `aes256-sha256-modp2048` between two charon instances on this machine.
//!
//! Run: `cargo bench --bench ike_handshake -- --warm-up-time 1 --measurement-time 5`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use ike::crypto::{Psk, SystemRng};
use ike::proposal::Proposal;
use ike::{ConnectionConfig, Endpoint, Event};

const SUITES: &[(&str, &str)] = &[
    ("modp2048", "aes256-sha256-modp2048"),
    ("ecp256", "aes256-sha256-ecp256"),
    ("ecp384", "aes256gcm16-prfsha384-ecp384"),
    ("x25519", "aes128gcm16-prfsha256-x25519"),
    ("modp1024", "aes256-sha1-modp1024"),
];

fn conn(local: Ipv4Addr, remote: Ipv4Addr, ike: &str) -> ConnectionConfig {
    ConnectionConfig::new(
        "bench",
        SocketAddr::new(IpAddr::V4(local), 500),
        SocketAddr::new(IpAddr::V4(remote), 500),
        Psk::from("bench-psk-0123456789"),
        vec![Proposal::parse_ike(ike).expect("valid")],
        vec![Proposal::parse_esp("aes256gcm16").expect("valid")],
    )
}

/// One complete handshake; returns the number of Child SAs established (2: one per side).
fn handshake(ike: &str) -> usize {
    let a_ip = Ipv4Addr::new(192, 0, 2, 1);
    let b_ip = Ipv4Addr::new(192, 0, 2, 2);
    let mut a = Endpoint::new(vec![conn(a_ip, b_ip, ike)], Box::new(SystemRng::new()));
    let mut b = Endpoint::new(vec![conn(b_ip, a_ip, ike)], Box::new(SystemRng::new()));
    let now = Instant::now();
    a.initiate("bench", now).expect("initiate");
    let mut children = 0;
    for _ in 0..8 {
        while let Some(t) = a.poll_transmit() {
            let _ = b.handle(now, t.remote, t.local, &t.payload);
        }
        while let Some(t) = b.poll_transmit() {
            let _ = a.handle(now, t.remote, t.local, &t.payload);
        }
        for ev in std::iter::from_fn(|| a.poll_event()).chain(std::iter::from_fn(|| b.poll_event()))
        {
            if matches!(ev, Event::ChildSaEstablished(_)) {
                children += 1;
            }
        }
        if children == 2 {
            break;
        }
    }
    assert_eq!(children, 2, "{ike}: handshake did not complete");
    children
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ike_handshake");
    for (name, ike) in SUITES {
        g.bench_function(*name, |bch| bch.iter(|| black_box(handshake(ike))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
