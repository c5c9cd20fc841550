//! Routes into the tunnel interfaces through rtnetlink (RFC 3549 netlink): remote prefixes with
//! their metric ("prefix:metric"), added when a Child SA is up and removed when it goes away;
//! multipath (ECMP) routes over the tunnels of an active-active pair.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::config::Prefix;

/// A netlink route handle bound to the daemon's network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

/// The routing protocol number we mark our routes with (`ip route` shows "proto static").
const PROTO: RouteProtocol = RouteProtocol::Static;

impl Netlink {
    /// Open a netlink connection (its I/O task runs on the current tokio runtime).
    pub fn new() -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The interface index of `name`.
    pub async fn ifindex(&self, name: &str) -> Result<u32, String> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(l.header.index),
            Ok(None) => Err(format!("no interface named {name}")),
            Err(e) => Err(format!("interface {name}: {e}")),
        }
    }

    /// Set the interface up.
    pub async fn link_up(&self, index: u32) -> Result<(), String> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| format!("set link {index} up: {e}"))
    }

    /// Add an address to the interface (e.g. an APIPA BGP address on the tunnel).
    pub async fn add_address(&self, index: u32, p: Prefix) -> Result<(), String> {
        self.handle
            .address()
            .add(index, p.addr, p.len)
            .replace()
            .execute()
            .await
            .map_err(|e| format!("add address {p}: {e}"))
    }

    fn message(
        p: Prefix,
        metric: u32,
        index: u32,
    ) -> Result<rtnetlink::packet_route::route::RouteMessage, String> {
        let b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(p.addr, p.len)
            .map_err(|e| format!("route {p}: {e:?}"))?;
        Ok(b.output_interface(index)
            .priority(metric)
            .protocol(PROTO)
            .build())
    }

    /// Add (or replace) `p` via interface `index` with `metric`.
    pub async fn add_route(&self, p: Prefix, metric: u32, index: u32) -> Result<(), String> {
        let m = Self::message(p, metric, index)?;
        self.handle
            .route()
            .add(m)
            .replace()
            .execute()
            .await
            .map_err(|e| format!("add route {p} metric {metric}: {e}"))
    }

    /// Add (or replace) `p` with `metric` as one multipath route over every interface in
    /// `indexes`, equal weights (ECMP: the kernel picks a next hop per flow by hash).
    pub async fn add_multipath(
        &self,
        p: Prefix,
        metric: u32,
        indexes: &[u32],
    ) -> Result<(), String> {
        use rtnetlink::packet_route::route::RouteNextHop;
        let hops: Vec<RouteNextHop> = indexes
            .iter()
            .map(|i| {
                let mut h = RouteNextHop::default();
                h.interface_index = *i;
                h
            })
            .collect();
        let m = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(p.addr, p.len)
            .map_err(|e| format!("route {p}: {e:?}"))?
            .priority(metric)
            .protocol(PROTO)
            .multipath(hops)
            .build();
        self.handle
            .route()
            .add(m)
            .replace()
            .execute()
            .await
            .map_err(|e| format!("add multipath route {p} metric {metric}: {e}"))
    }

    /// Remove `p` with `metric` whatever its next hops (a single or a multipath route); a route
    /// already gone is not an error.
    pub async fn del_route_any(&self, p: Prefix, metric: u32) -> Result<(), String> {
        let m = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(p.addr, p.len)
            .map_err(|e| format!("route {p}: {e:?}"))?
            .priority(metric)
            .protocol(PROTO)
            .build();
        match self.handle.route().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(format!("delete route {p} metric {metric}: {e}")),
        }
    }

    /// Remove `p` via interface `index` with `metric`; a route already gone is not an error.
    pub async fn del_route(&self, p: Prefix, metric: u32, index: u32) -> Result<(), String> {
        let m = Self::message(p, metric, index)?;
        match self.handle.route().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(format!("delete route {p} metric {metric}: {e}")),
        }
    }
}
