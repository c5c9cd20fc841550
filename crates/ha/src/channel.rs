//! The sealed replication channel: AES-256-GCM (NIST SP 800-38D) under keys derived with
//! HKDF-SHA256 (RFC 5869), one key per direction and sender epoch, and the receiver's ordering
//! rules.
//!
//! * Keys. `PRK = HKDF-Extract(salt = "hybridgw ha replication", IKM = shared secret)`, once.
//!   A message from `from` to `to` in epoch `e` is sealed with
//!   `HKDF-Expand(PRK, "hybridgw ha v1 aes-256-gcm" | from(4) | to(4) | e(8), 32)`. Both sender
//!   ids are in the key, so A→B and B→A never share a key and a message reflected back to its
//!   sender does not open; the two ids must differ.
//! * Nonces. The 96-bit nonce is `0(4) | counter(8)`. The epoch is in the key rather than in
//!   the nonce (both would not fit in 96 bits), so a nonce repeats under a key only if a sender
//!   reused the exact same epoch value, which the epoch rule below already forbids. The
//!   [`Sender`] never reuses a counter and refuses to wrap.
//! * Associated data: the 30-byte clear header, so type, sender, epoch, counter and length are
//!   authenticated with the body.
//! * Ordering. The [`Receiver`] accepts only its configured peer's sender id. A larger epoch
//!   than the last accepted one (the peer restarted) is accepted from any counter; within an
//!   epoch, only a counter larger than the last accepted; a smaller epoch never. There is no
//!   sliding window: upserts and removes must be applied in the order they were sent (an old
//!   upsert applied after a newer removal would bring an SA back), so a message overtaken by
//!   a later one is refused as a replay. Over a stream nothing is reordered; over datagrams a
//!   lost or overtaken message is a gap, reported ([`Received::missed`]) so that the backup
//!   knows its table is incomplete until the next snapshot.
//! * Refusals change nothing: every check, including the tag, runs before any state is
//!   updated, and the body is decrypted in a private copy (zeroized afterwards). Each refusal
//!   is counted by reason ([`Counters`]).
//!
//! A sender's epoch must be larger every time it starts with the same secret, for example the
//! wall-clock time in nanoseconds at start; a receiver that has seen a later epoch refuses
//! the smaller one ([`Refusal::StaleEpoch`]).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use crate::limits::{HEADER_LEN, MIN_SECRET_LEN, TAG_LEN};
use crate::message::Message;
use crate::wire::{self, DecodeError, Header, Problem};

const EXTRACT_SALT: &[u8] = b"hybridgw ha replication";
const EXPAND_LABEL: &[u8] = b"hybridgw ha v1 aes-256-gcm";

/// Why a channel could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The shared secret is shorter than [`MIN_SECRET_LEN`].
    #[error("replication secret is {len} bytes, at least {MIN_SECRET_LEN} needed")]
    SecretTooShort {
        /// Its length.
        len: usize,
    },
    /// Both ends have the same sender id (both directions would share a key).
    #[error("local and peer sender id are both {0}")]
    SameIds(u32),
    /// The crypto library refused the key (not expected).
    #[error("key derivation failed")]
    Crypto,
}

/// The configuration shared by a [`Sender`] and a [`Receiver`]: the secret (as an HKDF PRK,
/// zeroized on drop) and the two sender ids.
#[derive(Clone)]
pub struct ChannelConfig {
    prk: hkdf::Prk,
    local_id: u32,
    peer_id: u32,
}

