//! Proposals: strongSwan proposal strings and Azure presets (RFC 7296 §3.3).
