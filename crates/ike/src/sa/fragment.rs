//! IKE fragmentation (RFC 7383): sealing our protected messages as SKF fragments when both
//! sides announced IKEV2_FRAGMENTATION_SUPPORTED and the message exceeds `fragment_size`, and
//! reassembling received fragments. Every fragment's ICV is verified before it is stored;
//! reassembly is bounded in fragment count, total size and time, and a newer message ID
//! replaces an unfinished older one (§2.6).

use super::protect::{self, OpenError};
use super::state::{IkeSa, Reassembly};
use super::{DropReason, Endpoint};
use crate::wire::{Header, Message, NotifyPayload, NotifyType, Payload, WireError, parse_chain};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::debug;

/// Most fragments one message may have.
pub(crate) const MAX_FRAGMENTS: u16 = 64;
/// Most octets of decrypted fragment data kept for one message.
pub(crate) const MAX_REASSEMBLY_BYTES: usize = 64 * 1024;
/// How long an unfinished reassembly is kept.
pub(crate) const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(30);

impl Endpoint {
    /// Seals a protected message for `sa`, fragmented when negotiated and needed.
    pub(super) fn seal_for(
        &mut self,
        sa: &IkeSa,
        header: Header,
        payloads: &[Payload],
    ) -> Result<Vec<Vec<u8>>, protect::SealError> {
        let keys = sa
            .state
            .keys()
            .ok_or(protect::SealError::Wire(WireError::Malformed("no keys")))?;
        let max = sa.frag.then_some(self.conns[sa.conn].fragment_size);
        protect::seal_fragments(keys, &mut *self.rng, header, payloads, max)
    }

    /// One received SKF fragment (RFC 7383 §2.6).
    pub(super) fn handle_fragment(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        msg: Message,
        sa: &mut IkeSa,
    ) -> Result<(), DropReason> {
        let h = msg.header;
        let Some(Payload::EncryptedFragment(frag)) = msg.payloads.last() else {
            return Err(DropReason::Unexpected);
        };
        if !sa.frag {
            return Err(DropReason::Invalid(
                "fragment without negotiated fragmentation",
            ));
        }
        if frag.total > MAX_FRAGMENTS {
            return Err(DropReason::Invalid("too many fragments"));
        }
        let response = h.is_response();
        let id = h.message_id;
        let retransmitted_request = !response
            && id.wrapping_add(1) == sa.peer_msg_id
            && sa.cached.as_ref().is_some_and(|(c, _)| *c == id);
        let expected = if response {
            sa.outstanding.as_ref().is_some_and(|o| o.msg_id == id)
        } else {
            id == sa.peer_msg_id || retransmitted_request
        };
        if !expected {
            return Err(DropReason::BadMessageId);
        }
        let keys = sa.state.keys().ok_or(DropReason::Unexpected)?;
        let part = match protect::open_fragment(keys, data, frag) {
            Ok(p) => p,
            Err(OpenError::Malformed(e)) => return Err(DropReason::Malformed(e)),
            Err(_) => return Err(DropReason::Integrity),
        };
        if retransmitted_request {
            // The whole request again: answer once, on its first fragment.
            if frag.number == 1
                && let Some((_, resp)) = &sa.cached
            {
                for r in resp.clone() {
                    self.send(local, remote, &r);
                }
            }
            return Err(DropReason::Retransmission);
        }
        let stale = sa.reassembly.as_ref().is_some_and(|r| {
            r.msg_id != id
                || r.response != response
                || r.total != frag.total
                || now.saturating_duration_since(r.started) > REASSEMBLY_TIMEOUT
        });
        if stale {
            debug!("dropping an unfinished fragment reassembly");
            sa.reassembly = None;
        }
        let r = sa.reassembly.get_or_insert_with(|| Reassembly {
            msg_id: id,
            response,
            total: frag.total,
            first_next: None,
            parts: Default::default(),
            bytes: 0,
            started: now,
        });
        if r.parts.contains_key(&frag.number) {
            return Err(DropReason::Retransmission);
        }
        if r.bytes + part.len() > MAX_REASSEMBLY_BYTES {
            sa.reassembly = None;
            return Err(DropReason::Invalid("reassembled message too large"));
        }
        if frag.number == 1 {
            r.first_next = Some(frag.inner_next);
        }
        r.bytes += part.len();
        r.parts.insert(frag.number, part);
        if r.parts.len() < usize::from(r.total) {
            return Ok(());
        }
        let Some(r) = sa.reassembly.take() else {
            return Err(DropReason::Unexpected);
        };
        let first = r
            .first_next
            .ok_or(DropReason::Invalid("fragment 1 missing"))?;
        let plain: Vec<u8> = r.parts.into_values().flatten().collect();
        let inner = match parse_chain(first, &plain, 0) {
            Ok(p) => p,
            Err(WireError::UnsupportedCriticalPayload(t)) if !response => {
                let payloads = vec![Payload::Notify(NotifyPayload::new(
                    NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
                    vec![t.0],
                ))];
                self.respond(sa, h, local, remote, payloads);
                return Err(DropReason::Refused(
                    NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD,
                ));
            }
            Err(e) => return Err(DropReason::Malformed(e)),
        };
        if response {
            let kind = sa
                .outstanding
                .as_ref()
                .map(|o| o.kind)
                .ok_or(DropReason::Unexpected)?;
            if kind == super::state::Request::Init {
                return Err(DropReason::Unexpected);
            }
            self.response_payloads(now, kind, inner, sa)
        } else {
            self.request_payloads(now, local, remote, h, inner, sa)
        }
    }
}
