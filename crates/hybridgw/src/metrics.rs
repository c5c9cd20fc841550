//! The Prometheus endpoint (`[metrics] listen`): `GET /metrics`, encoded by `prometheus-client`
//! and served by `hyper` on the daemon's tokio runtime. A scraper that accepts OpenMetrics
//! (Prometheus asks for it first) gets the library's OpenMetrics text as it is; anything else
//! (`curl`, `promtool check metrics`) gets the Prometheus text format 0.0.4, the same encoding
//! with the two differences of that format: a counter's `# HELP`/`# TYPE` lines name its
//! `_total` samples, and there are no `# UNIT` or `# EOF` lines (prometheus-client writes only
//! OpenMetrics: prometheus/client_rust#51).
//!
//! The daemon loop never waits for a scrape: about once a second it publishes its `status`
//! document ([`Publisher::publish`]); a task folds it into monotonic per-connection totals
//! ([`Collector`]) and renders the body, which the HTTP side serves as it is. The HTTP side is
//! bounded: only `GET /metrics` (404 otherwise), 8 KiB of request head, 5 s to send it, 10 s per
//! connection, no keep-alive, at most [`MAX_CONNECTIONS`] at once.
//!
//! Labels are bounded: connection names, directions, drop reasons, states and configured
//! prefixes; never SPIs. A Child SA's traffic is added to its connection's totals, which keep
//! what rekeyed and deleted Child SAs carried (so the counters only grow).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::control::Status;

/// Scrapes served at the same time; more are closed at once.
pub const MAX_CONNECTIONS: usize = 8;
/// The whole request head (request line and headers).
const MAX_HEAD: usize = 8192;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the loop publishes.
const PUBLISH_EVERY: Duration = Duration::from_millis(900);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One rendering in both formats.
#[derive(Debug, Clone)]
struct Bodies {
    openmetrics: Bytes,
    text: Bytes,
}

/// Every `state` a connection's `status` can show (`hybridgw_connection_state`).
const CONNECTION_STATES: [&str; 8] = [
    "down",
    "connecting",
    "established",
    "partial",
    "retrying",
    "stopped",
    "draining",
    "drained",
];
/// States in which the connection carries traffic (`hybridgw_connection_up` 1).
const UP_STATES: [&str; 3] = ["established", "partial", "draining"];
/// The path monitor's verdicts on the primary (ExpressRoute) path.
const PRIMARY_PATH_STATES: [&str; 3] = ["unknown", "up", "down"];
/// Which path the kernel uses for a remote prefix.
const PREFIX_PATHS: [&str; 4] = ["expressroute", "vpn", "other", "unreachable"];
/// The IKE endpoint's counters of datagrams it dropped, by reason
/// (`hybridgw_ike_messages_dropped_total`).
const IKE_DROP_REASONS: [&str; 10] = [
    "malformed",
    "not_ike",
    "unknown_spi",
    "no_connection",
    "unexpected",
    "bad_message_id",
    "integrity",
    "invalid",
    "refused",
    "half_open_limit",
];

/// The loop's end: hands a `status` document to the metrics task about once a second.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<Option<Arc<Status>>>,
    last: Option<Instant>,
}

impl Publisher {
    /// True when a new document is due.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|t| now.saturating_duration_since(t) >= PUBLISH_EVERY)
    }

    /// Publishes one document (never blocks).
    pub fn publish(&mut self, now: Instant, status: Status) {
        self.last = Some(now);
        self.tx.send_replace(Some(Arc::new(status)));
    }
}

/// Binds `listen` and starts the collector and HTTP tasks on the current runtime.
pub async fn start(listen: SocketAddr) -> Result<Publisher, String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("metrics endpoint {listen}: {e}"))?;
    let (tx, mut rx) = watch::channel::<Option<Arc<Status>>>(None);
    let (body_tx, body_rx) = watch::channel::<Option<Bodies>>(None);
    tokio::spawn(async move {
        let mut collector = Collector::default();
        while rx.changed().await.is_ok() {
            let Some(st) = rx.borrow_and_update().clone() else {
                continue;
            };
            collector.update(&st);
            let om = collector.render(&st);
            body_tx.send_replace(Some(Bodies {
                text: Bytes::from(prometheus_text(&om)),
                openmetrics: Bytes::from(om),
            }));
        }
    });
    tokio::spawn(serve(listener, body_rx));
    info!(%listen, "metrics endpoint: GET /metrics");
    Ok(Publisher { tx, last: None })
}

