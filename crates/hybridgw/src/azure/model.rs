//! The Azure half of a site-to-site connection, read from Azure's own resource bodies
//! (`Microsoft.Network/connections`, `virtualNetworkGateways`, `localNetworkGateways`,
//! `virtualNetworks`, `publicIPAddresses`: the ARM shape with `properties`, or `az`'s flattened
//! output), or built from a hybridgw connection by `template`.

use std::net::IpAddr;

use ike::proposal::azure::{AzureNames, AzurePolicy};
use serde_json::Value;
use zeroize::Zeroizing;

use super::json::{JsonError, Node};
use crate::config::{Prefix, SelectorPair};
use crate::proposals::{self, Proposal};

/// Azure's default DPD timeout (seconds).
pub const AZURE_DPD_DEFAULT: u64 = 45;
/// Azure's default and fixed values of the default policy.
pub const AZURE_CHILD_SECONDS: u64 = 27_000;
pub const AZURE_CHILD_KB: u64 = 102_400_000;
pub const AZURE_IKE_SECONDS: u64 = 28_800;
/// Azure's limits of a custom policy (`saLifeTimeSeconds`, `saDataSizeKilobytes`: int32).
pub const AZURE_SA_SECONDS_MIN: u64 = 300;
pub const AZURE_SA_SECONDS_MAX: u64 = 172_799;
pub const AZURE_SA_KB_MIN: u64 = 1024;
pub const AZURE_SA_KB_MAX: u64 = i32::MAX as u64;

/// `connectionMode`: what Azure's side does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionMode {
    Default,
    InitiatorOnly,
    ResponderOnly,
}

impl ConnectionMode {
    pub fn name(self) -> &'static str {
        match self {
            ConnectionMode::Default => "Default",
            ConnectionMode::InitiatorOnly => "InitiatorOnly",
            ConnectionMode::ResponderOnly => "ResponderOnly",
        }
    }
    pub fn azure_initiates(self) -> bool {
        self != ConnectionMode::ResponderOnly
    }
    pub fn azure_responds(self) -> bool {
        self != ConnectionMode::InitiatorOnly
    }
}

/// A custom IPsec/IKE policy (`ipsecPolicies[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Canonical Azure names (DHGroup14, PFS2048, ...).
    pub names: AzureNames,
    pub sa_lifetime_seconds: u64,
    pub sa_data_size_kilobytes: u64,
    pub ike: Proposal,
    pub esp: Proposal,
}

impl Policy {
    /// From the six Azure names; the error names the offending field (Azure's JSON name).
    pub fn from_names(
        n: [&str; 6],
        sa_lifetime_seconds: u64,
        sa_data_size_kilobytes: u64,
    ) -> Result<Self, (&'static str, String)> {
        let (ike, esp) = proposals::from_azure_policy(n[0], n[1], n[2], n[3], n[4], n[5])
            .map_err(|(key, msg)| (json_key(key), msg))?;
        let names = AzurePolicy::parse(n[0], n[1], n[2], n[3], n[4], n[5])
            .ok()
            .and_then(|p| p.names())
            .ok_or(("ipsecIntegrity", "no canonical Azure names".to_string()))?;
        Ok(Policy {
            names,
            sa_lifetime_seconds,
            sa_data_size_kilobytes,
            ike,
            esp,
        })
    }

    /// `GCMAES256/SHA384/ECP384 + GCMAES256/GCMAES256/ECP384`.
    pub fn summary(&self) -> String {
        let n = &self.names;
        format!(
            "IKE {}/{}/{}, IPsec {}/{}, PFS {}, SA {} s / {} KB",
            n.ike_encryption,
            n.ike_integrity,
            n.dh_group,
            n.ipsec_encryption,
            n.ipsec_integrity,
            n.pfs_group,
            self.sa_lifetime_seconds,
            self.sa_data_size_kilobytes
        )
    }
}

/// The configuration key of an Azure policy field to its JSON name.
fn json_key(config_key: &str) -> &'static str {
    match config_key {
        "ike_encryption" => "ikeEncryption",
        "ike_integrity" => "ikeIntegrity",
        "dh_group" => "dhGroup",
        "ipsec_encryption" => "ipsecEncryption",
        "pfs_group" => "pfsGroup",
        _ => "ipsecIntegrity",
    }
}

