//! `hybridgw run`: the tokio loop that carries out what the sans-IO supervisor
//! (`crate::supervisor`) decides. It owns the UDP 500 sockets, the data plane (TUN, UDP 4500,
//! RFC 4303 / RFC 3948 via `crates/dataplane`), netlink routes, the ExpressRoute path monitors
//! and the control socket; it feeds every datagram, timer, counter reading and control request
//! to the supervisor and applies the commands it returns. It decides nothing itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{Dataplane, DataplaneConfig, DataplaneEvent, TunConfig, TunnelConfig, TunnelId};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::{self, Config, Mode};
use crate::control::{self, Pending, Request, Response};
use crate::engine::{self, Engine};
use crate::logging::LogFormat;
use crate::routes::Netlink;
use crate::supervisor::{Command, Supervisor};

/// The longest wait for BIRD's control socket.
const BIRD_TIMEOUT: Duration = Duration::from_secs(5);

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

async fn run(cfg: Config, engine: Engine, socket: PathBuf) -> Result<(), String> {
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
        // With stateful HA the shared address is the master's only: bind it anyway.
        let s = bind_udp(a, cfg.daemon.ha.is_some())
            .map_err(|e| format!("binding IKE socket {a}: {e}"))?;
        ike_socks.push(Arc::new(s));
    }

    // The data plane: one TUN per connection and the UDP 4500 socket.
    let mut dpc = DataplaneConfig::new(natt_bind(&cfg));
    for c in &cfg.connections {
        let mut tun = TunConfig::new(c.tun_name.clone());
        tun.mtu = c.mtu;
        tun.tx_queue_len = cfg.daemon.tun_queue_len;
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
    dpc.freebind = cfg.daemon.ha.is_some();
    dpc.socket_buffer = cfg.daemon.socket_buffer;
    let (dp, mut dprx) = tokio::task::block_in_place(|| Dataplane::start(dpc))
        .map_err(|e| format!("data plane: {e}"))?;
    let dp = Arc::new(dp);
    let nl = Netlink::new().map_err(|e| format!("netlink: {e}"))?;

    let mut tunnels = Vec::new();
    let mut ifindex = Vec::new();
    for c in &cfg.connections {
        let tunnel = dp
            .tunnel_id(&c.tun_name)
            .ok_or_else(|| format!("TUN {} missing in the data plane", c.tun_name))?;
        tunnels.push(tunnel);
        ifindex.push((tunnel, nl.ifindex(&c.tun_name).await?));
        info!(conn = %c.name, tun = %c.tun_name, peer = %c.remote_address, behaviour = ?c.behaviour, "connection loaded");
    }
    // Failover after every TUN exists; a failure here refuses to start (nothing half-configured).
    let mut failovers: Vec<Option<crate::pathfail::PathFailover>> = Vec::new();
    for c in &cfg.connections {
        let Some(f) = c.failover.clone() else {
            failovers.push(None);
            continue;
        };
        match crate::pathfail::PathFailover::start(c, &f).await {
            Ok(pf) => failovers.push(Some(pf)),
            Err(e) => {
                for mut pf in failovers.into_iter().flatten() {
                    pf.stop().await;
                }
                return Err(e);
            }
        }
    }
    info!(
        config = %cfg.file.display(),
        connections = cfg.connections.len(),
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
    // Stateful HA: the replication socket on the dedicated link.
    let (ha_tx, mut ha_rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(1024);
    let ha_sock = match &cfg.daemon.ha {
        None => None,
        Some(h) => {
            let s = bind_udp(h.listen, false)
                .map_err(|e| format!("binding the HA replication socket {}: {e}", h.listen))?;
            let s = Arc::new(s);
            let rs = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match rs.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            let Some(d) = buf.get(..n) else { continue };
                            if ha_tx.send((from, d.to_vec())).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            warn!("HA socket: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
            info!(listen = %h.listen, peer = %h.peer, secret = %h.secret_source, "stateful HA: starting as backup (keepalived's `hybridgw ha master` takes over)");
            Some((s, h.peer))
        }
    };
    // The Prometheus endpoint (`[metrics]`): served from what the loop publishes.
    let mut metrics = match cfg.daemon.metrics {
        Some(m) => Some(crate::metrics::start(m.listen).await?),
        None => None,
    };
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
        ifindex,
        ha: ha_sock,
    };
    let mut sup = Supervisor::new(&cfg, engine, &tunnels, Instant::now());
    let mut next_traffic_check = Instant::now();
    loop {
        apply(&mut sup, &ctx).await;
        let now = Instant::now();
        if sup.stop_due(now) {
            info!("drain finished: shutting down");
            break;
        }
        // Dead peer detection (and a drain waiting for quiet) counts received ESP: the
        // supervisor reads the inbound SA counters as often as it asks.
        if now >= next_traffic_check {
            next_traffic_check = now + sup.counters_interval();
            let snap = ctx.dp.counters();
            sup.note_counters(now, &snap);
            apply(&mut sup, &ctx).await;
            if let Some(m) = &mut metrics
                && m.due(now)
            {
                m.publish(now, status(&sup, &cfg, started, now, &snap, &failovers));
            }
        }
        // Stateful HA: sequence-number marks for the backup.
        if sup.ha_marks_due(now) {
            let dp = ctx.dp.clone();
            sup.ha_marks(now, &dp.counters(), &|t, spi| dp.inbound_window(t, spi));
            apply(&mut sup, &ctx).await;
        }
        let timers = sup.poll_timeout();
        let deadline = timers
            .unwrap_or(now + Duration::from_secs(3600))
            .min(next_traffic_check)
            .min(sup.ha_marks_at().unwrap_or(next_traffic_check));
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline.max(now)));
        tokio::select! {
            Some((local, remote, data)) = ike_rx.recv() => {
                sup.handle_ike(Instant::now(), local, remote, &data);
            }
            Some(d) = dprx.ike.recv() => {
                sup.handle_natt(Instant::now(), d.local, d.remote, &d.message);
            }
            Some((from, data)) = ha_rx.recv() => {
                sup.ha_receive(Instant::now(), from, &data);
            }
            Some(ev) = dprx.events.recv() => {
                match ev {
                    DataplaneEvent::Lifetime { tunnel, spi, direction, state } => {
                        sup.on_lifetime(Instant::now(), tunnel, spi, direction, state);
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
                let resp = match &p.request {
                    Request::Status => {
                        let st = status(&sup, &cfg, started, now, &ctx.dp.counters(), &failovers);
                        Response { ok: true, message: None, status: Some(st) }
                    }
                    Request::Ha { role } => match crate::supervisor::HaRole::parse(role) {
                        Some(r) => {
                            // The epoch only grows: wall-clock nanoseconds.
                            let epoch = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                                .unwrap_or(1);
                            sup.set_ha_role(now, r, epoch)
                        }
                        None => Response::err(format!("`{role}` is not an HA role (master, backup, fault)")),
                    },
                    req => sup.control(now, req),
                };
                next_traffic_check = next_traffic_check.min(now + sup.counters_interval());
                apply(&mut sup, &ctx).await;
                let _ = p.reply.send(resp);
            }
            _ = sleep => {
                // Woken for counters or HA marks only: those run at the top of the loop.
                let now = Instant::now();
                if timers.is_some_and(|t| t <= now) {
                    sup.handle_timeout(now);
                }
            }
            _ = sigterm.recv() => {
                if sup.request_stop(Instant::now()) {
                    info!("SIGTERM: draining every connection first ([drain] on_shutdown; a second SIGTERM stops at once)");
                    next_traffic_check = Instant::now();
                    continue;
                }
                info!("SIGTERM: shutting down");
                break;
            }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }

    // Clean shutdown: DELETE for every IKE SA (answered or not, within about two seconds),
    // then every SA and route goes.
    sup.shutdown(Instant::now());
    let until = Instant::now() + Duration::from_secs(2);
    while sup.ike_sa_count() > 0 && Instant::now() < until {
        apply(&mut sup, &ctx).await;
        tokio::select! {
            Some((local, remote, data)) = ike_rx.recv() => {
                sup.handle_ike(Instant::now(), local, remote, &data);
            }
            Some(d) = dprx.ike.recv() => {
                sup.handle_natt(Instant::now(), d.local, d.remote, &d.message);
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                sup.handle_timeout(Instant::now());
            }
        }
    }
    sup.finish();
    apply(&mut sup, &ctx).await;
    for mut pf in failovers.into_iter().flatten() {
        pf.stop().await;
    }
    drop(ctx);
    match Arc::try_unwrap(dp) {
        Ok(dp) => tokio::task::block_in_place(|| dp.shutdown()),
        Err(_) => warn!("data plane still referenced at shutdown"),
    }
    info!("hybridgw stopped");
    Ok(())
}

/// The `status` document with each connection's failover state (`status`, `[metrics]`).
fn status(
    sup: &Supervisor,
    cfg: &Config,
    started: Instant,
    now: Instant,
    snap: &dataplane::Snapshot,
    failovers: &[Option<crate::pathfail::PathFailover>],
) -> control::Status {
    let mut st = sup.status_document(cfg, started, now, snap);
    for (c, f) in st.connections.iter_mut().zip(failovers) {
        c.failover = f.as_ref().map(|f| f.status(now));
    }
    st
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
    /// The TUN interface index of each tunnel.
    ifindex: Vec<(TunnelId, u32)>,
    /// Stateful HA: the replication socket and the partner's address.
    ha: Option<(Arc<UdpSocket>, SocketAddr)>,
}

/// A UDP socket for tokio, optionally with `IP_FREEBIND` (the address need not be here yet).
fn bind_udp(a: SocketAddr, freebind: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(a), Type::DGRAM, Some(Protocol::UDP))?;
    if a.is_ipv6() {
        s.set_only_v6(true)?;
        if freebind {
            s.set_freebind_v6(true)?;
        }
    } else if freebind {
        s.set_freebind_v4(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&a.into())?;
    UdpSocket::from_std(s.into())
}

impl Ctx {
    fn ifindex(&self, t: TunnelId) -> Option<u32> {
        self.ifindex.iter().find(|(x, _)| *x == t).map(|(_, i)| *i)
    }
}

/// Sends every datagram and carries out every command the supervisor has (bounded: a command's
/// failure is reported back, which may queue more).
async fn apply(sup: &mut Supervisor, ctx: &Ctx) {
    for _ in 0..10_000 {
        let mut progress = false;
        // Replication first: the backup holds an IKE SA's new state before the peer can
        // answer the datagram that changed it.
        while let Some(d) = sup.poll_ha_datagram() {
            progress = true;
            if let Some((s, peer)) = &ctx.ha
                && let Err(e) = s.send_to(&d, *peer).await
            {
                tracing::debug!(%peer, "HA replication: {e}");
            }
        }
        while let Some(t) = sup.poll_transmit() {
            progress = true;
            send(ctx, &t).await;
        }
        while let Some(c) = sup.poll_command() {
            progress = true;
            command(sup, ctx, c).await;
        }
        if !progress {
            break;
        }
    }
}

async fn command(sup: &mut Supervisor, ctx: &Ctx, c: Command) {
    match c {
        Command::InstallInbound {
            conn,
            tunnel,
            child,
            window,
        } => {
            let Some(cfg) = sup.connection(conn) else {
                return;
            };
            let r = engine::child_sas(cfg, &child).and_then(|s| {
                let inbound = match &window {
                    Some(w) => s.inbound.with_window(w),
                    None => s.inbound,
                };
                ctx.dp
                    .install_inbound(tunnel, inbound, s.selectors)
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = r {
                error!(conn = %child.conn, spi_in = %format!("{:08x}", child.inbound_spi), "cannot install the inbound SA: {e}");
                sup.install_failed(Instant::now(), conn, child.inbound_spi, &e);
            }
        }
        Command::InstallOutbound {
            conn,
            tunnel,
            child,
            next_seq,
        } => {
            let Some(cfg) = sup.connection(conn) else {
                return;
            };
            // On a wildcard UDP 4500 socket (connections with different local addresses) the
            // tunnel's ESP leaves from the address its peer knows.
            let _ = ctx.dp.set_source(tunnel, Some(child.local.ip()));
            let r = engine::child_sas(cfg, &child).and_then(|s| {
                let outbound = match next_seq {
                    Some(n) => s.outbound.with_next_seq(n),
                    None => s.outbound,
                };
                ctx.dp
                    .install_outbound(tunnel, s.route, outbound, s.remote)
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = r {
                error!(conn = %child.conn, spi_out = %format!("{:08x}", child.outbound_spi), "cannot install the outbound SA: {e}");
                sup.install_failed(Instant::now(), conn, child.inbound_spi, &e);
            }
        }
        Command::Remove {
            tunnel,
            direction,
            spi,
        } => {
            ctx.dp.remove(tunnel, direction, spi);
        }
        Command::ClearTunnel { tunnel } => {
            let _ = ctx.dp.clear_tunnel(tunnel);
        }
        Command::NatKeepalive { tunnel, interval } => {
            if let Err(e) = ctx.dp.set_nat_keepalive(tunnel, interval) {
                warn!(?tunnel, "cannot set NAT keepalives: {e}");
            }
        }
        Command::Route {
            prefix,
            metric,
            via,
            was,
        } => {
            let idx: Vec<u32> = via.iter().filter_map(|t| ctx.ifindex(*t)).collect();
            let res = match (idx.as_slice(), was.as_slice()) {
                ([], [one]) => match ctx.ifindex(*one) {
                    Some(i) => ctx.nl.del_route(prefix, metric, i).await,
                    None => Ok(()),
                },
                ([], _) => ctx.nl.del_route_any(prefix, metric).await,
                ([one], _) => ctx.nl.add_route(prefix, metric, *one).await,
                (many, _) => ctx.nl.add_multipath(prefix, metric, many).await,
            };
            match res {
                Ok(()) if idx.is_empty() => info!(%prefix, metric, "route removed"),
                Ok(()) => info!(%prefix, metric, via = ?idx, "route added"),
                Err(e) => error!("{e}"),
            }
        }
        Command::Bgp {
            socket,
            protocol,
            enable,
        } => {
            // BIRD answers within milliseconds; the loop does not wait for it.
            tokio::task::spawn_blocking(move || {
                let verb = if enable { "enable" } else { "disable" };
                let r = failover::birdctl::BirdControl::connect(&socket, BIRD_TIMEOUT).and_then(
                    |mut b| {
                        if enable {
                            b.enable(&protocol)
                        } else {
                            b.disable(&protocol)
                        }
                    },
                );
                match r {
                    Ok(t) => info!(%protocol, socket = %socket.display(), "BIRD: {verb}: {t:?}"),
                    Err(e) => {
                        warn!(%protocol, socket = %socket.display(), "BIRD: cannot {verb} the protocol: {e}")
                    }
                }
            });
        }
    }
}

async fn send(ctx: &Ctx, t: &engine::Datagram) {
    if t.local.port() == ctx.natt_port || t.remote.port() == ctx.natt_port {
        if let Err(e) = ctx
            .dp
            .send_ike_from(t.remote, Some(t.local.ip()), &t.payload)
        {
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
