//! Links, addresses, routes and impairments inside namespaces (`ip-link(8)`, `ip-address(8)`,
//! `ip-route(8)`, `tc-netem(8)`, `tc-tbf(8)`, nftables); every address is checked by [`crate::addr`].

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use crate::addr::{Ipv4Cidr, check_addr, check_cidr};
use crate::ns::run;
use crate::{Error, Netns, Result};

/// Checks an interface name: 1-15 bytes (`IFNAMSIZ` - 1), no `/`, whitespace or `:`.
pub fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason: "interface names are 1-15 printable bytes without / or :",
        })
    }
}

/// Creates a veth pair with one end, `a_name`, directly in `a` and the other, `b_name`, directly in
/// `b` (nothing ever appears in the root namespace), and sets both ends up.
pub fn veth_pair(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    check_ifname(a_name)?;
    check_ifname(b_name)?;
    run(Command::new("ip").args([
        "link",
        "add",
        "name",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ]))?;
    a.link_up(a_name)?;
    b.link_up(b_name)
}

/// Network emulation parameters for `tc qdisc ... netem` (only on kernels with `sch_netem`; this
/// project's CI kernel lacks it, see [`Netns::set_loss`] and [`Netns::rate_limit`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Netem {
    /// Added one-way delay.
    pub delay: Option<Duration>,
    /// Delay variation (needs `delay`).
    pub jitter: Option<Duration>,
    /// Random loss in percent.
    pub loss_percent: Option<f64>,
    /// Reordering in percent (needs `delay`).
    pub reorder_percent: Option<f64>,
    /// Duplication in percent.
    pub duplicate_percent: Option<f64>,
    /// Rate limit in kbit/s.
    pub rate_kbit: Option<u64>,
    /// Queue limit in packets.
    pub limit: Option<u32>,
}

impl Netem {
    /// The `tc` arguments after `netem`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let us = |d: Duration| format!("{}us", d.as_micros());
        if let Some(l) = self.limit {
            a.extend(["limit".into(), l.to_string()]);
        }
        if let Some(d) = self.delay {
            a.extend(["delay".into(), us(d)]);
            if let Some(j) = self.jitter {
                a.push(us(j));
            }
        }
        if let Some(p) = self.loss_percent {
            a.extend(["loss".into(), format!("{p}%")]);
        }
        if let Some(p) = self.reorder_percent {
            a.extend(["reorder".into(), format!("{p}%")]);
        }
        if let Some(p) = self.duplicate_percent {
            a.extend(["duplicate".into(), format!("{p}%")]);
        }
        if let Some(r) = self.rate_kbit {
            a.extend(["rate".into(), format!("{r}kbit")]);
        }
        a
    }
}

fn nft_table_name(dev: &str) -> String {
    let clean: String = dev
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("netns_loss_{clean}")
}

impl Netns {
    /// Whether interface `dev` exists here.
    pub fn link_exists(&self, dev: &str) -> bool {
        check_ifname(dev).is_ok() && self.exec(["ip", "link", "show", "dev", dev]).is_ok()
    }

    /// Sets `dev` up.
    pub fn link_up(&self, dev: &str) -> Result<()> {
        check_ifname(dev)?;
        self.exec(["ip", "link", "set", "dev", dev, "up"]).map(drop)
    }

    /// Sets `dev` down.
    pub fn link_down(&self, dev: &str) -> Result<()> {
        check_ifname(dev)?;
        self.exec(["ip", "link", "set", "dev", dev, "down"])
            .map(drop)
    }

    /// Sets the MTU of `dev`.
    pub fn set_mtu(&self, dev: &str, mtu: u32) -> Result<()> {
        check_ifname(dev)?;
        self.exec(["ip", "link", "set", "dev", dev, "mtu", &mtu.to_string()])
            .map(drop)
    }

    /// Deletes interface `dev` (for a veth, both ends).
    pub fn del_link(&self, dev: &str) -> Result<()> {
        check_ifname(dev)?;
        self.exec(["ip", "link", "del", "dev", dev]).map(drop)
    }

