//! The shipped BIRD examples (`appliance-config/bird/*.conf`) are exactly what the generator
//! produces, and BIRD 2 itself parses them (`bird -p`). Regenerate the files with
//! `FAILOVER_BLESS=1 cargo test -p failover --test bird_config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use failover::bird;

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../appliance-config/bird")
        .join(name)
}

/// Every shipped file and the generator call behind it.
fn examples() -> Vec<(&'static str, String)> {
    let r = |res: Result<String, bird::BirdError>, what: &str| {
        res.unwrap_or_else(|e| panic!("{what} is invalid: {e}"))
    };
    vec![
        (
            "onprem-bird.conf",
            r(bird::example().render(), "bird::example()"),
        ),
        (
            "ha-appliance-a.conf",
            r(bird::ha_appliance_a().render(), "bird::ha_appliance_a()"),
        ),
        (
            "ha-appliance-b.conf",
            r(bird::ha_appliance_b().render(), "bird::ha_appliance_b()"),
        ),
        (
            "ha-router.conf",
            r(bird::ha_router().render(), "bird::ha_router()"),
        ),
    ]
}

#[test]
fn shipped_examples_are_the_generators_output() {
    let bless = std::env::var_os("FAILOVER_BLESS").is_some();
    for (name, want) in examples() {
        let path = shipped(name);
        if bless {
            std::fs::write(&path, &want).expect("writing the example");
        }
        let have = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("appliance-config/bird/{name}: {e}"));
        assert_eq!(
            have, want,
            "{name} differs from its generator (failover::bird); regenerate with FAILOVER_BLESS=1"
        );
    }
}

#[test]
fn the_dual_redundancy_examples_fit_together() {
    bird::check_site(
        &bird::ha_router(),
        &[&bird::ha_appliance_a(), &bird::ha_appliance_b()],
    )
    .unwrap();
}

fn bird_parses(path: &Path) {
    let out = Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(path)
        .output()
        .expect("bird (bird2) must be installed");
    assert!(
        out.status.success(),
        "bird -p -c {} failed: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bird_parses_the_shipped_examples() {
    // While blessing, another test is rewriting the files: parse what it writes instead.
    let dir = tempfile::tempdir().unwrap();
    let bless = std::env::var_os("FAILOVER_BLESS").is_some();
    for (name, text) in examples() {
        if bless {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            bird_parses(&p);
        } else {
            bird_parses(&shipped(name));
        }
    }
}

#[test]
fn bird_parses_variants() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = bird::example();
    d.log = bird::BirdLog::Stderr;
    d.timers.connect_retry = 2;
    d.timers.connect_delay = 1;
    d.timers.error_wait = (1, 5);
    d.expressroute.bfd_interval_ms = 100;
    d.local_asn = 4_200_000_001;
    d.onprem_prefixes = vec!["198.18.1.0/24".parse().unwrap()];
    let p = dir.path().join("variant.conf");
    std::fs::write(&p, d.render().unwrap()).unwrap();
    bird_parses(&p);

    // The appliance shapes: several tunnels with ExpressRoute and no LAN peer; LAN peers and
    // ExpressRoute; two routers on two LAN interfaces; the router without ExpressRoute.
    let mut a = bird::ha_appliance_a();
    let lan = a.lan.clone();
    a.lan.clear();
    a.expressroute = Some(
        bird::ApplianceBird::from(&bird::example())
            .expressroute
            .unwrap(),
    );
    let mut variants = vec![a.render().unwrap()];
    a.lan = lan;
    variants.push(a.render().unwrap());
    let mut second = a.lan[0].clone();
    second.protocol = "onprem_router_2".into();
    second.address = "192.0.2.33".parse().unwrap();
    second.local_address = "192.0.2.34".parse().unwrap();
    second.interface = "lan1".into();
    second.bfd_interval_ms = 100;
    a.lan.push(second);
    a.expressroute = None;
    variants.push(a.render().unwrap());
    let mut r = bird::ha_router();
    r.expressroute = None;
    variants.push(r.render().unwrap());
    for (i, conf) in variants.iter().enumerate() {
        let p = dir.path().join(format!("appliance-{i}.conf"));
        std::fs::write(&p, conf).unwrap();
        bird_parses(&p);
    }

    // And a broken file is reported (the check above is not vacuous).
    let bad = dir.path().join("bad.conf");
    std::fs::write(
        &bad,
        d.render()
            .unwrap()
            .replace("bgp_local_pref = 150", "bgp_local_pref = "),
    )
    .unwrap();
    let out = Command::new("bird")
        .arg("-p")
        .arg("-c")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Every protocol name [`bird::check_protocol_name`] accepts, BIRD accepts too: the keyword list
/// is not missing one of the words the generator could be asked to use.
#[test]
fn bird_takes_the_names_the_generator_takes() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = bird::ha_appliance_a();
    for (i, name) in ["peer", "role", "customer", "x1", "_", "lan", "azure_bgp"]
        .into_iter()
        .enumerate()
    {
        d.lan[0].protocol = name.into();
        let conf = d.render().unwrap();
        let p = dir.path().join(format!("name-{i}.conf"));
        std::fs::write(&p, conf).unwrap();
        bird_parses(&p);
    }
    // And the generator refuses what BIRD refuses.
    for name in ["router", "neighbor", "interface", "bfd", "master4"] {
        d.lan[0].protocol = name.into();
        assert!(d.validate().is_err(), "{name}");
    }
}
