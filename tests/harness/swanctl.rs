//! Generator of swanctl.conf connections (strongSwan's `swanctl.conf(5)`) for a PSK site-to-site
//! IKEv2 peer (RFC 7296) with UDP-encapsulated ESP (RFC 3948), from a small struct.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use zeroize::Zeroizing;

/// One IKE connection with one Child SA. Defaults: IKEv2, `aes256gcm16-prfsha256-ecp256` IKE,
/// `aes256gcm16` ESP, any-to-any selectors, `encap = yes` (needed by kernel-libipsec), no MOBIKE
/// (Azure does not do it), `start_action = none`.
#[derive(Clone)]
pub struct SwanConn {
    /// Connection (IKE) name.
    pub name: String,
    /// Child SA name.
    pub child: String,
    /// Local underlay address.
    pub local_addr: IpAddr,
    /// Remote underlay address.
    pub remote_addr: IpAddr,
    /// Local IKE identity (default: the local address).
    pub local_id: Option<String>,
    /// Remote IKE identity (default: the remote address).
    pub remote_id: Option<String>,
    /// Pre-shared key (written hex-encoded).
    pub psk: Zeroizing<String>,
    /// IKE proposals, strongSwan syntax.
    pub ike_proposals: String,
    /// ESP proposals, strongSwan syntax.
    pub esp_proposals: String,
    /// Local traffic selectors.
    pub local_ts: Vec<String>,
    /// Remote traffic selectors.
    pub remote_ts: Vec<String>,
    /// Force UDP encapsulation.
    pub encap: bool,
    /// MOBIKE.
    pub mobike: bool,
    /// IKE SA rekey time (`rekey_time`, over_time is 10 % of it).
    pub ike_rekey_time: Option<Duration>,
    /// Child SA rekey time; `life_time` is set to 110 % unless given.
    pub child_rekey_time: Option<Duration>,
    /// Child SA hard life time.
    pub child_life_time: Option<Duration>,
    /// Child SA rekey volume; `life_bytes` is set to 110 % unless given.
    pub child_rekey_bytes: Option<u64>,
    /// Child SA hard volume.
    pub child_life_bytes: Option<u64>,
    /// Dead peer detection interval.
    pub dpd_delay: Option<Duration>,
    /// `start_action` of the child (`none`, `trap`, `start`).
    pub start_action: String,
    /// `dpd_action` of the child (`clear`, `trap`, `restart`), if set.
    pub dpd_action: Option<String>,
    /// `close_action`, if set.
    pub close_action: Option<String>,
    /// Remote IKE port, if not 500.
    pub remote_port: Option<u16>,
    /// Extra lines inside the connection section.
    pub extra_conn: Vec<String>,
    /// Extra lines inside the child section.
    pub extra_child: Vec<String>,
    /// More Child SAs of the same connection, with the same settings: (name, local_ts,
    /// remote_ts). Azure's policy-based gateways use one per on-prem x VNet prefix pair.
    pub more_children: Vec<(String, Vec<String>, Vec<String>)>,
}

