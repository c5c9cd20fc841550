//! ExpressRoute with VPN failover end to end: `hybridgw lab failover` exits 0 with its figures
//! within loose bounds in static mode (floating routes and BFD-like path monitors, RFC 5880
//! section 6.8.4) and in BGP mode (`--bgp`: BIRD with eBGP, RFC 4271, over the circuit with BFD,
//! RFC 5880/5881, and over the tunnel), and `check-config` refuses bad `[connection.failover]`
//! values and reserved on-prem ASNs with located errors and accepts the BGP example.

mod appliance_support;

use std::path::Path;
use std::process::{Command, Output};

use appliance_support::{hybridgw_bin, scratch};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const GOOD: &str = r#"[[connection]]
name = "er-backup"
local_address = "203.0.113.1"
remote_address = "198.51.100.2"
psk = "an-inline-pre-shared-key-of-good-length"
remote_prefixes = ["198.19.1.0/24"]
"#;

const FAILOVER: &str = "[connection.failover]\nprimary_interface = \"er0\"\nprobe_source = \"192.0.2.1\"\nprobe_target = \"192.0.2.6\"\n";

#[test]
fn example_and_failover_section_pass_check_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance-config");
    let o = Command::new(hybridgw_bin())
        .args(["check-config"])
        .arg(dir.join("onprem-failover.toml"))
        .env("HYBRIDGW_PSK", "an-example-pre-shared-key-of-good-length")
        .output()
        .expect("hybridgw");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("failover: primary (ExpressRoute) interface er0"),
        "{t}"
    );
    assert!(t.contains("metric 200"), "{t}");
    assert!(t.contains("on-prem ASN 65010"), "{t}");
}

#[test]
fn bad_failover_and_bgp_values_give_located_errors() {
    let s = scratch("fo-cfg");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "reserved-asn-65515",
            format!("{GOOD}[connection.bgp]\nonprem_asn = 65515\n"),
            vec![":8:", "bgp.onprem_asn", "reserved"],
        ),
        (
            "reserved-asn-12076",
            format!("{GOOD}[connection.bgp]\nonprem_asn = 12076\n"),
            vec![":8:", "bgp.onprem_asn", "ExpressRoute"],
        ),
        (
            "reserved-asn-65517",
            format!("{GOOD}[connection.bgp]\nonprem_asn = 65517\n"),
            vec![":8:", "bgp.onprem_asn", "reserved"],
        ),
        (
            "reserved-asn-23456",
            format!("{GOOD}[connection.bgp]\nonprem_asn = 23456\n"),
            vec![":8:", "bgp.onprem_asn", "AS_TRANS"],
        ),
        (
            "bad-probe-target",
            format!("{GOOD}{}", FAILOVER.replace("192.0.2.6", "192.0.2.600")),
            vec![":10:", "failover.probe_target", "not an IPv4 address"],
        ),
        (
            "interval-too-short",
            format!("{GOOD}{FAILOVER}interval_ms = 1\n"),
            vec![":11:", "failover.interval_ms", "out of range"],
        ),
        (
            "backup-metric-not-worse",
            format!("{GOOD}{FAILOVER}backup_metric = 10\n"),
            vec![":11:", "failover.backup_metric", "worse"],
        ),
        (
            "missing-primary-interface",
            format!("{GOOD}[connection.failover]\nprobe_target = \"192.0.2.6\"\n"),
            vec!["primary_interface"],
        ),
        (
            "unknown-failover-key",
            format!("{GOOD}{FAILOVER}intervall_ms = 300\n"),
            vec![":11:", "intervall_ms"],
        ),
    ];
    for (name, body, expect) in cases {
        let path = s.0.join(format!("{name}.toml"));
        std::fs::write(&path, body).expect("write case");
        let o = Command::new(hybridgw_bin())
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("hybridgw");
        let t = text(&o);
        assert!(!o.status.success(), "{name}: accepted:\n{t}");
        assert!(
            t.contains(&path.display().to_string()),
            "{name}: no file named:\n{t}"
        );
        for e in expect {
            assert!(t.contains(e), "{name}: error does not mention `{e}`:\n{t}");
        }
    }
}

#[test]
fn bgp_example_passes_check_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance-config");
    let o = Command::new(hybridgw_bin())
        .args(["check-config"])
        .arg(dir.join("onprem-bgp.toml"))
        .env("HYBRIDGW_PSK", "an-example-pre-shared-key-of-good-length")
        .output()
        .expect("hybridgw");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("on-prem ASN 65010"), "{t}");
    assert!(t.contains("169.254.21.2"), "{t}");
}