/// One instance of the virtual network gateway (one `ipConfigurations[]` entry).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    pub ipconfig_id: Option<String>,
    pub public_ip_id: Option<String>,
    pub public_ip: Option<IpAddr>,
    /// The BGP address Azure uses towards this connection on this instance.
    pub bgp_peer: Option<IpAddr>,
    /// The instance's custom APIPA addresses (all of them).
    pub custom_bgp: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Gateway {
    pub name: String,
    pub id: String,
    pub active_active: bool,
    pub enable_bgp: bool,
    pub asn: Option<u32>,
    pub policy_based_vpn_type: bool,
    pub instances: Vec<Instance>,
    /// The VNet of its GatewaySubnet.
    pub vnet_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalGateway {
    pub name: String,
    pub id: String,
    pub address: Option<IpAddr>,
    pub fqdn: Option<String>,
    pub prefixes: Vec<Prefix>,
    /// (ASN, BGP peering address).
    pub bgp: Option<(u32, IpAddr)>,
}

/// The Azure half of one connection.
#[derive(Debug, Clone)]
pub struct AzureHalf {
    pub name: String,
    pub ikev1: bool,
    pub mode: ConnectionMode,
    /// `dpdTimeoutSeconds`; `None`: Azure's default (45 s).
    pub dpd_timeout: Option<u64>,
    /// `None`: Azure's default policy.
    pub policy: Option<Policy>,
    pub policy_based: bool,
    /// Custom `trafficSelectorPolicies`, in hybridgw's orientation (local = on-prem, Azure's
    /// `remoteAddressRanges`; remote = VNet, Azure's `localAddressRanges`), one pair per
    /// prefix combination.
    pub traffic_selectors: Vec<SelectorPair>,
    pub enable_bgp: bool,
    pub gateway: Gateway,
    pub local: LocalGateway,
    /// The VNet's address space (`az network vnet show`), when given.
    pub vnet_prefixes: Option<Vec<Prefix>>,
    pub shared_key: Option<Zeroizing<String>>,
    /// Where it came from (file names), for messages.
    pub source: String,
}

impl AzureHalf {
    pub fn dpd(&self) -> u64 {
        self.dpd_timeout.unwrap_or(AZURE_DPD_DEFAULT)
    }
    /// The instances hybridgw needs a tunnel to (two with active-active).
    pub fn tunnels(&self) -> &[Instance] {
        let n = if self.gateway.active_active { 2 } else { 1 };
        let n = n.min(self.gateway.instances.len());
        &self.gateway.instances[..n]
    }
    /// The Child SA lifetimes Azure uses.
    pub fn child_lifetimes(&self) -> (u64, u64) {
        self.policy
            .as_ref()
            .map_or((AZURE_CHILD_SECONDS, AZURE_CHILD_KB), |p| {
                (p.sa_lifetime_seconds, p.sa_data_size_kilobytes)
            })
    }
    /// The selector pairs Azure's policy-based side expects: the custom ones, or every
    /// on-prem (local network gateway) x VNet prefix pair (`None` when the VNet is unknown).
    pub fn expected_pairs(&self) -> Option<Vec<SelectorPair>> {
        if !self.traffic_selectors.is_empty() {
            return Some(self.traffic_selectors.clone());
        }
        let vnet = self.vnet_prefixes.as_ref()?;
        let mut v = Vec::new();
        for l in &self.local.prefixes {
            for r in vnet {
                if l.addr.is_ipv4() == r.addr.is_ipv4() {
                    push_pair(&mut v, *l, *r);
                }
            }
        }
        Some(v)
    }
}

pub fn push_pair(v: &mut Vec<SelectorPair>, local: Prefix, remote: Prefix) {
    if !v.iter().any(|p| p.local == local && p.remote == remote) {
        v.push(SelectorPair { local, remote });
    }
}

/// One input file, parsed.
#[derive(Debug)]
pub struct Input {
    pub name: String,
    pub value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connection,
    Gateway,
    LocalGateway,
    VirtualNetwork,
    PublicIp,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Connection => "connections",
            Kind::Gateway => "virtualNetworkGateways",
            Kind::LocalGateway => "localNetworkGateways",
            Kind::VirtualNetwork => "virtualNetworks",
            Kind::PublicIp => "publicIPAddresses",
        }
    }
    fn az(self) -> &'static str {
        match self {
            Kind::Connection => "az network vpn-connection show",
            Kind::Gateway => "az network vnet-gateway show",
            Kind::LocalGateway => "az network local-gateway show",
            Kind::VirtualNetwork => "az network vnet show",
            Kind::PublicIp => "az network public-ip show",
        }
    }
}

