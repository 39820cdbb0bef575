//! Tests of the state store: API behaviour, key format, schema checks, the
//! default-path decision and a real `kill -9` crash test.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// A unique directory under the system temp dir, removed on drop. Not created
/// here: `Store::open` must create it.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Self(std::env::temp_dir().join(format!(
            "metalbondd-store-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Address {
    Address::from(Ipv4Addr::new(a, b, c, d))
}

fn v6(s: &str) -> Address {
    Address::from(s.parse::<Ipv6Addr>().unwrap())
}

fn route(vni: u32, dest: Address, prefix_len: u8, next_hop: NextHop) -> Route {
    Route {
        vni: Vni(vni),
        dest: Destination::new(dest, prefix_len).unwrap(),
        next_hop,
    }
}

/// Route number `i`: distinct for every `i` below 2^24.
fn route_n(i: u32) -> Route {
    let [_, a, b, c] = i.to_be_bytes();
    route(
        100 + i % 7,
        v4(10, a, b, c),
        32,
        NextHop::standard(v6(&format!("2001:db8::{:x}", i % 13))),
    )
}

fn sorted(mut routes: Vec<Route>) -> Vec<Route> {
    routes.sort();
    routes
}

/// One route of every kind the store must keep exactly.
fn every_kind() -> Vec<Route> {
    let nh6 = v6("2001:db8::1");
    vec![
        // IPv4 destination, standard next hop.
        route(1, v4(10, 0, 0, 0), 8, NextHop::standard(nh6)),
        // Same destination, not masked: a different route.
        route(1, v4(10, 1, 2, 3), 8, NextHop::standard(nh6)),
        // Prefix lengths at both ends.
        route(1, v4(0, 0, 0, 0), 0, NextHop::standard(nh6)),
        route(1, v4(192, 0, 2, 1), 32, NextHop::standard(nh6)),
        // IPv6 destinations.
        route(2, v6("fd00::"), 64, NextHop::standard(nh6)),
        route(2, v6("fd00::1"), 128, NextHop::standard(nh6)),
        // IPv4 next hop.
        route(2, v6("fd00::"), 64, NextHop::standard(v4(198, 51, 100, 7))),
        // NAT with a port range; two ranges are two next hops.
        route(
            3,
            v4(203, 0, 113, 1),
            32,
            NextHop {
                addr: nh6,
                target_vni: 0,
                kind: NextHopType::NAT,
                nat_from: 1024,
                nat_to: 2047,
            },
        ),
        route(
            3,
            v4(203, 0, 113, 1),
            32,
            NextHop {
                addr: nh6,
                target_vni: 0,
                kind: NextHopType::NAT,
                nat_from: 2048,
                nat_to: 65535,
            },
        ),
        // Load-balancer target with a target VNI.
        route(
            4,
            v6("2001:db8:ffff::"),
            48,
            NextHop {
                addr: nh6,
                target_vni: 4_000_000,
                kind: NextHopType::LOADBALANCER_TARGET,
                nat_from: 0,
                nat_to: 0,
            },
        ),
        // Unknown next-hop types (positive and negative), kept as sent.
        route(
            5,
            v4(10, 9, 9, 0),
            24,
            NextHop {
                addr: nh6,
                target_vni: 9,
                kind: NextHopType(7),
                nat_from: 1,
                nat_to: 2,
            },
        ),
        route(
            5,
            v4(10, 9, 9, 0),
            24,
            NextHop {
                addr: nh6,
                target_vni: 0,
                kind: NextHopType(-5),
                nat_from: 0,
                nat_to: 0,
            },
        ),
        // Extreme VNIs.
        route(0, v4(10, 0, 0, 1), 32, NextHop::standard(nh6)),
        route(u32::MAX, v4(10, 0, 0, 1), 32, NextHop::standard(nh6)),
    ]
}

