//! The control socket: a Unix socket (mode 0600, root only) carrying one JSON request and one JSON
//! response per connection, and the status document it returns (operations; SPIs per RFC 4303 §2.1).
//!
//! Field names of [`Status`] are a stable interface, documented in `appliance-config/README.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/hybridgw/control.sock";
/// Largest request accepted on the socket.
pub const MAX_REQUEST: usize = 4096;

/// A request from `hybridgw status|up|down|rekey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    Up {
        name: String,
    },
    Down {
        name: String,
    },
    /// A planned drain of a connection or an active-active group: withdraw its routes, wait
    /// until nothing arrives (or `timeout_seconds`), then DELETE.
    Drain {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_seconds: Option<u64>,
    },
    /// Every Child SA of the connection, or (`child`: its inbound SPI in hex) one of them.
    Rekey {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        child: Option<String>,
    },
    /// Stateful HA: keepalived's notify (`master`, `backup`, `fault`) or an operator.
    Ha {
        role: String,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Response {
            ok: true,
            message: Some(message.into()),
            status: None,
        }
    }
    pub fn err(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            message: Some(message.into()),
            status: None,
        }
    }
}

/// The whole daemon state, as `hybridgw status --json` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub config: String,
    pub uptime_seconds: u64,
    pub connections: Vec<ConnectionStatus>,
    /// IKE message counters of the whole daemon (received, sent, retransmits, drops by reason).
    #[serde(default)]
    pub ike: BTreeMap<String, u64>,
    /// Data-plane I/O counters of the whole daemon: system calls against packets on each side
    /// (how much offloads and batching save), and the packet steering (`cpu_local` 1 while the
    /// workers are pinned and packets go to the current CPU's worker, `steering_changes`).
    #[serde(default)]
    pub dataplane: BTreeMap<String, u64>,
    /// Stateful HA (`[ha]`): this appliance's role, the replication channel and the SAs held
    /// warm; absent without `[ha]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaStatus>,
}

/// `status` of stateful HA.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HaStatus {
    /// `backup` (the partner runs the tunnels; this one holds their state warm), `master` or
    /// `fault`.
    pub role: String,
    /// Seconds in this role.
    pub role_seconds: u64,
    /// The partner's replication address.
    pub peer: String,
    /// As backup: the replica is complete (a snapshot arrived since the last gap).
    pub in_sync: bool,
    /// As backup: milliseconds since the last replication message (the replication lag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// As backup: IKE SAs and Child SAs held as warm standby.
    pub standby_ike_sas: usize,
    pub standby_child_sas: usize,
    /// As backup: replication messages accepted, refused by reason (from anyone but the
    /// partner, tampered, replayed, out of order, ...) and accepted but not applied.
    pub accepted: u64,
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    pub not_applied: u64,
    /// IKE datagrams that reached this appliance while it was not master (dropped).
    pub ike_ignored: u64,
    /// As master: what was sent (`datagrams`, `snapshots`, `ike_upserts`, `child_upserts`,
    /// `removals`, `marks`, `seal_errors`).
    #[serde(default)]
    pub sent: BTreeMap<String, u64>,
    /// The last takeover, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_takeover: Option<TakeoverStatus>,
}

/// The last time this appliance became master.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TakeoverStatus {
    pub seconds_ago: u64,
    /// The replica was in sync.
    pub in_sync: bool,
    /// Replication lag at takeover, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// IKE SAs continued (the peer sees the same SAs).
    pub ike_continued: usize,
    /// Child SAs installed from the replica.
    pub child_installed: usize,
    /// Connections that started a fresh IKE SA (INITIAL_CONTACT) instead, with the reason.
    #[serde(default)]
    pub fresh: Vec<String>,
}

/// One configured connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectionStatus {
    pub name: String,
    /// `down`, `connecting`, `established` (every selector pair has a Child SA), `partial`
    /// (some pair has none: see `missing_pairs`), `retrying` or `stopped` (after `hybridgw down`).
    pub state: String,
    pub local_address: String,
    pub remote_address: String,
    pub local_id: String,
    pub remote_id: String,
    pub behaviour: String,
    /// `route-based` or `policy-based`.
    pub mode: String,
    pub tun: String,
    pub routes: Vec<RouteStatus>,
    /// The IKE SA new Child SAs go to (the newest that is not a duplicate).
    pub ike_sa: Option<IkeSaStatus>,
    /// Every IKE SA of the connection (more than one while a duplicate or replaced one is being
    /// deleted).
    #[serde(default)]
    pub ike_sas: Vec<IkeSaStatus>,
    pub child_sas: Vec<ChildSaStatus>,
    /// Configured selector pairs (`LOCAL === REMOTE`) that no Child SA carries now: their
    /// traffic is dropped (counted as `no_sa`) until one does.
    #[serde(default)]
    pub missing_pairs: Vec<String>,
    pub attempts: u64,
    pub last_error: Option<String>,
    pub next_retry_seconds: Option<u64>,
    /// ExpressRoute failover of this connection's prefixes (absent without `[connection.failover]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverStatus>,
    /// Active-active membership (absent for a single-address connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_active: Option<ActiveActiveStatus>,
    /// BGP over this tunnel (absent without `[connection.bgp]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpStatus>,
    /// A planned drain: `draining (N ms, inbound quiet for M ms)`, `drained after N ms` or
    /// `drained after N ms (timed out, traffic still arriving)`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
}

