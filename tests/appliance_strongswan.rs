//! hybridgw against a real strongSwan (charon with kernel-libipsec, `encap = yes`, started through
//! the test harness) in the standard lab, both directions of initiation, with Azure's default
//! proposals and with AES-GCM-256/ECP384: traffic crosses both ways (ping, iperf3 TCP each way) and
//! `swanctl --list-sas` agrees with `hybridgw status --json` on SPIs and algorithms
//! (RFC 7296, RFC 4303, RFC 3948).

mod appliance_support;

use std::sync::Mutex;
use std::time::Duration;

use appliance_support::*;
use harness::{Charon, CharonOptions, SwanConn};

/// The strongSwan scenarios share the 2 cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Suite {
    /// hybridgw proposal keys (TOML lines).
    hgw: &'static str,
    /// strongSwan `proposals` / `esp_proposals`.
    ike: &'static str,
    esp: &'static str,
    /// Expected hybridgw names: IKE (encryption, integrity, dh), ESP (encryption, integrity).
    hgw_ike: (&'static str, &'static str, &'static str),
    hgw_esp: (&'static str, &'static str),
    /// Expected strongSwan names: IKE (encr-alg, keysize, integ-alg, dh-group), ESP (encr-alg, keysize, integ-alg).
    sw_ike: (&'static str, u32, Option<&'static str>, &'static str),
    sw_esp: (&'static str, u32, Option<&'static str>),
}

/// Azure's default policy (what an Azure gateway offers and accepts), on both sides.
const AZURE_DEFAULT: Suite = Suite {
    hgw: "ike_proposals = \"azure-default\"\nesp_proposals = \"azure-default\"",
    ike: "aes256-sha1-modp1024,aes256-sha256-modp1024,aes128-sha1-modp1024,aes128-sha256-modp1024",
    esp: "aes256gcm16,aes256-sha1,aes256-sha256,aes128-sha1",
    hgw_ike: ("aes256", "sha1", "modp1024"),
    hgw_esp: ("aes256gcm16", ""),
    sw_ike: ("AES_CBC", 256, Some("HMAC_SHA1_96"), "MODP_1024"),
    sw_esp: ("AES_GCM_16", 256, None),
};

/// Azure custom policy GCMAES256 / SHA384 / ECP384 (hybridgw configured with Azure's names).
const GCM_ECP384: Suite = Suite {
    hgw: "[connection.azure_policy]\nike_encryption = \"GCMAES256\"\nike_integrity = \"SHA384\"\ndh_group = \"ECP384\"\nipsec_encryption = \"GCMAES256\"\nipsec_integrity = \"GCMAES256\"\npfs_group = \"ECP384\"",
    ike: "aes256gcm16-prfsha384-ecp384",
    esp: "aes256gcm16-ecp384",
    hgw_ike: ("aes256gcm16", "", "ecp384"),
    hgw_esp: ("aes256gcm16", ""),
    sw_ike: ("AES_GCM_16", 256, None, "ECP_384"),
    sw_esp: ("AES_GCM_16", 256, None),
};

/// Azure custom policy AES256 / SHA256 / DHGroup14 with AES-CBC + HMAC-SHA2-256 for ESP.
const CBC_SHA256: Suite = Suite {
    hgw: "ike_proposals = \"aes256-sha256-modp2048\"\nesp_proposals = \"aes256-sha256\"",
    ike: "aes256-sha256-modp2048",
    esp: "aes256-sha256",
    hgw_ike: ("aes256", "sha256", "modp2048"),
    hgw_esp: ("aes256", "sha256"),
    sw_ike: ("AES_CBC", 256, Some("HMAC_SHA2_256_128"), "MODP_2048"),
    sw_esp: ("AES_CBC", 256, Some("HMAC_SHA2_256_128")),
};

fn scenario(suite: &Suite, hgw_initiates: bool) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab("hgsw");
    let s = scratch("sw");
    let (pskf, secret) = psk(&s.0);
    // strongSwan plays the Azure gateway: any-to-any selectors, as Azure's route-based gateways.
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    let conn = SwanConn::new(
        "hgw",
        lab.azure_gw_wan_ip.into(),
        lab.onprem_gw_wan_ip.into(),
        &secret,
    )
    .proposals(suite.ike, suite.esp);
    charon
        .load(&conn.render().expect("swanctl.conf"))
        .expect("swanctl --load-all");
    let behaviour = if hgw_initiates { "initiate" } else { "respond" };
    let hgw = Daemon::start(
        &lab.onprem_gw,
        &s.0,
        "onprem",
        &hgw_config(
            "azure",
            lab.onprem_gw_wan_ip,
            lab.azure_gw_wan_ip,
            &pskf,
            &format!("behaviour = \"{behaviour}\"\n{}", suite.hgw),
            "hgw-azure",
            &lab.azure_lan.to_string(),
        ),
    );
    if !hgw_initiates {
        // Let hybridgw bind its sockets, then strongSwan initiates.
        hybridgw::lab::status(&hgw.socket).ok();
        let t0 = std::time::Instant::now();
        while hybridgw::lab::status(&hgw.socket).is_err() && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = charon.initiate(&conn.child) {
            panic!(
                "strongSwan could not initiate: {e:#}\n---- hybridgw ----\n{}",
                hgw.log_text()
            );
        }
    }
    hgw.wait_established(Duration::from_secs(30));
    let sw_child = charon
        .wait_child(&conn.child, Duration::from_secs(10))
        .expect("strongSwan Child SA");
    let sas = charon.list_sas().expect("list-sas");
    let sw_ike = sas.first().expect("one IKE SA").clone();
    Charon::route_into_tunnel(
        &lab.azure_gw,
        &lab.onprem_lan.to_string(),
        Some(lab.azure_gw_lan_ip),
    )
    .expect("route into ipsec0");

    let st = hgw.status_json();
    let (spi_in, spi_out, enc, integ) = child_of(&st);
    let ike = &st["connections"][0]["ike_sa"];
    // SPIs: our inbound is strongSwan's outbound and the reverse; the IKE SPIs are the same.
    assert_eq!(
        format!("{:08x}", sw_child.spi_out),
        spi_in,
        "swanctl {sw_child:?} vs hybridgw {st}"
    );
    assert_eq!(
        format!("{:08x}", sw_child.spi_in),
        spi_out,
        "swanctl {sw_child:?} vs hybridgw {st}"
    );
    assert_eq!(
        Some(sw_ike.initiator_spi.to_lowercase().as_str()),
        ike["spi_i"].as_str(),
        "{sw_ike:?} vs {ike}"
    );
    assert_eq!(
        Some(sw_ike.responder_spi.to_lowercase().as_str()),
        ike["spi_r"].as_str(),
        "{sw_ike:?} vs {ike}"
    );
    assert_eq!(ike["initiator"].as_bool(), Some(hgw_initiates));
    assert_eq!(sw_ike.initiator, !hgw_initiates);
    // Algorithms, in both vocabularies.
    assert_eq!(
        (
            ike["encryption"].as_str(),
            ike["integrity"].as_str(),
            ike["dh_group"].as_str()
        ),
        (
            Some(suite.hgw_ike.0),
            Some(suite.hgw_ike.1),
            Some(suite.hgw_ike.2)
        ),
        "{ike}"
    );
    assert_eq!(
        (
            sw_ike.encr_alg.as_str(),
            sw_ike.encr_keysize,
            sw_ike.integ_alg.as_deref(),
            sw_ike.dh_group.as_str()
        ),
        (
            suite.sw_ike.0,
            Some(suite.sw_ike.1),
            suite.sw_ike.2,
            suite.sw_ike.3
        )
    );
    assert_eq!((enc.as_str(), integ.as_str()), suite.hgw_esp);
    assert_eq!(
        (
            sw_child.encr_alg.as_str(),
            sw_child.encr_keysize,
            sw_child.integ_alg.as_deref()
        ),
        (suite.sw_esp.0, Some(suite.sw_esp.1), suite.sw_esp.2)
    );
    assert!(sw_child.encap, "strongSwan must use UDP encapsulation");

    // Traffic both ways between the hosts.
    let p = ping_ok(&lab.onprem_host, lab.azure_host_ip, 5, 4);
    ping_ok(&lab.azure_host, lab.onprem_host_ip, 5, 4);
    let up = iperf3_tcp(
        &lab.onprem_host,
        &lab.azure_host,
        lab.azure_host_ip,
        2,
        false,
    );
    let down = iperf3_tcp(
        &lab.onprem_host,
        &lab.azure_host,
        lab.azure_host_ip,
        2,
        true,
    );
    println!(
        "hybridgw {} strongSwan ({} / {}): RTT {:?} ms, iperf3 TCP {up:.1} Mbit/s on-prem->Azure, {down:.1} Mbit/s Azure->on-prem",
        if hgw_initiates { "->" } else { "<-" },
        suite.ike,
        suite.esp,
        p.rtt_avg_ms
    );
    // Both sides counted the traffic.
    let sw_after = charon
        .wait_child(&conn.child, Duration::from_secs(5))
        .expect("child");
    assert!(
        sw_after.packets_in > 100 && sw_after.packets_out > 100,
        "{sw_after:?}"
    );
    let st = hgw.status_json();
    let ch = &st["connections"][0]["child_sas"][0];
    assert!(
        ch["packets_in"].as_u64().unwrap_or(0) > 100
            && ch["packets_out"].as_u64().unwrap_or(0) > 100,
        "{ch}"
    );

    let st = hgw.proc.stop().expect("stop hybridgw");
    assert!(st.success(), "hybridgw exit {st}\n{}", hgw.log_text());
}

