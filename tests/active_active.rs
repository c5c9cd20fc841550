//! Active-active Azure gateways end to end: one on-prem connection names two gateway
//! addresses (`remote_address = ["a", "b"]`), hybridgw keeps a tunnel to each, routes the VNet
//! prefix over both (ECMP by flow) or over the first (backup), and withdraws a tunnel whose peer
//! stops answering (dead peer detection). The two "Azure instances" are two hybridgw responders
//! in the Azure gateway namespace on two underlay addresses. Each test prints what it measured
//! and asserts its bound.

mod appliance_support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use appliance_support::*;
use netns::Netns;
use netns::topology::{HOST_IF, Lab, WAN_IF};

/// The second Azure instance's underlay address (beside the lab's 192.0.2.2).
const AZURE_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
/// Extra on-prem sources, so that flows hash onto both paths.
const SOURCES: std::ops::RangeInclusive<u8> = 11..=18;

struct Pair {
    lab: Lab,
    _dir: hybridgw::lab::Scratch,
    azure_a: Daemon,
    _azure_b: Daemon,
    onprem: Daemon,
}

fn start(tag: &str, mode: &str) -> Pair {
    start_with(tag, mode, "")
}

/// [`start`] with `top` (e.g. a `[drain]` table) at the head of the on-prem configuration.
fn start_with(tag: &str, mode: &str, top: &str) -> Pair {
    let lab = lab(tag);
    let dir = scratch(tag);
    let (pskf, _) = psk(&dir.0);
    lab.azure_gw
        .exec(["ip", "addr", "add", &format!("{AZURE_B}/24"), "dev", WAN_IF])
        .expect("second Azure address");
    for i in SOURCES {
        lab.onprem_host
            .exec([
                "ip",
                "addr",
                "add",
                &format!("198.18.1.{i}/24"),
                "dev",
                HOST_IF,
            ])
            .expect("extra on-prem source");
    }
    let fast = "behaviour = \"respond\"\n[connection.dpd]\ndelay_seconds = 2\ntimeout_seconds = 9";
    let onprem_lan = lab.onprem_lan.to_string();
    // Two Azure instances; their return routes differ in metric so that both can exist.
    let azure = |name: &str, local: Ipv4Addr, tun: &str, metric: u32| {
        let cfg = format!(
            "[[connection]]\nname = \"onprem\"\nlocal_address = \"{local}\"\nremote_address = \"{}\"\npsk_file = \"{}\"\ntun_name = \"{tun}\"\nremote_prefixes = [\"{onprem_lan}:{metric}\"]\n{fast}\n",
            lab.onprem_gw_wan_ip,
            pskf.display()
        );
        Daemon::start(&lab.azure_gw, &dir.0, name, &cfg)
    };
    let azure_a = azure("azure-a", lab.azure_gw_wan_ip, "hgw-op-a", 100);
    let azure_b = azure("azure-b", AZURE_B, "hgw-op-b", 101);
    let cfg = format!(
        "{top}[[connection]]\nname = \"azure\"\nlocal_address = \"{}\"\nremote_address = [\"{}\", \"{AZURE_B}\"]\nactive_active = \"{mode}\"\npsk_file = \"{}\"\nbehaviour = \"initiate\"\nremote_prefixes = [\"{}:100\"]\n[connection.dpd]\ndelay_seconds = 2\ntimeout_seconds = 9\n[connection.retry]\ninitial_seconds = 1\nmax_seconds = 2\n",
        lab.onprem_gw_wan_ip,
        lab.azure_gw_wan_ip,
        pskf.display(),
        lab.azure_lan
    );
    let onprem = Daemon::start(&lab.onprem_gw, &dir.0, "onprem", &cfg);
    onprem.wait_established(Duration::from_secs(30));
    Pair {
        lab,
        _dir: dir,
        azure_a,
        _azure_b: azure_b,
        onprem,
    }
}

