//! Floating routes for the VNet prefixes through the tunnel, managed with rtnetlink (RFC 3549,
//! rtnetlink(7) `RTM_NEWROUTE` / `RTM_DELROUTE` / `RTM_GETROUTE`).
//!
//! Three layers, from the kernel's point of view, for every VNet prefix:
//! 1. the ExpressRoute route (installed by BGP or by the operator, not by this module), e.g. metric 100;
//! 2. the **backup** route through the tunnel with a worse metric (e.g. 200), always installed: when
//!    the ExpressRoute route disappears (link down) the kernel falls back on its own, immediately;
//! 3. the **override** route through the tunnel with a better metric (e.g. 10), installed only while
//!    the path monitor says the primary path is down. This is what handles "link up but
//!    blackholing", where the ExpressRoute route stays in the table. Removing it on recovery hands
//!    the traffic back in one netlink message, without a moment without a route.
//!
//! The ExpressRoute route is never touched, so the module is correct whoever owns it (BIRD, a
//! static configuration, systemd-networkd). Which path really carries each prefix is read back
//! from the kernel (`RTM_GETROUTE` lookup of the prefix's address), not assumed.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::monitor::PathState;
use crate::prefix::Ipv4Prefix;

/// The metric of the always-present backup routes by default (worse than a typical ER route).
pub const DEFAULT_BACKUP_METRIC: u32 = 200;
/// The metric of the override routes by default (better than any ER route from BIRD, metric 32).
pub const DEFAULT_OVERRIDE_METRIC: u32 = 10;

/// What the route manager installs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteConfig {
    /// The VNet prefixes.
    pub prefixes: Vec<Ipv4Prefix>,
    /// The tunnel interface (the TUN of the connection).
    pub tunnel_interface: String,
    /// A gateway on the tunnel, if it is not point-to-point (a TUN needs none).
    pub tunnel_gateway: Option<Ipv4Addr>,
    /// The primary (ExpressRoute) interface: status reports a prefix routed through it as primary.
    pub primary_interface: String,
    /// Metric of the floating backup routes: must be worse (higher) than the ExpressRoute route's.
    pub backup_metric: u32,
    /// Metric of the override routes installed while the primary is down: must be better (lower).
    pub override_metric: u32,
    /// Routing table (254 = main).
    pub table: u32,
}

impl RouteConfig {
    /// A configuration with the default metrics in the main table.
    pub fn new(prefixes: Vec<Ipv4Prefix>, tunnel_interface: &str, primary_interface: &str) -> Self {
        RouteConfig {
            prefixes,
            tunnel_interface: tunnel_interface.to_string(),
            tunnel_gateway: None,
            primary_interface: primary_interface.to_string(),
            backup_metric: DEFAULT_BACKUP_METRIC,
            override_metric: DEFAULT_OVERRIDE_METRIC,
            table: 254,
        }
    }
}

/// Route manager errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// An interface does not exist.
    #[error("no interface named `{0}`")]
    NoInterface(String),
    /// The metrics are not ordered override < backup, or a value is invalid.
    #[error("invalid route configuration: {0}")]
    Config(&'static str),
    /// The kernel refused a request.
    #[error("netlink: {what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A sysctl could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Which path carries a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Carrier {
    /// The primary (ExpressRoute) interface.
    Primary,
    /// The tunnel.
    Tunnel,
    /// Another interface (a route this module does not know about).
    Other,
    /// No route at all (unreachable).
    Unreachable,
}

impl std::fmt::Display for Carrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Carrier::Primary => "expressroute",
            Carrier::Tunnel => "vpn",
            Carrier::Other => "other",
            Carrier::Unreachable => "unreachable",
        })
    }
}

/// One line of `hybridgw status`: which path carries a prefix, and since when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PrefixStatus {
    /// The VNet prefix.
    pub prefix: Ipv4Prefix,
    /// The path the kernel uses for it now.
    pub carrier: Carrier,
    /// The output interface index the kernel chose (0 when unreachable).
    pub ifindex: u32,
    /// Since when this path carries it (first observation, or last change).
    pub since: SystemTime,
    /// Whether the override (failover) route is installed for it.
    pub overridden: bool,
}

