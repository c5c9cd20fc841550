//! What the IKE endpoint hands back to its driver (RFC 7296 §1, §2.17): datagrams to send,
//! established/failed/deleted SAs with the keys the ESP data plane needs, and drop reasons.

use crate::crypto::SecretBytes;
use crate::transform::{EncrId, IntegId};
use crate::wire::{NotifyType, TrafficSelector, WireError};
use std::net::SocketAddr;
use std::time::Instant;

/// A datagram to send. On port 4500 `payload` already starts with the non-ESP marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Our address (the socket to send from).
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// UDP payload, sent as is.
    pub payload: Vec<u8>,
}

/// Identifies an IKE SA inside one endpoint: our own SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IkeSaId(pub u64);

/// Keys of one direction of a Child SA (RFC 7296 §2.17). For AES-GCM `encr` is key || 4-byte
/// salt and `integ` is empty. `Debug` prints only lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionKeys {
    /// Encryption key material.
    pub encr: SecretBytes,
    /// Integrity key (empty for AEAD).
    pub integ: SecretBytes,
}

/// A Child SA ready for the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    /// Connection name.
    pub conn: String,
    /// The IKE SA that created it.
    pub ike_sa: IkeSaId,
    /// Whether we were the initiator of the exchange that created it.
    pub initiator: bool,
    /// SPI the peer puts on packets to us.
    pub inbound_spi: u32,
    /// SPI we put on packets to the peer.
    pub outbound_spi: u32,
    /// ESP encryption transform.
    pub encr: EncrId,
    /// Encryption key length in bits (without salt).
    pub encr_key_bits: u16,
    /// ESP integrity transform (`None` for AEAD).
    pub integ: Option<IntegId>,
    /// Extended sequence numbers negotiated.
    pub esn: bool,
    /// Keys for packets we receive.
    pub inbound: DirectionKeys,
    /// Keys for packets we send.
    pub outbound: DirectionKeys,
    /// Narrowed selectors of our side.
    pub local_ts: Vec<TrafficSelector>,
    /// Narrowed selectors of the peer's side.
    pub remote_ts: Vec<TrafficSelector>,
    /// Outer local address (port 4500 when encapsulated).
    pub local: SocketAddr,
    /// Outer remote address.
    pub remote: SocketAddr,
    /// ESP in UDP (RFC 3948).
    pub udp_encap: bool,
}

/// Why an IKE SA or Child SA could not be established.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// No common proposal (we or the peer said NO_PROPOSAL_CHOSEN).
    NoProposalChosen,
    /// The peer asked for a DH group we do not offer, or we gave up retrying.
    InvalidKePayload,
    /// AUTH did not verify (either direction).
    AuthenticationFailed,
    /// The peer's identity does not match the configured one.
    IdentityMismatch,
    /// No traffic selector overlap.
    TsUnacceptable,
    /// No response after all retransmissions.
    Timeout,
    /// The half-open SA never saw IKE_AUTH.
    HalfOpenExpired,
    /// The peer sent another error notify.
    PeerError(NotifyType),
    /// The peer's message broke the protocol (missing payloads, bad key exchange value, ...).
    Protocol(&'static str),
    /// The IKE SA a Child SA was asked for on was deleted or failed before the Child SA could
    /// be created.
    IkeSaClosed,
}