#[test]
fn round_trip_of_every_route_kind_across_reopen() {
    let tmp = TempDir::new("kinds");
    let routes = every_kind();
    {
        let store = Store::open(&tmp.0).unwrap();
        assert_eq!(store.path(), tmp.0.join(STATE_FILE));
        assert!(store.routes().unwrap().is_empty());
        assert_eq!(store.add_routes(&routes).unwrap(), vec![true; routes.len()]);
    }
    let store = Store::open(&tmp.0).unwrap();
    assert_eq!(store.routes().unwrap(), sorted(routes.clone()));
    for r in &routes {
        assert!(store.contains_route(r).unwrap(), "{r}");
    }
    assert_eq!(
        store.remove_routes(&routes).unwrap(),
        vec![true; routes.len()]
    );
    assert!(store.routes().unwrap().is_empty());
}

#[test]
fn add_twice_reports_false_the_second_time() {
    let tmp = TempDir::new("twice");
    let store = Store::open(&tmp.0).unwrap();
    let (a, b) = (route_n(1), route_n(2));
    assert_eq!(store.add_routes(&[a]).unwrap(), vec![true]);
    assert_eq!(store.add_routes(&[a, b]).unwrap(), vec![false, true]);
    // A route given twice in one call: stored once.
    let c = route_n(3);
    assert_eq!(store.add_routes(&[c, c]).unwrap(), vec![true, false]);
    assert_eq!(store.routes().unwrap(), sorted(vec![a, b, c]));
    assert_eq!(store.add_routes(&[]).unwrap(), Vec::<bool>::new());
}

#[test]
fn remove_of_unknown_reports_false() {
    let tmp = TempDir::new("remove");
    let store = Store::open(&tmp.0).unwrap();
    let (a, b) = (route_n(1), route_n(2));
    assert_eq!(store.remove_routes(&[a]).unwrap(), vec![false]);
    store.add_routes(&[a]).unwrap();
    assert!(store.contains_route(&a).unwrap());
    assert!(!store.contains_route(&b).unwrap());
    assert_eq!(
        store.remove_routes(&[b, a, a]).unwrap(),
        vec![false, true, false]
    );
    assert!(!store.contains_route(&a).unwrap());
}

#[test]
fn invalid_route_is_refused_and_nothing_is_written() {
    let tmp = TempDir::new("invalid");
    let store = Store::open(&tmp.0).unwrap();
    let mut bad = route_n(1);
    bad.dest.prefix_len = 33;
    let err = store.add_routes(&[route_n(2), bad]).unwrap_err();
    assert!(matches!(err, StoreError::InvalidRoute { .. }), "{err}");
    assert!(err.to_string().contains(&tmp.0.display().to_string()));
    assert!(store.routes().unwrap().is_empty());
}

#[test]
fn ten_thousand_routes_in_one_call_survive_reopen() {
    let tmp = TempDir::new("10k");
    let routes: Vec<Route> = (0..10_000).map(route_n).collect();
    {
        let store = Store::open(&tmp.0).unwrap();
        let start = Instant::now();
        let added = store.add_routes(&routes).unwrap();
        let took = start.elapsed();
        eprintln!("store: add 10,000 routes in 1 transaction: {took:?}");
        assert!(added.iter().all(|&a| a));
    }
    let store = Store::open(&tmp.0).unwrap();
    let start = Instant::now();
    let back = store.routes().unwrap();
    eprintln!("store: read back 10,000 routes: {:?}", start.elapsed());
    assert_eq!(back, sorted(routes));
    assert_eq!(store.route_count().unwrap(), 10_000);
}

#[test]
fn the_shared_state_cache_follows_its_changes_across_reopen() {
    let tmp = TempDir::new("shared-cache");
    let routes: Vec<Route> = (0..5_000).map(route_n).collect();
    {
        let store = Store::open(&tmp.0).unwrap();
        assert!(store.shared_cache_routes().unwrap().is_empty());
        store.update_shared_cache(&routes, &[]).unwrap();
        // Remove every third route, re-add one already there.
        let gone: Vec<Route> = routes.iter().copied().step_by(3).collect();
        store.update_shared_cache(&routes[1..2], &gone).unwrap();
        // The injected-routes table of the redb backend is another thing.
        assert_eq!(store.route_count().unwrap(), 0);
    }
    let store = Store::open(&tmp.0).unwrap();
    let want: Vec<Route> = routes
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(sorted(store.shared_cache_routes().unwrap()), sorted(want));
    store.update_shared_cache(&[], &routes).unwrap();
    assert!(store.shared_cache_routes().unwrap().is_empty());
}

