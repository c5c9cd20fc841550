//! The wire format: a clear header and a hand-written body encoding.
//!
//! ```text
//! header (30 bytes, clear, the AEAD's associated data):
//!   magic "HGHA"(4) | version = 1 (1) | type (1) | sender_id (4) | epoch (8) | counter (8) | length (4)
//! body (`length` bytes): AES-256-GCM ciphertext of the encoded message, then its 16-byte tag
//! ```
//!
//! All integers are big-endian. A `bool` is one byte, 0 or 1. A vector is a `u32` count then
//! its elements; a byte string a `u32` length then the bytes. An `Option<u64>` (`opt`) is a
//! byte 0 (absent) or 1 followed by the value; any other optional field is a byte 0 or 1
//! followed by the value when 1. An enum is a tag byte, the variant's index as listed below,
//! then that variant's fields; an unknown tag is refused. An address is a family byte (4 or
//! 6) then 4 or 16 bytes; a socket address adds a `u16` port. Every count and length is
//! checked against [`crate::limits`] before anything is read or allocated, and anything else
//! is refused: the encoding is canonical, so `encode(decode(b)) == b` for every accepted `b`.
//!
//! ```text
//! IkeSaReplica:   connection(str) spi_i(u64) spi_r(u64) initiator(bool) local(sockaddr)
//!                 remote(sockaddr) local_behind_nat(bool) peer_behind_nat(bool) udp_encap(bool)
//!                 encr(u16) encr_key_bits(u16) prf(u16) integ(u16) dh(u16)
//!                 sk_d sk_ai sk_ar sk_ei sk_er sk_pi sk_pr (bytes each)
//!                 next_send_msg_id(u32) next_recv_msg_id(u32)
//!                 last_response: 0 | 1 SentMessage
//!                 peer_fragmentation(bool) initial_contact(bool)
//!                 established_for_ms(u64) idle_for_ms(opt) rekey_in_ms(opt) expire_in_ms(opt)
//!                 children(vec of ChildLink, no inbound_spi twice) queue(vec of QueuedWork)
//!                 in_flight: 0 | 1 kind(RequestKind) request(SentMessage) transmissions(u32)
//!                 flags(u32)
//! SentMessage:    message_id(u32) fragments(vec of bytes: 1 to MAX_RESPONSE_FRAGMENTS,
//!                 MAX_RESPONSE_LEN bytes in all)
//! ChildLink:      inbound_spi(u32) status(u8: 0 Active 1 Rekeying 2 Rekeyed 3 Deleting)
//!                 rekey_in_ms(opt) expire_in_ms(opt) rekey_group(u16) reported(bool)
//! RequestKind:    0 Liveness | 1 Dpd | 2 DeleteChild inbound_spi(u32) | 3 DeleteIke
//!                 | 4 RekeyChild inbound_spi(u32) | 5 RekeyIke | 6 CreateChild
//! QueuedWork:     0 RekeyChild inbound_spi(u32) | 1 DeleteChild inbound_spi(u32) | 2 RekeyIke
//!                 | 3 DeleteIke | 4 CreateChild local_ts(vec of TS) remote_ts(vec of TS)
//!                 group(u16) retried(bool)
//! ChildSaReplica: ike_spi_i(u64) ike_spi_r(u64) inbound_spi(u32) outbound_spi(u32) protocol(u8 = 3)
//!                 udp_encap(bool) encr(u16) encr_key_bits(u16) integ(u16) esn(bool) dh(u16)
//!                 initiator(bool) encr_in integ_in encr_out integ_out (bytes each)
//!                 ts_local ts_remote (vec of TS each)
//!                 soft_bytes hard_bytes soft_packets hard_packets (opt each)
//!                 bytes_in bytes_out packets_in packets_out (u64 each)
//! TS:             family(4|6) ip_proto(u8) start_port(u16) end_port(u16) start(4|16) end(4|16)
//! SeqMark:        inbound_spi(u32) outbound_seq(u64) inbound_highest(u64) replay_bitmap(vec of u64)
//! type 1 Snapshot:    ike(vec) child(vec) marks(vec), consistent (see Snapshot::check)
//! type 2 UpsertIke:   IkeSaReplica        type 3 UpsertChild: ChildSaReplica
//! type 4 RemoveIke:   spi_i(u64) spi_r(u64)
//! type 5 RemoveChild: inbound_spi(u32)
//! type 6 Marks:       marks(vec)          type 7 Heartbeat: empty
//! ```
//!
//! Limits: connection name [`MAX_NAME_LEN`], keys [`MAX_KEY_LEN`], selectors per side
//! [`MAX_SELECTORS`], children [`MAX_CHILD_LINKS`], queue [`MAX_QUEUED`], replay bitmap
//! [`MAX_REPLAY_WORDS`], and the counts of a snapshot [`MAX_IKE_SAS`], [`MAX_CHILD_SAS`],
//! [`MAX_MARKS`]; a whole body at most [`MAX_BODY_LEN`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use zeroize::Zeroizing;

