//! `hybridgw azure import | check | template` through the binary, on Azure resource bodies
//! written here from Microsoft's REST API definitions (tests/azure/): imports pass
//! `check-config`, the shared key never reaches the configuration, template -> Azure's JSON ->
//! import gives the same connection back, and `check` finds each deliberately broken pair.

mod appliance_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use appliance_support::{hybridgw_bin, scratch};
use hybridgw::config::{self, Connection};
use serde_json::Value;

const PSK: &str = "an-example-pre-shared-key-of-good-length";
const ENVS: [&str; 5] = [
    "HYBRIDGW_PSK_WEU_ONPREM",
    "HYBRIDGW_PSK_GCM_SITE",
    "HYBRIDGW_PSK_PB_SITE",
    "HYBRIDGW_PSK_APPLIANCE_A",
    "HYBRIDGW_PSK_RT",
];

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/azure")
        .join(p)
}

fn hgw(args: &[&str]) -> Output {
    let mut c = Command::new(hybridgw_bin());
    c.args(args);
    for k in ENVS {
        c.env(k, PSK);
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

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn inputs() -> Vec<Vec<PathBuf>> {
    vec![
        vec![data("default-az.json")],
        ["connection", "gateway", "local-gateway", "vnet"]
            .iter()
            .map(|f| data(&format!("custom-gcm/{f}.json")))
            .collect(),
        vec![data("policy-based.json")],
        vec![data("active-active-bgp.json")],
    ]
}

fn parse(path: &Path, text: &str) -> Vec<Connection> {
    config::parse(path, text, &|_| Some(PSK.to_string()))
        .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
        .connections
}

#[test]
fn every_import_passes_check_config_and_never_holds_the_key() {
    let dir = scratch("azure-import");
    for (i, set) in inputs().iter().enumerate() {
        let out = dir.0.join(format!("c{i}.toml"));
        let mut args = vec!["azure", "import", "--out", s(&out)];
        args.extend(set.iter().map(|p| s(p)));
        let o = hgw(&args);
        assert!(o.status.success(), "import {set:?}: {}", text(&o));
        let toml = std::fs::read_to_string(&out).expect("output");
        assert!(!toml.contains("example-shared-key"), "{toml}");
        assert!(toml.contains("psk_env"), "{toml}");
        let c = hgw(&["check-config", s(&out)]);
        assert!(
            c.status.success(),
            "check-config {set:?}: {}\n{toml}",
            text(&c)
        );
        // And the Azure JSON agrees with what was imported from it.
        let mut args = vec!["azure", "check", s(&out)];
        args.extend(set.iter().map(|p| s(p)));
        let k = hgw(&args);
        assert!(k.status.success(), "check {set:?}: {}", text(&k));
        assert!(text(&k).contains("both halves agree"), "{}", text(&k));
    }
    let o = hgw(&["azure", "import", s(&data("default-az.json"))]);
    assert!(
        text(&o).contains("sharedKey: it was NOT written anywhere"),
        "{}",
        text(&o)
    );
    // Azure's InitiatorOnly is hybridgw's respond; the custom GCM policy with its lifetimes.
    let gcm = hgw(&[
        "azure",
        "import",
        s(&data("custom-gcm/connection.json")),
        s(&data("custom-gcm/gateway.json")),
        s(&data("custom-gcm/local-gateway.json")),
        s(&data("custom-gcm/vnet.json")),
    ]);
    let t = String::from_utf8_lossy(&gcm.stdout).to_string();
    let c = parse(Path::new("gcm.toml"), &t);
    assert_eq!(c[0].behaviour, config::Behaviour::Respond);
    assert_eq!(
        c[0].ike_proposals[0].to_strongswan(),
        "aes256gcm16-prfsha384-ecp384"
    );
    assert_eq!(c[0].esp_proposals[0].to_strongswan(), "aes256gcm16-ecp384");
    assert_eq!(c[0].lifetimes.child_seconds, 3600);
    assert_eq!(c[0].dpd.timeout_seconds, 30);
    assert_eq!(c[0].remote_address.to_string(), "198.51.100.20");
}

#[test]
fn psk_file_is_written_0600_and_only_referenced() {
    let dir = scratch("azure-psk");
    let psk = dir.0.join("weu.psk");
    let out = dir.0.join("weu.toml");
    let input = data("default-az.json");
    let args = [
        "azure",
        "import",
        "--psk-file",
        s(&psk),
        "--out",
        s(&out),
        s(&input),
    ];
    let o = hgw(&args);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::metadata(&psk).expect("psk file");
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&psk).expect("psk"),
        "example-shared-key-from-the-json-input"
    );
    let toml = std::fs::read_to_string(&out).expect("toml");
    assert!(!toml.contains("example-shared-key"), "{toml}");
    assert!(toml.contains("psk_file"), "{toml}");
    let mut c = Command::new(hybridgw_bin());
    c.args(["check-config", s(&out)]);
    let c = c.output().expect("check-config");
    assert!(c.status.success(), "{}", text(&c));
    // An existing key file is never replaced.
    let again = hgw(&args);
    assert!(!again.status.success());
    assert!(text(&again).contains("never replaced"), "{}", text(&again));
}