fn classify(v: &Value) -> Option<Kind> {
    if let Some(t) = v.get("type").and_then(Value::as_str) {
        return match t.to_ascii_lowercase().as_str() {
            "microsoft.network/connections" => Some(Kind::Connection),
            "microsoft.network/virtualnetworkgateways" => Some(Kind::Gateway),
            "microsoft.network/localnetworkgateways" => Some(Kind::LocalGateway),
            "microsoft.network/virtualnetworks" => Some(Kind::VirtualNetwork),
            "microsoft.network/publicipaddresses" => Some(Kind::PublicIp),
            _ => None,
        };
    }
    let p = match v.get("properties") {
        Some(p) if p.is_object() => p,
        _ => v,
    };
    let has = |k: &str| p.get(k).is_some();
    if has("connectionType") {
        Some(Kind::Connection)
    } else if has("gatewayType") || has("vpnType") {
        Some(Kind::Gateway)
    } else if has("gatewayIpAddress") || has("localNetworkAddressSpace") {
        Some(Kind::LocalGateway)
    } else if has("addressSpace") {
        Some(Kind::VirtualNetwork)
    } else if has("ipAddress") || has("publicIPAllocationMethod") {
        Some(Kind::PublicIp)
    } else {
        None
    }
}

#[derive(Debug, Clone)]
struct Res<'a> {
    kind: Kind,
    node: Node<'a>,
    id: Option<String>,
}

fn same_id(a: &str, b: &str) -> bool {
    a.trim()
        .trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim().trim_end_matches('/'))
}

/// The last path segment of an ARM id (the resource's name).
fn id_name(id: &str) -> &str {
    id.trim_end_matches('/').rsplit('/').next().unwrap_or(id)
}

/// Splits every input into resources (one object, an array, a `{"value": [...]}` list, or
/// `{"resource": {...}}` as `az ... create` prints) and sorts them by type; resources of other
/// types are listed in `ignored`.
fn collect<'a>(inputs: &'a [Input], ignored: &mut Vec<String>) -> Result<Vec<Res<'a>>, JsonError> {
    let mut out: Vec<Res<'a>> = Vec::new();
    for inp in inputs {
        let root = Node::root(&inp.value, "", &inp.name);
        let items: Vec<Node<'a>> = match &inp.value {
            Value::Array(_) => root.as_array()?,
            Value::Object(o) if o.get("value").is_some_and(Value::is_array) => {
                root.req("value")?.as_array()?
            }
            Value::Object(o) if o.len() == 1 && o.get("resource").is_some_and(Value::is_object) => {
                vec![root.req("resource")?]
            }
            Value::Object(_) => vec![root],
            _ => {
                return Err(
                    root.err("expected an Azure resource (a JSON object) or an array of them")
                );
            }
        };
        for item in items {
            if !item.is_object() {
                return Err(item.err("expected an Azure resource (a JSON object)"));
            }
            let Some(kind) = classify(item.v) else {
                let t = item
                    .v
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("(no type)");
                ignored.push(format!(
                    "{}: a resource of type {} (not used)",
                    inp.name,
                    short(t)
                ));
                continue;
            };
            let n = out.iter().filter(|r| r.kind == kind).count();
            let node = Node::root(item.v, format!("{}[{n}]", kind.plural()), &inp.name);
            let id = node.opt_str("id")?.map(str::to_string);
            out.push(Res { kind, node, id });
        }
    }
    Ok(out)
}

/// At most 64 characters of a hostile string, for messages.
pub fn short(s: &str) -> String {
    clip(s, 64)
}

/// At most `n` characters of `s`, control characters dropped.
pub fn clip(s: &str, n: usize) -> String {
    let t: String = s.chars().filter(|c| !c.is_control()).take(n).collect();
    if t.len() < s.len() {
        format!("{t}...")
    } else {
        t
    }
}

fn ip(n: &Node, s: &str) -> Result<IpAddr, JsonError> {
    s.trim()
        .parse()
        .map_err(|_| n.err(format!("`{}` is not an IP address", short(s))))
}

fn prefix(n: &Node, s: &str) -> Result<Prefix, JsonError> {
    s.trim().parse::<Prefix>().map_err(|e| n.err(clip(&e, 200)))
}