use crate::channel::Refusal;
use crate::limits::*;
use crate::message::{Message, MessageType, Snapshot};
use crate::model::*;
use crate::secret::Secret;

/// What is wrong with a body (decoding) or with a message (encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The body ends inside a field.
    #[error("truncated in {what}")]
    Truncated {
        /// The field.
        what: &'static str,
    },
    /// Bytes follow the last field.
    #[error("{len} trailing bytes")]
    Trailing {
        /// How many.
        len: usize,
    },
    /// A count or length exceeds its limit.
    #[error("{what}: {got} exceeds the limit of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// The limit.
        max: usize,
        /// The value found.
        got: u64,
    },
    /// A value outside its range (a bool not 0/1, an unknown address family, ...).
    #[error("invalid {what}")]
    BadValue {
        /// The field.
        what: &'static str,
    },
    /// A snapshot names an SA twice.
    #[error("duplicate {what}")]
    Duplicate {
        /// What.
        what: &'static str,
    },
    /// A snapshot refers to an SA it does not hold.
    #[error("dangling reference: {what}")]
    Dangling {
        /// What.
        what: &'static str,
    },
    /// A snapshot lacks something it must hold.
    #[error("missing {what}")]
    Missing {
        /// What.
        what: &'static str,
    },
}

/// A body that does not decode: what is wrong and where (offset in the plaintext body).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{problem} at body offset {offset}")]
pub struct DecodeError {
    /// Offset of the offending field.
    pub offset: usize,
    /// What is wrong.
    pub problem: Problem,
}

/// Encodes a message's plaintext body. The channel ([`crate::Sender`]) seals it; this entry
/// point exists for tests and fuzzing.
pub fn encode_body(message: &Message) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let len = body_len(message)?;
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    write_body(message, &mut out)?;
    Ok(out)
}

/// Decodes a plaintext body of the given type. Total: any input gives a message or an error.
/// Unauthenticated: the channel ([`crate::Receiver`]) calls it only after the tag verified.
pub fn decode_body(message_type: MessageType, body: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(body);
    let message = match message_type {
        MessageType::Snapshot => {
            let ike = r.vec("IKE SAs", MAX_IKE_SAS, IkeSaReplica::decode)?;
            let child = r.vec("Child SAs", MAX_CHILD_SAS, ChildSaReplica::decode)?;
            let marks = r.vec("marks", MAX_MARKS, SeqMark::decode)?;
            let snapshot = Snapshot { ike, child, marks };
            snapshot.check().map_err(|problem| r.err(problem))?;
            Message::Snapshot(snapshot)
        }
        MessageType::UpsertIke => Message::UpsertIke(Box::new(IkeSaReplica::decode(&mut r)?)),
        MessageType::UpsertChild => Message::UpsertChild(Box::new(ChildSaReplica::decode(&mut r)?)),
        MessageType::RemoveIke => Message::RemoveIke(IkeSpis {
            initiator: r.u64("SPIi")?,
            responder: r.u64("SPIr")?,
        }),
        MessageType::RemoveChild => Message::RemoveChild {
            inbound_spi: r.u32("inbound SPI")?,
        },
        MessageType::Marks => Message::Marks(r.vec("marks", MAX_MARKS, SeqMark::decode)?),
        MessageType::Heartbeat => Message::Heartbeat,
    };
    r.finish()?;
    Ok(message)
}

