//! IKEv2 transform registries (RFC 7296 §3.3.2, IANA "IKEv2 Parameters").
