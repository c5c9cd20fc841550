//! Self-test of the end-to-end harness: the lab topology routes in clear, and a strongSwan-to-strongSwan
//! IKEv2/ESP-in-UDP tunnel (RFC 7296, RFC 4303, RFC 3948) between the gateway namespaces carries the
//! hosts' traffic, which tshark decrypts with the keys from charon's log.

use std::path::Path;
use std::time::{Duration, Instant};

use harness::capture::{Capture, Tshark, assert_no_clear, assert_only_ike_ports};
use harness::netns::topology::{Lab, WAN_IF};
use harness::{Charon, CharonOptions, Iperf3Options, Iperf3Server, SwanConn, iperf3_client, ping};

const PSK: &str = "harness-selftest-psk-0123456789";

fn names(lab: &Lab) -> Vec<String> {
    lab.namespaces()
        .iter()
        .map(|n| n.name().to_string())
        .collect()
}

fn assert_gone(names: &[String], pids: &[u32]) {
    for n in names {
        assert!(
            !Path::new("/run/netns").join(n).exists(),
            "namespace {n} left behind"
        );
    }
    for p in pids {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "process {p} left behind: {stat}"
        );
    }
}

#[test]
fn lab_routes_in_clear_end_to_end() {
    let lab = Lab::builder()
        .prefix("hst")
        .plain_routes(true)
        .build()
        .unwrap();
    let s = ping(
        &lab.onprem_host,
        lab.azure_host_ip,
        5,
        Duration::from_millis(50),
    )
    .unwrap();
    println!(
        "plain routing ping {} -> {}: {s:?}",
        lab.onprem_host_ip, lab.azure_host_ip
    );
    assert_eq!(s.received, 5, "{s:?}");
    let back = ping(
        &lab.azure_host,
        lab.onprem_host_ip,
        2,
        Duration::from_millis(50),
    )
    .unwrap();
    assert_eq!(back.received, 2);
    let srv = Iperf3Server::start(&lab.azure_host, lab.azure_host_ip, 5201).unwrap();
    let opts = Iperf3Options {
        duration: Duration::from_secs(1),
        ..Default::default()
    };
    let r = iperf3_client(&lab.onprem_host, lab.azure_host_ip, srv.port, &opts).unwrap();
    println!(
        "plain routing iperf3 TCP: {:.2} Gbit/s sent, {:.2} Gbit/s received, {:?} retransmits",
        r.sent_bps / 1e9,
        r.received_bps / 1e9,
        r.retransmits
    );
    assert!(r.bytes_received > 0);
    let udp = Iperf3Options {
        udp: true,
        bitrate: Some("50M".into()),
        ..opts
    };
    let r = iperf3_client(&lab.onprem_host, lab.azure_host_ip, srv.port, &udp).unwrap();
    println!(
        "plain routing iperf3 UDP 50 Mbit/s: lost {:?} %, jitter {:?} ms",
        r.lost_percent, r.jitter_ms
    );
    let n = names(&lab);
    drop(lab);
    assert_gone(&n, &[]);
}

fn start_pair(lab: &Lab, conn: &SwanConn) -> (Charon, Charon) {
    let t = Instant::now();
    let a = Charon::start(&lab.onprem_gw, CharonOptions::default()).unwrap();
    let b = Charon::start(&lab.azure_gw, CharonOptions::default()).unwrap();
    println!("two charons up in {:?}", t.elapsed());
    b.load(&conn.mirrored().render().unwrap()).unwrap();
    a.load(&conn.render().unwrap()).unwrap();
    let t = Instant::now();
    a.initiate(&conn.child).unwrap();
    println!("IKE_SA_INIT + IKE_AUTH + Child SA: {:?}", t.elapsed());
    (a, b)
}