/// The encoded body's length, checked against [`MAX_BODY_LEN`].
pub(crate) fn body_len(message: &Message) -> Result<usize, Problem> {
    let mut m = Measure(0);
    encode_message(message, &mut Writer(&mut m))?;
    if m.0 > MAX_BODY_LEN {
        return Err(Problem::TooLong {
            what: "body",
            max: MAX_BODY_LEN,
            got: m.0 as u64,
        });
    }
    Ok(m.0)
}

/// Appends the body to `out`. Callers reserve [`body_len`] bytes first, so that `out` never
/// reallocates (which would leave a copy of the keys in freed memory).
pub(crate) fn write_body(message: &Message, out: &mut Vec<u8>) -> Result<(), Problem> {
    encode_message(message, &mut Writer(out))
}

fn encode_message<S: Sink>(message: &Message, w: &mut Writer<'_, S>) -> Result<(), Problem> {
    match message {
        Message::Snapshot(s) => {
            s.check()?;
            w.vec("IKE SAs", &s.ike, MAX_IKE_SAS)?;
            w.vec("Child SAs", &s.child, MAX_CHILD_SAS)?;
            w.vec("marks", &s.marks, MAX_MARKS)
        }
        Message::UpsertIke(sa) => sa.encode(w),
        Message::UpsertChild(sa) => sa.encode(w),
        Message::RemoveIke(spis) => {
            w.u64(spis.initiator);
            w.u64(spis.responder);
            Ok(())
        }
        Message::RemoveChild { inbound_spi } => {
            w.u32(*inbound_spi);
            Ok(())
        }
        Message::Marks(marks) => w.vec("marks", marks, MAX_MARKS),
        Message::Heartbeat => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Header

/// The clear header of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the body holds.
    pub message_type: MessageType,
    /// Who sent it.
    pub sender_id: u32,
    /// The sender's epoch (it picks a new, larger one each time it starts).
    pub epoch: u64,
    /// Position of the message in the epoch, from 0.
    pub counter: u64,
    /// Length of the sealed body (ciphertext and tag).
    pub length: u32,
}

impl Header {
    /// The 30 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.message_type as u8;
        b[6..10].copy_from_slice(&self.sender_id.to_be_bytes());
        b[10..18].copy_from_slice(&self.epoch.to_be_bytes());
        b[18..26].copy_from_slice(&self.counter.to_be_bytes());
        b[26..30].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Parses the header at the start of `bytes` (which may hold more, or only the header when
    /// reading from a stream: [`Header::message_len`] then says how much to read in all).
    /// Refuses a bad magic, version or type, and a length over [`MAX_SEALED_LEN`] or too short
    /// for the tag.
    pub fn parse(bytes: &[u8]) -> Result<Header, Refusal> {
        let Some(b) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(Refusal::Truncated { len: bytes.len() });
        };
        if b[0..4] != MAGIC {
            return Err(Refusal::BadMagic);
        }
        if b[4] != VERSION {
            return Err(Refusal::UnknownVersion(b[4]));
        }
        let Some(message_type) = MessageType::from_u8(b[5]) else {
            return Err(Refusal::UnknownType(b[5]));
        };
        let length = u32::from_be_bytes([b[26], b[27], b[28], b[29]]);
        if length as usize > MAX_SEALED_LEN {
            return Err(Refusal::TooLarge { length });
        }
        if (length as usize) < TAG_LEN {
            return Err(Refusal::Truncated {
                len: HEADER_LEN + length as usize,
            });
        }
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(v)
        };
        Ok(Header {
            message_type,
            sender_id: u32::from_be_bytes([b[6], b[7], b[8], b[9]]),
            epoch: u64_at(10),
            counter: u64_at(18),
            length,
        })
    }

    /// Header plus sealed body.
    pub fn message_len(&self) -> usize {
        HEADER_LEN + self.length as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

/// Where the encoder writes: a buffer, or a length counter (the first pass).
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

struct Measure(usize);

impl Sink for Measure {
    fn put(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct Writer<'a, S>(&'a mut S);

impl<S: Sink> Writer<'_, S> {
    fn u8(&mut self, v: u8) {
        self.0.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.0.put(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.put(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.put(&v.to_be_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn opt(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    fn count(&mut self, what: &'static str, n: usize, max: usize) -> Result<(), Problem> {
        if n > max {
            return Err(Problem::TooLong {
                what,
                max,
                got: n as u64,
            });
        }
        // max <= MAX_BODY_LEN < 2^32.
        self.u32(n as u32);
        Ok(())
    }
    fn bytes(&mut self, what: &'static str, b: &[u8], max: usize) -> Result<(), Problem> {
        self.count(what, b.len(), max)?;
        self.0.put(b);
        Ok(())
    }
    fn key(&mut self, k: &Secret) -> Result<(), Problem> {
        self.bytes("key", k.expose_secret(), MAX_KEY_LEN)
    }
    fn vec<T: Codec>(&mut self, what: &'static str, v: &[T], max: usize) -> Result<(), Problem> {
        self.count(what, v.len(), max)?;
        v.iter().try_for_each(|x| x.encode(self))
    }
    fn ip(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(a) => {
                self.u8(4);
                self.0.put(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.0.put(&a.octets());
            }
        }
    }
    fn socket(&mut self, a: SocketAddr) {
        self.ip(a.ip());
        self.u16(a.port());
    }
}

// ---------------------------------------------------------------------------------------------
// Reader

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }
    fn err(&self, problem: Problem) -> DecodeError {
        DecodeError {
            offset: self.pos,
            problem,
        }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.err(Problem::Truncated { what }));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(what, N)?);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError {
                offset: at,
                problem: Problem::BadValue { what },
            }),
        }
    }
    /// The tag byte of an enum whose tags are `0..=max`.
    fn tag(&mut self, what: &'static str, max: u8) -> Result<u8, DecodeError> {
        let at = self.pos;
        match self.u8(what)? {
            t if t <= max => Ok(t),
            _ => Err(DecodeError {
                offset: at,
                problem: Problem::BadValue { what },
            }),
        }
    }
    fn opt(&mut self, what: &'static str) -> Result<Option<u64>, DecodeError> {
        Ok(if self.bool(what)? {
            Some(self.u64(what)?)
        } else {
            None
        })
    }
    /// A count or length: at most `max`, and at most what is left (every element is at least
    /// one byte), so nothing is allocated for data that is not there.
    fn count(&mut self, what: &'static str, max: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.u32(what)?;
        if n as usize > max {
            return Err(DecodeError {
                offset: at,
                problem: Problem::TooLong {
                    what,
                    max,
                    got: u64::from(n),
                },
            });
        }
        if n as usize > self.remaining() {
            return Err(self.err(Problem::Truncated { what }));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.count(what, max)?;
        self.take(what, n)
    }
    fn key(&mut self) -> Result<Secret, DecodeError> {
        Ok(Secret::from_slice(self.bytes("key", MAX_KEY_LEN)?))
    }
    fn vec<T>(
        &mut self,
        what: &'static str,
        max: usize,
        f: impl Fn(&mut Reader<'a>) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count(what, max)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(f(self)?);
        }
        Ok(v)
    }
    fn family(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let at = self.pos;
        match self.u8(what)? {
            f @ (4 | 6) => Ok(f),
            _ => Err(DecodeError {
                offset: at,
                problem: Problem::BadValue { what },
            }),
        }
    }
    fn ip_of(&mut self, family: u8, what: &'static str) -> Result<IpAddr, DecodeError> {
        Ok(if family == 4 {
            IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?))
        } else {
            IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?))
        })
    }
    fn socket(&mut self, what: &'static str) -> Result<SocketAddr, DecodeError> {
        let f = self.family(what)?;
        let ip = self.ip_of(f, what)?;
        Ok(SocketAddr::new(ip, self.u16(what)?))
    }
    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            len => Err(self.err(Problem::Trailing { len })),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Codecs