impl core::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("local_id", &self.local_id)
            .field("peer_id", &self.peer_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ChannelConfig {
    /// The channel between this appliance (`local_id`) and its peer (`peer_id`), keyed by the
    /// secret configured on both (at least [`MIN_SECRET_LEN`] bytes of high entropy).
    pub fn new(secret: &[u8], local_id: u32, peer_id: u32) -> Result<ChannelConfig, ConfigError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::SecretTooShort { len: secret.len() });
        }
        if local_id == peer_id {
            return Err(ConfigError::SameIds(local_id));
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, EXTRACT_SALT).extract(secret);
        let config = ChannelConfig {
            prk,
            local_id,
            peer_id,
        };
        // Fail here rather than later if the library refuses the key derivation.
        config.key(local_id, peer_id, 0)?;
        Ok(config)
    }

    /// This appliance's sender id.
    pub fn local_id(&self) -> u32 {
        self.local_id
    }

    /// The peer's sender id.
    pub fn peer_id(&self) -> u32 {
        self.peer_id
    }

    fn key(&self, from: u32, to: u32, epoch: u64) -> Result<LessSafeKey, ConfigError> {
        let (from, to, epoch) = (from.to_be_bytes(), to.to_be_bytes(), epoch.to_be_bytes());
        let info: [&[u8]; 4] = [EXPAND_LABEL, &from, &to, &epoch];
        let okm = self
            .prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| ConfigError::Crypto)?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Why a message could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The message breaks a limit or a consistency rule (the receiver would refuse it).
    #[error("message not sent: {0}")]
    Invalid(Problem),
    /// The counter reached its end: start a new sender with a larger epoch.
    #[error("message counter exhausted")]
    Exhausted,
    /// The crypto library failed (not expected).
    #[error("sealing failed")]
    Crypto,
}

/// The sending end (the master): seals messages under this epoch's key with increasing
/// counters.
pub struct Sender {
    key: LessSafeKey,
    local_id: u32,
    epoch: u64,
    next: u64,
}

impl core::fmt::Debug for Sender {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sender")
            .field("local_id", &self.local_id)
            .field("epoch", &self.epoch)
            .field("next_counter", &self.next)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender for `epoch`, which must be larger than any epoch used before with this secret
    /// and sender id (e.g. the wall-clock time in nanoseconds at start).
    pub fn new(config: &ChannelConfig, epoch: u64) -> Result<Sender, ConfigError> {
        Ok(Sender {
            key: config.key(config.local_id, config.peer_id, epoch)?,
            local_id: config.local_id,
            epoch,
            next: 0,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The counter the next message will carry.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Encodes and seals `message`: header, ciphertext and tag in one buffer. A refused message
    /// uses no counter. The plaintext exists only in the returned buffer, which it never leaves
    /// (sealed in place, no reallocation), or which is zeroized on error.
    pub fn seal(&mut self, message: &Message) -> Result<Vec<u8>, SealError> {
        if self.next == u64::MAX {
            return Err(SealError::Exhausted);
        }
        let body_len = wire::body_len(message).map_err(SealError::Invalid)?;
        let header = Header {
            message_type: message.message_type(),
            sender_id: self.local_id,
            epoch: self.epoch,
            counter: self.next,
            // body_len <= MAX_BODY_LEN, so this fits in a u32.
            length: (body_len + TAG_LEN) as u32,
        };
        let aad = header.encode();
        let mut out = Zeroizing::new(Vec::with_capacity(header.message_len()));
        out.extend_from_slice(&aad);
        wire::write_body(message, &mut out).map_err(SealError::Invalid)?;
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.next), Aad::from(aad), &mut out[HEADER_LEN..])
            .map_err(|_| SealError::Crypto)?;
        out.extend_from_slice(tag.as_ref());
        self.next += 1;
        // Ciphertext from here on: hand the buffer out without zeroizing it.
        Ok(core::mem::take(&mut *out))
    }
}

/// Why the receiver refused a message. Every refusal leaves the receiver as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Shorter than a header, or than a header and a tag.
    #[error("truncated message ({len} bytes)")]
    Truncated {
        /// Length of what was there.
        len: usize,
    },
    /// Not our magic number.
    #[error("bad magic")]
    BadMagic,
    /// A version we do not speak.
    #[error("unknown version {0}")]
    UnknownVersion(u8),
    /// A message type we do not know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The length field exceeds [`MAX_SEALED_LEN`](crate::limits::MAX_SEALED_LEN).
    #[error("declared length {length} too large")]
    TooLarge {
        /// The length field.
        length: u32,
    },
    /// The message is longer or shorter than its header says.
    #[error("message is {actual} bytes, header says {declared}")]
    LengthMismatch {
        /// What the header says (header included).
        declared: usize,
        /// What arrived.
        actual: usize,
    },
    /// Not from the configured peer.
    #[error("message from sender {sender_id}, not from the configured peer")]
    WrongSender {
        /// The header's sender id.
        sender_id: u32,
    },
    /// An epoch older than the current one.
    #[error("epoch {epoch} older than current {current}")]
    StaleEpoch {
        /// The message's epoch.
        epoch: u64,
        /// The last accepted epoch.
        current: u64,
    },
    /// A counter not above the last accepted one in this epoch.
    #[error("counter {counter} not above last accepted {last}")]
    Replay {
        /// The message's counter.
        counter: u64,
        /// The last accepted counter.
        last: u64,
    },
    /// The tag did not verify: wrong key, or header or body changed.
    #[error("authentication failed")]
    Auth,
    /// Authentic, but the body does not decode (a sender bug or a version skew).
    #[error("malformed body: {0}")]
    Malformed(DecodeError),
}

