//! Encryption of the IKEv2 Encrypted (SK) and Encrypted Fragment (SKF) payloads:
//! AES-CBC with HMAC integrity (RFC 7296 §3.14, RFC 3602) and AES-GCM with a 16-octet ICV
//! (RFC 5282 §3-§5: 4-octet salt from the key material, 8-octet explicit IV, AAD from the
//! first octet of the IKE header to the last octet of the SK/SKF payload header).
//!
//! # Message layout seen by [`SkCipher`]
//! ```text
//! | IKE header .. SK(F) payload header | IV | inner payloads | padding | pad length | ICV |
//! |<-------------- header_len ------->|
//! ```
//! The ICV (CBC+HMAC) or the GCM tag covers/authenticates everything before it, so the IKE
//! header length and SK payload length fields must already hold their final values when
//! [`SkCipher::seal`] runs: compute them with [`SkCipher::sealed_len`].

use super::{CryptoError, Integ, Rng};
use crate::transform::EncrId;
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{
    self, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use core::ops::Range;
use zeroize::Zeroize;

enum Inner {
    Cbc {
        enc: Box<EncryptingKey>,
        dec: Box<DecryptingKey>,
    },
    Gcm {
        key: LessSafeKey,
        salt: [u8; 4],
    },
}

/// A keyed encryption transform (one direction of an IKE SA).
pub struct Encr {
    id: EncrId,
    key_bits: u16,
    inner: Inner,
}

impl core::fmt::Debug for Encr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Encr({}, {} bits, key: <redacted>)",
            self.id, self.key_bits
        )
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Inner::Gcm { salt, .. } = self {
            salt.zeroize();
        }
    }
}

const GCM_IV_LEN: usize = 8;
const GCM_TAG_LEN: usize = 16;
const AES_BLOCK: usize = 16;

impl Encr {
    /// Whether this crate implements cipher `id` with `key_bits`.
    pub fn supported(id: EncrId, key_bits: Option<u16>) -> bool {
        matches!(
            (id, key_bits),
            (EncrId::ENCR_AES_CBC, Some(128 | 192 | 256))
                | (EncrId::ENCR_AES_GCM_16, Some(128 | 192 | 256))
        )
    }

    /// Keys the cipher. `keymat` is the key followed by the salt for GCM
    /// ([`EncrId::keymat_len`] octets: 16/24/32 for CBC, 20/28/36 for GCM).
    /// 3DES and GCM with 8/12-octet ICVs are rejected as `Unsupported`.
    pub fn new(id: EncrId, key_bits: Option<u16>, keymat: &[u8]) -> Result<Self, CryptoError> {
        if !Self::supported(id, key_bits) {
            let what = match key_bits {
                Some(b) => format!("encryption {id} with {b}-bit key"),
                None => format!("encryption {id}"),
            };
            return Err(CryptoError::Unsupported(what));
        }
        let bits = key_bits.ok_or(CryptoError::Internal)?;
        let expected = id.keymat_len(key_bits).ok_or(CryptoError::Internal)?;
        if keymat.len() != expected {
            return Err(CryptoError::InvalidKeyLength {
                what: "encryption key",
                got: keymat.len(),
                expected,
            });
        }
        let key_len = usize::from(bits / 8);
        let (key, salt) = keymat.split_at(key_len);
        let inner = if id == EncrId::ENCR_AES_CBC {
            let alg = match bits {
                128 => &cipher::AES_128,
                192 => &cipher::AES_192,
                _ => &cipher::AES_256,
            };
            let enc = EncryptingKey::cbc(
                UnboundCipherKey::new(alg, key).map_err(|_| CryptoError::Internal)?,
            )
            .map_err(|_| CryptoError::Internal)?;
            let dec = DecryptingKey::cbc(
                UnboundCipherKey::new(alg, key).map_err(|_| CryptoError::Internal)?,
            )
            .map_err(|_| CryptoError::Internal)?;
            Inner::Cbc {
                enc: Box::new(enc),
                dec: Box::new(dec),
            }
        } else {
            let alg = match bits {
                128 => &aead::AES_128_GCM,
                192 => &aead::AES_192_GCM,
                _ => &aead::AES_256_GCM,
            };
            let key =
                LessSafeKey::new(UnboundKey::new(alg, key).map_err(|_| CryptoError::Internal)?);
            let mut s = [0u8; 4];
            s.copy_from_slice(salt);
            Inner::Gcm { key, salt: s }
        };
        Ok(Self {
            id,
            key_bits: bits,
            inner,
        })
    }