#[test]
fn strongswan_tunnel_carries_and_tshark_decrypts() {
    let lab = Lab::builder().prefix("hst").build().unwrap();
    let conn = SwanConn::new(
        "gw",
        lab.onprem_gw_wan_ip.into(),
        lab.azure_gw_wan_ip.into(),
        PSK,
    )
    .ts(&["198.18.1.0/24"], &["198.19.1.0/24"]);
    let cap = Capture::start(&lab.onprem_gw, WAN_IF, None).unwrap();
    let (a, b) = start_pair(&lab, &conn);

    let sas = a.list_sas().unwrap();
    assert_eq!(sas.len(), 1, "{sas:?}");
    let ike = &sas[0];
    assert_eq!(ike.state, "ESTABLISHED");
    assert!(ike.initiator);
    assert_eq!(
        (
            ike.encr_alg.as_str(),
            ike.encr_keysize,
            ike.dh_group.as_str()
        ),
        ("AES_GCM_16", Some(256), "ECP_256")
    );
    let child = ike.child("net").expect("child SA net installed").clone();
    assert!(child.encap);
    assert_eq!(child.encr_alg, "AES_GCM_16");

    let s = ping(
        &lab.onprem_host,
        lab.azure_host_ip,
        5,
        Duration::from_millis(50),
    )
    .unwrap();
    println!("ping through strongSwan tunnel: {s:?}");
    assert_eq!(s.received, 5, "{s:?}");
    let pcap = cap.stop().unwrap();
    println!("capture: {}", pcap.report.trim());

    // Counters moved on both ends, and the SPIs match crosswise.
    let child_a = a.wait_child("net", Duration::from_secs(2)).unwrap();
    let child_b = b.wait_child("net", Duration::from_secs(2)).unwrap();
    assert!(
        child_a.packets_out >= 5 && child_a.packets_in >= 5,
        "{child_a:?}"
    );
    assert_eq!(
        (child_a.spi_in, child_a.spi_out),
        (child_b.spi_out, child_b.spi_in)
    );
    println!(
        "child SA: spi_in {:08x} spi_out {:08x} bytes out {} in {}",
        child_a.spi_in, child_a.spi_out, child_a.bytes_out, child_a.bytes_in
    );

    // On the underlay only IKE and ESP-in-UDP, never the inner addresses in clear.
    assert_only_ike_ports(pcap.path()).unwrap();
    assert_no_clear(pcap.path(), &[lab.onprem_host_ip, lab.azure_host_ip]).unwrap();
    let esp = Tshark::new()
        .fields(pcap.path(), Some("esp"), &["esp.spi"])
        .unwrap();
    assert!(esp.len() >= 10, "expected ESP packets, got {}", esp.len());

    // The keys from either log decrypt the ESP and show the inner ICMP.
    for (who, c, is_a) in [("initiator", &a, true), ("responder", &b, false)] {
        let keys = c.esp_keys();
        assert_eq!(keys.len(), 2, "{who}: {keys:?}");
        for k in &keys {
            let want = child_a_spi_for(&child_a, is_a, k.inbound);
            assert_eq!(k.spi, want, "{who}: SPI of {k:?}");
        }
        let t = Tshark::new().esp_keys(&keys, false).unwrap();
        let icmp = t
            .fields(
                pcap.path(),
                Some("icmp"),
                &["ip.src", "ip.dst", "icmp.type"],
            )
            .unwrap();
        println!(
            "{who} keys: {} decrypted ICMP packets, e.g. {:?}",
            icmp.len(),
            icmp.first()
        );
        assert_eq!(
            icmp.len(),
            10,
            "{who}: 5 requests and 5 replies expected: {icmp:?}"
        );
        assert!(
            icmp.iter().any(|f| f[0].contains("198.18.1.10")
                && f[1].contains("198.19.1.10")
                && f[2] == "8")
        );
        assert!(
            icmp.iter().any(|f| f[0].contains("198.19.1.10")
                && f[1].contains("198.18.1.10")
                && f[2] == "0")
        );
    }

    // The IKE keys decrypt IKE_AUTH (its identification payloads become visible).
    let ike_keys = a.ike_keys();
    assert_eq!(ike_keys.len(), 1, "{ike_keys:?}");
    assert_eq!(ike_keys[0].ispi, ike.initiator_spi);
    assert_eq!(ike_keys[0].rspi, ike.responder_spi);
    assert_eq!(b.ike_keys()[0].sk_ei, ike_keys[0].sk_ei);
    let ids = Tshark::new()
        .ike_keys(&ike_keys)
        .unwrap()
        .fields(pcap.path(), Some("isakmp.id.type"), &["isakmp.id.type"])
        .unwrap();
    println!("decrypted IKE messages with ID payloads: {}", ids.len());
    assert_eq!(
        ids.len(),
        2,
        "IKE_AUTH request and response expected: {ids:?}"
    );
    let without = Tshark::new()
        .fields(pcap.path(), Some("isakmp.id.type"), &["isakmp.id.type"])
        .unwrap();
    assert!(without.is_empty(), "ID payloads readable without keys?");

    a.terminate_ike("gw").unwrap();
    assert!(b.list_sas().map(|v| v.is_empty()).unwrap_or(false) || wait_empty(&b));

    let pids = [a.proc().pid(), b.proc().pid()];
    let n = names(&lab);
    drop((a, b));
    drop(lab);
    assert_gone(&n, &pids);
}

