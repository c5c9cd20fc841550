//! The replicated state: plain values, independent of the `ike` and `esp` crates, holding what
//! the backup needs to continue an IKE SA (RFC 7296 §2.1-2.2: SPIs, keys, message IDs, the last
//! response) and its Child SAs (RFC 4301 §4.4.2: SPIs, keys, selectors, lifetimes, counters)
//! after a takeover. Transform numbers are the IKEv2 registry values (RFC 7296 §3.3.2).

use std::net::{IpAddr, SocketAddr};

use crate::secret::Secret;

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

/// The last response this IKE SA sent, kept so that a retransmitted request gets the same
/// bytes back (RFC 7296 §2.1).
#[derive(Clone, PartialEq, Eq)]
pub struct LastResponse {
    /// Its message ID.
    pub message_id: u32,
    /// The datagrams as sent (IKE header included; several with RFC 7383 fragmentation).
    pub fragments: Vec<Vec<u8>>,
}

impl core::fmt::Debug for LastResponse {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let lens: Vec<usize> = self.fragments.iter().map(Vec::len).collect();
        f.debug_struct("LastResponse")
            .field("message_id", &self.message_id)
            .field("fragment_lens", &lens)
            .finish()
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
    /// The last response we sent, if any.
    pub last_response: Option<LastResponse>,
    /// The peer announced IKEv2 fragmentation (RFC 7383).
    pub peer_fragmentation: bool,
    /// When the SA was established (seconds since the UNIX epoch).
    pub established: u64,
    /// When to rekey it (seconds since the UNIX epoch), if scheduled.
    pub rekey_at: Option<u64>,
    /// When it expires (seconds since the UNIX epoch), if it does.
    pub expire_at: Option<u64>,
    /// Reserved for later use; replicated as is.
    pub flags: u32,
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

/// Lifetimes of a Child SA (RFC 4301 §4.4.2.1): byte and packet counts, and absolute times in
/// seconds since the UNIX epoch; `None` where there is no limit.
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
    /// Rekey at this time.
    pub soft_at: Option<u64>,
    /// Expire at this time.
    pub hard_at: Option<u64>,
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
/// `outbound_seq` is the highest sequence number the master has used on the outbound SA (0:
/// none yet). `inbound_highest` is the highest number accepted on the inbound SA, and
/// `replay_bitmap` its anti-replay window: bit `k` of word `k / 64` (least significant bit
/// first) says whether `inbound_highest - k` was received. At most
/// [`MAX_REPLAY_WORDS`](crate::limits::MAX_REPLAY_WORDS) words.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqMark {
    /// The Child SA's inbound SPI.
    pub inbound_spi: u32,
    /// Highest outbound sequence number used (64-bit: ESN-capable).
    pub outbound_seq: u64,
    /// Highest inbound sequence number accepted.
    pub inbound_highest: u64,
    /// Replay window ending at `inbound_highest`.
    pub replay_bitmap: Vec<u64>,
}