/// `lab: RESULT NAME: time without traffic N ms, packets lost L of S, path now P`.
fn result(text: &str, name: &str) -> (f64, u64, String) {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("lab: RESULT {name}:")))
        .unwrap_or_else(|| panic!("no RESULT line for {name}:\n{text}"));
    let num = |after: &str| -> f64 {
        line.split(after)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{after}` in {line}"))
    };
    let path = line
        .split("path now ")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string();
    (num("without traffic "), num("packets lost ") as u64, path)
}

/// `lab:   STEP: 1 s of counters: on-prem er0 A / tunnel B packets out, Azure er0 C / tunnel D
/// packets out -> PATH`, as numbers.
fn counters(text: &str, step: &str) -> [u64; 4] {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("lab:   {step}: 1 s of counters:")))
        .unwrap_or_else(|| panic!("no counters for {step}:\n{text}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .filter_map(|w| w.parse().ok())
        .collect();
    // Digits: the step's, "1 s", "er0", then A, B, "er0", C, D: the last five hold them.
    match n.as_slice() {
        [.., a, b, _, c, d] => [*a, *b, *c, *d],
        _ => panic!("cannot read the counters of {line}"),
    }
}

/// No namespace the lab printed is left.
fn no_namespace_left(t: &str) {
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let left = String::from_utf8_lossy(&ns.stdout).to_string();
    for tok in t.split_whitespace().filter(|w| w.starts_with("hgwfo-")) {
        assert!(!left.contains(tok), "namespace {tok} left behind");
    }
}

#[test]
fn lab_failover_bgp_holds_every_step() {
    let out = Command::new(hybridgw_bin())
        .args(["lab", "failover", "--bgp"])
        .output()
        .expect("hybridgw lab failover --bgp");
    let t = text(&out);
    println!("{t}");
    assert!(
        out.status.success(),
        "hybridgw lab failover --bgp failed:\n{t}"
    );
    assert!(t.contains("lab: PASS"), "{t}");
    // BGP converged with every session up, the ExpressRoute route preferred on both sides.
    assert!(t.contains("BGP converged"), "{t}");
    assert!(
        t.contains("converged: on-prem BIRD best route 198.19.1.0/24 unicast [expressroute")
            && t.contains("converged: Azure BIRD best route 198.18.1.0/24 unicast [expressroute"),
        "{t}"
    );
    for name in ["failover/link-down", "failover/blackhole"] {
        let (gap, _, path) = result(&t, name);
        assert!(gap < 3000.0, "{name}: {gap} ms without traffic\n{t}");
        assert_eq!(path, "VPN", "{name}\n{t}");
    }
    for name in ["failback/link-up", "failback/blackhole-healed"] {
        let (gap, lost, path) = result(&t, name);
        assert!(
            lost <= 5 && gap < 500.0,
            "{name}: {lost} lost, {gap} ms\n{t}"
        );
        assert_eq!(path, "ExpressRoute", "{name}\n{t}");
    }
    // The counters, read back: ExpressRoute carries the pings (~100/s) in steps 1 and 4, the
    // tunnel in step 3, on both gateways.
    for step in [
        "step 1",
        "step 4 (after link up)",
        "step 4 (blackhole healed)",
    ] {
        let [oe, ot, ae, at] = counters(&t, step);
        assert!(
            oe >= 40 && ae >= 40 && ot <= 10 && at <= 10,
            "{step}: {oe} {ot} {ae} {at}"
        );
    }
    for step in ["step 3 (after link down)", "step 3 (blackhole)"] {
        let [oe, ot, ae, at] = counters(&t, step);
        assert!(
            ot >= 40 && at >= 40 && oe <= 15 && ae <= 15,
            "{step}: {oe} {ot} {ae} {at}"
        );
    }
    // The blackhole kept the carrier: BFD found it, and the BFD session showed it down.
    assert!(t.contains("blackhole: on-prem er0 carrier up"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("lab:   blackhole: on-prem BFD") && l.contains("Down")),
        "{t}"
    );
    assert!(t.contains("TCP transfer survived every transition"), "{t}");
    assert!(t.contains("BIRDs stopped"), "{t}");
    no_namespace_left(&t);
}

#[test]
fn lab_failover_static_holds_every_step() {
    let out = Command::new(hybridgw_bin())
        .args(["lab", "failover"])
        .output()
        .expect("hybridgw lab failover");
    let t = text(&out);
    println!("{t}");
    assert!(out.status.success(), "hybridgw lab failover failed:\n{t}");
    assert!(t.contains("lab: PASS"), "{t}");
    for name in ["failover/link-down", "failover/blackhole"] {
        let (gap, _, path) = result(&t, name);
        assert!(gap < 2000.0, "{name}: {gap} ms without traffic\n{t}");
        assert_eq!(path, "VPN", "{name}\n{t}");
    }
    for name in ["failback/link-up", "failback/blackhole-healed"] {
        let (gap, lost, path) = result(&t, name);
        assert!(
            lost <= 20 && gap < 500.0,
            "{name}: {lost} lost, {gap} ms\n{t}"
        );
        assert_eq!(path, "ExpressRoute", "{name}\n{t}");
    }
    assert!(t.contains("TCP transfer survived every transition"), "{t}");
    // It cleaned up: none of the namespaces it printed is left.
    no_namespace_left(&t);
}
