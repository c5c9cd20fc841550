//! HA state replication, sans-IO: the master appliance of a keepalived pair sends the backup
//! everything needed to continue the same IKE SAs (RFC 7296) and ESP Child SAs (RFC 4303)
//! after a takeover, so the peer never notices; the approach of RFC 6311 §3 without its
//! message-ID synchronisation exchange (the peer need not support it). No sockets, no clock
//! reads, no files: nothing replicated is written to disk.
//!
//! # Pieces
//!
//! * [`model`]: plain values for an IKE SA ([`IkeSaReplica`]: with its request in flight,
//!   queued work, Child SA links and timers relative to replication), a Child SA
//!   ([`ChildSaReplica`]) and a Child SA's sequence-number high-water marks ([`SeqMark`]);
//!   keys are [`Secret`]s (zeroized on drop, never printed), carried IKE messages
//!   ([`SentMessage`]) print only their lengths. Independent of the `ike` and `esp` crates.
//! * [`message`]: [`Message`]: a full [`Snapshot`], an upsert or removal of one SA, marks, a
//!   heartbeat.
//! * [`wire`]: the explicit binary encoding, header in clear, body sealed; every count and
//!   length bounded by [`limits`]; decoding is total and canonical.
//! * [`channel`]: [`ChannelConfig`] (shared secret, both sender ids), [`Sender`] (seals with an
//!   increasing counter) and [`Receiver`] (authenticates, orders, counts refusals by reason in
//!   [`Counters`]). AES-256-GCM under HKDF-SHA256 keys, one per direction and epoch.
//! * [`replica`]: [`Replica`], the backup's table, and its [`Replica::takeover`] view: where
//!   each Child SA's outbound sequence numbers restart, or that it must be rekeyed, and how
//!   long ago each IKE SA was replicated, to age its relative timers ([`IkeTimers::aged`]).
//!
//! # Protocol
//!
//! The master creates a [`Sender`] with a fresh epoch (larger at every start: wall-clock
//! nanoseconds), sends a snapshot first, then an upsert before an SA sends anything (an IKE SA
//! after every exchange, before the message leaves: its message IDs and last response must
//! never lag the wire), a removal when an SA is deleted, marks every N packets or T ms per
//! Child SA, and heartbeats when idle. The backup feeds each datagram to
//! [`Receiver::open`] and what it accepts to [`Replica::apply`]. On a gap or a new master
//! epoch the replica reports itself out of sync until the next snapshot.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use ha::{ChannelConfig, Message, Receiver, Replica, Sender, Snapshot};
//! let secret = [0x5a; 32];
//! let mut master = Sender::new(&ChannelConfig::new(&secret, 1, 2)?, 1_700_000_000_000_000_000)?;
//! let mut rx = Receiver::new(&ChannelConfig::new(&secret, 2, 1)?);
//! let mut table = Replica::new();
//! let datagram = master.seal(&Message::Snapshot(Snapshot::default())).unwrap();
//! let t0 = Instant::now();
//! table.apply(t0, rx.open(&datagram).unwrap()).unwrap();
//! assert!(table.in_sync());
//! assert!(rx.open(&datagram).is_err()); // a replay
//! assert_eq!(rx.counters().refused_total(), 1);
//! // The master fails; 3 s later the backup takes over, allowing 1024 packets per mark.
//! let view = table.takeover(t0 + Duration::from_secs(3), 1024);
//! for ike in &view.ike {
//!     // Re-anchor ike.timers() (aged by ike.age) and ike.children() to the local clock.
//!     let _ = (ike.timers(), ike.children().count());
//! }
//! assert!(view.in_sync && view.ike.is_empty() && view.child.is_empty());
//! # Ok::<(), ha::ConfigError>(())
//! ```
#![forbid(unsafe_code)]

pub mod channel;
pub mod limits;
pub mod message;
pub mod model;
pub mod replica;
pub mod secret;
pub mod wire;

pub use channel::{
    ChannelConfig, ConfigError, Counters, Received, Receiver, Refusal, RefusalKind, SealError,
    Sender,
};
pub use message::{Message, MessageType, Snapshot};
pub use model::{
    ChildKeys, ChildLifetime, ChildLink, ChildSaReplica, ChildStatus, IkeKeys, IkeSaReplica,
    IkeSpis, IkeTimers, IkeTransforms, InFlight, LastResponse, NatState, QueuedWork, RequestKind,
    SentMessage, SeqMark, TrafficCounters, TrafficSelector,
};
pub use replica::{
    ApplyError, ChildTakeover, IkeTakeover, Outbound, Replica, ReplicaCounters, Takeover,
    outbound_start,
};
pub use secret::Secret;
pub use wire::{DecodeError, Header, Problem, decode_body, encode_body};
