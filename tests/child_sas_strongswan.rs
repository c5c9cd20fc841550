//! One Child SA per selector pair against a real strongSwan (charon, kernel-libipsec, `encap =
//! yes`) set up the way an Azure VPN gateway with `UsePolicyBasedTrafficSelectors` behaves: one
//! Child SA per on-prem x VNet prefix pair under one IKE SA (RFC 7296 §1.3.1, §2.9). Every pair is
//! pinged in both directions with its own source and destination addresses; each Child SA is
//! rekeyed on its own by each side under a 20 ms ping; one deleted by strongSwan comes back alone
//! while the others carry traffic; both sides starting at the same moment end with one IKE SA.

mod appliance_support;

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use appliance_support::*;
use harness::{Charon, CharonOptions, SwanConn};
use netns::Netns;
use netns::topology::Lab;

/// The strongSwan scenarios share the 2 cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// On-prem prefixes (inside the lab's 198.18.1.0/24 LAN) with one host address each, and the
/// VNet prefixes (inside 198.19.1.0/24).
const ONPREM_2: [(&str, Ipv4Addr); 2] = [
    ("198.18.1.0/25", Ipv4Addr::new(198, 18, 1, 10)),
    ("198.18.1.128/25", Ipv4Addr::new(198, 18, 1, 200)),
];
const ONPREM_3: [(&str, Ipv4Addr); 3] = [
    ("198.18.1.0/26", Ipv4Addr::new(198, 18, 1, 10)),
    ("198.18.1.64/26", Ipv4Addr::new(198, 18, 1, 70)),
    ("198.18.1.128/26", Ipv4Addr::new(198, 18, 1, 130)),
];
const VNET_2: [(&str, Ipv4Addr); 2] = [
    ("198.19.1.0/25", Ipv4Addr::new(198, 19, 1, 10)),
    ("198.19.1.128/25", Ipv4Addr::new(198, 19, 1, 200)),
];

/// One selector pair with a host on each side.
#[derive(Clone, Debug)]
struct Pair {
    local: &'static str,
    remote: &'static str,
    onprem_host: Ipv4Addr,
    azure_host: Ipv4Addr,
}

fn pairs(onprem: &[(&'static str, Ipv4Addr)], vnet: &[(&'static str, Ipv4Addr)]) -> Vec<Pair> {
    let mut v = Vec::new();
    for (l, lh) in onprem {
        for (r, rh) in vnet {
            v.push(Pair {
                local: l,
                remote: r,
                onprem_host: *lh,
                azure_host: *rh,
            });
        }
    }
    v
}

/// The lab with a host address in every prefix, and an address of the Azure gateway in every
/// VNet prefix (kernel-libipsec routes each remote selector with a source address inside the
/// local selector and refuses the Child SA without one).
fn lab_for(prefix: &str, onprem: &[(&str, Ipv4Addr)], vnet: &[(&str, Ipv4Addr)]) -> Lab {
    let lab = lab(prefix);
    for (p, _) in vnet {
        let net = netns::check_cidr(p).expect("prefix");
        if !net.contains(lab.azure_gw_lan_ip) {
            // The last address of the prefix, as a host address (no new connected route).
            let size = 1u32 << (32 - u32::from(net.len));
            let last = Ipv4Addr::from(u32::from(net.network()) + size - 2);
            lab.azure_gw
                .exec(["ip", "addr", "add", &format!("{last}/32"), "dev", "lan0"])
                .expect("gateway address");
        }
    }
    for (ns, hosts, primary) in [
        (&lab.onprem_host, onprem, lab.onprem_host_ip),
        (&lab.azure_host, vnet, lab.azure_host_ip),
    ] {
        for (_, h) in hosts {
            if *h != primary {
                ns.exec(["ip", "addr", "add", &format!("{h}/24"), "dev", "eth0"])
                    .expect("host address");
            }
        }
    }
    lab
}

/// hybridgw's policy-based connection with these pairs.
fn hgw_policy_config(lab: &Lab, psk: &std::path::Path, pairs: &[Pair], extra: &str) -> String {
    let sel: Vec<String> = pairs
        .iter()
        .map(|p| format!("{{ local = \"{}\", remote = \"{}\" }}", p.local, p.remote))
        .collect();
    format!(
        "[[connection]]\nname = \"azure\"\nlocal_address = \"{}\"\nremote_address = \"{}\"\npsk_file = \"{}\"\n\
         tun_name = \"hgw-azure\"\nmode = \"policy-based\"\nselectors = [{}]\n\
         ike_proposals = \"aes256-sha256-modp2048\"\nesp_proposals = \"aes256gcm16\"\n{extra}\n",
        lab.onprem_gw_wan_ip,
        lab.azure_gw_wan_ip,
        psk.display(),
        sel.join(", ")
    )
}

