//! From the parsed command line to a checked request: every argument the
//! daemon gets is validated here, before anything is sent (a bad one is exit
//! 2 with nothing sent, daemon or not).

use clap_complete::Shell;
use metalbond_proto::api;

use crate::cli::{
    Command, DiffArgs, FleetArgs, PeerAction, PeerArgs, RouteTypeArg, RoutesArgs, ServerCommand,
    WatchCommand,
};
use crate::error::CliError;
use crate::route::{parse_addr, parse_prefix, parse_route, MAX_VNI};

/// A checked request, ready to send (or, for completions, to print).
#[derive(Debug)]
pub enum Request {
    /// Print a completion script (no daemon needed).
    Completions(Shell),
    /// ListPeers.
    Peers,
    /// GetPeer.
    Peer(api::get_peer_request::Peer),
    /// ResetPeer.
    ResetPeer(api::get_peer_request::Peer),
    /// ListVnis.
    Vnis,
    /// GetVni.
    Vni(u32),
    /// ListRoutes, all pages.
    Routes(api::RouteFilter),
    /// AnnounceRoutes, or in a client-role daemon ClientService.Announce
    /// (chosen by the daemon's status; `owner` set: always the latter).
    Announce(api::AnnounceRoutesRequest, Option<String>),
    /// ClientService.SetAnnouncements (`announce --owner NAME --exact`).
    SetAnnouncements(api::SetAnnouncementsRequest),
    /// WithdrawRoutes, or in a client-role daemon ClientService.Withdraw.
    Withdraw(api::WithdrawRoutesRequest, Option<String>),
    /// ClientService.ListAnnouncements.
    Announcements,
    /// WatchRoutes.
    WatchRoutes(api::RouteFilter),
    /// WatchPeers.
    WatchPeers,
    /// ClientService.WatchReceived (of these VNIs; empty: all).
    WatchReceived(Vec<u32>),
    /// ListServers.
    Servers,
    /// AddServer.
    AddServer(String),
    /// RemoveServer.
    RemoveServer(String),
    /// ListSubscriptions.
    Subscriptions,
    /// Subscribe.
    Subscribe(u32),
    /// Unsubscribe.
    Unsubscribe(u32),
    /// ListTableMappings.
    Mappings,
    /// SetTableMapping.
    Map(api::SetTableMappingRequest),
    /// RemoveTableMapping.
    Unmap(u32),
    /// ListReceivedRoutes.
    Received(Option<u32>),
    /// FleetService.GetFleet of the daemon (no targets), or of each
    /// target, compared here.
    Fleet(Vec<Target>),
    /// ListRoutes of one VNI on two servers, compared.
    Diff {
        /// The VNI.
        vni: u32,
        /// One server.
        a: Target,
        /// The other.
        b: Target,
    },
    /// GetStatus.
    Status,
    /// GetPolicy.
    Policy,
    /// grpc.health.v1 Check.
    Health,
    /// Reload.
    Reload,
    /// Shutdown.
    Shutdown,
}

