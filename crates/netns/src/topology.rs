//! The standard lab topology of `hybridgw lab` and the end-to-end tests: an on-prem LAN
//! (198.18.1.0/24, RFC 2544) and an Azure LAN (198.19.1.0/24) joined by two gateways over an
//! "internet" underlay (RFC 5737 192.0.2.0/24, optionally 198.51.100.0/24 behind a router).
//!
//! ```text
//! onprem_host --eth0/lan0-- onprem_gw --wan0/wan0-- azure_gw --lan0/eth0-- azure_host
//! 198.18.1.10      198.18.1.1   192.0.2.1        192.0.2.2   198.19.1.1     198.19.1.10
//!
//! with .router(true):
//! onprem_gw wan0 192.0.2.1 -- onp0 192.0.2.254 [router] az0 198.51.100.254 -- wan0 198.51.100.2 azure_gw
//! ```

use std::net::Ipv4Addr;

use crate::addr::Ipv4Cidr;
use crate::{Netns, Result, veth_pair};

/// Interface names (the same in every lab: each namespace has its own interface names).
pub const HOST_IF: &str = "eth0";
/// The gateways' LAN interface.
pub const LAN_IF: &str = "lan0";
/// The gateways' underlay ("internet") interface.
pub const WAN_IF: &str = "wan0";
/// The router's interface towards the on-prem gateway.
pub const ROUTER_ONPREM_IF: &str = "onp0";
/// The router's interface towards the Azure gateway.
pub const ROUTER_AZURE_IF: &str = "az0";

/// Options for [`Lab`].
#[derive(Clone, Debug)]
pub struct LabBuilder {
    prefix: String,
    router: bool,
    plain_routes: bool,
    underlay_mtu: Option<u32>,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            prefix: "hgw".into(),
            router: false,
            plain_routes: false,
            underlay_mtu: None,
        }
    }
}

impl LabBuilder {
    /// Namespace name prefix (default `hgw`); names are `PREFIX-ROLE-PID-N`.
    pub fn prefix(mut self, p: &str) -> Self {
        self.prefix = p.to_string();
        self
    }
    /// Put a router namespace between the gateways (on-prem gateway on 192.0.2.0/24, Azure gateway
    /// on 198.51.100.0/24), e.g. for NAT (`lab.router.nft(...)`) or impairment tests.
    pub fn router(mut self, on: bool) -> Self {
        self.router = on;
        self
    }
    /// Also route each LAN to the other through the gateways in clear (no tunnel): the
    /// "plain routing" baseline. Off by default, so nothing leaks in clear when a tunnel is down.
    pub fn plain_routes(mut self, on: bool) -> Self {
        self.plain_routes = on;
        self
    }
    /// MTU of the underlay links (default: veth default, 1500).
    pub fn underlay_mtu(mut self, mtu: u32) -> Self {
        self.underlay_mtu = Some(mtu);
        self
    }
    /// Creates the namespaces, links, addresses and routes. On error everything created so far is
    /// deleted again.
    pub fn build(self) -> Result<Lab> {
        Lab::build(self)
    }
}

/// The four (or five) namespaces of the standard topology, with their addresses. Dropping it deletes
/// every namespace and stops every process started in them.
#[derive(Debug)]
pub struct Lab {
    /// On-prem host, `eth0` 198.18.1.10/24, route to the Azure LAN via the on-prem gateway.
    pub onprem_host: Netns,
    /// On-prem gateway, `lan0` 198.18.1.1/24, `wan0` 192.0.2.1/24, forwarding on.
    pub onprem_gw: Netns,
    /// The optional "internet" router (`onp0` 192.0.2.254/24, `az0` 198.51.100.254/24).
    pub router: Option<Netns>,
    /// Azure gateway, `wan0` 192.0.2.2/24 (198.51.100.2/24 with a router), `lan0` 198.19.1.1/24.
    pub azure_gw: Netns,
    /// Azure host, `eth0` 198.19.1.10/24, route to the on-prem LAN via the Azure gateway.
    pub azure_host: Netns,

