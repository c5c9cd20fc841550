//! Proposals (RFC 7296 §3.3) as users write them: strongSwan proposal strings
//! (`aes256-sha256-modp2048`, `aes256gcm16-prfsha384-ecp384`), Azure custom-policy names
//! (GCMAES256, DHGroup14, PFS2048, ...) and the `azure-default` preset; responder-side
//! selection that follows the initiator's order (§2.7), and log descriptions for
//! NO_PROPOSAL_CHOSEN.
//!
//! The keyword table [`KEYWORDS`] is the one place that maps strongSwan names to transforms;
//! the Azure tables live in [`azure`].

use crate::crypto::{Encr, Integ, KeyExchange, Prf};
use crate::transform::{DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType};
use core::fmt;

/// The protocol a proposal negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The IKE SA itself.
    Ike,
    /// An ESP Child SA.
    Esp,
}

impl Protocol {
    /// The Protocol ID of the proposal substructure.
    pub fn id(self) -> ProtocolId {
        match self {
            Protocol::Ike => ProtocolId::IKE,
            Protocol::Esp => ProtocolId::ESP,
        }
    }

    /// The protocol for a wire Protocol ID (`None` for AH and unknown values).
    pub fn from_id(id: ProtocolId) -> Option<Self> {
        match id {
            ProtocolId::IKE => Some(Protocol::Ike),
            ProtocolId::ESP => Some(Protocol::Esp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Ike => "IKE",
            Protocol::Esp => "ESP",
        })
    }
}

/// An encryption transform with its KEY_LENGTH attribute (bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EncrAlg {
    /// Transform ID.
    pub id: EncrId,
    /// KEY_LENGTH attribute in bits, `None` when the transform has no such attribute.
    pub key_bits: Option<u16>,
}

impl EncrAlg {
    /// A cipher with a key length.
    pub const fn new(id: EncrId, key_bits: Option<u16>) -> Self {
        Self { id, key_bits }
    }
    /// AES-CBC with `bits` key.
    pub const fn aes_cbc(bits: u16) -> Self {
        Self::new(EncrId::ENCR_AES_CBC, Some(bits))
    }
    /// AES-GCM with 16-octet ICV and `bits` key.
    pub const fn aes_gcm16(bits: u16) -> Self {
        Self::new(EncrId::ENCR_AES_GCM_16, Some(bits))
    }
    /// 3DES-CBC.
    pub const TRIPLE_DES: Self = Self::new(EncrId::ENCR_3DES, None);
}

/// One transform as the wire codec encodes it (RFC 7296 §3.3.2): type, ID and the optional
/// KEY_LENGTH attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transform {
    /// Transform type.
    pub ty: TransformType,
    /// Transform ID within the type's registry.
    pub id: u16,
    /// KEY_LENGTH attribute in bits.
    pub key_len: Option<u16>,
}

/// A proposal: per transform type, the acceptable algorithms in preference order.
/// Empty `integ` means none (AEAD); empty `dh` means no key exchange (ESP without PFS);
/// empty `esn` in ESP is treated as "no ESN".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Proposal {
    /// IKE or ESP.
    pub protocol: Protocol,
    /// Encryption algorithms.
    pub encr: Vec<EncrAlg>,
    /// PRFs (IKE only).
    pub prf: Vec<PrfId>,
    /// Integrity algorithms (empty with AEAD ciphers).
    pub integ: Vec<IntegId>,
    /// Key exchange methods.
    pub dh: Vec<DhId>,
    /// ESN choices (ESP only).
    pub esn: Vec<EsnId>,
}

/// The negotiated IKE SA algorithms (one per type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    /// Cipher.
    pub encr: EncrAlg,
    /// PRF.
    pub prf: PrfId,
    /// Integrity, `None` for AEAD.
    pub integ: Option<IntegId>,
    /// Key exchange method.
    pub dh: DhId,
}

/// The negotiated Child SA algorithms (one per type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChildSuite {
    /// Cipher.
    pub encr: EncrAlg,
    /// Integrity, `None` for AEAD.
    pub integ: Option<IntegId>,
    /// PFS key exchange method, `None` without PFS.
    pub dh: Option<DhId>,
    /// Extended sequence numbers.
    pub esn: EsnId,
}

/// Errors of proposal parsing and conversion. Messages name the offending token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalError {
    /// A token that is not a known keyword.
    #[error("unknown algorithm '{token}' in {protocol} proposal '{proposal}'; valid: {}", valid.join(", "))]
    UnknownToken {
        /// The token.
        token: String,
        /// The whole proposal string.
        proposal: String,
        /// IKE or ESP.
        protocol: Protocol,
        /// Every keyword valid for this protocol.
        valid: Vec<&'static str>,
    },
    /// A known keyword that is not allowed here (PRF in ESP, ESN in IKE, ...).
    #[error("'{token}' is not allowed in {protocol} proposal '{proposal}': {reason}")]
    NotAllowed {
        /// The token.
        token: String,
        /// The whole proposal string.
        proposal: String,
        /// IKE or ESP.
        protocol: Protocol,
        /// Why.
        reason: &'static str,
    },
    /// A mandatory transform type is missing.
    #[error("{protocol} proposal '{proposal}' {what}")]
    Incomplete {
        /// The whole proposal string.
        proposal: String,
        /// IKE or ESP.
        protocol: Protocol,
        /// What is missing.
        what: &'static str,
    },
    /// Unknown preset name.
    #[error("unknown proposal preset '{0}'; valid: azure-default")]
    UnknownPreset(String),
    /// Unknown Azure custom-policy value.
    #[error("unknown Azure {field} value '{name}'; valid: {}", valid.join(", "))]
    UnknownAzureName {
        /// The Azure policy field.
        field: &'static str,
        /// The value given.
        name: String,
        /// Valid values.
        valid: Vec<&'static str>,
    },
    /// A combination Azure's custom policy cannot express or rejects.
    #[error("invalid Azure policy: {0}")]
    InvalidAzurePolicy(String),
    /// A wire transform of an unknown type (RFC 7296 §3.3.6: the proposal is unacceptable).
    #[error("unknown transform type {0}")]
    UnknownTransformType(TransformType),
}

