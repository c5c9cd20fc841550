//! The shipped BIRD example (`appliance-config/bird/onprem-bird.conf`) is exactly what the
//! generator produces, and BIRD 2 itself parses it (`bird -p`). Regenerate the file with
//! `FAILOVER_BLESS=1 cargo test -p failover --test bird_config`.

use std::path::PathBuf;
use std::process::Command;

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../appliance-config/bird/onprem-bird.conf")
}

#[test]
fn shipped_example_is_the_generators_output() {
    let want = failover::bird::example()
        .render()
        .expect("the example is valid");
    let path = example_path();
    if std::env::var_os("FAILOVER_BLESS").is_some() {
        std::fs::write(&path, &want).expect("writing the example");
    }
    let have = std::fs::read_to_string(&path).expect("appliance-config/bird/onprem-bird.conf");
    assert_eq!(
        have, want,
        "onprem-bird.conf differs from failover::bird::example(); regenerate with FAILOVER_BLESS=1"
    );
}

fn bird_parses(path: &std::path::Path) {
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
fn bird_parses_the_shipped_example() {
    bird_parses(&example_path());
}

#[test]
fn bird_parses_variants() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = failover::bird::example();
    d.log = failover::bird::BirdLog::Stderr;
    d.timers.connect_retry = 2;
    d.timers.connect_delay = 1;
    d.timers.error_wait = (1, 5);
    d.expressroute.bfd_interval_ms = 100;
    d.local_asn = 4_200_000_001;
    d.onprem_prefixes = vec!["198.18.1.0/24".parse().unwrap()];
    let p = dir.path().join("variant.conf");
    std::fs::write(&p, d.render().unwrap()).unwrap();
    bird_parses(&p);
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
