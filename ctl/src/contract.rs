//! mbctl's output contract in one place: the column headers of every table,
//! the keys of the `key: value` views, and the field names of the JSON
//! documents (docs/MBCTL.md). The renderers build their headers and key
//! lists from these constants; the tests (this crate's and the daemon
//! package's `tests/e2e_mbctl.rs`, which dev-depends on this library) read
//! the same constants instead of writing the lists out again.
//!
//! Every list is in output order (the JSON lists in the order serde writes
//! the fields). Changing one is changing mbctl's output for scripts: update
//! docs/MBCTL.md with it.

/// The names of a session's values in output order, the same in the JSON
/// document and the `key: value` view but for the age: `$uptime` is
/// `uptime_seconds` (whole seconds) in JSON and `uptime` (`2h05m`) in tables.
macro_rules! peer_names {
    ($uptime:literal) => {
        &[
            "session_id",
            "remote_address",
            "local_address",
            "role",
            "state",
            "keepalive_seconds",
            "connected_at",
            $uptime,
            "subscribed_vnis",
            "routes_announced",
            "updates_received",
            "updates_sent",
            "messages_in",
            "messages_out",
            "bytes_in",
            "bytes_out",
            "queue_bytes",
            "last_error",
            "extensions",
            "policy_class",
            "routes_refused",
            "subscribes_refused",
            "last_refusal_reason",
            "last_refusal_at",
            "tls_identity",
            "paced",
        ]
    };
}

/// Column headers of the tables (`-o table`, the default).
pub mod columns {
    /// `mbctl peers`.
    pub const PEERS: &[&str] = &[
        "ID",
        "REMOTE",
        "ROLE",
        "STATE",
        "KEEPALIVE",
        "UPTIME",
        "VNIS",
        "ANNOUNCED",
        "IN/OUT",
        "QUEUE",
        "EXTENSIONS",
        "LAST ERROR",
    ];
    /// `mbctl vnis`.
    pub const VNIS: &[&str] = &["VNI", "ROUTES", "ANNOUNCERS", "SUBSCRIBERS", "DIGEST"];
    /// `mbctl routes`.
    pub const ROUTES: &[&str] = &["VNI", "PREFIX", "NEXT HOP", "TYPE", "PORTS", "ANNOUNCERS"];
    /// `mbctl servers` (client role).
    pub const SERVERS: &[&str] = &[
        "ADDRESS",
        "STATE",
        "CONNECTED",
        "RESOLVED",
        "SINCE",
        "IN/OUT",
        "EXTENSIONS",
        "LAST ERROR",
    ];
    /// `mbctl subscriptions` (client role).
    pub const SUBSCRIPTIONS: &[&str] = &["VNI"];
    /// `mbctl mappings` (client role).
    pub const MAPPINGS: &[&str] = &["VNI", "TABLE"];
    /// `mbctl announcements` (client role).
    pub const ANNOUNCEMENTS: &[&str] = &["VNI", "PREFIX", "NEXT HOP", "TYPE", "PORTS", "OWNERS"];
    /// `mbctl policy`: the classes, in match order.
    pub const POLICY_CLASSES: &[&str] = &["CLASS", "MATCH", "RULES", "MAX ROUTES", "SESSIONS"];
    /// `mbctl policy`: the live sessions, by class.
    pub const POLICY_SESSIONS: &[&str] = &[
        "CLASS",
        "ID",
        "REMOTE",
        "ANNOUNCED",
        "REFUSED",
        "SUBSCRIBES REFUSED",
        "LAST REFUSAL",
    ];
    /// `mbctl fleet`: the members.
    pub const FLEET_MEMBERS: &[&str] = &["NAME", "SESSIONS", "ROUTES", "VNIS", "UPDATED"];
    /// `mbctl fleet`: the VNIs where members disagree, one row per member.
    pub const FLEET_DISAGREEMENTS: &[&str] = &["VNI", "AGE", "MEMBER", "ROUTES", "DIGEST"];
    /// `mbctl diff`: the routes only one side has.
    pub const DIFF: &[&str] = &["ONLY ON", "VNI", "PREFIX", "NEXT HOP", "TYPE", "PORTS"];
    /// `mbctl received` (client role).
    pub const RECEIVED: &[&str] = &[
        "VNI",
        "PREFIX",
        "NEXT HOP",
        "TYPE",
        "PORTS",
        "SERVERS",
        "INSTALLED",
    ];
}

/// Keys of the `key: value` views (table mode of the one-object commands).
pub mod keys {
    /// `mbctl peer ADDR|ID`.
    pub const PEER: &[&str] = peer_names!("uptime");
    /// `mbctl vni VNI`: the names of the JSON document.
    pub const VNI: &[&str] = super::fields::VNI;
}

