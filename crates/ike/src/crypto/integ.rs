//! Integrity transforms for the SK payload and ESP keys: HMAC-SHA1-96 (RFC 2404) and
//! HMAC-SHA2-256-128/384-192/512-256 (RFC 4868), truncated ICV, constant-time verify
//! (RFC 7296 §3.14).

use super::{CryptoError, ct_eq};
use crate::transform::IntegId;
use aws_lc_rs::hmac;

/// A keyed integrity transform.
pub struct Integ {
    id: IntegId,
    key: hmac::Key,
    icv_len: usize,
}

impl core::fmt::Debug for Integ {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Integ({}, key: <redacted>)", self.id)
    }
}

impl Integ {
    fn alg(id: IntegId) -> Result<hmac::Algorithm, CryptoError> {
        Ok(match id {
            IntegId::AUTH_HMAC_SHA1_96 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            IntegId::AUTH_HMAC_SHA2_256_128 => hmac::HMAC_SHA256,
            IntegId::AUTH_HMAC_SHA2_384_192 => hmac::HMAC_SHA384,
            IntegId::AUTH_HMAC_SHA2_512_256 => hmac::HMAC_SHA512,
            other => return Err(CryptoError::Unsupported(format!("integrity {other}"))),
        })
    }

    /// Whether this crate implements `id`.
    pub fn supported(id: IntegId) -> bool {
        Self::alg(id).is_ok()
    }

    /// Keys the transform; `key` must be exactly [`IntegId::key_len`] octets.
    pub fn new(id: IntegId, key: &[u8]) -> Result<Self, CryptoError> {
        let alg = Self::alg(id)?;
        let expected = id.key_len().ok_or(CryptoError::Internal)?;
        let icv_len = id.icv_len().ok_or(CryptoError::Internal)?;
        if key.len() != expected {
            return Err(CryptoError::InvalidKeyLength {
                what: "integrity key",
                got: key.len(),
                expected,
            });
        }
        Ok(Self {
            id,
            key: hmac::Key::new(alg, key),
            icv_len,
        })
    }

    /// The transform ID.
    pub fn id(&self) -> IntegId {
        self.id
    }

    /// Truncated ICV length in octets.
    pub fn icv_len(&self) -> usize {
        self.icv_len
    }

    /// Computes the truncated ICV of `data` into `icv_out`, which must be
    /// [`Integ::icv_len`] octets long.
    pub fn compute(&self, data: &[u8], icv_out: &mut [u8]) -> Result<(), CryptoError> {
        if icv_out.len() != self.icv_len {
            return Err(CryptoError::Internal);
        }
        let tag = hmac::sign(&self.key, data);
        let full = tag.as_ref();
        icv_out.copy_from_slice(full.get(..self.icv_len).ok_or(CryptoError::Internal)?);
        Ok(())
    }

    /// Computes the truncated ICV into a new vector.
    pub fn compute_vec(&self, data: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&self.key, data);
        tag.as_ref()[..self.icv_len].to_vec()
    }

    /// Verifies `icv` over `data` in constant time.
    pub fn verify(&self, data: &[u8], icv: &[u8]) -> Result<(), CryptoError> {
        let tag = hmac::sign(&self.key, data);
        let full = tag.as_ref();
        if icv.len() == self.icv_len && ct_eq(&full[..self.icv_len], icv) {
            Ok(())
        } else {
            Err(CryptoError::IntegrityCheckFailed)
        }
    }
}