trait Codec: Sized {
    fn encode<S: Sink>(&self, w: &mut Writer<'_, S>) -> Result<(), Problem>;
}

/// Field names of one carried IKE message, for errors.
struct SentNames {
    empty: &'static str,
    count: &'static str,
    fragment: &'static str,
    total: &'static str,
}

const LAST_RESPONSE: SentNames = SentNames {
    empty: "last response without fragments",
    count: "response fragments",
    fragment: "response fragment",
    total: "last response",
};

const REQUEST: SentNames = SentNames {
    empty: "request in flight without fragments",
    count: "request fragments",
    fragment: "request fragment",
    total: "request in flight",
};

impl<S: Sink> Writer<'_, S> {
    /// message_id(u32) fragments(vec of bytes): 1 to [`MAX_RESPONSE_FRAGMENTS`] fragments of
    /// at most [`MAX_RESPONSE_LEN`] bytes together.
    fn sent(&mut self, m: &SentMessage, names: &SentNames) -> Result<(), Problem> {
        self.u32(m.message_id);
        if m.fragments.is_empty() {
            return Err(Problem::BadValue { what: names.empty });
        }
        self.count(names.count, m.fragments.len(), MAX_RESPONSE_FRAGMENTS)?;
        let total = m
            .fragments
            .iter()
            .fold(0usize, |t, f| t.saturating_add(f.len()));
        if total > MAX_RESPONSE_LEN {
            return Err(Problem::TooLong {
                what: names.total,
                max: MAX_RESPONSE_LEN,
                got: total as u64,
            });
        }
        for f in &m.fragments {
            self.bytes(names.fragment, f, MAX_RESPONSE_LEN)?;
        }
        Ok(())
    }
}

