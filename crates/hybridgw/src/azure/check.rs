//! `hybridgw azure check`: both halves of a connection compared, every mismatch with what to
//! change on which side. Errors break or destabilise the tunnel (no proposal chosen, PFS on one
//! side only, selectors, BGP, active-active, prefixes that win over ExpressRoute); warnings work
//! but differ (lifetimes, DPD, who initiates).

use std::fmt::Write as _;
use std::net::IpAddr;

use super::model::{AZURE_IKE_SECONDS, AzureHalf, ConnectionMode, Instance, short};
use super::template::{Logical, policy_for};
use crate::config::{Behaviour, Mode, Prefix, SelectorPair, apipa_ok};
use crate::proposals::{self, Proposal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Breaks or destabilises the tunnel.
    Error,
    /// Works, but the halves differ.
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub topic: &'static str,
    pub text: String,
    pub fix: String,
}

/// `a` covers `b` (same family, `a` no longer than `b`, `b` inside `a`).
pub fn covers(a: &Prefix, b: &Prefix) -> bool {
    a.addr.is_ipv4() == b.addr.is_ipv4() && a.len <= b.len && a.contains(b.addr)
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn is_private(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v) => (v.segments()[0] & 0xfe00) == 0xfc00,
    }
}

struct Out(Vec<Finding>);

impl Out {
    fn err(&mut self, topic: &'static str, text: String, fix: String) {
        self.0.push(Finding {
            severity: Severity::Error,
            topic,
            text,
            fix,
        });
    }
    fn warn(&mut self, topic: &'static str, text: String, fix: String) {
        self.0.push(Finding {
            severity: Severity::Warning,
            topic,
            text,
            fix,
        });
    }
}