/// BGP over one tunnel, as hybridgw sees it (BIRD runs the session).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BgpStatus {
    /// Azure's BGP address for this tunnel.
    pub peer: Option<String>,
    /// The BIRD protocol of the session (`failover::bird::protocol_name_for` of the tunnel).
    pub protocol: String,
    /// True while the host route to the peer is installed through this tunnel and no drain
    /// withdrew it: the routes BGP learns over this tunnel are usable.
    pub routes_in_use: bool,
    /// The BIRD protocols a drain of this tunnel disabled (empty when none).
    #[serde(default)]
    pub disabled: Vec<String>,
}

/// One tunnel of an active-active pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActiveActiveStatus {
    /// The configured connection name (shared by both members).
    pub group: String,
    /// 0 or 1: which of the two remote addresses.
    pub member: usize,
    /// "ecmp" or "backup".
    pub multipath: String,
    /// True while the pair's routes go over this tunnel.
    pub carrying: bool,
}

/// The path monitor and which path carries each prefix.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverStatus {
    /// The ExpressRoute (primary) interface.
    pub primary_interface: String,
    /// `unknown` (start-up), `up` or `down`: the path monitor's verdict on the primary path.
    pub primary_path: String,
    /// Seconds since that verdict.
    pub primary_path_seconds: u64,
    /// Monitor decisions since start (failovers plus failbacks).
    pub transitions: u64,
    /// Metric of the floating tunnel routes and of the override routes.
    pub backup_metric: u32,
    pub override_metric: u32,
    pub prefixes: Vec<PrefixPathStatus>,
}

/// Which path the kernel uses for one remote prefix, read back from the routing table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PrefixPathStatus {
    pub prefix: String,
    /// `expressroute`, `vpn`, `other` or `unreachable`.
    pub path: String,
    /// Seconds since this path carries it.
    pub since_seconds: u64,
    /// The same instant as a Unix timestamp (seconds).
    pub since_unix: u64,
    /// True while the override (failover) route is installed.
    pub overridden: bool,
}

/// A route the connection installs into its TUN.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RouteStatus {
    pub prefix: String,
    pub metric: u32,
    pub installed: bool,
}

/// An IKE SA.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IkeSaStatus {
    /// `established`, `duplicate` (being replaced: deleted once its successor carries its
    /// selectors) or `deleting`.
    pub state: String,
    pub initiator: bool,
    /// Initiator and responder SPIs, 16 hex digits.
    pub spi_i: String,
    pub spi_r: String,
    pub local: String,
    pub remote: String,
    /// strongSwan-style algorithm names, e.g. `aes256`, `sha256`, `prfsha256`, `modp2048`.
    pub encryption: String,
    pub integrity: String,
    pub prf: String,
    pub dh_group: String,
    pub established_seconds: u64,
}

/// One Child SA pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChildSaStatus {
    /// `installed` (carries its selectors outbound), `standby` (inbound only: takes over when
    /// the SA carrying the same selectors goes), `rekeyed` (replaced, waiting for its DELETE) or
    /// `deleting`.
    pub state: String,
    /// SPIs of the IKE SA it belongs to (`SPIi_i SPIr_r`).
    #[serde(default)]
    pub ike_sa: String,
    /// Inbound (ours) and outbound (the peer's) SPIs, 8 hex digits.
    pub spi_in: String,
    pub spi_out: String,
    pub encryption: String,
    pub integrity: String,
    pub pfs: String,
    pub encap: bool,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub established_seconds: u64,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
    /// Dropped packets by reason (e.g. `replay`, `auth_failed`, `no_sa`).
    pub drops: BTreeMap<String, u64>,
}

