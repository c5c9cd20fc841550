//! The replication messages, from the master (sender) to the backup (receiver).

use std::collections::BTreeSet;

use crate::limits::{MAX_CHILD_SAS, MAX_IKE_SAS, MAX_MARKS};
use crate::model::{ChildSaReplica, IkeSaReplica, IkeSpis, SeqMark};
use crate::wire::Problem;

/// The full replicated state. Applying it replaces everything the backup holds.
///
/// It must be self-consistent: no two IKE SAs with the same SPIs, no IKE SA listing the same
/// inbound SPI twice in its [`children`](IkeSaReplica::children) (see [`IkeSaReplica::check`];
/// a [`ChildLink`](crate::ChildLink) without its Child SA is allowed), no two Child SAs with
/// the same inbound SPI, every Child SA's IKE SA present, and exactly one mark per Child SA (a
/// Child SA that has sent nothing yet has a mark of zeros); and within the table's bounds
/// ([`MAX_IKE_SAS`], [`MAX_CHILD_SAS`], [`MAX_MARKS`]). The sender refuses to seal, and
/// the receiver to accept, a snapshot that is not. Requiring every mark means a snapshot can
/// never make the backup forget how far a Child SA's sequence numbers have gone.
///
/// A snapshot must also fit in [`MAX_BODY_LEN`](crate::limits::MAX_BODY_LEN) bytes (thousands
/// of SAs with ordinary last responses do). If a very large state does not, send an empty
/// snapshot followed by one upsert per SA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// All IKE SAs.
    pub ike: Vec<IkeSaReplica>,
    /// All Child SAs.
    pub child: Vec<ChildSaReplica>,
    /// Marks of (some of) those Child SAs.
    pub marks: Vec<SeqMark>,
}

impl Snapshot {
    /// Checks the bounds and consistency rules above.
    pub fn check(&self) -> Result<(), Problem> {
        for (what, got, max) in [
            ("IKE SAs", self.ike.len(), MAX_IKE_SAS),
            ("Child SAs", self.child.len(), MAX_CHILD_SAS),
            ("marks", self.marks.len(), MAX_MARKS),
        ] {
            if got > max {
                return Err(Problem::TooLong {
                    what,
                    max,
                    got: got as u64,
                });
            }
        }
        let mut ike = BTreeSet::new();
        for sa in &self.ike {
            if !ike.insert(sa.spis) {
                return Err(Problem::Duplicate { what: "IKE SA" });
            }
            sa.check()?;
        }
        let mut child = BTreeSet::new();
        for sa in &self.child {
            if !child.insert(sa.inbound_spi) {
                return Err(Problem::Duplicate { what: "Child SA" });
            }
            if !ike.contains(&sa.ike) {
                return Err(Problem::Dangling {
                    what: "Child SA's IKE SA",
                });
            }
        }
        let mut marked = BTreeSet::new();
        for m in &self.marks {
            if !marked.insert(m.inbound_spi) {
                return Err(Problem::Duplicate { what: "mark" });
            }
            if !child.contains(&m.inbound_spi) {
                return Err(Problem::Dangling {
                    what: "mark's Child SA",
                });
            }
        }
        if marked.len() != child.len() {
            return Err(Problem::Missing {
                what: "mark of a Child SA",
            });
        }
        Ok(())
    }
}

/// One replication message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The full state.
    Snapshot(Snapshot),
    /// An IKE SA was established or changed (message IDs, last response, request in flight,
    /// queue, Child SA links, timers, addresses, ...).
    UpsertIke(Box<IkeSaReplica>),
    /// A Child SA was established or changed; its IKE SA must be known.
    UpsertChild(Box<ChildSaReplica>),
    /// An IKE SA is gone, and with it the Child SAs still attached to it.
    RemoveIke(IkeSpis),
    /// A Child SA is gone.
    RemoveChild {
        /// Its inbound SPI.
        inbound_spi: u32,
    },
    /// Sequence number high-water marks. Like every message it must fit in
    /// [`MAX_BODY_LEN`](crate::limits::MAX_BODY_LEN) bytes (and a datagram, over UDP): a mark
    /// takes 24 bytes plus 8 per bitmap word, so marks with large replay windows are spread
    /// over several messages.
    Marks(Vec<SeqMark>),
    /// Nothing changed; the master is alive.
    Heartbeat,
}

impl Message {
    /// The type byte it travels under.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Snapshot(_) => MessageType::Snapshot,
            Message::UpsertIke(_) => MessageType::UpsertIke,
            Message::UpsertChild(_) => MessageType::UpsertChild,
            Message::RemoveIke(_) => MessageType::RemoveIke,
            Message::RemoveChild { .. } => MessageType::RemoveChild,
            Message::Marks(_) => MessageType::Marks,
            Message::Heartbeat => MessageType::Heartbeat,
        }
    }
}

/// The header's type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// [`Message::Snapshot`].
    Snapshot = 1,
    /// [`Message::UpsertIke`].
    UpsertIke = 2,
    /// [`Message::UpsertChild`].
    UpsertChild = 3,
    /// [`Message::RemoveIke`].
    RemoveIke = 4,
    /// [`Message::RemoveChild`].
    RemoveChild = 5,
    /// [`Message::Marks`].
    Marks = 6,
    /// [`Message::Heartbeat`].
    Heartbeat = 7,
}

impl MessageType {
    /// Every type, in wire order.
    pub const ALL: [MessageType; 7] = [
        MessageType::Snapshot,
        MessageType::UpsertIke,
        MessageType::UpsertChild,
        MessageType::RemoveIke,
        MessageType::RemoveChild,
        MessageType::Marks,
        MessageType::Heartbeat,
    ];

    /// The type with this wire value.
    pub fn from_u8(v: u8) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| *t as u8 == v)
    }
}
