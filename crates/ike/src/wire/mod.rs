//! IKEv2 wire format (RFC 7296 §3; RFC 7383 §2.5 for SKF): a zero-copy header view, `Repr`-style
//! payload values, and message parse/emit. Decoding never panics; every error is a [`WireError`].

mod payload;
mod registry;

pub use payload::*;
pub use registry::*;

/// Length of the fixed IKE header (RFC 7296 §3.1).
pub const HEADER_LEN: usize = 28;
/// Length of the generic payload header (RFC 7296 §3.2).
pub const GENERIC_HEADER_LEN: usize = 4;
/// The only major version we speak (RFC 7296 §3.1).
pub const IKE_MAJOR_VERSION: u8 = 2;
/// Four zero bytes that tell IKE apart from ESP on UDP port 4500 (RFC 3948 §2.2).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// Why a datagram could not be decoded. Values, never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer ends before the structure does.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A length field is inconsistent with its content.
    #[error("bad length in {0}")]
    BadLength(&'static str),
    /// The major version is not 2 (answer INVALID_MAJOR_VERSION, RFC 7296 §2.5).
    #[error("unsupported major version {0}")]
    UnsupportedVersion(u8),
    /// A payload we do not understand carries the critical bit (RFC 7296 §2.5).
    #[error("unsupported critical payload {0}")]
    UnsupportedCriticalPayload(PayloadType),
    /// A field holds a value the format forbids.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A message under construction does not fit the format's length fields.
    #[error("{0} too long to encode")]
    TooLong(&'static str),
}

/// Bounds-checked big-endian reader; every accessor returns a [`WireError`] instead of panicking.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated(self.what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Header flags (RFC 7296 §3.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// Set by the original initiator of the IKE SA.
    pub const INITIATOR: Flags = Flags(0x08);
    /// "I can speak a higher major version": we never set it.
    pub const VERSION: Flags = Flags(0x10);
    /// Set in responses.
    pub const RESPONSE: Flags = Flags(0x20);
    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl core::fmt::Debug for Flags {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Flags(")?;
        if self.contains(Flags::INITIATOR) {
            write!(f, "I")?;
        }
        if self.contains(Flags::RESPONSE) {
            write!(f, "R")?;
        }
        if self.contains(Flags::VERSION) {
            write!(f, "V")?;
        }
        write!(f, ")")
    }
}

/// Zero-copy view of an IKE header (smoltcp style): field offsets live here only.
#[derive(Debug, Clone, Copy)]
pub struct HeaderView<T: AsRef<[u8]>> {
    buf: T,
}

mod field {
    pub const ISPI: core::ops::Range<usize> = 0..8;
    pub const RSPI: core::ops::Range<usize> = 8..16;
    pub const NEXT: usize = 16;
    pub const VERSION: usize = 17;
    pub const EXCHANGE: usize = 18;
    pub const FLAGS: usize = 19;
    pub const MSGID: core::ops::Range<usize> = 20..24;
    pub const LENGTH: core::ops::Range<usize> = 24..28;
}

impl<T: AsRef<[u8]>> HeaderView<T> {
    /// Checks that the buffer holds a whole header; the length field is checked by [`Header::parse`].
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated("IKE header"));
        }
        Ok(Self { buf })
    }
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    fn u64_at(&self, r: core::ops::Range<usize>) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.b()[r]);
        u64::from_be_bytes(a)
    }
    fn u32_at(&self, r: core::ops::Range<usize>) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&self.b()[r]);
        u32::from_be_bytes(a)
    }
    /// Initiator's SPI.
    pub fn ispi(&self) -> u64 {
        self.u64_at(field::ISPI)
    }
    /// Responder's SPI (zero in the first IKE_SA_INIT request).
    pub fn rspi(&self) -> u64 {
        self.u64_at(field::RSPI)
    }
    /// First payload type.
    pub fn next_payload(&self) -> PayloadType {
        PayloadType(self.b()[field::NEXT])
    }
    /// Major version (high nibble).
    pub fn major_version(&self) -> u8 {
        self.b()[field::VERSION] >> 4
    }
    /// Minor version (low nibble).
    pub fn minor_version(&self) -> u8 {
        self.b()[field::VERSION] & 0x0f
    }
    /// Exchange type.
    pub fn exchange(&self) -> ExchangeType {
        ExchangeType(self.b()[field::EXCHANGE])
    }
    /// Flags.
    pub fn flags(&self) -> Flags {
        Flags(self.b()[field::FLAGS])
    }
    /// Message ID.
    pub fn message_id(&self) -> u32 {
        self.u32_at(field::MSGID)
    }
    /// Total message length as stated in the header.
    pub fn length(&self) -> u32 {
        self.u32_at(field::LENGTH)
    }
}

/// Parsed IKE header (RFC 7296 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Initiator's SPI.
    pub ispi: u64,
    /// Responder's SPI.
    pub rspi: u64,
    /// First payload type.
    pub next_payload: PayloadType,
    /// Exchange type.
    pub exchange: ExchangeType,
    /// Flags.
    pub flags: Flags,
    /// Message ID.
    pub message_id: u32,
    /// Total length (filled in on emit).
    pub length: u32,
}

impl Header {
    /// Parses and validates a header against the datagram length.
    pub fn parse(buf: &[u8]) -> Result<Header, WireError> {
        let v = HeaderView::new_checked(buf)?;
        if v.major_version() != IKE_MAJOR_VERSION {
            return Err(WireError::UnsupportedVersion(v.major_version()));
        }
        let length = v.length();
        if (length as usize) < HEADER_LEN || length as usize > buf.len() {
            return Err(WireError::BadLength("IKE header"));
        }
        Ok(Header {
            ispi: v.ispi(),
            rspi: v.rspi(),
            next_payload: v.next_payload(),
            exchange: v.exchange(),
            flags: v.flags(),
            message_id: v.message_id(),
            length,
        })
    }