/// What a strongSwan keyword stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyword {
    /// A cipher.
    Encr(EncrAlg),
    /// An integrity algorithm (in IKE proposals it also implies the matching PRF).
    Integ(IntegId),
    /// A PRF.
    Prf(PrfId),
    /// A key exchange method.
    Dh(DhId),
    /// ESN choice.
    Esn(EsnId),
}

const fn cbc(b: u16) -> Keyword {
    Keyword::Encr(EncrAlg::aes_cbc(b))
}
const fn gcm(id: EncrId, b: u16) -> Keyword {
    Keyword::Encr(EncrAlg::new(id, Some(b)))
}
const G8: EncrId = EncrId::ENCR_AES_GCM_8;
const G12: EncrId = EncrId::ENCR_AES_GCM_12;
const G16: EncrId = EncrId::ENCR_AES_GCM_16;

/// strongSwan proposal keywords. The first keyword listed for a transform is the canonical one
/// used when rendering.
pub const KEYWORDS: &[(&str, Keyword)] = &[
    ("aes128", cbc(128)),
    ("aes192", cbc(192)),
    ("aes256", cbc(256)),
    ("aes", cbc(128)),
    ("aes128gcm16", gcm(G16, 128)),
    ("aes192gcm16", gcm(G16, 192)),
    ("aes256gcm16", gcm(G16, 256)),
    ("aes128gcm128", gcm(G16, 128)),
    ("aes192gcm128", gcm(G16, 192)),
    ("aes256gcm128", gcm(G16, 256)),
    ("aes128gcm12", gcm(G12, 128)),
    ("aes192gcm12", gcm(G12, 192)),
    ("aes256gcm12", gcm(G12, 256)),
    ("aes128gcm96", gcm(G12, 128)),
    ("aes192gcm96", gcm(G12, 192)),
    ("aes256gcm96", gcm(G12, 256)),
    ("aes128gcm8", gcm(G8, 128)),
    ("aes192gcm8", gcm(G8, 192)),
    ("aes256gcm8", gcm(G8, 256)),
    ("aes128gcm64", gcm(G8, 128)),
    ("aes192gcm64", gcm(G8, 192)),
    ("aes256gcm64", gcm(G8, 256)),
    ("3des", Keyword::Encr(EncrAlg::TRIPLE_DES)),
    ("des", Keyword::Encr(EncrAlg::new(EncrId::ENCR_DES, None))),
    ("null", Keyword::Encr(EncrAlg::new(EncrId::ENCR_NULL, None))),
    ("sha1", Keyword::Integ(IntegId::AUTH_HMAC_SHA1_96)),
    ("sha", Keyword::Integ(IntegId::AUTH_HMAC_SHA1_96)),
    ("sha256", Keyword::Integ(IntegId::AUTH_HMAC_SHA2_256_128)),
    ("sha2_256", Keyword::Integ(IntegId::AUTH_HMAC_SHA2_256_128)),
    ("sha384", Keyword::Integ(IntegId::AUTH_HMAC_SHA2_384_192)),
    ("sha2_384", Keyword::Integ(IntegId::AUTH_HMAC_SHA2_384_192)),
    ("sha512", Keyword::Integ(IntegId::AUTH_HMAC_SHA2_512_256)),
    ("sha2_512", Keyword::Integ(IntegId::AUTH_HMAC_SHA2_512_256)),
    ("md5", Keyword::Integ(IntegId::AUTH_HMAC_MD5_96)),
    ("prfsha1", Keyword::Prf(PrfId::PRF_HMAC_SHA1)),
    ("prfsha256", Keyword::Prf(PrfId::PRF_HMAC_SHA2_256)),
    ("prfsha384", Keyword::Prf(PrfId::PRF_HMAC_SHA2_384)),
    ("prfsha512", Keyword::Prf(PrfId::PRF_HMAC_SHA2_512)),
    ("prfmd5", Keyword::Prf(PrfId::PRF_HMAC_MD5)),
    ("modp768", Keyword::Dh(DhId::MODP_768)),
    ("modp1024", Keyword::Dh(DhId::MODP_1024)),
    ("modp1536", Keyword::Dh(DhId::MODP_1536)),
    ("modp2048", Keyword::Dh(DhId::MODP_2048)),
    ("modp3072", Keyword::Dh(DhId::MODP_3072)),
    ("modp4096", Keyword::Dh(DhId::MODP_4096)),
    ("modp1024s160", Keyword::Dh(DhId::MODP_1024_160)),
    ("modp2048s224", Keyword::Dh(DhId::MODP_2048_224)),
    ("modp2048s256", Keyword::Dh(DhId::MODP_2048_256)),
    ("ecp256", Keyword::Dh(DhId::ECP_256)),
    ("ecp384", Keyword::Dh(DhId::ECP_384)),
    ("ecp521", Keyword::Dh(DhId::ECP_521)),
    ("curve25519", Keyword::Dh(DhId::CURVE25519)),
    ("x25519", Keyword::Dh(DhId::CURVE25519)),
    ("curve448", Keyword::Dh(DhId::CURVE448)),
    ("x448", Keyword::Dh(DhId::CURVE448)),
    ("esn", Keyword::Esn(EsnId::YES)),
    ("noesn", Keyword::Esn(EsnId::NO)),
];

fn keyword(token: &str) -> Option<Keyword> {
    KEYWORDS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(token))
        .map(|&(_, k)| k)
}

fn keyword_allowed(protocol: Protocol, k: Keyword) -> bool {
    !matches!(
        (protocol, k),
        (Protocol::Esp, Keyword::Prf(_)) | (Protocol::Ike, Keyword::Esn(_))
    )
}

/// Every keyword valid in a proposal for `protocol`.
pub fn valid_keywords(protocol: Protocol) -> Vec<&'static str> {
    KEYWORDS
        .iter()
        .filter(|(_, k)| keyword_allowed(protocol, *k))
        .map(|(n, _)| *n)
        .collect()
}

