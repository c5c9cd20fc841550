//! Injectable randomness for nonces, IVs, SPIs and private key exchange values
//! (RFC 7296 §2.10 requires nonces and IVs to be unpredictable).
//!
//! The state machines take `&mut dyn Rng` so tests can run deterministically with [`TestRng`].

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use core::fmt;

/// A source of random octets.
pub trait Rng {
    /// Fills `buf` completely with random octets.
    fn fill(&mut self, buf: &mut [u8]);
}

impl<R: Rng + ?Sized> Rng for &mut R {
    fn fill(&mut self, buf: &mut [u8]) {
        (**self).fill(buf);
    }
}

/// The operating system's CSPRNG through aws-lc-rs.
#[derive(Clone, Default)]
pub struct SystemRng(SystemRandom);

impl SystemRng {
    /// A new handle to the system CSPRNG.
    pub fn new() -> Self {
        Self(SystemRandom::new())
    }
}

impl fmt::Debug for SystemRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SystemRng")
    }
}

impl Rng for SystemRng {
    /// # Panics
    /// If the operating system cannot deliver random octets: continuing without
    /// randomness would silently destroy every security property, so this is fatal.
    fn fill(&mut self, buf: &mut [u8]) {
        self.0
            .fill(buf)
            .expect("the system random number generator failed");
    }
}

/// A deterministic generator for tests only: SHA-256(seed || counter) blocks.
/// Never use it outside tests: its output is predictable from the seed.
#[derive(Clone)]
pub struct TestRng {
    seed: [u8; 8],
    counter: u64,
    buf: [u8; 32],
    pos: usize,
}

impl TestRng {
    /// A generator whose whole output stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed: seed.to_be_bytes(),
            counter: 0,
            buf: [0; 32],
            pos: 32,
        }
    }
}

impl fmt::Debug for TestRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestRng")
            .field("counter", &self.counter)
            .finish()
    }
}

impl Rng for TestRng {
    fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            if self.pos == self.buf.len() {
                let mut ctx = digest::Context::new(&digest::SHA256);
                ctx.update(&self.seed);
                ctx.update(&self.counter.to_be_bytes());
                self.buf.copy_from_slice(ctx.finish().as_ref());
                self.counter = self.counter.wrapping_add(1);
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
    }
}
