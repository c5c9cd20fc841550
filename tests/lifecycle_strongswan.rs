//! Tunnel lifecycle end to end against strongSwan (charon, kernel-libipsec, `encap = yes`):
//! NAT keepalives at the configured interval (RFC 3948 §2.3), the peer killed and restarted and
//! the underlay dropped for longer than dead peer detection (RFC 7296 §2.4, action restart),
//! DELETE on SIGTERM (§1.4.1), a rebooted peer's INITIAL_CONTACT (§3.10.1), and a NAT between
//! the gateways that changes the source port mid-tunnel, on our side and on the peer's
//! (RFC 3948 §2.1, RFC 7296 §2.23 NAT rebinding). Each test prints what it measured and
//! asserts its bound.

mod appliance_support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use appliance_support::*;
use harness::{Charon, CharonOptions, SwanConn};
use netns::Netns;
use netns::topology::{Lab, WAN_IF};

/// The strongSwan scenarios share the 2 cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// hybridgw initiator with the shortest DPD (2 s idle, 9 s give-up, restart) and fast retries.
const FAST_DPD: &str = "behaviour = \"initiate\"\nike_proposals = \"aes256-sha256-modp2048\"\nesp_proposals = \"aes256gcm16\"\n[connection.dpd]\ndelay_seconds = 2\ntimeout_seconds = 9\n[connection.retry]\ninitial_seconds = 1\nmax_seconds = 2";

/// strongSwan responder for hybridgw at `remote` (the on-prem gateway or its NAT), loaded into `charon`.
fn swan(lab: &Lab, charon: &Charon, remote: Ipv4Addr, secret: &str) -> SwanConn {
    let conn = SwanConn::new("hgw", lab.azure_gw_wan_ip.into(), remote.into(), secret)
        .proposals("aes256-sha256-modp2048", "aes256gcm16");
    charon
        .load(&conn.render().expect("swanctl.conf"))
        .expect("swanctl --load-all");
    conn
}

/// Start hybridgw on the on-prem gateway towards the Azure gateway and wait for its Child SA.
fn hgw(lab: &Lab, dir: &Path, pskf: &Path, extra: &str) -> Daemon {
    let d = Daemon::start(
        &lab.onprem_gw,
        dir,
        "onprem",
        &hgw_config(
            "azure",
            lab.onprem_gw_wan_ip,
            lab.azure_gw_wan_ip,
            pskf,
            extra,
            "hgw-azure",
            &lab.azure_lan.to_string(),
        ),
    );
    d.wait_established(Duration::from_secs(30));
    d
}

fn route(lab: &Lab) -> bool {
    Charon::route_into_tunnel(
        &lab.azure_gw,
        &lab.onprem_lan.to_string(),
        Some(lab.azure_gw_lan_ip),
    )
    .is_ok()
}

