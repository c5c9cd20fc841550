//! `hybridgw run`: the tokio control loop. It owns the UDP 500 socket, drives the sans-IO IKEv2
//! endpoint (RFC 7296), installs established Child SAs into the data plane (RFC 4303 / RFC 3948 via
//! `crates/dataplane`), routes the remote prefixes into each connection's TUN, answers the control
//! socket, retries forever with backoff, and shuts down cleanly on SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{
    Dataplane, DataplaneConfig, DataplaneEvent, Direction, TunConfig, TunnelConfig, TunnelId,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::{self, Config, Connection, DpdAction, Mode};
use crate::control::{
    self, ActiveActiveStatus, ChildSaStatus, ConnectionStatus, IkeSaStatus, Pending, Request,
    Response, RouteStatus, Status,
};
use crate::engine::{self, Engine, EngineEvent};
use crate::logging::LogFormat;
use crate::routes::Netlink;

/// Connection state as shown by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the peer to initiate (responder only).
    Down,
    /// IKE exchange in progress.
    Connecting,
    /// Child SA installed, routes up.
    Established,
    /// The last attempt failed; waiting for the next one.
    Retrying,
    /// Taken down by `hybridgw down`.
    Stopped,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Down => "down",
            State::Connecting => "connecting",
            State::Established => "established",
            State::Retrying => "retrying",
            State::Stopped => "stopped",
        }
    }
}

/// An installed Child SA as the daemon remembers it (no keys).
#[derive(Debug, Clone)]
pub struct ChildInfo {
    pub inbound_spi: u32,
    pub outbound_spi: u32,
    pub encryption: String,
    pub integrity: String,
    pub pfs: String,
    pub encap: bool,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub since: Instant,
}

/// The IKE SA as the daemon remembers it.
#[derive(Debug, Clone)]
pub struct IkeInfo {
    pub initiator: bool,
    pub spi_i: u64,
    pub spi_r: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub encryption: String,
    pub integrity: String,
    pub prf: String,
    pub dh_group: String,
    pub since: Instant,
}

struct Conn {
    cfg: Connection,
    tunnel: TunnelId,
    ifindex: u32,
    state: State,
    ike: Option<IkeInfo>,
    children: Vec<ChildInfo>,
    routes_installed: bool,
    attempts: u64,
    last_error: Option<String>,
    next_attempt: Option<Instant>,
    backoff: Duration,
    /// ExpressRoute failover (owns the connection's routes when configured).
    failover: Option<crate::pathfail::PathFailover>,
    /// Active-active: the TUN indexes the pair's routes go over now (kept on the first member).
    group_applied: Vec<u32>,
    /// Active-active: this member carries traffic now.
    carrying: bool,
    /// Outbound SAs of Child SAs the peer rekeyed, keyed by the inbound SPI of the SA they
    /// replace: traffic moves to them when the peer deletes the old SA (RFC 7296 §2.8).
    pending_outbound: Vec<(u32, PendingOutbound)>,
}

/// The outbound half of a rekeyed Child SA, waiting for the old SA's deletion.
#[derive(Debug)]
struct PendingOutbound {
    /// Inbound SPI of the new Child SA this outbound SA belongs to.
    new_inbound_spi: u32,
    outbound: esp::OutboundSa,
    route: dataplane::OutboundRoute,
    remote: SocketAddr,
}

impl Conn {
    fn schedule_retry(&mut self, now: Instant) {
        if !self.cfg.behaviour.initiates() || self.state == State::Stopped {
            self.state = State::Down;
            self.next_attempt = None;
            return;
        }
        self.state = State::Retrying;
        self.next_attempt = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(self.cfg.retry.max_seconds));
    }
}

/// How often received ESP is reported to dead peer detection.
const TRAFFIC_CHECK: Duration = Duration::from_secs(1);

