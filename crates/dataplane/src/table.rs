//! The SA table the workers read without locks: inbound SAs by SPI (RFC 4303 section 2.1) and,
//! per tunnel, the outbound SA (route-based, any-to-any selectors) or the outbound SAs by traffic
//! selector (policy-based, RFC 4301 section 4.4.1), published as an immutable snapshot through
//! `arc-swap` and replaced whole by the control plane.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use esp::{FlowKey, InboundSa, OutboundSa, SelectorPolicy};

/// Index of a tunnel (a TUN interface) in the data plane, in the order of
/// [`crate::DataplaneConfig::tunnels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelId(pub usize);

/// How outbound packets reach an SA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundRoute {
    /// Route-based: everything routed into the tunnel's TUN uses this SA (any-to-any selectors).
    /// Installing replaces the previous outbound SA atomically (rekey).
    Any,
    /// Policy-based: packets matching these selectors use this SA. Installing replaces the SA of
    /// an existing entry with an equal policy atomically (rekey); otherwise the entry is added.
    Selectors(SelectorPolicy),
}

#[derive(Clone)]
pub(crate) struct InEntry {
    pub(crate) sa: Arc<InboundSa>,
    pub(crate) tunnel: TunnelId,
    /// `None` means any-to-any (route-based).
    pub(crate) selectors: Option<Arc<SelectorPolicy>>,
}

#[derive(Clone)]
pub(crate) struct OutEntry {
    pub(crate) sa: Arc<OutboundSa>,
}

#[derive(Clone, Default)]
pub(crate) struct TunnelTable {
    pub(crate) route: Option<OutEntry>,
    pub(crate) policies: Vec<(Arc<SelectorPolicy>, OutEntry)>,
    pub(crate) peer: Option<SocketAddr>,
    /// The local address this tunnel's datagrams leave from (wildcard-bound socket only).
    pub(crate) local: Option<std::net::IpAddr>,
}

impl TunnelTable {
    /// The outbound SA for the inner packet `pkt`.
    #[inline]
    pub(crate) fn lookup(&self, pkt: &[u8]) -> Option<&OutEntry> {
        if let Some(r) = &self.route {
            return Some(r);
        }
        if self.policies.is_empty() {
            return None;
        }
        let key = FlowKey::parse(pkt)?;
        self.policies
            .iter()
            .find(|(p, _)| p.matches_outbound(&key))
            .map(|(_, e)| e)
    }
}

/// One published snapshot.
#[derive(Clone, Default)]
pub(crate) struct Table {
    pub(crate) inbound: HashMap<u32, InEntry>,
    pub(crate) tunnels: Vec<TunnelTable>,
}

impl Table {
    /// Removes the SA named by (tunnel, direction, SPI) and returns how many entries went (0 or
    /// 1, or more for one outbound SA installed under several policies). Outbound SPIs are the
    /// peers' choice, so two tunnels (or two peers) may use the same one: nothing of another
    /// tunnel, and nothing of the other direction, is touched.
    pub(crate) fn remove_sa(
        &mut self,
        tunnel: TunnelId,
        direction: crate::Direction,
        spi: u32,
    ) -> usize {
        match direction {
            crate::Direction::Inbound => {
                if self.inbound.get(&spi).is_some_and(|e| e.tunnel == tunnel) {
                    self.inbound.remove(&spi);
                    1
                } else {
                    0
                }
            }
            crate::Direction::Outbound => {
                let Some(tt) = self.tunnels.get_mut(tunnel.0) else {
                    return 0;
                };
                let mut n = 0;
                if tt.route.as_ref().is_some_and(|e| e.sa.spi() == spi) {
                    tt.route = None;
                    n += 1;
                }
                let before = tt.policies.len();
                tt.policies.retain(|(_, e)| e.sa.spi() != spi);
                n + before - tt.policies.len()
            }
        }
    }

    pub(crate) fn with_tunnels(n: usize) -> Self {
        Self {
            inbound: HashMap::new(),
            tunnels: vec![TunnelTable::default(); n],
        }
    }
}

/// The writer side: a master copy behind a mutex (control plane only) and the published snapshot.
pub(crate) struct SaTable {
    master: Mutex<Table>,
    published: ArcSwap<Table>,
}

impl std::fmt::Debug for SaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaTable").finish_non_exhaustive()
    }
}

/// Errors from table updates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// No tunnel with that id.
    #[error("no tunnel {0:?}")]
    NoTunnel(TunnelId),
    /// An inbound SA with this SPI is already installed.
    #[error("inbound SPI {0:#010x} already installed")]
    DuplicateSpi(u32),
    /// A route-based tunnel takes only [`OutboundRoute::Any`], a policy-based one only
    /// [`OutboundRoute::Selectors`].
    #[error("outbound route does not fit the mode of tunnel {0:?}")]
    WrongMode(TunnelId),
}

impl SaTable {
    pub(crate) fn new(tunnels: usize) -> Self {
        let t = Table::with_tunnels(tunnels);
        Self {
            master: Mutex::new(t.clone()),
            published: ArcSwap::from_pointee(t),
        }
    }

    /// The current snapshot (lock-free).
    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Table>> {
        self.published.load()
    }

    /// A full `Arc` of the current snapshot (control plane use).
    pub(crate) fn load_full(&self) -> Arc<Table> {
        self.published.load_full()
    }