/// Canonical strongSwan keyword for a transform, or an IANA-style placeholder for values
/// without keyword (only seen in peer proposals).
fn canonical(k: Keyword) -> String {
    KEYWORDS
        .iter()
        .find(|(_, kk)| *kk == k)
        .map(|(n, _)| (*n).to_string())
        .unwrap_or_else(|| match k {
            Keyword::Encr(e) => match e.key_bits {
                Some(b) => format!("{}_{}", e.id, b),
                None => e.id.to_string(),
            },
            Keyword::Integ(i) => i.to_string(),
            Keyword::Prf(p) => p.to_string(),
            Keyword::Dh(d) => d.to_string(),
            Keyword::Esn(e) => e.to_string(),
        })
}

/// The PRF strongSwan pairs with an integrity algorithm when an IKE proposal names no PRF.
pub fn prf_for_integ(i: IntegId) -> Option<PrfId> {
    match i {
        IntegId::AUTH_HMAC_SHA1_96 => Some(PrfId::PRF_HMAC_SHA1),
        IntegId::AUTH_HMAC_SHA2_256_128 => Some(PrfId::PRF_HMAC_SHA2_256),
        IntegId::AUTH_HMAC_SHA2_384_192 => Some(PrfId::PRF_HMAC_SHA2_384),
        IntegId::AUTH_HMAC_SHA2_512_256 => Some(PrfId::PRF_HMAC_SHA2_512),
        IntegId::AUTH_HMAC_MD5_96 => Some(PrfId::PRF_HMAC_MD5),
        _ => None,
    }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

impl Proposal {
    /// An empty proposal for `protocol` (fill the lists yourself).
    pub fn empty(protocol: Protocol) -> Self {
        Self {
            protocol,
            encr: Vec::new(),
            prf: Vec::new(),
            integ: Vec::new(),
            dh: Vec::new(),
            esn: Vec::new(),
        }
    }

    /// Parses a strongSwan proposal string (`aes256-sha256-modp2048`) for `protocol`.
    ///
    /// As in strongSwan: in IKE proposals without `prfX`, each integrity keyword implies
    /// the matching PRF; integrity keywords next to an AEAD cipher are dropped (IKE: after
    /// implying the PRF); ESP proposals without `esn`/`noesn` get `noesn`. Mixing AEAD and
    /// non-AEAD ciphers in one proposal is an error here (write two proposals).
    pub fn parse(protocol: Protocol, s: &str) -> Result<Self, ProposalError> {
        let s = s.trim();
        let mut p = Self::empty(protocol);
        let incomplete = |what| ProposalError::Incomplete {
            proposal: s.to_string(),
            protocol,
            what,
        };
        if s.is_empty() {
            return Err(incomplete("is empty"));
        }
        for token in s.split('-') {
            let k = keyword(token).ok_or_else(|| ProposalError::UnknownToken {
                token: token.to_string(),
                proposal: s.to_string(),
                protocol,
                valid: valid_keywords(protocol),
            })?;
            if !keyword_allowed(protocol, k) {
                return Err(ProposalError::NotAllowed {
                    token: token.to_string(),
                    proposal: s.to_string(),
                    protocol,
                    reason: match k {
                        Keyword::Prf(_) => "ESP has no PRF transform",
                        _ => "ESN applies to ESP only",
                    },
                });
            }
            match k {
                Keyword::Encr(e) => push_unique(&mut p.encr, e),
                Keyword::Integ(i) => push_unique(&mut p.integ, i),
                Keyword::Prf(f) => push_unique(&mut p.prf, f),
                Keyword::Dh(d) => push_unique(&mut p.dh, d),
                Keyword::Esn(e) => push_unique(&mut p.esn, e),
            }
        }
        if p.encr.is_empty() {
            return Err(incomplete("names no encryption algorithm"));
        }
        let aead = p.encr.iter().filter(|e| e.id.is_aead()).count();
        if aead != 0 && aead != p.encr.len() {
            return Err(incomplete(
                "mixes AEAD (gcm) and non-AEAD ciphers; write them as two proposals",
            ));
        }
        if protocol == Protocol::Ike && p.prf.is_empty() {
            for i in &p.integ {
                if let Some(f) = prf_for_integ(*i) {
                    push_unique(&mut p.prf, f);
                }
            }
            if p.prf.is_empty() {
                return Err(incomplete(
                    "names no PRF (add prfsha256/prfsha384/... or an integrity algorithm)",
                ));
            }
        }
        if aead != 0 {
            p.integ.clear();
        } else if p.integ.is_empty() {
            return Err(incomplete(
                "names no integrity algorithm for a non-AEAD cipher",
            ));
        }
        match protocol {
            Protocol::Ike if p.dh.is_empty() => {
                return Err(incomplete(
                    "names no key exchange method (modp2048, ecp256, x25519, ...)",
                ));
            }
            Protocol::Esp if p.esn.is_empty() => p.esn.push(EsnId::NO),
            _ => {}
        }
        Ok(p)
    }

    /// [`Proposal::parse`] for IKE.
    pub fn parse_ike(s: &str) -> Result<Self, ProposalError> {
        Self::parse(Protocol::Ike, s)
    }

    /// [`Proposal::parse`] for ESP.
    pub fn parse_esp(s: &str) -> Result<Self, ProposalError> {
        Self::parse(Protocol::Esp, s)
    }

    /// Parses a comma-separated list of proposals (`aes256-sha256-modp2048,aes128-sha1-modp2048`).
    pub fn parse_list(protocol: Protocol, s: &str) -> Result<Vec<Self>, ProposalError> {
        s.split(',').map(|p| Self::parse(protocol, p)).collect()
    }

    /// The canonical strongSwan string: ciphers, integrity, PRFs (only when not implied by
    /// the integrity algorithms), key exchange methods, `esn` choices (only when not just
    /// `noesn`). `parse(render(p)) == p` for every parsed proposal.
    pub fn to_strongswan(&self) -> String {
        let mut tokens: Vec<String> = Vec::new();
        tokens.extend(self.encr.iter().map(|e| canonical(Keyword::Encr(*e))));
        tokens.extend(self.integ.iter().map(|i| canonical(Keyword::Integ(*i))));
        if self.protocol == Protocol::Ike || !self.prf.is_empty() {
            let mut implied = Vec::new();
            for i in &self.integ {
                if let Some(f) = prf_for_integ(*i) {
                    push_unique(&mut implied, f);
                }
            }
            if implied != self.prf || implied.is_empty() {
                tokens.extend(self.prf.iter().map(|f| canonical(Keyword::Prf(*f))));
            }
        }
        tokens.extend(self.dh.iter().map(|d| canonical(Keyword::Dh(*d))));
        if !(self.esn.is_empty() || self.esn == [EsnId::NO]) {
            tokens.extend(self.esn.iter().map(|e| canonical(Keyword::Esn(*e))));
        }
        tokens.join("-")
    }

    /// The transforms in wire order (ENCR, PRF, INTEG, DH, ESN; preference order within a
    /// type) for the SA payload's proposal substructure.
    pub fn transforms(&self) -> impl Iterator<Item = Transform> + '_ {
        let encr = self.encr.iter().map(|e| Transform {
            ty: TransformType::ENCR,
            id: e.id.0,
            key_len: e.key_bits,
        });
        let plain = |ty: TransformType, id: u16| Transform {
            ty,
            id,
            key_len: None,
        };
        encr.chain(self.prf.iter().map(move |f| plain(TransformType::PRF, f.0)))
            .chain(
                self.integ
                    .iter()
                    .map(move |i| plain(TransformType::INTEG, i.0)),
            )
            .chain(self.dh.iter().map(move |d| plain(TransformType::DH, d.0)))
            .chain(self.esn.iter().map(move |e| plain(TransformType::ESN, e.0)))
    }

    /// Builds a proposal from decoded wire transforms (preference order kept, duplicates
    /// dropped). An unknown transform type makes the proposal unacceptable (RFC 7296 §3.3.6).
    /// Unknown IDs of known types are kept: they simply never match.
    pub fn from_transforms(
        protocol: Protocol,
        transforms: impl IntoIterator<Item = Transform>,
    ) -> Result<Self, ProposalError> {
        let mut p = Self::empty(protocol);
        for t in transforms {
            match t.ty {
                TransformType::ENCR => {
                    push_unique(&mut p.encr, EncrAlg::new(EncrId(t.id), t.key_len))
                }
                TransformType::PRF => push_unique(&mut p.prf, PrfId(t.id)),
                TransformType::INTEG => push_unique(&mut p.integ, IntegId(t.id)),
                TransformType::DH => push_unique(&mut p.dh, DhId(t.id)),
                TransformType::ESN => push_unique(&mut p.esn, EsnId(t.id)),
                other => return Err(ProposalError::UnknownTransformType(other)),
            }
        }
        Ok(p)
    }

    /// The same proposal without key exchange methods (a Child SA proposal carried in
    /// IKE_AUTH, RFC 7296 §1.2).
    pub fn without_dh(&self) -> Self {
        let mut p = self.clone();
        p.dh.clear();
        p
    }

    /// The first entry of each type as negotiated IKE SA algorithms (`None` if this is not an
    /// IKE proposal or lacks a mandatory type).
    pub fn ike_suite(&self) -> Option<IkeSuite> {
        if self.protocol != Protocol::Ike {
            return None;
        }
        let encr = *self.encr.first()?;
        Some(IkeSuite {
            encr,
            prf: *self.prf.first()?,
            integ: self.integ.first().copied().filter(|i| *i != IntegId::NONE),
            dh: *self.dh.first()?,
        })
    }

    /// The first entry of each type as negotiated Child SA algorithms.
    pub fn child_suite(&self) -> Option<ChildSuite> {
        if self.protocol != Protocol::Esp {
            return None;
        }
        Some(ChildSuite {
            encr: *self.encr.first()?,
            integ: self.integ.first().copied().filter(|i| *i != IntegId::NONE),
            dh: self.dh.first().copied().filter(|d| *d != DhId::NONE),
            esn: self.esn.first().copied().unwrap_or(EsnId::NO),
        })
    }

    /// Transforms this crate cannot execute (3DES, DES, MD5, GCM-8/12 in IKE, unknown groups),
    /// as human-readable names.
    pub fn unsupported_transforms(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.encr {
            let ok = match self.protocol {
                Protocol::Ike => Encr::supported(e.id, e.key_bits),
                // ESP ciphers are executed by the esp crate; flag only what no one implements here.
                Protocol::Esp => matches!(e.id, EncrId::ENCR_AES_CBC | EncrId::ENCR_AES_GCM_16),
            };
            if !ok {
                out.push(canonical(Keyword::Encr(*e)));
            }
        }
        out.extend(
            self.prf
                .iter()
                .filter(|f| Prf::new(**f).is_err())
                .map(|f| canonical(Keyword::Prf(*f))),
        );
        out.extend(
            self.integ
                .iter()
                .filter(|i| **i != IntegId::NONE && !Integ::supported(**i))
                .map(|i| canonical(Keyword::Integ(*i))),
        );
        out.extend(
            self.dh
                .iter()
                .filter(|d| **d != DhId::NONE && !KeyExchange::supported(**d))
                .map(|d| canonical(Keyword::Dh(*d))),
        );
        out
    }

    /// This proposal restricted to transforms this crate implements; `None` when a mandatory
    /// type would become empty. Use it to build what we offer from presets such as
    /// `azure-default`, which name 3DES.
    pub fn supported_only(&self) -> Option<Self> {
        let bad = self.unsupported_transforms();
        let mut p = self.clone();
        p.encr
            .retain(|e| !bad.contains(&canonical(Keyword::Encr(*e))));
        p.prf
            .retain(|f| !bad.contains(&canonical(Keyword::Prf(*f))));
        p.integ
            .retain(|i| !bad.contains(&canonical(Keyword::Integ(*i))));
        p.dh.retain(|d| !bad.contains(&canonical(Keyword::Dh(*d))));
        let aead = p.encr.iter().any(|e| e.id.is_aead());
        let ok = !p.encr.is_empty()
            && (aead || !p.integ.is_empty())
            && match p.protocol {
                Protocol::Ike => !p.prf.is_empty() && !p.dh.is_empty(),
                Protocol::Esp => self.dh.is_empty() || !p.dh.is_empty(),
            };
        ok.then_some(p)
    }

    /// Warnings for legacy transforms (RFC 8247 §2.2-§2.4, RFC 8221): DES/3DES, MD5,
    /// MODP groups 1, 2, 5, 22, 23 and 24. Empty when nothing is legacy.
    pub fn legacy_warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let what = self.protocol;
        for e in &self.encr {
            match e.id {
                EncrId::ENCR_3DES => w.push(format!(
                    "{what} proposal uses 3DES: legacy (RFC 8247/8221: SHOULD NOT), 64-bit block; use AES"
                )),
                EncrId::ENCR_DES | EncrId::ENCR_DES_IV32 | EncrId::ENCR_DES_IV64 => w.push(format!(
                    "{what} proposal uses DES: broken (RFC 8247/8221: MUST NOT)"
                )),
                EncrId::ENCR_NULL => w.push(format!("{what} proposal uses NULL encryption: no confidentiality")),
                _ => {}
            }
        }
        for i in &self.integ {
            if i.is_legacy() {
                w.push(format!(
                    "{what} proposal uses {i}: legacy (RFC 8247/8221: MUST NOT)"
                ));
            }
        }
        for f in &self.prf {
            if *f == PrfId::PRF_HMAC_MD5 {
                w.push(format!(
                    "{what} proposal uses PRF_HMAC_MD5: legacy (RFC 8247: MUST NOT)"
                ));
            }
        }
        for d in &self.dh {
            let level = match *d {
                DhId::MODP_768 => "MUST NOT",
                DhId::MODP_1024
                | DhId::MODP_1536
                | DhId::MODP_1024_160
                | DhId::MODP_2048_224
                | DhId::MODP_2048_256 => "SHOULD NOT",
                _ => continue,
            };
            w.push(format!(
                "{what} proposal uses DH group {} ({d}): legacy (RFC 8247 §2.4: {level}); prefer ecp256/ecp384/x25519/modp2048",
                d.0
            ));
        }
        w
    }

    /// Whether an Azure VPN gateway with the default IPsec/IKE policy, as responder, would
    /// accept this proposal (IKE: the default IKE set with DH group 2; ESP: its initiator
    /// set, or the AES/3DES+SHA1/SHA256 combinations with PFS none/1/2/14/24).
    pub fn azure_default_accepts(&self) -> bool {
        let accepted = match self.protocol {
            Protocol::Ike => azure_default_ike(),
            Protocol::Esp => azure_default_esp_responder(),
        };
        select(core::slice::from_ref(self), &accepted).is_some()
    }
}

