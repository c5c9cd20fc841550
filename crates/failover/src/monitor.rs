//! Path monitor for the primary (ExpressRoute) path, sans-IO: consecutive probe misses declare the
//! path down, consecutive successes plus a hold-down declare it up again, the way BFD (RFC 5880
//! section 6.8.4, detection time) and RRAS persistent probes do. No sockets and no clock reads:
//! the caller passes `now` and drives probes (see [`crate::driver`]).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Timers and thresholds of a [`PathMonitor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MonitorConfig {
    /// Time between the starts of two probes (BFD's transmit interval), e.g. 300 ms.
    pub interval: Duration,
    /// How long a probe may wait for its reply before it counts as a miss (at most `interval`).
    pub timeout: Duration,
    /// Consecutive misses that declare the path down (BFD's detect multiplier), e.g. 3.
    pub down_after: u32,
    /// Consecutive successes, after a down, that start the hold-down.
    pub up_after: u32,
    /// How long the path must then keep answering (every probe) before it is declared up again;
    /// any miss in that time restarts the recovery. This is what prevents flapping.
    pub hold_down: Duration,
}

impl Default for MonitorConfig {
    /// 300 ms x 3 like Azure's default BFD on private peering; 3 successes and a 10 s hold-down.
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(300),
            down_after: 3,
            up_after: 3,
            hold_down: Duration::from_secs(10),
        }
    }
}

/// A [`MonitorConfig`] that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `interval` must be at least 10 ms.
    #[error("probe interval must be at least 10 ms")]
    IntervalTooShort,
    /// `timeout` must be non-zero and no longer than `interval` (one probe outstanding at a time).
    #[error("probe timeout must be greater than zero and at most the interval")]
    BadTimeout,
    /// Thresholds must be 1-255.
    #[error("down_after and up_after must be 1-255")]
    BadThreshold,
    /// The hold-down is bounded to one hour.
    #[error("hold-down must be at most 3600 s")]
    HoldDownTooLong,
}

impl MonitorConfig {
    /// Checks the values (a config file is hostile).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(10) {
            return Err(ConfigError::IntervalTooShort);
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err(ConfigError::BadTimeout);
        }
        if !(1..=255).contains(&self.down_after) || !(1..=255).contains(&self.up_after) {
            return Err(ConfigError::BadThreshold);
        }
        if self.hold_down > Duration::from_secs(3600) {
            return Err(ConfigError::HoldDownTooLong);
        }
        Ok(())
    }

    /// The longest time from the first lost probe to the down decision:
    /// `(down_after - 1) * interval + timeout`. A failure can start up to one interval before that
    /// probe, so traffic is lost for at most `down_after * interval + timeout` before failover.
    pub fn detection_time(&self) -> Duration {
        self.interval * self.down_after.saturating_sub(1) + self.timeout
    }
}

/// What the monitor believes about the primary path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PathState {
    /// Not yet decided (start-up): routing is left as the kernel has it.
    Unknown,
    /// The primary path answers.
    Up,
    /// The primary path lost `down_after` probes in a row (and has not recovered through the
    /// hold-down): traffic must use the backup.
    Down,
}

impl fmt::Display for PathState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathState::Unknown => "unknown",
            PathState::Up => "up",
            PathState::Down => "down",
        })
    }
}

/// A state change, stamped with the `now` that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateChange {
    /// When it was decided.
    pub at: Instant,
    /// The state before.
    pub from: PathState,
    /// The state after.
    pub to: PathState,
    /// Consecutive misses (to `Down`) or successes (to `Up`) at the decision.
    pub streak: u32,
}

/// The decision logic of the path monitor. Drive it with [`PathMonitor::poll_timeout`],
/// [`PathMonitor::handle_timeout`], [`PathMonitor::poll_probe`] and
/// [`PathMonitor::handle_probe_result`]; read decisions with [`PathMonitor::poll_event`].
#[derive(Debug, Clone)]
pub struct PathMonitor {
    cfg: MonitorConfig,
    state: PathState,
    since: Instant,
    misses: u32,
    successes: u32,
    /// While down: when the hold-down that follows `up_after` successes ends.
    recovering_until: Option<Instant>,
    next_probe: Instant,
    outstanding: bool,
    events: VecDeque<StateChange>,
    probes: u64,
    lost: u64,
}