/// strongSwan as the Azure gateway: one child per pair (`per_pair`) or one with all of them.
fn swan_conn(lab: &Lab, secret: &str, pairs: &[Pair], per_pair: bool) -> SwanConn {
    let c = SwanConn::new(
        "hgw",
        lab.azure_gw_wan_ip.into(),
        lab.onprem_gw_wan_ip.into(),
        secret,
    )
    .proposals("aes256-sha256-modp2048", "aes256gcm16");
    if per_pair {
        let p: Vec<(&str, &str)> = pairs.iter().map(|p| (p.remote, p.local)).collect();
        c.per_pair(&p)
    } else {
        let mut l: Vec<&str> = pairs.iter().map(|p| p.remote).collect();
        let mut r: Vec<&str> = pairs.iter().map(|p| p.local).collect();
        l.dedup();
        r.sort();
        r.dedup();
        l.sort();
        l.dedup();
        c.ts(&l, &r)
    }
}

/// Ping statistics with the longest run of lost echo requests.
#[derive(Debug)]
struct Probe {
    sent: u32,
    received: u32,
    longest_gap: u32,
}

/// `count` pings from `src` to `dst` at `interval`, each awaited at most 1 s.
fn ping_from(ns: &Netns, src: Ipv4Addr, dst: Ipv4Addr, count: u32, interval: Duration) -> Probe {
    let out = ns
        .exec_output([
            "ping".to_string(),
            "-n".into(),
            "-c".into(),
            count.to_string(),
            "-i".into(),
            format!("{:.3}", interval.as_secs_f64()),
            "-I".into(),
            src.to_string(),
            "-W".into(),
            "1".into(),
            "-w".into(),
            (u64::from(count) * interval.as_millis() as u64 / 1000 + 5).to_string(),
            dst.to_string(),
        ])
        .expect("ping ran");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    let mut longest = 0;
    let mut prev = 0;
    for &s in seen.iter().chain(std::iter::once(&(count + 1))) {
        longest = longest.max(s.saturating_sub(prev + 1));
        prev = s;
    }
    Probe {
        sent: count,
        received: seen.len() as u32,
        longest_gap: longest,
    }
}

/// Every pair answers a ping in both directions.
fn ping_every_pair(lab: &Lab, pairs: &[Pair], hgw: &Daemon, charon: &Charon) {
    for p in pairs {
        for (ns, src, dst) in [
            (&lab.onprem_host, p.onprem_host, p.azure_host),
            (&lab.azure_host, p.azure_host, p.onprem_host),
        ] {
            let r = ping_from(ns, src, dst, 3, Duration::from_millis(100));
            assert!(
                r.received >= 2,
                "pair {} === {}: ping {src} -> {dst} {r:?}\n{}\n---- hybridgw ----\n{}\n---- charon ----\n{}",
                p.local,
                p.remote,
                serde_json::to_string_pretty(&hgw.status_json()).unwrap_or_default(),
                hgw.log_text(),
                charon.log_tail(60)
            );
        }
    }
}