/// A refusal reason without its details: the index of a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// [`Refusal::Truncated`].
    Truncated,
    /// [`Refusal::BadMagic`].
    BadMagic,
    /// [`Refusal::UnknownVersion`].
    UnknownVersion,
    /// [`Refusal::UnknownType`].
    UnknownType,
    /// [`Refusal::TooLarge`].
    TooLarge,
    /// [`Refusal::LengthMismatch`].
    LengthMismatch,
    /// [`Refusal::WrongSender`].
    WrongSender,
    /// [`Refusal::StaleEpoch`].
    StaleEpoch,
    /// [`Refusal::Replay`].
    Replay,
    /// [`Refusal::Auth`].
    Auth,
    /// [`Refusal::Malformed`].
    Malformed,
}

impl RefusalKind {
    /// Every kind, in counter order.
    pub const ALL: [RefusalKind; 11] = [
        RefusalKind::Truncated,
        RefusalKind::BadMagic,
        RefusalKind::UnknownVersion,
        RefusalKind::UnknownType,
        RefusalKind::TooLarge,
        RefusalKind::LengthMismatch,
        RefusalKind::WrongSender,
        RefusalKind::StaleEpoch,
        RefusalKind::Replay,
        RefusalKind::Auth,
        RefusalKind::Malformed,
    ];

    /// A short, stable name for counters and logs.
    pub const fn name(self) -> &'static str {
        match self {
            RefusalKind::Truncated => "truncated",
            RefusalKind::BadMagic => "bad_magic",
            RefusalKind::UnknownVersion => "unknown_version",
            RefusalKind::UnknownType => "unknown_type",
            RefusalKind::TooLarge => "too_large",
            RefusalKind::LengthMismatch => "length_mismatch",
            RefusalKind::WrongSender => "wrong_sender",
            RefusalKind::StaleEpoch => "stale_epoch",
            RefusalKind::Replay => "replay",
            RefusalKind::Auth => "auth",
            RefusalKind::Malformed => "malformed",
        }
    }
}

impl Refusal {
    /// The counter this refusal increments.
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refusal::Truncated { .. } => RefusalKind::Truncated,
            Refusal::BadMagic => RefusalKind::BadMagic,
            Refusal::UnknownVersion(_) => RefusalKind::UnknownVersion,
            Refusal::UnknownType(_) => RefusalKind::UnknownType,
            Refusal::TooLarge { .. } => RefusalKind::TooLarge,
            Refusal::LengthMismatch { .. } => RefusalKind::LengthMismatch,
            Refusal::WrongSender { .. } => RefusalKind::WrongSender,
            Refusal::StaleEpoch { .. } => RefusalKind::StaleEpoch,
            Refusal::Replay { .. } => RefusalKind::Replay,
            Refusal::Auth => RefusalKind::Auth,
            Refusal::Malformed(_) => RefusalKind::Malformed,
        }
    }
}

/// What the receiver accepted and refused, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages accepted.
    pub accepted: u64,
    refused: [u64; RefusalKind::ALL.len()],
}

impl Counters {
    /// Messages refused for this reason.
    pub fn refused(&self, kind: RefusalKind) -> u64 {
        self.refused[kind as usize]
    }

    /// Messages refused for any reason.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().sum()
    }

    /// `(name, count)` for every reason, in counter order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RefusalKind::ALL
            .iter()
            .map(|k| (k.name(), self.refused(*k)))
    }

    fn count(&mut self, kind: RefusalKind) {
        let c = &mut self.refused[kind as usize];
        *c = c.saturating_add(1);
    }
}

/// An accepted message and where it stands in the sender's sequence. Only a [`Receiver`]
/// makes one, so [`crate::Replica::apply`] only sees authenticated messages.
#[derive(Debug)]
#[non_exhaustive]
pub struct Received {
    /// The sender's epoch.
    pub epoch: u64,
    /// The message's counter.
    pub counter: u64,
    /// First message of this epoch (the sender started, or this receiver did).
    pub new_epoch: bool,
    /// Messages of this epoch skipped before this one (counters start at 0), as far as this
    /// receiver can tell.
    pub missed: u64,
    /// The message.
    pub message: Message,
}

