//! Cryptographic primitives for IKEv2: PRF, integrity, encryption, key exchange (RFC 7296 §2.13-2.17).
