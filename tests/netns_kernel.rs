//! Kernel route installation against real netlink, each test in its own network namespace.
//!
//! Needs root and `ip` (iproute2). Without them a test prints why it was skipped and passes,
//! unless `CI=true`, where it fails instead. The netlink code runs on a thread that entered the
//! namespace with `setns()`, on its own current-thread runtime; the test process's other threads
//! stay in the host namespace. The tunnel device is a `veth` (`mbt0`), which accepts
//! lightweight-tunnel `encap ip6` routes like the production `ip6tnl` does.

mod common;

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};

use common::netns::{ip, run_in_netns, NetnsEnv, TUN};
use metalbondd::kernel::{Installer, KernelError, KernelRoute, Prefix, RTPROT_METALBOND};

/// Runs `body(namespace name)` on a thread inside a fresh namespace (`lo`, and
/// the veth pair `mbt0`/`mbt1` up), on its own runtime; the namespace is
/// deleted afterwards, also when the test panics.
fn in_netns<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let Some(env) = NetnsEnv::for_test(test) else {
        return;
    };
    let name = env.ns.clone();
    run_in_netns(&env.ns, move || body(name));
}

fn prefix(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse::<IpAddr>().unwrap(), l.parse().unwrap())
}

fn hops(list: &[&str]) -> Vec<Ipv6Addr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn route(table: u32, dest: &str, next_hops: &[&str]) -> KernelRoute {
    KernelRoute {
        table,
        dest: prefix(dest),
        next_hops: hops(next_hops),
    }
}

/// `ip -n NS -d [-6] route show table T proto 254`.
fn show(ns: &str, v6: bool, table: u32) -> String {
    let t = table.to_string();
    let mut args = vec!["-n", ns, "-d"];
    if v6 {
        args.push("-6");
    }
    args.extend(["route", "show", "table", &t, "proto", "254"]);
    ip(&args)
}

/// The one route (protocol 254) of table `table`: its route line, its
/// nexthop lines and the whole `ip route show` output (echoed for
/// debugging). Panics unless there is exactly one.
fn the_route(ns: &str, v6: bool, table: u32) -> (String, Vec<String>, String) {
    let out = show(ns, v6, table);
    eprintln!("ip -d route show table {table} proto 254 (IPv6: {v6}):\n{out}");
    let mut routes = parse_show(&out);
    assert_eq!(routes.len(), 1, "{out}");
    let (line, hops) = routes.remove(0);
    (line, hops, out)
}

/// The (route line, nexthop lines) of every route of an `ip route show` output.
fn parse_show(out: &str) -> Vec<(String, Vec<String>)> {
    let mut routes: Vec<(String, Vec<String>)> = Vec::new();
    for line in out.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            routes
                .last_mut()
                .expect("nexthop line after a route line")
                .1
                .push(line.trim().to_owned());
        } else {
            routes.push((line.trim().to_owned(), Vec::new()));
        }
    }
    routes
}

/// Asserts a single-next-hop route line: prefix, `encap ip6 ... dst <nh> `, `dev mbt0`.
fn assert_single(line: &str, dest: &str, nh: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(words.contains(&dest), "{dest} not in {line:?}");
    assert!(line.contains("encap ip6 "), "no encap ip6 in {line:?}");
    assert!(
        line.contains(&format!(" dst {nh} ")),
        "encap dst {nh} not in {line:?}"
    );
    assert!(line.contains(" dev mbt0"), "dev mbt0 not in {line:?}");
    assert!(!line.contains(" via "), "unexpected gateway in {line:?}");
}

/// Asserts the nexthop lines name exactly `expected`, in order, each with encap and device.
fn assert_nexthops(lines: &[String], expected: &[&str]) {
    let got: Vec<String> = lines
        .iter()
        .map(|l| {
            assert!(l.starts_with("nexthop"), "not a nexthop line: {l:?}");
            assert!(l.contains("encap ip6 "), "no encap ip6 in {l:?}");
            assert!(l.contains(" dev mbt0"), "dev mbt0 not in {l:?}");
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "dst").expect("dst");
            words[i + 1].to_owned()
        })
        .collect();
    assert_eq!(got, expected, "nexthops: {lines:#?}");
}

/// The `proto` of the one route of `ip -d route show table T <dest>` (unfiltered by protocol).
fn proto_of(ns: &str, table: u32, dest: &str) -> String {
    let t = table.to_string();
    let family = if dest.contains(':') { "-6" } else { "-4" };
    let out = ip(&["-n", ns, "-d", family, "route", "show", "table", &t, dest]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| *w == "proto")
        .unwrap_or_else(|| panic!("no proto in {out:?}"));
    words[i + 1].to_owned()
}

