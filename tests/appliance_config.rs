//! End-to-end checks of the `hybridgw` command line on configuration files: every example in
//! `appliance-config/` passes `check-config`; each kind of bad file gives a clear error naming the
//! key and line and a non-zero exit, and `run` never starts half-configured.

mod appliance_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use appliance_support::{hybridgw_bin, scratch};

const ENV: [(&str, &str); 4] = [
    (
        "HYBRIDGW_PSK_AZURE_WEU",
        "an-example-pre-shared-key-of-good-length",
    ),
    ("HYBRIDGW_PSK", "an-example-pre-shared-key-of-good-length"),
    (
        "HYBRIDGW_LAB_PSK",
        "an-example-pre-shared-key-of-good-length",
    ),
    (
        "HYBRIDGW_PSK_AZURE_PB",
        "an-example-pre-shared-key-of-good-length",
    ),
];

fn hgw(args: &[&str]) -> Output {
    let mut c = Command::new(hybridgw_bin());
    c.args(args);
    for (k, v) in ENV {
        c.env(k, v);
    }
    c.output().expect("running hybridgw")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_example_passes_check_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance-config");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("appliance-config/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            let o = hgw(&["check-config", p.to_str().expect("utf-8")]);
            assert!(o.status.success(), "{}: {}", p.display(), text(&o));
            let t = text(&o);
            assert!(
                t.contains("strongSwan") && t.contains("Azure"),
                "{}: proposals not printed in both syntaxes: {t}",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n >= 5, "expected at least 5 examples, found {n}");
}

#[test]
fn check_config_flags_azure_incompatibility_and_legacy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance-config");
    let o = hgw(&[
        "check-config",
        dir.join("azure-custom-gcm.toml").to_str().expect("utf-8"),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("aes256gcm16-prfsha384-ecp384") && t.contains("GCMAES256/SHA384/ECP384"),
        "{t}"
    );
    assert!(t.contains("AZURE DEFAULT POLICY: NOT COMPATIBLE"), "{t}");
    let o = hgw(&[
        "check-config",
        dir.join("lab-azure.toml").to_str().expect("utf-8"),
    ]);
    let t = text(&o);
    assert!(
        t.contains("LEGACY: IKE proposal uses DH group 2")
            && t.contains("LEGACY: IKE proposal uses 3DES"),
        "{t}"
    );
}

const GOOD: &str = r#"[[connection]]
name = "azure"
local_address = "192.0.2.1"
remote_address = "198.51.100.1"
psk_env = "HYBRIDGW_PSK"
remote_prefixes = ["198.18.64.0/20:100"]
"#;

struct Case {
    what: &'static str,
    text: String,
    /// Substrings the error must contain (the key, the file:line, the reason).
    expect: Vec<String>,
}

