//! Root-only tests of the `netns` crate against the real kernel: namespaces, processes, sockets,
//! links, the address rule and the standard lab topology.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use netns::topology::{HOST_IF, Lab, WAN_IF};
use netns::{Error, Netem, Netns, veth_pair};

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

#[test]
fn namespace_lifecycle_and_exec() {
    let ns = Netns::new("nst").unwrap();
    let name = ns.name().to_string();
    assert!(Path::new("/run/netns").join(&name).exists());
    let lo = ns.exec(["ip", "-o", "link", "show", "lo"]).unwrap();
    assert!(lo.contains("UP"), "loopback not up: {lo}");
    // Only lo exists in a fresh namespace.
    assert_eq!(ns.exec(["ip", "-o", "link"]).unwrap().lines().count(), 1);
    match ns.exec(["ip", "link", "show", "nosuchdev"]) {
        Err(Error::Command { stderr, cmd, .. }) => {
            assert!(
                stderr.contains("nosuchdev") || stderr.contains("does not exist"),
                "{stderr}"
            );
            assert!(cmd.contains(&name));
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    assert!(matches!(
        ns.exec(["/nonexistent/prog"]),
        Err(Error::Command { .. })
    ));
    drop(ns);
    assert!(
        !Path::new("/run/netns").join(&name).exists(),
        "namespace {name} left behind"
    );
}

#[test]
fn spawned_process_is_stopped_by_its_guard_and_by_the_namespace() {
    let ns = Netns::new("nst").unwrap();
    let p = ns.spawn(["sleep", "60"]).unwrap();
    let pid = p.pid();
    assert!(p.is_running());
    // `ip netns exec` joins the namespace and then execs the program under the same PID.
    for _ in 0..200 {
        if !ns.pids().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        ns.pids(),
        vec![pid],
        "the PID is the program's, not a wrapper's"
    );
    drop(p);
    assert!(!pid_alive(pid), "sleep {pid} survived its Proc");

    let p2 = ns.spawn(["sleep", "60"]).unwrap();
    let pid2 = p2.pid();
    std::mem::forget(p2); // the namespace must still stop it
    let name = ns.name().to_string();
    drop(ns);
    assert!(!pid_alive(pid2), "sleep {pid2} survived its namespace");
    assert!(!Path::new("/run/netns").join(name).exists());
}

#[test]
fn process_exit_status_and_term_handling() {
    let ns = Netns::new("nst").unwrap();
    let p = ns.spawn(["true"]).unwrap();
    let st = p
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("true exits");
    assert!(st.success());
    assert!(!p.is_running());
    // A process that ignores SIGTERM is killed after the grace period.
    let p = ns.spawn(["sh", "-c", "trap '' TERM; sleep 30"]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let st = p
        .stop_with(
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_millis(200),
        )
        .unwrap();
    assert!(!st.success());
}

#[test]
fn run_in_creates_sockets_in_the_namespace() {
    let a = Netns::new("nst").unwrap();
    let b = Netns::new("nst").unwrap();
    veth_pair(&a, "va", &b, "vb").unwrap();
    a.add_addr("va", "203.0.113.1/24").unwrap();
    b.add_addr("vb", "203.0.113.2/24").unwrap();
    assert!(!a.link_exists("vb") && b.link_exists("vb"));
    // The thread sees the namespace's interfaces.
    let ifaces = a.run_in(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
    assert!(ifaces.contains("va:") && !ifaces.contains("vb:"));

    let rx = b.udp_bind("203.0.113.2:5555".parse().unwrap()).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tx = a.udp_bind("203.0.113.1:0".parse().unwrap()).unwrap();
    tx.send_to(b"hello", "203.0.113.2:5555").unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = rx.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(
        from.ip(),
        "203.0.113.1".parse::<std::net::IpAddr>().unwrap()
    );

    let l = b.tcp_listen("203.0.113.2:0".parse().unwrap()).unwrap();
    let port = l.local_addr().unwrap().port();
    let _c = a
        .tcp_connect(
            SocketAddr::from(([203, 0, 113, 2], port)),
            Duration::from_secs(5),
        )
        .unwrap();
    let (_s, peer) = l.accept().unwrap();
    assert_eq!(peer.ip().to_string(), "203.0.113.1");
    // The address does not exist in the root namespace.
    assert!(std::net::UdpSocket::bind("203.0.113.2:0").is_err());
}

#[test]
fn foreign_addresses_are_refused() {
    let ns = Netns::new("nst").unwrap();
    let peer = Netns::new("nst").unwrap();
    veth_pair(&ns, "d0", &peer, "d1").unwrap();
    for bad in ["10.1.2.3/24", "192.168.1.1/24", "198.18.0.1/8", "8.8.8.8"] {
        assert!(
            matches!(ns.add_addr("d0", bad), Err(Error::AddressNotAllowed(_))),
            "{bad} accepted"
        );
    }
    assert!(
        ns.add_route("10.0.0.0/8", Ipv4Addr::new(192, 0, 2, 9))
            .is_err()
    );
    assert!(ns.addrs("d0").unwrap().is_empty());
    ns.add_addr("d0", "169.254.21.1/30").unwrap();
    assert_eq!(ns.addrs("d0").unwrap()[0].to_string(), "169.254.21.1/30");
    assert!(ns.sysctl_set("kernel.hostname", "x").is_err());
}

#[test]
fn sysctl_is_per_namespace() {
    let ns = Netns::new("nst").unwrap();
    ns.set_forwarding(true).unwrap();
    assert_eq!(ns.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(
        ns.exec(["cat", "/proc/sys/net/ipv4/ip_forward"])
            .unwrap()
            .trim(),
        "1"
    );
    let other = Netns::new("nst").unwrap();
    assert_eq!(other.sysctl_get("net.ipv4.ip_forward").unwrap(), "0");
}

fn ping(ns: &Netns, to: Ipv4Addr) -> bool {
    ns.exec(["ping", "-c", "1", "-W", "2", "-q", &to.to_string()])
        .is_ok()
}

#[test]
fn lab_routes_end_to_end_in_clear() {
    let lab = Lab::builder()
        .prefix("nst")
        .plain_routes(true)
        .build()
        .unwrap();
    assert!(ping(&lab.onprem_host, lab.azure_host_ip));
    assert!(ping(&lab.azure_host, lab.onprem_host_ip));
    assert!(ping(&lab.onprem_gw, lab.azure_gw_wan_ip));
    // Nothing of the lab appears in the root namespace.
    let root = std::fs::read_to_string("/proc/net/dev").unwrap();
    assert!(!root.contains("wan0:") && !root.contains("lan0:"));
    lab.del_plain_routes().unwrap();
    assert!(!ping(&lab.onprem_host, lab.azure_host_ip));
    let names: Vec<String> = lab
        .namespaces()
        .iter()
        .map(|n| n.name().to_string())
        .collect();
    drop(lab);
    for n in names {
        assert!(!Path::new("/run/netns").join(n).exists());
    }
}

#[test]
fn lab_with_router_nat_and_impairments() {
    let lab = Lab::builder()
        .prefix("nst")
        .router(true)
        .plain_routes(true)
        .build()
        .unwrap();
    let r = lab.router.as_ref().unwrap();
    assert_eq!(lab.azure_gw_wan_ip, Ipv4Addr::new(198, 51, 100, 2));
    assert!(ping(&lab.onprem_host, lab.azure_host_ip));
    assert!(ping(&lab.onprem_gw, lab.azure_gw_wan_ip));
    // NAT on the router: the Azure gateway sees the router's address.
    r.nft("table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n  oifname \"az0\" masquerade\n }\n}\n").unwrap();
    let l = lab
        .azure_gw
        .udp_bind(SocketAddr::from((lab.azure_gw_wan_ip, 4500)))
        .unwrap();
    l.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let s = lab
        .onprem_gw
        .udp_bind(SocketAddr::from((lab.onprem_gw_wan_ip, 4500)))
        .unwrap();
    s.send_to(b"x", SocketAddr::from((lab.azure_gw_wan_ip, 4500)))
        .unwrap();
    let mut b = [0u8; 4];
    let (_, from) = l.recv_from(&mut b).unwrap();
    assert_eq!(
        from.ip(),
        std::net::IpAddr::V4(lab.router_azure_ip.unwrap())
    );
    // 100 % loss on the router's egress towards Azure, then none.
    r.set_loss("az0", 100.0).unwrap();
    assert!(!ping(&lab.onprem_gw, lab.azure_gw_wan_ip));
    r.clear_loss("az0").unwrap();
    assert!(ping(&lab.onprem_gw, lab.azure_gw_wan_ip));
    r.rate_limit("az0", 100_000).unwrap();
    assert!(ping(&lab.onprem_gw, lab.azure_gw_wan_ip));
    r.clear_qdisc("az0").unwrap();
    r.clear_qdisc("az0").unwrap();
    // netem is either applied or reported as unsupported by this kernel.
    let n = Netem {
        delay: Some(Duration::from_millis(5)),
        ..Default::default()
    };
    match lab.onprem_gw.netem(WAN_IF, &n) {
        Ok(()) => lab.onprem_gw.clear_qdisc(WAN_IF).unwrap(),
        Err(Error::Unsupported(msg)) => eprintln!("netem unsupported here: {msg}"),
        Err(e) => panic!("netem: {e}"),
    }
    assert!(lab.onprem_host.link_exists(HOST_IF));
}

#[test]
fn stale_namespaces_of_dead_processes_are_cleaned() {
    // A name that looks like ours from a PID that cannot exist (above pid_max).
    let name = "nstst-999999999-0";
    std::process::Command::new("ip")
        .args(["netns", "add", name])
        .status()
        .unwrap();
    let deleted = netns::cleanup_stale("nstst").unwrap();
    assert_eq!(deleted, vec![name.to_string()]);
    assert!(!Path::new("/run/netns").join(name).exists());
}

#[test]
fn persist_adopt_and_delete_by_name() {
    let ns = Netns::new("nst").unwrap();
    let p = ns.spawn(["sleep", "60"]).unwrap();
    let pid = p.pid();
    std::mem::forget(p);
    // `spawn` returns once the process is forked; `ip netns exec` enters the namespace a moment
    // later. Wait (bounded) until it is inside before handing the namespace over.
    let inside = || {
        use std::os::unix::fs::MetadataExt;
        let ns_file = std::fs::metadata(Path::new("/run/netns").join(ns.name()));
        let proc_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"));
        matches!((ns_file, proc_ns), (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
    };
    for _ in 0..200 {
        if inside() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(inside(), "the spawned process never entered the namespace");
    let name = ns.persist();
    assert!(
        Path::new("/run/netns").join(&name).exists(),
        "persisted namespace deleted"
    );
    assert!(pid_alive(pid));
    let again = Netns::adopt(&name).unwrap();
    assert_eq!(again.name(), name);
    drop(again);
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert!(
        !pid_alive(pid),
        "process in an adopted namespace survived its deletion"
    );

    let lab = Lab::builder().prefix("nst").build().unwrap();
    let names = lab.persist();
    assert_eq!(names.len(), 4);
    for n in &names {
        netns::delete_named(n).unwrap();
        assert!(!Path::new("/run/netns").join(n).exists());
    }
    assert!(Netns::adopt("nst-no-such-namespace").is_err());
}