fn prefixes(n: &Node, key: &str) -> Result<Vec<Prefix>, JsonError> {
    let mut v: Vec<Prefix> = Vec::new();
    for (s, at) in n.opt_strings(key)? {
        let p = prefix(&at, s)?;
        if !v.contains(&p) {
            v.push(p);
        }
    }
    Ok(v)
}

fn asn(n: &Node) -> Result<u32, JsonError> {
    let a = n.as_u64()?;
    u32::try_from(a)
        .ok()
        .filter(|a| *a != 0)
        .ok_or_else(|| n.err(format!("{a} is not an ASN (1-4294967294)")))
}

/// All the Azure halves (one per IPsec connection) described by the inputs. `notes` gets
/// what was ignored or assumed.
pub fn halves(inputs: &[Input], notes: &mut Vec<String>) -> Result<Vec<AzureHalf>, JsonError> {
    let res = collect(inputs, notes)?;
    let of = |k: Kind| res.iter().filter(move |r| r.kind == k);
    let mut out = Vec::new();
    for c in of(Kind::Connection) {
        let p = c.node.props();
        let ctype = p.req_str("connectionType")?;
        if !ctype.eq_ignore_ascii_case("IPsec") {
            notes.push(format!(
                "{}: `{}` is a {} connection, not a site-to-site (IPsec) one: ignored",
                c.node.file,
                c.node.path,
                short(ctype)
            ));
            continue;
        }
        out.push(half(c, &res, notes)?);
    }
    if out.is_empty() {
        let file = inputs.first().map_or("(no input)", |i| i.name.as_str());
        return Err(JsonError {
            file: file.to_string(),
            path: String::new(),
            message: format!(
                "no site-to-site connection among the inputs: add the output of `{}` (a Microsoft.Network/connections resource with connectionType IPsec)",
                Kind::Connection.az()
            ),
        });
    }
    Ok(out)
}

