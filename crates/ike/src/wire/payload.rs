//! IKEv2 payload bodies (RFC 7296 §3.3-§3.16, RFC 7383 §2.5) as owned `Repr` values with
//! bounds-checked parse and emit.

use super::{AuthMethod, IdType, NotifyType, PayloadType, ProtocolId, Reader, TsType, WireError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Transform attribute type "Key Length" (RFC 7296 §3.3.5).
pub const ATTR_KEY_LENGTH: u16 = 14;

/// A transform attribute (RFC 7296 §3.3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// Type/value format (AF bit set): a 16-bit value.
    Tv(u16, u16),
    /// Type/length/value format.
    Tlv(u16, Vec<u8>),
}

/// A transform substructure (RFC 7296 §3.3.2). Types and IDs stay raw numbers here; the
/// `transform` module gives them names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformRepr {
    /// Transform type (1 ENCR, 2 PRF, 3 INTEG, 4 DH, 5 ESN).
    pub ttype: u8,
    /// Transform ID.
    pub id: u16,
    /// Attributes (normally only Key Length).
    pub attributes: Vec<Attribute>,
}

impl TransformRepr {
    /// The Key Length attribute, if present.
    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Tv(ATTR_KEY_LENGTH, v) => Some(*v),
            _ => None,
        })
    }
    /// Whether every attribute is one we understand (RFC 7296 §3.3.6: reject the transform otherwise).
    pub fn attributes_understood(&self) -> bool {
        self.attributes
            .iter()
            .all(|a| matches!(a, Attribute::Tv(ATTR_KEY_LENGTH, _)))
    }
}

/// A proposal substructure (RFC 7296 §3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalRepr {
    /// Proposal number (1-based, echoed by the responder).
    pub number: u8,
    /// IKE or ESP.
    pub protocol: ProtocolId,
    /// SPI (empty for the initial IKE SA, 8 bytes for IKE rekeying, 4 for ESP).
    pub spi: Vec<u8>,
    /// Transforms.
    pub transforms: Vec<TransformRepr>,
}

/// Security Association payload (RFC 7296 §3.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SaPayload {
    /// Proposals in preference order.
    pub proposals: Vec<ProposalRepr>,
}

/// Key Exchange payload (RFC 7296 §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KePayload {
    /// Diffie-Hellman group number.
    pub group: u16,
    /// Public value.
    pub data: Vec<u8>,
}

/// Identification payload body (RFC 7296 §3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPayload {
    /// ID type.
    pub id_type: IdType,
    /// Identification data.
    pub data: Vec<u8>,
}

impl IdPayload {
    /// The bytes AUTH is computed over: "RestOfIDPayload" (RFC 7296 §2.15).
    pub fn body(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(4 + self.data.len());
        v.push(self.id_type.0);
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(&self.data);
        v
    }
}

/// Authentication payload (RFC 7296 §3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPayload {
    /// Method.
    pub method: AuthMethod,
    /// Authentication data.
    pub data: Vec<u8>,
}

/// Notify payload (RFC 7296 §3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyPayload {
    /// Protocol the SPI belongs to (0 if none).
    pub protocol: ProtocolId,
    /// SPI (usually empty).
    pub spi: Vec<u8>,
    /// Notify message type.
    pub ty: NotifyType,
    /// Notification data.
    pub data: Vec<u8>,
}

impl NotifyPayload {
    /// A notify without SPI.
    pub fn new(ty: NotifyType, data: Vec<u8>) -> Self {
        Self {
            protocol: ProtocolId(0),
            spi: Vec::new(),
            ty,
            data,
        }
    }
}

/// Delete payload (RFC 7296 §3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletePayload {
    /// IKE (no SPIs: the SA the message travels on) or ESP/AH.
    pub protocol: ProtocolId,
    /// SPIs to delete.
    pub spis: Vec<Vec<u8>>,
}

/// One traffic selector (RFC 7296 §3.13.1), IPv4 or IPv6 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP protocol (0 = any).
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