impl PathMonitor {
    /// A monitor in state [`PathState::Unknown`] whose first probe is due at `now`.
    pub fn new(cfg: MonitorConfig, now: Instant) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(PathMonitor {
            cfg,
            state: PathState::Unknown,
            since: now,
            misses: 0,
            successes: 0,
            recovering_until: None,
            next_probe: now,
            outstanding: false,
            events: VecDeque::new(),
            probes: 0,
            lost: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MonitorConfig {
        &self.cfg
    }

    /// The current state.
    pub fn state(&self) -> PathState {
        self.state
    }

    /// Since when the current state holds.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// While down: the end of a running hold-down.
    pub fn recovering_until(&self) -> Option<Instant> {
        self.recovering_until
    }

    /// Probes reported so far, and how many of them were misses.
    pub fn counters(&self) -> (u64, u64) {
        (self.probes, self.lost)
    }

    /// The next instant at which [`PathMonitor::handle_timeout`] / [`PathMonitor::poll_probe`]
    /// have something to do: the next probe, or the end of the hold-down.
    pub fn poll_timeout(&self) -> Instant {
        match self.recovering_until {
            Some(t) if t < self.next_probe => t,
            _ => self.next_probe,
        }
    }

    /// Processes timers: ends a hold-down that ran out.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.recovering_until
            && now >= t
            && self.state == PathState::Down
        {
            self.recovering_until = None;
            let streak = self.successes;
            self.set_state(now, PathState::Up, streak);
        }
    }

    /// Whether a probe must be sent now; if so it is marked outstanding and the next one is
    /// scheduled one interval later. The caller sends it, waits up to `config().timeout`, and
    /// reports with [`PathMonitor::handle_probe_result`].
    pub fn poll_probe(&mut self, now: Instant) -> bool {
        if self.outstanding || now < self.next_probe {
            return false;
        }
        self.outstanding = true;
        // Keep the cadence, but never try to catch up on probes missed while the caller was late.
        self.next_probe += self.cfg.interval;
        if self.next_probe <= now {
            self.next_probe = now + self.cfg.interval;
        }
        true
    }

    /// Reports the outcome of the outstanding probe: `ok` when its reply came within the
    /// timeout, `false` for a miss (timeout, or the send itself failed).
    pub fn handle_probe_result(&mut self, now: Instant, ok: bool) {
        self.outstanding = false;
        self.probes += 1;
        // A hold-down that ended while the caller was probing is honoured before this result.
        self.handle_timeout(now);
        if ok {
            self.misses = 0;
            self.successes = self.successes.saturating_add(1);
            match self.state {
                PathState::Unknown if self.successes >= self.cfg.up_after => {
                    let s = self.successes;
                    self.set_state(now, PathState::Up, s);
                }
                PathState::Down
                    if self.successes >= self.cfg.up_after && self.recovering_until.is_none() =>
                {
                    if self.cfg.hold_down.is_zero() {
                        let s = self.successes;
                        self.set_state(now, PathState::Up, s);
                    } else {
                        self.recovering_until = Some(now + self.cfg.hold_down);
                    }
                }
                _ => {}
            }
        } else {
            self.lost += 1;
            self.successes = 0;
            self.misses = self.misses.saturating_add(1);
            // Any miss restarts the recovery: no flapping back onto a path that still drops.
            self.recovering_until = None;
            if self.state != PathState::Down && self.misses >= self.cfg.down_after {
                let m = self.misses;
                self.set_state(now, PathState::Down, m);
            }
        }
    }

    /// The next state change, oldest first.
    pub fn poll_event(&mut self) -> Option<StateChange> {
        self.events.pop_front()
    }

    fn set_state(&mut self, now: Instant, to: PathState, streak: u32) {
        if to == self.state {
            return;
        }
        self.events.push_back(StateChange {
            at: now,
            from: self.state,
            to,
            streak,
        });
        self.state = to;
        self.since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(hold_ms: u64) -> MonitorConfig {
        MonitorConfig {
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(100),
            down_after: 3,
            up_after: 3,
            hold_down: Duration::from_millis(hold_ms),
        }
    }

    /// Runs the monitor on a simulated clock from 0 to `end_ms`; `path_ok(ms)` says whether a probe
    /// sent at that time is answered (replies take 5 ms, misses are reported at the timeout).
    fn simulate(
        c: MonitorConfig,
        end_ms: u64,
        path_ok: impl Fn(u64) -> bool,
    ) -> Vec<(u64, PathState, PathState)> {
        let t0 = Instant::now();
        let ms = |t: Instant| u64::try_from(t.duration_since(t0).as_millis()).unwrap();
        let mut m = PathMonitor::new(c, t0).unwrap();
        let mut now = t0;
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let next = m.poll_timeout();
            assert!(
                next >= now || m.poll_timeout() <= now,
                "time went backwards"
            );
            now = now.max(next);
            if ms(now) > end_ms {
                break;
            }
            m.handle_timeout(now);
            if m.poll_probe(now) {
                assert!(!m.poll_probe(now), "two probes outstanding");
                let ok = path_ok(ms(now));
                now += if ok {
                    Duration::from_millis(5)
                } else {
                    c.timeout
                };
                m.handle_probe_result(now, ok);
            }
            while let Some(e) = m.poll_event() {
                out.push((ms(e.at), e.from, e.to));
            }
        }
        out
    }

    #[test]
    fn defaults_are_valid_and_bad_configs_are_refused() {
        MonitorConfig::default().validate().unwrap();
        let mut c = cfg(1000);
        c.timeout = Duration::from_millis(301);
        assert_eq!(c.validate(), Err(ConfigError::BadTimeout));
        c.timeout = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::BadTimeout));
        let mut c = cfg(1000);
        c.down_after = 0;
        assert_eq!(c.validate(), Err(ConfigError::BadThreshold));
        let mut c = cfg(1000);
        c.interval = Duration::from_millis(1);
        assert_eq!(c.validate(), Err(ConfigError::IntervalTooShort));
        assert!(PathMonitor::new(c, Instant::now()).is_err());
        assert_eq!(cfg(0).detection_time(), Duration::from_millis(700));
    }

    #[test]
    fn comes_up_after_m_successes_without_hold_down_at_start() {
        let ev = simulate(cfg(5000), 2000, |_| true);
        // probes at 0, 300, 600: the third success (605 ms) decides.
        assert_eq!(ev, vec![(605, PathState::Unknown, PathState::Up)]);
    }

    #[test]
    fn goes_down_after_n_misses_and_up_after_hold_down() {
        // The path dies at 1000 ms and returns at 3000 ms.
        let ev = simulate(cfg(2000), 8000, |t| !(1000..3000).contains(&t));
        // Probes at 1200, 1500, 1800 are lost; the third miss is reported at 1800 + 100.
        // Probes at 3000, 3300, 3600 answer (3605 ms), then 2 s of hold-down: 5605 ms.
        assert_eq!(
            ev,
            vec![
                (605, PathState::Unknown, PathState::Up),
                (1900, PathState::Up, PathState::Down),
                (5605, PathState::Down, PathState::Up),
            ]
        );
        // From the first lost probe (1200 ms) to the decision: exactly the detection time.
        assert_eq!(1900 - 1200, cfg(2000).detection_time().as_millis());
    }

    #[test]
    fn a_miss_during_hold_down_restarts_recovery() {
        // Dead 1000-3000, one lost probe at 4200 (inside the hold-down that started at 3605).
        let ev = simulate(cfg(2000), 12_000, |t| {
            !(1000..3000).contains(&t) && !(4100..4300).contains(&t)
        });
        // After the miss at 4200: successes at 4500, 4800, 5100 (5105) + 2 s = 7105.
        assert_eq!(
            ev,
            vec![
                (605, PathState::Unknown, PathState::Up),
                (1900, PathState::Up, PathState::Down),
                (7105, PathState::Down, PathState::Up),
            ]
        );
    }

    #[test]
    fn an_intermittent_path_never_flaps_back() {
        // Every other probe is lost for 10 s: never N misses in a row once up, never M successes
        // in a row while down: the path stays down once it has gone down, and comes up only
        // after the loss stops.
        let ev = simulate(cfg(1000), 20_000, |t| {
            if (1000..2000).contains(&t) {
                false
            } else if (2000..12_000).contains(&t) {
                (t / 300) % 2 == 0
            } else {
                true
            }
        });
        let downs = ev.iter().filter(|e| e.2 == PathState::Down).count();
        let ups = ev.iter().filter(|e| e.2 == PathState::Up).count();
        assert_eq!(downs, 1, "{ev:?}");
        assert_eq!(ups, 2, "{ev:?}");
        let last_up = ev.last().unwrap().0;
        assert!(last_up >= 12_000 + 600 + 1000, "{ev:?}");
    }

    #[test]
    fn isolated_misses_do_not_take_the_path_down() {
        let ev = simulate(cfg(1000), 10_000, |t| (t / 300) % 4 != 3);
        assert_eq!(ev, vec![(605, PathState::Unknown, PathState::Up)]);
    }

    #[test]
    fn zero_hold_down_comes_up_at_the_mth_success() {
        let ev = simulate(cfg(0), 5000, |t| !(1000..2000).contains(&t));
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert_eq!(ev[2], (2705, PathState::Down, PathState::Up));
    }

    #[test]
    fn a_late_caller_does_not_burst_probes() {
        let t0 = Instant::now();
        let mut m = PathMonitor::new(cfg(0), t0).unwrap();
        assert!(m.poll_probe(t0));
        m.handle_probe_result(t0, true);
        let late = t0 + Duration::from_secs(5);
        assert!(m.poll_probe(late));
        m.handle_probe_result(late, true);
        assert!(!m.poll_probe(late));
        assert_eq!(m.poll_timeout(), late + Duration::from_millis(300));
        assert_eq!(m.counters(), (2, 0));
    }
}
