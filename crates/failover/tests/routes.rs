//! The route manager against a real kernel routing table in a network namespace: floating backup
//! routes, override routes, their removal, and the per-prefix status read back from the kernel.

use std::time::{Duration, SystemTime};

use failover::monitor::PathState;
use failover::routes::{
    Carrier, RouteConfig, RouteError, RouteManager, ignore_routes_with_linkdown,
};
use netns::{Netns, veth_pair};

fn routes(ns: &Netns) -> String {
    ns.exec(["ip", "route", "show", "198.19.1.0/24"]).unwrap()
}

/// Whether a route of `routes` has metric `m`.
fn has_metric(routes: &str, m: &str) -> bool {
    routes.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.windows(2).any(|p| p[0] == "metric" && p[1] == m)
    })
}

#[test]
fn backup_override_failback_and_status() {
    let rtr = Netns::new("fo-routes").unwrap();
    let far = Netns::new("fo-routes-far").unwrap();
    veth_pair(&rtr, "er0", &far, "er0").unwrap();
    veth_pair(&rtr, "tun0", &far, "tun0").unwrap();
    rtr.add_addr("er0", "192.0.2.1/30").unwrap();
    rtr.add_addr("tun0", "169.254.21.1/30").unwrap();
    let er_route = [
        "ip",
        "route",
        "replace",
        "198.19.1.0/24",
        "via",
        "192.0.2.2",
        "dev",
        "er0",
        "metric",
        "100",
    ];

    rtr.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let mut cfg = RouteConfig::new(vec!["198.19.1.0/24".parse().unwrap()], "tun0", "er0");
            cfg.tunnel_gateway = Some("169.254.21.2".parse().unwrap());

            // Bad configurations are refused before anything is installed.
            let mut bad = cfg.clone();
            bad.tunnel_interface = "nosuch0".into();
            assert!(matches!(
                RouteManager::new(handle.clone(), bad).await,
                Err(RouteError::NoInterface(n)) if n == "nosuch0"
            ));
            let mut bad = cfg.clone();
            bad.override_metric = bad.backup_metric;
            assert!(matches!(
                RouteManager::new(handle.clone(), bad).await,
                Err(RouteError::Config(_))
            ));

            ignore_routes_with_linkdown("er0").unwrap();
            assert!(ignore_routes_with_linkdown("../x").is_err());
            let mut rm = RouteManager::new(handle, cfg).await.unwrap();
            let status = rm.status_handle();

            // Nothing installed yet: unreachable.
            let st = rm.refresh(SystemTime::now()).await.unwrap();
            assert_eq!(st[0].carrier, Carrier::Unreachable);

            // The floating route alone carries the prefix.
            rm.install_backup().await.unwrap();
            rm.install_backup().await.unwrap(); // idempotent
            let r = routes(&rtr);
            assert!(
                r.contains("via 169.254.21.2 dev tun0 proto static metric 200"),
                "{r}"
            );
            let t0 = SystemTime::now();
            let st = rm.refresh(t0).await.unwrap();
            assert_eq!(st[0].carrier, Carrier::Tunnel);
            assert_eq!(st[0].since, t0);

            // The ExpressRoute route (metric 100) wins over it.
            rtr.exec(er_route).unwrap();
            let t1 = SystemTime::now();
            let st = rm.refresh(t1).await.unwrap();
            assert_eq!(st[0].carrier, Carrier::Primary);
            assert_eq!(st[0].since, t1);
            // No change: `since` stays.
            let st = rm.refresh(t1 + Duration::from_secs(5)).await.unwrap();
            assert_eq!(st[0].since, t1);
            assert_eq!(status.snapshot(), st);

            // Monitor says down: the override (metric 10) wins although the ER route is there.
            rm.apply(PathState::Down).await.unwrap();
            assert!(rm.is_overriding());
            let r = routes(&rtr);
            assert!(
                r.contains("dev tun0 proto static metric 10") && has_metric(&r, "10"),
                "{r}"
            );
            assert!(r.contains("via 192.0.2.2 dev er0"), "{r}");
            let st = rm.refresh(SystemTime::now()).await.unwrap();
            assert_eq!(st[0].carrier, Carrier::Tunnel);
            assert!(st[0].overridden);
            let line = st[0].describe(SystemTime::now());
            assert!(
                line.starts_with("198.19.1.0/24 via vpn for ")
                    && line.ends_with("(failover override)"),
                "{line}"
            );

            // Back up: the override goes, ExpressRoute carries again.
            rm.apply(PathState::Up).await.unwrap();
            rm.fail_back().await.unwrap(); // idempotent
            let r = routes(&rtr);
            assert!(!has_metric(&r, "10"), "{r}");
            assert_eq!(
                rm.refresh(SystemTime::now()).await.unwrap()[0].carrier,
                Carrier::Primary
            );

            // Carrier loss on the circuit (the far end goes down): with ignore_routes_with_linkdown
            // the kernel falls back on the floating route by itself, no monitor needed.
            far.link_down("er0").unwrap();
            let mut carrier = Carrier::Primary;
            for _ in 0..100 {
                carrier = rm.refresh(SystemTime::now()).await.unwrap()[0].carrier;
                if carrier == Carrier::Tunnel {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(carrier, Carrier::Tunnel);
            let r = routes(&rtr);
            assert!(r.contains("linkdown"), "{r}");
            far.link_up("er0").unwrap();

            // A restarted manager cleans up an override left behind by an earlier run.
            rm.apply(PathState::Down).await.unwrap();
            let (conn2, handle2, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn2);
            let mut rm2 = RouteManager::new(handle2, rm.config().clone())
                .await
                .unwrap();
            rm2.install_backup().await.unwrap();
            let r = routes(&rtr);
            assert!(!has_metric(&r, "10") && has_metric(&r, "200"), "{r}");

            // Everything installed goes; the ER route stays.
            rm.apply(PathState::Down).await.unwrap();
            rm.remove_all().await.unwrap();
            rm.remove_all().await.unwrap(); // idempotent
            let r = routes(&rtr);
            assert!(!r.contains("tun0"), "{r}");
            assert!(r.contains("dev er0"), "{r}");
        });
    });
}
