//! The async (tokio) task that drives a [`PathMonitor`] with an [`IcmpProber`] and applies its
//! decisions to a [`RouteManager`]: the static-routing failover of the RRAS way (persistent probe
//! plus floating routes), with BFD-like detection (RFC 5880 section 6.8.4).

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedSender;

use crate::monitor::{ConfigError, MonitorConfig, PathMonitor, PathState, StateChange};
use crate::probe::{IcmpProber, ProbeOutcome};
use crate::routes::RouteManager;

/// How often the per-prefix status is read back from the kernel when nothing happens.
pub const STATUS_REFRESH: Duration = Duration::from_secs(1);
/// How long to wait before retrying a route change the kernel refused.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A monitor decision, with the wall-clock time for logs and `hybridgw status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathEvent {
    /// The decision (monotonic timestamp, old and new state).
    pub change: StateChange,
    /// The same instant on the wall clock.
    pub wall: SystemTime,
    /// The last probe's outcome before the decision.
    pub last_probe: ProbeOutcome,
}

/// Runs until the future is dropped (or the event receiver is gone): probes every
/// `cfg.interval`, decides with a [`PathMonitor`], and, when `routes` is given, fails over and
/// back through it (a refused route change is logged and retried every [`RETRY_AFTER`]). Every
/// decision is sent on `events`. The [`RouteManager`] stays with the caller: after dropping this
/// future, call [`RouteManager::remove_all`] or keep the routes as they are.
pub async fn run_failover(
    cfg: MonitorConfig,
    mut prober: IcmpProber,
    mut routes: Option<&mut RouteManager>,
    events: UnboundedSender<PathEvent>,
) -> Result<(), ConfigError> {
    let mut monitor = PathMonitor::new(cfg, Instant::now())?;
    let mut applied = PathState::Unknown;
    let mut retry_at: Option<Instant> = None;
    let mut next_refresh = Instant::now();
    let mut last_probe = ProbeOutcome::Timeout;
    loop {
        if events.is_closed() {
            return Ok(());
        }
        let mut deadline = monitor.poll_timeout().min(next_refresh);
        if let Some(r) = retry_at {
            deadline = deadline.min(r);
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        let now = Instant::now();
        monitor.handle_timeout(now);
        if monitor.poll_probe(now) {
            last_probe = prober.probe(cfg.timeout).await;
            if !last_probe.is_ok() {
                tracing::debug!(target = "failover", outcome = ?last_probe, "probe missed");
            }
            monitor.handle_probe_result(Instant::now(), last_probe.is_ok());
        }
        let mut changed = false;
        while let Some(change) = monitor.poll_event() {
            changed = true;
            let age = Instant::now().saturating_duration_since(change.at);
            let wall = SystemTime::now()
                .checked_sub(age)
                .unwrap_or_else(SystemTime::now);
            tracing::info!(
                target = "failover",
                from = %change.from,
                to = %change.to,
                streak = change.streak,
                "primary path state change"
            );
            if events
                .send(PathEvent {
                    change,
                    wall,
                    last_probe,
                })
                .is_err()
            {
                return Ok(());
            }
        }
        let Some(rm) = routes.as_deref_mut() else {
            continue;
        };
        let want = monitor.state();
        let due = retry_at.is_none_or(|r| Instant::now() >= r);
        if want != applied && (changed || due) {
            match rm.apply(want).await {
                Ok(()) => {
                    applied = want;
                    retry_at = None;
                }
                Err(e) => {
                    tracing::warn!(target = "failover", error = %e, "route change refused, will retry");
                    retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
            next_refresh = Instant::now();
        }
        if Instant::now() >= next_refresh {
            if let Err(e) = rm.refresh(SystemTime::now()).await {
                tracing::warn!(target = "failover", error = %e, "reading routes back failed");
            }
            next_refresh = Instant::now() + STATUS_REFRESH;
        }
    }
}