impl Reader<'_> {
    fn sent(&mut self, names: &SentNames) -> Result<SentMessage, DecodeError> {
        let message_id = self.u32("message ID")?;
        let at = self.pos;
        let n = self.count(names.count, MAX_RESPONSE_FRAGMENTS)?;
        if n == 0 {
            return Err(DecodeError {
                offset: at,
                problem: Problem::BadValue { what: names.empty },
            });
        }
        let mut fragments = Vec::with_capacity(n);
        let mut total = 0usize;
        for _ in 0..n {
            let at = self.pos;
            let f = self.bytes(names.fragment, MAX_RESPONSE_LEN)?;
            total += f.len();
            if total > MAX_RESPONSE_LEN {
                return Err(DecodeError {
                    offset: at,
                    problem: Problem::TooLong {
                        what: names.total,
                        max: MAX_RESPONSE_LEN,
                        got: total as u64,
                    },
                });
            }
            fragments.push(f.to_vec());
        }
        Ok(SentMessage {
            message_id,
            fragments,
        })
    }
}

impl Codec for RequestKind {
    fn encode<S: Sink>(&self, w: &mut Writer<'_, S>) -> Result<(), Problem> {
        match *self {
            RequestKind::Liveness => w.u8(0),
            RequestKind::Dpd => w.u8(1),
            RequestKind::DeleteChild { inbound_spi } => {
                w.u8(2);
                w.u32(inbound_spi);
            }
            RequestKind::DeleteIke => w.u8(3),
            RequestKind::RekeyChild { inbound_spi } => {
                w.u8(4);
                w.u32(inbound_spi);
            }
            RequestKind::RekeyIke => w.u8(5),
            RequestKind::CreateChild => w.u8(6),
        }
        Ok(())
    }
}

impl RequestKind {
    fn decode(r: &mut Reader<'_>) -> Result<RequestKind, DecodeError> {
        Ok(match r.tag("request kind", 6)? {
            0 => RequestKind::Liveness,
            1 => RequestKind::Dpd,
            2 => RequestKind::DeleteChild {
                inbound_spi: r.u32("inbound SPI")?,
            },
            3 => RequestKind::DeleteIke,
            4 => RequestKind::RekeyChild {
                inbound_spi: r.u32("inbound SPI")?,
            },
            5 => RequestKind::RekeyIke,
            _ => RequestKind::CreateChild,
        })
    }
}

impl Codec for QueuedWork {
    fn encode<S: Sink>(&self, w: &mut Writer<'_, S>) -> Result<(), Problem> {
        match self {
            QueuedWork::RekeyChild { inbound_spi } => {
                w.u8(0);
                w.u32(*inbound_spi);
            }
            QueuedWork::DeleteChild { inbound_spi } => {
                w.u8(1);
                w.u32(*inbound_spi);
            }
            QueuedWork::RekeyIke => w.u8(2),
            QueuedWork::DeleteIke => w.u8(3),
            QueuedWork::CreateChild {
                local_ts,
                remote_ts,
                group,
                retried,
            } => {
                w.u8(4);
                w.vec("local selectors", local_ts, MAX_SELECTORS)?;
                w.vec("remote selectors", remote_ts, MAX_SELECTORS)?;
                w.u16(*group);
                w.bool(*retried);
            }
        }
        Ok(())
    }
}

