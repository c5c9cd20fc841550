//! Interop of the `ike` crate (RFC 7296 IKE_SA_INIT + IKE_AUTH with PSK, NAT-T per §2.23 with
//! forced encapsulation) against strongSwan's charon over real UDP between two network
//! namespaces (192.0.2.1 = us, 192.0.2.2 = charon with kernel-libipsec and `encap = yes`),
//! both directions, four suites; both sides must report the same Child SA SPIs and algorithms.

use harness::netns::{Netns, veth_pair};
use harness::{Charon, CharonOptions, SwanConn};
use ike::crypto::{Psk, SystemRng};
use ike::proposal::Proposal;
use ike::wire::TrafficSelector;
use ike::{ChildSa, ConnectionConfig, Endpoint, Event, Identity};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

const US: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const THEM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const PSK: &str = "interop-secret-0123456789";

/// (IKE proposal, ESP proposal, strongSwan's names: encr-alg, encr-keysize, integ-alg)
const SUITES: &[(&str, &str, &str, &str, Option<&str>)] = &[
    (
        "aes256-sha1-modp1024",
        "aes256-sha1",
        "AES_CBC",
        "256",
        Some("HMAC_SHA1_96"),
    ),
    (
        "aes256-sha256-modp2048",
        "aes256-sha256",
        "AES_CBC",
        "256",
        Some("HMAC_SHA2_256_128"),
    ),
    (
        "aes256gcm16-prfsha384-ecp384",
        "aes256gcm16",
        "AES_GCM_16",
        "256",
        None,
    ),
    (
        "aes128gcm16-prfsha256-x25519",
        "aes128gcm16",
        "AES_GCM_16",
        "128",
        None,
    ),
];

// Field order is drop order: charon stops before its namespace goes.
struct Lab {
    charon: Charon,
    us: Netns,
    _them: Netns,
}

fn start_lab(ike_p: &str, esp_p: &str) -> Lab {
    let us = Netns::new("ikeio").expect("netns");
    let them = Netns::new("ikeio").expect("netns");
    veth_pair(&us, "v0", &them, "v1").expect("veth");
    us.add_addr("v0", "192.0.2.1/24").expect("addr");
    them.add_addr("v1", "192.0.2.2/24").expect("addr");
    // charon's protected LAN side: kernel-libipsec routes the remote selector with a source
    // address from the local selector.
    them.add_addr("lo", "198.19.2.1/32").expect("addr");
    us.link_up("v0").expect("up");
    them.link_up("v1").expect("up");
    let charon = Charon::start(&them, CharonOptions::default()).expect("charon starts");
    let conn = SwanConn::new("site", IpAddr::V4(THEM), IpAddr::V4(US), PSK)
        .proposals(ike_p, esp_p)
        .ts(&["198.19.2.0/24"], &["198.18.1.0/24"]);
    assert!(conn.encap);
    charon
        .load(&conn.render().expect("swanctl.conf"))
        .expect("load connection");
    Lab {
        us,
        _them: them,
        charon,
    }
}

fn our_conn(ike_p: &str, esp_p: &str) -> ConnectionConfig {
    let mut c = ConnectionConfig::new(
        "site",
        SocketAddr::new(IpAddr::V4(US), 500),
        SocketAddr::new(IpAddr::V4(THEM), 500),
        Psk::from(PSK),
        vec![Proposal::parse_ike(ike_p).expect("ike proposal")],
        vec![Proposal::parse_esp(esp_p).expect("esp proposal")],
    );
    c.local_id = Identity::Ipv4(US);
    c.remote_id = Some(Identity::Ipv4(THEM));
    c.local_ts = vec![TrafficSelector::from_prefix(
        IpAddr::V4(Ipv4Addr::new(198, 18, 1, 0)),
        24,
    )];
    c.remote_ts = vec![TrafficSelector::from_prefix(
        IpAddr::V4(Ipv4Addr::new(198, 19, 0, 0)),
        16,
    )];
    c.force_encap = true;
    c
}

