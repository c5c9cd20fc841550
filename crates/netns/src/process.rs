//! Owned child processes: a [`Proc`] signals and reaps its process by PID when dropped
//! (SIGTERM, a bounded wait, then SIGKILL), so no daemon outlives the test or lab that started it.

use std::process::{Child, ChildStderr, ChildStdout, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result};

/// How long [`Proc`]'s drop waits after SIGTERM before it sends SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// State shared between a [`Proc`] and the namespace that started it (which stops it on its own drop).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) label: String,
    pid: u32,
    /// `None` once the process has been reaped: after that its PID is never signalled again.
    child: Mutex<Option<Child>>,
    status: Mutex<Option<ExitStatus>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, st: ExitStatus) -> ExitStatus {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(st);
        st
    }

    fn exited(&self) -> Option<ExitStatus> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps the process if it has exited (non-blocking).
    pub(crate) fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut g = self.lock();
        let Some(child) = g.as_mut() else {
            return Ok(self.exited());
        };
        match child.try_wait() {
            Ok(Some(st)) => {
                *g = None;
                Ok(Some(self.record(st)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(Error::io(
                format!("waiting for {} (pid {})", self.label, self.pid),
                e,
            )),
        }
    }

    /// Sends `sig` if the process has not been reaped yet (so a recycled PID is never hit).
    pub(crate) fn signal(&self, sig: Signal) -> Result<()> {
        let g = self.lock();
        if g.is_none() {
            return Ok(());
        }
        let pid = i32::try_from(self.pid).map_err(|_| Error::InvalidName {
            name: self.pid.to_string(),
            reason: "pid out of range",
        })?;
        match kill(Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::sys(
                format!("kill({pid}, {sig}) for {}", self.label),
                e,
            )),
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            sleep(Duration::from_millis(5));
        }
    }

    /// `sig`, up to `grace` for it to exit, then SIGKILL and a blocking reap.
    pub(crate) fn stop_with(&self, sig: Signal, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        self.signal(sig)?;
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(st);
        }
        self.signal(Signal::SIGKILL)?;
        // SIGKILL cannot be ignored; the bound only protects against a process stuck in the kernel.
        self.wait_timeout(Duration::from_secs(10))?
            .ok_or_else(|| Error::Timeout {
                after: Duration::from_secs(10),
                what: format!("{} (pid {}) to die after SIGKILL", self.label, self.pid),
            })
    }
}

/// A child process owned by the caller: dropping it stops it (SIGTERM, up to [`DEFAULT_GRACE`],
/// SIGKILL) and reaps it. Start daemons directly (`ip netns exec NS prog args`, which `exec`s the
/// program, so this PID is the daemon's) — never through a shell wrapper.
#[derive(Debug)]
pub struct Proc {
    pub(crate) shared: Arc<Shared>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl Proc {
    pub(crate) fn new(label: String, mut child: Child) -> Proc {
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let pid = child.id();
        Proc {
            shared: Arc::new(Shared {
                label,
                pid,
                child: Mutex::new(Some(child)),
                status: Mutex::new(None),
            }),
            stdout,
            stderr,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// The command line it was started with (for messages).
    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// Whether it is still running (reaps it if it has exited).
    pub fn is_running(&self) -> bool {
        matches!(self.shared.try_wait(), Ok(None))
    }

    /// Its exit status if it has exited (non-blocking).
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        self.shared.try_wait()
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.shared.wait_timeout(timeout)
    }

    /// Sends a signal (a no-op once it has been reaped).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.shared.signal(sig)
    }

    /// Stops it: SIGTERM, up to [`DEFAULT_GRACE`], then SIGKILL; returns the exit status.
    pub fn stop(&self) -> Result<ExitStatus> {
        self.shared.stop_with(Signal::SIGTERM, DEFAULT_GRACE)
    }

    /// Stops it with `sig` first (e.g. SIGINT so a capture tool flushes), waiting up to `grace`.
    pub fn stop_with(&self, sig: Signal, grace: Duration) -> Result<ExitStatus> {
        self.shared.stop_with(sig, grace)
    }

    /// Takes its stdout pipe, if it was started with `Stdio::piped()`.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// Takes its stderr pipe, if it was started with `Stdio::piped()`.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.shared.stop_with(Signal::SIGTERM, DEFAULT_GRACE) {
            eprintln!(
                "netns: stopping {} (pid {}): {e}",
                self.shared.label, self.shared.pid
            );
        }
    }
}