/// A request waiting for the daemon loop, with where to send the answer.
#[derive(Debug)]
pub struct Pending {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// Bind the control socket: parent directory created 0700, socket mode 0600, stale socket removed.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        // A live daemon answers; a stale file does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another hybridgw daemon is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Create the socket under a restrictive umask so it is never briefly world-accessible.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Accept clients forever, forwarding each request to `to_daemon`. Clients other than root (or this
/// daemon's own user) are refused.
pub async fn serve(listener: UnixListener, to_daemon: mpsc::Sender<Pending>) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let tx = to_daemon.clone();
        tokio::spawn(async move {
            let allowed = stream
                .peer_cred()
                .map(|c| c.uid() == 0 || c.uid() == me)
                .unwrap_or(false);
            let _ = handle_client(stream, tx, allowed).await;
        });
    }
}

async fn handle_client(
    stream: UnixStream,
    tx: mpsc::Sender<Pending>,
    allowed: bool,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r).take(MAX_REQUEST as u64);
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let resp = if !allowed {
        Response::err("permission denied: the control socket is for root only")
    } else {
        match read {
            Err(_) => Response::err("timeout reading the request"),
            Ok(Err(e)) => Response::err(format!("cannot read the request: {e}")),
            Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
                Err(e) => Response::err(format!("invalid request: {e}")),
                Ok(request) => {
                    let (reply, rx) = oneshot::channel();
                    if tx.send(Pending { request, reply }).await.is_err() {
                        Response::err("the daemon is shutting down")
                    } else {
                        match tokio::time::timeout(Duration::from_secs(30), rx).await {
                            Ok(Ok(r)) => r,
                            _ => Response::err("the daemon did not answer"),
                        }
                    }
                }
            },
        }
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

use tokio::io::AsyncReadExt as _;

/// Send one request and wait (bounded) for the answer.
pub async fn call(path: &Path, request: &Request) -> Result<Response, String> {
    let fut = async {
        let mut s = UnixStream::connect(path)
            .await
            .map_err(|e| format!("cannot connect to the control socket {}: {e} (is `hybridgw run` running? are you root?)", path.display()))?;
        let mut req = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        req.push(b'\n');
        s.write_all(&req).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        serde_json::from_slice::<Response>(&buf)
            .map_err(|e| format!("invalid answer from the daemon: {e}"))
    };
    tokio::time::timeout(Duration::from_secs(40), fut)
        .await
        .map_err(|_| "timeout waiting for the daemon".to_string())?
}

/// Blocking wrapper for the CLI.
pub fn call_blocking(path: &Path, request: &Request) -> Result<Response, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(call(path, request))
}