const DEFAULT_CFG: &str = r#"
[[connection]]
name = "rt"
local_address = "192.0.2.1"
remote_address = "198.51.100.10"
psk_env = "HYBRIDGW_PSK_RT"
remote_prefixes = ["198.19.0.0/20", "198.19.64.0/20"]
local_prefixes = ["198.18.0.0/22"]
"#;

const GCM_CFG: &str = r#"
[[connection]]
name = "rt"
local_address = "203.0.113.9"
remote_address = "198.51.100.20"
psk_env = "HYBRIDGW_PSK_RT"
behaviour = "respond"
remote_prefixes = ["198.19.16.0/20"]
local_prefixes = ["198.18.4.0/24", "198.18.5.0/24"]
[connection.azure_policy]
ike_encryption = "GCMAES256"
ike_integrity = "SHA384"
dh_group = "ECP384"
ipsec_encryption = "GCMAES256"
ipsec_integrity = "GCMAES256"
pfs_group = "ECP384"
[connection.lifetimes]
child_seconds = 3600
child_kilobytes = 1048576
[connection.dpd]
delay_seconds = 10
timeout_seconds = 30
"#;

const PB_CFG: &str = r#"
[[connection]]
name = "rt"
local_address = "192.0.2.1"
remote_address = "198.51.100.60"
psk_env = "HYBRIDGW_PSK_RT"
ike_proposals = "aes256-sha256-modp2048"
esp_proposals = "aes256-sha256"
behaviour = "initiate"
mode = "policy-based"
selectors = [
    { local = "198.18.0.0/24", remote = "198.18.64.0/20" },
    { local = "198.18.1.0/24", remote = "198.18.64.0/20" },
    { local = "198.18.1.0/24", remote = "198.18.96.0/20" },
]
"#;

/// The connection fields both halves describe.
fn key(c: &Connection) -> String {
    format!(
        "{} {} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        c.name,
        c.local_address,
        c.remote_address,
        c.ike_proposals,
        c.esp_proposals,
        c.mode,
        c.behaviour,
        c.local_prefixes,
        c.tun_address,
        (
            c.lifetimes.child_seconds,
            c.lifetimes.child_kilobytes,
            c.lifetimes.ike_seconds
        ),
        (c.dpd.timeout_seconds, c.dpd.delay_seconds),
        c.bgp
            .as_ref()
            .map(|b| (b.onprem_asn, b.azure_asn, b.azure_peer)),
        c.group.as_ref().map(|g| (g.member, g.multipath)),
        c.tun_name,
        c.routes(),
    )
}

