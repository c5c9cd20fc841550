//! ExpressRoute with VPN failover, the building blocks: on-prem ASN validation for Azure
//! ([`asn`]), the on-prem BIRD 2 configurations ([`bird`], RFC 4271 BGP with RFC 5880 BFD: one
//! appliance with ExpressRoute, or Azure's dual redundancy with ECMP) and a client for BIRD's
//! control socket ([`birdctl`]), a BFD-like path monitor ([`monitor`], sans-IO) with its ICMP
//! prober ([`probe`]), floating routes through rtnetlink ([`routes`]) and the task that ties
//! them together ([`driver`]).
//!
//! Choosing the probe: the target must be across the primary path (a VNet VM, or the far edge),
//! and the source an address whose *return* route stays on the primary path whatever the
//! failover does (the circuit link's own address, or a /32 advertised only over ExpressRoute).
//! Otherwise, once the far side fails over too, the replies come back through the tunnel, the
//! prober (pinned to the circuit interface) never sees them, and the path never recovers.
//!
//! The static (RRAS-like) mode, in a tokio runtime inside the router's network namespace:
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use failover::{driver, monitor::MonitorConfig, probe::{IcmpProber, ProbeConfig}, routes};
//! let (conn, handle, _) = rtnetlink::new_connection()?;
//! tokio::spawn(conn);
//! let cfg = routes::RouteConfig::new(vec!["198.19.1.0/24".parse()?], "hgw-azure", "er0");
//! routes::ignore_routes_with_linkdown("er0")?;
//! let mut rm = routes::RouteManager::new(handle, cfg).await?;
//! rm.install_backup().await?;
//! let prober = IcmpProber::new(&ProbeConfig {
//!     interface: Some("er0".into()),
//!     source: Some("192.0.2.17".parse()?), // the on-prem end of the circuit link
//!     target: "198.19.1.10".parse()?,
//! })?;
//! let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
//! driver::run_failover(MonitorConfig::default(), prober, Some(&mut rm), tx).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod asn;
pub mod bird;
pub mod birdctl;
pub mod driver;
pub mod monitor;
pub mod prefix;
pub mod probe;
pub mod routes;

pub use prefix::Ipv4Prefix;
