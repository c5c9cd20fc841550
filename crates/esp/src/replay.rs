//! Lock-free anti-replay window with extended sequence number inference (RFC 4303 §3.4.3 and
//! Appendix A2; bitmap layout in the spirit of RFC 6479).
//!
//! The window covers the `size` sequence numbers ending at the highest one accepted so far
//! (`top`). It is a ring of `AtomicU64` slots; each slot holds the low 32 bits of a 32-packet
//! block index in its upper half and that block's bitmap in its lower half. Because every slot
//! says which block it describes, advancing the window never has to clear anything: a slot that
//! still names an older block is simply taken over. That makes the window usable from several
//! threads without a lock:
//!
//! * [`ReplayWindow::check`] (before decryption) only reads;
//! * [`ReplayWindow::mark`] (after the ICV verified) raises `top` with `fetch_max`, then sets the
//!   bit with a compare-and-swap loop and reports a duplicate if another thread marked the same
//!   number in between, so each sequence number is accepted at most once.
//!
//! A slot's tag keeps 32 bits of the block index: only a legitimate sender that skips exactly a
//! multiple of 2^37 sequence numbers could make a stale slot look current, which at worst drops
//! packets; it never accepts a duplicate.

use core::sync::atomic::{AtomicU64, Ordering};

/// Default window size (packets).
pub const DEFAULT_WINDOW: u32 = 1024;
/// Largest window size accepted.
pub const MAX_WINDOW: u32 = 1 << 16;

const BLOCK_BITS: u64 = 32;
const BLOCK_SHIFT: u32 = 5;

/// Why the replay window refused a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayError {
    /// Already received.
    Duplicate,
    /// Left of the window.
    TooOld,
}

/// The anti-replay window of one inbound SA.
#[derive(Debug)]
pub struct ReplayWindow {
    top: AtomicU64,
    size: u64,
    mask: u64,
    slots: Box<[AtomicU64]>,
}

impl ReplayWindow {
    /// Builds a window tracking `size` packets (rounded up to a multiple of 32, clamped to
    /// 32..=[`MAX_WINDOW`]).
    pub fn new(size: u32) -> ReplayWindow {
        let size = u64::from(size.clamp(32, MAX_WINDOW)).div_ceil(BLOCK_BITS) * BLOCK_BITS;
        // The window spans at most size/32 + 1 blocks; a power of two makes the index a mask.
        let slots = (size / BLOCK_BITS + 1).next_power_of_two();
        ReplayWindow {
            top: AtomicU64::new(0),
            size,
            mask: slots - 1,
            slots: (0..slots).map(|_| AtomicU64::new(u64::MAX << 32)).collect(),
        }
    }

    /// Sets the highest accepted sequence number (restoring state, tests). Numbers up to it
    /// that are still inside the window count as not yet received.
    pub fn set_top(&mut self, top: u64) {
        *self.top.get_mut() = top;
    }

    /// Window size in packets.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The highest sequence number accepted so far (0 before the first).
    pub fn top(&self) -> u64 {
        self.top.load(Ordering::Acquire)
    }

    /// Infers the full 64-bit sequence number from its low 32 bits (RFC 4303 Appendix A2.2).
    /// Returns `None` when the number would lie before the first or after the last 2^32 epoch.
    pub fn infer_esn(&self, seq_low: u32) -> Option<u64> {
        let top = self.top();
        let tl = top as u32;
        let th = (top >> 32) as u32;
        let w = self.size as u32;
        let bottom = tl.wrapping_sub(w).wrapping_add(1);
        let th = if tl >= w - 1 {
            // Case A: the window lies within one epoch.
            if seq_low >= bottom {
                Some(th)
            } else {
                th.checked_add(1)
            }
        } else if seq_low >= bottom {
            // Case B: the window spans two epochs and seq_low is in the older one.
            th.checked_sub(1)
        } else {
            Some(th)
        }?;
        Some((u64::from(th) << 32) | u64::from(seq_low))
    }