impl fmt::Display for Proposal {
    /// `IKE:aes256-sha1-modp1024` style (protocol prefix plus canonical strongSwan string).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.protocol, self.to_strongswan())
    }
}

/// The responder's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Index of the chosen proposal in the peer's list (map it back to the wire proposal
    /// number and SPI).
    pub peer_index: usize,
    /// Index of our configured proposal that allowed it.
    pub our_index: usize,
    /// The chosen proposal: exactly one transform per type the peer's proposal contains.
    pub proposal: Proposal,
}

/// Chooses one value: the peer's first entry (peer order) that `ours` allows. Empty lists
/// mean `none_value` ("NONE" integrity/DH, no ESN). `Some(None)` means "choose nothing for
/// this type" (peer offered none and we accept none).
fn pick<T: Copy + PartialEq>(peer: &[T], ours: &[T], none_value: Option<T>) -> Option<Option<T>> {
    let norm = |v: &[T]| -> Vec<T> {
        match (v.is_empty(), none_value) {
            (true, Some(n)) => vec![n],
            _ => v.to_vec(),
        }
    };
    let (pn, on) = (norm(peer), norm(ours));
    let chosen = *pn.iter().find(|x| on.contains(x))?;
    if peer.is_empty() {
        Some(None)
    } else {
        Some(Some(chosen))
    }
}

