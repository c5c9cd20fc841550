//! ESP algorithm registry: ciphers and integrity algorithms with their IKEv2 transform IDs
//! (RFC 7296 §3.3.2, IANA "IKEv2 Parameters"), key lengths (RFC 4106 §8.1, RFC 3602 §5,
//! RFC 2404 §3, RFC 4868 §2.1) and ESP framing sizes (RFC 4303 §2).
//!
//! One fact in one place: every number the appliance needs to map what IKE negotiated onto an
//! ESP SA lives here.

/// IKEv2 transform type 1 (ENCR) ID for AES-CBC (RFC 3602).
pub const ENCR_AES_CBC: u16 = 12;
/// IKEv2 transform type 1 (ENCR) ID for AES-GCM with a 16-octet ICV (RFC 4106).
pub const ENCR_AES_GCM_16: u16 = 20;
/// IKEv2 transform type 3 (INTEG) ID "NONE", used with AEAD ciphers.
pub const AUTH_NONE: u16 = 0;
/// IKEv2 transform type 3 (INTEG) ID for HMAC-SHA1-96 (RFC 2404).
pub const AUTH_HMAC_SHA1_96: u16 = 2;
/// IKEv2 transform type 3 (INTEG) ID for HMAC-SHA2-256-128 (RFC 4868).
pub const AUTH_HMAC_SHA2_256_128: u16 = 12;
/// IKEv2 transform type 3 (INTEG) ID for HMAC-SHA2-384-192 (RFC 4868).
pub const AUTH_HMAC_SHA2_384_192: u16 = 13;
/// IKEv2 transform type 3 (INTEG) ID for HMAC-SHA2-512-256 (RFC 4868).
pub const AUTH_HMAC_SHA2_512_256: u16 = 14;

/// Length of the ESP header (SPI and sequence number), RFC 4303 §2.
pub const ESP_HEADER_LEN: usize = 8;
/// Length of the ESP trailer's fixed part (Pad Length and Next Header), RFC 4303 §2.
pub const ESP_TRAILER_LEN: usize = 2;
/// Length of the salt that RFC 4106 §8.1 appends to an AES-GCM key.
pub const GCM_SALT_LEN: usize = 4;
/// Length of the explicit AES-GCM IV carried in each packet (RFC 4106 §3.1).
pub const GCM_IV_LEN: usize = 8;
/// Length of the AES-GCM ICV for ENCR_AES_GCM_16 (RFC 4106 §6).
pub const GCM_ICV_LEN: usize = 16;
/// AES block size, also the AES-CBC IV length (RFC 3602 §3).
pub const AES_BLOCK_LEN: usize = 16;
/// Largest headroom any supported suite needs before the payload: ESP header plus IV.
pub const MAX_HEADROOM: usize = ESP_HEADER_LEN + AES_BLOCK_LEN;
/// Largest tailroom any supported suite needs after the payload: padding, trailer and ICV.
pub const MAX_TAILROOM: usize = (AES_BLOCK_LEN - 1) + ESP_TRAILER_LEN + 32;
/// IP protocol number of an inner IPv4 packet (tunnel mode, RFC 4303 §2.6).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// IP protocol number of an inner IPv6 packet (tunnel mode, RFC 4303 §2.6).
pub const NEXT_HEADER_IPV6: u8 = 41;
/// "No Next Header": a traffic flow confidentiality dummy packet (RFC 4303 §2.6).
pub const NEXT_HEADER_NONE: u8 = 59;

/// ESP encryption algorithm (IKEv2 transform type 1), with its key size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cipher {
    /// AES-GCM, 16-octet ICV, 128-bit key (RFC 4106).
    AesGcm16_128,
    /// AES-GCM, 16-octet ICV, 192-bit key (RFC 4106).
    AesGcm16_192,
    /// AES-GCM, 16-octet ICV, 256-bit key (RFC 4106).
    AesGcm16_256,
    /// AES-CBC with a 128-bit key (RFC 3602).
    AesCbc128,
    /// AES-CBC with a 192-bit key (RFC 3602).
    AesCbc192,
    /// AES-CBC with a 256-bit key (RFC 3602).
    AesCbc256,
}

impl Cipher {
    /// Every supported cipher.
    pub const ALL: [Cipher; 6] = [
        Cipher::AesGcm16_128,
        Cipher::AesGcm16_192,
        Cipher::AesGcm16_256,
        Cipher::AesCbc128,
        Cipher::AesCbc192,
        Cipher::AesCbc256,
    ];

    /// The IKEv2 ENCR transform ID.
    pub const fn transform_id(self) -> u16 {
        match self {
            Cipher::AesGcm16_128 | Cipher::AesGcm16_192 | Cipher::AesGcm16_256 => ENCR_AES_GCM_16,
            Cipher::AesCbc128 | Cipher::AesCbc192 | Cipher::AesCbc256 => ENCR_AES_CBC,
        }
    }