impl PrefixStatus {
    /// One line for `hybridgw status`, e.g.
    /// `198.19.1.0/24 via vpn for 12s (failover override)`.
    pub fn describe(&self, now: SystemTime) -> String {
        let age = now.duration_since(self.since).unwrap_or_default().as_secs();
        let how = if self.overridden {
            " (failover override)"
        } else {
            ""
        };
        format!("{} via {} for {}s{}", self.prefix, self.carrier, age, how)
    }
}

/// A cloneable read handle on the per-prefix status, for a status command.
#[derive(Clone, Debug, Default)]
pub struct StatusHandle(Arc<Mutex<Vec<PrefixStatus>>>);

impl StatusHandle {
    /// A copy of the current per-prefix status.
    pub fn snapshot(&self) -> Vec<PrefixStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Makes the kernel skip routes through `ifname` while it has no carrier
/// (`net.ipv4.conf.IF.ignore_routes_with_linkdown = 1`, ip-sysctl.rst). Without it a route through
/// a link whose carrier is gone stays preferred (only an administratively down link loses its
/// routes). Applies to the network namespace of the calling thread.
pub fn ignore_routes_with_linkdown(ifname: &str) -> Result<(), RouteError> {
    let ok = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'.');
    if !ok {
        return Err(RouteError::Config("bad interface name"));
    }
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/ignore_routes_with_linkdown");
    std::fs::write(&path, b"1").map_err(|source| RouteError::Io {
        what: format!("writing {path}"),
        source,
    })
}

/// Installs and withdraws the tunnel routes of the VNet prefixes, and records which path carries
/// each prefix.
#[derive(Debug)]
pub struct RouteManager {
    handle: Handle,
    cfg: RouteConfig,
    tunnel_index: u32,
    primary_index: u32,
    overriding: bool,
    status: StatusHandle,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RouteError {
    let what = what.into();
    move |source| RouteError::Netlink { what, source }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

async fn ifindex(handle: &Handle, name: &str) -> Result<u32, RouteError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) => Err(RouteError::NoInterface(name.to_string())),
        Err(e) if is_errno(&e, libc::ENODEV) => Err(RouteError::NoInterface(name.to_string())),
        Err(e) => Err(nl(format!("looking up interface {name}"))(e)),
    }
}

impl RouteManager {
    /// Resolves the interfaces and checks the configuration. `handle` comes from
    /// `rtnetlink::new_connection()` (in the namespace to manage).
    pub async fn new(handle: Handle, cfg: RouteConfig) -> Result<Self, RouteError> {
        if cfg.override_metric >= cfg.backup_metric {
            return Err(RouteError::Config(
                "override_metric must be lower (better) than backup_metric",
            ));
        }
        if cfg.table == 0 || cfg.table > 0xffff_fff0 {
            return Err(RouteError::Config("table must be 1-4294967280"));
        }
        if cfg.tunnel_interface == cfg.primary_interface {
            return Err(RouteError::Config(
                "tunnel and primary interface are the same",
            ));
        }
        let tunnel_index = ifindex(&handle, &cfg.tunnel_interface).await?;
        let primary_index = ifindex(&handle, &cfg.primary_interface).await?;
        Ok(RouteManager {
            handle,
            cfg,
            tunnel_index,
            primary_index,
            overriding: false,
            status: StatusHandle::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RouteConfig {
        &self.cfg
    }

    /// Whether the override routes are installed (traffic forced onto the tunnel).
    pub fn is_overriding(&self) -> bool {
        self.overriding
    }

    /// A read handle on the per-prefix status (updated by [`RouteManager::refresh`]).
    pub fn status_handle(&self) -> StatusHandle {
        self.status.clone()
    }

    fn message(&self, p: &Ipv4Prefix, metric: u32) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(p.addr(), p.prefix_len())
            .output_interface(self.tunnel_index)
            .priority(metric)
            .table_id(self.cfg.table)
            .protocol(RouteProtocol::Static);
        if let Some(gw) = self.cfg.tunnel_gateway {
            b = b.gateway(gw);
        }
        b.build()
    }

    async fn add(&self, p: &Ipv4Prefix, metric: u32) -> Result<(), RouteError> {
        self.handle
            .route()
            .add(self.message(p, metric))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding {p} metric {metric} via the tunnel")))
    }

    async fn del(&self, p: &Ipv4Prefix, metric: u32) -> Result<(), RouteError> {
        match self
            .handle
            .route()
            .del(self.message(p, metric))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            // Already gone (the tunnel interface was deleted, or someone removed it): fine.
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(format!("deleting {p} metric {metric} via the tunnel"))(
                e,
            )),
        }
    }

