//! The replicated state: plain values, independent of the `ike` and `esp` crates, holding what
//! the backup needs to continue an IKE SA (RFC 7296 §2.1-2.3: SPIs, keys, message IDs, the last
//! response, our request in flight and the work queued behind it, its Child SAs as it knows
//! them, its timers) and its Child SAs (RFC 4301 §4.4.2: SPIs, keys, selectors, lifetimes,
//! counters) after a takeover. Transform numbers are the IKEv2 registry values (RFC 7296
//! §3.3.2). Times are milliseconds relative to when the master replicated them, so the two
//! appliances' clocks need not agree: the backup ages them by the time since it applied them
//! ([`IkeTimers::aged`], [`ChildLink::aged`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::secret::Secret;
use crate::wire::Problem;

/// The SPIs naming an IKE SA (RFC 7296 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IkeSpis {
    /// SPI chosen by the original initiator.
    pub initiator: u64,
    /// SPI chosen by the original responder.
    pub responder: u64,
}

/// What NAT detection (RFC 7296 §2.23) found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatState {
    /// This appliance is behind a NAT.
    pub local_behind_nat: bool,
    /// The peer is behind a NAT.
    pub peer_behind_nat: bool,
    /// IKE and ESP go over UDP 4500 (RFC 3948), detected or forced.
    pub udp_encap: bool,
}

/// The IKE SA's negotiated transforms (IKEv2 transform IDs; 0 where not used, e.g. integrity
/// with an AEAD cipher or a key length for a fixed-length cipher).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IkeTransforms {
    /// Encryption algorithm (transform type 1).
    pub encr: u16,
    /// Key Length attribute of the encryption algorithm, in bits.
    pub encr_key_bits: u16,
    /// Pseudorandom function (transform type 2).
    pub prf: u16,
    /// Integrity algorithm (transform type 3).
    pub integ: u16,
    /// Diffie-Hellman group (transform type 4).
    pub dh: u16,
}

/// The seven keys of an IKE SA (RFC 7296 §2.14).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IkeKeys {
    /// SK_d: derives Child SA keys.
    pub sk_d: Secret,
    /// SK_ai: integrity, initiator to responder (empty with an AEAD cipher).
    pub sk_ai: Secret,
    /// SK_ar: integrity, responder to initiator (empty with an AEAD cipher).
    pub sk_ar: Secret,
    /// SK_ei: encryption, initiator to responder (key and salt for AEAD ciphers).
    pub sk_ei: Secret,
    /// SK_er: encryption, responder to initiator.
    pub sk_er: Secret,
    /// SK_pi: the initiator's AUTH payload.
    pub sk_pi: Secret,
    /// SK_pr: the responder's AUTH payload.
    pub sk_pr: Secret,
}

/// An IKE message this appliance sent, as the datagrams that went on the wire (IKE header
/// included, without the non-ESP marker of port 4500; several with RFC 7383 fragmentation):
/// the last response (sent again for a retransmitted request, RFC 7296 §2.1) or our request in
/// flight (retransmitted byte for byte by the backup). `Debug` prints only lengths.
#[derive(Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// Its message ID.
    pub message_id: u32,
    /// The datagrams as sent (at least one).
    pub fragments: Vec<Vec<u8>>,
}

/// The former name of [`SentMessage`].
pub type LastResponse = SentMessage;

impl core::fmt::Debug for SentMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let lens: Vec<usize> = self.fragments.iter().map(Vec::len).collect();
        f.debug_struct("SentMessage")
            .field("message_id", &self.message_id)
            .field("fragment_lens", &lens)
            .finish()
    }
}