#[test]
fn ipv4_single_next_hop() {
    in_netns("ipv4_single_next_hop", |ns| async move {
        let inst = Installer::new(TUN).await.expect("installer");
        inst.replace(&route(100, "10.0.1.0/24", &["2001:db8::1"]))
            .await
            .expect("replace");
        let (line, hops, out) = the_route(&ns, false, 100);
        assert!(hops.is_empty(), "not a multipath route: {out}");
        assert_single(&line, "10.0.1.0/24", "2001:db8::1");
        assert_eq!(
            proto_of(&ns, 100, "10.0.1.0/24"),
            RTPROT_METALBOND.to_string()
        );
        // Only in table 100.
        let main = ip(&["-n", &ns, "route", "show", "table", "main"]);
        assert!(!main.contains("10.0.1.0"), "{main}");
        assert_eq!(
            inst.dump(100).await.unwrap(),
            vec![route(100, "10.0.1.0/24", &["2001:db8::1"])]
        );
    });
}

#[test]
fn ipv4_multipath_sorted_replaced_and_shrunk() {
    in_netns(
        "ipv4_multipath_sorted_replaced_and_shrunk",
        |ns| async move {
            let inst = Installer::new(TUN).await.expect("installer");
            let dest = "10.0.2.0/24";
            inst.replace(&route(
                100,
                dest,
                &["2001:db8::3", "2001:db8::1", "2001:db8::2"],
            ))
            .await
            .expect("replace 3");
            let (line, hops, out) = the_route(&ns, false, 100);
            assert!(
                line.starts_with("unicast 10.0.2.0/24 ") || line.starts_with("10.0.2.0/24 "),
                "{out}"
            );
            assert_nexthops(&hops, &["2001:db8::1", "2001:db8::2", "2001:db8::3"]);
            assert_eq!(proto_of(&ns, 100, dest), "254");
            assert_eq!(
                inst.dump(100).await.unwrap(),
                vec![route(
                    100,
                    dest,
                    &["2001:db8::1", "2001:db8::2", "2001:db8::3"]
                )]
            );

            inst.replace(&route(100, dest, &["2001:db8::3", "2001:db8::2"]))
                .await
                .expect("replace 2");
            let (_, hops, _) = the_route(&ns, false, 100);
            assert_nexthops(&hops, &["2001:db8::2", "2001:db8::3"]);

            // Down to one next hop: a plain route again.
            inst.replace(&route(100, dest, &["2001:db8::9"]))
                .await
                .expect("replace 1");
            let (line, hops, out) = the_route(&ns, false, 100);
            assert!(hops.is_empty(), "{out}");
            assert_single(&line, dest, "2001:db8::9");

            // And back to several, duplicates removed.
            inst.replace(&route(
                100,
                dest,
                &["2001:db8::5", "2001:db8::4", "2001:db8::5"],
            ))
            .await
            .expect("replace 2 again");
            let routes = parse_show(&show(&ns, false, 100));
            assert_nexthops(&routes[0].1, &["2001:db8::4", "2001:db8::5"]);
            assert_eq!(
                inst.dump(100).await.unwrap(),
                vec![route(100, dest, &["2001:db8::4", "2001:db8::5"])]
            );
        },
    );
}

#[test]
fn ipv6_destination_in_table_above_255() {
    in_netns("ipv6_destination_in_table_above_255", |ns| async move {
        let inst = Installer::new(TUN).await.expect("installer");
        let dest = "2001:db8:100::/64";
        inst.replace(&route(1000, dest, &["2001:db8::1"]))
            .await
            .expect("replace single");
        let (line, _, _) = the_route(&ns, true, 1000);
        assert_single(&line, dest, "2001:db8::1");
        assert_eq!(proto_of(&ns, 1000, dest), "254");
        // Table 1000 truncated to 8 bits would be 232.
        let t232 = ip(&["-n", &ns, "-6", "route", "show", "table", "all"]);
        assert!(!t232.contains("table 232"), "{t232}");

        inst.replace(&route(
            1000,
            dest,
            &["2001:db8::3", "2001:db8::1", "2001:db8::2"],
        ))
        .await
        .expect("replace multipath");
        let (_, hops, _) = the_route(&ns, true, 1000);
        assert_nexthops(&hops, &["2001:db8::1", "2001:db8::2", "2001:db8::3"]);
        assert_eq!(
            inst.dump(1000).await.unwrap(),
            vec![route(
                1000,
                dest,
                &["2001:db8::1", "2001:db8::2", "2001:db8::3"]
            )]
        );

        inst.replace(&route(1000, dest, &["2001:db8::3", "2001:db8::2"]))
            .await
            .expect("replace 2");
        let (_, hops, _) = the_route(&ns, true, 1000);
        assert_nexthops(&hops, &["2001:db8::2", "2001:db8::3"]);

        inst.replace(&route(1000, dest, &["2001:db8::7"]))
            .await
            .expect("replace 1");
        let (line, hops, out) = the_route(&ns, true, 1000);
        assert!(hops.is_empty(), "{out}");
        assert_single(&line, dest, "2001:db8::7");
        assert_eq!(
            inst.dump(1000).await.unwrap(),
            vec![route(1000, dest, &["2001:db8::7"])]
        );
    });
}