fn age(s: u64) -> String {
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Human-readable status, in the spirit of `swanctl --list-sas`.
pub fn render(st: &Status) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "hybridgw {} (pid {}), config {}, up {}",
        st.version,
        st.pid,
        st.config,
        age(st.uptime_seconds)
    );
    if let Some(h) = &st.ha {
        let refused: u64 = h.refused.values().sum();
        let line = match h.role.as_str() {
            "master" => format!(
                "HA: master for {}, replicating to {} ({} datagrams, {} snapshots)",
                age(h.role_seconds),
                h.peer,
                h.sent.get("datagrams").copied().unwrap_or(0),
                h.sent.get("snapshots").copied().unwrap_or(0)
            ),
            role => format!(
                "HA: {role} for {}, partner {}: {} IKE SA(s) and {} Child SA(s) held warm, {}, last replica {}",
                age(h.role_seconds),
                h.peer,
                h.standby_ike_sas,
                h.standby_child_sas,
                if h.in_sync {
                    "in sync"
                } else {
                    "NOT in sync (a takeover starts fresh IKE SAs)"
                },
                h.lag_ms
                    .map_or_else(|| "never".to_string(), |l| format!("{l} ms ago"))
            ),
        };
        let _ = writeln!(o, "{line}");
        if refused > 0 {
            let _ = writeln!(
                o,
                "  replication refused: {}",
                h.refused
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(t) = &h.last_takeover {
            let _ = writeln!(
                o,
                "  last takeover {} ago: {} IKE SA(s), {} Child SA(s) continued{}",
                age(t.seconds_ago),
                t.ike_continued,
                t.child_installed,
                if t.fresh.is_empty() {
                    String::new()
                } else {
                    format!("; fresh: {}", t.fresh.join("; "))
                }
            );
        }
    }
    if !st.dataplane.is_empty() {
        let g = |k: &str| st.dataplane.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "Data plane: {} packets in {} TUN reads, {} datagrams in {} UDP receives; steering {} ({} changes)",
            g("tun_packets"),
            g("tun_reads"),
            g("udp_datagrams_received"),
            g("udp_receives"),
            if g("cpu_local") == 1 {
                "CPU-local"
            } else {
                "hash"
            },
            g("steering_changes"),
        );
    }
    if !st.ike.is_empty() {
        let nz: Vec<String> = st
            .ike
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            o,
            "IKE messages: {}",
            if nz.is_empty() {
                "none yet".to_string()
            } else {
                nz.join(", ")
            }
        );
    }
    for c in &st.connections {
        let _ = writeln!(
            o,
            "{}: {}, {} {}[{}] ... {}[{}], {} via {}",
            c.name,
            c.state.to_uppercase(),
            c.mode,
            c.local_address,
            c.local_id,
            c.remote_address,
            c.remote_id,
            c.behaviour,
            c.tun
        );
        let ikes: Vec<&IkeSaStatus> = if c.ike_sas.is_empty() {
            c.ike_sa.iter().collect()
        } else {
            c.ike_sas.iter().collect()
        };
        for i in ikes {
            let _ = writeln!(
                o,
                "  IKE SA {}: {} {}, spi {}_i {}_r, established {} ago",
                i.state,
                if i.initiator {
                    "initiator"
                } else {
                    "responder"
                },
                [&i.encryption, &i.integrity, &i.prf, &i.dh_group]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("/"),
                i.spi_i,
                i.spi_r,
                age(i.established_seconds)
            );
        }
        for m in &c.missing_pairs {
            let _ = writeln!(
                o,
                "  WARNING: selector pair {m} has no Child SA: its traffic is dropped"
            );
        }
        for ch in &c.child_sas {
            let alg = [&ch.encryption, &ch.integrity, &ch.pfs]
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("/");
            let _ = writeln!(
                o,
                "  Child SA {}: ESP{} spi {}_i {}_o, {}, established {} ago",
                ch.state,
                if ch.encap { " in UDP" } else { "" },
                ch.spi_in,
                ch.spi_out,
                alg,
                age(ch.established_seconds)
            );
            let _ = writeln!(
                o,
                "    in  {} bytes, {} packets",
                ch.bytes_in, ch.packets_in
            );
            let _ = writeln!(
                o,
                "    out {} bytes, {} packets",
                ch.bytes_out, ch.packets_out
            );
            let drops: Vec<String> = ch
                .drops
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            if !drops.is_empty() {
                let _ = writeln!(o, "    drops: {}", drops.join(", "));
            }
            let _ = writeln!(
                o,
                "    {} === {}",
                ch.local_ts.join(" "),
                ch.remote_ts.join(" ")
            );
        }
        for r in &c.routes {
            let _ = writeln!(
                o,
                "  route {} metric {} dev {} {}",
                r.prefix,
                r.metric,
                c.tun,
                if r.installed {
                    "installed"
                } else {
                    "(not installed)"
                }
            );
        }
        if let Some(a) = &c.active_active {
            let _ = writeln!(
                o,
                "  active-active `{}` member {} ({}): {}",
                a.group,
                a.member + 1,
                a.multipath,
                if a.carrying {
                    "carrying traffic"
                } else {
                    "standing by"
                }
            );
        }
        if let Some(b) = &c.bgp {
            let _ = writeln!(
                o,
                "  bgp: peer {} (BIRD protocol {}): {}{}",
                b.peer.as_deref().unwrap_or("-"),
                b.protocol,
                if b.routes_in_use {
                    "routes in use"
                } else {
                    "routes NOT in use (no host route to the peer through this tunnel)"
                },
                if b.disabled.is_empty() {
                    String::new()
                } else {
                    format!("; disabled by drain: {}", b.disabled.join(", "))
                }
            );
        }
        if let Some(d) = &c.drain {
            let _ = writeln!(o, "  drain: {d}");
        }
        if let Some(f) = &c.failover {
            let _ = writeln!(
                o,
                "  failover: primary path ({}) {} for {}, {} transitions; tunnel routes metric {} (override {})",
                f.primary_interface,
                f.primary_path,
                age(f.primary_path_seconds),
                f.transitions,
                f.backup_metric,
                f.override_metric
            );
            for p in &f.prefixes {
                let _ = writeln!(
                    o,
                    "    {} via {} for {}{}",
                    p.prefix,
                    p.path,
                    age(p.since_seconds),
                    if p.overridden {
                        " (failover override)"
                    } else {
                        ""
                    }
                );
            }
        }
        if let Some(e) = &c.last_error {
            let _ = writeln!(o, "  last error: {e}");
        }
        if let Some(n) = c.next_retry_seconds {
            let _ = writeln!(o, "  next attempt in {n} s (attempt {})", c.attempts + 1);
        }
    }
    o
}

/// The socket path to use: the `--socket` flag or the default.
pub fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}