    /// Applies `f` to a copy of the master table and publishes the result when `f` succeeds.
    pub(crate) fn update<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, TableError>,
    ) -> Result<R, TableError> {
        let mut master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = master.clone();
        let r = f(&mut next)?;
        self.published.store(Arc::new(next.clone()));
        *master = next;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esp::{Cipher, Integrity, KeyMaterial, SaConfig, TrafficSelector};

    fn cfg(spi: u32) -> SaConfig {
        SaConfig::new(
            spi,
            Cipher::AesGcm16_256,
            Integrity::None,
            KeyMaterial::from_slice(&[7; 36]),
            KeyMaterial::empty(),
        )
    }

    fn pkt(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[3] = 28;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn publish_and_lookup() {
        let t = SaTable::new(2);
        let before = t.load_full();
        let policy = SelectorPolicy {
            local: vec![TrafficSelector::prefix("198.18.1.0".parse().unwrap(), 24)],
            remote: vec![TrafficSelector::prefix("198.19.1.0".parse().unwrap(), 24)],
        };
        t.update(|tb| {
            let sa = Arc::new(InboundSa::new(&cfg(0x1000)).unwrap());
            tb.inbound.insert(
                0x1000,
                InEntry {
                    sa,
                    tunnel: TunnelId(1),
                    selectors: None,
                },
            );
            let sa = Arc::new(OutboundSa::new(&cfg(0x2000)).unwrap());
            tb.tunnels[0]
                .policies
                .push((Arc::new(policy), OutEntry { sa }));
            let sa = Arc::new(OutboundSa::new(&cfg(0x3000)).unwrap());
            tb.tunnels[1].route = Some(OutEntry { sa });
            Ok(())
        })
        .unwrap();
        // The old snapshot is untouched: readers holding it see a consistent table.
        assert!(before.inbound.is_empty());
        let now = t.load();
        assert_eq!(now.inbound.get(&0x1000).map(|e| e.sa.spi()), Some(0x1000));
        assert!(!now.inbound.contains_key(&0x1001));
        let inside = pkt([198, 18, 1, 5], [198, 19, 1, 5]);
        let outside = pkt([198, 18, 1, 5], [198, 19, 2, 5]);
        assert_eq!(
            now.tunnels[0].lookup(&inside).map(|e| e.sa.spi()),
            Some(0x2000)
        );
        assert!(now.tunnels[0].lookup(&outside).is_none());
        assert!(
            now.tunnels[0].lookup(&[0x45]).is_none(),
            "garbage finds nothing"
        );
        assert_eq!(
            now.tunnels[1].lookup(&outside).map(|e| e.sa.spi()),
            Some(0x3000)
        );
        // A failing update publishes nothing.
        let r: Result<(), _> = t.update(|tb| {
            tb.inbound.clear();
            Err(TableError::DuplicateSpi(1))
        });
        assert!(r.is_err());
        assert_eq!(t.load().inbound.len(), 1);
    }

    #[test]
    fn removal_is_by_tunnel_direction_and_spi() {
        use crate::Direction::{Inbound, Outbound};
        let t = SaTable::new(2);
        let policy = |n: u8| SelectorPolicy {
            local: vec![TrafficSelector::prefix("198.18.0.0".parse().unwrap(), 24)],
            remote: vec![TrafficSelector::prefix(
                std::net::Ipv4Addr::new(198, 19, n, 0).into(),
                24,
            )],
        };
        // SPI 0x5000 is our inbound SPI on tunnel 0, and (chosen by the peers) the outbound SPI
        // of tunnel 1's route and of one of tunnel 0's policies.
        t.update(|tb| {
            let sa = Arc::new(InboundSa::new(&cfg(0x5000)).unwrap());
            tb.inbound.insert(
                0x5000,
                InEntry {
                    sa,
                    tunnel: TunnelId(0),
                    selectors: None,
                },
            );
            let sa = Arc::new(OutboundSa::new(&cfg(0x5000)).unwrap());
            tb.tunnels[1].route = Some(OutEntry { sa });
            for (n, spi) in [(1u8, 0x5000u32), (2, 0x6000)] {
                let sa = Arc::new(OutboundSa::new(&cfg(spi)).unwrap());
                tb.tunnels[0]
                    .policies
                    .push((Arc::new(policy(n)), OutEntry { sa }));
            }
            Ok(())
        })
        .unwrap();
        // The wrong tunnel or direction removes nothing.
        assert_eq!(
            t.update(|tb| Ok(tb.remove_sa(TunnelId(1), Inbound, 0x5000))),
            Ok(0)
        );
        assert_eq!(
            t.update(|tb| Ok(tb.remove_sa(TunnelId(5), Outbound, 0x5000))),
            Ok(0)
        );
        // Tunnel 0's outbound 0x5000 goes; its inbound 0x5000 and tunnel 1's route stay.
        assert_eq!(
            t.update(|tb| Ok(tb.remove_sa(TunnelId(0), Outbound, 0x5000))),
            Ok(1)
        );
        let now = t.load_full();
        assert!(now.inbound.contains_key(&0x5000));
        assert_eq!(
            now.tunnels[1].route.as_ref().map(|e| e.sa.spi()),
            Some(0x5000)
        );
        let left: Vec<u32> = now.tunnels[0]
            .policies
            .iter()
            .map(|(_, e)| e.sa.spi())
            .collect();
        assert_eq!(left, vec![0x6000]);
        assert_eq!(
            t.update(|tb| Ok(tb.remove_sa(TunnelId(0), Inbound, 0x5000))),
            Ok(1)
        );
        assert!(t.load().inbound.is_empty());
        assert_eq!(
            t.load().tunnels[1].route.as_ref().map(|e| e.sa.spi()),
            Some(0x5000)
        );
    }
}