/// Field names of the JSON documents (`-o json`).
pub mod fields {
    /// A session (`mbctl peers`, `mbctl peer`, the `peer` of peer events).
    pub const PEER: &[&str] = peer_names!("uptime_seconds");
    /// A route.
    pub const ROUTE: &[&str] = &["vni", "prefix", "next_hop"];
    /// The next hop of a route.
    pub const NEXT_HOP: &[&str] = &[
        "address",
        "type",
        "nat_port_from",
        "nat_port_to",
        "target_vni",
        "wire_type",
    ];
    /// An entry of `mbctl routes`.
    pub const ROUTE_ENTRY: &[&str] = &["route", "announcers"];
    /// An announcer that is a session (`"kind": "peer"`); the others have
    /// only `kind`.
    pub const PEER_ANNOUNCER: &[&str] = &["kind", "session_id", "remote_address"];
    /// A VNI (`mbctl vnis`, `mbctl vni`).
    pub const VNI: &[&str] = &[
        "vni",
        "routes",
        "announcers",
        "subscribers",
        "digest_routes",
        "digest",
    ];
    /// `mbctl status`.
    pub const STATUS: &[&str] = &[
        "version",
        "started_at",
        "uptime_seconds",
        "listen_addresses",
        "metrics_address",
        "http_address",
        "api_socket",
        "state_dir",
        "sessions",
        "routes",
        "vnis",
        "next_hops",
        "injected_routes",
        "static_routes",
        "overrides",
        "client",
        "shared_state",
    ];
    /// A route received from the servers (`mbctl received`).
    pub const RECEIVED_ROUTE: &[&str] = &["route", "servers", "installed_tables"];
    /// `mbctl announce` in a client-role daemon (to the route servers).
    pub const CLIENT_ANNOUNCE: &[&str] = &["owner", "added", "unchanged"];
    /// `mbctl withdraw` in a client-role daemon.
    pub const CLIENT_WITHDRAW: &[&str] = &["owner", "removed", "unchanged"];
    /// `mbctl announce --owner NAME --exact`.
    pub const SET_ANNOUNCEMENTS: &[&str] = &["owner", "added", "removed", "unchanged"];
    /// `mbctl announcements`: the document, and each of its entries.
    pub const ANNOUNCEMENT_LIST: &[&str] = &["announcements"];
    /// An entry of `mbctl announcements`.
    pub const ANNOUNCEMENT: &[&str] = &["route", "owners"];
    /// `mbctl policy`.
    pub const POLICY: &[&str] = &["enabled", "classes"];
    /// A class of `mbctl policy`.
    pub const POLICY_CLASS: &[&str] = &[
        "name",
        "match_prefixes",
        "is_default",
        "rules",
        "max_routes",
        "max_routes_action",
        "max_routes_warn",
        "sessions",
    ];
    /// A live session of a class of `mbctl policy`.
    pub const POLICY_SESSION: &[&str] = &[
        "session_id",
        "remote_address",
        "routes_announced",
        "routes_refused",
        "subscribes_refused",
        "last_refusal_reason",
    ];
    /// `mbctl fleet`.
    pub const FLEET: &[&str] = &["source", "members", "disagreeing_vnis"];
    /// A member of `mbctl fleet`.
    pub const FLEET_MEMBER: &[&str] = &[
        "name",
        "local",
        "version",
        "api_addresses",
        "listen_addresses",
        "sessions",
        "routes",
        "vnis",
        "updated_at",
    ];
    /// A VNI of a member of `mbctl fleet`.
    pub const FLEET_VNI: &[&str] = &["vni", "routes", "digest"];
    /// A disagreeing VNI of `mbctl fleet`, and each member's value in it.
    pub const FLEET_DISAGREEMENT: &[&str] = &["vni", "members", "disagreeing_for_ms", "settled"];
    /// A member's value in a disagreeing VNI.
    pub const FLEET_MEMBER_DIGEST: &[&str] = &["member", "routes", "digest"];
    /// `mbctl diff`.
    pub const DIFF: &[&str] = &["vni", "a", "b", "equal", "only_a", "only_b"];
    /// A side of `mbctl diff`.
    pub const DIFF_SIDE: &[&str] = &["server", "address", "routes"];
    /// The error document of a failed command: `{"error": {...}}`.
    pub const ERROR: &[&str] = &["error"];
    /// The object inside [`ERROR`].
    pub const ERROR_BODY: &[&str] = &["code", "message"];
}

/// `list` sorted, as owned strings: to compare with the sorted keys of a
/// parsed JSON object.
pub fn sorted(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}