    #[inline]
    fn too_old(&self, seq: u64, top: u64) -> bool {
        top >= self.size && seq <= top - self.size
    }

    #[inline]
    fn slot(&self, seq: u64) -> (&AtomicU64, u64, u64) {
        let block = seq >> BLOCK_SHIFT;
        let idx = (block & self.mask) as usize;
        // `mask` is slots.len() - 1, so the index is always in range.
        let slot = &self.slots[idx];
        (slot, block & 0xffff_ffff, 1u64 << (seq & (BLOCK_BITS - 1)))
    }

    /// Checks a (full) sequence number before decryption. Does not change the window.
    #[inline]
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        let top = self.top.load(Ordering::Acquire);
        if seq > top {
            return Ok(());
        }
        if self.too_old(seq, top) {
            return Err(ReplayError::TooOld);
        }
        let (slot, tag, bit) = self.slot(seq);
        let v = slot.load(Ordering::Acquire);
        if v >> 32 == tag && v & bit != 0 {
            Err(ReplayError::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Marks a sequence number whose packet passed the ICV check. Fails if another thread
    /// marked it first or the window moved past it meanwhile.
    #[inline]
    pub fn mark(&self, seq: u64) -> Result<(), ReplayError> {
        // Raise top first: a reader that sees this block's tag in the slot then also sees the
        // new top, so it recognises packets from the block the slot held before as too old.
        let prev_top = self.top.fetch_max(seq, Ordering::AcqRel);
        let mut top = prev_top.max(seq);
        if self.too_old(seq, top) {
            return Err(ReplayError::TooOld);
        }
        let (slot, tag, bit) = self.slot(seq);
        let mut v = slot.load(Ordering::Acquire);
        loop {
            let new = if v >> 32 == tag {
                if v & bit != 0 {
                    return Err(ReplayError::Duplicate);
                }
                v | bit
            } else {
                // The slot names another block. A newer one would mean top moved at least a
                // window past us; re-read top to tell.
                top = self.top.load(Ordering::Acquire);
                if self.too_old(seq, top) {
                    return Err(ReplayError::TooOld);
                }
                (tag << 32) | bit
            };
            match slot.compare_exchange_weak(v, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(cur) => v = cur,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_window_behaviour() {
        let w = ReplayWindow::new(64);
        assert_eq!(w.check(1), Ok(()));
        w.mark(1).unwrap();
        assert_eq!(w.check(1), Err(ReplayError::Duplicate));
        assert_eq!(w.mark(1), Err(ReplayError::Duplicate));
        w.mark(100).unwrap();
        assert_eq!(w.check(36), Err(ReplayError::TooOld));
        assert_eq!(w.check(37), Ok(()));
        w.mark(37).unwrap();
        assert_eq!(w.check(37), Err(ReplayError::Duplicate));
        // Far ahead: everything before is now too old, the new top is a duplicate.
        w.mark(1_000_000).unwrap();
        assert_eq!(w.check(100), Err(ReplayError::TooOld));
        assert_eq!(w.check(1_000_000), Err(ReplayError::Duplicate));
        assert_eq!(w.check(999_999), Ok(()));
    }

    #[test]
    fn esn_inference_across_wrap() {
        let w = ReplayWindow::new(1024);
        // Before anything arrived, low numbers are epoch 0.
        assert_eq!(w.infer_esn(5), Some(5));
        w.mark(0xffff_fff0).unwrap();
        assert_eq!(w.infer_esn(0xffff_fff5), Some(0xffff_fff5));
        assert_eq!(w.infer_esn(3), Some(0x1_0000_0003));
        w.mark(0x1_0000_0003).unwrap();
        // Window spans the wrap: high low-bits belong to the previous epoch.
        assert_eq!(w.infer_esn(0xffff_fff8), Some(0xffff_fff8));
        assert_eq!(w.infer_esn(10), Some(0x1_0000_000a));
        assert_eq!(w.check(0xffff_fff0), Err(ReplayError::Duplicate));
        assert_eq!(w.check(0xffff_fff1), Ok(()));
    }
}