impl QueuedWork {
    fn decode(r: &mut Reader<'_>) -> Result<QueuedWork, DecodeError> {
        Ok(match r.tag("queued work", 4)? {
            0 => QueuedWork::RekeyChild {
                inbound_spi: r.u32("inbound SPI")?,
            },
            1 => QueuedWork::DeleteChild {
                inbound_spi: r.u32("inbound SPI")?,
            },
            2 => QueuedWork::RekeyIke,
            3 => QueuedWork::DeleteIke,
            _ => QueuedWork::CreateChild {
                local_ts: r.vec("local selectors", MAX_SELECTORS, TrafficSelector::decode)?,
                remote_ts: r.vec("remote selectors", MAX_SELECTORS, TrafficSelector::decode)?,
                group: r.u16("DH group")?,
                retried: r.bool("retried flag")?,
            },
        })
    }
}

impl Codec for ChildLink {
    fn encode<S: Sink>(&self, w: &mut Writer<'_, S>) -> Result<(), Problem> {
        w.u32(self.inbound_spi);
        w.u8(match self.status {
            ChildStatus::Active => 0,
            ChildStatus::Rekeying => 1,
            ChildStatus::Rekeyed => 2,
            ChildStatus::Deleting => 3,
        });
        w.opt(self.rekey_in_ms);
        w.opt(self.expire_in_ms);
        w.u16(self.rekey_group);
        w.bool(self.reported);
        Ok(())
    }
}

impl ChildLink {
    fn decode(r: &mut Reader<'_>) -> Result<ChildLink, DecodeError> {
        Ok(ChildLink {
            inbound_spi: r.u32("inbound SPI")?,
            status: match r.tag("Child SA status", 3)? {
                0 => ChildStatus::Active,
                1 => ChildStatus::Rekeying,
                2 => ChildStatus::Rekeyed,
                _ => ChildStatus::Deleting,
            },
            rekey_in_ms: r.opt("rekey time")?,
            expire_in_ms: r.opt("expiry time")?,
            rekey_group: r.u16("DH group")?,
            reported: r.bool("reported flag")?,
        })
    }
}

impl Codec for IkeSaReplica {
    fn encode<S: Sink>(&self, w: &mut Writer<'_, S>) -> Result<(), Problem> {
        self.check()?;
        w.bytes("connection name", self.connection.as_bytes(), MAX_NAME_LEN)?;
        w.u64(self.spis.initiator);
        w.u64(self.spis.responder);
        w.bool(self.initiator);
        w.socket(self.local);
        w.socket(self.remote);
        w.bool(self.nat.local_behind_nat);
        w.bool(self.nat.peer_behind_nat);
        w.bool(self.nat.udp_encap);
        let t = &self.transforms;
        for v in [t.encr, t.encr_key_bits, t.prf, t.integ, t.dh] {
            w.u16(v);
        }
        let k = &self.keys;
        for key in [
            &k.sk_d, &k.sk_ai, &k.sk_ar, &k.sk_ei, &k.sk_er, &k.sk_pi, &k.sk_pr,
        ] {
            w.key(key)?;
        }
        w.u32(self.next_send_msg_id);
        w.u32(self.next_recv_msg_id);
        match &self.last_response {
            None => w.u8(0),
            Some(m) => {
                w.u8(1);
                w.sent(m, &LAST_RESPONSE)?;
            }
        }
        w.bool(self.peer_fragmentation);
        w.bool(self.initial_contact);
        let t = &self.timers;
        w.u64(t.established_for_ms);
        w.opt(t.idle_for_ms);
        w.opt(t.rekey_in_ms);
        w.opt(t.expire_in_ms);
        w.vec("Child SA links", &self.children, MAX_CHILD_LINKS)?;
        w.vec("queued work", &self.queue, MAX_QUEUED)?;
        match &self.in_flight {
            None => w.u8(0),
            Some(f) => {
                w.u8(1);
                f.kind.encode(w)?;
                w.sent(&f.request, &REQUEST)?;
                w.u32(f.transmissions);
            }
        }
        w.u32(self.flags);
        Ok(())
    }
}