    /// Installs (or re-installs) the floating backup routes through the tunnel, and removes
    /// override routes an earlier run may have left (the monitor starts undecided).
    pub async fn install_backup(&mut self) -> Result<(), RouteError> {
        for p in &self.cfg.prefixes {
            self.add(p, self.cfg.backup_metric).await?;
            if !self.overriding {
                self.del(p, self.cfg.override_metric).await?;
            }
        }
        Ok(())
    }

    /// The primary path is dead: installs the override routes so the tunnel wins even while
    /// the ExpressRoute route is still in the table.
    pub async fn fail_over(&mut self) -> Result<(), RouteError> {
        for p in &self.cfg.prefixes {
            self.add(p, self.cfg.override_metric).await?;
        }
        self.overriding = true;
        Ok(())
    }

    /// The primary path is back (after the hold-down): removes the override routes; the kernel
    /// returns to the ExpressRoute route, or keeps the backup one if there is none.
    pub async fn fail_back(&mut self) -> Result<(), RouteError> {
        for p in &self.cfg.prefixes {
            self.del(p, self.cfg.override_metric).await?;
        }
        self.overriding = false;
        Ok(())
    }

    /// Applies a monitor decision: `Down` fails over; `Up` fails back; `Unknown` leaves routing
    /// to the kernel's metrics (no override).
    pub async fn apply(&mut self, state: PathState) -> Result<(), RouteError> {
        match state {
            PathState::Down => self.fail_over().await,
            PathState::Up | PathState::Unknown => {
                if self.overriding {
                    self.fail_back().await
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Removes every route this manager installed (backup and override).
    pub async fn remove_all(&mut self) -> Result<(), RouteError> {
        for p in &self.cfg.prefixes {
            self.del(p, self.cfg.override_metric).await?;
            self.del(p, self.cfg.backup_metric).await?;
        }
        self.overriding = false;
        Ok(())
    }

    /// Asks the kernel which interface it uses for each prefix and updates the status (a change
    /// restarts its `since` at `now`). Returns a copy of the status.
    pub async fn refresh(&mut self, now: SystemTime) -> Result<Vec<PrefixStatus>, RouteError> {
        let mut fresh = Vec::with_capacity(self.cfg.prefixes.len());
        for p in &self.cfg.prefixes {
            let q = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(p.addr(), 32)
                .build();
            let mut replies = self.handle.route().get(q).execute();
            let oif = match replies.try_next().await {
                Ok(Some(m)) => m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }),
                Ok(None) => None,
                Err(e) if is_errno(&e, libc::ENETUNREACH) || is_errno(&e, libc::EHOSTUNREACH) => {
                    None
                }
                Err(e) => return Err(nl(format!("looking up the route of {p}"))(e)),
            };
            let carrier = match oif {
                None => Carrier::Unreachable,
                Some(i) if i == self.primary_index => Carrier::Primary,
                Some(i) if i == self.tunnel_index => Carrier::Tunnel,
                Some(_) => Carrier::Other,
            };
            fresh.push((*p, carrier, oif.unwrap_or(0)));
        }
        let mut st = self.status.0.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::take(&mut *st);
        for (prefix, carrier, ifindex) in fresh {
            let since = old
                .iter()
                .find(|s| s.prefix == prefix && s.carrier == carrier && s.ifindex == ifindex)
                .map_or(now, |s| s.since);
            st.push(PrefixStatus {
                prefix,
                carrier,
                ifindex,
                since,
                overridden: self.overriding,
            });
        }
        Ok(st.clone())
    }
}