#[test]
fn template_json_import_round_trip_gives_the_same_connection() {
    let dir = scratch("azure-rt");
    let aa = std::fs::read_to_string(data("active-active-bgp.toml")).expect("aa config");
    let aa = aa
        .replace("appliance-a", "rt")
        .replace("HYBRIDGW_PSK_APPLIANCE_A", "HYBRIDGW_PSK_RT");
    for (what, cfg) in [
        ("default policy", DEFAULT_CFG),
        ("custom GCM policy", GCM_CFG),
        ("policy-based with custom selectors", PB_CFG),
        ("active-active with BGP", aa.as_str()),
    ] {
        let orig = dir.0.join("orig.toml");
        std::fs::write(&orig, cfg).expect("write");
        let t = hgw(&["azure", "template", s(&orig), "--format", "json"]);
        assert!(t.status.success(), "{what}: {}", text(&t));
        let json = dir.0.join("azure.json");
        std::fs::write(&json, &t.stdout).expect("write");
        let back = dir.0.join("back.toml");
        let i = hgw(&["azure", "import", "--out", s(&back), s(&json)]);
        assert!(i.status.success(), "{what}: {}", text(&i));
        let cc = hgw(&["check-config", s(&back)]);
        assert!(cc.status.success(), "{what}: {}", text(&cc));
        let a: Vec<String> = parse(&orig, cfg).iter().map(key).collect();
        let btext = std::fs::read_to_string(&back).expect("read");
        let b: Vec<String> = parse(&back, &btext).iter().map(key).collect();
        assert_eq!(a, b, "{what}:\n{btext}");
        let k = hgw(&["azure", "check", s(&orig), s(&json)]);
        assert!(k.status.success(), "{what}: {}", text(&k));
        // The other formats describe the same things.
        let az = text(&hgw(&["azure", "template", s(&orig)]));
        assert!(az.contains("az network local-gateway create"), "{az}");
        assert!(az.contains("az network vpn-connection create"), "{az}");
        assert!(!az.contains(PSK), "{az}");
        let arm = hgw(&["azure", "template", s(&orig), "--format", "arm"]);
        let armv: Value = serde_json::from_slice(&arm.stdout).expect("ARM is JSON");
        assert_eq!(
            armv["resources"][1]["type"],
            "Microsoft.Network/connections"
        );
        assert_eq!(armv["parameters"]["sharedKey"]["type"], "securestring");
        let bicep = text(&hgw(&["azure", "template", s(&orig), "--format", "bicep"]));
        assert!(
            bicep.contains("resource conn 'Microsoft.Network/connections@"),
            "{bicep}"
        );
        match what {
            "default policy" => assert!(az.contains("Azure's default"), "{az}"),
            "custom GCM policy" => assert!(
                az.contains("--ike-encryption GCMAES256 --ike-integrity SHA384 --dh-group ECP384")
                    && az.contains("--pfs-group ECP384")
                    && az.contains("--sa-lifetime 3600"),
                "{az}"
            ),
            "policy-based with custom selectors" => {
                assert!(az.contains("usePolicyBasedTrafficSelectors=true"), "{az}");
                assert!(az.contains("trafficSelectorPolicies"), "{az}");
            }
            _ => {
                assert!(
                    az.contains("--asn 65010 --bgp-peering-address 169.254.21.1"),
                    "{az}"
                );
                assert!(
                    az.contains("customBgpIpAddresses=[\"169.254.22.2\"]"),
                    "{az}"
                );
            }
        }
    }
}

/// Sets a JSON value by pointer (`/0/properties/dpdTimeoutSeconds`); `None` removes it.
fn mutate(v: &mut Value, pointer: &str, new: Option<Value>) {
    let (parent, last) = pointer.rsplit_once('/').expect("pointer");
    let p = v
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match (p, new) {
        (Value::Object(o), Some(n)) => {
            o.insert(last.to_string(), n);
        }
        (Value::Object(o), None) => {
            o.remove(last);
        }
        (Value::Array(a), Some(n)) => {
            let i: usize = last.parse().expect("index");
            a[i] = n;
        }
        other => panic!("cannot set {pointer} in {:?}", other.0),
    }
}