/// Entry point of `hybridgw run`.
pub fn main(config_path: &Path, socket: &Path, _format: LogFormat) -> ExitCode {
    let cfg = match config::load_checked(config_path) {
        Ok(c) => c,
        Err(e) => {
            error!("refusing to start: {e}");
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &cfg.warnings {
        warn!("{w}");
    }
    // Everything the IKE engine needs is checked before anything touches the network.
    let engine = match Engine::new(&cfg) {
        Ok(e) => e,
        Err(e) => {
            error!("refusing to start: {e}");
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg, engine, socket.to_path_buf())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("stopped: {e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The local address used by the data plane's UDP 4500 socket: the connections' common local
/// address, or the wildcard when they differ.
fn natt_bind(cfg: &Config) -> SocketAddr {
    let first = cfg.connections.first().map(|c| c.local_address);
    let ip = match first {
        Some(a) if cfg.connections.iter().all(|c| c.local_address == a) => a,
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, cfg.daemon.natt_port)
}

async fn run(cfg: Config, mut engine: Engine, socket: PathBuf) -> Result<(), String> {
    let started = Instant::now();
    // Control socket first: it fails fast when another daemon runs.
    let listener =
        control::bind(&socket).map_err(|e| format!("control socket {}: {e}", socket.display()))?;
    let _socket_guard = RemoveOnDrop(socket.clone());

    // IKE sockets on UDP 500, one per distinct local address.
    let mut ike_socks: Vec<Arc<UdpSocket>> = Vec::new();
    for c in &cfg.connections {
        let a = SocketAddr::new(c.local_address, cfg.daemon.ike_port);
        if ike_socks.iter().any(|s| s.local_addr().ok() == Some(a)) {
            continue;
        }
        let s = UdpSocket::bind(a)
            .await
            .map_err(|e| format!("binding IKE socket {a}: {e}"))?;
        ike_socks.push(Arc::new(s));
    }

    // The data plane: one TUN per connection and the UDP 4500 socket.
    let mut dpc = DataplaneConfig::new(natt_bind(&cfg));
    for c in &cfg.connections {
        let mut tun = TunConfig::new(c.tun_name.clone());
        tun.mtu = c.mtu;
        if let Some(p) = c.tun_address {
            match p.addr {
                IpAddr::V4(a) => tun.ipv4 = Some((a, p.len)),
                IpAddr::V6(a) => tun.ipv6 = Some((a, p.len)),
            }
        }
        let mut t = match c.mode {
            Mode::RouteBased { .. } => TunnelConfig::route_based(c.tun_name.clone()),
            Mode::PolicyBased { .. } => TunnelConfig::policy_based(c.tun_name.clone()),
        };
        t.tun = tun;
        t.mss_clamp = (c.mss_clamp != 0).then_some(c.mss_clamp);
        dpc.tunnels.push(t);
    }
    dpc.workers = cfg.daemon.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get().clamp(1, 4))
            .unwrap_or(1)
    });
    dpc.cpu_affinity = cfg.daemon.cpu_affinity;
    let (dp, mut dprx) = tokio::task::block_in_place(|| Dataplane::start(dpc))
        .map_err(|e| format!("data plane: {e}"))?;
    let dp = Arc::new(dp);
    let nl = Netlink::new().map_err(|e| format!("netlink: {e}"))?;

    let now = Instant::now();
    let mut conns: Vec<Conn> = Vec::new();
    for c in &cfg.connections {
        let tunnel = dp
            .tunnel_id(&c.tun_name)
            .ok_or_else(|| format!("TUN {} missing in the data plane", c.tun_name))?;
        let ifindex = nl.ifindex(&c.tun_name).await?;
        info!(conn = %c.name, tun = %c.tun_name, peer = %c.remote_address, behaviour = ?c.behaviour, "connection loaded");
        conns.push(Conn {
            cfg: c.clone(),
            tunnel,
            ifindex,
            state: State::Down,
            ike: None,
            children: Vec::new(),
            routes_installed: false,
            attempts: 0,
            last_error: None,
            next_attempt: c.behaviour.initiates().then_some(now),
            backoff: Duration::from_secs(c.retry.initial_seconds),
            failover: None,
            group_applied: Vec::new(),
            carrying: false,
            pending_outbound: Vec::new(),
        });
    }
    // Failover after every TUN exists; a failure here refuses to start (nothing half-configured).
    for i in 0..conns.len() {
        let Some(f) = conns[i].cfg.failover.clone() else {
            continue;
        };
        match crate::pathfail::PathFailover::start(&conns[i].cfg, &f).await {
            Ok(pf) => conns[i].failover = Some(pf),
            Err(e) => {
                for c in conns.iter_mut() {
                    if let Some(mut pf) = c.failover.take() {
                        pf.stop().await;
                    }
                }
                return Err(e);
            }
        }
    }
    info!(
        config = %cfg.file.display(),
        connections = conns.len(),
        ike_port = cfg.daemon.ike_port,
        natt = %dp.local_addr(),
        "hybridgw started"
    );

    // IKE datagrams from every UDP 500 socket into one channel.
    let (ike_tx, mut ike_rx) = mpsc::channel::<(SocketAddr, SocketAddr, Vec<u8>)>(256);
    for s in &ike_socks {
        let s = s.clone();
        let tx = ike_tx.clone();
        tokio::spawn(async move {
            let local = s
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let mut buf = vec![0u8; 65536];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        let Some(d) = buf.get(..n) else { continue };
                        if tx.send((local, from, d.to_vec())).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        warn!("IKE socket {local}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Pending>(16);
    tokio::spawn(control::serve(listener, ctl_tx));

    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;

    let ctx = Ctx {
        dp: dp.clone(),
        nl: nl.clone(),
        ike_socks: ike_socks.clone(),
        natt_port: cfg.daemon.natt_port,
    };
    let mut next_traffic_check = Instant::now();
    let mut inbound_seen: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    loop {
        let now = Instant::now();
        // Start due attempts.
        for c in conns.iter_mut() {
            if let Some(t) = c.next_attempt
                && t <= now
                && c.state != State::Stopped
            {
                c.next_attempt = None;
                c.attempts += 1;
                c.state = State::Connecting;
                info!(conn = %c.cfg.name, attempt = c.attempts, peer = %c.cfg.remote_address, "initiating");
                if let Err(e) = engine.initiate(now, &c.cfg.name) {
                    warn!(conn = %c.cfg.name, "cannot initiate: {e}");
                    c.last_error = Some(e);
                    c.schedule_retry(now);
                }
            }
        }
        // Dead peer detection (in the Endpoint) counts received ESP as a sign of life: once a
        // second, report every inbound SA whose packet counter moved.
        if now >= next_traffic_check {
            next_traffic_check = now + TRAFFIC_CHECK;
            for sa in ctx.dp.counters().sas {
                if sa.direction != dataplane::Direction::Inbound {
                    continue;
                }
                let seen = inbound_seen.entry(sa.spi).or_insert(0);
                if sa.packets != *seen {
                    *seen = sa.packets;
                    engine.note_inbound(now, sa.spi);
                }
            }
            inbound_seen.retain(|spi, _| {
                conns
                    .iter()
                    .any(|c| c.children.iter().any(|ch| ch.inbound_spi == *spi))
            });
        }
        flush(&mut engine, &ctx, &mut conns, now).await;

        let mut deadline = engine
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(3600));
        for c in &conns {
            if let Some(t) = c.next_attempt {
                deadline = deadline.min(t);
            }
        }
        if conns.iter().any(|c| !c.children.is_empty()) {
            deadline = deadline.min(next_traffic_check);
        }
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline.max(now)));
        tokio::select! {
            Some((local, remote, data)) = ike_rx.recv() => {
                engine.handle(Instant::now(), local, remote, &data);
            }
            Some(d) = dprx.ike.recv() => {
                engine.handle_natt(Instant::now(), d.local, d.remote, &d.message);
            }
            Some(ev) = dprx.events.recv() => {
                match ev {
                    DataplaneEvent::Lifetime { tunnel, spi, direction, state } => {
                        let conn = conns.iter().find(|c| c.tunnel == tunnel);
                        let name = conn.map(|c| c.cfg.name.clone()).unwrap_or_default();
                        // The IKE side knows a Child SA by its inbound SPI; an outbound SA's
                        // limit rekeys the Child SA it belongs to.
                        let inbound_spi = conn
                            .and_then(|c| c.children.iter().find(|ch| ch.inbound_spi == spi || ch.outbound_spi == spi))
                            .map_or(spi, |ch| ch.inbound_spi);
                        info!(conn = %name, spi = %format!("{spi:08x}"), ?direction, ?state, "Child SA byte/packet limit reached: rekeying");
                        let now = Instant::now();
                        if !engine.rekey_spi(now, inbound_spi) && state == esp::LifetimeState::Expired {
                            // No rekey could start (none possible on this IKE SA): the SA
                            // carries nothing any more, so start over.
                            warn!(conn = %name, "Child SA expired and cannot be rekeyed: reconnecting");
                            engine.close(now, &name);
                        }
                    }
                    DataplaneEvent::PeerAddressChanged { tunnel, spi, from } => {
                        info!(?tunnel, spi = %format!("{spi:08x}"), %from, "peer address changed (NAT rebinding)");
                        let _ = dp.set_peer(tunnel, from);
                    }
                    DataplaneEvent::WorkerFailed { worker, error } => {
                        error!(worker, "data plane worker failed: {error}");
                    }
                    other => info!("data plane: {other:?}"),
                }
            }
            Some(p) = ctl_rx.recv() => {
                let now = Instant::now();
                let resp = control_request(&p.request, &mut engine, &mut conns, &ctx, &cfg, started, now).await;
                let _ = p.reply.send(resp);
            }
            _ = sleep => {
                engine.handle_timeout(Instant::now());
            }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }

    // Clean shutdown: delete the IKE SAs (best effort, one flush), remove routes and SAs.
    let now = Instant::now();
    for c in conns.iter() {
        engine.close(now, &c.cfg.name);
    }
    flush(&mut engine, &ctx, &mut conns, now).await;
    for c in conns.iter_mut() {
        remove_routes(&ctx, c).await;
    }
    sync_groups(&ctx, &mut conns).await;
    for c in conns.iter_mut() {
        if let Some(mut pf) = c.failover.take() {
            pf.stop().await;
        }
        let _ = dp.clear_tunnel(c.tunnel);
    }
    drop(ctx);
    match Arc::try_unwrap(dp) {
        Ok(dp) => tokio::task::block_in_place(|| dp.shutdown()),
        Err(_) => warn!("data plane still referenced at shutdown"),
    }
    info!("hybridgw stopped");
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Shared handles of the loop.
struct Ctx {
    dp: Arc<Dataplane>,
    nl: Netlink,
    ike_socks: Vec<Arc<UdpSocket>>,
    natt_port: u16,
}

/// Send every pending datagram and act on every pending event.
async fn flush(engine: &mut Engine, ctx: &Ctx, conns: &mut [Conn], now: Instant) {
    for _ in 0..10_000 {
        let mut progress = false;
        while let Some(t) = engine.poll_transmit() {
            progress = true;
            send(ctx, &t).await;
        }
        while let Some(ev) = engine.poll_event() {
            progress = true;
            on_event(ev, engine, ctx, conns, now).await;
        }
        if !progress {
            break;
        }
    }
    sync_groups(ctx, conns).await;
}

async fn send(ctx: &Ctx, t: &engine::Datagram) {
    if t.local.port() == ctx.natt_port || t.remote.port() == ctx.natt_port {
        if let Err(e) = ctx.dp.send_ike(t.remote, &t.payload) {
            warn!(remote = %t.remote, "sending IKE on NAT-T port: {e}");
        }
        return;
    }
    let sock = ctx
        .ike_socks
        .iter()
        .find(|s| s.local_addr().ok().map(|a| a.ip()) == Some(t.local.ip()))
        .or_else(|| ctx.ike_socks.first());
    if let Some(s) = sock
        && let Err(e) = s.send_to(&t.payload, t.remote).await
    {
        warn!(remote = %t.remote, "sending IKE: {e}");
    }
}

async fn on_event(
    ev: EngineEvent,
    engine: &mut Engine,
    ctx: &Ctx,
    conns: &mut [Conn],
    now: Instant,
) {
    match ev {
        EngineEvent::IkeUp { conn, info } => {
            if let Some(c) = conns.iter_mut().find(|c| c.cfg.name == conn) {
                info!(
                    conn = %conn,
                    role = if info.initiator { "initiator" } else { "responder" },
                    spi_i = %format!("{:016x}", info.spi_i),
                    spi_r = %format!("{:016x}", info.spi_r),
                    alg = %[info.encryption.as_str(), &info.integrity, &info.prf, &info.dh_group].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("/"),
                    remote = %info.remote,
                    "IKE SA established"
                );
                c.ike = Some(info);
                if c.state != State::Established {
                    c.state = State::Connecting;
                }
            }
        }
        EngineEvent::ChildUp { conn, child, sa } => {
            let Some(c) = conns.iter_mut().find(|c| c.cfg.name == conn) else {
                warn!(conn = %conn, "Child SA for an unknown connection ignored");
                return;
            };
            match engine::install(&ctx.dp, c.tunnel, &c.cfg, &sa) {
                Ok(()) => {
                    info!(
                        conn = %conn,
                        spi_in = %format!("{:08x}", child.inbound_spi),
                        spi_out = %format!("{:08x}", child.outbound_spi),
                        alg = %[child.encryption.as_str(), &child.integrity, &child.pfs].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("/"),
                        encap = child.encap,
                        local_ts = %child.local_ts.join(","),
                        remote_ts = %child.remote_ts.join(","),
                        "Child SA established and installed"
                    );
                    // RFC 3948 §2.3 / §4: keep the NAT mapping alive while ESP rides in UDP.
                    nat_keepalive(ctx, c, child.encap);
                    c.children.push(child);
                    c.state = State::Established;
                    c.last_error = None;
                    c.backoff = Duration::from_secs(c.cfg.retry.initial_seconds);
                    c.next_attempt = None;
                    install_routes(ctx, c).await;
                }
                Err(e) => {
                    error!(conn = %conn, "cannot install the Child SA: {e}");
                    c.last_error = Some(format!("installing the Child SA: {e}"));
                }
            }
        }
        EngineEvent::ChildRekeyed {
            conn,
            old_inbound_spi,
            child,
            sa,
            outbound_now,
        } => {
            let Some(c) = conns.iter_mut().find(|c| c.cfg.name == conn) else {
                return;
            };
            let sas = match engine::child_sas(&c.cfg, &sa) {
                Ok(s) => s,
                Err(e) => {
                    error!(conn = %conn, "cannot install the rekeyed Child SA: {e}");
                    c.last_error = Some(format!("installing the rekeyed Child SA: {e}"));
                    return;
                }
            };
            let engine::ChildSas {
                inbound,
                outbound,
                selectors,
                route,
                remote,
            } = sas;
            // The new inbound SA first: the peer may use it as soon as the exchange completes.
            if let Err(e) = ctx.dp.install_inbound(c.tunnel, inbound, selectors) {
                error!(conn = %conn, "cannot install the rekeyed inbound SA: {e}");
                return;
            }
            let pending = PendingOutbound {
                new_inbound_spi: child.inbound_spi,
                outbound,
                route,
                remote,
            };
            if outbound_now {
                // Our own rekey of this SA won (RFC 7296 §2.8.1): an outbound SA still waiting
                // from the peer's colliding rekey of the same SA belongs to the redundant pair
                // and must never be switched to.
                c.pending_outbound
                    .retain(|(old, _)| *old != old_inbound_spi);
                if let Err(e) = ctx.dp.install_outbound(
                    c.tunnel,
                    pending.route,
                    pending.outbound,
                    pending.remote,
                ) {
                    error!(conn = %conn, "cannot install the rekeyed outbound SA: {e}");
                }
            } else {
                c.pending_outbound.push((old_inbound_spi, pending));
            }
            info!(
                conn = %conn,
                old_spi_in = %format!("{old_inbound_spi:08x}"),
                spi_in = %format!("{:08x}", child.inbound_spi),
                spi_out = %format!("{:08x}", child.outbound_spi),
                outbound = if outbound_now { "now" } else { "after the peer deletes the old SA" },
                "Child SA rekeyed"
            );
            c.children.push(child);
        }
        EngineEvent::IkeRekeyed { conn, spi_i, spi_r } => {
            if let Some(c) = conns.iter_mut().find(|c| c.cfg.name == conn) {
                info!(conn = %conn, spi_i = %format!("{spi_i:016x}"), spi_r = %format!("{spi_r:016x}"), "IKE SA rekeyed");
                if let Some(ike) = c.ike.as_mut() {
                    ike.spi_i = spi_i;
                    ike.spi_r = spi_r;
                    ike.since = now;
                }
            }
        }
        EngineEvent::ChildDown {
            conn,
            ike,
            inbound_spi,
            outbound_spi,
        } => {
            if let Some(c) = conns.iter_mut().find(|c| c.cfg.name == conn) {
                // A new SA deleted before it took over (the loser of a rekey collision) leaves
                // nothing waiting to be switched to.
                c.pending_outbound
                    .retain(|(_, p)| p.new_inbound_spi != inbound_spi);
                // The peer rekeyed this SA and has now deleted it: move outbound traffic to its
                // replacement before the old SAs go (make-before-break).
                if let Some(i) = c
                    .pending_outbound
                    .iter()
                    .position(|(old, _)| *old == inbound_spi)
                {
                    let (_, sas) = c.pending_outbound.swap_remove(i);
                    let spi = sas.outbound.spi();
                    match ctx
                        .dp
                        .install_outbound(c.tunnel, sas.route, sas.outbound, sas.remote)
                    {
                        Ok(_) => {
                            info!(conn = %conn, spi_out = %format!("{spi:08x}"), "outbound traffic moved to the rekeyed Child SA")
                        }
                        Err(e) => {
                            error!(conn = %conn, "cannot switch to the rekeyed outbound SA: {e}")
                        }
                    }
                }
                ctx.dp.remove(inbound_spi);
                if outbound_spi != 0 {
                    ctx.dp.remove(outbound_spi);
                }
                c.children.retain(|ch| ch.inbound_spi != inbound_spi);
                info!(conn = %conn, spi_in = %format!("{inbound_spi:08x}"), spi_out = %format!("{outbound_spi:08x}"), "Child SA deleted");
                if c.children.is_empty() {
                    nat_keepalive(ctx, c, false);
                    remove_routes(ctx, c).await;
                    if c.state == State::Established {
                        // An IKE SA without a Child SA carries nothing: close it (only that one:
                        // a newer IKE SA of the connection may be coming up right now, as after
                        // a peer's INITIAL_CONTACT); an initiator then starts over (IkeDown
                        // schedules the retry).
                        c.state = State::Connecting;
                        engine.close_ike(now, ike);
                    }
                }
            }
        }
        EngineEvent::Failed { conn, reason } => {
            if let Some(c) = conns.iter_mut().find(|c| c.cfg.name == conn) {
                warn!(conn = %conn, attempt = c.attempts, "connection failed: {reason}");
                c.last_error = Some(reason);
                if c.children.is_empty() {
                    c.ike = None;
                    c.schedule_retry(now);
                    if let Some(t) = c.next_attempt {
                        info!(conn = %conn, "next attempt in {} s", t.saturating_duration_since(now).as_secs());
                    }
                }
            } else {
                warn!("IKE negotiation failed: {reason}");
            }
        }
        EngineEvent::IkeLost {
            conn,
            reason,
            others_remain,
        } => {
            if others_remain {
                warn!(conn = %conn, "a stale IKE SA was lost: {reason}; the current one stays");
                return;
            }
            if let Some(c) = conns.iter_mut().find(|c| c.cfg.name == conn) {
                warn!(conn = %conn, action = ?c.cfg.dpd.action, "IKE SA lost: {reason}");
                for ch in c.children.drain(..) {
                    ctx.dp.remove(ch.inbound_spi);
                    ctx.dp.remove(ch.outbound_spi);
                }
                let _ = ctx.dp.clear_tunnel(c.tunnel);
                nat_keepalive(ctx, c, false);
                remove_routes(ctx, c).await;
                c.ike = None;
                c.last_error = Some(format!("IKE SA lost: {reason}"));
                if c.cfg.dpd.action == DpdAction::Restart && c.state != State::Stopped {
                    c.backoff = Duration::from_secs(c.cfg.retry.initial_seconds);
                    c.schedule_retry(now);
                } else if c.state != State::Stopped {
                    // clear / hold: wait for the peer (or `hybridgw up`).
                    c.state = State::Down;
                    c.next_attempt = None;
                }
            }
        }
        EngineEvent::IkeDown {
            conn,
            others_remain,
        } => {
            if others_remain {
                info!(conn = %conn, "stale IKE SA deleted; the current one stays");
                return;
            }
            if let Some(c) = conns.iter_mut().find(|c| c.cfg.name == conn) {
                info!(conn = %conn, "IKE SA deleted");
                for ch in c.children.drain(..) {
                    ctx.dp.remove(ch.inbound_spi);
                    ctx.dp.remove(ch.outbound_spi);
                }
                let _ = ctx.dp.clear_tunnel(c.tunnel);
                nat_keepalive(ctx, c, false);
                remove_routes(ctx, c).await;
                c.ike = None;
                if c.state != State::Stopped {
                    c.schedule_retry(now);
                }
            }
        }
    }
}

/// NAT keepalives (RFC 3948 §2.3) on the connection's tunnel while its Child SA is
/// UDP-encapsulated, every `nat_keepalive_seconds` (20 s by default, RFC 3948 §4; 0 turns
/// them off); off otherwise.
fn nat_keepalive(ctx: &Ctx, c: &Conn, on: bool) {
    let interval = c.cfg.nat_keepalive.filter(|_| on);
    if let Err(e) = ctx.dp.set_nat_keepalive(c.tunnel, interval) {
        warn!(conn = %c.cfg.name, "cannot set NAT keepalives: {e}");
    }
}

async fn install_routes(ctx: &Ctx, c: &mut Conn) {
    if c.cfg.group.is_some() {
        // Active-active: `sync_groups` turns the members' wishes into one route set.
        c.routes_installed = true;
        return;
    }
    if c.failover.is_some() {
        // The failover task owns this connection's routes (floating at the backup metric).
        return;
    }
    if c.routes_installed {
        return;
    }
    let mut ok = true;
    for r in c.cfg.routes() {
        match ctx.nl.add_route(r.prefix, r.metric, c.ifindex).await {
            Ok(()) => {
                info!(conn = %c.cfg.name, prefix = %r.prefix, metric = r.metric, dev = %c.cfg.tun_name, "route added")
            }
            Err(e) => {
                ok = false;
                error!(conn = %c.cfg.name, "{e}");
            }
        }
    }
    c.routes_installed = ok;
}

async fn remove_routes(ctx: &Ctx, c: &mut Conn) {
    if c.cfg.group.is_some() {
        c.routes_installed = false;
        return;
    }
    if !c.routes_installed {
        return;
    }
    for r in c.cfg.routes() {
        match ctx.nl.del_route(r.prefix, r.metric, c.ifindex).await {
            Ok(()) => {
                info!(conn = %c.cfg.name, prefix = %r.prefix, dev = %c.cfg.tun_name, "route removed")
            }
            Err(e) => warn!(conn = %c.cfg.name, "{e}"),
        }
    }
    c.routes_installed = false;
}

/// Active-active pairs (`remote_address = ["a", "b"]`): route the pair's prefixes over the
/// members whose Child SA is up: all of them as one multipath route (ECMP), or only the first
/// one up (backup). A member whose peer stops answering (DPD) or deletes its SAs drops out at
/// once; with none up the routes go. Applied only when the set of carrying tunnels changes.
async fn sync_groups(ctx: &Ctx, conns: &mut [Conn]) {
    let mut groups: Vec<String> = conns
        .iter()
        .filter_map(|c| c.cfg.group.as_ref().map(|g| g.name.clone()))
        .collect();
    groups.dedup();
    for g in groups {
        let mut members: Vec<usize> = (0..conns.len())
            .filter(|&i| conns[i].cfg.group.as_ref().is_some_and(|x| x.name == g))
            .collect();
        members.sort_by_key(|&i| conns[i].cfg.group.as_ref().map_or(0, |x| x.member));
        let Some(&lead) = members.first() else {
            continue;
        };
        let multipath = conns[lead]
            .cfg
            .group
            .as_ref()
            .map_or(config::Multipath::Ecmp, |x| x.multipath);
        let up: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| conns[i].routes_installed)
            .collect();
        let carrying: Vec<usize> = match multipath {
            config::Multipath::Ecmp => up,
            config::Multipath::Backup => up.into_iter().take(1).collect(),
        };
        let want: Vec<u32> = carrying.iter().map(|&i| conns[i].ifindex).collect();
        if want == conns[lead].group_applied {
            continue;
        }
        let mut ok = true;
        for r in conns[lead].cfg.routes() {
            let res = match want.as_slice() {
                [] => ctx.nl.del_route_any(r.prefix, r.metric).await,
                [one] => ctx.nl.add_route(r.prefix, r.metric, *one).await,
                many => ctx.nl.add_multipath(r.prefix, r.metric, many).await,
            };
            if let Err(e) = res {
                ok = false;
                error!(group = %g, "{e}");
            }
        }
        let via: Vec<&str> = carrying
            .iter()
            .map(|&i| conns[i].cfg.tun_name.as_str())
            .collect();
        info!(group = %g, ?multipath, via = %via.join(","), "active-active routes now via {} tunnel(s)", via.len());
        for &i in &members {
            conns[i].carrying = carrying.contains(&i);
        }
        if ok {
            conns[lead].group_applied = want;
        }
    }
}

async fn control_request(
    req: &Request,
    engine: &mut Engine,
    conns: &mut [Conn],
    ctx: &Ctx,
    cfg: &Config,
    started: Instant,
    now: Instant,
) -> Response {
    let find = |conns: &[Conn], name: &str| conns.iter().position(|c| c.cfg.name == name);
    match req {
        Request::Status => Response {
            ok: true,
            message: None,
            status: Some(status(conns, engine, ctx, cfg, started, now)),
        },
        Request::Up { name } => {
            let Some(i) = find(conns, name) else {
                return Response::err(format!("no connection named `{name}`"));
            };
            let c = &mut conns[i];
            if c.state == State::Established {
                return Response::ok(format!("{name} is already established"));
            }
            if c.state == State::Connecting {
                return Response::ok(format!("{name} is already connecting"));
            }
            if !c.cfg.behaviour.initiates() {
                c.state = State::Down;
                return Response::ok(format!(
                    "{name} is responder-only: waiting for the peer to initiate"
                ));
            }
            c.state = State::Down;
            c.backoff = Duration::from_secs(c.cfg.retry.initial_seconds);
            c.next_attempt = Some(now);
            info!(conn = %name, "up requested");
            Response::ok(format!("{name}: initiating"))
        }
        Request::Down { name } => {
            let Some(i) = find(conns, name) else {
                return Response::err(format!("no connection named `{name}`"));
            };
            info!(conn = %name, "down requested");
            engine.close(now, name);
            let c = &mut conns[i];
            for ch in c.children.drain(..) {
                ctx.dp.remove(ch.inbound_spi);
                ctx.dp.remove(ch.outbound_spi);
            }
            let _ = ctx.dp.clear_tunnel(c.tunnel);
            nat_keepalive(ctx, c, false);
            remove_routes(ctx, c).await;
            c.ike = None;
            c.state = State::Stopped;
            c.next_attempt = None;
            flush(engine, ctx, conns, now).await;
            Response::ok(format!(
                "{name}: down (SAs deleted, routes removed; `hybridgw up {name}` brings it back)"
            ))
        }
        Request::Rekey { name } => {
            if find(conns, name).is_none() {
                return Response::err(format!("no connection named `{name}`"));
            }
            if !engine.rekey(now, name) {
                return Response::err(format!(
                    "{name}: nothing to rekey (no established Child SA, or a rekey is already under way)"
                ));
            }
            info!(conn = %name, "rekey requested");
            flush(engine, ctx, conns, now).await;
            Response::ok(format!("{name}: rekeying the Child SAs (CREATE_CHILD_SA)"))
        }
    }
}

/// The IKE endpoint's counters under stable names.
fn ike_counters(c: &ike::Counters) -> BTreeMap<String, u64> {
    [
        ("received", c.received),
        ("sent", c.sent),
        ("retransmits", c.retransmits),
        ("cached_responses", c.cached_responses),
        ("malformed", c.malformed),
        ("not_ike", c.not_ike),
        ("unknown_spi", c.unknown_spi),
        ("no_connection", c.no_connection),
        ("unexpected", c.unexpected),
        ("bad_message_id", c.bad_message_id),
        ("integrity", c.integrity),
        ("invalid", c.invalid),
        ("cookies_sent", c.cookies_sent),
        ("refused", c.refused),
        ("half_open_expired", c.half_open_expired),
        ("half_open_limit", c.half_open_limit),
        ("ike_failed", c.ike_failed),
        ("ike_established", c.ike_established),
        ("child_established", c.child_established),
        ("child_rekeyed", c.child_rekeyed),
        ("ike_rekeyed", c.ike_rekeyed),
        ("peer_moved", c.peer_moved),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn status(
    conns: &[Conn],
    engine: &Engine,
    ctx: &Ctx,
    cfg: &Config,
    started: Instant,
    now: Instant,
) -> Status {
    let snap = ctx.dp.counters();
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for (reason, n) in snap.drops.iter() {
        drops.insert(reason.name().to_string(), n);
    }
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        config: cfg.file.display().to_string(),
        uptime_seconds: now.duration_since(started).as_secs(),
        ike: {
            let mut m = ike_counters(engine.counters());
            // A gauge, not a counter: responder IKE SAs waiting for IKE_AUTH now (RFC 7296 §2.6).
            m.insert("half_open".into(), engine.half_open() as u64);
            m
        },
        dataplane: {
            let b = snap.batching;
            [
                ("tun_reads", b.tun_reads),
                ("tun_packets", b.tun_packets),
                ("udp_sends", b.udp_sends),
                ("udp_datagrams_sent", b.udp_datagrams_sent),
                ("udp_receives", b.udp_receives),
                ("udp_datagrams_received", b.udp_datagrams_received),
                ("tun_writes", b.tun_writes),
                ("tun_packets_written", b.tun_packets_written),
                ("steering_changes", b.steering_changes),
                ("cpu_local", u64::from(b.cpu_local)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
        },
        connections: conns
            .iter()
            .map(|c| ConnectionStatus {
                name: c.cfg.name.clone(),
                state: c.state.name().to_string(),
                local_address: c.cfg.local_address.to_string(),
                remote_address: c.cfg.remote_address.to_string(),
                local_id: c.cfg.local_id.clone(),
                remote_id: c.cfg.remote_id.clone(),
                behaviour: format!("{:?}", c.cfg.behaviour).to_lowercase(),
                mode: match c.cfg.mode {
                    Mode::RouteBased { .. } => "route-based".into(),
                    Mode::PolicyBased { .. } => "policy-based".into(),
                },
                tun: c.cfg.tun_name.clone(),
                routes: c
                    .cfg
                    .mode
                    .routes()
                    .iter()
                    .map(|r| RouteStatus {
                        prefix: r.prefix.to_string(),
                        metric: c
                            .cfg
                            .failover
                            .as_ref()
                            .map_or(r.metric, |f| f.backup_metric),
                        installed: if c.cfg.group.is_some() {
                            c.carrying
                        } else {
                            c.routes_installed || c.failover.is_some()
                        },
                    })
                    .collect(),
                ike_sa: c.ike.as_ref().map(|i| {
                    let (local, remote) =
                        engine.addresses(&c.cfg.name).unwrap_or((i.local, i.remote));
                    IkeSaStatus {
                        state: "established".into(),
                        initiator: i.initiator,
                        spi_i: format!("{:016x}", i.spi_i),
                        spi_r: format!("{:016x}", i.spi_r),
                        local: local.to_string(),
                        remote: remote.to_string(),
                        encryption: i.encryption.clone(),
                        integrity: i.integrity.clone(),
                        prf: i.prf.clone(),
                        dh_group: i.dh_group.clone(),
                        established_seconds: now.duration_since(i.since).as_secs(),
                    }
                }),
                child_sas: c
                    .children
                    .iter()
                    .map(|ch| {
                        let inb = snap.sa(ch.inbound_spi, Direction::Inbound);
                        let out = snap.sa(ch.outbound_spi, Direction::Outbound);
                        ChildSaStatus {
                            state: "installed".into(),
                            spi_in: format!("{:08x}", ch.inbound_spi),
                            spi_out: format!("{:08x}", ch.outbound_spi),
                            encryption: ch.encryption.clone(),
                            integrity: ch.integrity.clone(),
                            pfs: ch.pfs.clone(),
                            encap: ch.encap,
                            local_ts: ch.local_ts.clone(),
                            remote_ts: ch.remote_ts.clone(),
                            established_seconds: now.duration_since(ch.since).as_secs(),
                            bytes_in: inb.map(|s| s.bytes).unwrap_or(0),
                            packets_in: inb.map(|s| s.packets).unwrap_or(0),
                            bytes_out: out.map(|s| s.bytes).unwrap_or(0),
                            packets_out: out.map(|s| s.packets).unwrap_or(0),
                            drops: drops.clone(),
                        }
                    })
                    .collect(),
                attempts: c.attempts,
                last_error: c.last_error.clone(),
                next_retry_seconds: c
                    .next_attempt
                    .map(|t| t.saturating_duration_since(now).as_secs()),
                failover: c.failover.as_ref().map(|f| f.status(now)),
                active_active: c.cfg.group.as_ref().map(|g| ActiveActiveStatus {
                    group: g.name.clone(),
                    member: g.member,
                    multipath: match g.multipath {
                        config::Multipath::Ecmp => "ecmp".into(),
                        config::Multipath::Backup => "backup".into(),
                    },
                    carrying: c.carrying,
                }),
            })
            .collect(),
    }
}
