//! The on-prem BIRD 2 configuration for ExpressRoute with VPN failover: eBGP (RFC 4271) to the
//! ExpressRoute edge with BFD (RFC 5880/5881) and to the Azure VPN gateway over the tunnel,
//! generated from a small typed description. Every choice is explained in
//! `appliance-config/bird/README.md`.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::asn::{AZURE_GATEWAY_ASN, AsnError, check_onprem_asn};
use crate::prefix::Ipv4Prefix;

/// The most prefixes an Azure VPN gateway accepts from on-prem over BGP.
pub const AZURE_MAX_ONPREM_PREFIXES: usize = 4000;
/// The ASN of Microsoft's ExpressRoute edge routers (MSEE) on private peering.
pub const MSEE_ASN: u32 = 12076;

/// The Azure VPN gateway's BGP peer, reached through the IPsec tunnel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AzurePeer {
    /// Azure's BGP peer address: an APIPA address (169.254.21.0-169.254.22.255) or one from the
    /// GatewaySubnet, routed through the tunnel.
    pub address: Ipv4Addr,
    /// Azure's ASN (65515 unless changed on the gateway).
    pub asn: u32,
    /// The on-prem BGP address, configured on the tunnel interface (`tun_address`).
    pub local_address: Ipv4Addr,
    /// The tunnel interface (the TUN of the hybridgw connection).
    pub interface: String,
    /// The TTL of the session's packets (BIRD `multihop`): Azure's peer is not on a shared subnet.
    pub multihop: u8,
}

/// The ExpressRoute edge (Microsoft's MSEE or the provider's edge) over the circuit link.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExpressRoutePeer {
    /// The edge's address on the circuit link (the second address of the /30).
    pub address: Ipv4Addr,
    /// The edge's ASN (12076 for the MSEE, or the layer-3 provider's).
    pub asn: u32,
    /// The on-prem address on the circuit link.
    pub local_address: Ipv4Addr,
    /// The interface of the circuit link.
    pub interface: String,
    /// BFD transmit/receive interval in milliseconds (Azure: 300).
    pub bfd_interval_ms: u32,
    /// BFD detect multiplier (Azure: 3).
    pub bfd_multiplier: u8,
}

/// BGP timers shared by both sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BgpTimers {
    /// Keepalive interval in seconds (Azure: 60).
    pub keepalive: u32,
    /// Hold time in seconds (Azure: 180).
    pub hold: u32,
    /// Seconds between connection attempts while a session is down (BIRD's default is 120).
    pub connect_retry: u32,
    /// Seconds before the first connection attempt after a session (re)starts (BIRD's default
    /// is 5).
    pub connect_delay: u32,
    /// Minimum and maximum wait after a session failure before restarting it (doubled on each
    /// failure in a row, so a flapping circuit is held off).
    pub error_wait: (u32, u32),
}

impl Default for BgpTimers {
    /// Azure's 60/180 s, a 10 s connect retry, BIRD's 5 s connect delay and a 10-120 s error
    /// wait.
    fn default() -> Self {
        BgpTimers {
            keepalive: 60,
            hold: 180,
            connect_retry: 10,
            connect_delay: 5,
            error_wait: (10, 120),
        }
    }
}

/// Where BIRD logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BirdLog {
    /// syslog (a service).
    Syslog,
    /// standard error (a foreground process under a supervisor or a test).
    Stderr,
}

/// The on-prem router's side of ExpressRoute with VPN failover.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OnpremBird {
    /// BGP router ID (an on-prem address of the router).
    pub router_id: Ipv4Addr,
    /// The on-prem ASN (checked by [`check_onprem_asn`]).
    pub local_asn: u32,
    /// The on-prem prefixes, advertised identically on both sessions.
    pub onprem_prefixes: Vec<Ipv4Prefix>,
    /// The Azure VPN gateway over the tunnel.
    pub azure: AzurePeer,
    /// The ExpressRoute edge over the circuit.
    pub expressroute: ExpressRoutePeer,
    /// BGP timers.
    pub timers: BgpTimers,
    /// Logging.
    pub log: BirdLog,
}