/// Responder-side selection (RFC 7296 §2.7, §3.3.6): the first peer proposal, in the peer's
/// order, for which one of our proposals of the same protocol allows an entry of every
/// transform type; within a type the peer's order wins. Returns `None` for
/// NO_PROPOSAL_CHOSEN (log [`describe`] then).
pub fn select(peer: &[Proposal], ours: &[Proposal]) -> Option<Selected> {
    for (pi, p) in peer.iter().enumerate() {
        for (oi, o) in ours.iter().enumerate() {
            if o.protocol != p.protocol {
                continue;
            }
            let Some(encr) = pick(&p.encr, &o.encr, None).flatten() else {
                continue;
            };
            let prf = match p.protocol {
                Protocol::Ike => match pick(&p.prf, &o.prf, None).flatten() {
                    Some(f) => Some(f),
                    None => continue,
                },
                Protocol::Esp if p.prf.is_empty() => None,
                Protocol::Esp => continue,
            };
            let Some(integ) = pick(&p.integ, &o.integ, Some(IntegId::NONE)) else {
                continue;
            };
            // AEAD excludes integrity, non-AEAD requires it.
            let integ_ok = match integ {
                None | Some(IntegId::NONE) => encr.id.is_aead(),
                Some(_) => !encr.id.is_aead(),
            };
            if !integ_ok {
                continue;
            }
            let Some(dh) = pick(&p.dh, &o.dh, Some(DhId::NONE)) else {
                continue;
            };
            if p.protocol == Protocol::Ike && matches!(dh, None | Some(DhId::NONE)) {
                continue;
            }
            let esn = match p.protocol {
                Protocol::Esp => match pick(&p.esn, &o.esn, Some(EsnId::NO)) {
                    Some(e) => e,
                    None => continue,
                },
                Protocol::Ike if p.esn.is_empty() => None,
                Protocol::Ike => continue,
            };
            return Some(Selected {
                peer_index: pi,
                our_index: oi,
                proposal: Proposal {
                    protocol: p.protocol,
                    encr: vec![encr],
                    prf: prf.into_iter().collect(),
                    integ: integ.into_iter().collect(),
                    dh: dh.into_iter().collect(),
                    esn: esn.into_iter().collect(),
                },
            });
        }
    }
    None
}