/// Ping once a time until one answer comes (re-adding strongSwan's route into `ipsec0`, which
/// a restarted charon recreates); returns the time from `t0`, or `None` after `bound`.
fn wait_ping(lab: &Lab, t0: Instant, bound: Duration) -> Option<Duration> {
    while t0.elapsed() < bound {
        route(lab);
        if hybridgw::lab::ping(&lab.onprem_host, lab.azure_host_ip, 1)
            .is_ok_and(|p| p.received == 1)
        {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Packets in a pcap matching a tcpdump filter.
fn count_packets(pcap: &Path, filter: &str) -> usize {
    let out = std::process::Command::new("tcpdump")
        .args(["-n", "-r", pcap.to_str().expect("utf-8"), filter])
        .output()
        .expect("tcpdump -r");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Count NAT keepalives (UDP to 4500, one 0xFF byte) from `src` in a pcap.
fn count_keepalives(pcap: &Path, src: Ipv4Addr) -> usize {
    count_packets(
        pcap,
        &format!("src host {src} and udp dst port 4500 and udp[4:2] = 9 and udp[8] = 0xff"),
    )
}

fn capture(ns: &Netns, dir: &Path, name: &str) -> (netns::Proc, std::path::PathBuf) {
    let file = dir.join(format!("{name}.pcap"));
    let proc = ns
        .spawn_logged(
            [
                "tcpdump",
                "-i",
                WAN_IF,
                "-n",
                "-U",
                "-s",
                "128",
                "-w",
                file.to_str().expect("utf-8"),
                "udp",
            ],
            &dir.join(format!("{name}.tcpdump.log")),
        )
        .expect("tcpdump");
    let t0 = Instant::now();
    while !file.exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    (proc, file)
}

#[test]
fn nat_keepalives_are_sent_while_esp_is_udp_encapsulated() {
    // strongSwan's `encap = yes` forces UDP encapsulation, so hybridgw sends a keepalive as soon
    // as the Child SA is installed and then every `nat_keepalive_seconds` (here 4 s instead of
    // RFC 3948 §4's 20 s default, to keep the test short).
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab("lcka");
    let s = scratch("lcka");
    let (pskf, secret) = psk(&s.0);
    let (cap, file) = capture(&lab.azure_gw, &s.0, "ka");
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    let conn = swan(&lab, &charon, lab.onprem_gw_wan_ip, &secret);
    let d = hgw(
        &lab,
        &s.0,
        &pskf,
        &format!("nat_keepalive_seconds = 4\n{FAST_DPD}"),
    );
    let t0 = Instant::now();
    charon
        .wait_child(&conn.child, Duration::from_secs(10))
        .expect("strongSwan Child SA");
    let st = d.status_json();
    assert_eq!(
        st["connections"][0]["child_sas"][0]["encap"].as_bool(),
        Some(true),
        "{st}"
    );
    // Keepalives at about 0, 4 and 8 s (the housekeeping tick is 250 ms).
    std::thread::sleep(Duration::from_secs(10).saturating_sub(t0.elapsed()));
    let _ = cap.stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(3));
    let n = count_keepalives(&file, lab.onprem_gw_wan_ip);
    println!("NAT keepalives from hybridgw in 10 s: {n} (interval 4 s)");
    assert!(
        (2..=4).contains(&n),
        "expected about 3 keepalives in 10 s, saw {n}\n{}",
        d.log_text()
    );
    // strongSwan is still happy (keepalives are dropped silently by the receiver).
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 3, 2);
}

#[test]
fn sigterm_deletes_the_sas_at_the_peer() {
    // Graceful shutdown (RFC 7296 §1.4.1): on SIGTERM hybridgw sends DELETE for its IKE SA, so
    // strongSwan drops the IKE and Child SAs at once instead of waiting for its own DPD.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab("lcst");
    let s = scratch("lcst");
    let (pskf, secret) = psk(&s.0);
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    let conn = swan(&lab, &charon, lab.onprem_gw_wan_ip, &secret);
    let d = hgw(&lab, &s.0, &pskf, FAST_DPD);
    charon
        .wait_child(&conn.child, Duration::from_secs(10))
        .expect("strongSwan Child SA");
    let t0 = Instant::now();
    let status = d
        .proc
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))
        .expect("stop hybridgw");
    let stopped = t0.elapsed();
    let mut gone = None;
    while t0.elapsed() < Duration::from_secs(5) {
        if charon.list_sas().is_ok_and(|v| v.is_empty()) {
            gone = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "SIGTERM: hybridgw exited {status:?} after {stopped:?}; strongSwan had no SA left after {gone:?}"
    );
    assert!(
        status.success(),
        "hybridgw exit {status:?}\n{}",
        d.log_text()
    );
    assert!(
        gone.is_some(),
        "strongSwan still holds SAs 5 s after hybridgw stopped\n{}\n---- charon ----\n{}",
        d.log_text(),
        charon.log_tail(40)
    );
    assert!(
        charon.log().contains("received DELETE for IKE_SA"),
        "no DELETE reached strongSwan:\n{}",
        charon.log_tail(40)
    );
}

#[test]
fn rebooted_peer_initial_contact_clears_the_stale_sas_at_once() {
    // strongSwan initiates to hybridgw (responder, DPD 60 s so DPD cannot be what cleans up), is
    // killed and started afresh, and initiates again with INITIAL_CONTACT (RFC 7296 §3.10.1):
    // hybridgw must drop the stale IKE and Child SAs as the new ones come up, leaving exactly one.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab("lcic");
    let s = scratch("lcic");
    let (pskf, secret) = psk(&s.0);
    let load = |charon: &Charon| {
        let conn = swan(&lab, charon, lab.onprem_gw_wan_ip, &secret);
        charon.initiate(&conn.child).expect("swanctl --initiate");
        conn
    };
    let d = Daemon::start(
        &lab.onprem_gw,
        &s.0,
        "onprem",
        &hgw_config(
            "azure",
            lab.onprem_gw_wan_ip,
            lab.azure_gw_wan_ip,
            &pskf,
            "behaviour = \"respond\"\nike_proposals = \"aes256-sha256-modp2048\"\nesp_proposals = \"aes256gcm16\"\n[connection.dpd]\ndelay_seconds = 60\ntimeout_seconds = 60",
            "hgw-azure",
            &lab.azure_lan.to_string(),
        ),
    );
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    load(&charon);
    d.wait_established(Duration::from_secs(20));
    assert!(
        wait_ping(&lab, Instant::now(), Duration::from_secs(10)).is_some(),
        "no traffic before the reboot"
    );
    let before = d.status_json();
    let spi0 = child_of(&before).0;
    let ike0 = before["connections"][0]["ike_sa"]["spi_i"].clone();

    // A reboot, not a shutdown: SIGKILL, so no DELETE leaves strongSwan.
    let _ = charon
        .proc()
        .stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(2));
    drop(charon);
    let t0 = Instant::now();
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon again");
    load(&charon);
    let mut cleared = None;
    let mut last = serde_json::Value::Null;
    while t0.elapsed() < Duration::from_secs(15) {
        last = d.status_json();
        let children = last["connections"][0]["child_sas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if children.len() == 1 && child_of(&last).0 != spi0 {
            cleared = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = wait_ping(&lab, t0, Duration::from_secs(15));
    println!(
        "peer rebooted: new SAs with the stale ones gone after {cleared:?}; traffic back after {took:?}"
    );
    assert!(
        cleared.is_some(),
        "stale Child SA still there (or no new one): {last}\n{}",
        d.log_text()
    );
    assert_ne!(last["connections"][0]["ike_sa"]["spi_i"], ike0, "{last}");
    assert!(
        d.log_text().contains("INITIAL_CONTACT"),
        "no INITIAL_CONTACT handling logged\n{}",
        d.log_text()
    );
    assert!(took.is_some(), "no traffic after the reboot");
}

#[test]
fn strongswan_killed_and_restarted_tunnel_comes_back_within_dpd_timeout() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab("lcrs");
    let s = scratch("lcrs");
    let (pskf, secret) = psk(&s.0);
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    swan(&lab, &charon, lab.onprem_gw_wan_ip, &secret);
    let d = hgw(&lab, &s.0, &pskf, FAST_DPD);
    assert!(
        wait_ping(&lab, Instant::now(), Duration::from_secs(10)).is_some(),
        "no traffic before the restart"
    );
    let spi0 = child_of(&d.status_json()).0;
    // Kill charon (SIGKILL: no DELETE leaves it) and start a fresh one with the same config: it
    // knows none of the old SAs, so only hybridgw's DPD (2 s + 9 s) can notice.
    let t0 = Instant::now();
    let _ = charon
        .proc()
        .stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(2));
    drop(charon);
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon again");
    swan(&lab, &charon, lab.onprem_gw_wan_ip, &secret);
    let bound = Duration::from_secs(2 + 9 + 10);
    let took = wait_ping(&lab, t0, bound);
    println!(
        "strongSwan restarted: tunnel back after {took:?} (bound {bound:?}: DPD 2 s + 9 s + 10 s)"
    );
    let took = took.unwrap_or_else(|| {
        panic!(
            "tunnel not back within {bound:?}\n{}\n---- charon ----\n{}",
            d.log_text(),
            charon.log_tail(60)
        )
    });
    assert!(took < bound);
    assert_ne!(
        child_of(&d.status_json()).0,
        spi0,
        "same Child SA after a peer restart"
    );
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 5, 4);
}