    /// The transform ID.
    pub fn id(&self) -> EncrId {
        self.id
    }

    /// Key length in bits.
    pub fn key_bits(&self) -> u16 {
        self.key_bits
    }

    /// Whether this is an AEAD cipher (no separate integrity transform).
    pub fn is_aead(&self) -> bool {
        matches!(self.inner, Inner::Gcm { .. })
    }

    /// IV octets in the SK payload.
    pub fn iv_len(&self) -> usize {
        match self.inner {
            Inner::Cbc { .. } => AES_BLOCK,
            Inner::Gcm { .. } => GCM_IV_LEN,
        }
    }

    /// Alignment of `plaintext | padding | pad length`.
    pub fn block_len(&self) -> usize {
        match self.inner {
            Inner::Cbc { .. } => AES_BLOCK,
            Inner::Gcm { .. } => 1,
        }
    }

    /// AEAD tag length (0 for CBC).
    pub fn tag_len(&self) -> usize {
        match self.inner {
            Inner::Cbc { .. } => 0,
            Inner::Gcm { .. } => GCM_TAG_LEN,
        }
    }
}

/// One direction of SK payload protection: the cipher plus (for non-AEAD ciphers) the
/// integrity transform. Build one for outbound (SK_ei/SK_ai as initiator) and one for inbound.
#[derive(Debug)]
pub struct SkCipher {
    encr: Encr,
    integ: Option<Integ>,
}

impl SkCipher {
    /// Combines a cipher with its integrity transform. AEAD ciphers take `None`, others
    /// require `Some` (RFC 7296 §3.3: integrity is mandatory unless the cipher is AEAD).
    pub fn new(encr: Encr, integ: Option<Integ>) -> Result<Self, CryptoError> {
        match (encr.is_aead(), &integ) {
            (true, None) | (false, Some(_)) => Ok(Self { encr, integ }),
            (true, Some(_)) => Err(CryptoError::Unsupported(
                "an integrity transform together with an AEAD cipher".into(),
            )),
            (false, None) => Err(CryptoError::Unsupported(
                "a non-AEAD cipher without integrity transform".into(),
            )),
        }
    }

    /// The cipher.
    pub fn encr(&self) -> &Encr {
        &self.encr
    }

    /// The integrity transform, `None` for AEAD.
    pub fn integ(&self) -> Option<&Integ> {
        self.integ.as_ref()
    }

    /// IV octets that follow the SK payload header.
    pub fn iv_len(&self) -> usize {
        self.encr.iv_len()
    }

    /// ICV octets at the end of the message (HMAC truncation or AEAD tag).
    pub fn icv_len(&self) -> usize {
        match &self.integ {
            Some(i) => i.icv_len(),
            None => self.encr.tag_len(),
        }
    }

    /// Padding octets (excluding the pad length octet) for `plaintext_len` inner octets.
    pub fn pad_len(&self, plaintext_len: usize) -> usize {
        let b = self.encr.block_len();
        (b - (plaintext_len + 1) % b) % b
    }

    /// Octets after `header_len` in the sealed message for `plaintext_len` octets of inner
    /// payloads: IV + plaintext + padding + pad length octet + ICV. The SK payload length
    /// is `4 + sealed_len` (SKF: `8 + sealed_len`), the IKE length `header_len + sealed_len`.
    pub fn sealed_len(&self, plaintext_len: usize) -> usize {
        self.iv_len() + plaintext_len + self.pad_len(plaintext_len) + 1 + self.icv_len()
    }

