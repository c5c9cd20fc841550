//! `hybridgw lab ha --stateful` end to end (issue #14, stateful HA with keepalived VRRPv3):
//! against strongSwan (charon, kernel-libipsec, `encap = yes`) as the Azure peer, appliance A
//! is killed and restored under 10 ms probes both ways and a TCP flow. Asserted from the
//! lab's measured numbers: under 1 s without traffic per event and direction, the peer's IKE
//! SA and Child SA identical (unique ids and SPIs from `swanctl --list-sas --raw`), the TCP
//! flow alive, each takeover in sync with the IKE SA and Child SA continued and nothing fresh,
//! the continued IKE SA still usable (a Child SA rekey from each side), nothing left behind.

mod appliance_support;

use std::process::Command;

/// One `lab: | event | direction | ... |` row, as its cells.
#[derive(Debug)]
struct Row {
    event: String,
    direction: String,
    gap_ms: f64,
    lost: u64,
    sent: u64,
    carried_by: String,
    peer: String,
    tcp: String,
    ha: String,
    target: String,
}

fn rows(text: &str) -> Vec<Row> {
    text.lines()
        .filter(|l| l.starts_with("lab: | ") && !l.contains("| direction "))
        .map(|l| {
            let c: Vec<&str> = l.split('|').map(str::trim).collect();
            assert!(c.len() >= 12, "malformed row: {l}");
            let (lost, sent) = c[4].split_once('/').unwrap_or(("x", "x"));
            Row {
                event: c[1].to_string(),
                direction: c[2].to_string(),
                gap_ms: c[3]
                    .trim_end_matches("ms")
                    .trim()
                    .parse()
                    .unwrap_or(f64::MAX),
                lost: lost.trim().parse().unwrap_or(u64::MAX),
                sent: sent.trim().parse().unwrap_or(0),
                carried_by: c[5].to_string(),
                peer: c[6].to_string(),
                tcp: c[7].to_string(),
                ha: c[9].to_string(),
                target: c[10].to_string(),
            }
        })
        .collect()
}

#[test]
fn stateful_ha_keeps_the_peers_sas_and_traffic() {
    let out = Command::new(appliance_support::hybridgw_bin())
        .args(["lab", "ha", "--stateful", "--peer", "strongswan"])
        .output()
        .expect("hybridgw lab ha --stateful");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let rows = rows(&text);
    for r in &rows {
        println!("{r:?}");
    }
    assert!(
        out.status.success(),
        "hybridgw lab ha --stateful failed:\n{text}"
    );
    assert!(text.contains("lab: PASS"), "{text}");
    assert_eq!(rows.len(), 6, "three events, two directions each:\n{text}");
    for (event, carrier) in [("steady", "A"), ("A dies", "B"), ("A restored", "A")] {
        for dir in ["on-prem -> Azure", "Azure -> on-prem"] {
            let r = rows
                .iter()
                .find(|r| r.event == event && r.direction == dir)
                .unwrap_or_else(|| panic!("no row for {event} / {dir}:\n{text}"));
            assert!(
                r.gap_ms < 1000.0,
                "{event} {dir}: {} ms without traffic: {r:?}\n{text}",
                r.gap_ms
            );
            assert!(r.sent >= 100 && r.lost < r.sent, "{event} {dir}: {r:?}");
            assert_eq!(
                r.peer, "same",
                "{event}: the peer saw new SAs: {r:?}\n{text}"
            );
            assert_eq!(r.tcp, "alive", "{event}: the TCP flow broke: {r:?}\n{text}");
            assert_eq!(
                r.carried_by, carrier,
                "{event}: traffic went elsewhere: {r:?}"
            );
            assert_eq!(r.target, "met", "{event} {dir}: {r:?}\n{text}");
            if event == "steady" {
                assert!(
                    r.ha.contains("A master, B backup in_sync=true"),
                    "{r:?}\n{text}"
                );
            } else {
                // The new master continued the replica: in sync, both SAs, nothing fresh.
                assert!(
                    r.ha.starts_with("in_sync=true")
                        && r.ha.contains("ike=1 child=1")
                        && r.ha.ends_with("fresh=none"),
                    "{event}: takeover {}\n{text}",
                    r.ha
                );
            }
        }
    }
    // A killed master loses at most what VRRP's detection costs; a planned move back almost nothing.
    let restored = rows.iter().filter(|r| r.event == "A restored");
    for r in restored {
        assert!(
            r.lost <= 20,
            "moving back to A lost {} probes: {r:?}",
            r.lost
        );
    }
    // The peer's unique ids never changed (#1: the only IKE SA it ever made).
    assert!(
        text.contains("peer holds IKE [#1 "),
        "the peer's first IKE SA is not #1:\n{text}"
    );
    // The continued IKE SA still works both ways (its keys and message IDs moved twice).
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("lab: IKE CHECK") && l.contains("IKE SA: ok"))
            .count(),
        2,
        "{text}"
    );
    // Cleaned up: no namespace of this run is left.
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let left = String::from_utf8_lossy(&ns.stdout).to_string();
    let pid = text
        .lines()
        .find_map(|l| l.split("hgwsha-").nth(1))
        .and_then(|rest| rest.split('-').next())
        .map(str::to_string)
        .expect("the lab names its namespaces");
    assert!(
        !left.contains(&format!("hgwsha-{pid}-")),
        "namespaces of run {pid} left behind: {left}"
    );
}

/// The shipped keepalived examples (`appliance-config/keepalived/`) pass keepalived's own
/// configuration check, on a namespace that has their interfaces.
#[test]
fn keepalived_accepts_the_example_configurations() {
    let a = netns::Netns::new("hgwkt").expect("namespace");
    let b = netns::Netns::new("hgwkt").expect("namespace");
    netns::veth_pair(&a, "eth0", &b, "kt0").expect("veth eth0");
    netns::veth_pair(&a, "eth1", &b, "kt1").expect("veth eth1");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance-config/keepalived");
    for f in ["ha-stateful-a.conf", "ha-stateful-b.conf"] {
        let p = dir.join(f);
        let text = std::fs::read_to_string(&p).expect("example");
        assert!(
            text.contains("ha master\"")
                && text.contains("ha backup\"")
                && text.contains("ha fault\""),
            "{f}: the notify scripts call `hybridgw ha`"
        );
        let out = a
            .exec_output(["keepalived", "-t", "-f", p.to_str().expect("utf-8")])
            .expect("keepalived -t");
        assert!(
            out.status.success(),
            "{f}: keepalived -t: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
