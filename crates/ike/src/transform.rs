//! IKEv2 transform registries (RFC 7296 §3.3.2, §3.3.5; IANA "IKEv2 Parameters") as open
//! newtype enums: unknown values round-trip and are refused by policy, never by the parser.
//!
//! This module is the one place for the per-transform facts (key, block, IV, ICV and
//! public-value lengths) that the crypto and proposal modules rely on.

use core::fmt;

/// Defines an open registry newtype with named constants and IANA names.
macro_rules! registry {
    (
        $(#[$meta:meta])*
        $name:ident($repr:ty), $unknown:literal {
            $( $(#[$cmeta:meta])* $konst:ident = $val:literal => $iana:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub $repr);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: Self = Self($val); )*

            /// The IANA name of this value, `None` if this crate does not know it.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $val => Some($iana), )*
                    _ => None,
                }
            }

            /// The raw registry value.
            pub const fn get(self) -> $repr {
                self.0
            }
        }

        impl From<$repr> for $name {
            fn from(v: $repr) -> Self {
                Self(v)
            }
        }

        impl From<$name> for $repr {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, concat!($unknown, "({})"), self.0),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

registry! {
    /// Transform types (RFC 7296 §3.3.2 "Transform Type").
    TransformType(u8), "TRANSFORM_TYPE" {
        /// Encryption algorithm.
        ENCR = 1 => "ENCR",
        /// Pseudo-random function.
        PRF = 2 => "PRF",
        /// Integrity algorithm.
        INTEG = 3 => "INTEG",
        /// Diffie-Hellman group (renamed "Key Exchange Method" by RFC 9370).
        DH = 4 => "DH",
        /// Extended sequence numbers.
        ESN = 5 => "ESN",
    }
}

impl TransformType {
    /// RFC 9370 name of transform type 4.
    pub const KE: Self = Self::DH;
}

registry! {
    /// Security protocol identifiers of a proposal (RFC 7296 §3.3.1).
    ProtocolId(u8), "PROTOCOL" {
        /// IKE SA.
        IKE = 1 => "IKE",
        /// Authentication Header.
        AH = 2 => "AH",
        /// Encapsulating Security Payload.
        ESP = 3 => "ESP",
    }
}

registry! {
    /// Transform attribute types (RFC 7296 §3.3.5), without the AF (format) bit.
    AttributeType(u16), "ATTRIBUTE" {
        /// Key length in bits (TV format).
        KEY_LENGTH = 14 => "KEY_LENGTH",
    }
}

registry! {
    /// Transform type 1: encryption algorithm IDs.
    EncrId(u16), "ENCR" {
        ENCR_DES_IV64 = 1 => "ENCR_DES_IV64",
        ENCR_DES = 2 => "ENCR_DES",
        ENCR_3DES = 3 => "ENCR_3DES",
        ENCR_RC5 = 4 => "ENCR_RC5",
        ENCR_IDEA = 5 => "ENCR_IDEA",
        ENCR_CAST = 6 => "ENCR_CAST",
        ENCR_BLOWFISH = 7 => "ENCR_BLOWFISH",
        ENCR_3IDEA = 8 => "ENCR_3IDEA",
        ENCR_DES_IV32 = 9 => "ENCR_DES_IV32",
        ENCR_NULL = 11 => "ENCR_NULL",
        ENCR_AES_CBC = 12 => "ENCR_AES_CBC",
        ENCR_AES_CTR = 13 => "ENCR_AES_CTR",
        ENCR_AES_CCM_8 = 14 => "ENCR_AES_CCM_8",
        ENCR_AES_CCM_12 = 15 => "ENCR_AES_CCM_12",
        ENCR_AES_CCM_16 = 16 => "ENCR_AES_CCM_16",
        ENCR_AES_GCM_8 = 18 => "ENCR_AES_GCM_8",
        ENCR_AES_GCM_12 = 19 => "ENCR_AES_GCM_12",
        ENCR_AES_GCM_16 = 20 => "ENCR_AES_GCM_16",
        ENCR_NULL_AUTH_AES_GMAC = 21 => "ENCR_NULL_AUTH_AES_GMAC",
        ENCR_CHACHA20_POLY1305 = 28 => "ENCR_CHACHA20_POLY1305",
    }
}

impl EncrId {
    /// AEAD ciphers (combined mode): no separate integrity transform (RFC 5282).
    pub const fn is_aead(self) -> bool {
        matches!(self.0, 14..=16 | 18..=21 | 28)
    }

    /// Whether the transform needs the KEY_LENGTH attribute (variable key length ciphers).
    pub const fn needs_key_length(self) -> bool {
        matches!(self.0, 12..=16 | 18..=21)
    }

    /// Key lengths in bits this registry entry allows (empty when unknown).
    pub const fn allowed_key_bits(self) -> &'static [u16] {
        match self.0 {
            12..=16 | 18..=21 => &[128, 192, 256],
            3 => &[192],
            28 => &[256],
            _ => &[],
        }
    }

    /// Whether `key_bits` (the KEY_LENGTH attribute, `None` if absent) is valid for this cipher.
    pub fn key_bits_valid(self, key_bits: Option<u16>) -> bool {
        match key_bits {
            None => !self.needs_key_length() && !self.allowed_key_bits().is_empty(),
            Some(b) => self.needs_key_length() && self.allowed_key_bits().contains(&b),
        }
    }

    /// ICV length of an AEAD cipher in octets, `None` for non-AEAD or unknown ciphers.
    pub const fn aead_icv_len(self) -> Option<usize> {
        match self.0 {
            14 | 18 => Some(8),
            15 | 19 => Some(12),
            16 | 20 | 21 | 28 => Some(16),
            _ => None,
        }
    }

    /// Salt octets taken from the key material after the key (RFC 5282 §7.1: 4 for GCM, 3 for CCM).
    pub const fn salt_len(self) -> usize {
        match self.0 {
            18..=21 | 28 => 4,
            14..=16 => 3,
            _ => 0,
        }
    }

    /// Length of the IV field in the SK payload (RFC 7296 §3.14; RFC 5282 §3.1: 8 for GCM/CCM).
    pub const fn iv_len(self) -> Option<usize> {
        match self.0 {
            12 => Some(16),
            3 => Some(8),
            13..=16 | 18..=21 | 28 => Some(8),
            _ => None,
        }
    }

    /// Cipher block size the plaintext is padded to (1 for stream/AEAD modes).
    pub const fn block_len(self) -> Option<usize> {
        match self.0 {
            12 => Some(16),
            3 => Some(8),
            13..=16 | 18..=21 | 28 => Some(1),
            _ => None,
        }
    }

    /// Octets of key material (key plus salt) this cipher takes from prf+ (RFC 7296 §2.14,
    /// RFC 5282 §7.1), `None` when the key length is invalid for the cipher.
    pub fn keymat_len(self, key_bits: Option<u16>) -> Option<usize> {
        if !self.key_bits_valid(key_bits) {
            return None;
        }
        let bits = match key_bits {
            Some(b) => b,
            None => *self.allowed_key_bits().first()?,
        };
        Some(usize::from(bits / 8) + self.salt_len())
    }
}

registry! {
    /// Transform type 2: pseudo-random function IDs.
    PrfId(u16), "PRF" {
        PRF_HMAC_MD5 = 1 => "PRF_HMAC_MD5",
        PRF_HMAC_SHA1 = 2 => "PRF_HMAC_SHA1",
        PRF_HMAC_TIGER = 3 => "PRF_HMAC_TIGER",
        PRF_AES128_XCBC = 4 => "PRF_AES128_XCBC",
        PRF_HMAC_SHA2_256 = 5 => "PRF_HMAC_SHA2_256",
        PRF_HMAC_SHA2_384 = 6 => "PRF_HMAC_SHA2_384",
        PRF_HMAC_SHA2_512 = 7 => "PRF_HMAC_SHA2_512",
        PRF_AES128_CMAC = 8 => "PRF_AES128_CMAC",
    }
}

impl PrfId {
    /// Short aliases used in this crate's docs and by the brief.
    pub const HMAC_SHA1: Self = Self::PRF_HMAC_SHA1;
    /// HMAC-SHA2-256.
    pub const HMAC_SHA2_256: Self = Self::PRF_HMAC_SHA2_256;
    /// HMAC-SHA2-384.
    pub const HMAC_SHA2_384: Self = Self::PRF_HMAC_SHA2_384;
    /// HMAC-SHA2-512.
    pub const HMAC_SHA2_512: Self = Self::PRF_HMAC_SHA2_512;

    /// Output length in octets (also the preferred key length, RFC 7296 §2.13/§2.14).
    pub const fn output_len(self) -> Option<usize> {
        match self.0 {
            1 => Some(16),
            2 => Some(20),
            3 => Some(24),
            4 | 8 => Some(16),
            5 => Some(32),
            6 => Some(48),
            7 => Some(64),
            _ => None,
        }
    }

    /// Length of SK_d, SK_pi and SK_pr: the PRF's preferred key size (RFC 7296 §2.14).
    pub const fn key_len(self) -> Option<usize> {
        self.output_len()
    }
}

registry! {
    /// Transform type 3: integrity algorithm IDs.
    IntegId(u16), "AUTH" {
        NONE = 0 => "NONE",
        AUTH_HMAC_MD5_96 = 1 => "AUTH_HMAC_MD5_96",
        AUTH_HMAC_SHA1_96 = 2 => "AUTH_HMAC_SHA1_96",
        AUTH_DES_MAC = 3 => "AUTH_DES_MAC",
        AUTH_KPDK_MD5 = 4 => "AUTH_KPDK_MD5",
        AUTH_AES_XCBC_96 = 5 => "AUTH_AES_XCBC_96",
        AUTH_HMAC_MD5_128 = 6 => "AUTH_HMAC_MD5_128",
        AUTH_HMAC_SHA1_160 = 7 => "AUTH_HMAC_SHA1_160",
        AUTH_AES_CMAC_96 = 8 => "AUTH_AES_CMAC_96",
        AUTH_HMAC_SHA2_256_128 = 12 => "AUTH_HMAC_SHA2_256_128",
        AUTH_HMAC_SHA2_384_192 = 13 => "AUTH_HMAC_SHA2_384_192",
        AUTH_HMAC_SHA2_512_256 = 14 => "AUTH_HMAC_SHA2_512_256",
    }
}

impl IntegId {
    /// HMAC-SHA1-96.
    pub const HMAC_SHA1_96: Self = Self::AUTH_HMAC_SHA1_96;
    /// HMAC-SHA2-256-128.
    pub const HMAC_SHA2_256_128: Self = Self::AUTH_HMAC_SHA2_256_128;
    /// HMAC-SHA2-384-192.
    pub const HMAC_SHA2_384_192: Self = Self::AUTH_HMAC_SHA2_384_192;
    /// HMAC-SHA2-512-256.
    pub const HMAC_SHA2_512_256: Self = Self::AUTH_HMAC_SHA2_512_256;

    /// Key length in octets (RFC 2404, RFC 4868 §2.1.1).
    pub const fn key_len(self) -> Option<usize> {
        match self.0 {
            0 => Some(0),
            1 | 6 => Some(16),
            2 | 7 => Some(20),
            5 | 8 => Some(16),
            12 => Some(32),
            13 => Some(48),
            14 => Some(64),
            _ => None,
        }
    }

    /// Truncated ICV length in octets.
    pub const fn icv_len(self) -> Option<usize> {
        match self.0 {
            0 => Some(0),
            1 | 2 | 5 | 8 => Some(12),
            6 => Some(16),
            7 => Some(20),
            12 => Some(16),
            13 => Some(24),
            14 => Some(32),
            _ => None,
        }
    }
}

registry! {
    /// Transform type 4: Diffie-Hellman groups / key exchange methods.
    DhId(u16), "DH" {
        NONE = 0 => "NONE",
        MODP_768 = 1 => "MODP_768",
        MODP_1024 = 2 => "MODP_1024",
        MODP_1536 = 5 => "MODP_1536",
        MODP_2048 = 14 => "MODP_2048",
        MODP_3072 = 15 => "MODP_3072",
        MODP_4096 = 16 => "MODP_4096",
        MODP_6144 = 17 => "MODP_6144",
        MODP_8192 = 18 => "MODP_8192",
        ECP_256 = 19 => "ECP_256",
        ECP_384 = 20 => "ECP_384",
        ECP_521 = 21 => "ECP_521",
        MODP_1024_160 = 22 => "MODP_1024_160",
        MODP_2048_224 = 23 => "MODP_2048_224",
        MODP_2048_256 = 24 => "MODP_2048_256",
        ECP_192 = 25 => "ECP_192",
        ECP_224 = 26 => "ECP_224",
        BRAINPOOL_P224R1 = 27 => "BRAINPOOL_P224R1",
        BRAINPOOL_P256R1 = 28 => "BRAINPOOL_P256R1",
        BRAINPOOL_P384R1 = 29 => "BRAINPOOL_P384R1",
        BRAINPOOL_P512R1 = 30 => "BRAINPOOL_P512R1",
        CURVE25519 = 31 => "CURVE_25519",
        CURVE448 = 32 => "CURVE_448",
    }
}

impl DhId {
    /// Length of the KE payload's key exchange data in octets (RFC 7296 §3.4, RFC 5903 §7,
    /// RFC 8031 §3.1).
    pub const fn public_len(self) -> Option<usize> {
        match self.0 {
            1 => Some(96),
            2 | 22 => Some(128),
            5 => Some(192),
            14 | 23 | 24 => Some(256),
            15 => Some(384),
            16 => Some(512),
            17 => Some(768),
            18 => Some(1024),
            19 => Some(64),
            20 => Some(96),
            21 => Some(132),
            31 => Some(32),
            32 => Some(56),
            _ => None,
        }
    }

    /// Length of the shared secret g^ir in octets (RFC 7296 §2.14: padded to the modulus length;
    /// RFC 5903 §7: the x coordinate only).
    pub const fn shared_len(self) -> Option<usize> {
        match self.0 {
            19 => Some(32),
            20 => Some(48),
            21 => Some(66),
            _ => self.public_len(),
        }
    }

    /// Groups RFC 8247 §2.4 says MUST NOT / SHOULD NOT be used, or that are otherwise weak.
    pub const fn is_legacy(self) -> bool {
        matches!(self.0, 1 | 2 | 5 | 22 | 23 | 24)
    }
}

registry! {
    /// Transform type 5: extended sequence numbers.
    EsnId(u16), "ESN" {
        /// No extended sequence numbers.
        NO = 0 => "NO_EXT_SEQ",
        /// Extended sequence numbers.
        YES = 1 => "EXT_SEQ",
    }
}

impl EncrId {
    /// Whether RFC 8247 (or common sense) marks this cipher as legacy.
    pub const fn is_legacy(self) -> bool {
        matches!(self.0, 1..=9)
    }
}

impl IntegId {
    /// Whether RFC 8247/8221 mark this integrity algorithm as legacy (MD5, DES-MAC, SHA1 is
    /// still allowed by RFC 8247 but flagged by `Proposal::legacy_warnings` only for PRF use).
    pub const fn is_legacy(self) -> bool {
        matches!(self.0, 1 | 3 | 4 | 6)
    }
}