impl std::fmt::Debug for SwanConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwanConn")
            .field("name", &self.name)
            .field("child", &self.child)
            .field("local_addr", &self.local_addr)
            .field("remote_addr", &self.remote_addr)
            .field("ike_proposals", &self.ike_proposals)
            .field("esp_proposals", &self.esp_proposals)
            .field("local_ts", &self.local_ts)
            .field("remote_ts", &self.remote_ts)
            .field("psk", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

fn check_token(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,@=*[]".contains(&b))
    {
        bail!("{what} `{s}` contains characters swanctl.conf would misread");
    }
    Ok(())
}

impl SwanConn {
    /// A connection named `name` (child `name-child` is `"net"`) with defaults.
    pub fn new(name: &str, local_addr: IpAddr, remote_addr: IpAddr, psk: &str) -> SwanConn {
        SwanConn {
            name: name.to_string(),
            child: "net".to_string(),
            local_addr,
            remote_addr,
            local_id: None,
            remote_id: None,
            psk: Zeroizing::new(psk.to_string()),
            ike_proposals: "aes256gcm16-prfsha256-ecp256".to_string(),
            esp_proposals: "aes256gcm16".to_string(),
            local_ts: vec!["0.0.0.0/0".to_string()],
            remote_ts: vec!["0.0.0.0/0".to_string()],
            encap: true,
            mobike: false,
            ike_rekey_time: None,
            child_rekey_time: None,
            child_life_time: None,
            child_rekey_bytes: None,
            child_life_bytes: None,
            dpd_delay: None,
            start_action: "none".to_string(),
            dpd_action: None,
            close_action: None,
            remote_port: None,
            extra_conn: Vec::new(),
            extra_child: Vec::new(),
            more_children: Vec::new(),
        }
    }

    /// Sets the traffic selectors.
    pub fn ts(mut self, local: &[&str], remote: &[&str]) -> Self {
        self.local_ts = local.iter().map(|s| s.to_string()).collect();
        self.remote_ts = remote.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the proposals.
    pub fn proposals(mut self, ike: &str, esp: &str) -> Self {
        self.ike_proposals = ike.to_string();
        self.esp_proposals = esp.to_string();
        self
    }

    /// The same connection seen from the other end (addresses, identities and selectors swapped).
    pub fn mirrored(&self) -> SwanConn {
        let mut m = self.clone();
        std::mem::swap(&mut m.local_addr, &mut m.remote_addr);
        std::mem::swap(&mut m.local_id, &mut m.remote_id);
        std::mem::swap(&mut m.local_ts, &mut m.remote_ts);
        for c in &mut m.more_children {
            std::mem::swap(&mut c.1, &mut c.2);
        }
        m.remote_port = None;
        m
    }

    fn local_id(&self) -> String {
        self.local_id
            .clone()
            .unwrap_or_else(|| self.local_addr.to_string())
    }
    fn remote_id(&self) -> String {
        self.remote_id
            .clone()
            .unwrap_or_else(|| self.remote_addr.to_string())
    }

    /// One Child SA per (local, remote) pair, as an Azure policy-based gateway: the first is
    /// `child`, the others `child-2`, `child-3`, ...
    pub fn per_pair(mut self, pairs: &[(&str, &str)]) -> Self {
        let mut it = pairs.iter();
        if let Some((l, r)) = it.next() {
            self.local_ts = vec![l.to_string()];
            self.remote_ts = vec![r.to_string()];
        }
        self.more_children = it
            .enumerate()
            .map(|(k, (l, r))| {
                (
                    format!("{}-{}", self.child, k + 2),
                    vec![l.to_string()],
                    vec![r.to_string()],
                )
            })
            .collect();
        self
    }

    /// The names of every Child SA of the connection.
    pub fn children(&self) -> Vec<String> {
        std::iter::once(self.child.clone())
            .chain(self.more_children.iter().map(|c| c.0.clone()))
            .collect()
    }

    /// The swanctl.conf text (`connections` and `secrets`).
    pub fn render(&self) -> Result<String> {
        check_token("connection name", &self.name)?;
        check_token("child name", &self.child)?;
        check_token("local id", &self.local_id())?;
        check_token("remote id", &self.remote_id())?;
        check_token("IKE proposals", &self.ike_proposals)?;
        check_token("ESP proposals", &self.esp_proposals)?;
        for t in self.local_ts.iter().chain(&self.remote_ts) {
            check_token("traffic selector", t)?;
        }
        check_token("start_action", &self.start_action)?;
        if self.psk.is_empty() {
            bail!("empty PSK");
        }
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w, "connections {{\n  {} {{", self.name);
        let _ = writeln!(w, "    version = 2");
        let _ = writeln!(w, "    local_addrs = {}", self.local_addr);
        let _ = writeln!(w, "    remote_addrs = {}", self.remote_addr);
        if let Some(p) = self.remote_port {
            let _ = writeln!(w, "    remote_port = {p}");
        }
        let _ = writeln!(w, "    proposals = {}", self.ike_proposals);
        let _ = writeln!(w, "    encap = {}", yn(self.encap));
        let _ = writeln!(w, "    mobike = {}", yn(self.mobike));
        if let Some(t) = self.ike_rekey_time {
            let _ = writeln!(w, "    rekey_time = {}", secs(t));
            let _ = writeln!(w, "    over_time = {}", secs(t / 10));
        }
        if let Some(d) = self.dpd_delay {
            let _ = writeln!(w, "    dpd_delay = {}", secs(d));
        }
        for l in &self.extra_conn {
            let _ = writeln!(w, "    {l}");
        }
        let _ = writeln!(
            w,
            "    local {{\n      auth = psk\n      id = {}\n    }}",
            self.local_id()
        );
        let _ = writeln!(
            w,
            "    remote {{\n      auth = psk\n      id = {}\n    }}",
            self.remote_id()
        );
        let _ = writeln!(w, "    children {{");
        let all = std::iter::once((&self.child, &self.local_ts, &self.remote_ts))
            .chain(self.more_children.iter().map(|(n, l, r)| (n, l, r)));
        for (child, local_ts, remote_ts) in all {
            check_token("child name", child)?;
            for t in local_ts.iter().chain(remote_ts) {
                check_token("traffic selector", t)?;
            }
            self.render_child(w, child, local_ts, remote_ts)?;
        }
        let _ = writeln!(w, "    }}\n  }}\n}}");
        let _ = writeln!(
            w,
            "secrets {{\n  ike-{} {{\n    id-1 = {}\n    id-2 = {}\n    secret = 0x{}\n  }}\n}}",
            self.name,
            self.local_id(),
            self.remote_id(),
            hex::encode(self.psk.as_bytes())
        );
        Ok(s)
    }

    fn render_child(
        &self,
        w: &mut String,
        child: &str,
        local_ts: &[String],
        remote_ts: &[String],
    ) -> Result<()> {
        let _ = writeln!(w, "      {child} {{");
        let _ = writeln!(w, "        local_ts = {}", local_ts.join(","));
        let _ = writeln!(w, "        remote_ts = {}", remote_ts.join(","));
        let _ = writeln!(w, "        esp_proposals = {}", self.esp_proposals);
        let _ = writeln!(w, "        start_action = {}", self.start_action);
        if let Some(a) = &self.dpd_action {
            check_token("dpd_action", a)?;
            let _ = writeln!(w, "        dpd_action = {a}");
        }
        if let Some(a) = &self.close_action {
            check_token("close_action", a)?;
            let _ = writeln!(w, "        close_action = {a}");
        }
        // strongSwan: life_time alone leaves rekey_time at 1 h, so always write both of a pair.
        match (self.child_rekey_time, self.child_life_time) {
            (Some(r), l) => {
                let _ = writeln!(w, "        rekey_time = {}", secs(r));
                let _ = writeln!(w, "        life_time = {}", secs(l.unwrap_or(r + r / 10)));
            }
            (None, Some(l)) => {
                let _ = writeln!(w, "        rekey_time = {}", secs(l * 9 / 10));
                let _ = writeln!(w, "        life_time = {}", secs(l));
            }
            (None, None) => {}
        }
        match (self.child_rekey_bytes, self.child_life_bytes) {
            (Some(r), l) => {
                let _ = writeln!(w, "        rekey_bytes = {r}");
                let _ = writeln!(w, "        life_bytes = {}", l.unwrap_or(r + r / 10));
            }
            (None, Some(l)) => {
                let _ = writeln!(w, "        rekey_bytes = {}", l / 10 * 9);
                let _ = writeln!(w, "        life_bytes = {l}");
            }
            (None, None) => {}
        }
        for l in &self.extra_child {
            let _ = writeln!(w, "        {l}");
        }
        let _ = writeln!(w, "      }}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_mirrors() {
        let c = SwanConn::new(
            "gw",
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "psk-1",
        )
        .ts(&["198.18.1.0/24"], &["198.19.1.0/24"]);
        let mut c = c;
        c.child_life_time = Some(Duration::from_secs(100));
        let t = c.render().unwrap();
        assert!(t.contains("local_addrs = 192.0.2.1"));
        assert!(t.contains("encap = yes"));
        assert!(t.contains("local_ts = 198.18.1.0/24"));
        assert!(t.contains("rekey_time = 90s") && t.contains("life_time = 100s"));
        assert!(t.contains(&format!("secret = 0x{}", hex::encode("psk-1"))));
        let pp = c.clone().per_pair(&[
            ("198.18.1.0/25", "198.19.1.0/25"),
            ("198.18.1.128/25", "198.19.1.0/25"),
        ]);
        let t = pp.render().unwrap();
        assert_eq!(pp.children(), vec!["net", "net-2"]);
        assert!(
            t.contains("      net {\n        local_ts = 198.18.1.0/25\n"),
            "{t}"
        );
        assert!(
            t.contains("      net-2 {\n        local_ts = 198.18.1.128/25\n"),
            "{t}"
        );
        assert_eq!(t.matches("esp_proposals").count(), 2);
        let m = c.mirrored().render().unwrap();
        assert!(m.contains("local_addrs = 192.0.2.2") && m.contains("remote_ts = 198.18.1.0/24"));
        assert!(!format!("{c:?}").contains("psk-1"));
    }

    #[test]
    fn refuses_injection() {
        let mut c = SwanConn::new(
            "gw",
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "x",
        );
        c.esp_proposals = "aes256gcm16\n}\nevil {".into();
        assert!(c.render().is_err());
    }
}