/// Why a description cannot become a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BirdError {
    /// The on-prem ASN is reserved.
    #[error("local ASN: {0}")]
    Asn(#[from] AsnError),
    /// A peer has the on-prem ASN (both sessions are eBGP).
    #[error("the {0} peer has the on-prem ASN: both sessions must be eBGP")]
    SameAsn(&'static str),
    /// A peer ASN is 0 or 4294967295... or otherwise invalid.
    #[error("the {0} peer's ASN is invalid")]
    PeerAsn(&'static str),
    /// An interface name BIRD could not take safely.
    #[error("interface name `{0}` must be 1-15 of [A-Za-z0-9_.-]")]
    Interface(String),
    /// An APIPA BGP address outside Azure's range.
    #[error("Azure accepts APIPA BGP addresses only in 169.254.21.0-169.254.22.255, not {0}")]
    Apipa(Ipv4Addr),
    /// No on-prem prefix, too many, a default route, or a duplicate.
    #[error("on-prem prefixes: {0}")]
    Prefixes(String),
    /// Timers out of range.
    #[error("timers: {0}")]
    Timers(&'static str),
    /// A bad address (unspecified, the same on both ends of a session, ...).
    #[error("addresses: {0}")]
    Address(&'static str),
}

fn check_ifname(name: &str) -> Result<(), BirdError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        let shown: String = name.chars().take(32).collect();
        Err(BirdError::Interface(shown))
    }
}

fn is_apipa(a: Ipv4Addr) -> bool {
    a.octets()[0] == 169 && a.octets()[1] == 254
}

impl OnpremBird {
    /// Checks the description (it may come from a config file).
    pub fn validate(&self) -> Result<(), BirdError> {
        check_onprem_asn(self.local_asn)?;
        for (who, asn) in [
            ("Azure", self.azure.asn),
            ("ExpressRoute", self.expressroute.asn),
        ] {
            if asn == 0 || asn == u32::MAX || asn == 23456 {
                return Err(BirdError::PeerAsn(who));
            }
            if asn == self.local_asn {
                return Err(BirdError::SameAsn(who));
            }
        }
        check_ifname(&self.azure.interface)?;
        check_ifname(&self.expressroute.interface)?;
        if self.azure.interface == self.expressroute.interface {
            return Err(BirdError::Address(
                "the tunnel and the circuit use the same interface",
            ));
        }
        for a in [self.azure.address, self.azure.local_address] {
            if is_apipa(a) && !(a.octets()[2] == 21 || a.octets()[2] == 22) {
                return Err(BirdError::Apipa(a));
            }
        }
        let addrs = [
            self.router_id,
            self.azure.address,
            self.azure.local_address,
            self.expressroute.address,
            self.expressroute.local_address,
        ];
        if addrs
            .iter()
            .any(|a| a.is_unspecified() || a.is_broadcast() || a.is_multicast())
        {
            return Err(BirdError::Address(
                "unspecified, broadcast or multicast address",
            ));
        }
        if self.azure.address == self.azure.local_address
            || self.expressroute.address == self.expressroute.local_address
        {
            return Err(BirdError::Address(
                "a session's two ends have the same address",
            ));
        }
        if self.azure.multihop == 0 {
            return Err(BirdError::Timers("multihop TTL must be 1-255"));
        }
        let n = self.onprem_prefixes.len();
        if n == 0 {
            return Err(BirdError::Prefixes(
                "at least one on-prem prefix is needed".into(),
            ));
        }
        if n > AZURE_MAX_ONPREM_PREFIXES {
            return Err(BirdError::Prefixes(format!(
                "{n} prefixes: Azure accepts at most {AZURE_MAX_ONPREM_PREFIXES}"
            )));
        }
        for (i, p) in self.onprem_prefixes.iter().enumerate() {
            if p.is_default() {
                return Err(BirdError::Prefixes(
                    "0.0.0.0/0 must not be advertised to Azure".into(),
                ));
            }
            if self.onprem_prefixes[..i].contains(p) {
                return Err(BirdError::Prefixes(format!("{p} is listed twice")));
            }
        }
        let t = &self.timers;
        if t.hold != 0 && !(3..=65535).contains(&t.hold) {
            return Err(BirdError::Timers(
                "hold time must be 0 or 3-65535 s (RFC 4271 4.2)",
            ));
        }
        if t.keepalive == 0 || (t.hold != 0 && t.keepalive * 3 > t.hold) {
            return Err(BirdError::Timers(
                "keepalive must be 1 s to a third of the hold time",
            ));
        }
        if !(1..=3600).contains(&t.connect_retry) {
            return Err(BirdError::Timers("connect retry must be 1-3600 s"));
        }
        if !(1..=3600).contains(&t.connect_delay) {
            return Err(BirdError::Timers("connect delay must be 1-3600 s"));
        }
        if t.error_wait.0 == 0 || t.error_wait.0 > t.error_wait.1 || t.error_wait.1 > 86_400 {
            return Err(BirdError::Timers(
                "error wait must be 1 <= min <= max <= 86400 s",
            ));
        }
        let bfd = self.expressroute.bfd_interval_ms;
        if !(10..=10_000).contains(&bfd) || self.expressroute.bfd_multiplier == 0 {
            return Err(BirdError::Timers(
                "BFD interval must be 10-10000 ms, multiplier 1-255",
            ));
        }
        Ok(())
    }

    /// The Azure peer's ASN is normally [`AZURE_GATEWAY_ASN`]; a different one is allowed (a
    /// gateway configured with a custom ASN) but worth a warning.
    pub fn azure_asn_is_default(&self) -> bool {
        self.azure.asn == AZURE_GATEWAY_ASN
    }

    /// Renders `bird.conf` (validating first).
    pub fn render(&self) -> Result<String, BirdError> {
        self.validate()?;
        let mut s = String::new();
        // `write!` to a String cannot fail; the results are ignored on purpose.
        let az = &self.azure;
        let er = &self.expressroute;
        let t = &self.timers;
        let list = |plus: &str| {
            self.onprem_prefixes
                .iter()
                .map(|p| format!("{p}{plus}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "# On-prem router: ExpressRoute with VPN failover (BIRD 2).\n\
             # Generated by hybridgw (failover::bird); every choice is explained in README.md.\n\
             # eBGP to the ExpressRoute edge {er_addr} (AS{er_asn}) over {er_if}, with BFD;\n\
             # eBGP to the Azure VPN gateway {az_addr} (AS{az_asn}) through the tunnel {az_if}.\n",
            er_addr = er.address,
            er_asn = er.asn,
            er_if = er.interface,
            az_addr = az.address,
            az_asn = az.asn,
            az_if = az.interface,
        );
        let _ = writeln!(
            s,
            "log {};\nrouter id {};\n",
            match self.log {
                BirdLog::Syslog => "syslog all",
                BirdLog::Stderr => "stderr all",
            },
            self.router_id
        );
        let _ = writeln!(
            s,
            "# The on-prem prefixes: advertised exactly (never a more-specific) on both sessions.\n\
             define ONPREM = [ {} ];\n\
             # The same prefixes and everything inside them: never accepted back from Azure.\n\
             define ONPREM_ANY = [ {} ];\n",
            list(""),
            list("+")
        );
        let _ = writeln!(
            s,
            "# Interface states, so sessions over a link that goes down are torn down at once.\n\
             protocol device {{\n\
             \x20 scan time 10;\n\
             }}\n"
        );
        let _ = writeln!(
            s,
            "# Originates the on-prem prefixes into BGP (never exported to the kernel)."
        );
        let _ = writeln!(s, "protocol static onprem {{\n  ipv4;");
        for p in &self.onprem_prefixes {
            let _ = writeln!(s, "  route {p} blackhole;");
        }
        let _ = writeln!(s, "}}\n");
        let _ = writeln!(
            s,
            "# The kernel table. Exported: only BGP-learned VNet routes (connected and static ones are\n\
             # there already, or must not be). Imported (`learn`): only the host route to Azure's BGP\n\
             # address that hybridgw installs through the tunnel while its Child SA is up. The Azure\n\
             # session is multihop, so the next hop of its routes resolves through that route: they\n\
             # are usable exactly while the tunnel is, not until the 180 s hold time runs out.\n\
             protocol kernel {{\n\
             \x20 learn;\n\
             \x20 ipv4 {{\n\
             \x20   import where net = {az_addr}/32 && source = RTS_INHERIT;\n\
             \x20   export where source = RTS_BGP;\n\
             \x20 }};\n\
             }}\n",
            az_addr = az.address,
        );
        let _ = writeln!(
            s,
            "# BFD on the circuit link ({ms} ms x {mult}, as Azure's private peering).\n\
             protocol bfd {{\n\
             \x20 interface \"{er_if}\" {{\n\
             \x20   min rx interval {ms} ms;\n\
             \x20   min tx interval {ms} ms;\n\
             \x20   idle tx interval 1000 ms;\n\
             \x20   multiplier {mult};\n\
             \x20 }};\n\
             }}\n",
            ms = er.bfd_interval_ms,
            mult = er.bfd_multiplier,
            er_if = er.interface,
        );
        let _ = writeln!(
            s,
            "# What may come from Azure (either path): VNet prefixes only.\n\
             function vnet_route_ok()\n\
             {{\n\
             \x20 if net.len = 0 then return false;          # Azure never sends a default; refuse one\n\
             \x20 if net ~ ONPREM_ANY then return false;     # our own prefixes coming back\n\
             \x20 if net ~ [ 169.254.0.0/16+ ] then return false; # link-local / APIPA BGP addresses\n\
             \x20 return true;\n\
             }}\n\n\
             filter expressroute_in\n\
             {{\n\
             \x20 if !vnet_route_ok() then reject;\n\
             \x20 bgp_local_pref = 150;                      # ExpressRoute wins\n\
             \x20 accept;\n\
             }}\n\n\
             filter azure_vpn_in\n\
             {{\n\
             \x20 if !vnet_route_ok() then reject;\n\
             \x20 bgp_local_pref = 100;                      # the VPN is the backup\n\
             \x20 accept;\n\
             }}\n\n\
             # Both sessions advertise exactly the on-prem prefixes of `protocol static onprem`.\n\
             filter onprem_out\n\
             {{\n\
             \x20 if proto = \"onprem\" && net ~ ONPREM then accept;\n\
             \x20 reject;\n\
             }}\n"
        );
        let timers = format!(
            "  hold time {};\n  keepalive time {};\n  connect delay time {};\n  connect retry time {};\n  error wait time {}, {};\n",
            t.hold, t.keepalive, t.connect_delay, t.connect_retry, t.error_wait.0, t.error_wait.1
        );
        let _ = writeln!(
            s,
            "protocol bgp expressroute {{\n\
             \x20 description \"ExpressRoute private peering\";\n\
             \x20 local {er_local} as {asn};\n\
             \x20 neighbor {er_addr} as {er_asn};\n\
             \x20 direct;\n\
             \x20 bfd on;\n\
             {timers}\
             \x20 ipv4 {{\n\
             \x20   import filter expressroute_in;\n\
             \x20   export filter onprem_out;\n\
             \x20   next hop self;\n\
             \x20 }};\n\
             }}\n",
            er_local = er.local_address,
            asn = self.local_asn,
            er_addr = er.address,
            er_asn = er.asn,
        );
        let _ = write!(
            s,
            "protocol bgp azure_vpn {{\n\
             \x20 description \"Azure VPN gateway through the IPsec tunnel\";\n\
             \x20 local {az_local} as {asn};\n\
             \x20 neighbor {az_addr} as {az_asn};\n\
             \x20 multihop {ttl};\n\
             {timers}\
             \x20 ipv4 {{\n\
             \x20   import filter azure_vpn_in;\n\
             \x20   export filter onprem_out;\n\
             \x20   next hop self;\n\
             \x20 }};\n\
             }}\n",
            az_local = az.local_address,
            asn = self.local_asn,
            az_addr = az.address,
            az_asn = az.asn,
            ttl = az.multihop,
        );
        Ok(s)
    }
}

/// The description behind `appliance-config/bird/onprem-bird.conf` (a test keeps them identical).
pub fn example() -> OnpremBird {
    OnpremBird {
        router_id: Ipv4Addr::new(198, 18, 0, 1),
        local_asn: 65010,
        onprem_prefixes: vec![
            Ipv4Prefix::new(Ipv4Addr::new(198, 18, 0, 0), 22).expect("constant prefix"),
            Ipv4Prefix::new(Ipv4Addr::new(198, 18, 8, 0), 24).expect("constant prefix"),
        ],
        azure: AzurePeer {
            address: Ipv4Addr::new(169, 254, 21, 2),
            asn: AZURE_GATEWAY_ASN,
            local_address: Ipv4Addr::new(169, 254, 21, 1),
            interface: "azure-hub".into(),
            multihop: 2,
        },
        expressroute: ExpressRoutePeer {
            address: Ipv4Addr::new(192, 0, 2, 18),
            asn: MSEE_ASN,
            local_address: Ipv4Addr::new(192, 0, 2, 17),
            interface: "er0".into(),
            bfd_interval_ms: 300,
            bfd_multiplier: 3,
        },
        timers: BgpTimers::default(),
        log: BirdLog::Syslog,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_renders_with_the_required_pieces() {
        let c = example().render().unwrap();
        for needle in [
            "router id 198.18.0.1;",
            "define ONPREM = [ 198.18.0.0/22, 198.18.8.0/24 ];",
            "neighbor 169.254.21.2 as 65515;",
            "local 169.254.21.1 as 65010;",
            "neighbor 192.0.2.18 as 12076;",
            "bfd on;",
            "min rx interval 300 ms;",
            "multiplier 3;",
            "bgp_local_pref = 150;",
            "bgp_local_pref = 100;",
            "if net.len = 0 then return false;",
            "hold time 180;",
            "keepalive time 60;",
            "multihop 2;",
        ] {
            assert!(c.contains(needle), "missing `{needle}` in\n{c}");
        }
        assert!(!c.contains("ONPREM = [ 198.18.0.0/22+"));
    }

    #[test]
    fn bad_descriptions_are_refused() {
        let mut d = example();
        d.local_asn = 65515;
        assert!(matches!(d.render(), Err(BirdError::Asn(_))));
        let mut d = example();
        d.expressroute.asn = d.local_asn;
        assert_eq!(d.validate(), Err(BirdError::SameAsn("ExpressRoute")));
        let mut d = example();
        d.azure.interface = "tun0\"; }".into();
        assert!(matches!(d.validate(), Err(BirdError::Interface(_))));
        let mut d = example();
        d.azure.address = Ipv4Addr::new(169, 254, 30, 1);
        assert!(matches!(d.validate(), Err(BirdError::Apipa(_))));
        let mut d = example();
        d.onprem_prefixes.push("0.0.0.0/0".parse().unwrap());
        assert!(matches!(d.validate(), Err(BirdError::Prefixes(_))));
        let mut d = example();
        d.onprem_prefixes.push("198.18.8.0/24".parse().unwrap());
        assert!(matches!(d.validate(), Err(BirdError::Prefixes(_))));
        let mut d = example();
        d.onprem_prefixes.clear();
        assert!(matches!(d.validate(), Err(BirdError::Prefixes(_))));
        let mut d = example();
        d.onprem_prefixes = (0..4001u32)
            .map(|i| Ipv4Prefix::new(Ipv4Addr::from(0xc612_0000 + (i << 8)), 24).unwrap())
            .collect();
        assert!(matches!(d.validate(), Err(BirdError::Prefixes(_))));
        let mut d = example();
        d.timers.keepalive = 61;
        assert!(matches!(d.validate(), Err(BirdError::Timers(_))));
        let mut d = example();
        d.expressroute.bfd_interval_ms = 5;
        assert!(matches!(d.validate(), Err(BirdError::Timers(_))));
        let mut d = example();
        d.expressroute.local_address = d.expressroute.address;
        assert!(matches!(d.validate(), Err(BirdError::Address(_))));
        assert!(example().azure_asn_is_default());
    }
}