#[test]
fn underlay_dropped_longer_than_dpd_then_restored_tunnel_comes_back() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab("lcld");
    let s = scratch("lcld");
    let (pskf, secret) = psk(&s.0);
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    swan(&lab, &charon, lab.onprem_gw_wan_ip, &secret);
    let d = hgw(&lab, &s.0, &pskf, FAST_DPD);
    assert!(
        wait_ping(&lab, Instant::now(), Duration::from_secs(10)).is_some(),
        "no traffic before the link drop"
    );
    lab.azure_gw.link_down(WAN_IF).expect("link down");
    // Keep the link down until hybridgw's DPD has given up (2 s idle, then retransmissions at
    // 2, 4 and 8 s: about 16 s) and 2 s more, at most 25 s.
    let limit = Duration::from_secs(25);
    let t_down = Instant::now();
    let mut lost = None;
    while t_down.elapsed() < limit {
        if lost.is_none() && d.log_text().contains("IKE SA lost") {
            lost = Some(t_down.elapsed());
        }
        if lost.is_some_and(|l| t_down.elapsed() >= l + Duration::from_secs(2)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let down = t_down.elapsed();
    lab.azure_gw.link_up(WAN_IF).expect("link up");
    let t0 = Instant::now();
    let bound = Duration::from_secs(15);
    let took = wait_ping(&lab, t0, bound);
    println!(
        "underlay down {down:?}: DPD declared the peer dead after {lost:?}; tunnel back {took:?} after the link came up (bound {bound:?})"
    );
    assert!(
        lost.is_some(),
        "DPD did not fire during a {down:?} outage\n{}",
        d.log_text()
    );
    let took = took.unwrap_or_else(|| {
        panic!(
            "tunnel not back within {bound:?} of link up\n{}\n---- charon ----\n{}",
            d.log_text(),
            charon.log_tail(60)
        )
    });
    assert!(took < bound);
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 5, 4);
}