    /// The value of the IKEv2 Key Length attribute (bits of the AES key, salt excluded).
    pub const fn key_bits(self) -> u16 {
        match self {
            Cipher::AesGcm16_128 | Cipher::AesCbc128 => 128,
            Cipher::AesGcm16_192 | Cipher::AesCbc192 => 192,
            Cipher::AesGcm16_256 | Cipher::AesCbc256 => 256,
        }
    }

    /// Maps a negotiated ENCR transform (ID and Key Length attribute) onto a cipher.
    pub const fn from_ike(transform_id: u16, key_bits: u16) -> Option<Cipher> {
        match (transform_id, key_bits) {
            (ENCR_AES_GCM_16, 128) => Some(Cipher::AesGcm16_128),
            (ENCR_AES_GCM_16, 192) => Some(Cipher::AesGcm16_192),
            (ENCR_AES_GCM_16, 256) => Some(Cipher::AesGcm16_256),
            (ENCR_AES_CBC, 128) => Some(Cipher::AesCbc128),
            (ENCR_AES_CBC, 192) => Some(Cipher::AesCbc192),
            (ENCR_AES_CBC, 256) => Some(Cipher::AesCbc256),
            _ => None,
        }
    }

    /// True for the combined-mode (AEAD) ciphers, which take integrity `NONE`.
    pub const fn is_aead(self) -> bool {
        self.transform_id() == ENCR_AES_GCM_16
    }

    /// Bytes of the AES key proper.
    pub const fn aes_key_len(self) -> usize {
        self.key_bits() as usize / 8
    }

    /// Bytes of keying material IKE must derive for this cipher (RFC 7296 §2.17): for GCM the
    /// AES key followed by the 4-byte salt (RFC 4106 §8.1).
    pub const fn keymat_len(self) -> usize {
        if self.is_aead() {
            self.aes_key_len() + GCM_SALT_LEN
        } else {
            self.aes_key_len()
        }
    }

    /// Bytes of IV carried in every ESP packet.
    pub const fn iv_len(self) -> usize {
        if self.is_aead() {
            GCM_IV_LEN
        } else {
            AES_BLOCK_LEN
        }
    }

    /// The alignment the encrypted part (payload, padding, trailer) must reach (RFC 4303 §2.4).
    pub const fn block_len(self) -> usize {
        if self.is_aead() { 4 } else { AES_BLOCK_LEN }
    }

    /// A short stable name (strongSwan's proposal keyword).
    pub const fn name(self) -> &'static str {
        match self {
            Cipher::AesGcm16_128 => "aes128gcm16",
            Cipher::AesGcm16_192 => "aes192gcm16",
            Cipher::AesGcm16_256 => "aes256gcm16",
            Cipher::AesCbc128 => "aes128",
            Cipher::AesCbc192 => "aes192",
            Cipher::AesCbc256 => "aes256",
        }
    }
}

/// ESP integrity algorithm (IKEv2 transform type 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Integrity {
    /// No separate integrity algorithm: only valid with an AEAD cipher.
    None,
    /// HMAC-SHA1-96 (RFC 2404).
    HmacSha1_96,
    /// HMAC-SHA2-256-128 (RFC 4868).
    HmacSha256_128,
    /// HMAC-SHA2-384-192 (RFC 4868).
    HmacSha384_192,
    /// HMAC-SHA2-512-256 (RFC 4868).
    HmacSha512_256,
}

impl Integrity {
    /// Every supported integrity algorithm with a key (that is, all but `None`).
    pub const ALL_HMAC: [Integrity; 4] = [
        Integrity::HmacSha1_96,
        Integrity::HmacSha256_128,
        Integrity::HmacSha384_192,
        Integrity::HmacSha512_256,
    ];

    /// The IKEv2 INTEG transform ID.
    pub const fn transform_id(self) -> u16 {
        match self {
            Integrity::None => AUTH_NONE,
            Integrity::HmacSha1_96 => AUTH_HMAC_SHA1_96,
            Integrity::HmacSha256_128 => AUTH_HMAC_SHA2_256_128,
            Integrity::HmacSha384_192 => AUTH_HMAC_SHA2_384_192,
            Integrity::HmacSha512_256 => AUTH_HMAC_SHA2_512_256,
        }
    }

    /// Maps a negotiated INTEG transform ID onto an integrity algorithm.
    pub const fn from_ike(transform_id: u16) -> Option<Integrity> {
        match transform_id {
            AUTH_NONE => Some(Integrity::None),
            AUTH_HMAC_SHA1_96 => Some(Integrity::HmacSha1_96),
            AUTH_HMAC_SHA2_256_128 => Some(Integrity::HmacSha256_128),
            AUTH_HMAC_SHA2_384_192 => Some(Integrity::HmacSha384_192),
            AUTH_HMAC_SHA2_512_256 => Some(Integrity::HmacSha512_256),
            _ => None,
        }
    }

