//! `hybridgw azure template`: what Azure needs to match a hybridgw connection: `az` commands, an
//! ARM template or a Bicep file for the local network gateway and the connection (IPsec policy,
//! DPD, connection mode, traffic selectors, BGP), what the virtual network gateway must show, and
//! (`--format json`) the resource bodies Azure returns once that is deployed.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::model::{
    AZURE_CHILD_KB, AZURE_CHILD_SECONDS, AZURE_SA_KB_MAX, AZURE_SA_KB_MIN, AZURE_SA_SECONDS_MAX,
    AZURE_SA_SECONDS_MIN, AzureHalf, ConnectionMode, Gateway, Instance, LocalGateway, Policy,
    push_pair,
};
use crate::config::{Behaviour, Config, Connection, Mode, Prefix};
use crate::proposals::{self, Protocol};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `az` commands.
    Az,
    /// An ARM deployment template.
    Arm,
    /// A Bicep file.
    Bicep,
    /// The resource bodies Azure returns once deployed (what `azure import` and `azure check` read).
    Json,
}

/// The API version the templates name.
pub const API_VERSION: &str = "2024-05-01";
const SUB: &str = "00000000-0000-0000-0000-000000000000";
const RG: &str = "hybridgw-rg";
const GW: &str = "vpn-gateway";

/// A configured connection with its active-active twin (`NAME`, `NAME-2`).
#[derive(Debug, Clone)]
pub struct Logical<'a> {
    pub name: String,
    pub members: Vec<&'a Connection>,
}

/// The configured connections, twins joined.
pub fn logical(cfg: &Config) -> Vec<Logical<'_>> {
    let mut out: Vec<Logical> = Vec::new();
    for c in &cfg.connections {
        match &c.group {
            Some(g) if g.member > 0 => {
                if let Some(l) = out.iter_mut().find(|l| l.name == g.name) {
                    l.members.push(c);
                }
            }
            Some(g) => out.push(Logical {
                name: g.name.clone(),
                members: vec![c],
            }),
            None => out.push(Logical {
                name: c.name.clone(),
                members: vec![c],
            }),
        }
    }
    out
}

/// The Azure policy a connection's proposals need: `Ok(None)` for Azure's default policy (the
/// `azure-default` preset), `Ok(Some)` for a custom policy (one IKE and one ESP proposal Azure
/// can name), an error otherwise.
pub fn policy_for(c: &Connection) -> Result<Option<Policy>, String> {
    let default_ike = proposals::azure_default(Protocol::Ike);
    let default_esp = proposals::azure_default(Protocol::Esp);
    let (secs, kb) = (c.lifetimes.child_seconds, c.lifetimes.child_kilobytes);
    if !c.azure_custom_policy && c.ike_proposals == default_ike && c.esp_proposals == default_esp {
        return Ok(None);
    }
    let one = c.ike_proposals.len() == 1 && c.esp_proposals.len() == 1;
    if one
        && let Ok(p) = ike::proposal::azure::AzurePolicy::from_proposals(
            &c.ike_proposals[0],
            &c.esp_proposals[0],
        )
        && let Some(n) = p.names()
    {
        if !(AZURE_SA_SECONDS_MIN..=AZURE_SA_SECONDS_MAX).contains(&secs) {
            return Err(format!(
                "connection `{}`: lifetimes.child_seconds {secs} is outside Azure's {AZURE_SA_SECONDS_MIN}-{AZURE_SA_SECONDS_MAX} s",
                c.name
            ));
        }
        let kb = kb.clamp(AZURE_SA_KB_MIN, AZURE_SA_KB_MAX);
        return Policy::from_names(
            [
                n.ike_encryption,
                n.ike_integrity,
                n.dh_group,
                n.ipsec_encryption,
                n.ipsec_integrity,
                n.pfs_group,
            ],
            secs,
            kb,
        )
        .map(Some)
        .map_err(|(_, m)| m);
    }
    let ike_ok = c.ike_proposals.iter().any(|p| p.azure_default_accepts());
    let esp_ok = c.esp_proposals.iter().any(|p| p.azure_default_accepts());
    if ike_ok && esp_ok {
        return Ok(None);
    }
    Err(format!(
        "connection `{}`: its proposals are neither Azure's default policy nor one custom policy (one IKE and one ESP proposal with Azure names): reduce them to one of each, or use [connection.azure_policy]",
        c.name
    ))
}