    /// 198.18.1.0/24
    pub onprem_lan: Ipv4Cidr,
    /// 198.19.1.0/24
    pub azure_lan: Ipv4Cidr,
    /// 198.18.1.10
    pub onprem_host_ip: Ipv4Addr,
    /// 198.18.1.1
    pub onprem_gw_lan_ip: Ipv4Addr,
    /// 192.0.2.1
    pub onprem_gw_wan_ip: Ipv4Addr,
    /// 192.0.2.2, or 198.51.100.2 with a router.
    pub azure_gw_wan_ip: Ipv4Addr,
    /// 198.19.1.1
    pub azure_gw_lan_ip: Ipv4Addr,
    /// 198.19.1.10
    pub azure_host_ip: Ipv4Addr,
    /// The router's address on the on-prem side (192.0.2.254) if there is a router.
    pub router_onprem_ip: Option<Ipv4Addr>,
    /// The router's address on the Azure side (198.51.100.254) if there is a router.
    pub router_azure_ip: Option<Ipv4Addr>,
}

impl Lab {
    /// Options; `Lab::builder().build()` is the plain four-namespace lab.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The default lab (no router, no plain routes).
    pub fn new() -> Result<Lab> {
        LabBuilder::default().build()
    }

    fn build(o: LabBuilder) -> Result<Lab> {
        let p = &o.prefix;
        // Each Netns deletes itself if a later step fails (`?` drops what exists so far).
        let onprem_host = Netns::new(&format!("{p}-oh"))?;
        let onprem_gw = Netns::new(&format!("{p}-og"))?;
        let router = if o.router {
            Some(Netns::new(&format!("{p}-rt"))?)
        } else {
            None
        };
        let azure_gw = Netns::new(&format!("{p}-ag"))?;
        let azure_host = Netns::new(&format!("{p}-ah"))?;

        let onprem_lan: Ipv4Cidr = "198.18.1.0/24".parse()?;
        let azure_lan: Ipv4Cidr = "198.19.1.0/24".parse()?;
        let onprem_host_ip = Ipv4Addr::new(198, 18, 1, 10);
        let onprem_gw_lan_ip = Ipv4Addr::new(198, 18, 1, 1);
        let onprem_gw_wan_ip = Ipv4Addr::new(192, 0, 2, 1);
        let azure_gw_lan_ip = Ipv4Addr::new(198, 19, 1, 1);
        let azure_host_ip = Ipv4Addr::new(198, 19, 1, 10);
        let (azure_gw_wan_ip, router_onprem_ip, router_azure_ip) = if o.router {
            (
                Ipv4Addr::new(198, 51, 100, 2),
                Some(Ipv4Addr::new(192, 0, 2, 254)),
                Some(Ipv4Addr::new(198, 51, 100, 254)),
            )
        } else {
            (Ipv4Addr::new(192, 0, 2, 2), None, None)
        };

        // LANs.
        veth_pair(&onprem_host, HOST_IF, &onprem_gw, LAN_IF)?;
        onprem_host.add_addr(HOST_IF, &format!("{onprem_host_ip}/24"))?;
        onprem_gw.add_addr(LAN_IF, &format!("{onprem_gw_lan_ip}/24"))?;
        veth_pair(&azure_host, HOST_IF, &azure_gw, LAN_IF)?;
        azure_host.add_addr(HOST_IF, &format!("{azure_host_ip}/24"))?;
        azure_gw.add_addr(LAN_IF, &format!("{azure_gw_lan_ip}/24"))?;
        onprem_host.add_route(&azure_lan.to_string(), onprem_gw_lan_ip)?;
        azure_host.add_route(&onprem_lan.to_string(), azure_gw_lan_ip)?;

        // Underlay.
        match (&router, router_onprem_ip, router_azure_ip) {
            (Some(r), Some(r_on), Some(r_az)) => {
                veth_pair(&onprem_gw, WAN_IF, r, ROUTER_ONPREM_IF)?;
                veth_pair(r, ROUTER_AZURE_IF, &azure_gw, WAN_IF)?;
                onprem_gw.add_addr(WAN_IF, &format!("{onprem_gw_wan_ip}/24"))?;
                r.add_addr(ROUTER_ONPREM_IF, &format!("{r_on}/24"))?;
                r.add_addr(ROUTER_AZURE_IF, &format!("{r_az}/24"))?;
                azure_gw.add_addr(WAN_IF, &format!("{azure_gw_wan_ip}/24"))?;
                onprem_gw.add_route("198.51.100.0/24", r_on)?;
                azure_gw.add_route("192.0.2.0/24", r_az)?;
                r.set_forwarding(true)?;
            }
            _ => {
                veth_pair(&onprem_gw, WAN_IF, &azure_gw, WAN_IF)?;
                onprem_gw.add_addr(WAN_IF, &format!("{onprem_gw_wan_ip}/24"))?;
                azure_gw.add_addr(WAN_IF, &format!("{azure_gw_wan_ip}/24"))?;
            }
        }
        if let Some(mtu) = o.underlay_mtu {
            onprem_gw.set_mtu(WAN_IF, mtu)?;
            azure_gw.set_mtu(WAN_IF, mtu)?;
            if let Some(r) = &router {
                r.set_mtu(ROUTER_ONPREM_IF, mtu)?;
                r.set_mtu(ROUTER_AZURE_IF, mtu)?;
            }
        }
        onprem_gw.set_forwarding(true)?;
        azure_gw.set_forwarding(true)?;

        let lab = Lab {
            onprem_host,
            onprem_gw,
            router,
            azure_gw,
            azure_host,
            onprem_lan,
            azure_lan,
            onprem_host_ip,
            onprem_gw_lan_ip,
            onprem_gw_wan_ip,
            azure_gw_wan_ip,
            azure_gw_lan_ip,
            azure_host_ip,
            router_onprem_ip,
            router_azure_ip,
        };
        if o.plain_routes {
            lab.add_plain_routes()?;
        }
        Ok(lab)
    }