impl TrafficSelector {
    /// All IPv4 addresses, protocols and ports.
    pub const fn any_v4() -> Self {
        Self {
            ip_proto: 0,
            start_port: 0,
            end_port: 65535,
            start: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            end: IpAddr::V4(Ipv4Addr::BROADCAST),
        }
    }
    /// All IPv6 addresses, protocols and ports.
    pub const fn any_v6() -> Self {
        Self {
            ip_proto: 0,
            start_port: 0,
            end_port: 65535,
            start: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            end: IpAddr::V6(Ipv6Addr::new(
                0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
            )),
        }
    }
    /// The selector for a prefix, all protocols and ports. Host bits are masked.
    pub fn from_prefix(addr: IpAddr, len: u8) -> Self {
        let (start, end) = match addr {
            IpAddr::V4(a) => {
                let len = u32::from(len.min(32));
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let s = u32::from(a) & mask;
                (IpAddr::V4(s.into()), IpAddr::V4((s | !mask).into()))
            }
            IpAddr::V6(a) => {
                let len = u32::from(len.min(128));
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                let s = u128::from(a) & mask;
                (IpAddr::V6(s.into()), IpAddr::V6((s | !mask).into()))
            }
        };
        Self {
            ip_proto: 0,
            start_port: 0,
            end_port: 65535,
            start,
            end,
        }
    }
    /// The TS type for the address family.
    pub fn ts_type(&self) -> TsType {
        match self.start {
            IpAddr::V4(_) => TsType::IPV4_ADDR_RANGE,
            IpAddr::V6(_) => TsType::IPV6_ADDR_RANGE,
        }
    }
}

impl core::fmt::Display for TrafficSelector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}..{}", self.start, self.end)?;
        if self.ip_proto != 0 || self.start_port != 0 || self.end_port != 65535 {
            write!(
                f,
                "[{}/{}-{}]",
                self.ip_proto, self.start_port, self.end_port
            )?;
        }
        Ok(())
    }
}

/// Encrypted and Authenticated payload (RFC 7296 §3.14), still protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedPayload {
    /// Type of the first payload inside.
    pub inner_next: PayloadType,
    /// IV || ciphertext || ICV.
    pub body: Vec<u8>,
    /// Offset of this payload's generic header in the datagram (0 when built locally).
    pub offset: usize,
}

/// Encrypted Fragment payload (RFC 7383 §2.5), still protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedFragment {
    /// Type of the first inner payload (only in fragment 1, else 0).
    pub inner_next: PayloadType,
    /// Fragment number, from 1.
    pub number: u16,
    /// Total number of fragments.
    pub total: u16,
    /// IV || ciphertext || ICV.
    pub body: Vec<u8>,
    /// Offset of this payload's generic header in the datagram.
    pub offset: usize,
}

/// A payload (RFC 7296 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// SA.
    Sa(SaPayload),
    /// KE.
    Ke(KePayload),
    /// IDi.
    IdI(IdPayload),
    /// IDr.
    IdR(IdPayload),
    /// AUTH.
    Auth(AuthPayload),
    /// Ni / Nr.
    Nonce(Vec<u8>),
    /// N.
    Notify(NotifyPayload),
    /// D.
    Delete(DeletePayload),
    /// V.
    VendorId(Vec<u8>),
    /// TSi.
    TsI(Vec<TrafficSelector>),
    /// TSr.
    TsR(Vec<TrafficSelector>),
    /// CP: parsed only as far as its framing, then ignored.
    Config(Vec<u8>),
    /// SK.
    Encrypted(EncryptedPayload),
    /// SKF.
    EncryptedFragment(EncryptedFragment),
    /// A known payload type we do not use (CERT, CERTREQ, EAP): kept raw.
    Other(PayloadType, Vec<u8>),
}