/// Which request of ours an IKE SA has outstanding, or queued (RFC 7296 §2.3, window 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// An empty INFORMATIONAL asked for by the operator or the supervisor.
    Liveness,
    /// An empty INFORMATIONAL of dead peer detection.
    Dpd,
    /// An INFORMATIONAL deleting the Child SA with this inbound SPI.
    DeleteChild {
        /// Our inbound SPI.
        inbound_spi: u32,
    },
    /// An INFORMATIONAL deleting the IKE SA.
    DeleteIke,
    /// A CREATE_CHILD_SA rekeying the Child SA with this inbound SPI.
    RekeyChild {
        /// Our inbound SPI.
        inbound_spi: u32,
    },
    /// A CREATE_CHILD_SA rekeying the IKE SA.
    RekeyIke,
    /// A CREATE_CHILD_SA for an additional Child SA.
    CreateChild,
}

/// Our request outstanding when the state was replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// What it is.
    pub kind: RequestKind,
    /// The request as sent.
    pub request: SentMessage,
    /// Transmissions so far, the first one included.
    pub transmissions: u32,
}

/// Work of an IKE SA waiting for the request window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueuedWork {
    /// Rekey the Child SA with this inbound SPI.
    RekeyChild {
        /// Our inbound SPI.
        inbound_spi: u32,
    },
    /// Delete the Child SA with this inbound SPI.
    DeleteChild {
        /// Our inbound SPI.
        inbound_spi: u32,
    },
    /// Rekey the IKE SA.
    RekeyIke,
    /// Delete the IKE SA.
    DeleteIke,
    /// Create an additional Child SA for these selectors.
    CreateChild {
        /// Our side's selectors as proposed.
        local_ts: Vec<TrafficSelector>,
        /// The peer's side's selectors as proposed.
        remote_ts: Vec<TrafficSelector>,
        /// The DH group the peer asked for with INVALID_KE_PAYLOAD (0: none).
        group: u16,
        /// Already retried once after INVALID_KE_PAYLOAD.
        retried: bool,
    },
}

/// Where a Child SA is in its life, as its IKE SA sees it (RFC 7296 §1.3.3, §2.8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChildStatus {
    /// In use.
    #[default]
    Active,
    /// Our CREATE_CHILD_SA rekeying it is outstanding.
    Rekeying,
    /// Replaced by a new Child SA; waiting for its DELETE.
    Rekeyed,
    /// Our DELETE for it is queued or in flight.
    Deleting,
}

/// A Child SA as its IKE SA knows it: what a later rekey or DELETE needs beyond the
/// [`ChildSaReplica`] with the same inbound SPI (which has its keys and selectors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildLink {
    /// Its inbound SPI.
    pub inbound_spi: u32,
    /// Where it is in its life.
    pub status: ChildStatus,
    /// Milliseconds left until our rekey of it, when replicated; `None`: not scheduled.
    pub rekey_in_ms: Option<u64>,
    /// Milliseconds left until its hard lifetime, when replicated; `None`: not scheduled.
    pub expire_in_ms: Option<u64>,
    /// The PFS group the peer asked for with INVALID_KE_PAYLOAD in an earlier rekey (0: none).
    pub rekey_group: u16,
    /// Reported to the supervisor (false for the redundant SA of a rekey collision).
    pub reported: bool,
}

/// Times of an IKE SA in milliseconds, relative to when the master replicated it (the two
/// appliances' clocks need not agree; the backup counts from when it received it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IkeTimers {
    /// Since it was established (or its rekey completed).
    pub established_for_ms: u64,
    /// Since the last sign of life from the peer (`None`: none yet).
    pub idle_for_ms: Option<u64>,
    /// Until our rekey of it (`None`: not scheduled).
    pub rekey_in_ms: Option<u64>,
    /// Until its hard lifetime (`None`: not scheduled).
    pub expire_in_ms: Option<u64>,
}