/// Source NAT of the on-prem gateway on the router's Azure side, to UDP ports `lo..=lo+99`.
fn masquerade(router: &Netns, onprem: Ipv4Addr, lo: u16) {
    router
        .nft(&format!(
            "flush ruleset\ntable ip lcnat {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {onprem} oifname \"az0\" meta l4proto udp masquerade to :{lo}-{}\n  }}\n}}\n",
            lo + 99
        ))
        .expect("nft masquerade");
}

/// The lab with a router between the gateways masquerading the on-prem gateway to UDP ports
/// 200xx; returns it and the router's address the Azure side sees.
fn nat_lab(prefix: &str) -> (Lab, Ipv4Addr) {
    let lab = Lab::builder()
        .prefix(prefix)
        .router(true)
        .build()
        .expect("lab with router");
    let router = lab.router.as_ref().expect("router namespace");
    let nat_ip = lab.router_azure_ip.expect("router address");
    masquerade(router, lab.onprem_gw_wan_ip, 20000);
    (lab, nat_ip)
}

/// NAT port change on the router: short UDP conntrack timeouts (taken by the next packet each
/// way), the on-prem gateway's packets dropped before conntrack sees them (raw priority) for
/// 3 s so the mapping expires, then masquerading from ports `lo..` and the timeouts restored.
fn remap_nat(lab: &Lab, router: &Netns, lo: u16) {
    let sysctl = |v: &str| {
        for k in [
            "net.netfilter.nf_conntrack_udp_timeout",
            "net.netfilter.nf_conntrack_udp_timeout_stream",
        ] {
            router
                .exec(["sysctl", "-q", "-w", &format!("{k}={v}")])
                .expect("sysctl");
        }
    };
    sysctl("1");
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 1, 1);
    router
        .nft(&format!(
            "table ip lcdrop {{\n  chain pre {{\n    type filter hook prerouting priority raw - 10; policy accept;\n    ip saddr {} drop\n  }}\n}}\n",
            lab.onprem_gw_wan_ip
        ))
        .expect("nft drop");
    std::thread::sleep(Duration::from_secs(3));
    masquerade(router, lab.onprem_gw_wan_ip, lo); // also removes the drop table
    sysctl("30");
}