#[test]
fn delete_removes_and_reports_existence() {
    in_netns("delete_removes_and_reports_existence", |ns| async move {
        let inst = Installer::new(TUN).await.expect("installer");
        inst.replace(&route(100, "10.0.3.0/24", &["2001:db8::2", "2001:db8::1"]))
            .await
            .unwrap();
        inst.replace(&route(100, "10.0.4.0/24", &["2001:db8::1"]))
            .await
            .unwrap();
        inst.replace(&route(
            1000,
            "2001:db8:200::/48",
            &["2001:db8::2", "2001:db8::1"],
        ))
        .await
        .unwrap();

        assert!(inst.delete(100, prefix("10.0.3.0/24")).await.unwrap());
        let (line, _, _) = the_route(&ns, false, 100);
        assert_single(&line, "10.0.4.0/24", "2001:db8::1");
        assert!(!inst.delete(100, prefix("10.0.3.0/24")).await.unwrap());

        assert!(inst.delete(100, prefix("10.0.4.0/24")).await.unwrap());
        assert_eq!(show(&ns, false, 100).trim(), "");
        assert!(!inst.delete(100, prefix("10.0.4.0/24")).await.unwrap());

        // IPv6 multipath: every next hop goes.
        assert!(inst
            .delete(1000, prefix("2001:db8:200::/48"))
            .await
            .unwrap());
        assert_eq!(show(&ns, true, 1000).trim(), "");
        assert!(!inst
            .delete(1000, prefix("2001:db8:200::/48"))
            .await
            .unwrap());
        assert_eq!(inst.dump(100).await.unwrap(), vec![]);
        assert_eq!(inst.dump(1000).await.unwrap(), vec![]);
    });
}

/// Many changes queued at once go to the kernel in batches (one socket write,
/// one ACK each); every change still gets its own outcome: deletes of
/// present and missing routes interleaved in one batch report each route's
/// existence, and thousands of replaces (several batches) all land.
#[test]
fn a_batch_reports_each_route_on_its_own() {
    in_netns("a_batch_reports_each_route_on_its_own", |ns| async move {
        let inst = Installer::new(TUN).await.expect("installer");
        let n = 3000u32;
        let dest = |i: u32| {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            Prefix::new(IpAddr::V4(a), 32)
        };
        // Queued at once (each call queues its change before returning).
        let installs: Vec<_> = (0..n)
            .map(|i| {
                inst.replace_owned(KernelRoute {
                    table: 100,
                    dest: dest(i),
                    next_hops: hops(&["2001:db8::1"]),
                })
            })
            .collect();
        for done in installs {
            done.await.expect("replace");
        }
        assert_eq!(inst.dump(100).await.unwrap().len(), n as usize);
        assert_eq!(
            ip(&["-n", &ns, "route", "show", "table", "100"])
                .lines()
                .count(),
            n as usize
        );

        // Every third route deleted first, then a batch deleting all of
        // them (plus invalid ones, rejected before any I/O): each answer
        // names its own route.
        for i in (0..n).step_by(3) {
            assert!(inst.delete(100, dest(i)).await.unwrap());
        }
        let deletes: Vec<_> = (0..n).map(|i| inst.delete_queued(100, dest(i))).collect();
        let zero = inst.delete_queued(0, dest(1));
        let mut existed = Vec::new();
        for done in deletes {
            existed.push(done.await.expect("delete"));
        }
        for (i, e) in existed.iter().enumerate() {
            assert_eq!(*e, i % 3 != 0, "route {i}");
        }
        let err = zero.await.unwrap_err();
        assert!(err.to_string().contains("table 0"), "{err}");
        assert_eq!(inst.dump(100).await.unwrap(), vec![]);
    });
}