/// A log line naming both sides' proposals, for NO_PROPOSAL_CHOSEN:
/// `peer offered [IKE:aes256-sha1-modp1024, ...]; we allow [IKE:aes256-sha256-modp2048]`.
pub fn describe(peer: &[Proposal], ours: &[Proposal]) -> String {
    let list = |v: &[Proposal]| {
        v.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("peer offered [{}]; we allow [{}]", list(peer), list(ours))
}

/// A named set of IKE and ESP proposals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    /// Preset name.
    pub name: &'static str,
    /// IKE proposals in preference order.
    pub ike: Vec<Proposal>,
    /// ESP proposals in preference order.
    pub esp: Vec<Proposal>,
}

/// Names of the presets [`preset`] knows.
pub const PRESETS: &[&str] = &["azure-default"];

/// A preset by name. `azure-default` is exactly Azure's default policy
/// (`/work/shared/azure-gateway.md`), legacy 3DES and DH group 2 included: filter it with
/// [`Proposal::supported_only`] before offering it, and log [`Proposal::legacy_warnings`].
pub fn preset(name: &str) -> Result<Preset, ProposalError> {
    match name {
        "azure-default" => Ok(Preset {
            name: "azure-default",
            ike: azure_default_ike(),
            esp: azure_default_esp(),
        }),
        other => Err(ProposalError::UnknownPreset(other.to_string())),
    }
}

fn fixed(protocol: Protocol, s: &str) -> Proposal {
    Proposal::parse(protocol, s).expect("built-in proposal strings are valid")
}

/// Azure's default IKE proposals in Azure's order: AES256-SHA1, AES256-SHA256, AES128-SHA1,
/// AES128-SHA256, 3DES-SHA1, 3DES-SHA256, PRF following integrity, DH group 2.
pub fn azure_default_ike() -> Vec<Proposal> {
    [
        "aes256-sha1-modp1024",
        "aes256-sha256-modp1024",
        "aes128-sha1-modp1024",
        "aes128-sha256-modp1024",
        "3des-sha1-modp1024",
        "3des-sha256-modp1024",
    ]
    .iter()
    .map(|s| fixed(Protocol::Ike, s))
    .collect()
}

/// Azure's default Child SA proposals as Azure offers them as initiator, PFS none:
/// AES-GCM-256, AES256+SHA1, 3DES+SHA1, AES256+SHA256, AES128+SHA1, 3DES+SHA256.
pub fn azure_default_esp() -> Vec<Proposal> {
    [
        "aes256gcm16",
        "aes256-sha1",
        "3des-sha1",
        "aes256-sha256",
        "aes128-sha1",
        "3des-sha256",
    ]
    .iter()
    .map(|s| fixed(Protocol::Esp, s))
    .collect()
}

/// What an Azure gateway with default policy accepts as responder for a Child SA: the
/// initiator set, plus PFS groups 1, 2, 14 and 24 on the CBC combinations.
fn azure_default_esp_responder() -> Vec<Proposal> {
    let mut v = azure_default_esp();
    for s in [
        "aes256-sha1",
        "3des-sha1",
        "aes256-sha256",
        "aes128-sha1",
        "3des-sha256",
    ] {
        v.push(fixed(
            Protocol::Esp,
            &format!("{s}-modp768-modp1024-modp2048-modp2048s256"),
        ));
    }
    v
}

/// Azure custom IPsec/IKE policy names (one fact table per field) and their mapping to
/// proposals.
pub mod azure {
    use super::{EncrAlg, Proposal, ProposalError, Protocol, prf_for_integ};
    use crate::transform::{DhId, EncrId, EsnId, IntegId};

    const ENCR_IKE: &[(&str, EncrAlg)] = &[
        ("GCMAES256", EncrAlg::aes_gcm16(256)),
        ("GCMAES128", EncrAlg::aes_gcm16(128)),
        ("AES256", EncrAlg::aes_cbc(256)),
        ("AES192", EncrAlg::aes_cbc(192)),
        ("AES128", EncrAlg::aes_cbc(128)),
        ("DES3", EncrAlg::TRIPLE_DES),
        ("DES", EncrAlg::new(EncrId::ENCR_DES, None)),
    ];
    const INTEG_IKE: &[(&str, IntegId)] = &[
        ("SHA384", IntegId::AUTH_HMAC_SHA2_384_192),
        ("SHA256", IntegId::AUTH_HMAC_SHA2_256_128),
        ("SHA1", IntegId::AUTH_HMAC_SHA1_96),
        ("MD5", IntegId::AUTH_HMAC_MD5_96),
    ];
    const DH: &[(&str, DhId)] = &[
        ("DHGroup24", DhId::MODP_2048_256),
        ("ECP384", DhId::ECP_384),
        ("ECP256", DhId::ECP_256),
        ("DHGroup14", DhId::MODP_2048),
        ("DHGroup2048", DhId::MODP_2048),
        ("DHGroup2", DhId::MODP_1024),
        ("DHGroup1", DhId::MODP_768),
        ("None", DhId::NONE),
    ];
    const ENCR_IPSEC: &[(&str, EncrAlg)] = &[
        ("GCMAES256", EncrAlg::aes_gcm16(256)),
        ("GCMAES192", EncrAlg::aes_gcm16(192)),
        ("GCMAES128", EncrAlg::aes_gcm16(128)),
        ("AES256", EncrAlg::aes_cbc(256)),
        ("AES192", EncrAlg::aes_cbc(192)),
        ("AES128", EncrAlg::aes_cbc(128)),
        ("DES3", EncrAlg::TRIPLE_DES),
        ("DES", EncrAlg::new(EncrId::ENCR_DES, None)),
        ("None", EncrAlg::new(EncrId::ENCR_NULL, None)),
    ];
    const INTEG_IPSEC: &[(&str, IntegId)] = &[
        ("SHA256", IntegId::AUTH_HMAC_SHA2_256_128),
        ("SHA1", IntegId::AUTH_HMAC_SHA1_96),
        ("MD5", IntegId::AUTH_HMAC_MD5_96),
    ];
    const PFS: &[(&str, DhId)] = &[
        ("PFS24", DhId::MODP_2048_256),
        ("ECP384", DhId::ECP_384),
        ("ECP256", DhId::ECP_256),
        ("PFS2048", DhId::MODP_2048),
        ("PFS14", DhId::MODP_2048),
        ("PFS2", DhId::MODP_1024),
        ("PFS1", DhId::MODP_768),
        ("None", DhId::NONE),
    ];

