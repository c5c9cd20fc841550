//! One appliance serving several tunnels from one peer: the responder has three connections,
//! one per local address (192.0.2.2, .3, .4), all to the same initiator (192.0.2.1), and chooses
//! the connection of each IKE_SA_INIT by (local address, peer address) and then by the
//! identities in IKE_AUTH (RFC 7296 §2.15), as strongSwan does. Before, every IKE_SA_INIT landed
//! on the first connection and 2 of 3 tunnels never came up. The responder's UDP 4500 socket is
//! the wildcard one here (its connections' local addresses differ), so the IKE SA's own local
//! address is what answers there.

mod appliance_support;

use std::time::Duration;

use appliance_support::*;
use netns::topology::WAN_IF;

const LOCALS: [&str; 3] = ["192.0.2.2", "192.0.2.3", "192.0.2.4"];
const PREFIXES: [&str; 3] = ["198.19.1.0/26", "198.19.1.64/26", "198.19.1.128/26"];

#[test]
fn three_tunnels_from_one_peer_each_land_on_their_own_connection() {
    let lab = lab("hgsel");
    let s = scratch("respsel");
    let (pskf, _) = psk(&s.0);
    for a in &LOCALS[1..] {
        lab.azure_gw
            .exec(["ip", "addr", "add", &format!("{a}/24"), "dev", WAN_IF])
            .expect("second address");
    }
    let conn = |name: &str, local: &str, remote: &str, extra: &str, tun: &str, prefix: &str| {
        format!(
            "[[connection]]\nname = \"{name}\"\nlocal_address = \"{local}\"\nremote_address = \"{remote}\"\n\
             psk_file = \"{}\"\ntun_name = \"{tun}\"\nremote_prefixes = [\"{prefix}\"]\n\
             ike_proposals = \"aes256-sha256-modp2048\"\nesp_proposals = \"aes256gcm16\"\n{extra}\n",
            pskf.display()
        )
    };
    // The responder: same peer, same peer identity, three local addresses (and identities).
    // Each routes the on-prem LAN at its own metric (one TUN wins; any-to-any selectors accept
    // the replies on every tunnel).
    let mut az = String::new();
    for (k, l) in LOCALS.iter().enumerate() {
        az.push_str(&conn(
            &format!("onprem{k}"),
            l,
            "192.0.2.1",
            "behaviour = \"respond\"",
            &format!("hgw-op{k}"),
            &format!("{}:{}", lab.onprem_lan, 100 + k),
        ));
    }
    let mut op = String::new();
    for (k, l) in LOCALS.iter().enumerate() {
        op.push_str(&conn(
            &format!("azure{k}"),
            "192.0.2.1",
            l,
            "behaviour = \"initiate\"",
            &format!("hgw-az{k}"),
            PREFIXES[k],
        ));
    }
    let azd = Daemon::start(&lab.azure_gw, &s.0, "azure", &az);
    let opd = Daemon::start(&lab.onprem_gw, &s.0, "onprem", &op);
    opd.wait_established(Duration::from_secs(30));
    azd.wait_established(Duration::from_secs(10));
    let a = opd.status_json();
    let b = azd.status_json();
    let mut spis = std::collections::BTreeSet::new();
    for k in 0..3 {
        let oc = &a["connections"][k];
        let ac = &b["connections"][k];
        assert_eq!(oc["state"], "established", "{oc}");
        assert_eq!(ac["state"], "established", "{ac}");
        // Each pair of connections shares one IKE SA, and no IKE SA is shared by two.
        assert_eq!(oc["ike_sa"]["spi_i"], ac["ike_sa"]["spi_i"], "{oc} / {ac}");
        assert_eq!(
            ac["ike_sa"]["local"]
                .as_str()
                .map(|x| x.starts_with(LOCALS[k])),
            Some(true),
            "{ac}"
        );
        assert!(spis.insert(oc["ike_sa"]["spi_i"].to_string()), "{a}");
        // The initiator still talks to the address it was configured with.
        assert_eq!(
            oc["ike_sa"]["remote"]
                .as_str()
                .map(|x| x.starts_with(LOCALS[k])),
            Some(true),
            "{oc}"
        );
    }
    // Traffic through each tunnel: one host address per remote prefix.
    for (k, h) in ["198.19.1.10", "198.19.1.70", "198.19.1.130"]
        .iter()
        .enumerate()
    {
        if *h != lab.azure_host_ip.to_string() {
            lab.azure_host
                .exec(["ip", "addr", "add", &format!("{h}/24"), "dev", "eth0"])
                .expect("host address");
        }
        let p = ping_ok(&lab.onprem_host, h.parse().expect("address"), 3, 2);
        let st = opd.status_json();
        let out = st["connections"][k]["child_sas"][0]["packets_out"]
            .as_u64()
            .unwrap_or(0);
        assert!(out >= 2, "tunnel {k} carried {out} packets: {p:?}\n{st}");
    }
    // After traffic, every IKE SA still has its own addresses on both sides (ESP and IKE on
    // UDP 4500 leave from the tunnel's own local address).
    let a = opd.status_json();
    for k in 0..3 {
        let r = &a["connections"][k]["ike_sa"]["remote"];
        assert_eq!(
            r.as_str().map(|x| x.starts_with(LOCALS[k])),
            Some(true),
            "{a}"
        );
    }
}