/// The Azure half that matches a configured connection.
pub fn expected(l: &Logical) -> Result<AzureHalf, String> {
    let c = l.members[0];
    let policy = policy_for(c)?;
    let mode = match c.behaviour {
        Behaviour::Both => ConnectionMode::Default,
        Behaviour::Initiate => ConnectionMode::ResponderOnly,
        Behaviour::Respond => ConnectionMode::InitiatorOnly,
    };
    let (policy_based, traffic_selectors) = match &c.mode {
        Mode::PolicyBased { selectors, .. } => (true, selectors.clone()),
        Mode::RouteBased { .. } => (false, Vec::new()),
    };
    let mut lng_prefixes: Vec<Prefix> = c.local_prefixes.clone();
    for s in &traffic_selectors {
        if !lng_prefixes.contains(&s.local) {
            lng_prefixes.push(s.local);
        }
    }
    let vnet: Vec<Prefix> = match &c.mode {
        Mode::RouteBased { remote_prefixes } => remote_prefixes.iter().map(|r| r.prefix).collect(),
        Mode::PolicyBased { selectors, .. } => {
            let mut v: Vec<Prefix> = Vec::new();
            for s in selectors {
                if !v.contains(&s.remote) {
                    v.push(s.remote);
                }
            }
            v
        }
    };
    // BGP over the tunnel (a [connection.bgp] without azure_peer only validates the ASN).
    let bgp = c.bgp.as_ref().filter(|b| b.azure_peer.is_some());
    let local_bgp = match bgp {
        None => None,
        Some(b) => match c.tun_address {
            Some(t) => Some((b.onprem_asn, t.addr)),
            None => {
                return Err(format!(
                    "connection `{}`: [connection.bgp] without tun_address: the local network gateway needs the on-prem BGP address (set tun_address)",
                    l.name
                ));
            }
        },
    };
    let instances: Vec<Instance> = l
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| Instance {
            ipconfig_id: Some(ipconfig_id(i)),
            public_ip_id: Some(pip_id(i)),
            public_ip: Some(m.remote_address),
            bgp_peer: m.bgp.as_ref().and_then(|b| b.azure_peer),
            custom_bgp: m
                .bgp
                .as_ref()
                .and_then(|b| b.azure_peer)
                .filter(|a| is_apipa(*a))
                .into_iter()
                .collect(),
        })
        .collect();
    let mut pairs = Vec::new();
    for s in &traffic_selectors {
        push_pair(&mut pairs, s.local, s.remote);
    }
    Ok(AzureHalf {
        name: l.name.clone(),
        ikev1: false,
        mode,
        dpd_timeout: Some(c.dpd.timeout_seconds),
        policy,
        policy_based,
        traffic_selectors: pairs,
        enable_bgp: bgp.is_some(),
        gateway: Gateway {
            name: GW.into(),
            id: gw_id(),
            active_active: l.members.len() == 2,
            enable_bgp: bgp.is_some(),
            asn: bgp.map(|b| b.azure_asn),
            policy_based_vpn_type: false,
            instances,
            vnet_id: Some(vnet_id()),
        },
        local: LocalGateway {
            name: lng_name(&l.name),
            id: lng_id(&l.name),
            address: Some(c.local_address),
            fqdn: None,
            prefixes: lng_prefixes,
            bgp: local_bgp,
        },
        vnet_prefixes: Some(vnet),
        shared_key: None,
        source: String::new(),
    })
}

fn is_apipa(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if v.octets()[0] == 169 && v.octets()[1] == 254)
}

fn lng_name(conn: &str) -> String {
    format!("lng-{conn}")
}
fn base() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network")
}
fn gw_id() -> String {
    format!("{}/virtualNetworkGateways/{GW}", base())
}
fn ipconfig_id(i: usize) -> String {
    format!("{}/ipConfigurations/{}", gw_id(), ipconfig_name(i))
}
fn ipconfig_name(i: usize) -> &'static str {
    if i == 0 { "default" } else { "activeActive" }
}
fn pip_id(i: usize) -> String {
    format!("{}/publicIPAddresses/{GW}-pip{}", base(), i + 1)
}
fn vnet_id() -> String {
    format!("{}/virtualNetworks/vnet", base())
}
fn lng_id(conn: &str) -> String {
    format!("{}/localNetworkGateways/{}", base(), lng_name(conn))
}
fn conn_id(conn: &str) -> String {
    format!("{}/connections/{conn}", base())
}

