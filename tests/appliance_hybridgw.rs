//! hybridgw to hybridgw in the standard lab: ping and an iperf3 TCP transfer cross the tunnel,
//! the underlay carries only IKE and ESP-in-UDP (checked by our pcap audit and by tshark), both
//! sides' `status --json` agree on the SPIs, and `down`/`up` remove and restore the routes
//! (RFC 7296, RFC 4303, RFC 3948).

mod appliance_support;

use std::time::Duration;

use appliance_support::*;
use netns::topology::WAN_IF;

#[test]
fn hybridgw_to_hybridgw_traffic_status_and_clean_underlay() {
    let lab = lab("hgwt");
    let s = scratch("hgw2hgw");
    let (pskf, _) = psk(&s.0);
    let cap = Capture::start(&lab.azure_gw, WAN_IF, &s.0, "underlay");
    let (az, op) = start_pair(
        &lab,
        &s.0,
        &pskf,
        // The `[dataplane]` table: on-prem with CPU-local steering, Azure with two workers and
        // hash steering.
        "behaviour = \"ResponderOnly\"\nike_proposals = \"azure-default\"\nesp_proposals = \"azure-default\"\n[dataplane]\nworkers = 2\ncpu_affinity = false",
        "behaviour = \"initiate\"\nike_proposals = \"aes256-sha256-modp1024\"\nesp_proposals = \"aes256gcm16\"\n[dataplane]\ncpu_affinity = true",
    );
    op.wait_established(Duration::from_secs(30));
    az.wait_established(Duration::from_secs(10));

    // SPIs agree: my inbound is the peer's outbound, and the algorithms are the same.
    let a = op.status_json();
    let b = az.status_json();
    let (a_in, a_out, a_enc, a_int) = child_of(&a);
    let (b_in, b_out, b_enc, b_int) = child_of(&b);
    assert_eq!(
        (a_in.as_str(), a_out.as_str()),
        (b_out.as_str(), b_in.as_str()),
        "SPIs disagree: {a} / {b}"
    );
    assert_eq!(
        (a_enc.as_str(), a_int.as_str()),
        (b_enc.as_str(), b_int.as_str())
    );
    assert_eq!(a_enc, "aes256gcm16");
    assert_eq!(
        a["connections"][0]["ike_sa"]["spi_i"],
        b["connections"][0]["ike_sa"]["spi_i"]
    );
    assert_eq!(a["connections"][0]["ike_sa"]["dh_group"], "modp1024");
    assert_eq!(a["connections"][0]["routes"][0]["installed"], true);
    assert!(
        a["ike"]["ike_established"].as_u64() >= Some(1)
            && a["ike"]["child_established"].as_u64() >= Some(1),
        "{a}"
    );

    // The readable status names the state, SPIs and algorithms.
    let o = op.cli(&["status"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    println!("{text}");
    assert!(o.status.success());
    assert!(
        text.contains("ESTABLISHED")
            && text.contains(&a_in)
            && text.contains(&a_out)
            && text.contains("aes256gcm16"),
        "{text}"
    );

    let p = ping_ok(&lab.onprem_host, lab.azure_host_ip, 5, 5);
    ping_ok(&lab.azure_host, lab.onprem_host_ip, 3, 3);
    let mbit = iperf3_tcp(
        &lab.onprem_host,
        &lab.azure_host,
        lab.azure_host_ip,
        3,
        false,
    );
    println!(
        "hybridgw<->hybridgw: RTT {:?} ms, iperf3 TCP {mbit:.1} Mbit/s",
        p.rtt_avg_ms
    );

    // Counters moved on both sides.
    let a = op.status_json();
    let ch = &a["connections"][0]["child_sas"][0];
    assert!(
        ch["packets_out"].as_u64().unwrap_or(0) > 100
            && ch["packets_in"].as_u64().unwrap_or(0) > 10,
        "{ch}"
    );
    // The data plane's I/O counters, and its steering (`cpu_affinity = true` on-prem): with two
    // CPUs or more it starts CPU-local and the iperf3 transfer made it spread out at least once.
    let d = &a["dataplane"];
    assert!(
        d["tun_packets"].as_u64().unwrap_or(0) >= ch["packets_out"].as_u64().unwrap_or(0),
        "{d}"
    );
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert!(d["steering_changes"].as_u64() >= Some(2), "{d}");
    } else {
        assert_eq!(d["steering_changes"].as_u64(), Some(0), "{d}");
    }
    // `cpu_affinity = false` on the Azure side: hash steering throughout.
    let b = az.status_json();
    let d = &b["dataplane"];
    assert_eq!(
        (d["steering_changes"].as_u64(), d["cpu_local"].as_u64()),
        (Some(0), Some(0)),
        "{d}"
    );

    // `down` removes the SAs and the route (traffic stops), `up` restores it.
    let o = op.cli(&["down", "azure"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = lab
        .onprem_gw
        .exec(["ip", "route", "show", &lab.azure_lan.to_string()])
        .expect("ip route");
    assert!(
        !r.contains("hgw-azure"),
        "route still installed after down: {r}"
    );
    let st = op.status_json();
    assert_eq!(st["connections"][0]["state"], "stopped");
    let o = op.cli(&["up", "azure"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    op.wait_established(Duration::from_secs(30));
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 3, 2);
    // `rekey` replaces the Child SA in place (new SPIs, same IKE SA) and traffic keeps flowing.
    let before = child_of(&op.status_json()).0;
    let o = op.cli(&["rekey", "azure"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t0 = std::time::Instant::now();
    while child_of(&op.status_json()).0 == before && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(
        child_of(&op.status_json()).0,
        before,
        "rekey gave no new Child SA"
    );
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 3, 3);

    let audit = cap.stop_and_check(&[lab.onprem_host_ip, lab.azure_host_ip]);
    println!("underlay: {audit:?}");

    // Clean shutdown on SIGTERM: exit 0 and the route is gone.
    let st = op.proc.stop().expect("stop");
    assert!(st.success(), "on-prem daemon exit {st}\n{}", op.log_text());
    let r = lab
        .onprem_gw
        .exec(["ip", "route", "show", &lab.azure_lan.to_string()])
        .expect("ip route");
    assert!(!r.contains("hgw-azure"), "route left after shutdown: {r}");
    let st = az.proc.stop().expect("stop");
    assert!(st.success(), "azure daemon exit {st}\n{}", az.log_text());
    let log = op.log_text();
    assert!(log.contains("Child SA established"), "{log}");
}

#[test]
fn initiator_retries_until_the_responder_appears_and_logs_json() {
    let lab = lab("hgwr");
    let s = scratch("retry");
    let (pskf, secret) = psk(&s.0);
    // The initiator starts alone, with JSON logs; the responder comes 4 s later.
    let conf = s.0.join("onprem.toml");
    hybridgw::lab::write_private(
        &conf,
        hgw_config("azure", lab.onprem_gw_wan_ip, lab.azure_gw_wan_ip, &pskf, "behaviour = \"initiate\"\nike_proposals = \"aes128-sha256-modp2048\"\nesp_proposals = \"aes128gcm16\"", "hgw-azure", &lab.azure_lan.to_string()).as_bytes(),
    )
    .expect("config");
    let sock = s.0.join("onprem.sock");
    let log = s.0.join("onprem.log");
    let op_proc = hybridgw::lab::spawn_daemon(
        &lab.onprem_gw,
        &hybridgw_bin(),
        &conf,
        &sock,
        &log,
        hybridgw::logging::LogFormat::Json,
    )
    .expect("spawn");
    let op = Daemon {
        proc: op_proc,
        socket: sock,
        log,
    };
    std::thread::sleep(Duration::from_secs(4));
    let st = op.status_json();
    assert_eq!(st["connections"][0]["state"], "connecting", "{st}");
    assert!(
        st["connections"][0]["child_sas"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    );
    let r = lab
        .onprem_gw
        .exec(["ip", "route", "show", &lab.azure_lan.to_string()])
        .expect("ip route");
    assert!(
        r.trim().is_empty(),
        "route installed before the tunnel is up: {r}"
    );
    let _az = Daemon::start(
        &lab.azure_gw,
        &s.0,
        "azure",
        &hgw_config(
            "onprem",
            lab.azure_gw_wan_ip,
            lab.onprem_gw_wan_ip,
            &pskf,
            "behaviour = \"respond\"\nike_proposals = \"aes128-sha256-modp2048\"\nesp_proposals = \"aes128gcm16\"",
            "hgw-onprem",
            &lab.onprem_lan.to_string(),
        ),
    );
    op.wait_established(Duration::from_secs(40));
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 3, 3);
    let st = op.status_json();
    assert_eq!(
        st["connections"][0]["child_sas"][0]["encryption"],
        "aes128gcm16"
    );
    let r = lab
        .onprem_gw
        .exec(["ip", "route", "show", &lab.azure_lan.to_string()])
        .expect("ip route");
    assert!(r.contains("hgw-azure") && r.contains("metric 100"), "{r}");
    let _ = op.proc.stop();

    // Every log line is a JSON object; the events that matter are there; no secret anywhere.
    let text = op.log_text();
    let mut events = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        events.push(v["message"].as_str().unwrap_or_default().to_string());
    }
    for want in [
        "hybridgw started",
        "initiating",
        "IKE SA established",
        "Child SA established and installed",
        "route added",
        "route removed",
        "hybridgw stopped",
    ] {
        assert!(
            events.iter().any(|m| m.contains(want)),
            "no `{want}` event in:\n{text}"
        );
    }
    assert!(!text.contains(&secret), "the PSK appeared in the log");
}

#[test]
fn dead_peer_is_detected_routes_removed_and_the_tunnel_returns() {
    let lab = lab("hgwd");
    let s = scratch("dpd");
    let (pskf, _) = psk(&s.0);
    let dpd = "[connection.dpd]\ndelay_seconds = 2\ntimeout_seconds = 9\naction = \"restart\"";
    let az_conf = hgw_config(
        "onprem",
        lab.azure_gw_wan_ip,
        lab.onprem_gw_wan_ip,
        &pskf,
        "behaviour = \"respond\"",
        "hgw-onprem",
        &lab.onprem_lan.to_string(),
    );
    let az = Daemon::start(&lab.azure_gw, &s.0, "azure", &az_conf);
    let op = Daemon::start(
        &lab.onprem_gw,
        &s.0,
        "onprem",
        &hgw_config(
            "azure",
            lab.onprem_gw_wan_ip,
            lab.azure_gw_wan_ip,
            &pskf,
            &format!("behaviour = \"initiate\"\n{dpd}"),
            "hgw-azure",
            &lab.azure_lan.to_string(),
        ),
    );
    op.wait_established(Duration::from_secs(30));
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 2, 2);

    // The peer dies without a word.
    az.proc
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    let _ = az.proc.wait_timeout(Duration::from_secs(5));
    let t0 = std::time::Instant::now();
    let mut lost = false;
    while t0.elapsed() < Duration::from_secs(30) {
        let st = op.status_json();
        if st["connections"][0]["child_sas"]
            .as_array()
            .is_some_and(|a| a.is_empty())
        {
            lost = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let detect = t0.elapsed();
    assert!(lost, "DPD did not notice the dead peer:\n{}", op.log_text());
    println!("dead peer detected after {:.1} s", detect.as_secs_f64());
    let r = lab
        .onprem_gw
        .exec(["ip", "route", "show", &lab.azure_lan.to_string()])
        .expect("ip route");
    assert!(
        !r.contains("hgw-azure"),
        "route still installed after the peer died: {r}"
    );
    let st = op.status_json();
    assert!(
        st["connections"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("IKE SA lost")),
        "{st}"
    );

    // The peer comes back: the initiator's retries bring the tunnel back on their own.
    let _az2 = Daemon::start(&lab.azure_gw, &s.0, "azure2", &az_conf);
    op.wait_established(Duration::from_secs(60));
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 3, 2);
}

#[test]
fn policy_based_tunnel_negotiates_the_selectors_and_carries_traffic() {
    let lab = lab("hgwp");
    let s = scratch("pb");
    let (pskf, _) = psk(&s.0);
    let pb = |name: &str,
              l: std::net::Ipv4Addr,
              r: std::net::Ipv4Addr,
              lnet: &str,
              rnet: &str,
              tun: &str,
              extra: &str| {
        format!(
            "[[connection]]\nname = \"{name}\"\nlocal_address = \"{l}\"\nremote_address = \"{r}\"\npsk_file = \"{}\"\nmode = \"policy-based\"\ntun_name = \"{tun}\"\nroute_metric = 150\nike_proposals = \"aes256-sha256-modp2048\"\nesp_proposals = \"aes256-sha256\"\nselectors = [{{ local = \"{lnet}\", remote = \"{rnet}\" }}]\n{extra}\n",
            pskf.display()
        )
    };
    let (op_net, az_net) = (lab.onprem_lan.to_string(), lab.azure_lan.to_string());
    let _az = Daemon::start(
        &lab.azure_gw,
        &s.0,
        "azure",
        &pb(
            "onprem",
            lab.azure_gw_wan_ip,
            lab.onprem_gw_wan_ip,
            &az_net,
            &op_net,
            "hgw-pb",
            "behaviour = \"respond\"",
        ),
    );
    let op = Daemon::start(
        &lab.onprem_gw,
        &s.0,
        "onprem",
        &pb(
            "azure",
            lab.onprem_gw_wan_ip,
            lab.azure_gw_wan_ip,
            &op_net,
            &az_net,
            "hgw-pb",
            "behaviour = \"initiate\"",
        ),
    );
    op.wait_established(Duration::from_secs(30));
    let st = op.status_json();
    let ch = &st["connections"][0]["child_sas"][0];
    assert_eq!(ch["local_ts"][0].as_str(), Some(op_net.as_str()), "{ch}");
    assert_eq!(ch["remote_ts"][0].as_str(), Some(az_net.as_str()), "{ch}");
    assert_eq!(
        (ch["encryption"].as_str(), ch["integrity"].as_str()),
        (Some("aes256"), Some("sha256"))
    );
    assert_eq!(st["connections"][0]["mode"], "policy-based");
    let r = lab
        .onprem_gw
        .exec(["ip", "route", "show", &az_net])
        .expect("ip route");
    assert!(r.contains("hgw-pb") && r.contains("metric 150"), "{r}");
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 3, 3);
    ping_ok(&lab.azure_host, lab.onprem_host_ip, 3, 3);
}

#[test]
fn child_sas_rekey_in_place_on_lifetime_and_on_demand_without_loss() {
    // CREATE_CHILD_SA rekeying (RFC 7296 §1.3.3, §2.8), make-before-break: the on-prem side's
    // 10 s Child SA lifetime makes it rekey on its own (it installs the new outbound at once);
    // `hybridgw rekey` on the Azure side makes the peer start one (the on-prem side then keeps
    // sending on the old SA until the peer deletes it). Traffic runs throughout, the IKE SA
    // stays the same (no reconnect) and no ping is lost.
    let lab = lab("hgwl");
    let s = scratch("life");
    let (pskf, _) = psk(&s.0);
    let (az, op) = start_pair(
        &lab,
        &s.0,
        &pskf,
        "behaviour = \"respond\"",
        "behaviour = \"initiate\"\n[connection.lifetimes]\nchild_seconds = 10",
    );
    op.wait_established(Duration::from_secs(30));
    az.wait_established(Duration::from_secs(10));
    let ike_spi = |d: &Daemon| {
        d.status_json()["connections"][0]["ike_sa"]["spi_i"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let ike0 = ike_spi(&op);
    let first = child_of(&op.status_json()).0;

    std::thread::scope(|sc| {
        // 50 ms pings for 26 s: two or three lifetime rekeys and one on demand.
        let pinger = sc.spawn(|| {
            harness::ping(
                &lab.onprem_host,
                lab.azure_host_ip,
                520,
                Duration::from_millis(50),
            )
            .expect("ping ran")
        });
        std::thread::sleep(Duration::from_secs(4));
        let o = az.cli(&["rekey", "onprem"]);
        assert!(
            o.status.success(),
            "rekey refused: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let p = pinger.join().expect("pinger");
        println!(
            "rekeys under traffic: {}/{} pings answered, rtt avg {:?} ms max {:?} ms",
            p.received, p.transmitted, p.rtt_avg_ms, p.rtt_max_ms
        );
        assert_eq!(
            p.received,
            p.transmitted,
            "pings lost across rekeys\n---- on-prem log ----\n{}\n---- azure log ----\n{}",
            op.log_text(),
            az.log_text()
        );
    });

    let log = op.log_text();
    let rekeys = log.matches("Child SA rekeyed").count();
    assert!(
        rekeys >= 3,
        "expected >= 3 Child SA rekeys, saw {rekeys}:\n{log}"
    );
    assert!(
        log.contains("after the peer deletes the old SA") && log.contains("moved to the rekeyed"),
        "the peer-started rekey did not switch outbound on the peer's DELETE:\n{log}"
    );
    assert_ne!(
        child_of(&op.status_json()).0,
        first,
        "Child SA SPIs unchanged"
    );
    assert_eq!(
        ike_spi(&op),
        ike0,
        "the IKE SA was replaced: a reconnect, not a rekey"
    );
    // Both sides agree on the surviving SA.
    let (a_in, a_out, _, _) = child_of(&op.status_json());
    let (b_in, b_out, _, _) = child_of(&az.status_json());
    assert_eq!((a_in, a_out), (b_out, b_in));
}