impl IkeSaReplica {
    fn decode(r: &mut Reader<'_>) -> Result<IkeSaReplica, DecodeError> {
        let at = r.pos;
        let name = r.bytes("connection name", MAX_NAME_LEN)?;
        let connection = core::str::from_utf8(name)
            .map_err(|_| DecodeError {
                offset: at,
                problem: Problem::BadValue {
                    what: "connection name",
                },
            })?
            .to_owned();
        let spis = IkeSpis {
            initiator: r.u64("SPIi")?,
            responder: r.u64("SPIr")?,
        };
        let initiator = r.bool("initiator")?;
        let local = r.socket("local address")?;
        let remote = r.socket("remote address")?;
        let nat = NatState {
            local_behind_nat: r.bool("NAT flag")?,
            peer_behind_nat: r.bool("NAT flag")?,
            udp_encap: r.bool("NAT flag")?,
        };
        let transforms = IkeTransforms {
            encr: r.u16("transform")?,
            encr_key_bits: r.u16("transform")?,
            prf: r.u16("transform")?,
            integ: r.u16("transform")?,
            dh: r.u16("transform")?,
        };
        let keys = IkeKeys {
            sk_d: r.key()?,
            sk_ai: r.key()?,
            sk_ar: r.key()?,
            sk_ei: r.key()?,
            sk_er: r.key()?,
            sk_pi: r.key()?,
            sk_pr: r.key()?,
        };
        let next_send_msg_id = r.u32("message ID")?;
        let next_recv_msg_id = r.u32("message ID")?;
        let last_response = if r.bool("last response flag")? {
            Some(r.sent(&LAST_RESPONSE)?)
        } else {
            None
        };
        let peer_fragmentation = r.bool("fragmentation flag")?;
        let initial_contact = r.bool("initial contact flag")?;
        let timers = IkeTimers {
            established_for_ms: r.u64("established time")?,
            idle_for_ms: r.opt("idle time")?,
            rekey_in_ms: r.opt("rekey time")?,
            expire_in_ms: r.opt("expiry time")?,
        };
        let children_at = r.pos;
        let children = r.vec("Child SA links", MAX_CHILD_LINKS, ChildLink::decode)?;
        let queue = r.vec("queued work", MAX_QUEUED, QueuedWork::decode)?;
        let in_flight = if r.bool("request in flight flag")? {
            Some(InFlight {
                kind: RequestKind::decode(r)?,
                request: r.sent(&REQUEST)?,
                transmissions: r.u32("transmissions")?,
            })
        } else {
            None
        };
        let sa = IkeSaReplica {
            connection,
            initiator,
            spis,
            local,
            remote,
            nat,
            transforms,
            keys,
            next_send_msg_id,
            next_recv_msg_id,
            last_response,
            peer_fragmentation,
            initial_contact,
            timers,
            children,
            queue,
            in_flight,
            flags: r.u32("flags")?,
        };
        sa.check().map_err(|problem| DecodeError {
            offset: children_at,
            problem,
        })?;
        Ok(sa)
    }
}

impl Codec for TrafficSelector {
    fn encode<S: Sink>(&self, w: &mut Writer<'_, S>) -> Result<(), Problem> {
        let family = match (self.start, self.end) {
            (IpAddr::V4(_), IpAddr::V4(_)) => 4,
            (IpAddr::V6(_), IpAddr::V6(_)) => 6,
            _ => {
                return Err(Problem::BadValue {
                    what: "selector with mixed address families",
                });
            }
        };
        w.u8(family);
        w.u8(self.ip_proto);
        w.u16(self.start_port);
        w.u16(self.end_port);
        // The family byte is written once: `ip` would repeat it.
        for a in [self.start, self.end] {
            match a {
                IpAddr::V4(a) => w.0.put(&a.octets()),
                IpAddr::V6(a) => w.0.put(&a.octets()),
            }
        }
        Ok(())
    }
}

impl TrafficSelector {
    fn decode(r: &mut Reader<'_>) -> Result<TrafficSelector, DecodeError> {
        let family = r.family("selector address family")?;
        Ok(TrafficSelector {
            ip_proto: r.u8("selector protocol")?,
            start_port: r.u16("selector port")?,
            end_port: r.u16("selector port")?,
            start: r.ip_of(family, "selector address")?,
            end: r.ip_of(family, "selector address")?,
        })
    }
}