fn parse_ts_list(body: &[u8]) -> Result<Vec<TrafficSelector>, WireError> {
    let mut r = Reader::new(body, "TS payload");
    let n = r.u8()?;
    r.take(3)?;
    let mut out = Vec::with_capacity(usize::from(n).min(16));
    for _ in 0..n {
        let ty = TsType(r.u8()?);
        let ip_proto = r.u8()?;
        let len = usize::from(r.u16()?);
        if len < 4 {
            return Err(WireError::BadLength("traffic selector"));
        }
        let mut t = Reader::new(r.take(len - 4)?, "traffic selector");
        let start_port = t.u16()?;
        let end_port = t.u16()?;
        let (start, end) = match ty {
            TsType::IPV4_ADDR_RANGE => {
                let s = t.take(4)?;
                let e = t.take(4)?;
                let a = Ipv4Addr::new(s[0], s[1], s[2], s[3]);
                let b = Ipv4Addr::new(e[0], e[1], e[2], e[3]);
                (IpAddr::V4(a), IpAddr::V4(b))
            }
            TsType::IPV6_ADDR_RANGE => {
                let mut s = [0u8; 16];
                s.copy_from_slice(t.take(16)?);
                let mut e = [0u8; 16];
                e.copy_from_slice(t.take(16)?);
                (IpAddr::V6(s.into()), IpAddr::V6(e.into()))
            }
            // Unknown selector types (e.g. Fibre Channel) are skipped: we cannot honour them.
            _ => continue,
        };
        if !t.is_empty() {
            return Err(WireError::BadLength("traffic selector"));
        }
        out.push(TrafficSelector {
            ip_proto,
            start_port,
            end_port,
            start,
            end,
        });
    }
    if !r.is_empty() {
        return Err(WireError::BadLength("TS payload"));
    }
    Ok(out)
}

fn emit_ts_list(list: &[TrafficSelector], out: &mut Vec<u8>) -> Result<(), WireError> {
    out.push(u8::try_from(list.len()).map_err(|_| WireError::TooLong("TS payload"))?);
    out.extend_from_slice(&[0, 0, 0]);
    for ts in list {
        if ts.start.is_ipv4() != ts.end.is_ipv4() {
            return Err(WireError::Malformed("traffic selector with mixed families"));
        }
        out.push(ts.ts_type().0);
        out.push(ts.ip_proto);
        let len: u16 = if ts.start.is_ipv4() { 16 } else { 40 };
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&ts.start_port.to_be_bytes());
        out.extend_from_slice(&ts.end_port.to_be_bytes());
        for a in [ts.start, ts.end] {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
    }
    Ok(())
}

fn parse_sa(body: &[u8]) -> Result<SaPayload, WireError> {
    let mut r = Reader::new(body, "SA payload");
    let mut proposals = Vec::new();
    loop {
        let last = r.u8()?;
        r.u8()?;
        let len = usize::from(r.u16()?);
        if len < 8 {
            return Err(WireError::BadLength("proposal"));
        }
        let mut p = Reader::new(r.take(len - 4)?, "proposal");
        let number = p.u8()?;
        let protocol = ProtocolId(p.u8()?);
        let spi_size = usize::from(p.u8()?);
        let ntrans = p.u8()?;
        let spi = p.take(spi_size)?.to_vec();
        let mut transforms = Vec::with_capacity(usize::from(ntrans).min(32));
        for i in 0..ntrans {
            let tlast = p.u8()?;
            p.u8()?;
            let tlen = usize::from(p.u16()?);
            if tlen < 8 {
                return Err(WireError::BadLength("transform"));
            }
            let mut t = Reader::new(p.take(tlen - 4)?, "transform");
            let ttype = t.u8()?;
            t.u8()?;
            let id = t.u16()?;
            let mut attributes = Vec::new();
            while !t.is_empty() {
                let at = t.u16()?;
                if at & 0x8000 != 0 {
                    attributes.push(Attribute::Tv(at & 0x7fff, t.u16()?));
                } else {
                    let alen = usize::from(t.u16()?);
                    attributes.push(Attribute::Tlv(at, t.take(alen)?.to_vec()));
                }
            }
            let expect_last = i + 1 == ntrans;
            if (tlast == 0) != expect_last || (tlast != 0 && tlast != 3) {
                return Err(WireError::Malformed("transform last-substructure"));
            }
            transforms.push(TransformRepr {
                ttype,
                id,
                attributes,
            });
        }
        if !p.is_empty() {
            return Err(WireError::BadLength("proposal"));
        }
        proposals.push(ProposalRepr {
            number,
            protocol,
            spi,
            transforms,
        });
        match last {
            0 => break,
            2 => {}
            _ => return Err(WireError::Malformed("proposal last-substructure")),
        }
    }
    if !r.is_empty() {
        return Err(WireError::BadLength("SA payload"));
    }
    Ok(SaPayload { proposals })
}