/// The resource a reference (`{"id": ...}`) points at: among the inputs, or embedded with its
/// properties in the reference itself.
fn resolve<'a>(reference: &Node<'a>, kind: Kind, res: &[Res<'a>]) -> Result<Node<'a>, JsonError> {
    let id_node = reference.req("id")?;
    let id = id_node.as_str()?;
    if let Some(r) = res
        .iter()
        .find(|r| r.kind == kind && r.id.as_deref().is_some_and(|x| same_id(x, id)))
    {
        return Ok(r.node.clone());
    }
    let embedded = reference
        .get("properties")
        .is_some_and(|p| p.v.as_object().is_some_and(|o| !o.is_empty()));
    if embedded {
        return Ok(reference.clone());
    }
    Err(id_node.err(format!(
        "`{}`: no {} resource with this id among the inputs: add the output of `{} --ids {}`",
        short(id),
        kind.plural(),
        kind.az(),
        short(id)
    )))
}

fn half<'a>(c: &Res<'a>, res: &[Res<'a>], notes: &mut Vec<String>) -> Result<AzureHalf, JsonError> {
    let p = c.node.props();
    let name = match c.node.opt_str("name")? {
        Some(n) => n.to_string(),
        None => c.id.as_deref().map(id_name).unwrap_or("azure").to_string(),
    };
    let ikev1 = p
        .opt_str("connectionProtocol")?
        .is_some_and(|s| s.eq_ignore_ascii_case("IKEv1"));
    if let Some(n) = p.get("connectionProtocol") {
        let s = n.as_str()?;
        if !s.eq_ignore_ascii_case("IKEv1") && !s.eq_ignore_ascii_case("IKEv2") {
            return Err(n.err(format!("`{}`: expected IKEv2 or IKEv1", short(s))));
        }
    }
    let mode = match p.get("connectionMode") {
        None => ConnectionMode::Default,
        Some(n) => match n.as_str()?.to_ascii_lowercase().as_str() {
            "default" => ConnectionMode::Default,
            "initiatoronly" => ConnectionMode::InitiatorOnly,
            "responderonly" => ConnectionMode::ResponderOnly,
            other => {
                return Err(n.err(format!(
                    "`{}`: expected Default, InitiatorOnly or ResponderOnly",
                    short(other)
                )));
            }
        },
    };
    let dpd_timeout = match p.get("dpdTimeoutSeconds") {
        None => None,
        Some(n) => match n.as_u64()? {
            0 => None,
            d @ 9..=3600 => Some(d),
            d => return Err(n.err(format!("{d}: Azure's DPD timeout is 9-3600 seconds"))),
        },
    };
    let pols = p.opt_array("ipsecPolicies")?;
    if pols.len() > 1 {
        return Err(p.req("ipsecPolicies")?.err(format!(
            "{} policies: an Azure connection applies exactly one custom policy",
            pols.len()
        )));
    }
    let policy = match pols.first() {
        None => None,
        Some(n) => {
            let f = |k: &str| n.req_str(k);
            let names = [
                f("ikeEncryption")?,
                f("ikeIntegrity")?,
                f("dhGroup")?,
                f("ipsecEncryption")?,
                f("ipsecIntegrity")?,
                f("pfsGroup")?,
            ];
            let secs_n = n.req("saLifeTimeSeconds")?;
            let secs = secs_n.as_u64()?;
            if !(AZURE_SA_SECONDS_MIN..=AZURE_SA_SECONDS_MAX).contains(&secs) {
                return Err(secs_n.err(format!(
                    "{secs}: Azure's Child SA lifetime is {AZURE_SA_SECONDS_MIN}-{AZURE_SA_SECONDS_MAX} seconds"
                )));
            }
            let kb_n = n.req("saDataSizeKilobytes")?;
            let kb = kb_n.as_u64()?;
            if !(AZURE_SA_KB_MIN..=AZURE_SA_KB_MAX).contains(&kb) {
                return Err(kb_n.err(format!(
                    "{kb}: Azure's Child SA data size is {AZURE_SA_KB_MIN}-{AZURE_SA_KB_MAX} KB"
                )));
            }
            let pol = Policy::from_names(names, secs, kb).map_err(|(key, msg)| {
                n.get(key)
                    .map_or_else(|| n.err(msg.clone()), |k| k.err(msg.clone()))
            })?;
            Some(pol)
        }
    };
    let policy_based = p
        .opt_bool("usePolicyBasedTrafficSelectors")?
        .unwrap_or(false);
    let mut traffic_selectors = Vec::new();
    for t in p.opt_array("trafficSelectorPolicies")? {
        // Azure's local side is the VNet, its remote side on-prem.
        t.req("localAddressRanges")?;
        t.req("remoteAddressRanges")?;
        let azure_local = prefixes(&t, "localAddressRanges")?;
        let azure_remote = prefixes(&t, "remoteAddressRanges")?;
        if azure_local.is_empty() || azure_remote.is_empty() {
            return Err(t.err("a traffic selector policy needs local and remote address ranges"));
        }
        for r in &azure_remote {
            for l in &azure_local {
                if r.addr.is_ipv4() == l.addr.is_ipv4() {
                    push_pair(&mut traffic_selectors, *r, *l);
                }
            }
        }
        if traffic_selectors.len() > super::json::MAX_ARRAY {
            return Err(t.err("too many selector pairs"));
        }
    }
    let enable_bgp = p.opt_bool("enableBgp")?.unwrap_or(false);
    let shared_key = p
        .opt_str("sharedKey")?
        .map(|s| Zeroizing::new(s.to_string()));

    let gw_node = resolve(&p.req("virtualNetworkGateway1")?, Kind::Gateway, res)?;
    let custom_sel: Vec<(String, IpAddr)> = p
        .opt_array("gatewayCustomBgpIpAddresses")?
        .into_iter()
        .map(|g| {
            let id = g.req_str("ipConfigurationId")?.to_string();
            let a_n = g.req("customBgpIpAddress")?;
            let a = ip(&a_n, a_n.as_str()?)?;
            Ok((id, a))
        })
        .collect::<Result<_, JsonError>>()?;
    let lng_node = resolve(&p.req("localNetworkGateway2")?, Kind::LocalGateway, res)?;
    let local = local_gateway(&lng_node)?;
    let gateway = gateway(&gw_node, res, &custom_sel, &local, notes)?;

    let vnet_prefixes = {
        let vnets: Vec<&Res> = res
            .iter()
            .filter(|r| r.kind == Kind::VirtualNetwork)
            .collect();
        let chosen = match &gateway.vnet_id {
            Some(id) => vnets
                .iter()
                .find(|r| r.id.as_deref().is_some_and(|x| same_id(x, id)))
                .copied()
                .or(if vnets.len() == 1 {
                    vnets.first().copied()
                } else {
                    None
                }),
            None if vnets.len() == 1 => vnets.first().copied(),
            None => None,
        };
        match chosen {
            None => None,
            Some(v) => {
                let vp = v.node.props();
                let space = vp.req("addressSpace")?;
                space.req("addressPrefixes")?;
                Some(prefixes(&space, "addressPrefixes")?)
            }
        }
    };
    Ok(AzureHalf {
        name,
        ikev1,
        mode,
        dpd_timeout,
        policy,
        policy_based,
        traffic_selectors,
        enable_bgp,
        gateway,
        local,
        vnet_prefixes,
        shared_key,
        source: c.node.file.to_string(),
    })
}

fn local_gateway(n: &Node) -> Result<LocalGateway, JsonError> {
    let p = n.props();
    let id = n.opt_str("id")?.unwrap_or("").to_string();
    let name = match n.opt_str("name")? {
        Some(s) => s.to_string(),
        None => id_name(&id).to_string(),
    };
    let address = match p.get("gatewayIpAddress") {
        None => None,
        Some(a) => Some(ip(&a, a.as_str()?)?),
    };
    let fqdn = p.opt_str("fqdn")?.map(str::to_string);
    if address.is_none() && fqdn.is_none() {
        return Err(p
            .req("gatewayIpAddress")
            .err()
            .unwrap_or_else(|| p.err("missing gatewayIpAddress")));
    }
    let prefixes = match p.get("localNetworkAddressSpace") {
        None => Vec::new(),
        Some(s) => prefixes(&s, "addressPrefixes")?,
    };
    let bgp = match p.get("bgpSettings") {
        None => None,
        Some(b) => match (b.get("asn"), b.get("bgpPeeringAddress")) {
            (None, None) => None,
            (Some(a), Some(addr)) => {
                let s = addr.as_str()?;
                Some((asn(&a)?, ip(&addr, s)?))
            }
            (None, Some(_)) => {
                return Err(b.req("asn").err().unwrap_or_else(|| b.err("missing asn")));
            }
            (Some(_), None) => {
                return Err(b
                    .req("bgpPeeringAddress")
                    .err()
                    .unwrap_or_else(|| b.err("missing bgpPeeringAddress")));
            }
        },
    };
    Ok(LocalGateway {
        name,
        id,
        address,
        fqdn,
        prefixes,
        bgp,
    })
}

fn is_apipa(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v) if v.octets()[0] == 169 && v.octets()[1] == 254)
}

