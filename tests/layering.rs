//! The layering rules of ARCHITECTURE.md, checked on the source text (std
//! only, nothing runs):
//!
//! 1. A *pure* module ([`PURE_MODULES`]) does no I/O and reads no clock: it
//!    is given bytes, events and `now`, and returns what to do. Outside
//!    `#[cfg(test)]` items and the test files they name, its code may not
//!    name tokio (runtime, tasks, time, net, io, signals, `select!`), with
//!    one exception, [`TOKIO_IN_PURE`]; may not read the clock
//!    (`Instant::now`, `SystemTime::now`, `.elapsed()`); and may not do
//!    blocking I/O or touch the OS (`std::fs`, sockets, processes, sleeps,
//!    `libc`, netlink).
//! 2. Each crate of the workspace depends only on the crates of ours that
//!    [`OUR_DEPENDENCIES`] allows (normal and build dependencies by name, a
//!    dev-dependency as `dev:NAME`).
//!
//! Each check has its own test, and a failure names the file, line and rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The pure modules of the `metalbondd` crate, as module paths below
/// `daemon/src`. A module stands for its file (`a/b.rs` or `a/b/mod.rs`)
/// and every file below `a/b/`. Add a module here when it is written to be
/// pure (e.g. `client::planner`, the hypervisor agent's sans-I/O planner);
/// shells (`server`, `client::connection`, the session driver, the table
/// task, `api`, `http`, `app`) are not listed.
const PURE_MODULES: &[&str] = &[
    // Frame codec, message types and the route text form.
    "wire",
    // The MetalBond session state machine (keepalive timers from `now`).
    "session",
    // The route table and its per-VNI fan-out log.
    "table",
    // The client role's received-route set (ECMP over servers).
    "client::received",
    // The hypervisor agent's decisions: events and `now` in, dataplane
    // operations and the next deadline out (ADR 0017).
    "client::planner",
    // Peer policy: classes by source address and the per-session checks
    // (docs/POLICY.md, ADR 0025).
    "policy",
    // What a configuration reload changes in the client role (ADR 0023).
    "client::reload",
    // How a session ended and what kind of end that is (ADR 0015).
    "link::end",
    // A session's queue of whole frames (the driver writes it).
    "link::outbound",
    // The shared state's routes on etcd vs the table: snapshots and watch
    // events in, differences out (ADR 0031).
    "etcd::reconcile",
    // The one-waiter wake-up of mailboxes and session resets.
    "signal",
];

/// The only tokio items a pure module may name: none since `table::log`'s
/// mailbox wakes its reader with [`signal::Signal`] (an `AtomicWaker`)
/// instead of `tokio::sync::Notify`. Kept as the place to name an
/// exception, should one ever be needed.
const TOKIO_IN_PURE: &[&str] = &[];

/// Text that means I/O or the clock in a pure module's code, with the rule
/// it breaks.
const FORBIDDEN_IN_PURE: &[(&str, &str)] = &[
    (
        "Instant::now",
        "reads the clock (take `now` as an argument)",
    ),
    (
        "SystemTime::now",
        "reads the clock (take `now` as an argument)",
    ),
    (".elapsed()", "reads the clock (take `now` as an argument)"),
    ("std::thread::sleep", "sleeps"),
    ("std::fs", "does file I/O"),
    ("std::process", "starts processes"),
    ("TcpStream", "does network I/O"),
    ("TcpListener", "does network I/O"),
    ("UdpSocket", "does network I/O"),
    ("UnixStream", "does socket I/O"),
    ("UnixListener", "does socket I/O"),
    ("libc::", "calls the OS"),
    ("rtnetlink", "does netlink I/O"),
];

/// Which crates of ours each workspace crate may depend on (by package
/// name). A crate of ours that is not listed fails [`crate_dependencies`]:
/// a new crate gets its row here with its rule.
const OUR_DEPENDENCIES: &[(&str, &[&str])] = &[
    // The generated API types: nothing of ours, so any client can use them.
    ("metalbond-proto", &[]),
    // Plain route values, the route text form, civil dates: std only, so
    // the daemon and mbctl share one grammar (ADR 0018).
    ("metalbond-types", &[]),
    // The config file format and its defaults: nothing of ours (the daemon
    // and its tools read it, it knows neither).
    ("metalbondd-config", &[]),
    // The daemon: the API types, the plain types and the config file; its
    // tests read mbctl's output contract, the daemon itself never uses mbctl.
    (
        "metalbondd",
        &[
            "metalbond-proto",
            "metalbond-types",
            "metalbondd-config",
            "dev:mbctl",
        ],
    ),
    // mbctl talks to the daemon only through the API: the API types and
    // the plain types, never the daemon.
    ("mbctl", &["metalbond-proto", "metalbond-types"]),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the daemon crate sits in the workspace")
        .to_path_buf()
}

// ---------------------------------------------------------------------------
// Pure modules
// ---------------------------------------------------------------------------