#[test]
fn check_finds_each_broken_pair_and_passes_the_matching_one() {
    use serde_json::json;
    let dir = scratch("azure-check");
    let cfg = data("active-active-bgp.toml");
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(data("active-active-bgp.json")).expect("base"),
    )
    .expect("json");
    let ok = hgw(&[
        "azure",
        "check",
        s(&cfg),
        s(&data("active-active-bgp.json")),
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    // (what, pointer, new value, topic, breaks the tunnel)
    let cases: Vec<(&str, &str, Option<Value>, &str, bool)> = vec![
        (
            "PFS on Azure only",
            "/0/properties/ipsecPolicies/0/pfsGroup",
            Some(json!("ECP384")),
            "[pfs]",
            true,
        ),
        (
            "DH group",
            "/0/properties/ipsecPolicies/0/dhGroup",
            Some(json!("DHGroup14")),
            "[proposals]",
            true,
        ),
        (
            "IKE encryption",
            "/0/properties/ipsecPolicies/0/ikeEncryption",
            Some(json!("AES256")),
            "[proposals]",
            true,
        ),
        (
            "ESP encryption",
            "/0/properties/ipsecPolicies/0",
            Some(json!({
                "saLifeTimeSeconds": 27000, "saDataSizeKilobytes": 102400000,
                "ipsecEncryption": "AES256", "ipsecIntegrity": "SHA256",
                "ikeEncryption": "GCMAES256", "ikeIntegrity": "SHA384",
                "dhGroup": "ECP384", "pfsGroup": "None"
            })),
            "[proposals]",
            true,
        ),
        (
            "default policy on Azure",
            "/0/properties/ipsecPolicies",
            Some(json!([])),
            "[proposals]",
            true,
        ),
        (
            "SA lifetime",
            "/0/properties/ipsecPolicies/0/saLifeTimeSeconds",
            Some(json!(3600)),
            "[lifetimes]",
            false,
        ),
        (
            "SA data size",
            "/0/properties/ipsecPolicies/0/saDataSizeKilobytes",
            Some(json!(1024000)),
            "[lifetimes]",
            false,
        ),
        (
            "DPD timeout",
            "/0/properties/dpdTimeoutSeconds",
            Some(json!(45)),
            "[dpd]",
            false,
        ),
        (
            "Azure responder only, hybridgw both",
            "/0/properties/connectionMode",
            Some(json!("InitiatorOnly")),
            "[initiation]",
            false,
        ),
        (
            "policy-based selectors on Azure",
            "/0/properties/usePolicyBasedTrafficSelectors",
            Some(json!(true)),
            "[selectors]",
            true,
        ),
        (
            "BGP off on Azure",
            "/0/properties/enableBgp",
            Some(json!(false)),
            "[bgp]",
            true,
        ),
        (
            "Azure ASN",
            "/1/properties/bgpSettings/asn",
            Some(json!(65516)),
            "[bgp]",
            true,
        ),
        (
            "on-prem ASN",
            "/2/properties/bgpSettings/asn",
            Some(json!(65011)),
            "[bgp]",
            true,
        ),
        (
            "reserved on-prem ASN",
            "/2/properties/bgpSettings/asn",
            Some(json!(65517)),
            "[bgp]",
            true,
        ),
        (
            "on-prem BGP address",
            "/2/properties/bgpSettings/bgpPeeringAddress",
            Some(json!("169.254.21.5")),
            "[bgp]",
            true,
        ),
        (
            "on-prem BGP address outside APIPA",
            "/2/properties/bgpSettings/bgpPeeringAddress",
            Some(json!("169.254.30.1")),
            "[bgp]",
            true,
        ),
        (
            "Azure peer of instance 1",
            "/0/properties/gatewayCustomBgpIpAddresses/1/customBgpIpAddress",
            Some(json!("169.254.22.6")),
            "[bgp]",
            true,
        ),
        (
            "Azure peer outside APIPA",
            "/0/properties/gatewayCustomBgpIpAddresses/0/customBgpIpAddress",
            Some(json!("169.254.23.2")),
            "[bgp]",
            true,
        ),
        (
            "not active-active",
            "/1/properties/activeActive",
            Some(json!(false)),
            "[active-active]",
            true,
        ),
        (
            "another public IP",
            "/1/properties/bgpSettings/bgpPeeringAddresses/1/tunnelIpAddresses",
            Some(json!(["198.51.100.99"])),
            "[addresses]",
            true,
        ),
        (
            "another on-prem address",
            "/2/properties/gatewayIpAddress",
            Some(json!("203.0.113.77")),
            "[addresses]",
            true,
        ),
        (
            "IKEv1",
            "/0/properties/connectionProtocol",
            Some(json!("IKEv1")),
            "[protocol]",
            true,
        ),
    ];
    for (what, pointer, new, topic, breaks) in cases {
        let mut v = base.clone();
        mutate(&mut v, pointer, new);
        let f = dir.0.join("broken.json");
        std::fs::write(&f, serde_json::to_vec(&v).expect("json")).expect("write");
        let o = hgw(&["azure", "check", s(&cfg), s(&f)]);
        let t = text(&o);
        assert!(t.contains(topic), "{what}: expected {topic}:\n{t}");
        assert!(t.contains("fix: on "), "{what}: no fix named:\n{t}");
        assert_eq!(!o.status.success(), breaks, "{what}: exit status:\n{t}");
        if breaks {
            assert!(t.contains(&format!("MISMATCH {topic}")), "{what}:\n{t}");
        }
    }
    // hybridgw-side breakage: one tunnel towards an active-active gateway; PFS on hybridgw only;
    // a VNet route more specific than ExpressRoute's.
    let text_cfg = std::fs::read_to_string(&cfg).expect("cfg");
    for (what, from, to, topic, extra) in [
        (
            "one remote address",
            "remote_address = [\"198.51.100.40\", \"198.51.100.41\"]",
            "remote_address = \"198.51.100.40\"",
            "[active-active]",
            None,
        ),
        (
            "PFS on hybridgw only",
            "pfs_group = \"None\"",
            "pfs_group = \"ECP384\"",
            "[pfs]",
            None,
        ),
        (
            "more specific than ExpressRoute",
            "local_prefixes = [\"198.18.0.0/22\", \"198.18.8.0/24\"]",
            "local_prefixes = [\"198.18.0.0/22\", \"198.18.8.0/24\"]",
            "[expressroute]",
            Some("198.18.0.0/16"),
        ),
    ] {
        let f = dir.0.join("broken.toml");
        let t = if what == "one remote address" {
            text_cfg
                .replace(from, to)
                .replace("[\"169.254.21.2\", \"169.254.22.2\"]", "\"169.254.21.2\"")
        } else {
            text_cfg.replace(from, to)
        };
        std::fs::write(&f, t).expect("write");
        let input = data("active-active-bgp.json");
        let mut args = vec!["azure", "check", s(&f), s(&input)];
        if let Some(e) = extra {
            args.extend(["--expressroute-prefix", e]);
        }
        let o = hgw(&args);
        assert!(!o.status.success(), "{what}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("MISMATCH {topic}")),
            "{what}: {}",
            text(&o)
        );
    }
}

#[test]
fn hostile_or_incomplete_json_is_a_clear_error() {
    let dir = scratch("azure-errors");
    let base: Value = serde_json::from_str(
        &std::fs::read_to_string(data("active-active-bgp.json")).expect("base"),
    )
    .expect("json");
    for (pointer, path) in [
        (
            "/0/properties/virtualNetworkGateway1/id",
            "connections[0].properties.virtualNetworkGateway1.id",
        ),
        (
            "/0/properties/ipsecPolicies/0/saDataSizeKilobytes",
            "connections[0].properties.ipsecPolicies[0].saDataSizeKilobytes",
        ),
        (
            "/0/properties/connectionType",
            "connections[0].properties.connectionType",
        ),
        (
            "/2/properties/bgpSettings/asn",
            "localNetworkGateways[0].properties.bgpSettings.asn",
        ),
    ] {
        let mut v = base.clone();
        mutate(&mut v, pointer, None);
        let f = dir.0.join("bad.json");
        std::fs::write(&f, serde_json::to_vec(&v).expect("json")).expect("write");
        let o = hgw(&["azure", "import", s(&f)]);
        assert_eq!(o.status.code(), Some(1), "{pointer}: {}", text(&o));
        assert!(text(&o).contains(path), "{pointer}: {}", text(&o));
    }
    let mut v = base.clone();
    mutate(
        &mut v,
        "/0/properties/ipsecPolicies/0/dhGroup",
        Some(Value::from("ECP385")),
    );
    let f = dir.0.join("bad.json");
    std::fs::write(&f, serde_json::to_vec(&v).expect("json")).expect("write");
    let o = hgw(&["azure", "import", s(&f)]);
    assert!(
        text(&o).contains("ipsecPolicies[0].dhGroup") && text(&o).contains("ECP385"),
        "{}",
        text(&o)
    );
    mutate(
        &mut v,
        "/0/properties/ipsecPolicies/0/dhGroup",
        Some(Value::from("ECP384")),
    );
    mutate(
        &mut v,
        "/0/properties/connectionProtocol",
        Some(Value::from("IKEv1")),
    );
    std::fs::write(&f, serde_json::to_vec(&v).expect("json")).expect("write");
    let o = hgw(&["azure", "import", s(&f)]);
    assert!(
        !o.status.success() && text(&o).contains("IKEv2 only"),
        "{}",
        text(&o)
    );
    // Not JSON, too large, not a resource.
    std::fs::write(&f, b"{\"name\": ").expect("write");
    assert!(text(&hgw(&["azure", "import", s(&f)])).contains("not JSON"));
    std::fs::write(&f, vec![b' '; 5 << 20]).expect("write");
    let o = hgw(&["azure", "import", s(&f)]);
    assert!(
        !o.status.success() && text(&o).contains("MiB"),
        "{}",
        text(&o)
    );
    std::fs::write(&f, b"42").expect("write");
    assert!(!hgw(&["azure", "import", s(&f)]).status.success());
    // Without the VNet and the public IP: written, with what is still to fill in, exit 2.
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(data("default-az.json")).expect("d"))
            .expect("json");
    if let Value::Array(a) = &mut v {
        a.truncate(3);
    }
    std::fs::write(&f, serde_json::to_vec(&v).expect("json")).expect("write");
    let o = hgw(&["azure", "import", s(&f)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("az network vnet show") && t.contains("az network public-ip show --ids"),
        "{t}"
    );
}