impl Codec for ChildSaReplica {
    fn encode<S: Sink>(&self, w: &mut Writer<'_, S>) -> Result<(), Problem> {
        w.u64(self.ike.initiator);
        w.u64(self.ike.responder);
        w.u32(self.inbound_spi);
        w.u32(self.outbound_spi);
        w.u8(PROTOCOL_ESP);
        w.bool(self.udp_encap);
        w.u16(self.encr);
        w.u16(self.encr_key_bits);
        w.u16(self.integ);
        w.bool(self.esn);
        w.u16(self.dh);
        w.bool(self.initiator);
        let k = &self.keys;
        for key in [&k.encr_in, &k.integ_in, &k.encr_out, &k.integ_out] {
            w.key(key)?;
        }
        w.vec("local selectors", &self.ts_local, MAX_SELECTORS)?;
        w.vec("remote selectors", &self.ts_remote, MAX_SELECTORS)?;
        let l = &self.lifetime;
        for v in [l.soft_bytes, l.hard_bytes, l.soft_packets, l.hard_packets] {
            w.opt(v);
        }
        let c = &self.counters;
        for v in [c.bytes_in, c.bytes_out, c.packets_in, c.packets_out] {
            w.u64(v);
        }
        Ok(())
    }
}

impl ChildSaReplica {
    fn decode(r: &mut Reader<'_>) -> Result<ChildSaReplica, DecodeError> {
        let ike = IkeSpis {
            initiator: r.u64("SPIi")?,
            responder: r.u64("SPIr")?,
        };
        let inbound_spi = r.u32("inbound SPI")?;
        let outbound_spi = r.u32("outbound SPI")?;
        let at = r.pos;
        if r.u8("protocol")? != PROTOCOL_ESP {
            return Err(DecodeError {
                offset: at,
                problem: Problem::BadValue { what: "protocol" },
            });
        }
        Ok(ChildSaReplica {
            ike,
            inbound_spi,
            outbound_spi,
            udp_encap: r.bool("UDP encapsulation flag")?,
            encr: r.u16("transform")?,
            encr_key_bits: r.u16("transform")?,
            integ: r.u16("transform")?,
            esn: r.bool("ESN flag")?,
            dh: r.u16("transform")?,
            initiator: r.bool("initiator")?,
            keys: ChildKeys {
                encr_in: r.key()?,
                integ_in: r.key()?,
                encr_out: r.key()?,
                integ_out: r.key()?,
            },
            ts_local: r.vec("local selectors", MAX_SELECTORS, TrafficSelector::decode)?,
            ts_remote: r.vec("remote selectors", MAX_SELECTORS, TrafficSelector::decode)?,
            lifetime: ChildLifetime {
                soft_bytes: r.opt("lifetime")?,
                hard_bytes: r.opt("lifetime")?,
                soft_packets: r.opt("lifetime")?,
                hard_packets: r.opt("lifetime")?,
            },
            counters: TrafficCounters {
                bytes_in: r.u64("counter")?,
                bytes_out: r.u64("counter")?,
                packets_in: r.u64("counter")?,
                packets_out: r.u64("counter")?,
            },
        })
    }
}

impl Codec for SeqMark {
    fn encode<S: Sink>(&self, w: &mut Writer<'_, S>) -> Result<(), Problem> {
        w.u32(self.inbound_spi);
        w.u64(self.outbound_seq);
        w.u64(self.inbound_highest);
        w.count("replay bitmap", self.replay_bitmap.len(), MAX_REPLAY_WORDS)?;
        for word in &self.replay_bitmap {
            w.u64(*word);
        }
        Ok(())
    }
}

impl SeqMark {
    fn decode(r: &mut Reader<'_>) -> Result<SeqMark, DecodeError> {
        Ok(SeqMark {
            inbound_spi: r.u32("inbound SPI")?,
            outbound_seq: r.u64("outbound sequence")?,
            inbound_highest: r.u64("inbound sequence")?,
            replay_bitmap: r.vec("replay bitmap", MAX_REPLAY_WORDS, |r| {
                r.u64("replay bitmap")
            })?,
        })
    }
}
