//! IKEv2 (RFC 7296), sans-IO: wire codec, transforms and proposals, key exchange, PSK
//! authentication and the IKE/Child SA state machines. No sockets, no clock reads.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod proposal;
pub mod transform;