#[test]
fn nat_between_the_gateways_with_a_port_change_mid_tunnel() {
    // The on-prem gateway sits behind a masquerading router (NAT detected, RFC 7296 §2.23). Mid
    // tunnel the mapping is lost and re-made from another port range (the conntrack entries are
    // let expire while the router drops the on-prem side's packets): the next packets reach
    // strongSwan from a new port, and traffic must cross again.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, nat_ip) = nat_lab("lcnt");
    let router = lab.router.as_ref().expect("router namespace");
    let s = scratch("lcnt");
    let (pskf, secret) = psk(&s.0);
    let (cap, file) = capture(&lab.azure_gw, &s.0, "nat");
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    let mut conn = SwanConn::new("hgw", lab.azure_gw_wan_ip.into(), nat_ip.into(), &secret)
        .proposals("aes256-sha256-modp2048", "aes256gcm16");
    conn.remote_id = Some(lab.onprem_gw_wan_ip.to_string());
    charon
        .load(&conn.render().expect("swanctl.conf"))
        .expect("swanctl --load-all");
    let d = hgw(&lab, &s.0, &pskf, FAST_DPD);
    assert!(
        wait_ping(&lab, Instant::now(), Duration::from_secs(10)).is_some(),
        "no traffic through the NAT\n{}",
        d.log_text()
    );
    let before = ping_ok(&lab.onprem_host, lab.azure_host_ip, 10, 10);

    remap_nat(&lab, router, 30000);
    let t0 = Instant::now();
    let bound = Duration::from_secs(15);
    let took = wait_ping(&lab, t0, bound);
    let after = took.map(|_| ping_ok(&lab.onprem_host, lab.azure_host_ip, 10, 9));
    let _ = cap.stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(3));
    let count = |range: &str| {
        count_packets(
            &file,
            &format!("src host {nat_ip} and udp src portrange {range}"),
        )
    };
    let (old_port, new_port) = (count("20000-20099"), count("30000-30099"));
    println!(
        "NAT port change: {}/{} pings before, traffic back {took:?} after the new mapping (bound {bound:?}), {:?} pings after; packets at strongSwan from NAT ports 200xx: {old_port}, 300xx: {new_port}",
        before.received,
        before.sent,
        after.map(|a| (a.received, a.sent))
    );
    let took = took.unwrap_or_else(|| {
        panic!(
            "no traffic within {bound:?} of the port change\n{}\n---- charon ----\n{}",
            d.log_text(),
            charon.log_tail(60)
        )
    });
    assert!(took < bound);
    assert!(old_port > 0 && new_port > 0, "the NAT port did not change");
}

