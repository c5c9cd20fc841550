//! UDP probe flows for the labs: per direction, `flows` UDP flows (one source port each) send a
//! sequence number every `interval`; the receiver notes when each arrived. Figures per event
//! window: probes sent and lost, flows hit, and the longest time a flow went without traffic
//! (from the send time of its first lost probe to that of the next one received, or to the end
//! of the window).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns::Netns;

/// One direction's probe flows.
#[derive(Debug)]
pub(crate) struct Probes {
    pub(crate) stop: Arc<AtomicBool>,
    /// Per flow: the receive time of each sequence number (index = sequence number).
    pub(crate) got: Arc<Mutex<Vec<Vec<Option<Instant>>>>>,
    /// Per sequence number: when it was sent (shared by all flows of the direction).
    pub(crate) sent: Arc<Mutex<Vec<Instant>>>,
    pub(crate) interval: Duration,
    pub(crate) threads: Vec<std::thread::JoinHandle<()>>,
}

/// One direction's figures over an event.
#[derive(Clone, Debug, Default)]
pub(crate) struct Flows {
    pub(crate) sent: u64,
    pub(crate) lost: u64,
    /// The longest time any flow went without traffic.
    pub(crate) worst_gap: Duration,
    pub(crate) flows_hit: usize,
    /// Probes lost per flow.
    pub(crate) per_flow: Vec<u64>,
}

/// The longest a probe thread runs (the lab stops it long before).
const LONGEST: Duration = Duration::from_secs(7200);

impl Probes {
    /// `flows` flows from `src` (source ports 41000 + flow) to `dst:port`, one probe per flow
    /// every `interval`.
    pub(crate) fn start(
        from: &Netns,
        src: Ipv4Addr,
        to: &Netns,
        dst: Ipv4Addr,
        port: u16,
        flows: u16,
        interval: Duration,
    ) -> Result<Probes, String> {
        let rx = to
            .udp_bind(SocketAddr::from((dst, port)))
            .map_err(|e| e.to_string())?;
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let mut txs: Vec<UdpSocket> = Vec::new();
        for f in 0..flows {
            let s = from
                .udp_bind(SocketAddr::from((src, 41000 + f)))
                .map_err(|e| e.to_string())?;
            txs.push(s);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let got: Arc<Mutex<Vec<Vec<Option<Instant>>>>> =
            Arc::new(Mutex::new(vec![Vec::new(); usize::from(flows)]));
        let sent: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        {
            let (stop, got) = (stop.clone(), got.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let until = Instant::now() + LONGEST;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let Ok((n, _)) = rx.recv_from(&mut buf) else {
                        continue;
                    };
                    if n < 8 {
                        continue;
                    }
                    let flow = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    let seq = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                    let mut g = got.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(v) = g.get_mut(flow)
                        && seq < 100_000_000
                    {
                        if v.len() <= seq {
                            v.resize(seq + 1, None);
                        }
                        v[seq].get_or_insert(Instant::now());
                    }
                }
            }));
        }
        {
            let (stop, sent) = (stop.clone(), sent.clone());
            threads.push(std::thread::spawn(move || {
                let t0 = Instant::now();
                let until = t0 + LONGEST;
                let mut seq: u32 = 0;
                let dst = SocketAddr::from((dst, port));
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    let at = t0 + interval * seq;
                    if let Some(d) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    sent.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Instant::now());
                    for (f, s) in txs.iter().enumerate() {
                        let mut m = [0u8; 32];
                        m[..4].copy_from_slice(&(f as u32).to_be_bytes());
                        m[4..8].copy_from_slice(&seq.to_be_bytes());
                        let _ = s.send_to(&m, dst);
                    }
                    seq += 1;
                }
            }));
        }
        Ok(Probes {
            stop,
            got,
            sent,
            interval,
            threads,
        })
    }

    /// The next sequence number to be sent.
    pub(crate) fn mark(&self) -> usize {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether every flow has received a probe sent at or after `seq`.
    pub(crate) fn received_since(&self, seq: usize) -> bool {
        let g = self.got.lock().unwrap_or_else(|e| e.into_inner());
        g.iter().all(|v| v.iter().skip(seq).any(Option::is_some))
    }

    /// Figures for sequence numbers `from..to`.
    pub(crate) fn figures(&self, from: usize, to: usize) -> Flows {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let got = self.got.lock().unwrap_or_else(|e| e.into_inner());
        let to = to.min(sent.len());
        let mut out = Flows {
            sent: (to.saturating_sub(from) * got.len()) as u64,
            ..Flows::default()
        };
        for v in got.iter() {
            let mut flow_lost = 0;
            let mut run_start: Option<usize> = None;
            for seq in from..to {
                if v.get(seq).is_some_and(Option::is_some) {
                    if let Some(s) = run_start.take() {
                        out.worst_gap = out
                            .worst_gap
                            .max(sent[seq].saturating_duration_since(sent[s]));
                    }
                } else {
                    flow_lost += 1;
                    run_start.get_or_insert(seq);
                }
            }
            // Nothing received until the end of the window: the gap runs to its end.
            if let Some(s) = run_start
                && let Some(last) = to.checked_sub(1).and_then(|l| sent.get(l))
            {
                out.worst_gap = out
                    .worst_gap
                    .max(last.saturating_duration_since(sent[s]) + self.interval);
            }
            if flow_lost > 0 {
                out.flows_hit += 1;
            }
            out.per_flow.push(flow_lost);
            out.lost += flow_lost;
        }
        out
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_losses_and_flows_hit_per_window() {
        let flows = 8;
        let p = Probes {
            stop: Arc::new(AtomicBool::new(true)),
            got: Arc::new(Mutex::new(vec![Vec::new(); flows])),
            sent: Arc::new(Mutex::new(Vec::new())),
            interval: Duration::from_millis(10),
            threads: Vec::new(),
        };
        let t0 = Instant::now();
        {
            let mut sent = p.sent.lock().unwrap();
            for k in 0..100u32 {
                sent.push(t0 + Duration::from_millis(10) * k);
            }
            let mut got = p.got.lock().unwrap();
            for (f, v) in got.iter_mut().enumerate() {
                for seq in 0..100usize {
                    // Flow 3 loses 20..30 (100 ms); flow 5 loses the tail 95..100.
                    let lost = (f == 3 && (20..30).contains(&seq)) || (f == 5 && seq >= 95);
                    v.push((!lost).then_some(t0));
                }
            }
        }
        let f = p.figures(0, 100);
        assert_eq!(f.sent, 100 * flows as u64);
        assert_eq!(f.lost, 15);
        assert_eq!(f.flows_hit, 2);
        assert_eq!(f.per_flow[3], 10);
        assert_eq!(f.worst_gap, Duration::from_millis(100));
        let f = p.figures(40, 90);
        assert_eq!((f.lost, f.flows_hit, f.worst_gap), (0, 0, Duration::ZERO));
        assert!(p.received_since(90) && !p.received_since(99));
    }
}