/// Drives the endpoint over the two sockets until a Child SA exists or something failed;
/// bounded by `limit`.
fn drive(
    ep: &mut Endpoint,
    socks: &[(u16, &UdpSocket)],
    limit: Duration,
) -> (Vec<Event>, Option<ChildSa>) {
    let t0 = Instant::now();
    let mut events = Vec::new();
    let mut buf = [0u8; 65536];
    while t0.elapsed() < limit {
        let now = Instant::now();
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        while let Some(t) = ep.poll_transmit() {
            let (_, s) = socks
                .iter()
                .find(|(p, _)| *p == t.local.port())
                .expect("socket for port");
            s.send_to(&t.payload, t.remote).expect("send");
        }
        while let Some(e) = ep.poll_event() {
            let done = match &e {
                Event::ChildSaEstablished(c) => Some(Some((**c).clone())),
                Event::IkeSaFailed { .. } | Event::ChildSaFailed { .. } => Some(None),
                _ => None,
            };
            events.push(e);
            if let Some(c) = done {
                // Flush what the last step produced (the responder's IKE_AUTH answer).
                while let Some(t) = ep.poll_transmit() {
                    let (_, s) = socks
                        .iter()
                        .find(|(p, _)| *p == t.local.port())
                        .expect("socket for port");
                    s.send_to(&t.payload, t.remote).expect("send");
                }
                return (events, c);
            }
        }
        let mut got = false;
        for (port, s) in socks {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                got = true;
                let local = SocketAddr::new(IpAddr::V4(US), *port);
                let _ = ep.handle(Instant::now(), local, from, &buf[..n]);
            }
        }
        if !got {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    (events, None)
}

/// Keeps the endpoint running until `pred` holds for an event (bounded); returns whether it did.
fn pump_until(
    ep: &mut Endpoint,
    socks: &[(u16, &UdpSocket)],
    limit: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> bool {
    let t0 = Instant::now();
    let mut buf = [0u8; 65536];
    while t0.elapsed() < limit {
        let now = Instant::now();
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        while let Some(t) = ep.poll_transmit() {
            let (_, s) = socks
                .iter()
                .find(|(p, _)| *p == t.local.port())
                .expect("socket for port");
            s.send_to(&t.payload, t.remote).expect("send");
        }
        while let Some(e) = ep.poll_event() {
            if pred(&e) {
                return true;
            }
        }
        let mut got = false;
        for (port, s) in socks {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                got = true;
                let _ = ep.handle(
                    Instant::now(),
                    SocketAddr::new(IpAddr::V4(US), *port),
                    from,
                    &buf[..n],
                );
            }
        }
        if !got {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    false
}

fn check(lab: &Lab, ours: &ChildSa, suite: &(&str, &str, &str, &str, Option<&str>)) {
    let theirs = lab
        .charon
        .wait_child("net", Duration::from_secs(10))
        .expect("charon installed the Child SA");
    assert_eq!(
        theirs.spi_in, ours.outbound_spi,
        "{}: our outbound SPI is charon's inbound",
        suite.0
    );
    assert_eq!(
        theirs.spi_out, ours.inbound_spi,
        "{}: our inbound SPI is charon's outbound",
        suite.0
    );
    assert_eq!(theirs.encr_alg, suite.2);
    assert_eq!(
        theirs.encr_keysize.map(|k| k.to_string()).as_deref(),
        Some(suite.3)
    );
    assert_eq!(theirs.integ_alg.as_deref(), suite.4);
    assert!(theirs.encap);
    assert_eq!(ours.encr_key_bits.to_string(), suite.3);
    assert!(ours.udp_encap);
    assert_eq!((ours.local.port(), ours.remote.port()), (4500, 4500));
    // charon narrowed our wider remote selector to its 198.19.2.0/24 (or, as initiator, we
    // narrowed its proposal to what we allow, which is the same).
    assert_eq!(
        ours.remote_ts,
        vec![TrafficSelector::from_prefix(
            IpAddr::V4(Ipv4Addr::new(198, 19, 2, 0)),
            24
        )]
    );
    assert_eq!(
        ours.local_ts,
        vec![TrafficSelector::from_prefix(
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 0)),
            24
        )]
    );
    // The keys charon logged (level 4) are ours, direction by direction.
    let keys = lab.charon.esp_keys();
    let inb = keys
        .iter()
        .find(|k| k.spi == ours.outbound_spi)
        .expect("charon logged its inbound SA keys");
    let outb = keys
        .iter()
        .find(|k| k.spi == ours.inbound_spi)
        .expect("charon logged its outbound SA keys");
    assert!(inb.inbound && !outb.inbound);
    assert_eq!(
        inb.encr_key.bytes(),
        ours.outbound.encr.as_bytes(),
        "{}: keys for packets we send",
        suite.0
    );
    assert_eq!(inb.integ_key.bytes(), ours.outbound.integ.as_bytes());
    assert_eq!(
        outb.encr_key.bytes(),
        ours.inbound.encr.as_bytes(),
        "{}: keys for packets we receive",
        suite.0
    );
    assert_eq!(outb.integ_key.bytes(), ours.inbound.integ.as_bytes());
}

fn sockets(lab: &Lab) -> (UdpSocket, UdpSocket) {
    let s500 = lab
        .us
        .udp_bind(SocketAddr::new(IpAddr::V4(US), 500))
        .expect("bind 500");
    let s4500 = lab
        .us
        .udp_bind(SocketAddr::new(IpAddr::V4(US), 4500))
        .expect("bind 4500");
    s500.set_nonblocking(true).expect("nonblocking");
    s4500.set_nonblocking(true).expect("nonblocking");
    (s500, s4500)
}

#[test]
fn we_initiate_to_strongswan() {
    for suite in SUITES {
        let lab = start_lab(suite.0, suite.1);
        let (s500, s4500) = sockets(&lab);
        let mut ep = Endpoint::new(vec![our_conn(suite.0, suite.1)], Box::new(SystemRng::new()));
        ep.initiate("site", Instant::now()).expect("initiate");
        let (events, child) = drive(
            &mut ep,
            &[(500, &s500), (4500, &s4500)],
            Duration::from_secs(20),
        );
        let child = child.unwrap_or_else(|| panic!("{}: no Child SA; events {events:?}", suite.0));
        assert!(child.initiator);
        check(&lab, &child, suite);
        assert!(lab.charon.proc().is_running());
        // We delete the IKE SA (INFORMATIONAL with Delete, RFC 7296 §1.4.1): charon drops it.
        assert!(ep.delete_ike_sa(child.ike_sa, Instant::now()));
        let socks = [(500, &s500), (4500, &s4500)];
        assert!(pump_until(
            &mut ep,
            &socks,
            Duration::from_secs(10),
            |e| matches!(e, Event::IkeSaDeleted { .. })
        ));
        let t0 = Instant::now();
        while !lab.charon.list_sas().expect("list-sas").is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "charon kept the IKE SA"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn strongswan_initiates_to_us() {
    for suite in SUITES {
        let lab = start_lab(suite.0, suite.1);
        let (s500, s4500) = sockets(&lab);
        let mut ep = Endpoint::new(vec![our_conn(suite.0, suite.1)], Box::new(SystemRng::new()));
        let vici = lab.charon.vici_uri();
        let initiator = std::thread::spawn(move || {
            Command::new("swanctl")
                .args([
                    "--initiate",
                    "--child",
                    "net",
                    "--timeout",
                    "20",
                    "--uri",
                    &vici,
                ])
                .output()
                .expect("swanctl runs")
        });
        let (events, child) = drive(
            &mut ep,
            &[(500, &s500), (4500, &s4500)],
            Duration::from_secs(25),
        );
        // Keep answering until swanctl reports success (it waits for the Child SA).
        let t0 = Instant::now();
        while !initiator.is_finished() && t0.elapsed() < Duration::from_secs(25) {
            let _ = drive(
                &mut ep,
                &[(500, &s500), (4500, &s4500)],
                Duration::from_millis(100),
            );
        }
        let out = initiator.join().expect("swanctl thread");
        let child = child.unwrap_or_else(|| {
            panic!(
                "{}: no Child SA; events {events:?}\nswanctl: {}",
                suite.0,
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert!(
            out.status.success(),
            "swanctl --initiate: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!child.initiator);
        check(&lab, &child, suite);
        // charon deletes the IKE SA: we answer and report it with its Child SA.
        let vici = lab.charon.vici_uri();
        let terminator = std::thread::spawn(move || {
            Command::new("swanctl")
                .args([
                    "--terminate",
                    "--ike",
                    "site",
                    "--timeout",
                    "10",
                    "--uri",
                    &vici,
                ])
                .output()
                .expect("swanctl runs")
        });
        let socks = [(500, &s500), (4500, &s4500)];
        let mut child_deleted = false;
        let deleted = pump_until(&mut ep, &socks, Duration::from_secs(10), |e| {
            child_deleted |= matches!(e, Event::ChildSaDeleted { inbound_spi, .. } if *inbound_spi == child.inbound_spi);
            matches!(e, Event::IkeSaDeleted { .. })
        });
        let out = terminator.join().expect("swanctl thread");
        assert!(
            deleted && child_deleted,
            "swanctl --terminate: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.status.success());
        assert_eq!(ep.ike_sa_count(), 0);
    }
}

#[test]
fn route_based_any_to_any() {
    // Azure's route-based shape: 0.0.0.0/0 <-> 0.0.0.0/0 on both ends, Azure's default suite,
    // the on-prem side (us) initiating with its selectors left empty (= any).
    let (ike_p, esp_p) = ("aes256-sha1-modp1024", "aes256-sha1");
    let us = Netns::new("ikeio").expect("netns");
    let them = Netns::new("ikeio").expect("netns");
    veth_pair(&us, "v0", &them, "v1").expect("veth");
    us.add_addr("v0", "192.0.2.1/24").expect("addr");
    them.add_addr("v1", "192.0.2.2/24").expect("addr");
    us.link_up("v0").expect("up");
    them.link_up("v1").expect("up");
    let charon = Charon::start(&them, CharonOptions::default()).expect("charon starts");
    let conn = SwanConn::new("site", IpAddr::V4(THEM), IpAddr::V4(US), PSK).proposals(ike_p, esp_p);
    charon
        .load(&conn.render().expect("swanctl.conf"))
        .expect("load connection");
    let lab = Lab {
        charon,
        us,
        _them: them,
    };
    let (s500, s4500) = sockets(&lab);
    let mut c = our_conn(ike_p, esp_p);
    c.local_ts.clear();
    c.remote_ts.clear();
    let mut ep = Endpoint::new(vec![c], Box::new(SystemRng::new()));
    ep.initiate("site", Instant::now()).expect("initiate");
    let (events, child) = drive(
        &mut ep,
        &[(500, &s500), (4500, &s4500)],
        Duration::from_secs(20),
    );
    let child = child.unwrap_or_else(|| panic!("no Child SA; events {events:?}"));
    assert_eq!(child.local_ts, vec![TrafficSelector::any_v4()]);
    assert_eq!(child.remote_ts, vec![TrafficSelector::any_v4()]);
    let theirs = lab
        .charon
        .wait_child("net", Duration::from_secs(10))
        .expect("charon installed the Child SA");
    assert_eq!(
        (theirs.spi_in, theirs.spi_out),
        (child.outbound_spi, child.inbound_spi)
    );
    assert_eq!(theirs.local_ts, vec!["0.0.0.0/0".to_string()]);
    assert_eq!(theirs.remote_ts, vec!["0.0.0.0/0".to_string()]);
}