/// Something for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// IKE SA authenticated.
    IkeSaEstablished {
        /// Connection.
        conn: String,
        /// Our SPI.
        id: IkeSaId,
        /// Whether we initiated it.
        initiator: bool,
        /// Initiator's SPI.
        ispi: u64,
        /// Responder's SPI.
        rspi: u64,
        /// Outer local address.
        local: SocketAddr,
        /// Outer remote address.
        remote: SocketAddr,
        /// When this IKE SA's IKE_SA_INIT was sent (initiator) or received (responder).
        started: Instant,
        /// Its IKE_AUTH carried INITIAL_CONTACT (RFC 7296 §3.10.1): sent by us (initiator) or
        /// by the peer (responder). Drivers settling two crossing IKE SAs use it: a peer may
        /// have destroyed its own crossing IKE SA on our INITIAL_CONTACT.
        initial_contact: bool,
    },
    /// IKE SA setup failed; it is gone.
    IkeSaFailed {
        /// Connection (empty if none matched yet).
        conn: String,
        /// Our SPI.
        id: IkeSaId,
        /// Why.
        reason: FailReason,
    },
    /// A Child SA is ready.
    ChildSaEstablished(Box<ChildSa>),
    /// A Child SA was not created: the one of IKE_AUTH, one asked for with
    /// `Endpoint::create_child`, or one the peer asked for and we refused. The IKE SA stays.
    ChildSaFailed {
        /// Connection.
        conn: String,
        /// The IKE SA.
        id: IkeSaId,
        /// Why.
        reason: FailReason,
        /// True: a Child SA we asked for (IKE_AUTH or `create_child`) failed; false: we refused
        /// the peer's.
        initiator: bool,
        /// The selectors of the failed request from our point of view (ours first).
        local_ts: Vec<TrafficSelector>,
        /// The peer's side of the failed request.
        remote_ts: Vec<TrafficSelector>,
    },
    /// A Child SA was deleted (by the peer or by us).
    ChildSaDeleted {
        /// Connection.
        conn: String,
        /// The IKE SA.
        id: IkeSaId,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI.
        outbound_spi: u32,
    },
    /// A Child SA was rekeyed (RFC 7296 §1.3.3, make-before-break). The driver installs
    /// `new`'s inbound SA at once and keeps the old inbound SA accepting until
    /// `ChildSaDeleted` for `old_inbound_spi` arrives. If `outbound_now` (we initiated the rekey
    /// and the exchange is complete) outbound traffic moves to `new` at once; otherwise (we
    /// responded) the new outbound SA is installed but traffic keeps using the old one until
    /// `ChildSaDeleted` for the old SA, then moves to `new`.
    ChildSaRekeyed {
        /// Connection.
        conn: String,
        /// The IKE SA.
        id: IkeSaId,
        /// Our inbound SPI of the replaced SA.
        old_inbound_spi: u32,
        /// Our outbound SPI of the replaced SA.
        old_outbound_spi: u32,
        /// The new Child SA.
        new: Box<ChildSa>,
        /// Whether outbound traffic switches to `new` now (see above).
        outbound_now: bool,
    },
    /// The IKE SA `old` was rekeyed (RFC 7296 §2.18): `new` replaces it and every Child SA of
    /// `old` now belongs to `new` (later events name `new`). The data plane keeps its SAs; the
    /// driver only maps `old` to `new`. `old` disappears without an `IkeSaDeleted`.
    IkeSaRekeyed {
        /// Connection.
        conn: String,
        /// Our SPI of the replaced IKE SA.
        old: IkeSaId,
        /// Our SPI of the new IKE SA.
        new: IkeSaId,
        /// Initiator's SPI of the new IKE SA (the rekey initiator's).
        ispi: u64,
        /// Responder's SPI of the new IKE SA.
        rspi: u64,
    },
    /// An IKE SA exported by another endpoint (the master of an HA pair) was imported with
    /// `Endpoint::import_ike_sa` and is now run here as if it had been established here: it
    /// answers the peer's requests and starts its own exchanges from now on. Nothing was sent.
    /// No `IkeSaEstablished` and no `ChildSaEstablished` precede or follow it: the Child SAs'
    /// keys are the data plane's (replicated beside the IKE SA state); `children` says which
    /// Child SAs this endpoint now rekeys and deletes. Later events name `id`.
    IkeSaImported {
        /// Connection.
        conn: String,
        /// Our SPI.
        id: IkeSaId,
        /// Whether we were the original initiator.
        initiator: bool,
        /// Initiator's SPI.
        ispi: u64,
        /// Responder's SPI.
        rspi: u64,
        /// Outer local address.
        local: SocketAddr,
        /// Outer remote address.
        remote: SocketAddr,
        /// ESP in UDP for its Child SAs (NAT detected or forced, or port 4500).
        udp_encap: bool,
        /// When it was established, re-anchored to this endpoint's clock (the import `now`
        /// minus its age, or `now` where the clock cannot go back that far).
        started: Instant,
        /// Its IKE_AUTH carried INITIAL_CONTACT.
        initial_contact: bool,
        /// (inbound SPI, outbound SPI) of its Child SAs known to the driver (the redundant SAs
        /// of a rekey collision, never reported, are left out).
        children: Vec<(u32, u32)>,
    },
    /// The IKE SA (and all its Child SAs) was deleted.
    IkeSaDeleted {
        /// Connection.
        conn: String,
        /// Our SPI.
        id: IkeSaId,
    },
}