struct Position {
    epoch: u64,
    last: u64,
    key: LessSafeKey,
}

/// The receiving end (the backup).
pub struct Receiver {
    config: ChannelConfig,
    current: Option<Position>,
    counters: Counters,
}

impl core::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Receiver")
            .field("peer_id", &self.config.peer_id)
            .field("position", &self.position())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver that has seen nothing yet: it accepts the first authentic message of any
    /// epoch.
    pub fn new(config: &ChannelConfig) -> Receiver {
        Receiver {
            config: config.clone(),
            current: None,
            counters: Counters::default(),
        }
    }

    /// The epoch and counter of the last accepted message.
    pub fn position(&self) -> Option<(u64, u64)> {
        self.current.as_ref().map(|p| (p.epoch, p.last))
    }

    /// Accepted and refused messages.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Checks, authenticates and decodes one message (exactly one: header and sealed body, no
    /// trailing bytes).
    pub fn open(&mut self, message: &[u8]) -> Result<Received, Refusal> {
        let result = self.open_inner(message);
        match &result {
            Ok(_) => self.counters.accepted = self.counters.accepted.saturating_add(1),
            Err(refusal) => self.counters.count(refusal.kind()),
        }
        result
    }

    fn open_inner(&mut self, bytes: &[u8]) -> Result<Received, Refusal> {
        let header = Header::parse(bytes)?;
        if bytes.len() != header.message_len() {
            return Err(Refusal::LengthMismatch {
                declared: header.message_len(),
                actual: bytes.len(),
            });
        }
        if header.sender_id != self.config.peer_id {
            return Err(Refusal::WrongSender {
                sender_id: header.sender_id,
            });
        }
        let (epoch, counter) = (header.epoch, header.counter);
        let fresh = match &self.current {
            Some(p) if epoch < p.epoch => {
                return Err(Refusal::StaleEpoch {
                    epoch,
                    current: p.epoch,
                });
            }
            Some(p) if epoch == p.epoch && counter <= p.last => {
                return Err(Refusal::Replay {
                    counter,
                    last: p.last,
                });
            }
            Some(p) if epoch == p.epoch => None,
            _ => Some(
                self.config
                    .key(self.config.peer_id, self.config.local_id, epoch)
                    .map_err(|_| Refusal::Auth)?,
            ),
        };
        let message = {
            let key = match (&fresh, &self.current) {
                (Some(k), _) => k,
                (None, Some(p)) => &p.key,
                (None, None) => return Err(Refusal::Auth),
            };
            let mut body = Zeroizing::new(bytes[HEADER_LEN..].to_vec());
            let plain = key
                .open_in_place(nonce(counter), Aad::from(&bytes[..HEADER_LEN]), &mut body)
                .map_err(|_| Refusal::Auth)?;
            wire::decode_body(header.message_type, plain).map_err(Refusal::Malformed)?
        };
        // Everything checked: commit.
        let (new_epoch, missed) = match fresh {
            Some(key) => {
                self.current = Some(Position {
                    epoch,
                    last: counter,
                    key,
                });
                (true, counter)
            }
            None => {
                let mut missed = 0;
                if let Some(p) = &mut self.current {
                    missed = counter - p.last - 1;
                    p.last = counter;
                }
                (false, missed)
            }
        };
        Ok(Received {
            epoch,
            counter,
            new_epoch,
            missed,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_refuses_to_wrap() {
        let cfg = ChannelConfig::new(&[7; 32], 1, 2).unwrap();
        let mut tx = Sender::new(&cfg, 5).unwrap();
        tx.next = u64::MAX - 1;
        let last = tx.seal(&Message::Heartbeat).unwrap();
        assert_eq!(tx.seal(&Message::Heartbeat), Err(SealError::Exhausted));
        assert_eq!(tx.next_counter(), u64::MAX);
        let mut rx = Receiver::new(&ChannelConfig::new(&[7; 32], 2, 1).unwrap());
        let got = rx.open(&last).unwrap();
        assert_eq!((got.counter, got.missed), (u64::MAX - 1, u64::MAX - 1));
    }
}