/// Where the PSK comes from, as a shell expression (never the value).
fn psk_shell(c: &Connection) -> String {
    let s = &c.psk_source;
    if let Some(f) = s.strip_prefix("file ") {
        format!("\"$(cat {})\"", shell_quote(f))
    } else if let Some(v) = s.strip_prefix("environment variable ") {
        format!("\"${v}\"")
    } else {
        "\"$(cat /path/to/the/psk-file)\"".into()
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn policy_json(p: &Policy) -> Value {
    let n = &p.names;
    json!({
        "saLifeTimeSeconds": p.sa_lifetime_seconds,
        "saDataSizeKilobytes": p.sa_data_size_kilobytes,
        "ipsecEncryption": n.ipsec_encryption,
        "ipsecIntegrity": n.ipsec_integrity,
        "ikeEncryption": n.ike_encryption,
        "ikeIntegrity": n.ike_integrity,
        "dhGroup": n.dh_group,
        "pfsGroup": n.pfs_group,
    })
}

fn selectors_json(h: &AzureHalf) -> Value {
    // One policy per pair; Azure's local side is the VNet.
    Value::Array(
        h.traffic_selectors
            .iter()
            .map(|p| {
                json!({
                    "localAddressRanges": [p.remote.to_string()],
                    "remoteAddressRanges": [p.local.to_string()],
                })
            })
            .collect(),
    )
}

/// The connection's properties as Azure shows them (references as given).
fn connection_props(h: &AzureHalf, gw_ref: Value, lng_ref: Value) -> Value {
    let mut p = json!({
        "virtualNetworkGateway1": gw_ref,
        "localNetworkGateway2": lng_ref,
        "connectionType": "IPsec",
        "connectionProtocol": "IKEv2",
        "connectionMode": h.mode.name(),
        "dpdTimeoutSeconds": h.dpd(),
        "enableBgp": h.enable_bgp,
        "usePolicyBasedTrafficSelectors": h.policy_based,
        "ipsecPolicies": h.policy.as_ref().map(|p| vec![policy_json(p)]).unwrap_or_default(),
        "trafficSelectorPolicies": selectors_json(h),
    });
    let custom: Vec<Value> = h
        .tunnels()
        .iter()
        .filter_map(|i| match (&i.ipconfig_id, i.custom_bgp.first()) {
            (Some(id), Some(a)) if h.enable_bgp => {
                Some(json!({"ipConfigurationId": id, "customBgpIpAddress": a.to_string()}))
            }
            _ => None,
        })
        .collect();
    if !custom.is_empty()
        && let Some(o) = p.as_object_mut()
    {
        o.insert("gatewayCustomBgpIpAddresses".into(), Value::Array(custom));
    }
    p
}

fn lng_props(h: &AzureHalf) -> Value {
    let mut p = json!({
        "gatewayIpAddress": h.local.address.map(|a| a.to_string()),
        "localNetworkAddressSpace": {
            "addressPrefixes": h.local.prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        },
    });
    if let Some((asn, addr)) = h.local.bgp
        && let Some(o) = p.as_object_mut()
    {
        o.insert(
            "bgpSettings".into(),
            json!({"asn": asn, "bgpPeeringAddress": addr.to_string()}),
        );
    }
    p
}

/// The resource bodies Azure returns once the template is deployed: the connection, the local
/// network gateway, and what the virtual network gateway, its public IPs and its VNet must
/// show. `import` reads them back into the same hybridgw connection.
pub fn resources(h: &AzureHalf) -> Value {
    let conn = json!({
        "name": h.name,
        "id": conn_id(&h.name),
        "type": "Microsoft.Network/connections",
        "properties": connection_props(
            h,
            json!({"id": gw_id()}),
            json!({"id": lng_id(&h.name)}),
        ),
    });
    let lng = json!({
        "name": h.local.name,
        "id": h.local.id,
        "type": "Microsoft.Network/localNetworkGateways",
        "properties": lng_props(h),
    });
    let tunnels = h.tunnels();
    let ipcs: Vec<Value> = tunnels
        .iter()
        .enumerate()
        .map(|(i, _)| {
            json!({
                "name": ipconfig_name(i),
                "id": ipconfig_id(i),
                "properties": {
                    "publicIPAddress": {"id": pip_id(i)},
                    "subnet": {"id": format!("{}/subnets/GatewaySubnet", vnet_id())},
                }
            })
        })
        .collect();
    let mut gw_props = json!({
        "gatewayType": "Vpn",
        "vpnType": "RouteBased",
        "activeActive": h.gateway.active_active,
        "enableBgp": h.enable_bgp,
        "ipConfigurations": ipcs,
    });
    if h.enable_bgp {
        let peering: Vec<Value> = tunnels
            .iter()
            .enumerate()
            .map(|(i, inst)| {
                let default: Vec<String> = inst
                    .bgp_peer
                    .filter(|a| !is_apipa(*a))
                    .map(|a| a.to_string())
                    .into_iter()
                    .collect();
                json!({
                    "ipconfigurationId": ipconfig_id(i),
                    "defaultBgpIpAddresses": default,
                    "customBgpIpAddresses": inst.custom_bgp.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "tunnelIpAddresses": inst.public_ip.map(|a| a.to_string()).into_iter().collect::<Vec<_>>(),
                })
            })
            .collect();
        if let Some(o) = gw_props.as_object_mut() {
            o.insert(
                "bgpSettings".into(),
                json!({"asn": h.gateway.asn, "bgpPeeringAddresses": peering}),
            );
        }
    }
    let gw = json!({
        "name": GW,
        "id": gw_id(),
        "type": "Microsoft.Network/virtualNetworkGateways",
        "properties": gw_props,
    });
    let mut all = vec![conn, lng, gw];
    for (i, inst) in tunnels.iter().enumerate() {
        all.push(json!({
            "name": format!("{GW}-pip{}", i + 1),
            "id": pip_id(i),
            "type": "Microsoft.Network/publicIPAddresses",
            "properties": {"ipAddress": inst.public_ip.map(|a| a.to_string())},
        }));
    }
    if let Some(v) = &h.vnet_prefixes
        && !v.is_empty()
    {
        all.push(json!({
            "name": "vnet",
            "id": vnet_id(),
            "type": "Microsoft.Network/virtualNetworks",
            "properties": {"addressSpace": {"addressPrefixes": v.iter().map(|p| p.to_string()).collect::<Vec<_>>()}},
        }));
    }
    Value::Array(all)
}

/// What the virtual network gateway must show (it is not created here), one line each.
fn gateway_requirements(h: &AzureHalf) -> Vec<String> {
    let mut v = Vec::new();
    let t = h.tunnels();
    let ips: Vec<String> = t
        .iter()
        .map(|i| i.public_ip.map_or_else(|| "?".into(), |a| a.to_string()))
        .collect();
    if t.len() == 2 {
        v.push(format!(
            "active-active (activeActive = true), public IPs {} (instance 0) and {} (instance 1)",
            ips[0], ips[1]
        ));
    } else {
        v.push(format!(
            "public IP {} (hybridgw's remote_address); active-active off, or hybridgw needs both addresses",
            ips.first().cloned().unwrap_or_default()
        ));
    }
    v.push("VPN type RouteBased (usePolicyBasedTrafficSelectors on the connection gives policy-based selectors)".into());
    if h.enable_bgp {
        v.push(format!(
            "BGP enabled with ASN {}",
            h.gateway
                .asn
                .map_or_else(|| "65515".into(), |a| a.to_string())
        ));
        for (i, inst) in t.iter().enumerate() {
            if let Some(a) = inst.bgp_peer {
                v.push(if is_apipa(a) {
                    format!("instance {i}: custom APIPA BGP address {a} (in 169.254.21.0-169.254.22.255)")
                } else {
                    format!("instance {i}: BGP address {a} (its GatewaySubnet address)")
                });
            }
        }
    }
    v
}

fn gw_set_commands(h: &AzureHalf) -> Vec<String> {
    let mut v = Vec::new();
    if h.enable_bgp {
        let mut cmd = format!(
            "az network vnet-gateway update -g \"$RG\" -n \"$GW\" --asn {}",
            h.gateway.asn.unwrap_or(65515)
        );
        for (i, inst) in h.tunnels().iter().enumerate() {
            if !inst.custom_bgp.is_empty() {
                let list: Vec<String> =
                    inst.custom_bgp.iter().map(|a| format!("\"{a}\"")).collect();
                let _ = write!(
                    cmd,
                    " \\\n    --set 'bgpSettings.bgpPeeringAddresses[{i}].customBgpIpAddresses=[{}]'",
                    list.join(",")
                );
            }
        }
        v.push(cmd);
    }
    v
}

/// `az` commands.
pub fn az(h: &AzureHalf, c: &Connection) -> String {
    let mut o = String::new();
    let name = &h.name;
    let lng = &h.local.name;
    let _ = writeln!(
        o,
        "# Azure side of hybridgw connection `{name}` (hybridgw azure template). Set RG, GW and LOCATION first."
    );
    let _ = writeln!(o, "# The virtual network gateway \"$GW\" must have:");
    for r in gateway_requirements(h) {
        let _ = writeln!(o, "#   - {r}");
    }
    for cmd in gw_set_commands(h) {
        let _ = writeln!(o, "{cmd}");
    }
    let mut cmd = format!(
        "az network local-gateway create -g \"$RG\" -n {lng} -l \"$LOCATION\" --gateway-ip-address {}",
        h.local.address.map(|a| a.to_string()).unwrap_or_default()
    );
    if !h.local.prefixes.is_empty() {
        let p: Vec<String> = h.local.prefixes.iter().map(|p| p.to_string()).collect();
        let _ = write!(cmd, " \\\n    --local-address-prefixes {}", p.join(" "));
    }
    if let Some((asn, addr)) = h.local.bgp {
        let _ = write!(cmd, " \\\n    --asn {asn} --bgp-peering-address {addr}");
    }
    let _ = writeln!(o, "{cmd}");
    let _ = writeln!(
        o,
        "az network vpn-connection create -g \"$RG\" -n {name} -l \"$LOCATION\" --vnet-gateway1 \"$GW\" --local-gateway2 {lng} \\\n    --shared-key {}{}",
        psk_shell(c),
        if h.enable_bgp { " --enable-bgp" } else { "" }
    );
    let mut set = format!(
        "az network vpn-connection update -g \"$RG\" -n {name} \\\n    --set connectionMode={} dpdTimeoutSeconds={} usePolicyBasedTrafficSelectors={}",
        h.mode.name(),
        h.dpd(),
        h.policy_based
    );
    if !h.traffic_selectors.is_empty() {
        let _ = write!(
            set,
            " \\\n    --set 'trafficSelectorPolicies={}'",
            selectors_json(h)
        );
    }
    let custom: Vec<String> = h
        .tunnels()
        .iter()
        .filter_map(|i| match (&i.ipconfig_id, i.custom_bgp.first()) {
            (Some(_), Some(a)) if h.enable_bgp => Some(a.to_string()),
            _ => None,
        })
        .collect();
    if !custom.is_empty() {
        let _ = write!(
            set,
            " \\\n    # and gatewayCustomBgpIpAddresses: {} (instance 0{})",
            custom.join(", "),
            if custom.len() == 2 {
                ", instance 1"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(o, "{set}");
    match &h.policy {
        Some(p) => {
            let n = &p.names;
            let _ = writeln!(
                o,
                "az network vpn-connection ipsec-policy add -g \"$RG\" --connection-name {name} \\\n    --ike-encryption {} --ike-integrity {} --dh-group {} \\\n    --ipsec-encryption {} --ipsec-integrity {} --pfs-group {} \\\n    --sa-lifetime {} --sa-max-size {}",
                n.ike_encryption,
                n.ike_integrity,
                n.dh_group,
                n.ipsec_encryption,
                n.ipsec_integrity,
                n.pfs_group,
                p.sa_lifetime_seconds,
                p.sa_data_size_kilobytes
            );
        }
        None => {
            let _ = writeln!(
                o,
                "# IPsec policy: Azure's default (no ipsecPolicies; `az network vpn-connection ipsec-policy clear` removes a custom one)"
            );
            if (c.lifetimes.child_seconds, c.lifetimes.child_kilobytes)
                != (AZURE_CHILD_SECONDS, AZURE_CHILD_KB)
            {
                let _ = writeln!(
                    o,
                    "# note: Azure's default policy fixes the Child SA at {AZURE_CHILD_SECONDS} s / {AZURE_CHILD_KB} KB; only a custom policy changes that"
                );
            }
        }
    }
    o
}

/// An ARM deployment template (parameters: the gateway's name, the location, the shared key).
pub fn arm(h: &AzureHalf) -> Value {
    let lng_ref = "[resourceId('Microsoft.Network/localNetworkGateways', variables('lngName'))]";
    let gw_ref =
        "[resourceId('Microsoft.Network/virtualNetworkGateways', parameters('vpnGatewayName'))]";
    let mut cprops = connection_props(h, json!({"id": gw_ref}), json!({"id": lng_ref}));
    if let Some(o) = cprops.as_object_mut() {
        o.insert("sharedKey".into(), json!("[parameters('sharedKey')]"));
        if let Some(Value::Array(list)) = o.get_mut("gatewayCustomBgpIpAddresses") {
            for (i, e) in list.iter_mut().enumerate() {
                if let Some(eo) = e.as_object_mut() {
                    eo.insert(
                        "ipConfigurationId".into(),
                        json!(format!(
                            "[concat({gw}, '/ipConfigurations/{}')]",
                            ipconfig_name(i),
                            gw = "resourceId('Microsoft.Network/virtualNetworkGateways', parameters('vpnGatewayName'))"
                        )),
                    );
                }
            }
        }
    }
    json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {
            "generator": "hybridgw azure template",
            "virtualNetworkGatewayMustHave": gateway_requirements(h),
        },
        "parameters": {
            "vpnGatewayName": {"type": "string"},
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
            "sharedKey": {"type": "securestring"},
        },
        "variables": {"lngName": h.local.name, "connectionName": h.name},
        "resources": [
            {
                "type": "Microsoft.Network/localNetworkGateways",
                "apiVersion": API_VERSION,
                "name": "[variables('lngName')]",
                "location": "[parameters('location')]",
                "properties": lng_props(h),
            },
            {
                "type": "Microsoft.Network/connections",
                "apiVersion": API_VERSION,
                "name": "[variables('connectionName')]",
                "location": "[parameters('location')]",
                "dependsOn": [lng_ref],
                "properties": cprops,
            }
        ]
    })
}

/// A JSON value written as a Bicep expression (objects and arrays over several lines).
fn bicep_value(v: &Value, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent + 1);
    let end = "  ".repeat(indent);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => {
            if let Some(raw) = s.strip_prefix("@bicep:") {
                out.push_str(raw);
            } else {
                out.push('\'');
                out.push_str(
                    &s.replace('\\', "\\\\")
                        .replace('\'', "\\'")
                        .replace("${", "\\${"),
                );
                out.push('\'');
            }
        }
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Array(a) => {
            out.push_str("[\n");
            for x in a {
                out.push_str(&pad);
                bicep_value(x, indent + 1, out);
                out.push('\n');
            }
            out.push_str(&end);
            out.push(']');
        }
        Value::Object(o) if o.is_empty() => out.push_str("{}"),
        Value::Object(o) => {
            out.push_str("{\n");
            for (k, x) in o {
                out.push_str(&pad);
                out.push_str(k);
                out.push_str(": ");
                bicep_value(x, indent + 1, out);
                out.push('\n');
            }
            out.push_str(&end);
            out.push('}');
        }
    }
}

/// A Bicep file (parameters: the gateway's name, the location, the shared key).
pub fn bicep(h: &AzureHalf) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "// Azure side of hybridgw connection `{}` (hybridgw azure template).",
        h.name
    );
    let _ = writeln!(o, "// The virtual network gateway must have:");
    for r in gateway_requirements(h) {
        let _ = writeln!(o, "//   - {r}");
    }
    let _ = writeln!(
        o,
        "param vpnGatewayName string\nparam location string = resourceGroup().location\n@secure()\nparam sharedKey string\n"
    );
    let _ = writeln!(
        o,
        "resource gw 'Microsoft.Network/virtualNetworkGateways@{API_VERSION}' existing = {{\n  name: vpnGatewayName\n}}\n"
    );
    let mut lp = String::new();
    bicep_value(&lng_props(h), 1, &mut lp);
    let _ = writeln!(
        o,
        "resource lng 'Microsoft.Network/localNetworkGateways@{API_VERSION}' = {{\n  name: '{}'\n  location: location\n  properties: {lp}\n}}\n",
        h.local.name
    );
    let mut cprops = connection_props(
        h,
        json!({"id": "@bicep:gw.id"}),
        json!({"id": "@bicep:lng.id"}),
    );
    if let Some(obj) = cprops.as_object_mut() {
        obj.insert("sharedKey".into(), json!("@bicep:sharedKey"));
        if let Some(Value::Array(list)) = obj.get_mut("gatewayCustomBgpIpAddresses") {
            for (i, e) in list.iter_mut().enumerate() {
                if let Some(eo) = e.as_object_mut() {
                    eo.insert(
                        "ipConfigurationId".into(),
                        json!(format!(
                            "@bicep:'${{gw.id}}/ipConfigurations/{}'",
                            ipconfig_name(i)
                        )),
                    );
                }
            }
        }
    }
    let mut cp = String::new();
    bicep_value(&cprops, 1, &mut cp);
    let _ = writeln!(
        o,
        "resource conn 'Microsoft.Network/connections@{API_VERSION}' = {{\n  name: '{}'\n  location: location\n  properties: {cp}\n}}",
        h.name
    );
    o
}
