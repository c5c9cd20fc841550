//! Traffic generators for the end-to-end tests: `ping` (ICMP echo, RFC 792) with parsed loss and
//! round-trip times, and `iperf3` server and client with parsed JSON results.

use std::net::Ipv4Addr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netns::{Netns, Proc};

/// What `ping -q` reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Loss in percent as ping computed it.
    pub loss_percent: f64,
    /// Minimum round-trip time in ms (none if nothing came back).
    pub rtt_min_ms: Option<f64>,
    /// Average RTT in ms.
    pub rtt_avg_ms: Option<f64>,
    /// Maximum RTT in ms.
    pub rtt_max_ms: Option<f64>,
    /// Mean deviation in ms.
    pub rtt_mdev_ms: Option<f64>,
}

/// Parses `ping -q` output (iputils).
pub fn parse_ping(out: &str) -> Result<PingStats> {
    let mut s = PingStats::default();
    let mut seen = false;
    for line in out.lines() {
        if line.contains("packets transmitted") {
            seen = true;
            for part in line.split(',') {
                let p = part.trim();
                let n = p.split_whitespace().next().unwrap_or("");
                if p.ends_with("packets transmitted") {
                    s.transmitted = n.parse().context("transmitted count")?;
                } else if p.ends_with("received") {
                    s.received = n.parse().context("received count")?;
                } else if p.ends_with("packet loss") {
                    s.loss_percent = n.trim_end_matches('%').parse().context("loss")?;
                }
            }
        } else if let Some(rest) = line.trim().strip_prefix("rtt min/avg/max/mdev = ") {
            // Below a 200 ms interval iputils appends ", ipg/ewma X/Y ms".
            let rest = rest.split(',').next().unwrap_or(rest).trim();
            let nums: Vec<f64> = rest
                .trim_end_matches(" ms")
                .split('/')
                .map(|x| x.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .context("rtt figures")?;
            if let [a, b, c, d] = nums[..] {
                (s.rtt_min_ms, s.rtt_avg_ms, s.rtt_max_ms, s.rtt_mdev_ms) =
                    (Some(a), Some(b), Some(c), Some(d));
            }
        }
    }
    if !seen {
        bail!("no ping statistics in output: {out}");
    }
    Ok(s)
}

/// Pings `dst` from `ns` `count` times at `interval` (each reply awaited at most 2 s); returns the
/// statistics even when packets were lost (check `received`). Intervals below 200 ms need root
/// (which the tests are).
pub fn ping(ns: &Netns, dst: Ipv4Addr, count: u32, interval: Duration) -> Result<PingStats> {
    netns::check_addr(dst.into())?;
    let out = ns.exec_output([
        "ping".to_string(),
        "-n".into(),
        "-q".into(),
        "-c".into(),
        count.to_string(),
        "-i".into(),
        format!("{:.3}", interval.as_secs_f64()),
        "-W".into(),
        "2".into(),
        "-w".into(),
        (u64::from(count) * interval.as_millis().max(1) as u64 / 1000 + 5).to_string(),
        dst.to_string(),
    ])?;
    parse_ping(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
        format!(
            "ping {dst} from {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// Waits (bounded) until `dst` answers a ping from `ns`; returns the number of attempts used.
pub fn wait_reachable(ns: &Netns, dst: Ipv4Addr, timeout: Duration) -> Result<u32> {
    let deadline = Instant::now() + timeout;
    let mut n = 0;
    loop {
        n += 1;
        if ns
            .exec(["ping", "-n", "-q", "-c", "1", "-W", "1", &dst.to_string()])
            .is_ok()
        {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            bail!("{dst} not reachable from {} within {timeout:?}", ns.name());
        }
    }
}

/// A running `iperf3 -s` (stopped on drop).
#[derive(Debug)]
pub struct Iperf3Server {
    proc: Proc,
    /// Address it listens on.
    pub addr: Ipv4Addr,
    /// Port it listens on.
    pub port: u16,
}

impl Iperf3Server {
    /// Starts `iperf3 -s -B addr -p port` in `ns` and waits (at most 5 s) until it listens.
    pub fn start(ns: &Netns, addr: Ipv4Addr, port: u16) -> Result<Iperf3Server> {
        netns::check_addr(addr.into())?;
        let proc = ns
            .spawn([
                "iperf3",
                "-s",
                "-B",
                &addr.to_string(),
                "-p",
                &port.to_string(),
            ])
            .context("starting iperf3 (package iperf3)")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ss = ns
                .exec(["ss", "-Hltn", &format!("sport = :{port}")])
                .unwrap_or_default();
            if !ss.trim().is_empty() {
                return Ok(Iperf3Server { proc, addr, port });
            }
            if !proc.is_running() || Instant::now() >= deadline {
                bail!(
                    "iperf3 server on {addr}:{port} in {} did not start listening",
                    ns.name()
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// The server process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct Iperf3Options {
    /// Test length (`-t`).
    pub duration: Duration,
    /// UDP instead of TCP (`-u`).
    pub udp: bool,
    /// Target bitrate (`-b`, e.g. `"100M"`); UDP defaults to 1 Mbit/s without it.
    pub bitrate: Option<String>,
    /// Parallel streams (`-P`).
    pub parallel: u32,
    /// Server sends (`-R`).
    pub reverse: bool,
    /// Buffer / datagram length (`-l`).
    pub length: Option<u32>,
    /// Extra arguments.
    pub extra: Vec<String>,
}

impl Default for Iperf3Options {
    fn default() -> Self {
        Iperf3Options {
            duration: Duration::from_secs(3),
            udp: false,
            bitrate: None,
            parallel: 1,
            reverse: false,
            length: None,
            extra: Vec::new(),
        }
    }
}

/// What an iperf3 client run measured.
#[derive(Clone, Debug)]
pub struct Iperf3Result {
    /// Sender-side rate (bits/s).
    pub sent_bps: f64,
    /// Receiver-side rate (bits/s); for UDP the rate of datagrams that arrived.
    pub received_bps: f64,
    /// TCP retransmissions (sender), if reported.
    pub retransmits: Option<u64>,
    /// UDP: lost datagrams in percent.
    pub lost_percent: Option<f64>,
    /// UDP: jitter in ms.
    pub jitter_ms: Option<f64>,
    /// Bytes the receiver got.
    pub bytes_received: u64,
    /// The full JSON report.
    pub json: serde_json::Value,
}

/// Parses `iperf3 -J` output.
pub fn parse_iperf3(json_text: &str) -> Result<Iperf3Result> {
    let v: serde_json::Value = serde_json::from_str(json_text).context("iperf3 JSON")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {e}");
    }
    let end = v.get("end").context("iperf3 JSON has no `end`")?;
    let f =
        |o: Option<&serde_json::Value>, k: &str| o.and_then(|o| o.get(k)).and_then(|x| x.as_f64());
    let u =
        |o: Option<&serde_json::Value>, k: &str| o.and_then(|o| o.get(k)).and_then(|x| x.as_u64());
    if let Some(sum) = end.get("sum").filter(|_| end.get("sum_sent").is_none()) {
        // UDP
        let bps = f(Some(sum), "bits_per_second").unwrap_or(0.0);
        let lost = f(Some(sum), "lost_percent");
        return Ok(Iperf3Result {
            sent_bps: bps,
            received_bps: bps * (100.0 - lost.unwrap_or(0.0)) / 100.0,
            retransmits: None,
            lost_percent: lost,
            jitter_ms: f(Some(sum), "jitter_ms"),
            bytes_received: u(Some(sum), "bytes").unwrap_or(0),
            json: v.clone(),
        });
    }
    let sent = end.get("sum_sent");
    let recv = end.get("sum_received");
    Ok(Iperf3Result {
        sent_bps: f(sent, "bits_per_second")
            .context("iperf3 JSON: end.sum_sent.bits_per_second")?,
        received_bps: f(recv, "bits_per_second").unwrap_or(0.0),
        retransmits: u(sent, "retransmits"),
        lost_percent: f(recv, "lost_percent"),
        jitter_ms: f(recv, "jitter_ms"),
        bytes_received: u(recv, "bytes").unwrap_or(0),
        json: v.clone(),
    })
}

/// Runs `iperf3 -c server -J` from `ns` against a [`Iperf3Server`] at `server:port`.
pub fn iperf3_client(
    ns: &Netns,
    server: Ipv4Addr,
    port: u16,
    o: &Iperf3Options,
) -> Result<Iperf3Result> {
    netns::check_addr(server.into())?;
    let mut args: Vec<String> = vec![
        "iperf3".into(),
        "-c".into(),
        server.to_string(),
        "-p".into(),
        port.to_string(),
        "-J".into(),
        "-t".into(),
        format!("{}", o.duration.as_secs().max(1)),
        "-P".into(),
        o.parallel.max(1).to_string(),
        "--connect-timeout".into(),
        "5000".into(),
    ];
    if o.udp {
        args.push("-u".into());
    }
    if let Some(b) = &o.bitrate {
        args.extend(["-b".into(), b.clone()]);
    }
    if o.reverse {
        args.push("-R".into());
    }
    if let Some(l) = o.length {
        args.extend(["-l".into(), l.to_string()]);
    }
    args.extend(o.extra.iter().cloned());
    let out = ns.exec_output(args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_iperf3(&text).with_context(|| {
        format!(
            "iperf3 client in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping() {
        let out = "PING 198.19.1.10 (198.19.1.10) 56(84) bytes of data.\n\n--- 198.19.1.10 ping statistics ---\n5 packets transmitted, 4 received, 20% packet loss, time 803ms\nrtt min/avg/max/mdev = 0.051/0.075/0.112/0.021 ms\n";
        let s = parse_ping(out).unwrap();
        assert_eq!((s.transmitted, s.received), (5, 4));
        assert_eq!(s.loss_percent, 20.0);
        assert_eq!(s.rtt_avg_ms, Some(0.075));
        let lost = parse_ping(
            "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2040ms\n",
        )
        .unwrap();
        assert_eq!(lost.received, 0);
        assert_eq!(lost.rtt_min_ms, None);
        assert!(parse_ping("garbage").is_err());
        // Intervals below 200 ms add the inter-packet gap to the rtt line.
        let fast = parse_ping("200 packets transmitted, 200 received, 0% packet loss, time 2010ms\nrtt min/avg/max/mdev = 0.031/0.060/0.201/0.020 ms, ipg/ewma 10.101/0.055 ms\n").unwrap();
        assert_eq!(fast.rtt_max_ms, Some(0.201));
    }

    #[test]
    fn parses_iperf3() {
        let tcp = r#"{"end":{"sum_sent":{"bytes":1000,"bits_per_second":8e9,"retransmits":3},"sum_received":{"bytes":990,"bits_per_second":7.9e9}}}"#;
        let r = parse_iperf3(tcp).unwrap();
        assert_eq!(r.retransmits, Some(3));
        assert_eq!(r.received_bps, 7.9e9);
        let udp = r#"{"end":{"sum":{"bytes":500,"bits_per_second":1e6,"jitter_ms":0.1,"lost_percent":10.0}}}"#;
        let r = parse_iperf3(udp).unwrap();
        assert_eq!(r.lost_percent, Some(10.0));
        assert!(parse_iperf3(r#"{"error":"unable to connect"}"#).is_err());
        assert!(parse_iperf3("not json").is_err());
    }
}
