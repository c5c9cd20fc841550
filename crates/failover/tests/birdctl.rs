//! `failover::birdctl` against a real BIRD 2: two BIRDs in network namespaces the test creates,
//! one BGP session between them over 169.254.21.0/30 (as a tunnel's would be), and the client
//! disabling, enabling and reading back the session through the control socket, without `birdc`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use failover::birdctl::{BirdControl, BirdCtlError, ProtoStatus, Toggled};
use netns::{Netns, veth_pair};

const T: Duration = Duration::from_secs(2);

fn start_bird(ns: &Netns, dir: &Path, name: &str, conf: &str) -> (netns::Bird, PathBuf) {
    let b = netns::Bird::start(ns, dir, name, conf).unwrap();
    let sock = b.socket().to_path_buf();
    (b, sock)
}

fn conf(
    router_id: &str,
    local: &str,
    asn: u32,
    neighbor: &str,
    peer_asn: u32,
    extra: &str,
) -> String {
    format!(
        "log stderr all;\nrouter id {router_id};\nprotocol device {{ scan time 10; }}\n\
         protocol bgp azure_test {{\n  local {local} as {asn};\n  neighbor {neighbor} as {peer_asn};\n\
         \x20 direct;\n{extra}  connect delay time 1;\n  connect retry time 1;\n  error wait time 1, 2;\n\
         \x20 ipv4 {{ import all; export none; }};\n}}\n"
    )
}

/// Polls the protocol's state (every 50 ms, at most `within` and 1,000 times) until `pred`.
fn wait_state(
    c: &mut BirdControl,
    within: Duration,
    what: &str,
    pred: impl Fn(&failover::birdctl::ProtoState) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = None;
    for _ in 0..1000 {
        let s = c.protocol_state("azure_test").unwrap();
        if pred(&s) {
            return start.elapsed();
        }
        last = Some(s);
        if start.elapsed() >= within {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {within:?}; last {last:?}");
}

#[test]
fn disables_enables_and_reads_a_real_bgp_session() {
    let a = Netns::new("fo-ctl-a").unwrap();
    let b = Netns::new("fo-ctl-b").unwrap();
    veth_pair(&a, "tun0", &b, "tun0").unwrap();
    a.add_addr("tun0", "169.254.21.1/30").unwrap();
    b.add_addr("tun0", "169.254.21.2/30").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_pa, sock) = start_bird(
        &a,
        dir.path(),
        "onprem",
        &conf(
            "198.18.0.1",
            "169.254.21.1",
            65010,
            "169.254.21.2",
            65515,
            "",
        ),
    );
    let (_pb, peer_sock) = start_bird(
        &b,
        dir.path(),
        "azure",
        &conf(
            "198.19.0.1",
            "169.254.21.2",
            65515,
            "169.254.21.1",
            65010,
            "  passive on;\n",
        ),
    );

    let mut c = BirdControl::connect(&sock, T).unwrap();
    assert!(
        c.greeting().starts_with("BIRD 2.") && c.greeting().ends_with("ready."),
        "{}",
        c.greeting()
    );
    let t = wait_state(&mut c, Duration::from_secs(20), "established", |s| {
        s.is_established()
    });
    println!("session established after {t:?}");
    let s = c.protocol_state("azure_test").unwrap();
    assert_eq!(
        (s.proto.as_str(), s.state.clone()),
        ("BGP", ProtoStatus::Up)
    );
    assert!(!s.since.is_empty());

    // Disable: the session goes down at once; a second disable changes nothing.
    assert_eq!(c.disable("azure_test").unwrap(), Toggled::Changed);
    wait_state(&mut c, Duration::from_secs(5), "down", |s| {
        s.state == ProtoStatus::Down
    });
    assert_eq!(c.disable("azure_test").unwrap(), Toggled::Already);
    // The peer sees it go.
    let mut peer = BirdControl::connect(&peer_sock, T).unwrap();
    let p = peer.protocol_state("azure_test").unwrap();
    assert!(!p.is_established(), "{p:?}");

    // Enable: back up (BIRD starts it again; the passive peer accepts).
    assert_eq!(c.enable("azure_test").unwrap(), Toggled::Changed);
    assert_eq!(c.enable("azure_test").unwrap(), Toggled::Already);
    let t = wait_state(&mut c, Duration::from_secs(20), "established again", |s| {
        s.is_established()
    });
    println!("re-established {t:?} after enable");

    // Errors are values.
    assert!(matches!(
        c.protocol_state("nope"),
        Err(BirdCtlError::NoSuchProtocol(_))
    ));
    assert!(matches!(
        c.disable("nope"),
        Err(BirdCtlError::NoSuchProtocol(_))
    ));
    assert!(matches!(
        c.disable("all\"; down"),
        Err(BirdCtlError::InvalidName { .. })
    ));
    assert!(matches!(
        c.command("no such command"),
        Err(BirdCtlError::Bird { code: 9001, .. })
    ));
    // The connection is still in step after those.
    let status = c.command("show status").unwrap();
    assert!(
        status.text().contains("Daemon is up and running"),
        "{status:?}"
    );
    let protos = c.command("show protocols").unwrap();
    assert!(
        protos.texts(1002).any(|r| r.starts_with("azure_test ")),
        "{protos:?}"
    );

    assert!(matches!(
        BirdControl::connect(dir.path().join("missing.ctl"), T),
        Err(BirdCtlError::Connect { .. })
    ));
}
