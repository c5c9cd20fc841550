//! ExpressRoute failover of one connection inside the daemon: floating tunnel routes plus a
//! BFD-like path monitor (RFC 5880 section 6.8.4 detection time) from the `failover` crate, and
//! the per-prefix "which path carries it, since when" view for `hybridgw status`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use failover::Ipv4Prefix;
use failover::monitor::PathState;
use failover::probe::{IcmpProber, ProbeConfig};
use failover::routes::{RouteConfig, RouteManager, StatusHandle};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::{self, Connection};
use crate::control::{FailoverStatus, PrefixPathStatus};

/// The monitor's verdict as last seen.
#[derive(Debug, Clone, Copy)]
struct PathView {
    state: PathState,
    since: Instant,
    transitions: u64,
}

/// A running failover task for one connection.
#[derive(Debug)]
pub struct PathFailover {
    cfg: config::Failover,
    view: Arc<Mutex<PathView>>,
    status: StatusHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The remote prefixes of a connection as IPv4 prefixes (config validation refused IPv6 ones).
fn prefixes(c: &Connection) -> Vec<Ipv4Prefix> {
    c.mode
        .routes()
        .iter()
        .filter_map(|r| match r.prefix.addr {
            IpAddr::V4(a) => Ipv4Prefix::new(a, r.prefix.len).ok(),
            IpAddr::V6(_) => None,
        })
        .collect()
}

impl PathFailover {
    /// Installs the floating backup routes and starts the path monitor. The TUN and the primary
    /// interface must exist. Errors name the connection and what failed.
    pub async fn start(c: &Connection, f: &config::Failover) -> Result<Self, String> {
        let name = c.name.clone();
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| format!("failover of {name}: netlink: {e}"))?;
        tokio::spawn(conn);
        let mut rc = RouteConfig::new(prefixes(c), &c.tun_name, &f.primary_interface);
        rc.backup_metric = f.backup_metric;
        rc.override_metric = f.override_metric;
        if let Err(e) = failover::routes::ignore_routes_with_linkdown(&f.primary_interface) {
            warn!(conn = %name, "failover: {e} (routes through a link without carrier stay preferred)");
        }
        let mut rm = RouteManager::new(handle, rc)
            .await
            .map_err(|e| format!("failover of {name}: {e}"))?;
        rm.install_backup()
            .await
            .map_err(|e| format!("failover of {name}: {e}"))?;
        let prober = IcmpProber::new(&ProbeConfig {
            interface: Some(f.primary_interface.clone()),
            source: f.probe_source,
            target: f.probe_target,
        })
        .map_err(|e| format!("failover of {name}: probe socket: {e}"))?;
        let status = rm.status_handle();
        if let Err(e) = rm.refresh(SystemTime::now()).await {
            warn!(conn = %name, "failover: reading routes back: {e}");
        }
        let view = Arc::new(Mutex::new(PathView {
            state: PathState::Unknown,
            since: Instant::now(),
            transitions: 0,
        }));
        let (stop_tx, stop_rx) = oneshot::channel();
        let mon = f.monitor();
        let v = view.clone();
        info!(
            conn = %name,
            primary = %f.primary_interface,
            target = %f.probe_target,
            interval_ms = f.interval_ms,
            down_after = f.down_after,
            backup_metric = f.backup_metric,
            "failover: floating tunnel routes installed, path monitor started"
        );
        let task = tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let events = async {
                while let Some(ev) = rx.recv().await {
                    let ev: failover::driver::PathEvent = ev;
                    let mut g = v.lock().unwrap_or_else(|e| e.into_inner());
                    if g.state != PathState::Unknown || ev.change.to != PathState::Up {
                        g.transitions += 1;
                    }
                    g.state = ev.change.to;
                    g.since = ev.change.at;
                    drop(g);
                    info!(conn = %name, from = %ev.change.from, to = %ev.change.to, "failover: primary path {}", ev.change.to);
                }
            };
            tokio::select! {
                r = failover::driver::run_failover(mon, prober, Some(&mut rm), tx) => {
                    if let Err(e) = r {
                        warn!(conn = %name, "failover monitor stopped: {e}");
                    }
                }
                _ = events => {}
                _ = stop_rx => {}
            }
            if let Err(e) = rm.remove_all().await {
                warn!(conn = %name, "failover: removing the tunnel routes: {e}");
            } else {
                info!(conn = %name, "failover: tunnel routes removed");
            }
        });
        Ok(PathFailover {
            cfg: f.clone(),
            view,
            status,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// Stops the monitor and removes the routes it installed (bounded wait).
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
    }

    /// The status block of the connection.
    pub fn status(&self, now: Instant) -> FailoverStatus {
        let v = *self.view.lock().unwrap_or_else(|e| e.into_inner());
        let wall = SystemTime::now();
        FailoverStatus {
            primary_interface: self.cfg.primary_interface.clone(),
            primary_path: v.state.to_string(),
            primary_path_seconds: now.saturating_duration_since(v.since).as_secs(),
            transitions: v.transitions,
            backup_metric: self.cfg.backup_metric,
            override_metric: self.cfg.override_metric,
            prefixes: self
                .status
                .snapshot()
                .iter()
                .map(|p| PrefixPathStatus {
                    prefix: p.prefix.to_string(),
                    path: p.carrier.to_string(),
                    since_seconds: wall.duration_since(p.since).unwrap_or_default().as_secs(),
                    since_unix: p
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs(),
                    overridden: p.overridden,
                })
                .collect(),
        }
    }
}