fn emit_sa(sa: &SaPayload, out: &mut Vec<u8>) -> Result<(), WireError> {
    for (pi, p) in sa.proposals.iter().enumerate() {
        let pstart = out.len();
        out.push(if pi + 1 == sa.proposals.len() { 0 } else { 2 });
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        out.push(p.number);
        out.push(p.protocol.0);
        out.push(u8::try_from(p.spi.len()).map_err(|_| WireError::TooLong("SPI"))?);
        out.push(u8::try_from(p.transforms.len()).map_err(|_| WireError::TooLong("proposal"))?);
        out.extend_from_slice(&p.spi);
        for (ti, t) in p.transforms.iter().enumerate() {
            let tstart = out.len();
            out.push(if ti + 1 == p.transforms.len() { 0 } else { 3 });
            out.push(0);
            out.extend_from_slice(&[0, 0]);
            out.push(t.ttype);
            out.push(0);
            out.extend_from_slice(&t.id.to_be_bytes());
            for a in &t.attributes {
                match a {
                    Attribute::Tv(ty, v) => {
                        out.extend_from_slice(&(ty | 0x8000).to_be_bytes());
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                    Attribute::Tlv(ty, v) => {
                        out.extend_from_slice(&(ty & 0x7fff).to_be_bytes());
                        let l =
                            u16::try_from(v.len()).map_err(|_| WireError::TooLong("attribute"))?;
                        out.extend_from_slice(&l.to_be_bytes());
                        out.extend_from_slice(v);
                    }
                }
            }
            let tl =
                u16::try_from(out.len() - tstart).map_err(|_| WireError::TooLong("transform"))?;
            out[tstart + 2..tstart + 4].copy_from_slice(&tl.to_be_bytes());
        }
        let pl = u16::try_from(out.len() - pstart).map_err(|_| WireError::TooLong("proposal"))?;
        out[pstart + 2..pstart + 4].copy_from_slice(&pl.to_be_bytes());
    }
    Ok(())
}

impl Payload {
    /// The payload type code.
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke(_) => PayloadType::KE,
            Payload::IdI(_) => PayloadType::IDI,
            Payload::IdR(_) => PayloadType::IDR,
            Payload::Auth(_) => PayloadType::AUTH,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::VendorId(_) => PayloadType::VENDOR_ID,
            Payload::TsI(_) => PayloadType::TSI,
            Payload::TsR(_) => PayloadType::TSR,
            Payload::Config(_) => PayloadType::CP,
            Payload::Encrypted(_) => PayloadType::SK,
            Payload::EncryptedFragment(_) => PayloadType::SKF,
            Payload::Other(t, _) => *t,
        }
    }

    /// Parses one payload body; `Ok(None)` for a type we do not know (the caller checks the
    /// critical bit). `offset` is where the generic header starts in the datagram.
    pub fn parse_body(
        ty: PayloadType,
        next: PayloadType,
        body: &[u8],
        offset: usize,
    ) -> Result<Option<Payload>, WireError> {
        let p = match ty {
            PayloadType::SA => Payload::Sa(parse_sa(body)?),
            PayloadType::KE => {
                let mut r = Reader::new(body, "KE payload");
                let group = r.u16()?;
                r.take(2)?;
                Payload::Ke(KePayload {
                    group,
                    data: r.rest().to_vec(),
                })
            }
            PayloadType::IDI | PayloadType::IDR => {
                let mut r = Reader::new(body, "ID payload");
                let id_type = IdType(r.u8()?);
                r.take(3)?;
                let id = IdPayload {
                    id_type,
                    data: r.rest().to_vec(),
                };
                if ty == PayloadType::IDI {
                    Payload::IdI(id)
                } else {
                    Payload::IdR(id)
                }
            }
            PayloadType::AUTH => {
                let mut r = Reader::new(body, "AUTH payload");
                let method = AuthMethod(r.u8()?);
                r.take(3)?;
                Payload::Auth(AuthPayload {
                    method,
                    data: r.rest().to_vec(),
                })
            }
            PayloadType::NONCE => Payload::Nonce(body.to_vec()),
            PayloadType::NOTIFY => {
                let mut r = Reader::new(body, "Notify payload");
                let protocol = ProtocolId(r.u8()?);
                let spi_size = usize::from(r.u8()?);
                let nty = NotifyType(r.u16()?);
                let spi = r.take(spi_size)?.to_vec();
                Payload::Notify(NotifyPayload {
                    protocol,
                    spi,
                    ty: nty,
                    data: r.rest().to_vec(),
                })
            }
            PayloadType::DELETE => {
                let mut r = Reader::new(body, "Delete payload");
                let protocol = ProtocolId(r.u8()?);
                let spi_size = usize::from(r.u8()?);
                let n = r.u16()?;
                let mut spis = Vec::new();
                for _ in 0..n {
                    spis.push(r.take(spi_size)?.to_vec());
                }
                if !r.is_empty() {
                    return Err(WireError::BadLength("Delete payload"));
                }
                Payload::Delete(DeletePayload { protocol, spis })
            }
            PayloadType::VENDOR_ID => Payload::VendorId(body.to_vec()),
            PayloadType::TSI => Payload::TsI(parse_ts_list(body)?),
            PayloadType::TSR => Payload::TsR(parse_ts_list(body)?),
            PayloadType::CP => Payload::Config(body.to_vec()),
            PayloadType::SK => Payload::Encrypted(EncryptedPayload {
                inner_next: next,
                body: body.to_vec(),
                offset,
            }),
            PayloadType::SKF => {
                let mut r = Reader::new(body, "SKF payload");
                let number = r.u16()?;
                let total = r.u16()?;
                if number == 0 || total == 0 || number > total {
                    return Err(WireError::Malformed("fragment number"));
                }
                Payload::EncryptedFragment(EncryptedFragment {
                    inner_next: next,
                    number,
                    total,
                    body: r.rest().to_vec(),
                    offset,
                })
            }
            PayloadType::CERT | PayloadType::CERTREQ | PayloadType::EAP => {
                Payload::Other(ty, body.to_vec())
            }
            _ => return Ok(None),
        };
        Ok(Some(p))
    }

    /// Appends the payload body (without the generic header).
    pub fn emit_body(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            Payload::Sa(sa) => emit_sa(sa, out)?,
            Payload::Ke(ke) => {
                out.extend_from_slice(&ke.group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&ke.data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Auth(a) => {
                out.push(a.method.0);
                out.extend_from_slice(&[0, 0, 0]);
                out.extend_from_slice(&a.data);
            }
            Payload::Nonce(n)
            | Payload::VendorId(n)
            | Payload::Config(n)
            | Payload::Other(_, n) => out.extend_from_slice(n),
            Payload::Notify(n) => {
                out.push(n.protocol.0);
                out.push(u8::try_from(n.spi.len()).map_err(|_| WireError::TooLong("SPI"))?);
                out.extend_from_slice(&n.ty.0.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.push(d.protocol.0);
                let size = d.spis.first().map_or(0, Vec::len);
                if d.spis.iter().any(|s| s.len() != size) {
                    return Err(WireError::Malformed("Delete SPIs of different sizes"));
                }
                out.push(u8::try_from(size).map_err(|_| WireError::TooLong("SPI"))?);
                let n = u16::try_from(d.spis.len())
                    .map_err(|_| WireError::TooLong("Delete payload"))?;
                out.extend_from_slice(&n.to_be_bytes());
                for s in &d.spis {
                    out.extend_from_slice(s);
                }
            }
            Payload::TsI(l) | Payload::TsR(l) => emit_ts_list(l, out)?,
            Payload::Encrypted(e) => out.extend_from_slice(&e.body),
            Payload::EncryptedFragment(e) => {
                out.extend_from_slice(&e.number.to_be_bytes());
                out.extend_from_slice(&e.total.to_be_bytes());
                out.extend_from_slice(&e.body);
            }
        }
        Ok(())
    }
}