    /// Routes each LAN to the other through the underlay in clear (no tunnel).
    pub fn add_plain_routes(&self) -> Result<()> {
        let (on_next, az_next) = match (self.router_onprem_ip, self.router_azure_ip) {
            (Some(a), Some(b)) => (a, b),
            _ => (self.azure_gw_wan_ip, self.onprem_gw_wan_ip),
        };
        self.onprem_gw
            .replace_route(&self.azure_lan.to_string(), Some(on_next), None)?;
        self.azure_gw
            .replace_route(&self.onprem_lan.to_string(), Some(az_next), None)?;
        if let Some(r) = &self.router {
            r.replace_route(
                &self.onprem_lan.to_string(),
                Some(self.onprem_gw_wan_ip),
                None,
            )?;
            r.replace_route(
                &self.azure_lan.to_string(),
                Some(self.azure_gw_wan_ip),
                None,
            )?;
        }
        Ok(())
    }

    /// Removes the routes of [`Lab::add_plain_routes`].
    pub fn del_plain_routes(&self) -> Result<()> {
        self.onprem_gw.del_route(&self.azure_lan.to_string())?;
        self.azure_gw.del_route(&self.onprem_lan.to_string())?;
        if let Some(r) = &self.router {
            r.del_route(&self.onprem_lan.to_string())?;
            r.del_route(&self.azure_lan.to_string())?;
        }
        Ok(())
    }

    /// Keeps all namespaces after this value is gone (e.g. `hybridgw lab up`); returns their names.
    /// Delete them later with [`crate::delete_named`].
    pub fn persist(self) -> Vec<String> {
        let Lab {
            onprem_host,
            onprem_gw,
            router,
            azure_gw,
            azure_host,
            ..
        } = self;
        let mut v = vec![onprem_host.persist(), onprem_gw.persist()];
        if let Some(r) = router {
            v.push(r.persist());
        }
        v.push(azure_gw.persist());
        v.push(azure_host.persist());
        v
    }

    /// All namespaces, in path order (host, gateway, [router], gateway, host).
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut v = vec![&self.onprem_host, &self.onprem_gw];
        if let Some(r) = &self.router {
            v.push(r);
        }
        v.extend([&self.azure_gw, &self.azure_host]);
        v
    }
}