fn cases(dir: &Path) -> Vec<Case> {
    let f = |n: &str| dir.join(format!("{n}.toml")).display().to_string();
    vec![
        Case {
            what: "missing-key",
            text: GOOD.replace("remote_address = \"198.51.100.1\"\n", ""),
            expect: vec![format!("{}:1:", f("missing-key")), "remote_address".into()],
        },
        Case {
            what: "bad-prefix",
            text: GOOD.replace("198.18.64.0/20:100", "198.18.64.1/20:100"),
            expect: vec![
                format!("{}:6:", f("bad-prefix")),
                "remote_prefixes[0]".into(),
                "host bits".into(),
            ],
        },
        Case {
            what: "not-a-prefix",
            text: GOOD.replace("198.18.64.0/20:100", "198.18.300.0/20"),
            expect: vec![
                format!("{}:6:", f("not-a-prefix")),
                "remote_prefixes[0]".into(),
                "not an IP address".into(),
            ],
        },
        Case {
            what: "unknown-algorithm",
            text: format!("{GOOD}ike_proposals = \"aes256-sha256-modp2047\"\n"),
            expect: vec![
                format!("{}:7:", f("unknown-algorithm")),
                "ike_proposals".into(),
                "modp2047".into(),
            ],
        },
        Case {
            what: "unknown-azure-name",
            text: format!(
                "{GOOD}[connection.azure_policy]\nike_encryption = \"GCMAES256\"\nike_integrity = \"SHA384\"\ndh_group = \"ECP385\"\nipsec_encryption = \"GCMAES256\"\nipsec_integrity = \"GCMAES256\"\npfs_group = \"None\"\n"
            ),
            expect: vec![
                format!("{}:10:", f("unknown-azure-name")),
                "azure_policy.dh_group".into(),
                "ECP385".into(),
            ],
        },
        Case {
            what: "unreadable-psk-file",
            text: GOOD.replace(
                "psk_env = \"HYBRIDGW_PSK\"",
                "psk_file = \"/nonexistent/hybridgw.psk\"",
            ),
            expect: vec![
                format!("{}:5:", f("unreadable-psk-file")),
                "psk_file".into(),
                "cannot read PSK file".into(),
            ],
        },
        Case {
            what: "psk-file-is-a-directory",
            text: GOOD.replace("psk_env = \"HYBRIDGW_PSK\"", "psk_file = \"/\""),
            expect: vec![
                format!("{}:5:", f("psk-file-is-a-directory")),
                "psk_file".into(),
            ],
        },
        Case {
            what: "unset-psk-env",
            text: GOOD.replace("HYBRIDGW_PSK", "HYBRIDGW_NOT_SET_ANYWHERE"),
            expect: vec![
                format!("{}:5:", f("unset-psk-env")),
                "psk_env".into(),
                "not set".into(),
            ],
        },
        Case {
            what: "no-psk",
            text: GOOD.replace("psk_env = \"HYBRIDGW_PSK\"\n", ""),
            expect: vec![
                "connection[azure].psk".into(),
                "missing pre-shared key".into(),
            ],
        },
        Case {
            what: "unknown-key",
            text: format!("{GOOD}mtuu = 1400\n"),
            expect: vec![format!("{}:7:", f("unknown-key")), "mtuu".into()],
        },
        Case {
            what: "bad-address",
            text: GOOD.replace("192.0.2.1", "192.0.2.256"),
            expect: vec![format!("{}:3:", f("bad-address")), "local_address".into()],
        },
        Case {
            what: "bad-behaviour",
            text: format!("{GOOD}behaviour = \"sometimes\"\n"),
            expect: vec![
                format!("{}:7:", f("bad-behaviour")),
                "behaviour".into(),
                "InitiatorOnly".into(),
            ],
        },
        Case {
            what: "mtu-out-of-range",
            text: format!("{GOOD}mtu = 100\n"),
            expect: vec![
                format!("{}:7:", f("mtu-out-of-range")),
                "mtu".into(),
                "out of range".into(),
            ],
        },
        Case {
            what: "toml-syntax",
            text: format!("{GOOD}remote_prefixes = [\n"),
            expect: vec![f("toml-syntax")],
        },
        Case {
            what: "aa-bgp-one-peer",
            text: format!(
                "{}[connection.bgp]\nonprem_asn = 65010\nazure_peer = \"169.254.21.2\"\n",
                GOOD.replace(
                    "remote_address = \"198.51.100.1\"",
                    "remote_address = [\"198.51.100.1\", \"198.51.100.2\"]"
                )
            ),
            expect: vec![
                format!("{}:9:", f("aa-bgp-one-peer")),
                "bgp.azure_peer".into(),
                "one BGP address per instance".into(),
            ],
        },
        Case {
            what: "apipa-outside-azure",
            text: format!(
                "{GOOD}[connection.bgp]\nonprem_asn = 65010\nazure_peer = \"169.254.30.2\"\n"
            ),
            expect: vec![
                format!("{}:9:", f("apipa-outside-azure")),
                "bgp.azure_peer".into(),
                "169.254.21.0-169.254.22.255".into(),
            ],
        },
        Case {
            what: "same-bgp-peer-on-two-tunnels",
            text: format!(
                "{GOOD}[connection.bgp]\nonprem_asn = 65010\nazure_peer = \"169.254.21.2\"\n[[connection]]\nname = \"second\"\nlocal_address = \"192.0.2.1\"\nremote_address = \"198.51.100.7\"\npsk_env = \"HYBRIDGW_PSK\"\ntun_name = \"second\"\n[connection.bgp]\nonprem_asn = 65010\nazure_peer = \"169.254.21.2\"\n"
            ),
            expect: vec![
                format!("{}:18:", f("same-bgp-peer-on-two-tunnels")),
                "connection[second].bgp.azure_peer".into(),
                "169.254.21.2 is on two tunnels".into(),
            ],
        },
        Case {
            what: "no-connection",
            text: "# nothing\n".into(),
            expect: vec!["no [[connection]]".into()],
        },
    ]
}