async fn serve(listener: TcpListener, body: watch::Receiver<Option<Bodies>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!("metrics endpoint: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics endpoint: too many connections, closing");
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let current = body.borrow().clone();
                let om = req
                    .headers()
                    .get_all(hyper::header::ACCEPT)
                    .iter()
                    .any(|v| {
                        v.to_str()
                            .is_ok_and(|v| v.contains("application/openmetrics-text"))
                    });
                let r = respond(req.method(), req.uri().path(), om, current);
                async move { Ok::<_, Infallible>(r) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(MAX_HEAD);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, "metrics endpoint: {e}"),
                Err(_) => debug!(%peer, "metrics endpoint: connection timed out"),
            }
        });
    }
}

/// The answer to one request: the current body for `GET /metrics` (OpenMetrics when the client
/// accepts it), 404 for anything else, 503 until the loop published its first document.
fn respond(
    method: &Method,
    path: &str,
    openmetrics: bool,
    body: Option<Bodies>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method == Method::GET && path == "/metrics", body) {
        (false, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"only GET /metrics is served here\n"),
        ),
        (true, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"starting\n"),
        ),
        (true, Some(b)) if openmetrics => (StatusCode::OK, OPENMETRICS, b.openmetrics),
        (true, Some(b)) => (StatusCode::OK, PROMETHEUS_TEXT, b.text),
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// The Prometheus text format 0.0.4 of prometheus-client's OpenMetrics text `om`: a counter
/// family `x` has `x_total` samples, which that format names in `# HELP` and `# TYPE` too;
/// `# UNIT` and `# EOF` are OpenMetrics only.
fn prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 64 * counters.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let named = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match named {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Traffic of one Child SA or of a connection: bytes and packets in and out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Traffic {
    bytes_in: u64,
    packets_in: u64,
    bytes_out: u64,
    packets_out: u64,
}

impl Traffic {
    fn max(self, o: Traffic) -> Traffic {
        Traffic {
            bytes_in: self.bytes_in.max(o.bytes_in),
            packets_in: self.packets_in.max(o.packets_in),
            bytes_out: self.bytes_out.max(o.bytes_out),
            packets_out: self.packets_out.max(o.packets_out),
        }
    }
    fn add(self, o: Traffic) -> Traffic {
        Traffic {
            bytes_in: self.bytes_in.saturating_add(o.bytes_in),
            packets_in: self.packets_in.saturating_add(o.packets_in),
            bytes_out: self.bytes_out.saturating_add(o.bytes_out),
            packets_out: self.packets_out.saturating_add(o.packets_out),
        }
    }
}

/// Monotonic totals across successive `status` documents.
#[derive(Debug, Default)]
pub struct Collector {
    /// The most each live Child SA carried, by connection and inbound SPI (internal only:
    /// SPIs never become labels).
    live: HashMap<(String, String), Traffic>,
    /// What the Child SAs that went carried, by connection.
    gone: BTreeMap<String, Traffic>,
    /// Data-plane drops by reason (daemon-wide counters; the most seen).
    drops: BTreeMap<String, u64>,
}

impl Collector {
    /// Folds one document in: a Child SA no longer listed adds what it carried to its
    /// connection's totals.
    pub fn update(&mut self, st: &Status) {
        let mut live = HashMap::new();
        for c in &st.connections {
            for ch in &c.child_sas {
                let key = (c.name.clone(), ch.spi_in.clone());
                let now = Traffic {
                    bytes_in: ch.bytes_in,
                    packets_in: ch.packets_in,
                    bytes_out: ch.bytes_out,
                    packets_out: ch.packets_out,
                };
                // The outbound counters read 0 once the SA stops carrying (rekeyed): keep
                // the most seen.
                let seen = self.live.remove(&key).unwrap_or_default().max(now);
                live.insert(key, seen);
                for (reason, n) in &ch.drops {
                    let d = self.drops.entry(reason.clone()).or_default();
                    *d = (*d).max(*n);
                }
            }
        }
        for ((conn, _), t) in self.live.drain() {
            let g = self.gone.entry(conn).or_default();
            *g = g.add(t);
        }
        self.live = live;
    }

    /// A connection's totals: its gone Child SAs plus its live ones.
    fn traffic(&self, conn: &str) -> Traffic {
        self.live.iter().filter(|((c, _), _)| c == conn).fold(
            self.gone.get(conn).copied().unwrap_or_default(),
            |a, (_, t)| a.add(*t),
        )
    }

    /// The exposition of `st` (folded in with [`Collector::update`] first).
    pub fn render(&self, st: &Status) -> String {
        let mut reg = Registry::default();
        type Labels = Vec<(String, String)>;
        let l = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let i64_of = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);

        let info = Family::<Labels, Gauge>::default();
        info.get_or_create(&l(&[("version", &st.version)])).set(1);
        reg.register("hybridgw_build_info", "The running hybridgw version", info);

        // Per connection.
        let up = Family::<Labels, Gauge>::default();
        let state = Family::<Labels, Gauge>::default();
        let ike_sas = Family::<Labels, Gauge>::default();
        let child_sas = Family::<Labels, Gauge>::default();
        let attempts = Family::<Labels, Counter>::default();
        let bytes = Family::<Labels, Counter>::default();
        let packets = Family::<Labels, Counter>::default();
        let primary = Family::<Labels, Gauge>::default();
        let transitions = Family::<Labels, Counter>::default();
        let prefix_path = Family::<Labels, Gauge>::default();
        for c in &st.connections {
            let conn = c.name.as_str();
            up.get_or_create(&l(&[("connection", conn)]))
                .set(i64::from(UP_STATES.contains(&c.state.as_str())));
            for s in CONNECTION_STATES {
                state
                    .get_or_create(&l(&[("connection", conn), ("state", s)]))
                    .set(i64::from(c.state == s));
            }
            ike_sas
                .get_or_create(&l(&[("connection", conn)]))
                .set(i64_of(c.ike_sas.len() as u64));
            child_sas
                .get_or_create(&l(&[("connection", conn)]))
                .set(i64_of(c.child_sas.len() as u64));
            attempts
                .get_or_create(&l(&[("connection", conn)]))
                .inc_by(c.attempts);
            let t = self.traffic(conn);
            for (dir, b, p) in [
                ("in", t.bytes_in, t.packets_in),
                ("out", t.bytes_out, t.packets_out),
            ] {
                let k = l(&[("connection", conn), ("direction", dir)]);
                bytes.get_or_create(&k).inc_by(b);
                packets.get_or_create(&k).inc_by(p);
            }
            if let Some(f) = &c.failover {
                for s in PRIMARY_PATH_STATES {
                    primary
                        .get_or_create(&l(&[("connection", conn), ("state", s)]))
                        .set(i64::from(f.primary_path == s));
                }
                transitions
                    .get_or_create(&l(&[("connection", conn)]))
                    .inc_by(f.transitions);
                for p in &f.prefixes {
                    for path in PREFIX_PATHS {
                        prefix_path
                            .get_or_create(&l(&[
                                ("connection", conn),
                                ("prefix", &p.prefix),
                                ("path", path),
                            ]))
                            .set(i64::from(p.path == path));
                    }
                }
            }
        }
        reg.register(
            "hybridgw_connection_up",
            "1 while the connection carries traffic (state established, partial or draining)",
            up,
        );
        reg.register(
            "hybridgw_connection_state",
            "1 for the connection's current state (as `hybridgw status` shows it), 0 for the others",
            state,
        );
        reg.register(
            "hybridgw_connection_ike_sas",
            "IKE SAs of the connection (more than one during a rekey or while a duplicate is deleted)",
            ike_sas,
        );
        reg.register(
            "hybridgw_connection_child_sas",
            "Child SAs of the connection (installed, standby, rekeyed and deleting)",
            child_sas,
        );
        reg.register(
            "hybridgw_connection_attempts",
            "IKE SA establishments this daemon started for the connection",
            attempts,
        );
        reg.register_with_unit(
            "hybridgw_child_sa",
            "ESP payload carried by the connection's Child SAs, live and gone, by direction",
            Unit::Bytes,
            bytes,
        );
        reg.register(
            "hybridgw_child_sa_packets",
            "Packets carried by the connection's Child SAs, live and gone, by direction",
            packets,
        );
        reg.register(
            "hybridgw_failover_primary_path",
            "1 for the path monitor's verdict on the connection's primary (ExpressRoute) path",
            primary,
        );
        reg.register(
            "hybridgw_failover_transitions",
            "Path monitor decisions (failovers plus failbacks) of the connection",
            transitions,
        );
        reg.register(
            "hybridgw_failover_prefix_path",
            "1 for the path the kernel uses for the remote prefix, 0 for the others",
            prefix_path,
        );

        // Daemon-wide IKE counters.
        let ike = |k: &str| st.ike.get(k).copied().unwrap_or(0);
        for (name, help, key) in [
            (
                "hybridgw_ike_messages_received",
                "IKE datagrams received",
                "received",
            ),
            ("hybridgw_ike_messages_sent", "IKE datagrams sent", "sent"),
            (
                "hybridgw_ike_retransmissions",
                "IKE requests sent again (no answer in time)",
                "retransmits",
            ),
            (
                "hybridgw_ike_sa_establishments",
                "IKE SAs established (not counting rekeys)",
                "ike_established",
            ),
            (
                "hybridgw_ike_sa_failures",
                "IKE SA establishments that failed",
                "ike_failed",
            ),
            ("hybridgw_ike_sa_rekeys", "IKE SAs rekeyed", "ike_rekeyed"),
            (
                "hybridgw_child_sa_establishments",
                "Child SAs established (not counting rekeys)",
                "child_established",
            ),
            (
                "hybridgw_child_sa_rekeys",
                "Child SAs rekeyed",
                "child_rekeyed",
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(ike(key));
            reg.register(name, help, c);
        }
        let dropped = Family::<Labels, Counter>::default();
        for r in IKE_DROP_REASONS {
            dropped.get_or_create(&l(&[("reason", r)])).inc_by(ike(r));
        }
        reg.register(
            "hybridgw_ike_messages_dropped",
            "IKE datagrams dropped, by reason",
            dropped,
        );
        let half_open = Gauge::<i64>::default();
        half_open.set(i64_of(ike("half_open")));
        reg.register(
            "hybridgw_ike_half_open_sas",
            "Responder IKE SAs waiting for IKE_AUTH",
            half_open,
        );

        // Data-plane drops (daemon-wide, by reason).
        let drops = Family::<Labels, Counter>::default();
        for (r, n) in &self.drops {
            drops.get_or_create(&l(&[("reason", r)])).inc_by(*n);
        }
        reg.register(
            "hybridgw_dataplane_drops",
            "Packets the data plane dropped, by reason",
            drops,
        );

        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ChildSaStatus, ConnectionStatus, FailoverStatus, PrefixPathStatus};

    fn child(spi: &str, bytes_in: u64, bytes_out: u64) -> ChildSaStatus {
        ChildSaStatus {
            spi_in: spi.into(),
            bytes_in,
            packets_in: bytes_in / 100,
            bytes_out,
            packets_out: bytes_out / 100,
            drops: [("replay".to_string(), 3)].into_iter().collect(),
            ..Default::default()
        }
    }

    fn status(children: Vec<ChildSaStatus>) -> Status {
        Status {
            version: "0.1.0".into(),
            connections: vec![ConnectionStatus {
                name: "azure".into(),
                state: "established".into(),
                child_sas: children,
                attempts: 2,
                failover: Some(FailoverStatus {
                    primary_path: "up".into(),
                    transitions: 1,
                    prefixes: vec![PrefixPathStatus {
                        prefix: "10.1.0.0/16".into(),
                        path: "expressroute".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ike: [("retransmits".to_string(), 4), ("received".to_string(), 9)]
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn traffic_stays_monotonic_across_rekeys() {
        let mut c = Collector::default();
        let st = status(vec![child("c1", 1000, 500)]);
        c.update(&st);
        let t = c.render(&st);
        let bin = "hybridgw_child_sa_bytes_total{connection=\"azure\",direction=\"in\"}";
        let bout = "hybridgw_child_sa_bytes_total{connection=\"azure\",direction=\"out\"}";
        assert_eq!(sample(&t, bin), Some(1000), "{t}");
        assert_eq!(sample(&t, bout), Some(500), "{t}");
        // Rekeyed: the old SA's outbound reads 0, a new one carries.
        let st = status(vec![child("c1", 1200, 0), child("c2", 10, 20)]);
        c.update(&st);
        let t = c.render(&st);
        assert_eq!(sample(&t, bin), Some(1210), "{t}");
        assert_eq!(sample(&t, bout), Some(520), "{t}");
        // The old one is deleted: its traffic stays counted.
        let st = status(vec![child("c2", 30, 40)]);
        c.update(&st);
        let t = c.render(&st);
        assert_eq!(sample(&t, bin), Some(1230), "{t}");
        assert_eq!(sample(&t, bout), Some(540), "{t}");
        assert!(!t.contains("c1") && !t.contains("c2"), "no SPI labels: {t}");
        let p = "hybridgw_child_sa_packets_total{connection=\"azure\",direction=\"in\"}";
        assert_eq!(sample(&t, p), Some(12), "{t}");
        assert_eq!(
            sample(&t, "hybridgw_dataplane_drops_total{reason=\"replay\"}"),
            Some(3)
        );
        assert_eq!(sample(&t, "hybridgw_ike_retransmissions_total"), Some(4));
        assert_eq!(sample(&t, "hybridgw_ike_messages_received_total"), Some(9));
        assert_eq!(
            sample(&t, "hybridgw_connection_up{connection=\"azure\"}"),
            Some(1)
        );
        assert_eq!(
            sample(
                &t,
                "hybridgw_connection_state{connection=\"azure\",state=\"down\"}"
            ),
            Some(0)
        );
        assert_eq!(
            sample(&t, "hybridgw_connection_child_sas{connection=\"azure\"}"),
            Some(1)
        );
        assert_eq!(
            sample(
                &t,
                "hybridgw_failover_primary_path{connection=\"azure\",state=\"up\"}"
            ),
            Some(1)
        );
        assert_eq!(
            sample(
                &t,
                "hybridgw_failover_prefix_path{connection=\"azure\",prefix=\"10.1.0.0/16\",path=\"vpn\"}"
            ),
            Some(0)
        );
        assert!(t.contains("# TYPE hybridgw_child_sa_bytes counter"), "{t}");
        assert!(t.contains("# UNIT hybridgw_child_sa_bytes bytes"), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
        // The Prometheus text format: counters' HELP and TYPE name the `_total` samples.
        let p = prometheus_text(&t);
        assert!(
            p.contains("# TYPE hybridgw_child_sa_bytes_total counter\n")
                && p.contains("# HELP hybridgw_child_sa_bytes_total ESP")
                && p.contains("# TYPE hybridgw_connection_up gauge\n")
                && !p.contains("# UNIT")
                && !p.contains("# EOF"),
            "{p}"
        );
        assert_eq!(sample(&p, bin), Some(1230), "{p}");
    }

    #[test]
    fn only_get_metrics() {
        let b = Some(Bodies {
            openmetrics: Bytes::from_static(b"x_total 1\n# EOF\n"),
            text: Bytes::from_static(b"x_total 1\n"),
        });
        let r = respond(&Method::GET, "/metrics", true, b.clone());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], OPENMETRICS);
        let r = respond(&Method::GET, "/metrics", false, b.clone());
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], PROMETHEUS_TEXT);
        assert_eq!(
            respond(&Method::GET, "/", true, b.clone()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/metrics", true, b).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::GET, "/metrics", true, None).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn serves_and_bounds() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let mut p = start(addr).await.expect("start");
        p.publish(Instant::now(), status(vec![child("c1", 1000, 500)]));
        let get = |req: &'static [u8]| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            // The server may close before an oversized request is written.
            let _ = s.write_all(req).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .expect("answered in time");
            String::from_utf8_lossy(&out).into_owned()
        };
        let mut r = String::new();
        for _ in 0..50 {
            r = get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("hybridgw_child_sa_bytes_total"), "{r}");
        let r = get(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n").await;
        assert!(
            r.contains("application/openmetrics-text") && r.contains("# EOF"),
            "{r}"
        );
        let r = get(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        // An oversized request head is refused, not buffered.
        let big: &'static [u8] = Box::leak(
            format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000))
                .into_bytes()
                .into_boxed_slice(),
        );
        let r = get(big).await;
        assert!(!r.starts_with("HTTP/1.1 200"), "{r}");
    }
}