#[test]
fn dump_returns_only_our_routes_of_that_table() {
    in_netns(
        "dump_returns_only_our_routes_of_that_table",
        |ns| async move {
            let inst = Installer::new(TUN).await.expect("installer");
            let ours = vec![
                route(100, "10.0.5.0/24", &["2001:db8::1"]),
                route(100, "10.0.6.0/24", &["2001:db8::1", "2001:db8::2"]),
                route(100, "0.0.0.0/0", &["2001:db8::9"]),
                route(100, "2001:db8:300::/64", &["2001:db8::5"]),
                route(100, "2001:db8:301::/64", &["2001:db8::5", "2001:db8::6"]),
            ];
            for r in &ours {
                inst.replace(r).await.expect("replace");
            }
            // Same table, another protocol, including the same prefix as one of ours.
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "10.9.0.0/16",
                "dev",
                TUN,
                "table",
                "100",
                "proto",
                "static",
            ]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "10.0.5.0/24",
                "dev",
                TUN,
                "table",
                "100",
                "proto",
                "static",
                "metric",
                "7",
            ]);
            ip(&[
                "-n",
                &ns,
                "-6",
                "route",
                "add",
                "2001:db8:9::/64",
                "dev",
                TUN,
                "table",
                "100",
                "proto",
                "static",
            ]);
            // Ours, but in other tables.
            inst.replace(&route(101, "10.0.7.0/24", &["2001:db8::1"]))
                .await
                .unwrap();
            inst.replace(&route(356, "10.0.8.0/24", &["2001:db8::1"]))
                .await
                .unwrap();

            let mut got = inst.dump(100).await.unwrap();
            got.sort_by_key(|r| r.dest);
            let mut want = ours.clone();
            want.sort_by_key(|r| r.dest);
            assert_eq!(got, want);
            assert_eq!(
                inst.dump(101).await.unwrap(),
                vec![route(101, "10.0.7.0/24", &["2001:db8::1"])]
            );
            assert_eq!(
                inst.dump(356).await.unwrap(),
                vec![route(356, "10.0.8.0/24", &["2001:db8::1"])]
            );
            assert_eq!(inst.dump(102).await.unwrap(), vec![]);

            // Deleting ours leaves the static route of the same prefix alone.
            assert!(inst.delete(100, prefix("10.0.5.0/24")).await.unwrap());
            assert!(!inst.delete(100, prefix("10.9.0.0/16")).await.unwrap());
            let all = ip(&["-n", &ns, "route", "show", "table", "100"]);
            assert!(all.contains("10.0.5.0/24 dev mbt0 proto static"), "{all}");
            assert!(all.contains("10.9.0.0/16 dev mbt0 proto static"), "{all}");
        },
    );
}

#[test]
fn table_zero_is_rejected() {
    in_netns("table_zero_is_rejected", |ns| async move {
        let inst = Installer::new(TUN).await.expect("installer");
        let err = inst
            .replace(&route(0, "10.0.9.0/24", &["2001:db8::1"]))
            .await
            .unwrap_err();
        assert!(matches!(err, KernelError::InvalidTable { .. }), "{err:?}");
        assert!(!err.is_retryable());
        let msg = err.to_string();
        assert!(
            msg.contains("table 0") && msg.contains("10.0.9.0/24"),
            "{msg}"
        );
        let err = inst.delete(0, prefix("10.0.9.0/24")).await.unwrap_err();
        assert!(matches!(err, KernelError::InvalidTable { .. }), "{err:?}");
        let err = inst.dump(0).await.unwrap_err();
        assert!(matches!(err, KernelError::InvalidTable { .. }), "{err:?}");
        // Nothing was installed anywhere.
        let all = ip(&["-n", &ns, "route", "show", "table", "all"]);
        assert!(!all.contains("10.0.9.0"), "{all}");
        // Invalid routes are rejected before the kernel sees them.
        let err = inst
            .replace(&route(100, "10.0.9.1/24", &["2001:db8::1"]))
            .await
            .unwrap_err();
        assert!(matches!(err, KernelError::InvalidRoute { .. }), "{err:?}");
        let err = inst
            .replace(&route(100, "10.0.9.0/24", &[]))
            .await
            .unwrap_err();
        assert!(matches!(err, KernelError::InvalidRoute { .. }), "{err:?}");
    });
}

#[test]
fn missing_tunnel_device_is_a_clear_error() {
    in_netns("missing_tunnel_device_is_a_clear_error", |_ns| async move {
        let err = Installer::new("nosuchtun0").await.unwrap_err();
        assert!(matches!(err, KernelError::NoSuchDevice { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("\"nosuchtun0\"") && msg.contains("does not exist"),
            "{msg}"
        );
    });
}