#[test]
fn hybridgw_initiates_to_strongswan_azure_default() {
    scenario(&AZURE_DEFAULT, true);
}

#[test]
fn strongswan_initiates_to_hybridgw_azure_default() {
    scenario(&AZURE_DEFAULT, false);
}

#[test]
fn hybridgw_initiates_to_strongswan_gcm_ecp384() {
    scenario(&GCM_ECP384, true);
}

#[test]
fn strongswan_initiates_to_hybridgw_gcm_ecp384() {
    scenario(&GCM_ECP384, false);
}

#[test]
fn hybridgw_initiates_to_strongswan_cbc_sha256() {
    scenario(&CBC_SHA256, true);
}

#[test]
fn peer_deleting_the_child_sa_removes_routes_and_hybridgw_reconnects() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab("hgsd");
    let s = scratch("swdel");
    let (pskf, secret) = psk(&s.0);
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    let conn = SwanConn::new(
        "hgw",
        lab.azure_gw_wan_ip.into(),
        lab.onprem_gw_wan_ip.into(),
        &secret,
    )
    .proposals("aes256-sha256-modp2048", "aes256gcm16");
    charon
        .load(&conn.render().expect("swanctl.conf"))
        .expect("load");
    let hgw = Daemon::start(
        &lab.onprem_gw,
        &s.0,
        "onprem",
        &hgw_config(
            "azure",
            lab.onprem_gw_wan_ip,
            lab.azure_gw_wan_ip,
            &pskf,
            "behaviour = \"initiate\"\nike_proposals = \"aes256-sha256-modp2048\"\nesp_proposals = \"aes256gcm16\"",
            "hgw-azure",
            &lab.azure_lan.to_string(),
        ),
    );
    hgw.wait_established(Duration::from_secs(30));
    let first = child_of(&hgw.status_json());
    charon
        .wait_child(&conn.child, Duration::from_secs(10))
        .expect("child");
    // strongSwan deletes the Child SA (INFORMATIONAL with DELETE).
    charon
        .terminate_child(&conn.child)
        .expect("terminate child");
    // hybridgw removes the SA and the route, closes the empty IKE SA and initiates again.
    let t0 = std::time::Instant::now();
    let mut again = None;
    while t0.elapsed() < Duration::from_secs(40) {
        let st = hgw.status_json();
        let (spi_in, _, _, _) = child_of(&st);
        if !spi_in.is_empty() && spi_in != first.0 {
            again = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = again.unwrap_or_else(|| {
        panic!(
            "no new Child SA after the peer deleted it:\n{}",
            hgw.log_text()
        )
    });
    assert_eq!(st["connections"][0]["state"], "established", "{st}");
    let log = hgw.log_text();
    assert!(
        log.contains("Child SA deleted") && log.contains("route removed"),
        "{log}"
    );
    Charon::route_into_tunnel(
        &lab.azure_gw,
        &lab.onprem_lan.to_string(),
        Some(lab.azure_gw_lan_ip),
    )
    .expect("route");
    ping_ok(&lab.onprem_host, lab.azure_host_ip, 3, 2);
}

#[test]
fn strongswan_and_hybridgw_both_rekey_child_sas_under_traffic_without_loss() {
    // CREATE_CHILD_SA against a real peer (RFC 7296 §1.3.3), with PFS (ECP-256 in the
    // exchange): strongSwan rekeys every 6 s, hybridgw on its 10 s lifetime, so both sides start
    // rekeys (and sometimes collide, §2.8.1). Pings every 50 ms for 25 s: none may be lost, the
    // IKE SA stays the same, and both sides agree on the surviving Child SA.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab("hgsr");
    let s = scratch("swrekey");
    let (pskf, secret) = psk(&s.0);
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    let mut conn = SwanConn::new(
        "hgw",
        lab.azure_gw_wan_ip.into(),
        lab.onprem_gw_wan_ip.into(),
        &secret,
    )
    .proposals("aes256-sha256-modp2048", "aes256gcm16-ecp256");
    conn.child_rekey_time = Some(Duration::from_secs(6));
    conn.child_life_time = Some(Duration::from_secs(60));
    charon
        .load(&conn.render().expect("swanctl.conf"))
        .expect("load");
    let hgw = Daemon::start(
        &lab.onprem_gw,
        &s.0,
        "onprem",
        &hgw_config(
            "azure",
            lab.onprem_gw_wan_ip,
            lab.azure_gw_wan_ip,
            &pskf,
            "behaviour = \"initiate\"\nike_proposals = \"aes256-sha256-modp2048\"\nesp_proposals = \"aes256gcm16-ecp256\"\n[connection.lifetimes]\nchild_seconds = 10",
            "hgw-azure",
            &lab.azure_lan.to_string(),
        ),
    );
    hgw.wait_established(Duration::from_secs(30));
    charon
        .wait_child(&conn.child, Duration::from_secs(10))
        .expect("child");
    Charon::route_into_tunnel(
        &lab.azure_gw,
        &lab.onprem_lan.to_string(),
        Some(lab.azure_gw_lan_ip),
    )
    .expect("route");
    let ike0 = hgw.status_json()["connections"][0]["ike_sa"]["spi_i"].clone();
    let p = harness::ping(
        &lab.onprem_host,
        lab.azure_host_ip,
        500,
        Duration::from_millis(50),
    )
    .expect("ping ran");
    let log = hgw.log_text();
    println!(
        "strongSwan + hybridgw rekeys under traffic: {}/{} pings answered, {} rekeys seen by hybridgw",
        p.received,
        p.transmitted,
        log.matches("Child SA rekeyed").count()
    );
    assert_eq!(
        p.received,
        p.transmitted,
        "pings lost across rekeys\n---- hybridgw log ----\n{log}\n---- charon ----\n{}",
        charon.log_tail(80)
    );
    assert!(
        log.matches("Child SA rekeyed").count() >= 2,
        "too few rekeys:\n{log}"
    );
    let st = hgw.status_json();
    assert_eq!(
        st["connections"][0]["ike_sa"]["spi_i"], ike0,
        "IKE SA replaced: {st}"
    );
    assert_eq!(st["connections"][0]["state"], "established", "{st}");
    // The SA hybridgw sends on is one strongSwan has installed (SPIs cross).
    let sas = charon.list_sas().expect("list-sas");
    let (spi_in, spi_out, _, _) = child_of(&st);
    let listed = format!("{sas:?}").to_lowercase();
    assert!(
        listed.contains(&spi_in.to_lowercase()) && listed.contains(&spi_out.to_lowercase()),
        "hybridgw's SPIs {spi_in}/{spi_out} not in strongSwan's SAs: {listed}"
    );
}
