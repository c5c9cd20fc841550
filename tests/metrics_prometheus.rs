//! The Prometheus endpoint (`[metrics]`) scraped by a real Prometheus server (Debian's
//! `prometheus` package): two hybridgw daemons in the standard lab bring a tunnel up, the
//! on-prem one serves `GET /metrics` on 127.0.0.1 of its namespace, a Prometheus server in the
//! same namespace scrapes it every second, and its HTTP API (`/api/v1/query`) returns the
//! tunnel's series, with the bytes counter growing while iperf3 runs. `promtool check metrics`
//! reports nothing on a scraped body; anything but `GET /metrics` is 404.

mod appliance_support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use appliance_support::*;
use netns::Netns;

const METRICS: &str = "127.0.0.1:9817";
const PROMETHEUS: &str = "127.0.0.1:9090";

/// One HTTP/1.0 GET in `ns` (the server closes after the answer): (status line, body); the
/// status line says why when there was no answer.
fn http_get(ns: &Netns, addr: &str, target: &str, accept: Option<&str>) -> (String, String) {
    let a: SocketAddr = addr.parse().expect("address");
    // Not listening yet (Prometheus starting) or a broken answer: an empty status line.
    let mut s = match ns.tcp_connect(a, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => return (format!("(no connection: {e})"), String::new()),
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let accept = accept
        .map(|v| format!("Accept: {v}\r\n"))
        .unwrap_or_default();
    let mut out = Vec::new();
    let sent =
        s.write_all(format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").as_bytes());
    if let Err(e) = sent.and_then(|_| s.read_to_end(&mut out)) {
        return (format!("(no answer: {e})"), String::new());
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query through Prometheus's HTTP API: the value of every series of the result.
fn query(ns: &Netns, promql: &str) -> Vec<f64> {
    let (status, body) = http_get(
        ns,
        PROMETHEUS,
        &format!("/api/v1/query?query={}", urlencode(promql)),
        None,
    );
    if !status.contains(" 200") {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `promql` returns a series whose value satisfies `ok`; returns that value.
fn wait_value(
    ns: &Netns,
    promql: &str,
    timeout: Duration,
    prom_log: &std::path::Path,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let t0 = Instant::now();
    loop {
        if let Some(v) = query(ns, promql).into_iter().find(|v| ok(*v)) {
            return v;
        }
        assert!(
            t0.elapsed() < timeout,
            "Prometheus: no satisfying value for `{promql}` after {timeout:?} (now {:?})\n---- prometheus log ----\n{}",
            query(ns, promql),
            std::fs::read_to_string(prom_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_the_tunnel_series() {
    let lab = lab("hgwm");
    let s = scratch("metrics");
    let (pskf, _) = psk(&s.0);
    let (_az, op) = start_pair(
        &lab,
        &s.0,
        &pskf,
        "behaviour = \"ResponderOnly\"",
        &format!("behaviour = \"initiate\"\n[metrics]\nlisten = \"{METRICS}\""),
    );
    op.wait_established(Duration::from_secs(30));
    let ns = &lab.onprem_gw;

    // The endpoint itself: Prometheus text for a plain client, OpenMetrics when asked for,
    // 404 for anything else. The loop publishes about once a second.
    let t0 = Instant::now();
    let body = loop {
        let (status, body) = http_get(ns, METRICS, "/metrics", None);
        if status.contains(" 200")
            && body.contains("hybridgw_connection_up{connection=\"azure\"} 1")
        {
            break body;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no metrics for the established tunnel: {status}\n{body}\n{}",
            op.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{body}");
    for name in [
        "hybridgw_connection_ike_sas{connection=\"azure\"} 1",
        "hybridgw_connection_child_sas{connection=\"azure\"} 1",
        "hybridgw_child_sa_bytes_total{connection=\"azure\",direction=\"out\"}",
        "hybridgw_child_sa_packets_total{connection=\"azure\",direction=\"in\"}",
        "hybridgw_ike_sa_establishments_total ",
        "hybridgw_child_sa_establishments_total ",
        "hybridgw_ike_retransmissions_total ",
        "hybridgw_child_sa_rekeys_total ",
        "# TYPE hybridgw_child_sa_bytes_total counter",
    ] {
        assert!(body.contains(name), "`{name}` missing:\n{body}");
    }
    let (status, om) = http_get(
        ns,
        METRICS,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert!(
        status.contains(" 200") && om.ends_with("# EOF\n"),
        "{status}\n{om}"
    );
    let (status, _) = http_get(ns, METRICS, "/", None);
    assert!(status.contains(" 404"), "{status}");

    // promtool's linter on a scraped body: nothing to report.
    let scraped = s.0.join("scraped.prom");
    std::fs::write(&scraped, &body).expect("write the body");
    let lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scraped).expect("open"))
        .output()
        .expect("promtool (Debian package prometheus) installed");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        lint.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );

    // A Prometheus server in the same namespace, scraping every second.
    let conf = s.0.join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: hybridgw\n    static_configs:\n      - targets: [\"{METRICS}\"]\n"
        ),
    )
    .expect("prometheus.yml");
    let tsdb = s.0.join("tsdb");
    std::fs::create_dir_all(&tsdb).expect("tsdb dir");
    let prom_log = s.0.join("prometheus.log");
    let prom = ns
        .spawn_logged(
            [
                "prometheus".to_string(),
                format!("--config.file={}", conf.display()),
                format!("--storage.tsdb.path={}", tsdb.display()),
                format!("--web.listen-address={PROMETHEUS}"),
                "--storage.tsdb.retention.time=1h".to_string(),
            ],
            &prom_log,
        )
        .expect("start prometheus");

    let long = Duration::from_secs(30);
    wait_value(ns, "up{job=\"hybridgw\"}", long, &prom_log, |v| v == 1.0);
    wait_value(
        ns,
        "hybridgw_connection_up{connection=\"azure\"}",
        long,
        &prom_log,
        |v| v == 1.0,
    );
    wait_value(
        ns,
        "hybridgw_connection_child_sas{connection=\"azure\"}",
        long,
        &prom_log,
        |v| v >= 1.0,
    );
    wait_value(
        ns,
        "hybridgw_ike_sa_establishments_total",
        long,
        &prom_log,
        |v| v >= 1.0,
    );
    let bytes_out = "hybridgw_child_sa_bytes_total{connection=\"azure\",direction=\"out\"}";
    let before = wait_value(ns, bytes_out, long, &prom_log, |_| true);

    // Traffic through the tunnel: the counter Prometheus holds grows by at least what iperf3
    // moved (a few MB at least).
    let mbit = iperf3_tcp(
        &lab.onprem_host,
        &lab.azure_host,
        lab.azure_host_ip,
        3,
        false,
    );
    println!("iperf3 {mbit:.1} Mbit/s; bytes out before: {before}");
    let after = wait_value(ns, bytes_out, Duration::from_secs(15), &prom_log, |v| {
        v >= before + 1_000_000.0
    });
    println!("bytes out after: {after}");
    wait_value(
        ns,
        "rate(hybridgw_child_sa_packets_total{connection=\"azure\",direction=\"out\"}[1m])",
        Duration::from_secs(10),
        &prom_log,
        |v| v > 0.0,
    );

    let st = prom.stop();
    assert!(st.is_ok(), "stopping prometheus: {st:?}");
}