/// `ip route show PREFIX` in `ns`.
fn route(ns: &Netns, prefix: &str) -> String {
    let out = ns
        .exec_output(["ip", "route", "show", prefix])
        .expect("ip route");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One ping from each extra source; returns how many were answered.
fn ping_all(p: &Pair) -> usize {
    SOURCES
        .filter(|i| {
            p.lab
                .onprem_host
                .exec_output([
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "-I",
                    &format!("198.18.1.{i}"),
                    &p.lab.azure_host_ip.to_string(),
                ])
                .is_ok_and(|o| o.status.success())
        })
        .count()
}

/// (packets_out of member 0, of member 1, carrying flags) from `status --json`.
fn members(p: &Pair) -> (u64, u64, bool, bool) {
    let st = p.onprem.status_json();
    let c = |i: usize, k: &str| {
        st["connections"][i]["child_sas"]
            .as_array()
            .map_or(0, |a| a.iter().map(|ch| ch[k].as_u64().unwrap_or(0)).sum())
    };
    let carrying =
        |i: usize| st["connections"][i]["active_active"]["carrying"].as_bool() == Some(true);
    (
        c(0, "packets_out"),
        c(1, "packets_out"),
        carrying(0),
        carrying(1),
    )
}

/// Kill the first Azure instance (SIGKILL: no DELETE) and wait until every source is answered
/// again over the second; returns the outage.
fn kill_first_and_recover(p: &Pair) -> Option<Duration> {
    let _ = p
        .azure_a
        .proc
        .stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(2));
    let t0 = Instant::now();
    // Let the dead path be noticed at all before checking for recovery.
    std::thread::sleep(Duration::from_millis(500));
    while t0.elapsed() < Duration::from_secs(25) {
        if ping_all(p) == SOURCES.count() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

#[test]
fn ecmp_spreads_flows_over_both_gateways_and_withdraws_a_dead_one() {
    let p = start("aaec", "ecmp");
    let azure_lan = p.lab.azure_lan.to_string();
    let r = route(&p.lab.onprem_gw, &azure_lan);
    assert!(
        r.contains("nexthop dev hgw-azure ") && r.contains("nexthop dev hgw-azure-2"),
        "no multipath route over both tunnels:\n{r}\n{}",
        p.onprem.log_text()
    );
    let (a0, b0, ca, cb) = members(&p);
    assert!(ca && cb, "both members should carry traffic");
    let answered = ping_all(&p);
    let (a1, b1, _, _) = members(&p);
    println!(
        "ECMP: {answered}/{} sources answered; packets out tunnel 1 +{}, tunnel 2 +{}",
        SOURCES.count(),
        a1 - a0,
        b1 - b0
    );
    assert_eq!(answered, SOURCES.count());
    assert!(
        a1 > a0 && b1 > b0,
        "flows did not use both tunnels: +{} / +{}",
        a1 - a0,
        b1 - b0
    );

    let took = kill_first_and_recover(&p);
    let r = route(&p.lab.onprem_gw, &azure_lan);
    let (_, _, ca, cb) = members(&p);
    println!(
        "ECMP: first gateway killed; every flow back after {took:?} (DPD 2 s + 9 s); route now: {}",
        r.trim()
    );
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(16)),
        "flows not back within 16 s\n{}",
        p.onprem.log_text()
    );
    assert!(!ca && cb, "the dead member still carries: {ca} {cb}");
    assert!(
        r.contains("dev hgw-azure-2") && !r.contains("dev hgw-azure "),
        "route still over the dead tunnel:\n{r}"
    );
}