    /// Encrypts in place. On entry `msg` is
    /// `header (header_len octets, final lengths) | IV space (iv_len octets, any content) | plaintext`;
    /// on return it is the complete protected message (IV filled from `rng`, padding,
    /// pad length, ciphertext, ICV appended). The IKE header's length field (octets 24..28)
    /// must already equal the final length, otherwise `Malformed` is returned and `msg` is
    /// left unchanged.
    pub fn seal(
        &self,
        rng: &mut dyn Rng,
        msg: &mut Vec<u8>,
        header_len: usize,
    ) -> Result<(), CryptoError> {
        let iv_len = self.iv_len();
        let body_start = header_len
            .checked_add(iv_len)
            .filter(|&s| s <= msg.len())
            .ok_or(CryptoError::Malformed("message shorter than header and IV"))?;
        let plaintext_len = msg.len() - body_start;
        let final_len = header_len + self.sealed_len(plaintext_len);
        let hdr_len =
            msg.get(24..28)
                .filter(|_| header_len >= 28)
                .ok_or(CryptoError::Malformed(
                    "no IKE header before the SK payload",
                ))?;
        let hdr_len = u32::from_be_bytes([hdr_len[0], hdr_len[1], hdr_len[2], hdr_len[3]]);
        if usize::try_from(hdr_len).ok() != Some(final_len) {
            return Err(CryptoError::Malformed(
                "IKE header length differs from header_len + sealed_len(plaintext)",
            ));
        }
        let pad = self.pad_len(plaintext_len);
        msg.reserve(pad + 1 + self.icv_len());
        msg.resize(msg.len() + pad, 0);
        msg.push(u8::try_from(pad).map_err(|_| CryptoError::Internal)?);
        rng.fill(&mut msg[header_len..body_start]);
        match &self.encr.inner {
            Inner::Cbc { enc, .. } => {
                let mut iv = [0u8; AES_BLOCK];
                iv.copy_from_slice(&msg[header_len..body_start]);
                enc.less_safe_encrypt(
                    &mut msg[body_start..],
                    EncryptionContext::Iv128(FixedLength::from(iv)),
                )
                .map_err(|_| CryptoError::Internal)?;
                let integ = self.integ.as_ref().ok_or(CryptoError::Internal)?;
                let start = msg.len();
                msg.resize(start + integ.icv_len(), 0);
                let (data, icv) = msg.split_at_mut(start);
                integ.compute(data, icv)?;
            }
            Inner::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, &msg[header_len..body_start])?;
                let (aad, rest) = msg.split_at_mut(header_len);
                let body = rest.get_mut(iv_len..).ok_or(CryptoError::Internal)?;
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(&*aad), body)
                    .map_err(|_| CryptoError::Internal)?;
                msg.extend_from_slice(tag.as_ref());
            }
        }
        debug_assert_eq!(msg.len(), final_len);
        Ok(())
    }

    /// Verifies and decrypts in place. `msg` is the whole message from the first octet of the
    /// IKE header through the ICV; `header_len` is the offset of the IV (the end of the SK or
    /// SKF payload header). Returns the range of `msg` that holds the decrypted inner
    /// payloads (padding and pad length removed). On error `msg` may hold garbage.
    pub fn open(&self, msg: &mut [u8], header_len: usize) -> Result<Range<usize>, CryptoError> {
        let iv_len = self.iv_len();
        let icv_len = self.icv_len();
        let body_start = header_len.saturating_add(iv_len);
        let min = body_start.saturating_add(icv_len + 1);
        if msg.len() < min {
            return Err(CryptoError::Malformed("encrypted payload too short"));
        }
        let body_end = msg.len() - icv_len;
        match &self.encr.inner {
            Inner::Cbc { dec, .. } => {
                if !(body_end - body_start).is_multiple_of(AES_BLOCK) {
                    return Err(CryptoError::Malformed(
                        "ciphertext not a multiple of the block size",
                    ));
                }
                let integ = self.integ.as_ref().ok_or(CryptoError::Internal)?;
                {
                    let (data, icv) = msg.split_at(body_end);
                    integ.verify(data, icv)?;
                }
                let mut iv = [0u8; AES_BLOCK];
                iv.copy_from_slice(&msg[header_len..body_start]);
                dec.decrypt(
                    &mut msg[body_start..body_end],
                    DecryptionContext::Iv128(FixedLength::from(iv)),
                )
                .map_err(|_| CryptoError::Malformed("CBC decryption failed"))?;
            }
            Inner::Gcm { key, salt } => {
                let nonce = gcm_nonce(salt, &msg[header_len..body_start])?;
                let (head, rest) = msg.split_at_mut(body_start);
                let (body, tag) = rest.split_at_mut(body_end - body_start);
                key.open_in_place_separate_tag(nonce, Aad::from(&head[..header_len]), tag, body)
                    .map_err(|_| CryptoError::IntegrityCheckFailed)?;
            }
        }
        let pad = usize::from(msg[body_end - 1]);
        let plain_end = (body_end - 1)
            .checked_sub(pad)
            .filter(|&e| e >= body_start)
            .ok_or(CryptoError::InvalidPadding)?;
        Ok(body_start..plain_end)
    }
}

fn gcm_nonce(salt: &[u8; 4], iv: &[u8]) -> Result<Nonce, CryptoError> {
    let mut n = [0u8; aead::NONCE_LEN];
    n[..4].copy_from_slice(salt);
    n.get_mut(4..)
        .filter(|d| d.len() == iv.len())
        .ok_or(CryptoError::Internal)?
        .copy_from_slice(iv);
    Ok(Nonce::assume_unique_for_key(n))
}