#[test]
fn ten_thousand_routes_in_a_hundred_transactions() {
    let tmp = TempDir::new("100x100");
    let routes: Vec<Route> = (0..10_000).map(route_n).collect();
    let store = Store::open(&tmp.0).unwrap();
    let start = Instant::now();
    for chunk in routes.chunks(100) {
        assert!(store.add_routes(chunk).unwrap().iter().all(|&a| a));
    }
    let took = start.elapsed();
    eprintln!(
        "store: add 10,000 routes in 100 transactions of 100: {took:?} ({:?} per commit)",
        took / 100
    );
    assert_eq!(store.routes().unwrap(), sorted(routes));
}

#[test]
fn namespaced_key_value_state() {
    let tmp = TempDir::new("kv");
    {
        let store = Store::open(&tmp.0).unwrap();
        assert!(store.list("servers").unwrap().is_empty());
        store.put("servers", "[2001:db8::1]:4711", "{}").unwrap();
        store.put("servers", "10.0.0.1:4711", "a").unwrap();
        store.put("servers", "10.0.0.1:4711", "b").unwrap(); // overwrite
                                                             // Namespaces that are prefixes of each other stay apart.
        store.put("serv", "x", "1").unwrap();
        store.put("serversx", "y", "2").unwrap();
        store.put("", "empty-ns", "3").unwrap();
        store.put("subscriptions", "", "empty key").unwrap();
        assert!(store.delete("serv", "x").unwrap());
        assert!(!store.delete("serv", "x").unwrap());
        assert!(!store.delete("nothing", "x").unwrap());
    }
    let store = Store::open(&tmp.0).unwrap();
    let s = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        store.list("servers").unwrap(),
        vec![s("10.0.0.1:4711", "b"), s("[2001:db8::1]:4711", "{}")]
    );
    assert!(store.list("serv").unwrap().is_empty());
    assert_eq!(store.list("serversx").unwrap(), vec![s("y", "2")]);
    assert_eq!(store.list("").unwrap(), vec![s("empty-ns", "3")]);
    assert_eq!(
        store.list("subscriptions").unwrap(),
        vec![s("", "empty key")]
    );
}

#[test]
fn second_open_of_the_same_dir_is_refused_clearly() {
    let tmp = TempDir::new("inuse");
    let first = Store::open(&tmp.0).unwrap();
    let err = Store::open(&tmp.0).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&first.path().display().to_string()), "{msg}");
    assert!(msg.contains("in use"), "{msg}");
    drop(first);
    Store::open(&tmp.0).unwrap();
}

#[test]
fn new_dir_is_private_and_created_with_parents() {
    let tmp = TempDir::new("perm");
    let dir = tmp.0.join("a/b");
    let store = Store::open(&dir).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(store.path()), 0o600);
}

