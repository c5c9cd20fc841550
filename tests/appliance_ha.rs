//! `hybridgw lab ha` end to end (Azure's dual redundancy: two appliances, an active-active Azure
//! gateway, four tunnels with BGP), the CI variant with Azure's DPD at its 9 s minimum: every
//! event meets its target, the drain loses nothing, the TCP flows survive, nothing is left.

mod appliance_support;

use std::process::Command;

/// The figures of one `lab: | event | direction | ... |` row: (without traffic ms, lost).
fn row(text: &str, event: &str, direction: &str) -> (f64, u64) {
    let line = text
        .lines()
        .find(|l| l.starts_with("lab: | ") && l.contains(event) && l.contains(direction))
        .unwrap_or_else(|| panic!("no row for {event} / {direction} in\n{text}"));
    let cells: Vec<&str> = line.split('|').map(str::trim).collect();
    let gap: f64 = cells[3]
        .trim_end_matches(" ms")
        .trim()
        .parse()
        .unwrap_or(f64::MAX);
    let lost: u64 = cells[4]
        .split('/')
        .next()
        .and_then(|x| x.trim().parse().ok())
        .unwrap_or(u64::MAX);
    assert!(cells[9].ends_with("met"), "{event} {direction}: {line}");
    (gap, lost)
}

#[test]
fn lab_ha_meets_every_target() {
    let out = Command::new(appliance_support::hybridgw_bin())
        .args(["lab", "ha", "--azure-dpd-timeout", "9"])
        .output()
        .expect("hybridgw lab ha");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "hybridgw lab ha failed:\n{text}");
    assert!(text.contains("lab: PASS"), "{text}");
    // The full mesh really spread traffic: four tunnels carried it before each event.
    assert!(
        text.contains("tunnels A-az0 A-az1 B-az0 B-az1 ->"),
        "ECMP did not use all four tunnels:\n{text}"
    );
    // The drain: nothing lost either way, the drained appliance's tunnels carry nothing after.
    for dir in ["on-prem -> Azure", "Azure -> on-prem"] {
        let (_, lost) = row(&text, "appliance A drained", dir);
        assert_eq!(lost, 0, "drain lost {lost} probes {dir}\n{text}");
    }
    assert!(
        text.contains("RESULT appliance A drained")
            && text.contains("-> B-az0 B-az1; TCP 4/4 alive, 4 moving"),
        "{text}"
    );
    // An on-prem appliance lost: the on-prem side moves with BFD (under a second).
    let (gap, _) = row(&text, "appliance A killed", "on-prem -> Azure");
    assert!(gap < 1000.0, "router BFD took {gap} ms\n{text}");
    // Every event was seen: four of them, two directions each.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("lab: | ") && l.contains(" met "))
            .count(),
        8,
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
        .find_map(|l| l.split("hgwha-").nth(1))
        .and_then(|rest| rest.split('-').next())
        .map(str::to_string);
    if let Some(pid) = pid {
        assert!(
            !left.contains(&format!("hgwha-{pid}-")),
            "namespaces of run {pid} left behind: {left}"
        );
    }
}