    /// Bytes of key IKE must derive (RFC 2404 §3, RFC 4868 §2.1.1: the hash output length).
    pub const fn key_len(self) -> usize {
        match self {
            Integrity::None => 0,
            Integrity::HmacSha1_96 => 20,
            Integrity::HmacSha256_128 => 32,
            Integrity::HmacSha384_192 => 48,
            Integrity::HmacSha512_256 => 64,
        }
    }

    /// Bytes of the truncated ICV carried in each packet.
    pub const fn icv_len(self) -> usize {
        match self {
            Integrity::None => 0,
            Integrity::HmacSha1_96 => 12,
            Integrity::HmacSha256_128 => 16,
            Integrity::HmacSha384_192 => 24,
            Integrity::HmacSha512_256 => 32,
        }
    }

    /// A short stable name (strongSwan's proposal keyword).
    pub const fn name(self) -> &'static str {
        match self {
            Integrity::None => "none",
            Integrity::HmacSha1_96 => "sha1",
            Integrity::HmacSha256_128 => "sha256",
            Integrity::HmacSha384_192 => "sha384",
            Integrity::HmacSha512_256 => "sha512",
        }
    }
}

/// A cipher and integrity pair that the SA accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Suite {
    /// Encryption algorithm.
    pub cipher: Cipher,
    /// Integrity algorithm (`None` exactly when the cipher is AEAD).
    pub integrity: Integrity,
}

impl Suite {
    /// Checks that AEAD ciphers come without and CBC ciphers with an integrity algorithm.
    pub const fn is_valid(self) -> bool {
        match self.integrity {
            Integrity::None => self.cipher.is_aead(),
            _ => !self.cipher.is_aead(),
        }
    }

    /// Bytes of ICV per packet.
    pub const fn icv_len(self) -> usize {
        if self.cipher.is_aead() {
            GCM_ICV_LEN
        } else {
            self.integrity.icv_len()
        }
    }

    /// Bytes needed before the payload: ESP header and IV.
    pub const fn headroom(self) -> usize {
        ESP_HEADER_LEN + self.cipher.iv_len()
    }

    /// Bytes of padding for a payload of `len` bytes (RFC 4303 §2.4).
    pub const fn pad_len(self, len: usize) -> usize {
        let b = self.cipher.block_len();
        // Block sizes are powers of two: a mask instead of two divisions.
        (len + ESP_TRAILER_LEN).wrapping_neg() & (b - 1)
    }

    /// Bytes needed after a payload of `len` bytes: padding, trailer and ICV.
    pub const fn tailroom(self, len: usize) -> usize {
        self.pad_len(len) + ESP_TRAILER_LEN + self.icv_len()
    }

    /// Tailroom that suffices for any payload length.
    pub const fn max_tailroom(self) -> usize {
        self.cipher.block_len() - 1 + ESP_TRAILER_LEN + self.icv_len()
    }

    /// Length of the ESP packet (SPI through ICV) that carries a payload of `len` bytes.
    pub const fn sealed_len(self, len: usize) -> usize {
        self.headroom() + len + self.tailroom(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ike_mapping_round_trips() {
        for c in Cipher::ALL {
            assert_eq!(Cipher::from_ike(c.transform_id(), c.key_bits()), Some(c));
        }
        for i in Integrity::ALL_HMAC.into_iter().chain([Integrity::None]) {
            assert_eq!(Integrity::from_ike(i.transform_id()), Some(i));
        }
        assert_eq!(Cipher::from_ike(ENCR_AES_CBC, 64), None);
        assert_eq!(Integrity::from_ike(5), None);
        assert_eq!(Cipher::AesGcm16_256.keymat_len(), 36);
        assert_eq!(Integrity::HmacSha384_192.icv_len(), 24);
    }

    #[test]
    fn padding_aligns_and_tailroom_bounds_hold() {
        for c in Cipher::ALL {
            let integ = if c.is_aead() {
                Integrity::None
            } else {
                Integrity::HmacSha512_256
            };
            let s = Suite {
                cipher: c,
                integrity: integ,
            };
            assert!(s.is_valid());
            assert!(s.headroom() <= MAX_HEADROOM);
            assert!(s.max_tailroom() <= MAX_TAILROOM);
            for len in 0..64 {
                assert_eq!((len + s.pad_len(len) + 2) % c.block_len(), 0);
                assert!(s.tailroom(len) <= s.max_tailroom());
            }
        }
        assert!(
            !Suite {
                cipher: Cipher::AesCbc128,
                integrity: Integrity::None
            }
            .is_valid()
        );
        assert!(
            !Suite {
                cipher: Cipher::AesGcm16_128,
                integrity: Integrity::HmacSha1_96
            }
            .is_valid()
        );
    }
}