/// The SPI charon `a` (if `is_a`) or `b` uses for its inbound/outbound SA, from a's view.
fn child_a_spi_for(child_a: &harness::ChildSa, is_a: bool, inbound: bool) -> u32 {
    match (is_a, inbound) {
        (true, true) | (false, false) => child_a.spi_in,
        (true, false) | (false, true) => child_a.spi_out,
    }
}

fn wait_empty(c: &Charon) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if c.list_sas().map(|v| v.is_empty()).unwrap_or(false) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn strongswan_any_to_any_with_router() {
    // Azure route-based style: 0.0.0.0/0 selectors; routes into ipsec0 are ours (main table first).
    let lab = Lab::builder().prefix("hst").router(true).build().unwrap();
    let conn = SwanConn::new(
        "az",
        lab.onprem_gw_wan_ip.into(),
        lab.azure_gw_wan_ip.into(),
        PSK,
    )
    .proposals("aes256-sha256-modp2048", "aes256-sha256");
    let (a, b) = start_pair(&lab, &conn);
    Charon::route_into_tunnel(&lab.onprem_gw, "198.19.1.0/24", Some(lab.onprem_gw_lan_ip)).unwrap();
    Charon::route_into_tunnel(&lab.azure_gw, "198.18.1.0/24", Some(lab.azure_gw_lan_ip)).unwrap();
    let s = ping(
        &lab.onprem_host,
        lab.azure_host_ip,
        5,
        Duration::from_millis(50),
    )
    .unwrap();
    println!("any-to-any AES-CBC/SHA-256 tunnel via router: {s:?}");
    assert_eq!(s.received, 5, "{s:?}");
    let srv = Iperf3Server::start(&lab.azure_host, lab.azure_host_ip, 5201).unwrap();
    let opts = Iperf3Options {
        duration: Duration::from_secs(2),
        ..Default::default()
    };
    let r = iperf3_client(&lab.onprem_host, lab.azure_host_ip, srv.port, &opts).unwrap();
    println!(
        "strongSwan kernel-libipsec AES-256-CBC/SHA-256 iperf3 TCP (shared cores): \
         {:.3} Gbit/s, {:?} retransmits",
        r.received_bps / 1e9,
        r.retransmits
    );
    assert!(r.bytes_received > 0);
    // The gateway itself still reaches its own LAN (not swallowed by the tunnel).
    assert_eq!(
        ping(
            &lab.onprem_gw,
            lab.onprem_host_ip,
            1,
            Duration::from_millis(50)
        )
        .unwrap()
        .received,
        1
    );
    let child = a.wait_child("net", Duration::from_secs(2)).unwrap();
    assert_eq!(child.integ_alg.as_deref(), Some("HMAC_SHA2_256_128"));
    assert_eq!(child.local_ts, vec!["0.0.0.0/0"]);
    // CBC + HMAC keys are found too.
    let keys = b.esp_keys();
    assert_eq!(keys.len(), 2);
    assert!(
        keys.iter()
            .all(|k| k.encr_key.len() == 32 && k.integ_key.len() == 32),
        "{keys:?}"
    );
}