    /// Adds `cidr` (e.g. `198.18.1.10/24`) to `dev`; refused outside the allowed ranges.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> Result<Ipv4Cidr> {
        check_ifname(dev)?;
        let c = check_cidr(cidr)?;
        self.exec(["ip", "addr", "add", &c.to_string(), "dev", dev])?;
        Ok(c)
    }

    /// Removes `cidr` from `dev`.
    pub fn del_addr(&self, dev: &str, cidr: &str) -> Result<()> {
        check_ifname(dev)?;
        let c = check_cidr(cidr)?;
        self.exec(["ip", "addr", "del", &c.to_string(), "dev", dev])
            .map(drop)
    }

    /// The IPv4 addresses on `dev` (`ip -4 -o addr show`).
    pub fn addrs(&self, dev: &str) -> Result<Vec<Ipv4Cidr>> {
        check_ifname(dev)?;
        let out = self.exec(["ip", "-4", "-o", "addr", "show", "dev", dev])?;
        let mut v = Vec::new();
        for line in out.lines() {
            let mut it = line.split_whitespace();
            while let Some(tok) = it.next() {
                if tok == "inet"
                    && let Some(a) = it.next()
                {
                    v.push(a.parse()?);
                }
            }
        }
        Ok(v)
    }

    fn route_args(dest: &str, via: Option<Ipv4Addr>, dev: Option<&str>) -> Result<Vec<String>> {
        let mut a = Vec::new();
        if dest == "default" {
            a.push("default".to_string());
        } else {
            a.push(check_cidr(dest)?.net().to_string());
        }
        if let Some(v) = via {
            check_addr(IpAddr::V4(v))?;
            a.extend(["via".to_string(), v.to_string()]);
        }
        if let Some(d) = dev {
            check_ifname(d)?;
            a.extend(["dev".to_string(), d.to_string()]);
        }
        if via.is_none() && dev.is_none() {
            return Err(Error::InvalidName {
                name: dest.to_string(),
                reason: "a route needs a gateway or a device",
            });
        }
        Ok(a)
    }

    /// Adds a route to `dest` (`a.b.c.d/len` in the allowed ranges, or `default`) via a gateway.
    pub fn add_route(&self, dest: &str, via: Ipv4Addr) -> Result<()> {
        let mut a = vec!["ip".to_string(), "route".into(), "add".into()];
        a.extend(Self::route_args(dest, Some(via), None)?);
        self.exec(a).map(drop)
    }

    /// Adds or replaces a route to `dest` through a gateway and/or a device.
    pub fn replace_route(
        &self,
        dest: &str,
        via: Option<Ipv4Addr>,
        dev: Option<&str>,
    ) -> Result<()> {
        let mut a = vec!["ip".to_string(), "route".into(), "replace".into()];
        a.extend(Self::route_args(dest, via, dev)?);
        self.exec(a).map(drop)
    }

    /// Adds a route to `dest` straight into a device (e.g. a TUN interface).
    pub fn add_route_dev(&self, dest: &str, dev: &str) -> Result<()> {
        let mut a = vec!["ip".to_string(), "route".into(), "add".into()];
        a.extend(Self::route_args(dest, None, Some(dev))?);
        self.exec(a).map(drop)
    }

    /// Deletes the route to `dest` in the main table.
    pub fn del_route(&self, dest: &str) -> Result<()> {
        let d = if dest == "default" {
            "default".to_string()
        } else {
            check_cidr(dest)?.net().to_string()
        };
        self.exec(["ip", "route", "del", &d]).map(drop)
    }

    /// `ip route get ADDR` output: which route the kernel would pick.
    pub fn route_get(&self, addr: Ipv4Addr) -> Result<String> {
        self.exec(["ip", "route", "get", &addr.to_string()])
    }

    /// Applies `tc netem` to `dev` (replacing its root qdisc). Returns [`Error::Unsupported`] on a
    /// kernel without `sch_netem` (such as the CI kernel of this project).
    pub fn netem(&self, dev: &str, netem: &Netem) -> Result<()> {
        check_ifname(dev)?;
        let mut a: Vec<String> = ["tc", "qdisc", "replace", "dev", dev, "root", "netem"]
            .map(String::from)
            .to_vec();
        a.extend(netem.to_args());
        match self.exec(a) {
            Err(Error::Command { stderr, .. })
                if stderr.contains("nknown qdisc")
                    || stderr.contains("kind is unknown")
                    || stderr.contains("No such file") =>
            {
                Err(Error::Unsupported(format!(
                    "tc netem (CONFIG_NET_SCH_NETEM) on {dev}: {stderr}; use set_loss (nftables) and rate_limit (tbf)"
                )))
            }
            r => r.map(drop),
        }
    }

    /// Limits egress of `dev` to `kbit` kbit/s with a token bucket (`tc tbf`), replacing the root qdisc.
    pub fn rate_limit(&self, dev: &str, kbit: u64) -> Result<()> {
        check_ifname(dev)?;
        // Burst: at least 10 ms worth of traffic and a few full-size frames.
        let burst_bytes = (kbit * 1000 / 8 / 100).max(16 * 1514);
        self.exec([
            "tc",
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{kbit}kbit"),
            "burst",
            &burst_bytes.to_string(),
            "latency",
            "50ms",
        ])
        .map(drop)
    }

    /// Removes the root qdisc of `dev` (netem or tbf); no error if there is none.
    pub fn clear_qdisc(&self, dev: &str) -> Result<()> {
        check_ifname(dev)?;
        match self.exec(["tc", "qdisc", "del", "dev", dev, "root"]) {
            Err(Error::Command { stderr, .. })
                if stderr.contains("No such file")
                    || stderr.contains("Cannot delete qdisc with handle of zero") =>
            {
                Ok(())
            }
            r => r.map(drop),
        }
    }

    /// Drops `percent` (0-100, resolution 0.01) of the packets leaving through `dev`, at random,
    /// with an nftables rule (works without `sch_netem`). Replaces an earlier setting for `dev`.
    pub fn set_loss(&self, dev: &str, percent: f64) -> Result<()> {
        check_ifname(dev)?;
        if !(0.0..=100.0).contains(&percent) {
            return Err(Error::InvalidName {
                name: percent.to_string(),
                reason: "loss must be 0-100 %",
            });
        }
        self.clear_loss(dev)?;
        let per_10k = (percent * 100.0).round() as u32;
        if per_10k == 0 {
            return Ok(());
        }
        let matcher = if per_10k >= 10_000 {
            String::new()
        } else {
            format!("numgen random mod 10000 < {per_10k} ")
        };
        let table = nft_table_name(dev);
        self.nft(&format!(
            "table inet {table} {{\n  chain post {{\n    type filter hook postrouting priority 0; policy accept;\n    \
             oifname \"{dev}\" {matcher}counter drop\n  }}\n}}\n"
        ))
    }

    /// Removes the loss set by [`Netns::set_loss`] for `dev` (no error if none).
    pub fn clear_loss(&self, dev: &str) -> Result<()> {
        check_ifname(dev)?;
        let table = nft_table_name(dev);
        if self.exec(["nft", "list", "table", "inet", &table]).is_ok() {
            self.exec(["nft", "delete", "table", "inet", &table])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames() {
        assert!(check_ifname("wan0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(check_ifname("abcdefghijklmnop").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a b").is_err());
    }

    #[test]
    fn netem_args() {
        let n = Netem {
            delay: Some(Duration::from_millis(10)),
            jitter: Some(Duration::from_millis(2)),
            loss_percent: Some(1.5),
            ..Default::default()
        };
        assert_eq!(n.to_args().join(" "), "delay 10000us 2000us loss 1.5%");
    }

    #[test]
    fn route_args_refuse_foreign() {
        assert!(Netns::route_args("10.0.0.0/8", Some("192.0.2.1".parse().unwrap()), None).is_err());
        assert!(
            Netns::route_args("198.19.1.0/24", Some("10.0.0.1".parse().unwrap()), None).is_err()
        );
        assert!(Netns::route_args("198.19.1.0/24", None, None).is_err());
        assert_eq!(
            Netns::route_args("198.19.1.7/24", Some("192.0.2.2".parse().unwrap()), None)
                .unwrap()
                .join(" "),
            "198.19.1.0/24 via 192.0.2.2"
        );
    }
}