impl Request {
    /// Checks the arguments of `command`.
    pub fn check(command: Command) -> Result<Request, CliError> {
        Ok(match command {
            Command::Completions { shell } => Request::Completions(shell),
            Command::Announce {
                owner: Some(owner),
                exact: true,
                routes,
                ..
            } => Request::SetAnnouncements(api::SetAnnouncementsRequest {
                owner: owner_arg(owner)?,
                routes: if routes.is_empty() {
                    Vec::new()
                } else {
                    parse_routes(&routes)?
                },
            }),
            Command::Announce {
                allow_existing,
                owner,
                routes,
                ..
            } => Request::Announce(
                api::AnnounceRoutesRequest {
                    routes: parse_routes(&routes)?,
                    allow_existing,
                },
                owner.map(owner_arg).transpose()?,
            ),
            Command::Withdraw {
                allow_missing,
                owner,
                routes,
            } => Request::Withdraw(
                api::WithdrawRoutesRequest {
                    routes: parse_routes(&routes)?,
                    allow_missing,
                },
                owner.map(owner_arg).transpose()?,
            ),
            Command::Announcements => Request::Announcements,
            Command::Routes(args) => Request::Routes(route_filter(&args)?),
            Command::Peer(PeerArgs {
                action: Some(PeerAction::Reset { peer }),
                ..
            }) => Request::ResetPeer(peer_selector(&peer)),
            Command::Peer(PeerArgs { peer, .. }) => {
                // clap requires ADDR|ID without an action.
                Request::Peer(peer_selector(peer.as_deref().unwrap_or_default()))
            }
            Command::Peers => Request::Peers,
            Command::Vnis => Request::Vnis,
            Command::Vni { vni } => Request::Vni(vni_arg(&vni)?),
            Command::Watch(WatchCommand::Routes { vni }) => {
                Request::WatchRoutes(api::RouteFilter {
                    vni,
                    ..Default::default()
                })
            }
            Command::Watch(WatchCommand::Peers) => Request::WatchPeers,
            Command::Watch(WatchCommand::Received { vni }) => Request::WatchReceived(vni),
            Command::Servers => Request::Servers,
            Command::Server(ServerCommand::Add { address }) => {
                Request::AddServer(server_arg(&address)?)
            }
            Command::Server(ServerCommand::Remove { address }) => {
                Request::RemoveServer(server_arg(&address)?)
            }
            Command::Subscriptions => Request::Subscriptions,
            Command::Subscribe { vni } => Request::Subscribe(vni_arg(&vni)?),
            Command::Unsubscribe { vni } => Request::Unsubscribe(vni_arg(&vni)?),
            Command::Mappings => Request::Mappings,
            Command::Map { vni, table } => Request::Map(api::SetTableMappingRequest {
                vni: vni_arg(&vni)?,
                table: table_arg(&table)?,
            }),
            Command::Unmap { vni } => Request::Unmap(vni_arg(&vni)?),
            Command::Received { vni } => Request::Received(match vni {
                Some(v) => Some(vni_arg(&v.to_string())?),
                None => None,
            }),
            Command::Fleet(FleetArgs { servers }) => Request::Fleet(
                servers
                    .iter()
                    .map(|s| match Target::parse(s)? {
                        Target::Member(m) => Err(CliError::Usage(format!(
                            "invalid --server {m:?}: an API socket path (with a '/') or tcp://HOST:PORT"
                        ))),
                        t => Ok(t),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Command::Diff(DiffArgs { vni, a, b }) => Request::Diff {
                vni: vni_arg(&vni)?,
                a: Target::parse(&a)?,
                b: Target::parse(&b)?,
            },
            Command::Status => Request::Status,
            Command::Policy => Request::Policy,
            Command::Health => Request::Health,
            Command::Reload => Request::Reload,
            Command::Shutdown => Request::Shutdown,
        })
    }
}

/// A server to ask, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An API socket (a path: it has a '/', or the file exists).
    Socket(std::path::PathBuf),
    /// A TCP API listener, `HOST:PORT` (given as `tcp://HOST:PORT`).
    Tcp(String),
    /// A member name of the fleet, resolved through GetFleet.
    Member(String),
}

impl Target {
    /// `tcp://HOST:PORT`, a socket path (with a '/', or an existing file),
    /// else a member name.
    pub fn parse(s: &str) -> Result<Target, CliError> {
        if let Some(addr) = s.strip_prefix("tcp://") {
            let ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(CliError::Usage(format!(
                    "invalid server {s:?}: tcp://HOST:PORT"
                )));
            }
            return Ok(Target::Tcp(addr.to_string()));
        }
        if s.trim().is_empty() {
            return Err(CliError::Usage("invalid server \"\": empty".into()));
        }
        if s.contains('/') || std::path::Path::new(s).exists() {
            return Ok(Target::Socket(s.into()));
        }
        Ok(Target::Member(s.to_string()))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Tcp(a) => write!(f, "tcp://{a}"),
            Target::Member(m) => f.write_str(m),
        }
    }
}