/// hybridgw's installed Child SAs as (local_ts, remote_ts) -> spi_in.
fn hgw_children(hgw: &Daemon) -> std::collections::BTreeMap<(String, String), String> {
    let st = hgw.status_json();
    st["connections"][0]["child_sas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|c| c["state"] == "installed")
        .map(|c| {
            let j = |k: &str| {
                c[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default()
            };
            (
                (j("local_ts"), j("remote_ts")),
                c["spi_in"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits (bounded) until hybridgw and strongSwan both hold exactly one IKE SA with exactly
/// `n` installed Child SAs whose SPIs cross.
fn wait_converged(hgw: &Daemon, charon: &Charon, n: usize, timeout: Duration) {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < timeout {
        let st = hgw.status_json();
        let c = &st["connections"][0];
        // An IKE SA we are deleting (a duplicate whose DELETE the peer has not answered: it may
        // have dropped it already) carries nothing any more; it goes after the retransmissions.
        let ikes = c["ike_sas"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|x| x["state"] != "deleting").count());
        let installed: Vec<String> = c["child_sas"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|x| x["state"] == "installed")
            .map(|x| x["spi_out"].as_str().unwrap_or_default().to_string())
            .collect();
        // Every Child SA that can carry traffic (installed or standing by) is one of the n.
        let all = c["child_sas"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|x| x["state"] == "installed" || x["state"] == "standby")
                .count()
        });
        let sas = charon.list_sas().unwrap_or_default();
        let sw_children: Vec<String> = sas
            .iter()
            .flat_map(|i| i.child_sas.iter())
            .filter(|x| x.state == "INSTALLED")
            .map(|x| format!("{:08x}", x.spi_in))
            .collect();
        let mut a = installed.clone();
        let mut b = sw_children.clone();
        a.sort();
        b.sort();
        if c["state"] == "established"
            && ikes == 1
            && sas.len() == 1
            && installed.len() == n
            && all == n
            && a == b
        {
            return;
        }
        last = format!(
            "hybridgw: state {} {ikes} IKE SAs, {all} Child SAs ({} installed: {a:?}); strongSwan: {} IKE SAs, children {b:?}",
            c["state"],
            installed.len(),
            sas.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "not converged to one IKE SA and {n} Child SAs after {timeout:?}: {last}\n---- hybridgw ----\n{}\n---- charon ----\n{}",
        hgw.log_text(),
        charon.log_tail(80)
    );
}

fn wait_status_ready(hgw: &Daemon) {
    let t0 = Instant::now();
    while hybridgw::lab::status(&hgw.socket).is_err() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// strongSwan as the Azure gateway and hybridgw as the on-prem gateway of one scenario.
struct Bench {
    lab: Lab,
    _dir: hybridgw::lab::Scratch,
    charon: Charon,
    conn: SwanConn,
    hgw: Daemon,
}

/// Starts charon (kernel-libipsec, which routes each remote selector into `ipsec0` itself) with
/// `conn` made by `swan` from the PSK, and hybridgw with `pairs` and `hgw_extra`. With `start_action = start` in `conn`
/// hybridgw starts first (strongSwan initiates on load), otherwise strongSwan loads first.
fn bench(
    tag: &str,
    onprem: &[(&'static str, Ipv4Addr)],
    vnet: &[(&'static str, Ipv4Addr)],
    pairs: &[Pair],
    hgw_extra: &str,
    swan: impl FnOnce(&Lab, &str) -> SwanConn,
) -> Bench {
    let lab = lab_for(tag, onprem, vnet);
    let dir = scratch(tag);
    let (pskf, secret) = psk(&dir.0);
    let charon = Charon::start(&lab.azure_gw, CharonOptions::default()).expect("charon");
    let conn = swan(&lab, &secret);
    let load = |c: &Charon| {
        c.load(&conn.render().expect("swanctl.conf"))
            .expect("swanctl --load-all")
    };
    let starts = conn.start_action == "start";
    if !starts {
        load(&charon);
    }
    let hgw = Daemon::start(
        &lab.onprem_gw,
        &dir.0,
        "onprem",
        &hgw_policy_config(&lab, &pskf, pairs, hgw_extra),
    );
    if starts {
        wait_status_ready(&hgw);
        load(&charon);
    }
    Bench {
        lab,
        _dir: dir,
        charon,
        conn,
        hgw,
    }
}

#[test]
fn strongswan_starts_every_pair_at_once_and_each_is_rekeyed_and_restored_alone() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pairs = pairs(&ONPREM_2, &VNET_2);
    // Azure starts every pair at once: strongSwan loads the four children with start_action =
    // start (one IKE SA, then a CREATE_CHILD_SA per further pair, queued at once).
    let Bench {
        lab,
        _dir,
        charon,
        conn,
        hgw,
    } = bench(
        "cspp",
        &ONPREM_2,
        &VNET_2,
        &pairs,
        "behaviour = \"respond\"",
        |lab, secret| {
            let mut c = swan_conn(lab, secret, &pairs, true);
            c.start_action = "start".into();
            c
        },
    );
    wait_converged(&hgw, &charon, 4, Duration::from_secs(30));
    ping_every_pair(&lab, &pairs, &hgw, &charon);
    let log = hgw.log_text();
    assert!(!log.contains("NO_ADDITIONAL_SAS"), "{log}");

    // Each Child SA rekeyed on its own, two by strongSwan and two by hybridgw, under a 20 ms
    // ping on every pair: no echo lost.
    let before = hgw_children(&hgw);
    let keys: Vec<(String, String)> = before.keys().cloned().collect();
    let names = conn.children();
    let ping_secs = 8u32;
    let results = std::thread::scope(|sc| {
        let pings: Vec<_> = pairs
            .iter()
            .map(|p| {
                let ns = &lab.onprem_host;
                sc.spawn(move || {
                    ping_from(
                        ns,
                        p.onprem_host,
                        p.azure_host,
                        ping_secs * 50,
                        Duration::from_millis(20),
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        charon.rekey_child(&names[0]).expect("swanctl --rekey net");
        std::thread::sleep(Duration::from_millis(1500));
        let out = hgw.cli(&["rekey", "azure", "--child", &before[&keys[1]]]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(1500));
        charon
            .rekey_child(&names[2])
            .expect("swanctl --rekey net-3");
        std::thread::sleep(Duration::from_millis(1500));
        let out = hgw.cli(&["rekey", "azure", "--child", &before[&keys[3]]]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        pings
            .into_iter()
            .map(|h| h.join().expect("ping thread"))
            .collect::<Vec<_>>()
    });
    let log = hgw.log_text();
    for (p, r) in pairs.iter().zip(&results) {
        println!(
            "rekeys under ping, pair {} === {}: {}/{} answered, longest gap {}",
            p.local, p.remote, r.received, r.sent, r.longest_gap
        );
        assert_eq!(
            r.received, r.sent,
            "pair {} === {} lost pings across the rekeys: {r:?}\n{log}",
            p.local, p.remote
        );
    }
    wait_converged(&hgw, &charon, 4, Duration::from_secs(15));
    let after = hgw_children(&hgw);
    // Every Child SA was replaced (two rekeyed by each side); the IKE SA stays.
    for k in &keys {
        assert_ne!(before[k], after[k], "Child SA {k:?} was not rekeyed\n{log}");
    }
    assert!(log.matches("Child SA rekeyed").count() >= 4, "{log}");

    // strongSwan deletes one Child SA: it comes back alone on the same IKE SA while the others
    // carry a 20 ms ping without loss.
    let ike_before = hgw.status_json()["connections"][0]["ike_sa"]["spi_i"].clone();
    let victim_pair = &pairs[1];
    let results = std::thread::scope(|sc| {
        let pings: Vec<_> = pairs
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != 1)
            .map(|(_, p)| {
                let ns = &lab.onprem_host;
                sc.spawn(move || {
                    ping_from(
                        ns,
                        p.onprem_host,
                        p.azure_host,
                        250,
                        Duration::from_millis(20),
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        charon
            .terminate_child(&names[1])
            .expect("swanctl --terminate --child net-2");
        pings
            .into_iter()
            .map(|h| h.join().expect("ping thread"))
            .collect::<Vec<_>>()
    });
    for r in &results {
        assert_eq!(
            r.received, r.sent,
            "a pair lost pings while another was deleted: {r:?}"
        );
    }
    wait_converged(&hgw, &charon, 4, Duration::from_secs(20));
    let again = hgw_children(&hgw);
    for (k, spi) in &after {
        let is_victim = k.0 == victim_pair.local && k.1 == victim_pair.remote;
        assert_eq!(again[k] != *spi, is_victim, "{k:?}: {spi} -> {}", again[k]);
    }
    assert_eq!(
        hgw.status_json()["connections"][0]["ike_sa"]["spi_i"],
        ike_before,
        "the IKE SA was replaced"
    );
    ping_every_pair(&lab, &pairs, &hgw, &charon);
    let st = hgw.proc.stop().expect("stop hybridgw");
    assert!(st.success(), "hybridgw exit {st}");
    drop(lab);
}

#[test]
fn hybridgw_initiates_three_by_two_pairs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pairs = pairs(&ONPREM_3, &VNET_2);
    let Bench {
        lab,
        _dir,
        charon,
        hgw,
        ..
    } = bench(
        "cs32",
        &ONPREM_3,
        &VNET_2,
        &pairs,
        "behaviour = \"initiate\"",
        |lab, secret| swan_conn(lab, secret, &pairs, true),
    );
    wait_converged(&hgw, &charon, 6, Duration::from_secs(30));
    ping_every_pair(&lab, &pairs, &hgw, &charon);
    // status names every Child SA with its selectors.
    let children = hgw_children(&hgw);
    for p in &pairs {
        assert!(
            children.contains_key(&(p.local.to_string(), p.remote.to_string())),
            "{p:?} missing in {children:?}"
        );
    }
    let out = hgw.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("Child SA installed").count(), 6, "{text}");
    assert!(!text.contains("WARNING"), "{text}");
}

#[test]
fn a_pair_the_peer_refuses_is_reported_and_the_others_carry_traffic() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pairs = pairs(&ONPREM_2, &VNET_2);
    // The gateway knows only three of the four pairs.
    let Bench {
        lab,
        _dir,
        charon,
        hgw,
        ..
    } = bench(
        "csrf",
        &ONPREM_2,
        &VNET_2,
        &pairs,
        "behaviour = \"initiate\"",
        |lab, secret| swan_conn(lab, secret, &pairs[..3], true),
    );
    let t0 = Instant::now();
    let mut st = hgw.status_json();
    while t0.elapsed() < Duration::from_secs(20) {
        st = hgw.status_json();
        if hgw_children(&hgw).len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let c = &st["connections"][0];
    assert_eq!(c["state"], "partial", "{c}");
    assert_eq!(
        c["missing_pairs"],
        serde_json::json!(["198.18.1.128/25 === 198.19.1.128/25"]),
        "{c}"
    );
    let out = hgw.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("WARNING: selector pair 198.18.1.128/25 === 198.19.1.128/25 has no Child SA"),
        "{text}"
    );
    ping_every_pair(&lab, &pairs[..3], &hgw, &charon);
    // The missing pair's traffic is dropped as "no SA" and counted, not sent in clear.
    let r = ping_from(
        &lab.onprem_host,
        pairs[3].onprem_host,
        pairs[3].azure_host,
        3,
        Duration::from_millis(100),
    );
    assert_eq!(r.received, 0, "{r:?}");
    let st = hgw.status_json();
    let drops = &st["connections"][0]["child_sas"][0]["drops"];
    assert!(drops["no_sa"].as_u64().unwrap_or(0) >= 3, "{drops}");
}

#[test]
fn all_pairs_in_one_child_sa_with_child_sa_per_pair_false() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pairs = pairs(&ONPREM_2, &VNET_2);
    let Bench {
        lab,
        _dir,
        charon,
        hgw,
        ..
    } = bench(
        "cs1c",
        &ONPREM_2,
        &VNET_2,
        &pairs,
        "behaviour = \"initiate\"\nchild_sa_per_pair = false",
        |lab, secret| swan_conn(lab, secret, &pairs, false),
    );
    wait_converged(&hgw, &charon, 1, Duration::from_secs(30));
    let sw = charon
        .wait_child("net", Duration::from_secs(5))
        .expect("child");
    assert_eq!(sw.local_ts.len(), 2, "{sw:?}");
    assert_eq!(sw.remote_ts.len(), 2, "{sw:?}");
    ping_every_pair(&lab, &pairs, &hgw, &charon);
}

#[test]
fn both_sides_starting_at_once_end_with_one_ike_sa_ten_times() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pairs = pairs(&ONPREM_2, &VNET_2);
    let Bench {
        lab,
        _dir,
        charon,
        conn,
        hgw,
    } = bench(
        "cssim",
        &ONPREM_2,
        &VNET_2,
        &pairs,
        "behaviour = \"both\"",
        |lab, secret| swan_conn(lab, secret, &pairs, true),
    );
    wait_converged(&hgw, &charon, 4, Duration::from_secs(30));
    let names = conn.children();
    for round in 0..10 {
        // Both sides down, then both start at the same moment (Azure's "Default" mode).
        let out = hgw.cli(&["down", "azure"]);
        assert!(out.status.success());
        let t0 = Instant::now();
        while !charon.list_sas().unwrap_or_default().is_empty()
            && t0.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = charon.terminate_ike("hgw");
        let barrier = std::sync::Barrier::new(names.len() + 1);
        std::thread::scope(|sc| {
            let b = &barrier;
            for n in &names {
                let charon = &charon;
                sc.spawn(move || {
                    b.wait();
                    let _ = charon.initiate(n);
                });
            }
            b.wait();
            let out = hgw.cli(&["up", "azure"]);
            assert!(out.status.success());
        });
        wait_converged(&hgw, &charon, 4, Duration::from_secs(30));
        println!(
            "simultaneous start, round {}: one IKE SA, four Child SAs",
            round + 1
        );
    }
    // Whatever duplicate is still being deleted goes within the DPD timeout (45 s of
    // retransmissions) plus a margin.
    let t0 = Instant::now();
    let mut st = hgw.status_json();
    while st["connections"][0]["ike_sas"]
        .as_array()
        .map_or(0, |a| a.len())
        > 1
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(500));
        st = hgw.status_json();
    }
    assert_eq!(
        st["connections"][0]["ike_sas"]
            .as_array()
            .map_or(0, |a| a.len()),
        1,
        "{st}"
    );
    let log = hgw.log_text();
    println!(
        "crossing setups settled: {}; IKE SAs replaced (unique = replace): {}; duplicates whose DELETE was not answered: {}",
        log.matches("setups crossed").count(),
        log.matches("unique = replace").count(),
        log.matches("IKE SA lost").count()
    );
    ping_every_pair(&lab, &pairs, &hgw, &charon);
}