#[test]
fn peer_behind_nat_changes_port_and_hybridgw_follows() {
    // The other direction of NAT rebinding: strongSwan initiates from behind the masquerading
    // router, hybridgw answers (the gateway Azure would be). Mid tunnel the NAT mapping moves to
    // another port range; hybridgw must send its ESP and IKE to the new port (RFC 3948 §2.1,
    // RFC 7296 §2.23) once authenticated traffic arrives from there.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, nat_ip) = nat_lab("lcpn");
    let router = lab.router.as_ref().expect("router namespace");
    let s = scratch("lcpn");
    let (pskf, secret) = psk(&s.0);
    let (cap, file) = capture(&lab.azure_gw, &s.0, "peernat");
    let d = Daemon::start(
        &lab.azure_gw,
        &s.0,
        "azure",
        &hgw_config(
            "onprem",
            lab.azure_gw_wan_ip,
            nat_ip,
            &pskf,
            &format!(
                "remote_id = \"{}\"\nbehaviour = \"respond\"\nike_proposals = \"aes256-sha256-modp2048\"\nesp_proposals = \"aes256gcm16\"\n[connection.dpd]\ndelay_seconds = 30\ntimeout_seconds = 30",
                lab.onprem_gw_wan_ip
            ),
            "hgw-onprem",
            &lab.onprem_lan.to_string(),
        ),
    );
    let charon = Charon::start(&lab.onprem_gw, CharonOptions::default()).expect("charon");
    let mut conn = SwanConn::new(
        "hgw",
        lab.onprem_gw_wan_ip.into(),
        lab.azure_gw_wan_ip.into(),
        &secret,
    )
    .proposals("aes256-sha256-modp2048", "aes256gcm16");
    conn.dpd_delay = Some(Duration::from_secs(2));
    charon
        .load(&conn.render().expect("swanctl.conf"))
        .expect("swanctl --load-all");
    charon.initiate(&conn.child).expect("swanctl --initiate");
    d.wait_established(Duration::from_secs(20));
    let ping_back = |bound: Duration| {
        let t0 = Instant::now();
        while t0.elapsed() < bound {
            let _ = Charon::route_into_tunnel(
                &lab.onprem_gw,
                &lab.azure_lan.to_string(),
                Some(lab.onprem_gw_lan_ip),
            );
            if hybridgw::lab::ping(&lab.onprem_host, lab.azure_host_ip, 1)
                .is_ok_and(|p| p.received == 1)
            {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    };
    assert!(
        ping_back(Duration::from_secs(10)).is_some(),
        "no traffic through the NAT\n{}",
        d.log_text()
    );
    let remote_before = d.status_json()["connections"][0]["ike_sa"]["remote"].clone();

    // Lose the mapping and re-make it from ports 300xx.
    remap_nat(&lab, router, 30000);
    let took = ping_back(Duration::from_secs(15));
    // strongSwan's DPD (2 s) brings an authenticated IKE request from the new port.
    let mut remote_after = serde_json::Value::Null;
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(8) {
        remote_after = d.status_json()["connections"][0]["ike_sa"]["remote"].clone();
        if remote_after != remote_before {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = took.map(|_| ping_ok(&lab.onprem_host, lab.azure_host_ip, 10, 9));
    let _ = cap.stop_with(nix::sys::signal::Signal::SIGINT, Duration::from_secs(3));
    let count = |filter: String| count_packets(&file, &filter);
    let to_new = count(format!(
        "dst host {nat_ip} and udp dst portrange 30000-30099"
    ));
    let to_old = count(format!(
        "dst host {nat_ip} and udp dst portrange 20000-20099"
    ));
    let moved = d.status_json()["ike"]["peer_moved"].as_u64();
    println!(
        "peer NAT port change: traffic back after {took:?}, {:?} pings after; hybridgw's IKE peer {remote_before} -> {remote_after} (peer_moved {moved:?}); packets from hybridgw to NAT ports 200xx: {to_old}, 300xx: {to_new}",
        after.map(|a| (a.received, a.sent))
    );
    assert!(
        took.is_some(),
        "no traffic within 15 s of the peer's port change\n{}\n---- charon ----\n{}",
        d.log_text(),
        charon.log_tail(60)
    );
    assert!(to_new > 0, "hybridgw never sent to the new port");
    assert_ne!(remote_after, remote_before, "the IKE SA did not follow");
    assert!(
        remote_after.as_str().is_some_and(|r| r.contains(":300")),
        "{remote_after}"
    );
}

#[test]
fn byte_lifetime_rekeys_the_child_sa_under_load() {
    // Lifetimes in bytes (RFC 4301 §4.4.2.1): with a 100 MB Child SA lifetime and a 30 MB soft
    // one (`child_rekey_kilobytes`) hybridgw rekeys on its own byte counters while iperf3 pushes
    // 150 MB at 200 Mbit/s and a ping runs alongside. Several rekeys, no SA runs into its hard
    // limit, no run of pings is lost to a rekey. (The margin between soft and hard limit must cover a
    // CREATE_CHILD_SA under load: 10 % of 50 MB, 0.2 s at this rate, did not always.)
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab("lcby");
    let s = scratch("lcby");
    let (pskf, secret) = psk(&s.0);
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    swan(&lab, &charon, lab.onprem_gw_wan_ip, &secret);
    let d = hgw(
        &lab,
        &s.0,
        &pskf,
        &format!(
            "{FAST_DPD}\n[connection.lifetimes]\nchild_kilobytes = 102400\nchild_rekey_kilobytes = 30720"
        ),
    );
    assert!(
        wait_ping(&lab, Instant::now(), Duration::from_secs(10)).is_some(),
        "no traffic before the load"
    );
    let _srv = harness::Iperf3Server::start(&lab.azure_host, lab.azure_host_ip, 5201)
        .expect("iperf3 server");
    let (iperf, pings) = std::thread::scope(|sc| {
        let p = sc.spawn(|| {
            harness::ping(
                &lab.onprem_host,
                lab.azure_host_ip,
                240,
                Duration::from_millis(25),
            )
        });
        let o = harness::Iperf3Options {
            duration: Duration::from_secs(6),
            bitrate: Some("200M".into()),
            ..Default::default()
        };
        let r = harness::iperf3_client(&lab.onprem_host, lab.azure_host_ip, 5201, &o);
        (r, p.join().expect("ping thread"))
    });
    let iperf = iperf.expect("iperf3 client");
    let pings = pings.expect("ping ran");
    let log = d.log_text();
    let rekeys = log.matches("byte/packet limit reached").count();
    let st = d.status_json();
    let expired = st["connections"][0]["child_sas"][0]["drops"]["expired"]
        .as_u64()
        .unwrap_or(0);
    let mb = iperf.bytes_received as f64 / 1e6;
    println!(
        "byte lifetime 100 MB, rekey at 30 MB: iperf3 {:.0} Mbit/s, {mb:.0} MB, {:?} retransmits; {rekeys} byte-limit rekeys; ping {}/{} answered; drops for expired SAs: {expired}",
        iperf.received_bps / 1e6,
        iperf.retransmits,
        pings.received,
        pings.transmitted
    );
    assert!(mb > 100.0, "too little traffic to cross the limit twice");
    assert!(rekeys >= 2, "fewer than two byte-limit rekeys\n{log}");
    assert_eq!(expired, 0, "an SA hit its hard byte limit: {st}\n{log}");
    // A rekey that lost traffic would lose a run of pings (they are 25 ms apart); on the shared
    // CI machine, 200 Mbit/s through strongSwan's userspace ESP also drops an odd ping with no
    // rekey near (2-3 of 240 in two of five CI runs, with 1,300 TCP retransmissions), so allow
    // that background and no more.
    assert!(
        pings.received + 4 >= pings.transmitted,
        "pings lost across byte-limit rekeys: {}/{}\n{log}",
        pings.received,
        pings.transmitted
    );
    // Exactly one Child SA pair remains.
    let children = st["connections"][0]["child_sas"]
        .as_array()
        .map_or(0, |a| a.len());
    assert_eq!(children, 1, "{st}");
}
