//! Key derivation for the IKE SA (RFC 7296 §2.14), IKE SA rekeying (§2.18) and Child SAs
//! (§2.17). Lengths come from the negotiated transforms (GCM keys carry their 4-octet salt,
//! RFC 5282 §7.1 / RFC 4106 §8.1; AEAD suites take no integrity key).

use super::{CryptoError, Prf, SecretBytes};
use crate::transform::{EncrId, IntegId};

/// SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14).
pub fn skeyseed(prf: &Prf, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> SecretBytes {
    let mut key = SecretBytes::new(Vec::with_capacity(ni.len() + nr.len()));
    key.vec_mut().extend_from_slice(ni);
    key.vec_mut().extend_from_slice(nr);
    prf.prf(key.as_bytes(), g_ir)
}

/// Rekeyed SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (RFC 7296 §2.18). `prf` is the
/// PRF of the old IKE SA; Ni and Nr are the nonces of the CREATE_CHILD_SA exchange.
pub fn rekey_skeyseed(
    prf: &Prf,
    old_sk_d: &[u8],
    g_ir: &[u8],
    ni: &[u8],
    nr: &[u8],
) -> SecretBytes {
    prf.prf_parts(old_sk_d, &[g_ir, ni, nr])
}

/// The seven IKE SA keys. `sk_ai`/`sk_ar` are empty for AEAD ciphers.
#[derive(Clone, PartialEq, Eq)]
pub struct IkeSaKeys {
    /// Key for deriving Child SA keys and rekeyed SKEYSEED.
    pub sk_d: SecretBytes,
    /// Integrity key, initiator to responder.
    pub sk_ai: SecretBytes,
    /// Integrity key, responder to initiator.
    pub sk_ar: SecretBytes,
    /// Encryption key (plus salt for GCM), initiator to responder.
    pub sk_ei: SecretBytes,
    /// Encryption key (plus salt for GCM), responder to initiator.
    pub sk_er: SecretBytes,
    /// Key for the initiator's AUTH payload.
    pub sk_pi: SecretBytes,
    /// Key for the responder's AUTH payload.
    pub sk_pr: SecretBytes,
}

impl core::fmt::Debug for IkeSaKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "IkeSaKeys(<redacted>; d {} / a {} / e {} / p {} octets)",
            self.sk_d.len(),
            self.sk_ai.len(),
            self.sk_ei.len(),
            self.sk_pi.len()
        )
    }
}

fn encr_len(encr: EncrId, key_bits: Option<u16>) -> Result<usize, CryptoError> {
    encr.keymat_len(key_bits).ok_or_else(|| {
        CryptoError::Unsupported(match key_bits {
            Some(b) => format!("encryption {encr} with {b}-bit key"),
            None => format!("encryption {encr} without key length"),
        })
    })
}

fn integ_len(encr: EncrId, integ: Option<IntegId>) -> Result<usize, CryptoError> {
    match integ {
        None | Some(IntegId::NONE) if encr.is_aead() => Ok(0),
        None | Some(IntegId::NONE) => Err(CryptoError::Unsupported(format!(
            "{encr} without an integrity transform"
        ))),
        Some(_) if encr.is_aead() => Err(CryptoError::Unsupported(format!(
            "{encr} (AEAD) with an integrity transform"
        ))),
        Some(i) => i
            .key_len()
            .ok_or_else(|| CryptoError::Unsupported(format!("integrity {i}"))),
    }
}

/// Splits `keymat` into consecutive pieces of the given lengths.
fn split(keymat: &[u8], lens: &[usize]) -> Vec<SecretBytes> {
    let mut off = 0;
    lens.iter()
        .map(|&l| {
            let s = SecretBytes::from_slice(&keymat[off..off + l]);
            off += l;
            s
        })
        .collect()
}

/// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
/// (RFC 7296 §2.14). `encr_key_bits` is the KEY_LENGTH attribute; `integ` is `None` for AEAD.
#[allow(clippy::too_many_arguments)]
pub fn ike_sa_keys(
    prf: &Prf,
    skeyseed: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: &[u8; 8],
    spi_r: &[u8; 8],
    encr: EncrId,
    encr_key_bits: Option<u16>,
    integ: Option<IntegId>,
) -> Result<IkeSaKeys, CryptoError> {
    let d = prf.key_len();
    let a = integ_len(encr, integ)?;
    let e = encr_len(encr, encr_key_bits)?;
    let total = 3 * d + 2 * a + 2 * e;
    let km = prf.prf_plus_parts(skeyseed, &[ni, nr, spi_i, spi_r], total)?;
    let mut parts = split(km.as_bytes(), &[d, a, a, e, e, d, d]).into_iter();
    let mut next = || parts.next().unwrap_or_default();
    Ok(IkeSaKeys {
        sk_d: next(),
        sk_ai: next(),
        sk_ar: next(),
        sk_ei: next(),
        sk_er: next(),
        sk_pi: next(),
        sk_pr: next(),
    })
}

/// Checks that the seven keys of an IKE SA have the lengths its suite gives them (RFC 7296
/// §2.14): SK_d, SK_pi, SK_pr the PRF's key length, SK_ai, SK_ar the integrity key length
/// (empty for AEAD), SK_ei, SK_er the cipher's key material (key plus salt for GCM). For keys
/// that come from elsewhere (an exported IKE SA) rather than from `ike_sa_keys`.
pub fn check_ike_sa_keys(
    prf: &Prf,
    keys: &IkeSaKeys,
    encr: EncrId,
    encr_key_bits: Option<u16>,
    integ: Option<IntegId>,
) -> Result<(), CryptoError> {
    let d = prf.key_len();
    let a = integ_len(encr, integ)?;
    let e = encr_len(encr, encr_key_bits)?;
    let expect = [
        ("SK_d", &keys.sk_d, d),
        ("SK_ai", &keys.sk_ai, a),
        ("SK_ar", &keys.sk_ar, a),
        ("SK_ei", &keys.sk_ei, e),
        ("SK_er", &keys.sk_er, e),
        ("SK_pi", &keys.sk_pi, d),
        ("SK_pr", &keys.sk_pr, d),
    ];
    for (what, key, expected) in expect {
        if key.len() != expected {
            return Err(CryptoError::InvalidKeyLength {
                what,
                got: key.len(),
                expected,
            });
        }
    }
    Ok(())
}

/// Child SA key material, split per RFC 7296 §2.17: the initiator-to-responder SA's keys
/// first (encryption then integrity), then the responder-to-initiator SA's.
/// Integrity keys are empty for AEAD; encryption keys include the GCM salt.
#[derive(Clone, PartialEq, Eq)]
pub struct ChildSaKeys {
    /// Encryption key (plus salt) for packets from initiator to responder.
    pub encr_i: SecretBytes,
    /// Integrity key for packets from initiator to responder.
    pub integ_i: SecretBytes,
    /// Encryption key (plus salt) for packets from responder to initiator.
    pub encr_r: SecretBytes,
    /// Integrity key for packets from responder to initiator.
    pub integ_r: SecretBytes,
}

impl core::fmt::Debug for ChildSaKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "ChildSaKeys(<redacted>; encr {} / integ {} octets)",
            self.encr_i.len(),
            self.integ_i.len()
        )
    }
}

/// KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (RFC 7296 §2.17). `g_ir` is `Some` only for a
/// CREATE_CHILD_SA with PFS; Ni and Nr are the nonces of the exchange that creates the SA
/// (IKE_SA_INIT's for the first Child SA).
#[allow(clippy::too_many_arguments)]
pub fn child_sa_keys(
    prf: &Prf,
    sk_d: &[u8],
    g_ir: Option<&[u8]>,
    ni: &[u8],
    nr: &[u8],
    encr: EncrId,
    encr_key_bits: Option<u16>,
    integ: Option<IntegId>,
) -> Result<ChildSaKeys, CryptoError> {
    let e = encr_len(encr, encr_key_bits)?;
    let a = integ_len(encr, integ)?;
    let km = match g_ir {
        Some(g) => prf.prf_plus_parts(sk_d, &[g, ni, nr], 2 * (e + a))?,
        None => prf.prf_plus_parts(sk_d, &[ni, nr], 2 * (e + a))?,
    };
    let mut parts = split(km.as_bytes(), &[e, a, e, a]).into_iter();
    let mut next = || parts.next().unwrap_or_default();
    Ok(ChildSaKeys {
        encr_i: next(),
        integ_i: next(),
        encr_r: next(),
        integ_r: next(),
    })
}