/// Why a datagram was dropped or refused (each one is counted in [`Counters`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// Not decodable.
    #[error("malformed: {0}")]
    Malformed(#[from] WireError),
    /// On port 4500 without the non-ESP marker (ESP or keepalive, not ours).
    #[error("not an IKE message")]
    NotIke,
    /// No IKE SA with this SPI.
    #[error("unknown IKE SPI")]
    UnknownSpi,
    /// No configured connection for this peer (or not allowed to respond).
    #[error("no connection for peer")]
    NoConnection,
    /// The message does not fit the SA's state.
    #[error("unexpected message")]
    Unexpected,
    /// Message ID outside the window.
    #[error("bad message ID")]
    BadMessageId,
    /// Integrity check or decryption failed.
    #[error("integrity check failed")]
    Integrity,
    /// A retransmitted request: the cached response was sent again.
    #[error("retransmitted request answered from cache")]
    Retransmission,
    /// A required payload is missing or invalid.
    #[error("invalid payloads: {0}")]
    Invalid(&'static str),
    /// Refused: answered with a COOKIE demand.
    #[error("cookie required")]
    CookieRequired,
    /// Refused: answered with an error notify.
    #[error("refused with {0}")]
    Refused(NotifyType),
    /// Dropped: the connection already holds its hard maximum of half-open SAs.
    #[error("too many half-open IKE SAs")]
    HalfOpenLimit,
}

/// Counters of received messages and their fates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams given to `handle`.
    pub received: u64,
    /// Datagrams sent (including retransmissions).
    pub sent: u64,
    /// Retransmitted requests.
    pub retransmits: u64,
    /// Requests answered from the response cache.
    pub cached_responses: u64,
    /// Undecodable datagrams.
    pub malformed: u64,
    /// Non-IKE datagrams on port 4500.
    pub not_ike: u64,
    /// Unknown SPI.
    pub unknown_spi: u64,
    /// No connection matched.
    pub no_connection: u64,
    /// Out of state.
    pub unexpected: u64,
    /// Bad message ID.
    pub bad_message_id: u64,
    /// Integrity failures.
    pub integrity: u64,
    /// Missing or invalid payloads.
    pub invalid: u64,
    /// COOKIE demands sent.
    pub cookies_sent: u64,
    /// Error notifies sent in refusal.
    pub refused: u64,
    /// Half-open SAs that expired.
    pub half_open_expired: u64,
    /// IKE_SA_INIT requests dropped at the hard half-open limit (even with a valid cookie).
    pub half_open_limit: u64,
    /// IKE SAs that failed.
    pub ike_failed: u64,
    /// IKE SAs established.
    pub ike_established: u64,
    /// Child SAs established (including rekeyed ones).
    pub child_established: u64,
    /// Child SAs created by a rekey.
    pub child_rekeyed: u64,
    /// IKE SAs created by a rekey.
    pub ike_rekeyed: u64,
    /// IKE SAs moved to a new peer address or port (NAT rebinding, RFC 7296 §2.23).
    pub peer_moved: u64,
}

impl Counters {
    pub(crate) fn count(&mut self, d: &DropReason) {
        let c = match d {
            DropReason::Malformed(_) => &mut self.malformed,
            DropReason::NotIke => &mut self.not_ike,
            DropReason::UnknownSpi => &mut self.unknown_spi,
            DropReason::NoConnection => &mut self.no_connection,
            DropReason::Unexpected => &mut self.unexpected,
            DropReason::BadMessageId => &mut self.bad_message_id,
            DropReason::Integrity => &mut self.integrity,
            DropReason::Retransmission => &mut self.cached_responses,
            DropReason::Invalid(_) => &mut self.invalid,
            DropReason::CookieRequired => &mut self.cookies_sent,
            DropReason::Refused(_) => &mut self.refused,
            DropReason::HalfOpenLimit => &mut self.half_open_limit,
        };
        *c += 1;
    }
}