/// A duration in whole milliseconds, rounded up (so that a deadline shifted by it never moves
/// later) and saturating at `u64::MAX`.
fn ceil_ms(age: Duration) -> u64 {
    u64::try_from(age.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

impl IkeTimers {
    /// The timers `age` after replication (the backup's time since it applied them, e.g.
    /// [`IkeTakeover::age`](crate::IkeTakeover::age)): `established_for_ms` and
    /// `idle_for_ms` grow by it, `rekey_in_ms` and `expire_in_ms` shrink by it down to 0 (due
    /// now). `age` is rounded up to whole milliseconds; `None` stays `None`; nothing wraps.
    #[must_use]
    pub fn aged(self, age: Duration) -> IkeTimers {
        let ms = ceil_ms(age);
        IkeTimers {
            established_for_ms: self.established_for_ms.saturating_add(ms),
            idle_for_ms: self.idle_for_ms.map(|t| t.saturating_add(ms)),
            rekey_in_ms: self.rekey_in_ms.map(|t| t.saturating_sub(ms)),
            expire_in_ms: self.expire_in_ms.map(|t| t.saturating_sub(ms)),
        }
    }
}

impl ChildLink {
    /// The link `age` after replication: `rekey_in_ms` and `expire_in_ms` shrink by it down
    /// to 0 (due now), as in [`IkeTimers::aged`]; everything else is unchanged.
    #[must_use]
    pub fn aged(self, age: Duration) -> ChildLink {
        let ms = ceil_ms(age);
        ChildLink {
            rekey_in_ms: self.rekey_in_ms.map(|t| t.saturating_sub(ms)),
            expire_in_ms: self.expire_in_ms.map(|t| t.saturating_sub(ms)),
            ..self
        }
    }
}

/// One IKE SA as the backup needs it to carry on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IkeSaReplica {
    /// The connection it belongs to (configuration name, at most
    /// [`MAX_NAME_LEN`](crate::limits::MAX_NAME_LEN) bytes).
    pub connection: String,
    /// This appliance was the original initiator.
    pub initiator: bool,
    /// The SA's SPIs.
    pub spis: IkeSpis,
    /// Our address and port.
    pub local: SocketAddr,
    /// The peer's address and port (after NAT, as last seen).
    pub remote: SocketAddr,
    /// NAT detection results.
    pub nat: NatState,
    /// Negotiated transforms.
    pub transforms: IkeTransforms,
    /// The SA's keys.
    pub keys: IkeKeys,
    /// Message ID of the next request we send.
    pub next_send_msg_id: u32,
    /// Message ID of the next request we expect from the peer.
    pub next_recv_msg_id: u32,
    /// The last response we sent, if any (message ID `next_recv_msg_id - 1`).
    pub last_response: Option<SentMessage>,
    /// The peer announced IKEv2 fragmentation (RFC 7383).
    pub peer_fragmentation: bool,
    /// Its IKE_AUTH carried INITIAL_CONTACT.
    pub initial_contact: bool,
    /// Its times, relative to replication.
    pub timers: IkeTimers,
    /// Its Child SAs as it knows them, by inbound SPI (at most
    /// [`MAX_CHILD_LINKS`](crate::limits::MAX_CHILD_LINKS)).
    pub children: Vec<ChildLink>,
    /// Work waiting for the request window (at most
    /// [`MAX_QUEUED`](crate::limits::MAX_QUEUED)).
    pub queue: Vec<QueuedWork>,
    /// Our request outstanding, if any.
    pub in_flight: Option<InFlight>,
    /// Reserved for later use; replicated as is.
    pub flags: u32,
}

impl IkeSaReplica {
    /// Its own consistency: no inbound SPI twice in [`children`](IkeSaReplica::children). A
    /// [`ChildLink`] need not have its [`ChildSaReplica`] (nor a queued or in-flight request
    /// its link): the Child SA may be replicated after its IKE SA, and the backup matches them
    /// by inbound SPI at takeover. The encoder and the decoder check it, as does
    /// [`Replica::apply`](crate::Replica::apply).
    pub fn check(&self) -> Result<(), Problem> {
        let mut spis: Vec<u32> = self.children.iter().map(|c| c.inbound_spi).collect();
        spis.sort_unstable();
        if spis.windows(2).any(|w| w[0] == w[1]) {
            return Err(Problem::Duplicate {
                what: "Child SA link",
            });
        }
        Ok(())
    }
}

/// One traffic selector (RFC 7296 §3.13.1): both addresses of the same family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficSelector {
    /// IP protocol, 0 for any.
    pub ip_proto: u8,
    /// First port.
    pub start_port: u16,
    /// Last port.
    pub end_port: u16,
    /// First address.
    pub start: IpAddr,
    /// Last address (same family as `start`).
    pub end: IpAddr,
}