#[test]
fn backup_mode_uses_the_first_gateway_and_fails_over_to_the_second() {
    let p = start("aabk", "backup");
    let azure_lan = p.lab.azure_lan.to_string();
    let r = route(&p.lab.onprem_gw, &azure_lan);
    assert!(
        r.contains("dev hgw-azure ") && !r.contains("hgw-azure-2"),
        "backup mode should route over the first tunnel only:\n{r}"
    );
    let (a0, b0, ca, cb) = members(&p);
    assert!(ca && !cb, "carrying flags {ca} {cb}");
    let answered = ping_all(&p);
    let (a1, b1, _, _) = members(&p);
    println!(
        "backup: {answered}/{} sources answered; packets out tunnel 1 +{}, tunnel 2 +{}",
        SOURCES.count(),
        a1 - a0,
        b1 - b0
    );
    assert_eq!(answered, SOURCES.count());
    assert!(a1 > a0, "the first tunnel carried nothing");
    assert_eq!(b1, b0, "the standby tunnel carried traffic");

    let took = kill_first_and_recover(&p);
    let r = route(&p.lab.onprem_gw, &azure_lan);
    let (_, b2, ca, cb) = members(&p);
    println!(
        "backup: first gateway killed; every flow back after {took:?} over the second (DPD 2 s + 9 s); route now: {}",
        r.trim()
    );
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(16)),
        "flows not back within 16 s\n{}",
        p.onprem.log_text()
    );
    assert!(!ca && cb, "carrying flags after failover {ca} {cb}");
    assert!(b2 > b1, "the second tunnel carried nothing after failover");
    assert!(r.contains("dev hgw-azure-2"), "{r}");
}

#[test]
fn drain_moves_the_pair_off_one_tunnel_first_and_sigterm_drains_before_it_stops() {
    let p = start_with(
        "aadr",
        "ecmp",
        "[drain]\non_shutdown = true\nquiet_ms = 300\ntimeout_seconds = 10\n",
    );
    let azure_lan = p.lab.azure_lan.to_string();
    // `drain azure-2`: the pair's route leaves that tunnel at once, the tunnel is deleted once
    // quiet, the command reports it, and every flow still answers over the other tunnel.
    let t0 = Instant::now();
    let out = p.onprem.cli(&["drain", "azure-2"]);
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("drain azure-2 took {took:?}: {}", text.trim());
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("azure-2: drained after"), "{text}");
    assert!(took < Duration::from_secs(8), "drain took {took:?}");
    let r = route(&p.lab.onprem_gw, &azure_lan);
    assert!(
        r.contains("dev hgw-azure ") && !r.contains("hgw-azure-2"),
        "route still over the drained tunnel:\n{r}"
    );
    assert_eq!(ping_all(&p), SOURCES.count(), "flows lost after the drain");
    let st = p.onprem.status_json();
    assert_eq!(st["connections"][1]["state"], "drained", "{st:#}");
    assert!(
        st["connections"][1]["drain"]
            .as_str()
            .is_some_and(|d| d.starts_with("drained after")),
        "{st:#}"
    );
    // A drain of a name that does not exist fails.
    let bad = p.onprem.cli(&["drain", "nope"]);
    assert!(!bad.status.success());
    // `up azure-2` brings it back into the pair.
    let up = p.onprem.cli(&["up", "azure-2"]);
    assert!(up.status.success());
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(15)
        && !route(&p.lab.onprem_gw, &azure_lan).contains("hgw-azure-2")
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        route(&p.lab.onprem_gw, &azure_lan).contains("nexthop dev hgw-azure-2"),
        "not back in the pair:\n{}",
        p.onprem.log_text()
    );

    // SIGTERM with `[drain] on_shutdown`: every connection drains first, then the daemon stops
    // (bounded by the drain timeout), deleting its SAs on the way.
    let t0 = Instant::now();
    let status = p
        .onprem
        .proc
        .stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15))
        .expect("stop");
    let took = t0.elapsed();
    let log = p.onprem.log_text();
    println!("SIGTERM with on_shutdown: stopped after {took:?} ({status})");
    assert!(status.success(), "{status}\n{log}");
    assert!(took < Duration::from_secs(12), "took {took:?}\n{log}");
    let after = log
        .split_once("SIGTERM: draining every connection first")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no drain on SIGTERM:\n{log}"));
    let drained = after.matches("drained: nothing arrived any more").count();
    assert_eq!(drained, 2, "both tunnels drain before the stop:\n{log}");
    assert!(log.contains("drain finished: shutting down"), "{log}");
}