/// One `bgpPeeringAddresses[]` entry: ipconfiguration id, default, custom and tunnel addresses.
type Peering = (Option<String>, Vec<IpAddr>, Vec<IpAddr>, Vec<IpAddr>);

fn gateway(
    n: &Node,
    res: &[Res],
    custom_sel: &[(String, IpAddr)],
    local: &LocalGateway,
    notes: &mut Vec<String>,
) -> Result<Gateway, JsonError> {
    let p = n.props();
    let id = n.opt_str("id")?.unwrap_or("").to_string();
    let name = match n.opt_str("name")? {
        Some(s) => s.to_string(),
        None => id_name(&id).to_string(),
    };
    let active_active = p.opt_bool("activeActive")?.unwrap_or(false);
    let policy_based_vpn_type = p
        .opt_str("vpnType")?
        .is_some_and(|t| t.eq_ignore_ascii_case("PolicyBased"));
    let bgp = p.get("bgpSettings");
    let asn = match bgp.as_ref().and_then(|b| b.get("asn")) {
        None => None,
        Some(a) => Some(asn(&a)?),
    };
    // Per ipconfiguration: the BGP peering address entries.
    let mut peering: Vec<Peering> = Vec::new();
    if let Some(b) = &bgp {
        for e in b.opt_array("bgpPeeringAddresses")? {
            let ipc = e.opt_str("ipconfigurationId")?.map(str::to_string);
            let list = |k: &str| -> Result<Vec<IpAddr>, JsonError> {
                e.opt_strings(k)?
                    .into_iter()
                    .map(|(s, at)| ip(&at, s))
                    .collect()
            };
            peering.push((
                ipc,
                list("defaultBgpIpAddresses")?,
                list("customBgpIpAddresses")?,
                list("tunnelIpAddresses")?,
            ));
        }
    }
    // `bgpPeeringAddress`: "a" or "a,b" (one per instance).
    let mut default_peers: Vec<IpAddr> = Vec::new();
    if let Some(b) = &bgp
        && let Some(a) = b.get("bgpPeeringAddress")
    {
        for part in a.as_str()?.split(',').filter(|s| !s.trim().is_empty()) {
            default_peers.push(ip(&a, part)?);
        }
    }
    let ipcs = p.opt_array("ipConfigurations")?;
    let mut instances = Vec::new();
    let mut vnet_id = None;
    let lng_apipa = local.bgp.is_some_and(|(_, a)| is_apipa(a));
    for (i, ipc) in ipcs.iter().enumerate() {
        let ipc_id = ipc.opt_str("id")?.map(str::to_string);
        let ip_props = ipc.props();
        let pip_id = match ip_props.get("publicIPAddress") {
            None => None,
            Some(r) => r.opt_str("id")?.map(str::to_string),
        };
        if vnet_id.is_none()
            && let Some(s) = ip_props.get("subnet")
            && let Some(sid) = s.opt_str("id")?
        {
            let lower = sid.to_ascii_lowercase();
            if let Some(at) = lower.find("/subnets/") {
                vnet_id = sid.get(..at).map(str::to_string);
            }
        }
        let entry = peering.iter().find(|e| match (&e.0, &ipc_id) {
            (Some(a), Some(b)) => same_id(a, b),
            _ => false,
        });
        let entry = entry.or(if peering.len() == ipcs.len() {
            peering.get(i)
        } else {
            None
        });
        // The public IP: a publicIPAddresses resource with that id, else the tunnel address the
        // gateway reports.
        let mut public_ip = None;
        if let Some(pid) = &pip_id
            && let Some(r) = res.iter().find(|r| {
                r.kind == Kind::PublicIp && r.id.as_deref().is_some_and(|x| same_id(x, pid))
            })
            && let Some(a) = r.node.props().get("ipAddress")
        {
            public_ip = Some(ip(&a, a.as_str()?)?);
        }
        if public_ip.is_none() {
            public_ip = entry.and_then(|e| e.3.first().copied());
        }
        let custom_bgp = entry.map(|e| e.2.clone()).unwrap_or_default();
        let selected = ipc_id.as_ref().and_then(|id| {
            custom_sel
                .iter()
                .find(|(x, _)| same_id(x, id))
                .map(|(_, a)| *a)
        });
        let bgp_peer = selected
            .or(if lng_apipa {
                custom_bgp.first().copied()
            } else {
                None
            })
            .or(entry.and_then(|e| e.1.first().copied()))
            .or(default_peers.get(i).copied());
        if lng_apipa && selected.is_none() && custom_bgp.len() > 1 {
            notes.push(format!(
                "gateway `{}` instance {i} has {} custom APIPA addresses and the connection selects none (gatewayCustomBgpIpAddresses): assuming {}",
                short(&name),
                custom_bgp.len(),
                custom_bgp.first().map(|a| a.to_string()).unwrap_or_default()
            ));
        }
        instances.push(Instance {
            ipconfig_id: ipc_id,
            public_ip_id: pip_id,
            public_ip,
            bgp_peer,
            custom_bgp,
        });
    }
    if instances.is_empty() {
        // A body without ipConfigurations (e.g. trimmed by hand): the addresses may still be in
        // the BGP settings.
        for (i, e) in peering.iter().enumerate() {
            instances.push(Instance {
                ipconfig_id: e.0.clone(),
                public_ip_id: None,
                public_ip: e.3.first().copied(),
                bgp_peer: if lng_apipa {
                    e.2.first().copied()
                } else {
                    None
                }
                .or(e.1.first().copied())
                .or(default_peers.get(i).copied()),
                custom_bgp: e.2.clone(),
            });
        }
    }
    if instances.is_empty() {
        return Err(p.req("ipConfigurations").err().unwrap_or_else(|| {
            p.err("no ipConfigurations: the gateway's public addresses are unknown")
        }));
    }
    if active_active && instances.len() < 2 {
        notes.push(format!(
            "gateway `{}` is active-active but lists one IP configuration: one tunnel only",
            short(&name)
        ));
    }
    Ok(Gateway {
        name,
        id,
        active_active,
        enable_bgp: p.opt_bool("enableBgp")?.unwrap_or(false),
        asn,
        policy_based_vpn_type,
        instances,
        vnet_id,
    })
}