/// The four key blobs of a Child SA (RFC 7296 §2.17), by direction as seen from this appliance.
/// For AES-GCM the encryption key includes its 4-byte salt, as KEYMAT does, and the integrity
/// keys are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildKeys {
    /// Decrypts what the peer sends.
    pub encr_in: Secret,
    /// Verifies what the peer sends.
    pub integ_in: Secret,
    /// Encrypts what we send.
    pub encr_out: Secret,
    /// Authenticates what we send.
    pub integ_out: Secret,
}

/// Volume lifetimes of a Child SA (RFC 4301 §4.4.2.1): byte and packet counts, `None` where
/// there is no limit. Its time lifetimes are kept by its IKE SA, relative to replication
/// ([`ChildLink::rekey_in_ms`], [`ChildLink::expire_in_ms`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildLifetime {
    /// Rekey after this many bytes.
    pub soft_bytes: Option<u64>,
    /// Expire after this many bytes.
    pub hard_bytes: Option<u64>,
    /// Rekey after this many packets.
    pub soft_packets: Option<u64>,
    /// Expire after this many packets.
    pub hard_packets: Option<u64>,
}

/// Traffic counted on a Child SA so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Inner bytes received.
    pub bytes_in: u64,
    /// Inner bytes sent.
    pub bytes_out: u64,
    /// Packets received.
    pub packets_in: u64,
    /// Packets sent.
    pub packets_out: u64,
}

/// One ESP Child SA (both directions), named by its inbound SPI (the one this appliance chose,
/// so unique here). The protocol is always ESP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildSaReplica {
    /// The IKE SA it belongs to.
    pub ike: IkeSpis,
    /// SPI of the packets we receive.
    pub inbound_spi: u32,
    /// SPI of the packets we send.
    pub outbound_spi: u32,
    /// ESP in UDP (RFC 3948).
    pub udp_encap: bool,
    /// Encryption transform ID.
    pub encr: u16,
    /// Its Key Length attribute in bits (0 if none).
    pub encr_key_bits: u16,
    /// Integrity transform ID (0 with an AEAD cipher).
    pub integ: u16,
    /// Extended sequence numbers (64-bit) negotiated.
    pub esn: bool,
    /// PFS group of the exchange that created it (0: none).
    pub dh: u16,
    /// This appliance initiated the exchange that created it.
    pub initiator: bool,
    /// Keying material.
    pub keys: ChildKeys,
    /// Our side's selectors (TSi or TSr, whichever is ours).
    pub ts_local: Vec<TrafficSelector>,
    /// The peer's side's selectors.
    pub ts_remote: Vec<TrafficSelector>,
    /// Limits.
    pub lifetime: ChildLifetime,
    /// Counters at the time of replication.
    pub counters: TrafficCounters,
}

/// Sequence number high-water marks of one Child SA, sent every N packets or T ms.
///
/// `outbound_seq` is the outbound SA's next sequence number as the master's data plane read it
/// (every number below it may have been used; 0 or 1: none yet). `inbound_highest` is the
/// highest number accepted on the inbound SA, and `replay_bitmap` its anti-replay window: bit `k` of word `k / 64` (least significant bit
/// first) says whether `inbound_highest - k` was received. At most
/// [`MAX_REPLAY_WORDS`](crate::limits::MAX_REPLAY_WORDS) words.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqMark {
    /// The Child SA's inbound SPI.
    pub inbound_spi: u32,
    /// Next outbound sequence number (64-bit: ESN-capable).
    pub outbound_seq: u64,
    /// Highest inbound sequence number accepted.
    pub inbound_highest: u64,
    /// Replay window ending at `inbound_highest`.
    pub replay_bitmap: Vec<u64>,
}
