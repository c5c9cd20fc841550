//! `hybridgw lab` end to end: builds the namespace lab, runs two daemons, proves traffic crosses
//! the tunnel and nothing crosses the underlay in clear, cleans up, and exits 0 (RFC 7296 / RFC 3948).

mod appliance_support;

use std::process::Command;

#[test]
fn hybridgw_lab_exits_zero() {
    let out = Command::new(appliance_support::hybridgw_bin())
        .arg("lab")
        .output()
        .expect("hybridgw lab");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "hybridgw lab failed:\n{text}");
    assert!(text.contains("lab: PASS"), "{text}");
    // It cleaned up: none of its namespaces is left.
    let ns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    let me = String::from_utf8_lossy(&ns.stdout).to_string();
    for line in text.lines().filter(|l| l.contains(" -- ")) {
        for tok in line.split_whitespace().filter(|t| t.starts_with("hgwlab-")) {
            assert!(!me.contains(tok), "namespace {tok} left behind");
        }
    }
}