#[test]
fn keys_follow_rekeys_initiated_by_either_side() {
    let lab = Lab::builder().prefix("hst").build().unwrap();
    let conn = SwanConn::new(
        "gw",
        lab.onprem_gw_wan_ip.into(),
        lab.azure_gw_wan_ip.into(),
        PSK,
    )
    .ts(&["198.18.1.0/24"], &["198.19.1.0/24"])
    .proposals("aes128-sha256-modp2048", "aes128gcm16");
    let (a, b) = start_pair(&lab, &conn);
    // The responder rekeys the Child SA, then the initiator rekeys the IKE SA.
    b.rekey_child("net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.esp_keys().len() < 4 || b.esp_keys().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "Child SA rekey not seen in the logs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.rekey_ike("gw").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.ike_keys().len() < 2 || b.ike_keys().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "IKE SA rekey not seen in the logs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let cap = Capture::start(&lab.azure_gw, WAN_IF, Some("udp")).unwrap();
    let s = ping(
        &lab.onprem_host,
        lab.azure_host_ip,
        3,
        Duration::from_millis(50),
    )
    .unwrap();
    // Not asserted exactly: this test is about key attribution; every ESP packet must decrypt.
    println!("ping after rekeys: {s:?}");
    assert!(s.received >= 1, "{s:?}");
    a.rekey_ike("gw").unwrap(); // an INFORMATIONAL/CREATE_CHILD_SA exchange inside the capture
    std::thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop().unwrap();
    let sas = a.list_sas().unwrap();
    let live = sas[0].child("net").unwrap();
    let n_esp = Tshark::new()
        .fields(pcap.path(), Some("esp"), &["esp.spi"])
        .unwrap()
        .len();
    assert!(n_esp >= 2, "ESP packets in capture: {n_esp}");
    for (who, c) in [("initiator", &a), ("responder", &b)] {
        let keys = c.esp_keys();
        let spis: Vec<u32> = keys.iter().map(|k| k.spi).collect();
        assert!(
            spis.contains(&live.spi_in) && spis.contains(&live.spi_out),
            "{who}: {spis:x?} vs {live:?}"
        );
        let icmp = Tshark::new()
            .esp_keys(&keys, false)
            .unwrap()
            .fields(pcap.path(), Some("icmp"), &["ip.src"])
            .unwrap();
        println!(
            "{who}: after rekeys, {} ICMP packets decrypted with {} ESP SAs",
            icmp.len(),
            keys.len()
        );
        assert_eq!(
            icmp.len(),
            n_esp,
            "{who}: every ESP packet decrypts to ICMP: {icmp:?}"
        );
        assert!(icmp.len() >= 2 * s.received as usize, "{who}: {icmp:?}");
        let ike = c.ike_keys();
        let now = c.list_sas().unwrap();
        assert!(
            ike.iter()
                .any(|k| k.ispi == now[0].initiator_spi && k.rspi == now[0].responder_spi),
            "{who}: current IKE SA {}_{} not among {:?}",
            now[0].initiator_spi,
            now[0].responder_spi,
            ike.iter()
                .map(|k| format!("{}_{}", k.ispi, k.rspi))
                .collect::<Vec<_>>()
        );
    }
    // The second IKE rekey (CREATE_CHILD_SA protected with the keys of the first rekeyed IKE SA)
    // decrypts with either side's IKE keys: its KE payloads (type 34) become visible.
    let filter = "isakmp.exchangetype == 36 && isakmp.typepayload == 34";
    for (who, c) in [("initiator", &a), ("responder", &b)] {
        let dec = Tshark::new()
            .ike_keys(&c.ike_keys())
            .unwrap()
            .fields(pcap.path(), Some(filter), &["isakmp.ispi"])
            .unwrap();
        println!("{who}: decrypted CREATE_CHILD_SA messages: {}", dec.len());
        assert_eq!(dec.len(), 2, "{who}: {dec:?}");
    }
    assert!(
        Tshark::new()
            .fields(pcap.path(), Some(filter), &["isakmp.ispi"])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn everything_is_cleaned_up_after_a_panic() {
    let mut recorded: (Vec<String>, Vec<u32>) = (Vec::new(), Vec::new());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::builder().prefix("hst").router(true).build().unwrap();
        let a = Charon::start(
            &lab.onprem_gw,
            CharonOptions {
                dump_log_on_panic: false,
                ..Default::default()
            },
        )
        .unwrap();
        let cap = Capture::start(&lab.azure_gw, WAN_IF, None).unwrap();
        let sleeper = lab.azure_host.spawn(["sleep", "60"]).unwrap();
        recorded = (names(&lab), vec![a.proc().pid(), sleeper.pid()]);
        std::mem::forget(sleeper); // even a leaked guard's process dies with its namespace
        let _keep = (&a, &cap);
        panic!("deliberate failure in the middle of a test");
    }));
    assert!(r.is_err());
    assert_eq!(recorded.0.len(), 5);
    assert_gone(&recorded.0, &recorded.1);
}
