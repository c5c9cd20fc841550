//! RFC 4303 ESP in tunnel mode, sans-IO: in-place seal/open, anti-replay, UDP encapsulation
//! (RFC 3948) and the SA database (RFC 4301 §4.4). No sockets, threads or clock reads; the caller
//! owns every buffer and nothing on the packet path allocates.
//!
//! # API overview
//!
//! * [`SaConfig`] describes one direction of a Child SA: SPI, [`Cipher`], [`Integrity`],
//!   keys ([`KeyMaterial`], zeroized, never printed), ESN, replay window and lifetime [`Limits`].
//!   [`Cipher::from_ike`] / [`Integrity::from_ike`] map negotiated IKEv2 transforms;
//!   [`Cipher::keymat_len`] / [`Integrity::key_len`] say how much keying material to derive.
//! * [`OutboundSa::seal`]`(&self, buf, payload, next_header)` encrypts `buf[payload]` in place.
//!   It needs [`OutboundSa::headroom`] bytes before the payload and [`OutboundSa::tailroom`]
//!   (at most [`OutboundSa::max_tailroom`], at most [`algo::MAX_TAILROOM`] for any suite) after
//!   it, and returns the range of the ESP packet (SPI through ICV) in `buf`. Sequence numbers
//!   come from an atomic counter, so one SA can be shared by several threads (`Arc`).
//! * [`InboundSa::open`]`(&self, packet)` verifies and decrypts an ESP packet in place and returns
//!   [`Opened`] (next header, inner packet range, sequence number) or a [`DropReason`]. The
//!   anti-replay window ([`replay`]) is lock-free: checked before decryption, marked after the
//!   ICV verified. For a standby appliance taking the SA over, [`InboundSa::window_state`]
//!   exports the window ([`WindowState`]: highest number and bitmap) and
//!   [`InboundSa::with_window`] restores it; [`OutboundSa::next_seq`] reads the outbound
//!   counter and [`OutboundSa::with_next_seq`] starts a new SA beyond it.
//! * [`classify_udp4500`] tells ESP, IKE (non-ESP marker) and NAT keepalives apart.
//! * [`SaDatabase`] holds inbound SAs by SPI and outbound policies by [`TrafficSelector`]s;
//!   [`SaDatabase::receive_udp4500`] is the whole inbound path for one datagram,
//!   [`SaDatabase::lookup_outbound`] picks the SA for an inner packet.
//! * Counters: [`InboundSa::stats`] / [`OutboundSa::stats`] return snapshots ([`InboundStats`],
//!   [`OutboundStats`]) with drops by reason ([`DropReason::name`] is the stable counter name);
//!   [`LifetimeState`] and `take_rekey_signal()` report soft ("rekey needed") and hard
//!   ("expired") limits. An outbound SA refuses to send before its sequence number would wrap.
//! * The crypto backend is the small trait set in [`crypto`]; [`crypto::DefaultBackend`]
//!   (aws-lc-rs) is the one place it is chosen.
//!
//! ```
//! use esp::{Cipher, InboundSa, Integrity, KeyMaterial, OutboundSa, SaConfig};
//! let cfg = SaConfig::new(0x1000, Cipher::AesGcm16_256, Integrity::None,
//!     KeyMaterial::from_slice(&[7; 36]), KeyMaterial::empty());
//! let (tx, rx) = (OutboundSa::new(&cfg)?, InboundSa::new(&cfg)?);
//! let inner = [0x45, 0, 0, 20, 0, 0, 0, 0, 64, 59, 0, 0, 198, 18, 0, 1, 198, 19, 0, 1];
//! let mut buf = [0u8; 128];
//! let at = tx.headroom();
//! buf[at..at + inner.len()].copy_from_slice(&inner);
//! let esp = tx.seal(&mut buf, at..at + inner.len(), esp::algo::NEXT_HEADER_IPV4).unwrap();
//! let packet = &mut buf[esp];
//! let opened = rx.open(packet).unwrap();
//! assert_eq!(&packet[opened.inner], &inner);
//! # Ok::<(), esp::ConfigError>(())
//! ```
#![forbid(unsafe_code)]

pub mod algo;
pub mod counters;
pub mod crypto;
pub mod error;
pub mod replay;
pub mod sa;
pub mod sad;
pub mod selector;
pub mod udp;

pub use algo::{Cipher, Integrity, Suite};
pub use counters::{
    DropCounts, InboundStats, LifetimeState, Limits, OutboundStats, SealErrorCounts,
};
pub use error::{ConfigError, DropReason, SealError};
pub use replay::WindowState;
pub use sa::{InboundSa, KeyMaterial, Opened, OutboundSa, SaConfig};
pub use sad::{DbStats, OutboundEntry, Received, SaDatabase};
pub use selector::{FlowKey, SelectorPolicy, TrafficSelector};
pub use udp::{NON_ESP_MARKER_LEN, Udp4500, classify_udp4500};