#[test]
fn dir_of_another_user_is_refused() {
    if effective_uid() != 0 {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let tmp = TempDir::new("owner");
    fs::create_dir_all(&tmp.0).unwrap();
    std::os::unix::fs::chown(&tmp.0, Some(4242), None).unwrap();
    let err = Store::open(&tmp.0).unwrap_err();
    assert!(
        matches!(err, StoreError::NotOwned { owner: 4242, .. }),
        "{err}"
    );
}

#[test]
fn newer_schema_is_refused_and_left_alone() {
    let tmp = TempDir::new("schema");
    let path = Store::open(&tmp.0).unwrap().path().to_path_buf();
    let set_version = |v: u64| {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(SCHEMA_KEY, v).unwrap();
        txn.commit().unwrap();
    };
    set_version(SCHEMA_VERSION + 1);
    let err = Store::open(&tmp.0).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
    // The refusal wrote nothing.
    let db = Database::create(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let v = txn.open_table(META).unwrap().get(SCHEMA_KEY).unwrap();
    assert_eq!(v.unwrap().value(), SCHEMA_VERSION + 1);
}

#[test]
fn corrupt_route_entry_is_an_error_naming_it() {
    let tmp = TempDir::new("corrupt");
    let path = Store::open(&tmp.0).unwrap().path().to_path_buf();
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(ROUTES)
            .unwrap()
            .insert([0xde_u8, 0xad].as_slice(), ())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&tmp.0).unwrap();
    let err = store.routes().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                table: "injected_routes",
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("dead"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

/// The layout is a stored format: this pins it byte by byte.
#[test]
fn route_key_layout_is_stable() {
    let r = route(
        0x0102_0304,
        v4(10, 0, 0, 0),
        8,
        NextHop {
            addr: v6("2001:db8::1"),
            target_vni: 7,
            kind: NextHopType::NAT,
            nat_from: 1024,
            nat_to: 2047,
        },
    );
    let want = concat!(
        "01",                               // key format version
        "01020304",                         // vni
        "04",                               // dest address length
        "0a000000000000000000000000000000", // dest address, padded
        "08",                               // prefix length
        "10",                               // next-hop address length
        "20010db8000000000000000000000001", // next-hop address
        "00000007",                         // target vni
        "80000001",                         // type 1, sign bit flipped
        "0400",                             // nat from
        "07ff",                             // nat to
    );
    assert_eq!(hex(&encode_route_key(&r)), want);
    assert_eq!(decode_route_key(&encode_route_key(&r)).unwrap(), r);
}

#[test]
fn decoding_rejects_garbage() {
    let good = encode_route_key(&every_kind()[0]); // IPv4 /8 destination
    let bad = |edit: &dyn Fn(&mut Vec<u8>), why: &str| {
        let mut k = good.to_vec();
        edit(&mut k);
        let err = decode_route_key(&k).unwrap_err();
        assert!(err.contains(why), "{err} should mention {why}");
        assert!(err.contains(&hex(&k)), "{err} should show the key");
    };
    bad(&|k| k.truncate(51), "length 51");
    bad(&|k| k.push(0), "length 53");
    bad(&|k| k.clear(), "length 0");
    bad(&|k| k[0] = 2, "format version 2");
    bad(&|k| k[5] = 6, "destination address length 6");
    bad(&|k| k[23] = 0, "next-hop address length 0");
    bad(&|k| k[15] = 1, "non-zero padding");
    bad(&|k| k[22] = 33, "prefix length 33");
}

#[test]
fn choose_dir_takes_the_first_usable_candidate() {
    let c: Vec<PathBuf> = ["/a", "/b", "/c"].iter().map(PathBuf::from).collect();
    let fallback = PathBuf::from("/tmp/metalbondd-1000");
    let only = |ok: &'static [&'static str]| move |p: &Path| ok.iter().any(|o| Path::new(o) == p);
    assert_eq!(choose_dir(&c, fallback.clone(), only(&["/a", "/b"])), c[0]);
    assert_eq!(choose_dir(&c, fallback.clone(), only(&["/c", "/b"])), c[1]);
    assert_eq!(choose_dir(&c, fallback.clone(), only(&[])), fallback);
    assert_eq!(choose_dir(&[], fallback.clone(), |_| true), fallback);
}

#[test]
fn candidates_follow_the_xdg_rules() {
    let os = |s: &str| Some(OsString::from(s));
    let p = PathBuf::from;
    assert_eq!(
        state_dir_candidates(PathRole::Server, os("/x/state"), os("/home/u")),
        vec![
            p("/var/lib/metalbondd"),
            p("/x/state/metalbondd"),
            p("/home/u/.local/state/metalbondd")
        ]
    );
    // Unset, empty or relative values are ignored.
    assert_eq!(
        state_dir_candidates(PathRole::Server, os("relative"), os("")),
        vec![p("/var/lib/metalbondd")]
    );
    assert_eq!(
        state_dir_candidates(PathRole::Server, None, os("/root")),
        vec![p("/var/lib/metalbondd"), p("/root/.local/state/metalbondd")]
    );
    assert_eq!(
        runtime_dir_candidates(PathRole::Server, os("/run/user/1000")),
        vec![p("/run/metalbondd"), p("/run/user/1000/metalbondd")]
    );
    assert_eq!(
        runtime_dir_candidates(PathRole::Server, None),
        vec![p("/run/metalbondd")]
    );
    assert_eq!(
        tmp_fallback(PathRole::Server, 1000),
        p("/tmp/metalbondd-1000")
    );
    // The client role's own names, with the same fallbacks.
    assert_eq!(
        state_dir_candidates(PathRole::Client, os("/x/state"), os("/home/u")),
        vec![
            p("/var/lib/metalbondd-client"),
            p("/x/state/metalbondd-client"),
            p("/home/u/.local/state/metalbondd-client")
        ]
    );
    assert_eq!(
        runtime_dir_candidates(PathRole::Client, os("/run/user/1000")),
        vec![
            p("/run/metalbondd-client"),
            p("/run/user/1000/metalbondd-client")
        ]
    );
    assert_eq!(
        tmp_fallback(PathRole::Client, 1000),
        p("/tmp/metalbondd-client-1000")
    );
}

#[test]
fn dir_usable_probe() {
    let tmp = TempDir::new("probe");
    // Missing, but creatable under the (writable) temp dir; nothing is created.
    assert!(dir_usable(&tmp.0.join("a/b")));
    assert!(!tmp.0.exists());
    fs::create_dir_all(&tmp.0).unwrap();
    assert!(dir_usable(&tmp.0));
    // A file is not a directory, and nothing can be created below it.
    let file = tmp.0.join("file");
    fs::write(&file, b"x").unwrap();
    assert!(!dir_usable(&file));
    assert!(!dir_usable(&file.join("sub")));
}

#[test]
fn default_paths_are_absolute() {
    for role in [PathRole::Server, PathRole::Client] {
        let state = default_state_dir(role);
        assert!(state.is_absolute(), "{}", state.display());
        let sock = default_api_socket(role);
        assert!(sock.is_absolute(), "{}", sock.display());
        assert!(sock.ends_with("api.sock"), "{}", sock.display());
    }
}

// --- kill -9 crash test -------------------------------------------------------

const WRITER_ENV: &str = "METALBONDD_STORE_CRASH_WRITER";
const COMMITTED: &str = "STORE-COMMITTED";
const BATCH: u32 = 100;
const BATCHES: u32 = 100;

fn batch(b: u32) -> Vec<Route> {
    (b * BATCH..(b + 1) * BATCH).map(route_n).collect()
}

/// Not a test on its own: when the crash test re-runs this binary with
/// `WRITER_ENV` set, this is the writer it kills. Otherwise it does nothing.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&dir)).unwrap();
    let mut out = std::io::stdout().lock();
    for b in 0..BATCHES {
        assert!(store.add_routes(&batch(b)).unwrap().iter().all(|&a| a));
        // Printed only after add_routes returned, i.e. after the commit.
        writeln!(out, "{COMMITTED} {b}").unwrap();
        out.flush().unwrap();
    }
    // Wait to be killed, so the parent's kill always finds us.
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn kill_9_keeps_every_committed_batch() {
    for kill_after in [0u32, 7, 23, 58] {
        let tmp = TempDir::new("crash");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_ENV, &tmp.0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Keep the pipe open until the kill: a closed pipe would make the
        // child fail on its own instead of being killed mid-write.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut committed = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            // Not `strip_prefix`: libtest's "test ... " banner, printed
            // without a newline, shares a line with the first report.
            if let Some((_, n)) = line.split_once(COMMITTED) {
                let n: u32 = n.trim().parse().unwrap();
                committed = Some(n);
                if n >= kill_after {
                    break;
                }
            }
        }
        let committed = committed.expect("writer committed nothing");
        // Vary the moment a little, so the kill lands at different points
        // of the next commit.
        std::thread::sleep(Duration::from_micros(u64::from(kill_after) * 37));
        // SAFETY: plain syscall on the PID of our own, not yet reaped child.
        assert_eq!(
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) },
            0
        );
        let status = child.wait().unwrap();
        drop(lines);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");

        let store = Store::open(&tmp.0).unwrap();
        // routes() decodes every key: nothing corrupt.
        let routes = store.routes().unwrap();
        // Strictly increasing: nothing duplicated.
        assert!(routes.windows(2).all(|w| w[0] < w[1]));
        // Whole batches only, in order, and at least every reported one.
        let present = routes.len() as u32 / BATCH;
        assert_eq!(routes.len() as u32 % BATCH, 0, "a batch was torn");
        assert!(
            present > committed,
            "batch {committed} was reported committed, only {present} batches present"
        );
        let expected = sorted((0..present).flat_map(batch).collect());
        assert_eq!(routes, expected);
        eprintln!(
            "store: killed after batch {committed} was reported; {present} batches present after reopen"
        );
    }
}

