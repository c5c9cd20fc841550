//! IKEv2 (RFC 7296), sans-IO: wire codec, transforms and proposals, key exchange, PSK
//! authentication and the IKE/Child SA state machines. No sockets, no clock reads.
//!
//! The driver owns the sockets (UDP 500 and 4500) and the clock; an [`Endpoint`] owns every IKE
//! SA of its configured connections. An established IKE SA can be exported as plain data
//! ([`IkeSaState`], [`Endpoint::export_ike_sas`]) and continued by another endpoint with the
//! same configuration ([`Endpoint::import_ike_sa`]): an HA standby taking over.
//!
//! ```no_run
//! use ike::{ConnectionConfig, Endpoint, Event};
//! use ike::crypto::{Psk, SystemRng};
//! use ike::proposal::Proposal;
//! use std::time::Instant;
//!
//! let conn = ConnectionConfig::new(
//!     "azure",
//!     "192.0.2.1:500".parse().unwrap(),
//!     "192.0.2.2:500".parse().unwrap(),
//!     Psk::from("secret"),
//!     vec![Proposal::parse_ike("aes256-sha256-modp2048").unwrap()],
//!     vec![Proposal::parse_esp("aes256gcm16").unwrap()],
//! );
//! let mut ep = Endpoint::new(vec![conn], Box::new(SystemRng::new()));
//! ep.initiate("azure", Instant::now()).unwrap();
//! // loop: send ep.poll_transmit() from t.local to t.remote; feed received datagrams to
//! // ep.handle(now, local, remote, bytes); call ep.handle_timeout(now) at ep.poll_timeout();
//! while let Some(ev) = ep.poll_event() {
//!     if let Event::ChildSaEstablished(child) = ev {
//!         // install child.inbound_spi / child.outbound_spi / keys / selectors in the data plane
//!         let _ = child;
//!     }
//! }
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod crypto;
mod negotiate;
pub mod proposal;
pub mod sa;
pub mod transform;
pub mod ts;
pub mod wire;

pub use config::{
    ChildPolicy, ConnectionConfig, ConnectionMode, DpdAction, DpdConfig, Identity, Lifetime,
    RetransmitConfig,
};
pub use sa::{
    COOKIE_SECRET_LIFETIME, ChildSa, ChildSaState, ChildSaStatus, Counters, DirectionKeys,
    DropReason, Endpoint, Event, FailReason, IkeSaId, IkeSaState, ImportError, InFlightRequest,
    InitiateError, NatState, QueuedRequest, RequestKind, SentMessage, Transmit,
};