#[test]
fn bad_files_give_clear_errors_and_nonzero_exit() {
    let s = scratch("cfgtest");
    for c in cases(&s.0) {
        let path: PathBuf = s.0.join(format!("{}.toml", c.what));
        std::fs::write(&path, &c.text).expect("write case");
        let o = hgw(&["check-config", path.to_str().expect("utf-8")]);
        let t = text(&o);
        assert!(
            !o.status.success(),
            "{}: check-config accepted it: {t}",
            c.what
        );
        for e in &c.expect {
            assert!(
                t.contains(e.as_str()),
                "{}: error does not mention `{e}`:\n{t}",
                c.what
            );
        }
    }
}

#[test]
fn run_never_starts_half_configured() {
    let s = scratch("cfgrun");
    for c in cases(&s.0) {
        let path = s.0.join(format!("{}.toml", c.what));
        std::fs::write(&path, &c.text).expect("write case");
        let sock = s.0.join(format!("{}.sock", c.what));
        let o = hgw(&[
            "--socket",
            sock.to_str().expect("utf-8"),
            "run",
            "--config",
            path.to_str().expect("utf-8"),
        ]);
        let t = text(&o);
        assert!(!o.status.success(), "{}: run accepted it: {t}", c.what);
        assert!(t.contains("error"), "{}: {t}", c.what);
        assert!(
            !sock.exists(),
            "{}: run created its control socket before refusing",
            c.what
        );
    }
    // And nothing of it is left: no TUN named after the connection in this namespace.
    let links = Command::new("ip")
        .args(["-o", "link", "show", "hgw-azure"])
        .output()
        .expect("ip link");
    assert!(!links.status.success(), "a TUN device was left behind");
}

#[test]
fn psk_warnings_short_and_world_readable() {
    let s = scratch("cfgwarn");
    let pskf = s.0.join("short.psk");
    std::fs::write(&pskf, "tiny-psk-value\n").expect("psk");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pskf, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cfg = s.0.join("warn.toml");
    std::fs::write(
        &cfg,
        GOOD.replace(
            "psk_env = \"HYBRIDGW_PSK\"",
            &format!("psk_file = \"{}\"", pskf.display()),
        ),
    )
    .expect("cfg");
    let o = hgw(&["check-config", cfg.to_str().expect("utf-8")]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("readable by others") && t.contains("chmod 600"),
        "{t}"
    );
    assert!(t.contains("shorter than 20"), "{t}");
    assert!(
        !t.contains("tiny-psk-value"),
        "the PSK value must never be printed: {t}"
    );
}

#[test]
fn cli_contract() {
    // Client commands without a daemon fail with a clear message and a non-zero exit.
    let s = scratch("cli");
    let sock = s.0.join("none.sock");
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["up", "x"],
        vec!["down", "x"],
        vec!["rekey", "x"],
    ] {
        let mut a = vec!["--socket", sock.to_str().expect("utf-8")];
        a.extend(args.iter().copied());
        let o = hgw(&a);
        assert!(!o.status.success(), "{args:?} succeeded without a daemon");
        assert!(
            text(&o).contains("control socket"),
            "{args:?}: {}",
            text(&o)
        );
    }
    // `lab failover --bgp` exists and is implemented (its end-to-end run is in
    // tests/appliance_failover.rs).
    let o = hgw(&["lab", "failover", "--help"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("--bgp") && !text(&o).contains("not implemented"),
        "{}",
        text(&o)
    );
    let o = hgw(&["--log-format", "json", "check-config", "/nonexistent.toml"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/nonexistent.toml"), "{}", text(&o));
}

#[test]
fn run_failing_at_start_leaves_nothing_behind() {
    // A valid file whose TUN cannot be created (the name is taken by the loopback device): the
    // daemon stops with a clear error, a non-zero exit, and no control socket or route left.
    let ns = netns::Netns::new("hgwcfg").expect("namespace");
    ns.exec(["ip", "addr", "add", "192.0.2.1/24", "dev", "lo"])
        .expect("address");
    let s = scratch("cfgfail");
    let cfg = s.0.join("lo.toml");
    std::fs::write(
        &cfg,
        GOOD.replace("remote_prefixes", "tun_name = \"lo\"\nremote_prefixes"),
    )
    .expect("cfg");
    let sock = s.0.join("lo.sock");
    let out = ns
        .command(hybridgw_bin())
        .env("HYBRIDGW_PSK", "an-example-pre-shared-key-of-good-length")
        .args([
            "--socket",
            sock.to_str().expect("utf-8"),
            "run",
            "--config",
            cfg.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("TUN device lo"), "{t}");
    assert!(!sock.exists(), "control socket left behind");
    let routes = ns
        .exec(["ip", "route", "show", "198.18.64.0/20"])
        .expect("ip route");
    assert!(routes.trim().is_empty(), "{routes}");
}