// --- properties -----------------------------------------------------------------

/// Small value sets mixed with arbitrary ones, so that pairs often tie on the
/// leading fields and the later fields decide the order.
fn arb_addr() -> impl Strategy<Value = Address> {
    prop_oneof![
        prop::sample::select(vec![
            v4(10, 0, 0, 0),
            v4(10, 0, 0, 1),
            v6("2001:db8::1"),
            v6("2001:db8::2")
        ]),
        any::<[u8; 4]>().prop_map(|b| Address::from_slice(&b).unwrap()),
        any::<[u8; 16]>().prop_map(|b| Address::from_slice(&b).unwrap()),
    ]
}

fn arb_route() -> impl Strategy<Value = Route> {
    let dest = arb_addr().prop_flat_map(|a| {
        (Just(a), 0..=a.bit_width()).prop_map(|(a, len)| Destination::new(a, len).unwrap())
    });
    let small_u32 = || prop_oneof![0..3u32, any::<u32>()];
    let small_u16 = || prop_oneof![0..3u16, any::<u16>()];
    let next_hop = (
        arb_addr(),
        small_u32(),
        prop_oneof![-2..4i32, any::<i32>()],
        small_u16(),
        small_u16(),
    )
        .prop_map(|(addr, target_vni, kind, nat_from, nat_to)| NextHop {
            addr,
            target_vni,
            kind: NextHopType(kind),
            nat_from,
            nat_to,
        });
    (small_u32(), dest, next_hop).prop_map(|(vni, dest, next_hop)| Route {
        vni: Vni(vni),
        dest,
        next_hop,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Keys round-trip, and key byte order is the derived order of `Route`:
    /// (vni, destination (address length, bytes, prefix length), next hop
    /// (address length, bytes, target vni, type as signed, nat from, nat to)).
    #[test]
    fn key_round_trips_and_preserves_order(a in arb_route(), b in arb_route()) {
        let (ka, kb) = (encode_route_key(&a), encode_route_key(&b));
        prop_assert_eq!(decode_route_key(&ka).unwrap(), a);
        prop_assert_eq!(decode_route_key(&kb).unwrap(), b);
        prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
    }

    /// Sorting by key equals sorting routes.
    #[test]
    fn key_sort_equals_route_sort(routes in prop::collection::vec(arb_route(), 0..50)) {
        let mut by_key = routes.clone();
        by_key.sort_by_key(encode_route_key);
        prop_assert_eq!(by_key, sorted(routes));
    }

    /// Arbitrary bytes never panic; a damaged key either is rejected or is the
    /// exact encoding of what it decodes to (decoding is canonical).
    #[test]
    fn decoding_damaged_keys_never_panics(
        r in arb_route(),
        at in 0..ROUTE_KEY_LEN,
        byte in any::<u8>(),
        junk in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut k = encode_route_key(&r);
        k[at] = byte;
        if let Ok(back) = decode_route_key(&k) {
            prop_assert_eq!(encode_route_key(&back), k);
        }
        if let Ok(back) = decode_route_key(&junk) {
            let again = encode_route_key(&back);
            prop_assert_eq!(again.as_slice(), junk.as_slice());
        }
    }
}
