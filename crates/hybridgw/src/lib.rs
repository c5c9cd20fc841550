//! hybridgw: the site-to-site IPsec appliance (RFC 7296 IKEv2, RFC 4303 ESP, RFC 3948 UDP
//! encapsulation): configuration, control socket, daemon, routes and the lab.

pub mod azure;
pub mod capture;
pub mod check;
pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod lab;
pub mod lab_failover;
pub mod lab_ha;
pub(crate) mod lab_probes;
pub mod lab_stateful;
pub mod logging;
pub mod metrics;
pub mod pathfail;
pub mod proposals;
pub mod replication;
pub mod routes;
pub mod supervisor;