/// Checks `--owner NAME` as the daemon does: 1 to 64 letters, digits, '.',
/// '_' or '-'. (The reserved owner `config` is the daemon's to refuse.)
pub fn owner_arg(owner: String) -> Result<String, CliError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if owner.is_empty() || owner.len() > 64 || !owner.chars().all(ok) {
        return Err(CliError::Usage(format!(
            "invalid --owner {owner:?}: 1 to 64 letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(owner)
}

/// Parses every ROUTE; the first bad one is a usage error naming it.
pub fn parse_routes(args: &[String]) -> Result<Vec<api::Route>, CliError> {
    args.iter()
        .map(|s| parse_route(s).map_err(|e| CliError::Usage(e.to_string())))
        .collect()
}

/// The filter of `mbctl routes`, checked.
pub fn route_filter(a: &RoutesArgs) -> Result<api::RouteFilter, CliError> {
    use api::route_filter::Origin;
    let prefix = match &a.prefix {
        Some(p) => {
            parse_prefix(p).map_err(|e| CliError::Usage(format!("invalid --prefix: {e}")))?
        }
        None => String::new(),
    };
    let next_hop = match &a.next_hop {
        Some(n) => {
            parse_addr(n).map_err(|e| CliError::Usage(format!("invalid --next-hop: {e}")))?
        }
        None => String::new(),
    };
    let kind = match a.kind {
        None => api::RouteType::Unspecified,
        Some(RouteTypeArg::Std) => api::RouteType::Standard,
        Some(RouteTypeArg::Nat) => api::RouteType::Nat,
        Some(RouteTypeArg::Lb) => api::RouteType::LoadbalancerTarget,
    };
    let origin = match a.origin.as_deref().map(str::trim) {
        None => None,
        Some("") => return Err(CliError::Usage("invalid --origin: empty".into())),
        Some(o) if o.eq_ignore_ascii_case("local") => Some(Origin::Local(true)),
        Some(o) => match o.parse::<u64>() {
            Ok(id) => Some(Origin::SessionId(id)),
            Err(_) => Some(Origin::PeerAddress(o.to_string())),
        },
    };
    Ok(api::RouteFilter {
        vni: a.vni,
        prefix,
        next_hop,
        r#type: kind as i32,
        origin,
    })
}

/// A VNI argument, 0..16777215.
pub fn vni_arg(s: &str) -> Result<u32, CliError> {
    match s.trim().parse::<u32>() {
        Ok(v) if v <= MAX_VNI => Ok(v),
        _ => Err(CliError::Usage(format!(
            "invalid VNI {s:?}: not a number from 0 to {MAX_VNI}"
        ))),
    }
}

/// A routing table argument, 1..4294967295 (table 0 is never "all tables").
pub fn table_arg(s: &str) -> Result<u32, CliError> {
    match s.trim().parse::<u32>() {
        Ok(t) if t > 0 => Ok(t),
        _ => Err(CliError::Usage(format!(
            "invalid TABLE {s:?}: not a number from 1 to {}",
            u32::MAX
        ))),
    }
}

/// A server argument, `HOST:PORT` with an IP address (sent in its
/// canonical form, `[2001:db8::2]:4711`) or a host name (sent lower-cased;
/// the daemon checks it fully and resolves it).
pub fn server_arg(s: &str) -> Result<String, CliError> {
    let t = s.trim();
    if let Ok(a) = t.parse::<std::net::SocketAddr>() {
        return Ok(a.to_string());
    }
    let bad = || {
        CliError::Usage(format!(
            "invalid server {s:?}: not HOST:PORT (`[2001:db8::2]:4711`, `192.0.2.1:4711`, `metalbond.example:4711`)"
        ))
    };
    let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
    let name_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        // All digits and dots is a malformed IPv4 address, not a name.
        && !host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if !name_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(format!("{}:{port}", host.to_ascii_lowercase()))
}

/// `ADDR|ID`: a number is a session id, anything else an address.
pub fn peer_selector(s: &str) -> api::get_peer_request::Peer {
    use api::get_peer_request::Peer;
    let s = s.trim();
    match s.parse::<u64>() {
        Ok(id) => Peer::SessionId(id),
        Err(_) => Peer::Address(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn diff_and_fleet_targets() {
        use super::Target;
        assert_eq!(
            Target::parse("/run/a/api.sock").unwrap(),
            Target::Socket("/run/a/api.sock".into())
        );
        assert_eq!(
            Target::parse("tcp://10.0.0.1:4713").unwrap(),
            Target::Tcp("10.0.0.1:4713".into())
        );
        assert_eq!(
            Target::parse("rs1:4711").unwrap(),
            Target::Member("rs1:4711".into())
        );
        for bad in ["tcp://nohost", "tcp://:1", "tcp://h:99999", ""] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
        // --server takes sockets and TCP listeners, not member names.
        let err = super::Request::check(crate::cli::Command::Fleet(crate::cli::FleetArgs {
            servers: vec!["rs1".into()],
        }))
        .unwrap_err();
        assert!(err.to_string().contains("--server"), "{err}");
    }

    use super::*;

    #[test]
    fn bad_route_is_a_usage_error_naming_it() {
        let args = vec![
            "100#10.0.1.0/24@2001:db8::1".to_string(),
            "1#bad@::1".to_string(),
        ];
        let err = parse_routes(&args).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.starts_with("invalid route \"1#bad@::1\": "), "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(parse_routes(&args[..1]).unwrap().len(), 1);
    }

    #[test]
    fn filters() {
        use api::route_filter::Origin;
        let f = route_filter(&RoutesArgs {
            vni: Some(7),
            prefix: Some("10.0.1.0/24".into()),
            next_hop: Some("2001:DB8::1".into()),
            kind: Some(RouteTypeArg::Nat),
            origin: Some("LOCAL".into()),
        })
        .unwrap();
        assert_eq!(f.vni, Some(7));
        assert_eq!(f.prefix, "10.0.1.0/24");
        assert_eq!(f.next_hop, "2001:db8::1");
        assert_eq!(f.r#type, api::RouteType::Nat as i32);
        assert_eq!(f.origin, Some(Origin::Local(true)));
        let origin = |o: &str| {
            route_filter(&RoutesArgs {
                origin: Some(o.into()),
                ..Default::default()
            })
            .unwrap()
            .origin
        };
        assert_eq!(origin("12"), Some(Origin::SessionId(12)));
        assert_eq!(
            origin("[2001:db8::7]:40522"),
            Some(Origin::PeerAddress("[2001:db8::7]:40522".into()))
        );
        let empty = route_filter(&RoutesArgs::default()).unwrap();
        assert_eq!(empty, api::RouteFilter::default());
        for bad in [
            RoutesArgs {
                prefix: Some("10.0.0.0".into()),
                ..Default::default()
            },
            RoutesArgs {
                next_hop: Some("host".into()),
                ..Default::default()
            },
            RoutesArgs {
                origin: Some(" ".into()),
                ..Default::default()
            },
        ] {
            assert_eq!(route_filter(&bad).unwrap_err().exit_code(), 2);
        }
    }

    #[test]
    fn client_arguments() {
        assert_eq!(vni_arg("0").unwrap(), 0);
        assert_eq!(vni_arg("16777215").unwrap(), 16_777_215);
        assert_eq!(table_arg("254").unwrap(), 254);
        assert_eq!(table_arg("4294967295").unwrap(), u32::MAX);
        assert_eq!(
            server_arg("[2001:DB8::2]:4711").unwrap(),
            "[2001:db8::2]:4711"
        );
        assert_eq!(server_arg("192.0.2.1:4711").unwrap(), "192.0.2.1:4711");
        assert_eq!(
            server_arg("MetalBond.example:4711").unwrap(),
            "metalbond.example:4711"
        );
        assert_eq!(server_arg("localhost:4711").unwrap(), "localhost:4711");
        for bad in ["16777216", "-1", "x", ""] {
            let err = vni_arg(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(!err.to_string().contains('\n'));
        }
        for bad in ["0", "4294967296", "main"] {
            assert_eq!(table_arg(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
        for bad in [
            "2001:db8::2",
            "host",
            "host:99999",
            "bad host:4711",
            "1.2.3:4711",
            ":4711",
            "[::1]:99999",
        ] {
            assert_eq!(server_arg(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }

    #[test]
    fn peer_selectors() {
        use api::get_peer_request::Peer;
        assert_eq!(peer_selector("12"), Peer::SessionId(12));
        assert_eq!(
            peer_selector("2001:db8::7"),
            Peer::Address("2001:db8::7".into())
        );
        assert_eq!(
            peer_selector("[2001:db8::7]:40522"),
            Peer::Address("[2001:db8::7]:40522".into())
        );
    }
}