    fn lookup<T: Copy>(
        table: &[(&'static str, T)],
        field: &'static str,
        name: &str,
    ) -> Result<T, ProposalError> {
        table
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .map(|(_, v)| *v)
            .ok_or_else(|| ProposalError::UnknownAzureName {
                field,
                name: name.to_string(),
                valid: table.iter().map(|(n, _)| *n).collect(),
            })
    }

    fn name_of<T: PartialEq>(table: &[(&'static str, T)], v: &T) -> Option<&'static str> {
        table.iter().find(|(_, x)| x == v).map(|(n, _)| *n)
    }

    /// IkeEncryption name to cipher.
    pub fn parse_ike_encryption(name: &str) -> Result<EncrAlg, ProposalError> {
        lookup(ENCR_IKE, "IkeEncryption", name)
    }
    /// Cipher to IkeEncryption name.
    pub fn ike_encryption_name(e: EncrAlg) -> Option<&'static str> {
        name_of(ENCR_IKE, &e)
    }
    /// IkeIntegrity name to integrity algorithm (the PRF follows it, see [`prf_for_integ`]).
    pub fn parse_ike_integrity(name: &str) -> Result<IntegId, ProposalError> {
        lookup(INTEG_IKE, "IkeIntegrity", name)
    }
    /// Integrity algorithm to IkeIntegrity name.
    pub fn ike_integrity_name(i: IntegId) -> Option<&'static str> {
        name_of(INTEG_IKE, &i)
    }
    /// DhGroup name to group (`None` maps to [`DhId::NONE`], which IKE refuses).
    pub fn parse_dh_group(name: &str) -> Result<DhId, ProposalError> {
        lookup(DH, "DhGroup", name)
    }
    /// Group to DhGroup name (canonical: DHGroup14, not DHGroup2048).
    pub fn dh_group_name(d: DhId) -> Option<&'static str> {
        name_of(DH, &d)
    }
    /// IpsecEncryption name to cipher (`None` is ENCR_NULL).
    pub fn parse_ipsec_encryption(name: &str) -> Result<EncrAlg, ProposalError> {
        lookup(ENCR_IPSEC, "IpsecEncryption", name)
    }
    /// Cipher to IpsecEncryption name.
    pub fn ipsec_encryption_name(e: EncrAlg) -> Option<&'static str> {
        name_of(ENCR_IPSEC, &e)
    }
    /// IpsecIntegrity name: `Some(integ)` for SHA256/SHA1/MD5, `None` for the GCMAES* names
    /// (the GCM cipher authenticates); the GCM name must then equal the encryption name,
    /// which [`AzurePolicy::parse`] checks.
    pub fn parse_ipsec_integrity(name: &str) -> Result<Option<IntegId>, ProposalError> {
        if ["GCMAES256", "GCMAES192", "GCMAES128"]
            .iter()
            .any(|g| g.eq_ignore_ascii_case(name.trim()))
        {
            return Ok(None);
        }
        lookup(INTEG_IPSEC, "IpsecIntegrity", name)
            .map(Some)
            .map_err(|e| match e {
                ProposalError::UnknownAzureName {
                    field,
                    name,
                    mut valid,
                } => {
                    valid.extend(["GCMAES256", "GCMAES192", "GCMAES128"]);
                    ProposalError::UnknownAzureName { field, name, valid }
                }
                other => other,
            })
    }
    /// Integrity algorithm to IpsecIntegrity name.
    pub fn ipsec_integrity_name(i: IntegId) -> Option<&'static str> {
        name_of(INTEG_IPSEC, &i)
    }
    /// PfsGroup name to group (`None` is [`DhId::NONE`]).
    pub fn parse_pfs_group(name: &str) -> Result<DhId, ProposalError> {
        lookup(PFS, "PfsGroup", name)
    }
    /// Group to PfsGroup name (canonical: PFS2048, not PFS14).
    pub fn pfs_group_name(d: DhId) -> Option<&'static str> {
        name_of(PFS, &d)
    }

    /// An Azure custom IPsec/IKE policy (the six fields of the portal / PowerShell
    /// `New-AzIpsecPolicy`; lifetimes are not part of proposals).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AzurePolicy {
        /// IkeEncryption.
        pub ike_encryption: EncrAlg,
        /// IkeIntegrity (the PRF follows it; with GCM it selects only the PRF).
        pub ike_integrity: IntegId,
        /// DhGroup.
        pub dh_group: DhId,
        /// IpsecEncryption.
        pub ipsec_encryption: EncrAlg,
        /// IpsecIntegrity, `None` when the IPsec cipher is GCM.
        pub ipsec_integrity: Option<IntegId>,
        /// PfsGroup ([`DhId::NONE`] for None).
        pub pfs_group: DhId,
    }

    /// The six Azure names of a policy, in field order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AzureNames {
        /// IkeEncryption.
        pub ike_encryption: &'static str,
        /// IkeIntegrity.
        pub ike_integrity: &'static str,
        /// DhGroup.
        pub dh_group: &'static str,
        /// IpsecEncryption.
        pub ipsec_encryption: &'static str,
        /// IpsecIntegrity.
        pub ipsec_integrity: &'static str,
        /// PfsGroup.
        pub pfs_group: &'static str,
    }

    impl AzurePolicy {
        /// Parses the six Azure names (case-insensitive) and checks Azure's rules
        /// (IPsec GCM integrity equals the encryption; IKE needs a DH group).
        pub fn parse(
            ike_encryption: &str,
            ike_integrity: &str,
            dh_group: &str,
            ipsec_encryption: &str,
            ipsec_integrity: &str,
            pfs_group: &str,
        ) -> Result<Self, ProposalError> {
            let p = Self {
                ike_encryption: parse_ike_encryption(ike_encryption)?,
                ike_integrity: parse_ike_integrity(ike_integrity)?,
                dh_group: parse_dh_group(dh_group)?,
                ipsec_encryption: parse_ipsec_encryption(ipsec_encryption)?,
                ipsec_integrity: parse_ipsec_integrity(ipsec_integrity)?,
                pfs_group: parse_pfs_group(pfs_group)?,
            };
            if p.dh_group == DhId::NONE {
                return Err(ProposalError::InvalidAzurePolicy(
                    "DhGroup None: the IKE SA needs a DH group".into(),
                ));
            }
            let gcm = p.ipsec_encryption.id.is_aead();
            match p.ipsec_integrity {
                None if !gcm => {
                    return Err(ProposalError::InvalidAzurePolicy(format!(
                        "IpsecIntegrity {ipsec_integrity} requires IpsecEncryption {ipsec_integrity}"
                    )));
                }
                None if !ipsec_integrity
                    .trim()
                    .eq_ignore_ascii_case(ipsec_encryption.trim()) =>
                {
                    return Err(ProposalError::InvalidAzurePolicy(format!(
                        "IpsecIntegrity {ipsec_integrity} must equal IpsecEncryption {ipsec_encryption}"
                    )));
                }
                Some(_) if gcm => {
                    return Err(ProposalError::InvalidAzurePolicy(format!(
                        "IpsecEncryption {ipsec_encryption} requires IpsecIntegrity {ipsec_encryption}"
                    )));
                }
                _ => {}
            }
            Ok(p)
        }

        /// The Azure names of this policy.
        pub fn names(&self) -> Option<AzureNames> {
            Some(AzureNames {
                ike_encryption: ike_encryption_name(self.ike_encryption)?,
                ike_integrity: ike_integrity_name(self.ike_integrity)?,
                dh_group: dh_group_name(self.dh_group)?,
                ipsec_encryption: ipsec_encryption_name(self.ipsec_encryption)?,
                ipsec_integrity: match self.ipsec_integrity {
                    Some(i) => ipsec_integrity_name(i)?,
                    None => ipsec_encryption_name(self.ipsec_encryption)?,
                },
                pfs_group: pfs_group_name(self.pfs_group)?,
            })
        }

        /// The IKE proposal this policy means (PRF follows the integrity name).
        pub fn ike_proposal(&self) -> Proposal {
            let mut p = Proposal::empty(Protocol::Ike);
            p.encr.push(self.ike_encryption);
            p.prf.extend(prf_for_integ(self.ike_integrity));
            if !self.ike_encryption.id.is_aead() {
                p.integ.push(self.ike_integrity);
            }
            p.dh.push(self.dh_group);
            p
        }

        /// The ESP proposal this policy means (no ESN; DH only with a PFS group).
        pub fn esp_proposal(&self) -> Proposal {
            let mut p = Proposal::empty(Protocol::Esp);
            p.encr.push(self.ipsec_encryption);
            p.integ.extend(self.ipsec_integrity);
            if self.pfs_group != DhId::NONE {
                p.dh.push(self.pfs_group);
            }
            p.esn.push(EsnId::NO);
            p
        }

        /// The policy an IKE and an ESP proposal (one transform per type) express, or an
        /// error naming what Azure's custom policy cannot express.
        pub fn from_proposals(ike: &Proposal, esp: &Proposal) -> Result<Self, ProposalError> {
            let bad = |m: String| ProposalError::InvalidAzurePolicy(m);
            let one = |n: usize, what: &str| {
                if n == 1 {
                    Ok(())
                } else {
                    Err(bad(format!("{what} must name exactly one algorithm")))
                }
            };
            one(ike.encr.len(), "IKE encryption")?;
            one(ike.prf.len(), "IKE PRF")?;
            one(ike.dh.len(), "IKE DH group")?;
            one(esp.encr.len(), "ESP encryption")?;
            let ike_encryption = ike.encr[0];
            ike_encryption_name(ike_encryption).ok_or_else(|| {
                bad(format!(
                    "IKE cipher {} has no Azure name",
                    ike.to_strongswan()
                ))
            })?;
            let prf = ike.prf[0];
            let ike_integrity = match ike.integ.as_slice() {
                [] => INTEG_IKE
                    .iter()
                    .map(|(_, i)| *i)
                    .find(|i| prf_for_integ(*i) == Some(prf))
                    .ok_or_else(|| bad(format!("IKE PRF {prf} has no Azure name")))?,
                [i] if prf_for_integ(*i) == Some(prf) => *i,
                [_] => {
                    return Err(bad(
                        "Azure's IKE PRF always follows the integrity algorithm".into(),
                    ));
                }
                _ => return Err(bad("IKE integrity must name exactly one algorithm".into())),
            };
            let pfs_group = match esp.dh.as_slice() {
                [] => DhId::NONE,
                [d] => *d,
                _ => return Err(bad("ESP PFS group must name at most one group".into())),
            };
            if esp.esn.contains(&EsnId::YES) {
                return Err(bad("Azure does not negotiate ESN".into()));
            }
            let ipsec_integrity = match esp.integ.as_slice() {
                [] => None,
                [i] => Some(*i),
                _ => return Err(bad("ESP integrity must name exactly one algorithm".into())),
            };
            let p = Self {
                ike_encryption,
                ike_integrity,
                dh_group: ike.dh[0],
                ipsec_encryption: esp.encr[0],
                ipsec_integrity,
                pfs_group,
            };
            p.names()
                .ok_or_else(|| bad(format!("{} / {} has no Azure names", ike, esp)))?;
            Ok(p)
        }
    }
}

pub use azure::{AzureNames, AzurePolicy};