/// The code lines of a Rust file, numbered from 1, without comments and
/// without `#[cfg(test)]` items; and the files of `#[cfg(test)] mod NAME;`
/// declarations (test-only files), which are not checked.
fn code_lines(text: &str) -> (Vec<(usize, String)>, Vec<String>) {
    let mut lines = Vec::new();
    let mut test_mods = Vec::new();
    let mut in_block_comment = false;
    let mut skip_next_item = false;
    // While skipping a `#[cfg(test)]` item: its brace depth so far.
    let mut skipping: Option<i64> = None;
    for (i, raw) in text.lines().enumerate() {
        let mut line = raw.trim().to_string();
        if in_block_comment {
            match line.find("*/") {
                Some(end) => {
                    line = line[end + 2..].to_string();
                    in_block_comment = false;
                }
                None => continue,
            }
        }
        if let Some(start) = line.find("/*") {
            if !line[start..].contains("*/") {
                in_block_comment = true;
            }
            line.truncate(start);
        }
        if let Some(start) = line.find("//") {
            line.truncate(start);
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(depth) = skipping.as_mut() {
            *depth += brace_balance(line);
            if *depth <= 0 {
                skipping = None;
            }
            continue;
        }
        if line.starts_with("#[cfg(test)]") {
            skip_next_item = true;
            continue;
        }
        if skip_next_item {
            if line.starts_with("#[") {
                // Another attribute of the same item.
                continue;
            }
            skip_next_item = false;
            let depth = brace_balance(line);
            if !line.contains('{') && line.ends_with(';') {
                if let Some(name) = line
                    .strip_prefix("mod ")
                    .or_else(|| line.strip_prefix("pub mod "))
                    .or_else(|| line.strip_prefix("pub(crate) mod "))
                {
                    test_mods.push(name.trim_end_matches(';').trim().to_string());
                }
            } else if depth > 0 || !line.contains('{') {
                // A block item; also one whose `{` comes on a later line.
                skipping = Some(depth);
            }
            continue;
        }
        lines.push((i + 1, line.to_string()));
    }
    (lines, test_mods)
}

/// `{` minus `}` in a line (string contents are not told apart: test code
/// is what holds odd strings, and it is skipped as a whole).
fn brace_balance(line: &str) -> i64 {
    line.chars().fold(0, |n, c| match c {
        '{' => n + 1,
        '}' => n - 1,
        _ => n,
    })
}

/// The `.rs` files of module `path` (`a::b`): `a/b.rs`, `a/b/mod.rs` and
/// everything below `a/b/`.
fn module_files(src: &Path, path: &str) -> Vec<PathBuf> {
    let rel: PathBuf = path.split("::").collect();
    let mut files = Vec::new();
    let file = src.join(&rel).with_extension("rs");
    if file.is_file() {
        files.push(file);
    }
    let dir = src.join(&rel);
    if dir.is_dir() {
        collect_rs(&dir, &mut files);
    }
    assert!(
        !files.is_empty(),
        "PURE_MODULES lists `{path}`, which has no file under {}",
        src.display()
    );
    files.sort();
    files
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The violations of the pure-module rules in the files of `module`.
fn impurities(src: &Path, module: &str) -> Vec<String> {
    let files = module_files(src, module);
    // Test-only files, named by `#[cfg(test)] mod NAME;` in a sibling.
    let mut test_files = BTreeSet::new();
    let mut parsed = BTreeMap::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let (lines, test_mods) = code_lines(&text);
        // `x.rs` and `x/mod.rs` declare their children in `x/`; `x/y.rs`
        // (not mod.rs) in `x/y/`.
        let children = if file.file_name().is_some_and(|n| n == "mod.rs") {
            file.parent().unwrap().to_path_buf()
        } else {
            file.with_extension("")
        };
        for name in test_mods {
            test_files.insert(children.join(format!("{name}.rs")));
            test_files.insert(children.join(&name).join("mod.rs"));
        }
        parsed.insert(file.clone(), lines);
    }
    let mut found = Vec::new();
    for (file, lines) in &parsed {
        if test_files.contains(file) {
            continue;
        }
        let shown = file.strip_prefix(src).unwrap_or(file).display().to_string();
        for (n, line) in lines {
            for (i, _) in line.match_indices("tokio") {
                let rest = &line[i..];
                let whole_word = !line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_');
                if whole_word && !TOKIO_IN_PURE.iter().any(|ok| rest.starts_with(ok)) {
                    found.push(format!(
                        "src/{shown}:{n}: pure module `{module}` uses tokio (only {TOKIO_IN_PURE:?} is allowed): {line}"
                    ));
                }
            }
            for (needle, why) in FORBIDDEN_IN_PURE {
                if line.contains(needle) {
                    found.push(format!(
                        "src/{shown}:{n}: pure module `{module}` {why}: `{needle}` in {line}"
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn pure_modules_do_no_io_and_read_no_clock() {
    let src = workspace_root().join("daemon/src");
    let found: Vec<String> = PURE_MODULES
        .iter()
        .flat_map(|m| impurities(&src, m))
        .collect();
    assert!(
        found.is_empty(),
        "layering: pure modules must not do I/O or read the clock (ARCHITECTURE.md):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scanner_sees_through_comments_and_test_code() {
    let text = r#"
use std::time::Instant; // Instant::now() in a comment is fine
/* tokio::spawn in a block comment
   is fine */
fn f(now: Instant) {}
#[cfg(test)]
mod tests {
    fn g() { let _ = std::time::Instant::now(); }
}
#[cfg(test)]
mod more_tests;
fn h() { tokio::time::sleep(d); }
"#;
    let (lines, test_mods) = code_lines(text);
    let code: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        code,
        [
            "use std::time::Instant;",
            "fn f(now: Instant) {}",
            "fn h() { tokio::time::sleep(d); }"
        ]
    );
    assert_eq!(test_mods, ["more_tests"]);
    assert_eq!(lines[2].0, 12, "line numbers are the file's");
}

// ---------------------------------------------------------------------------
// Crate dependencies
// ---------------------------------------------------------------------------

/// The `[workspace] members` of the root Cargo.toml.
fn workspace_members(root: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let start = text
        .find("members")
        .expect("the root Cargo.toml lists its members");
    let list = &text[start..];
    let list = &list[list.find('[').unwrap() + 1..list.find(']').unwrap()];
    list.split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| root.join(m))
        .collect()
}

/// A manifest's package name and the names of all its dependencies
/// (normal, build, dev, and target-specific ones; `package = "..."`
/// renames resolved; a dev-dependency is named `dev:NAME`).
fn manifest_deps(manifest: &Path) -> (String, BTreeSet<String>) {
    let text =
        fs::read_to_string(manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut name = None;
    let mut deps = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_string();
            // `[dependencies.NAME]` tables.
            if let Some(dep) = dep_table_name(&section) {
                deps.insert(dep_label(&section, dep));
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if section == "package" && key == "name" {
            name = Some(value.trim().trim_matches('"').to_string());
        }
        if is_dep_section(&section) {
            let dep = key.split('.').next().unwrap().trim();
            // `alias = { package = "real", ... }`
            let real = value
                .split_once("package")
                .and_then(|(_, rest)| rest.split('"').nth(1))
                .unwrap_or(dep);
            deps.insert(dep_label(&section, real));
        } else if let Some(alias) = dep_table_name(&section) {
            if key == "package" {
                // Replace the table's own name with the real package name.
                deps.remove(&dep_label(&section, alias));
                deps.insert(dep_label(&section, value.trim().trim_matches('"')));
            }
        }
    }
    let name = name.unwrap_or_else(|| panic!("{}: no package name", manifest.display()));
    (name, deps)
}

fn is_dep_section(section: &str) -> bool {
    let last = section.rsplit('.').next().unwrap_or(section);
    matches!(
        last,
        "dependencies" | "dev-dependencies" | "build-dependencies"
    ) && (section == last || section.starts_with("target."))
}

/// How a dependency is named in [`OUR_DEPENDENCIES`]: `dev:NAME` in a
/// dev-dependencies section, `NAME` elsewhere.
fn dep_label(section: &str, name: &str) -> String {
    if section.split('.').any(|part| part == "dev-dependencies") {
        format!("dev:{name}")
    } else {
        name.to_string()
    }
}

/// `NAME` of a `[dependencies.NAME]` (or dev-/build-) table header.
fn dep_table_name(section: &str) -> Option<&str> {
    ["dependencies.", "dev-dependencies.", "build-dependencies."]
        .iter()
        .find_map(|p| section.strip_prefix(p))
}

#[test]
fn crate_dependencies() {
    let root = workspace_root();
    let crates: BTreeMap<String, BTreeSet<String>> = workspace_members(&root)
        .iter()
        .map(|dir| manifest_deps(&dir.join("Cargo.toml")))
        .collect();
    let ours: BTreeSet<&String> = crates.keys().collect();
    let rules: BTreeMap<&str, &[&str]> = OUR_DEPENDENCIES.iter().copied().collect();
    let mut found = Vec::new();
    for (name, deps) in &crates {
        let Some(allowed) = rules.get(name.as_str()) else {
            found.push(format!(
                "crate `{name}` has no row in OUR_DEPENDENCIES (tests/layering.rs): say which crates of ours it may use"
            ));
            continue;
        };
        let is_ours = |d: &&String| {
            ours.iter()
                .any(|o| d.strip_prefix("dev:").unwrap_or(d) == *o)
        };
        for dep in deps.iter().filter(is_ours) {
            if !allowed.contains(&dep.as_str()) {
                found.push(format!(
                    "crate `{name}` depends on `{dep}`; it may use only {allowed:?} of ours"
                ));
            }
        }
    }
    assert!(
        crates.contains_key("metalbondd") && crates.contains_key("metalbond-proto"),
        "the workspace members were not read: {crates:?}"
    );
    assert!(
        found.is_empty(),
        "layering: forbidden crate dependencies (ARCHITECTURE.md):\n{}",
        found.join("\n")
    );
}
