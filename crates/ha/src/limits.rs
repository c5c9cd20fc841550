//! Every bound of the replication protocol, in one place. The encoder refuses to write what
//! the decoder would refuse to read, and both use these constants.

/// First four bytes of every message.
pub const MAGIC: [u8; 4] = *b"HGHA";
/// The only wire version this crate speaks.
pub const VERSION: u8 = 1;
/// Length of the clear header: magic(4) version(1) type(1) sender_id(4) epoch(8) counter(8)
/// length(4).
pub const HEADER_LEN: usize = 30;
/// AES-256-GCM tag length.
pub const TAG_LEN: usize = 16;

/// Shortest accepted channel secret (bytes).
pub const MIN_SECRET_LEN: usize = 32;

/// Largest plaintext body. A snapshot that does not fit is refused by the sender (see
/// [`crate::message::Snapshot`]).
pub const MAX_BODY_LEN: usize = 32 << 20;
/// Largest sealed body (the header's `length` field).
pub const MAX_SEALED_LEN: usize = MAX_BODY_LEN + TAG_LEN;

/// IKE SAs in a snapshot, and in the backup's table.
pub const MAX_IKE_SAS: usize = 2048;
/// Child SAs in a snapshot, and in the backup's table.
pub const MAX_CHILD_SAS: usize = 4096;
/// Sequence marks in one message.
pub const MAX_MARKS: usize = MAX_CHILD_SAS;

/// Connection name (bytes of UTF-8).
pub const MAX_NAME_LEN: usize = 64;
/// Any key blob (SK_* or Child SA keying material).
pub const MAX_KEY_LEN: usize = 128;
/// Fragments (RFC 7383) of one carried IKE message: the last response, or the request in
/// flight.
pub const MAX_RESPONSE_FRAGMENTS: usize = 128;
/// Bytes of one carried IKE message (the last response, or the request in flight), all
/// fragments together.
pub const MAX_RESPONSE_LEN: usize = 64 << 10;
/// Child SAs an IKE SA knows ([`IkeSaReplica::children`](crate::IkeSaReplica::children)).
pub const MAX_CHILD_LINKS: usize = 64;
/// Work items waiting for an IKE SA's request window
/// ([`IkeSaReplica::queue`](crate::IkeSaReplica::queue)).
pub const MAX_QUEUED: usize = 64;
/// Traffic selectors on each side of a Child SA.
pub const MAX_SELECTORS: usize = 32;
/// 64-bit words of a replicated replay bitmap (65536 packets, the data plane's largest
/// anti-replay window).
pub const MAX_REPLAY_WORDS: usize = 1024;

/// IKEv2 Protocol ID of ESP (RFC 7296 §3.3.1), the only Child SA protocol replicated.
pub const PROTOCOL_ESP: u8 = 3;

/// The highest ESN sequence number the data plane uses (`esp`'s outbound SAs stop at 2^63 - 1
/// so that racing increments can never wrap their atomic counter): a takeover start beyond it
/// would give an SA that refuses every packet, so such an SA is rekeyed instead.
pub const ESN_MAX_SEQ: u64 = (1 << 63) - 1;