    /// Whether the R flag is set.
    pub fn is_response(&self) -> bool {
        self.flags.contains(Flags::RESPONSE)
    }

    /// Whether the I flag is set (sent by the original initiator).
    pub fn is_from_initiator(&self) -> bool {
        self.flags.contains(Flags::INITIATOR)
    }

    /// Appends the 28-byte header.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ispi.to_be_bytes());
        out.extend_from_slice(&self.rspi.to_be_bytes());
        out.push(self.next_payload.0);
        out.push(IKE_MAJOR_VERSION << 4);
        out.push(self.exchange.0);
        out.push(self.flags.0);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// A decoded IKE message: header plus the payload chain (the SK payload, if any, stays encrypted;
/// see [`EncryptedPayload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// Payloads in order; unknown non-critical payloads are dropped.
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Parses a whole datagram (without the non-ESP marker). Bytes after the stated length are
    /// ignored as RFC 7296 permits none; we reject them to keep the parse unambiguous.
    pub fn parse(buf: &[u8]) -> Result<Message, WireError> {
        let header = Header::parse(buf)?;
        let len = header.length as usize;
        let body = buf
            .get(HEADER_LEN..len)
            .ok_or(WireError::BadLength("IKE header"))?;
        if len != buf.len() {
            return Err(WireError::BadLength("IKE datagram"));
        }
        let payloads = parse_chain(header.next_payload, body, HEADER_LEN)?;
        Ok(Message { header, payloads })
    }

    /// Encodes header and payloads, fixing up next-payload fields and lengths.
    pub fn emit(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(256);
        let mut h = self.header;
        h.next_payload = self
            .payloads
            .first()
            .map_or(PayloadType::NONE, Payload::payload_type);
        h.emit(&mut out);
        emit_chain(&self.payloads, &mut out)?;
        let len = u32::try_from(out.len()).map_err(|_| WireError::TooLong("IKE message"))?;
        out[field::LENGTH].copy_from_slice(&len.to_be_bytes());
        Ok(out)
    }

    /// The first payload of a given type.
    pub fn find(&self, ty: PayloadType) -> Option<&Payload> {
        self.payloads.iter().find(|p| p.payload_type() == ty)
    }

    /// All notify payloads.
    pub fn notifies(&self) -> impl Iterator<Item = &NotifyPayload> {
        self.payloads.iter().filter_map(|p| match p {
            Payload::Notify(n) => Some(n),
            _ => None,
        })
    }

    /// The first notify of a given type.
    pub fn notify(&self, ty: NotifyType) -> Option<&NotifyPayload> {
        self.notifies().find(|n| n.ty == ty)
    }
}

/// Parses a payload chain starting with `first`. `base` is the offset of `body` in the datagram,
/// recorded for the SK payload so the caller can authenticate the exact bytes.
pub fn parse_chain(
    first: PayloadType,
    body: &[u8],
    base: usize,
) -> Result<Vec<Payload>, WireError> {
    let mut out = Vec::new();
    let mut next = first;
    let mut r = Reader::new(body, "payload chain");
    while next != PayloadType::NONE {
        let offset = base + (body.len() - r.remaining());
        let this = next;
        next = PayloadType(r.u8()?);
        let critical = r.u8()? & 0x80 != 0;
        let len = r.u16()? as usize;
        if len < GENERIC_HEADER_LEN {
            return Err(WireError::BadLength("generic payload header"));
        }
        let pbody = r
            .take(len - GENERIC_HEADER_LEN)
            .map_err(|_| WireError::BadLength("payload"))?;
        match Payload::parse_body(this, next, pbody, offset)? {
            Some(p) => {
                let is_sk = matches!(p, Payload::Encrypted(_) | Payload::EncryptedFragment(_));
                out.push(p);
                if is_sk {
                    // SK/SKF is the last payload; its next-payload names the first inner one.
                    if !r.is_empty() {
                        return Err(WireError::Malformed("data after encrypted payload"));
                    }
                    return Ok(out);
                }
            }
            None if critical => return Err(WireError::UnsupportedCriticalPayload(this)),
            None => {}
        }
    }
    if !r.is_empty() {
        return Err(WireError::BadLength("payload chain"));
    }
    Ok(out)
}

/// Appends a payload chain; the last payload's next-payload is NONE, except that an SK/SKF
/// payload's own field names its first inner payload.
pub fn emit_chain(payloads: &[Payload], out: &mut Vec<u8>) -> Result<(), WireError> {
    for (i, p) in payloads.iter().enumerate() {
        let next = match p {
            Payload::Encrypted(e) => e.inner_next,
            Payload::EncryptedFragment(e) => e.inner_next,
            _ => payloads
                .get(i + 1)
                .map_or(PayloadType::NONE, Payload::payload_type),
        };
        let start = out.len();
        out.push(next.0);
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        p.emit_body(out)?;
        let len = u16::try_from(out.len() - start).map_err(|_| WireError::TooLong("payload"))?;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// Encodes a payload chain on its own (the plaintext of an SK payload) and returns the type of
/// its first payload.
pub fn encode_inner(payloads: &[Payload]) -> Result<(PayloadType, Vec<u8>), WireError> {
    let mut out = Vec::with_capacity(256);
    emit_chain(payloads, &mut out)?;
    Ok((
        payloads
            .first()
            .map_or(PayloadType::NONE, Payload::payload_type),
        out,
    ))
}

#[cfg(test)]
mod tests;