fn ss(v: &[Proposal]) -> String {
    v.iter()
        .map(|p| p.to_strongswan())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compares a configured connection with its Azure half. `expressroute` lists prefixes
/// advertised over ExpressRoute (the VPN must never be more specific than them); with
/// `[connection.failover]` the connection's local prefixes and the VNet's address space count as
/// such too.
pub fn compare(l: &Logical, h: &AzureHalf, expressroute: &[Prefix]) -> Vec<Finding> {
    let mut o = Out(Vec::new());
    let c = l.members[0];
    if h.ikev1 {
        o.err(
            "protocol",
            "the Azure connection uses IKEv1 (connectionProtocol); hybridgw speaks IKEv2 only"
                .into(),
            "on Azure: connectionProtocol = IKEv2".into(),
        );
    }
    if h.gateway.policy_based_vpn_type {
        o.err(
            "protocol",
            format!("gateway `{}` is of VPN type PolicyBased (IKEv1 only)", short(&h.gateway.name)),
            "on Azure: a RouteBased gateway; policy-based selectors come from the connection's usePolicyBasedTrafficSelectors".into(),
        );
    }
    addresses(&mut o, l, h);
    proposals_check(&mut o, l, h);
    lifetimes(&mut o, l, h);
    if c.dpd.timeout_seconds != h.dpd() {
        o.warn(
            "dpd",
            format!(
                "DPD timeout: hybridgw {} s, Azure {} s{}: one side declares the peer dead and starts again while the other still sends into the old SAs",
                c.dpd.timeout_seconds,
                h.dpd(),
                if h.dpd_timeout.is_none() { " (Azure's default)" } else { "" }
            ),
            format!(
                "on Azure: dpdTimeoutSeconds = {} (az network vpn-connection update --set dpdTimeoutSeconds={}), or on hybridgw: [connection.dpd] timeout_seconds = {}",
                c.dpd.timeout_seconds,
                c.dpd.timeout_seconds,
                h.dpd()
            ),
        );
    }
    initiation(&mut o, l, h);
    selectors(&mut o, l, h);
    bgp(&mut o, l, h);
    expressroute_check(&mut o, l, h, expressroute);
    o.0.sort_by_key(|f| f.severity);
    o.0
}

fn addresses(o: &mut Out, l: &Logical, h: &AzureHalf) {
    let c = l.members[0];
    match h.local.address {
        Some(a) if a != c.local_address => {
            let text = format!(
                "the local network gateway's gatewayIpAddress is {a}, hybridgw's local_address {}",
                c.local_address
            );
            if is_private(c.local_address) {
                o.warn(
                    "addresses",
                    format!("{text} (a private address: fine when a NAT in front of this device maps it to {a}; then hybridgw must initiate)"),
                    "nothing, if that NAT exists; otherwise on Azure: gatewayIpAddress = the device's public address".into(),
                );
            } else {
                o.err(
                    "addresses",
                    format!("{text}: Azure sends IKE to another address and refuses this device's"),
                    format!(
                        "on Azure: gatewayIpAddress = {} (az network local-gateway update --gateway-ip-address {}), or on hybridgw: local_address = \"{a}\"",
                        c.local_address, c.local_address
                    ),
                );
            }
        }
        None => o.warn(
            "addresses",
            "the local network gateway names an FQDN, not an address: local_address not compared"
                .into(),
            "nothing (make sure the FQDN resolves to this device's public address)".into(),
        ),
        _ => {}
    }
    let tunnels = h.tunnels();
    let ips: Vec<String> = tunnels
        .iter()
        .map(|i| {
            i.public_ip
                .map_or_else(|| "(unknown)".into(), |a| a.to_string())
        })
        .collect();
    if tunnels.len() == 2 && l.members.len() == 1 {
        o.err(
            "active-active",
            format!(
                "the Azure gateway is active-active (instances at {}), hybridgw keeps one tunnel: Azure's other instance has none, and each maintenance of this one cuts the site",
                ips.join(" and ")
            ),
            format!(
                "on hybridgw: remote_address = [\"{}\", \"{}\"]{}",
                ips[0],
                ips[1],
                if c.bgp.is_some() { " and azure_peer with both instances' BGP addresses" } else { "" }
            ),
        );
    }
    if l.members.len() == 2 && !h.gateway.active_active {
        o.err(
            "active-active",
            format!(
                "hybridgw has two remote addresses ({}, {}), the Azure gateway is not active-active: the second tunnel never comes up",
                l.members[0].remote_address, l.members[1].remote_address
            ),
            "on Azure: enable active-active on the gateway (a second public IP), or on hybridgw: one remote_address".into(),
        );
    }
    for m in &l.members {
        let known: Vec<IpAddr> = h
            .gateway
            .instances
            .iter()
            .filter_map(|i| i.public_ip)
            .collect();
        if known.is_empty() {
            o.warn(
                "addresses",
                "the Azure gateway's public IPs are not among the inputs: remote_address not compared".into(),
                "add the output of `az network public-ip show` for the gateway's publicIPAddress ids".into(),
            );
            break;
        }
        if !known.contains(&m.remote_address) {
            o.err(
                "addresses",
                format!(
                    "hybridgw's remote_address {} is not a public IP of the Azure gateway ({})",
                    m.remote_address,
                    list(&known)
                ),
                format!(
                    "on hybridgw: remote_address = {}",
                    ips_toml(&ips[..l.members.len().min(ips.len())])
                ),
            );
        }
    }
}

fn ips_toml(v: &[String]) -> String {
    if v.len() == 1 {
        format!("\"{}\"", v[0])
    } else {
        format!(
            "[{}]",
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn proposals_check(o: &mut Out, l: &Logical, h: &AzureHalf) {
    let c = l.members[0];
    let ours_ike = &c.ike_proposals;
    let ours_esp = &c.esp_proposals;
    let suggestion = match policy_for(c) {
        Ok(Some(p)) => format!(
            "on Azure: the custom policy {} (az network vpn-connection ipsec-policy add ...; `hybridgw azure template` prints it)",
            p.summary()
        ),
        Ok(None) => "on Azure: the default policy (az network vpn-connection ipsec-policy clear)".into(),
        Err(_) => "on hybridgw: one IKE and one ESP proposal Azure can name, then the same policy on Azure".into(),
    };
    match &h.policy {
        Some(p) => {
            if ike::proposal::select(core::slice::from_ref(&p.ike), ours_ike).is_none() {
                o.err(
                    "proposals",
                    format!(
                        "IKE: Azure's policy allows only {} ({}/{}/{}), hybridgw offers {}: NO_PROPOSAL_CHOSEN",
                        p.ike.to_strongswan(),
                        p.names.ike_encryption,
                        p.names.ike_integrity,
                        p.names.dh_group,
                        ss(ours_ike)
                    ),
                    format!("{suggestion}, or on hybridgw: ike_proposals = \"{}\"", p.ike.to_strongswan()),
                );
            }
            let algs_ok = ike::proposal::select(
                core::slice::from_ref(&p.esp.without_dh()),
                &ours_esp
                    .iter()
                    .map(Proposal::without_dh)
                    .collect::<Vec<_>>(),
            )
            .is_some();
            let full_ok = ike::proposal::select(core::slice::from_ref(&p.esp), ours_esp).is_some();
            if !algs_ok {
                o.err(
                    "proposals",
                    format!(
                        "ESP: Azure's policy allows only {} ({}/{}), hybridgw offers {}: no Child SA",
                        p.esp.without_dh().to_strongswan(),
                        p.names.ipsec_encryption,
                        p.names.ipsec_integrity,
                        ss(ours_esp)
                    ),
                    format!("{suggestion}, or on hybridgw: esp_proposals = \"{}\"", p.esp.to_strongswan()),
                );
            } else if !full_ok {
                o.err(
                    "pfs",
                    format!(
                        "PFS: Azure's policy has PfsGroup {}, hybridgw's ESP proposals {}: the first Child SA comes up (IKE_AUTH has no key exchange), every rekey fails and the tunnel drops",
                        p.names.pfs_group,
                        ss(ours_esp)
                    ),
                    format!(
                        "on hybridgw: esp_proposals = \"{}\", or on Azure: pfsGroup matching hybridgw's",
                        p.esp.to_strongswan()
                    ),
                );
            }
        }
        None => {
            if !ours_ike.iter().any(Proposal::azure_default_accepts) {
                o.err(
                    "proposals",
                    format!(
                        "IKE: the Azure connection has no custom policy (Azure's default: AES/3DES with SHA1/SHA256 and DH group 2 only), hybridgw offers {}: NO_PROPOSAL_CHOSEN",
                        ss(ours_ike)
                    ),
                    format!("{suggestion}, or on hybridgw: ike_proposals = \"azure-default\""),
                );
            }
            if !ours_esp.iter().any(Proposal::azure_default_accepts) {
                o.err(
                    "proposals",
                    format!(
                        "ESP: Azure's default policy accepts none of hybridgw's {}",
                        ss(ours_esp)
                    ),
                    format!("{suggestion}, or on hybridgw: esp_proposals = \"azure-default\""),
                );
            } else if !ours_esp.iter().any(proposals::accepts_azure_initiated) {
                o.err(
                    "pfs",
                    format!(
                        "PFS: hybridgw's ESP proposals {} all demand PFS; Azure's default policy initiates and rekeys Child SAs without PFS: those rekeys fail",
                        ss(ours_esp)
                    ),
                    format!(
                        "on hybridgw: esp_proposals without a DH group (e.g. \"{}\"), or {suggestion}",
                        ours_esp
                            .first()
                            .map(|p| p.without_dh().to_strongswan())
                            .unwrap_or_else(|| "aes256gcm16".into())
                    ),
                );
            }
        }
    }
}

fn lifetimes(o: &mut Out, l: &Logical, h: &AzureHalf) {
    let c = l.members[0];
    let (secs, kb) = h.child_lifetimes();
    let custom = h.policy.is_some();
    let azure_fix = |what: &str, v: u64| {
        if custom {
            format!("on Azure: {what} = {v} in the custom policy")
        } else {
            format!("on Azure: a custom policy with {what} = {v} (the default policy's are fixed)")
        }
    };
    if c.lifetimes.child_seconds != secs {
        o.warn(
            "lifetimes",
            format!(
                "Child SA lifetime: hybridgw {} s, Azure {secs} s: lifetimes are local, so it works, but the shorter side does every rekey",
                c.lifetimes.child_seconds
            ),
            format!(
                "on hybridgw: [connection.lifetimes] child_seconds = {secs}, or {}",
                azure_fix("saLifeTimeSeconds", c.lifetimes.child_seconds)
            ),
        );
    }
    if c.lifetimes.child_kilobytes != kb {
        o.warn(
            "lifetimes",
            format!(
                "Child SA data size: hybridgw {} KB, Azure {kb} KB",
                c.lifetimes.child_kilobytes
            ),
            format!(
                "on hybridgw: [connection.lifetimes] child_kilobytes = {kb}, or {}",
                azure_fix("saDataSizeKilobytes", c.lifetimes.child_kilobytes)
            ),
        );
    }
    if c.lifetimes.ike_seconds != AZURE_IKE_SECONDS {
        o.warn(
            "lifetimes",
            format!(
                "IKE SA lifetime: hybridgw {} s, Azure {AZURE_IKE_SECONDS} s (fixed on Azure)",
                c.lifetimes.ike_seconds
            ),
            format!("on hybridgw: [connection.lifetimes] ike_seconds = {AZURE_IKE_SECONDS}"),
        );
    }
}

fn initiation(o: &mut Out, l: &Logical, h: &AzureHalf) {
    let b = l.members[0].behaviour;
    let azure_up = h.mode.azure_initiates() && b.responds();
    let ours_up = b.initiates() && h.mode.azure_responds();
    let want = match h.mode {
        ConnectionMode::Default => "both",
        ConnectionMode::InitiatorOnly => "respond",
        ConnectionMode::ResponderOnly => "initiate",
    };
    let bname = match b {
        Behaviour::Both => "both",
        Behaviour::Initiate => "initiate",
        Behaviour::Respond => "respond",
    };
    if !azure_up && !ours_up {
        o.err(
            "initiation",
            format!(
                "Azure connectionMode {} and hybridgw behaviour \"{bname}\": neither side brings the tunnel up",
                h.mode.name()
            ),
            format!(
                "on hybridgw: behaviour = \"{want}\", or on Azure: connectionMode = Default"
            ),
        );
    } else if b.initiates() && !h.mode.azure_responds() {
        o.warn(
            "initiation",
            "Azure connectionMode InitiatorOnly refuses hybridgw's IKE_SA_INIT: hybridgw retries in vain and waits for Azure".into(),
            "on hybridgw: behaviour = \"respond\", or on Azure: connectionMode = Default".into(),
        );
    }
}

fn selectors(o: &mut Out, l: &Logical, h: &AzureHalf) {
    let c = l.members[0];
    match (&c.mode, h.policy_based) {
        (Mode::RouteBased { .. }, true) => o.err(
            "selectors",
            "Azure uses policy-based traffic selectors (usePolicyBasedTrafficSelectors), hybridgw proposes any-to-any (route-based): TS_UNACCEPTABLE".into(),
            "on hybridgw: mode = \"policy-based\" with every on-prem x VNet pair in selectors, or on Azure: usePolicyBasedTrafficSelectors = false".into(),
        ),
        (Mode::PolicyBased { .. }, false) => o.err(
            "selectors",
            "hybridgw is policy-based, the Azure connection route-based (any-to-any selectors): Azure's Child SAs do not match hybridgw's pairs".into(),
            "on Azure: usePolicyBasedTrafficSelectors = true (and trafficSelectorPolicies), or on hybridgw: mode = \"route-based\" with remote_prefixes".into(),
        ),
        (Mode::PolicyBased { selectors, .. }, true) => match h.expected_pairs() {
            None => o.warn(
                "selectors",
                "the VNet's address space is not among the inputs and the connection has no trafficSelectorPolicies: selector pairs not compared".into(),
                "add the output of `az network vnet show`".into(),
            ),
            Some(azure) => {
                let fmt = |p: &SelectorPair| format!("{} <-> {}", p.local, p.remote);
                for a in &azure {
                    if !selectors.iter().any(|s| s == a) {
                        o.err(
                            "selectors",
                            format!(
                                "Azure expects the pair {} (on-prem <-> VNet), hybridgw does not propose it: that traffic is dropped (\"only the first subnet works\")",
                                fmt(a)
                            ),
                            format!(
                                "on hybridgw: add {{ local = \"{}\", remote = \"{}\" }} to selectors, or on Azure: drop it from the traffic selectors / address spaces",
                                a.local, a.remote
                            ),
                        );
                    }
                }
                for s in selectors {
                    if azure.iter().any(|a| a == s) {
                        continue;
                    }
                    if azure.iter().any(|a| covers(&a.local, &s.local) && covers(&a.remote, &s.remote)) {
                        o.warn(
                            "selectors",
                            format!("hybridgw's pair {} is narrower than Azure's", fmt(s)),
                            "on hybridgw: the pair as Azure has it".into(),
                        );
                    } else {
                        o.err(
                            "selectors",
                            format!(
                                "hybridgw proposes the pair {}, which Azure does not have: Azure refuses that Child SA (TS_UNACCEPTABLE)",
                                fmt(s)
                            ),
                            format!(
                                "on Azure: add it (trafficSelectorPolicies: localAddressRanges [{}], remoteAddressRanges [{}]), or on hybridgw: remove it",
                                s.remote, s.local
                            ),
                        );
                    }
                }
            }
        },
        (Mode::RouteBased { remote_prefixes }, false) => {
            if c.bgp.as_ref().is_none_or(|b| b.azure_peer.is_none()) {
                for p in &c.local_prefixes {
                    if !h.local.prefixes.iter().any(|x| covers(x, p)) {
                        o.err(
                            "prefixes",
                            format!(
                                "on-prem prefix {p} is not in the local network gateway's address space ({}): Azure does not route it back through the tunnel",
                                list(&h.local.prefixes)
                            ),
                            format!("on Azure: add {p} to the local network gateway's address prefixes (az network local-gateway update --local-address-prefixes ...)"),
                        );
                    }
                }
                if let Some(vnet) = &h.vnet_prefixes {
                    for v in vnet {
                        if !remote_prefixes.iter().any(|r| covers(&r.prefix, v)) {
                            o.warn(
                                "prefixes",
                                format!("the VNet's {v} is not in hybridgw's remote_prefixes: on-prem cannot reach it through the tunnel"),
                                format!("on hybridgw: add \"{v}\" to remote_prefixes"),
                            );
                        }
                    }
                    for r in remote_prefixes {
                        if !vnet.iter().any(|v| covers(v, &r.prefix)) {
                            o.warn(
                                "prefixes",
                                format!("hybridgw routes {} into the tunnel, outside the VNet's address space ({}) (fine for peered VNets)", r.prefix, list(vnet)),
                                format!("on hybridgw: remove \"{}\" from remote_prefixes, unless a peered network holds it", r.prefix),
                            );
                        }
                    }
                }
            }
        }
    }
}

fn bgp(o: &mut Out, l: &Logical, h: &AzureHalf) {
    let c = l.members[0];
    // BGP over the tunnel (a [connection.bgp] without azure_peer only validates the ASN).
    let tunnel_bgp = c.bgp.as_ref().filter(|b| b.azure_peer.is_some());
    match (tunnel_bgp, h.enable_bgp) {
        (None, false) => return,
        (Some(_), false) => {
            o.err(
                "bgp",
                "hybridgw has [connection.bgp] with azure_peer, the Azure connection has enableBgp = false: no BGP session, no routes".into(),
                "on Azure: enableBgp = true on the connection (and BGP on the gateway and the local network gateway), or on hybridgw: remove [connection.bgp] and list remote_prefixes".into(),
            );
            return;
        }
        (None, true) => {
            o.err(
                "bgp",
                "the Azure connection has enableBgp = true, hybridgw has no [connection.bgp]: Azure waits for a session nobody opens".into(),
                "on hybridgw: [connection.bgp] (onprem_asn, azure_asn, azure_peer) and tun_address, or on Azure: enableBgp = false".into(),
            );
            return;
        }
        (Some(_), true) => {}
    }
    let Some(b) = tunnel_bgp else { return };
    if !h.gateway.enable_bgp {
        o.err(
            "bgp",
            format!("the gateway `{}` has BGP disabled", short(&h.gateway.name)),
            "on Azure: enable BGP on the virtual network gateway (az network vnet-gateway update --asn ...)".into(),
        );
    }
    if let Some(a) = h.gateway.asn
        && a != b.azure_asn
    {
        o.err(
            "bgp",
            format!("Azure's ASN is {a}, hybridgw's azure_asn {}: the session is refused (OPEN with a wrong AS)", b.azure_asn),
            format!("on hybridgw: [connection.bgp] azure_asn = {a}"),
        );
    }
    match h.local.bgp {
        None => o.err(
            "bgp",
            "the local network gateway has no BGP settings (asn, bgpPeeringAddress)".into(),
            format!(
                "on Azure: az network local-gateway update --asn {} --bgp-peering-address {}",
                b.onprem_asn,
                c.tun_address
                    .map_or_else(|| "ADDRESS".into(), |t| t.addr.to_string())
            ),
        ),
        Some((asn, addr)) => {
            if asn != b.onprem_asn {
                o.err(
                    "bgp",
                    format!("the local network gateway's ASN is {asn}, hybridgw's onprem_asn {}", b.onprem_asn),
                    format!("on Azure: az network local-gateway update --asn {}, or on hybridgw: onprem_asn = {asn}", b.onprem_asn),
                );
            }
            if let Err(e) = failover::asn::check_onprem_asn(asn) {
                o.err(
                    "bgp",
                    format!("the local network gateway's ASN: {e}"),
                    "on both sides: a private ASN such as 65010".into(),
                );
            }
            if !apipa_ok(addr) {
                o.err(
                    "bgp",
                    format!("the local network gateway's BGP address {addr} is link-local outside Azure's APIPA range 169.254.21.0-169.254.22.255"),
                    "on both sides: an address in 169.254.21.0-169.254.22.255".into(),
                );
            }
            match c.tun_address {
                Some(t) if t.addr == addr => {}
                t => o.err(
                    "bgp",
                    format!(
                        "the local network gateway's BGP address is {addr}, hybridgw's tun_address {}: Azure's session goes to an address nobody holds",
                        t.map_or_else(|| "(none)".into(), |t| t.to_string())
                    ),
                    format!("on hybridgw: tun_address = \"{addr}/32\", or on Azure: --bgp-peering-address of the tun_address"),
                ),
            }
        }
    }
    // Each tunnel's Azure peer is the BGP address of the instance it goes to.
    for (i, m) in l.members.iter().enumerate() {
        let inst: Option<&Instance> = h
            .gateway
            .instances
            .iter()
            .find(|x| x.public_ip == Some(m.remote_address))
            .or(h.tunnels().get(i));
        let ours = m.bgp.as_ref().and_then(|b| b.azure_peer);
        let Some(inst) = inst else { continue };
        match inst.bgp_peer {
            None => o.warn(
                "bgp",
                format!("the BGP address of the Azure instance behind {} is not in the gateway's bgpSettings", m.remote_address),
                "add the full `az network vnet-gateway show` output".into(),
            ),
            Some(a) => {
                if !apipa_ok(a) {
                    o.err(
                        "bgp",
                        format!("Azure's BGP address {a} is link-local outside the APIPA range 169.254.21.0-169.254.22.255"),
                        "on Azure: custom APIPA addresses in 169.254.21.0-169.254.22.255".into(),
                    );
                }
                if ours != Some(a) {
                    o.err(
                        "bgp",
                        format!(
                            "tunnel to {}: Azure's BGP address there is {a}, hybridgw's azure_peer {}",
                            m.remote_address,
                            ours.map_or_else(|| "(none)".into(), |p| p.to_string())
                        ),
                        format!("on hybridgw: azure_peer {a} for this tunnel, or on Azure: that instance's custom BGP address"),
                    );
                }
            }
        }
    }
}

fn expressroute_check(o: &mut Out, l: &Logical, h: &AzureHalf, explicit: &[Prefix]) {
    let c = l.members[0];
    let mut er: Vec<Prefix> = explicit.to_vec();
    if l.members.iter().any(|m| m.failover.is_some()) {
        er.extend(c.local_prefixes.iter().copied());
        if let Some(v) = &h.vnet_prefixes {
            er.extend(v.iter().copied());
        }
    }
    if er.is_empty() {
        return;
    }
    let beats = |p: &Prefix| -> Option<Prefix> {
        if er.contains(p) {
            return None;
        }
        er.iter().find(|e| covers(e, p) && e.len < p.len).copied()
    };
    for p in &h.local.prefixes {
        if h.local.bgp.is_some_and(|(_, a)| p.addr == a && p.len >= 32) {
            continue;
        }
        if let Some(e) = beats(p) {
            o.err(
                "expressroute",
                format!("Azure learns {p} over the VPN (local network gateway), more specific than ExpressRoute's {e}: longest match wins, so Azure sends {p} through the VPN even while ExpressRoute is up"),
                format!("on Azure: the local network gateway's address space {e} (the same prefixes as over ExpressRoute)"),
            );
        }
    }
    let remote: Vec<Prefix> = match &c.mode {
        Mode::RouteBased { remote_prefixes } => remote_prefixes.iter().map(|r| r.prefix).collect(),
        Mode::PolicyBased { selectors, .. } => selectors.iter().map(|s| s.remote).collect(),
    };
    for p in &remote {
        if let Some(e) = beats(p) {
            o.err(
                "expressroute",
                format!("hybridgw routes {p} into the tunnel, more specific than ExpressRoute's {e}: on-prem traffic to it takes the VPN even while ExpressRoute is up"),
                format!("on hybridgw: remote_prefixes \"{e}\" (the same prefix as over ExpressRoute, at the backup metric)"),
            );
        }
    }
}

/// The report of one pair; returns the number of errors.
pub fn render(out: &mut String, l: &Logical, h: &AzureHalf, findings: &[Finding]) -> usize {
    let _ = writeln!(
        out,
        "azure check: hybridgw connection `{}` <-> Azure connection `{}` ({})",
        l.name,
        short(&h.name),
        short(&h.source)
    );
    let mut errors = 0;
    for f in findings {
        let tag = match f.severity {
            Severity::Error => {
                errors += 1;
                "MISMATCH"
            }
            Severity::Warning => "warning",
        };
        let _ = writeln!(
            out,
            "  {tag} [{}] {}\n      fix: {}",
            f.topic, f.text, f.fix
        );
    }
    if findings.is_empty() {
        let _ = writeln!(out, "  both halves agree");
    }
    errors
}
