//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

pub use crate::client::Role;

/// Control a running metalbondd: sessions, VNIs, routes, and the daemon itself.
#[derive(Debug, Parser)]
#[command(name = "mbctl", version, about, long_about = None)]
#[command(
    after_help = "Exit status: 0 ok, 1 error from the daemon, 2 usage error, 3 cannot connect."
)]
pub struct Cli {
    /// Path of the daemon's API socket, or tcp://HOST:PORT for its TCP API
    /// listener [default: the first that exists of
    /// /run/metalbondd/api.sock, $XDG_RUNTIME_DIR/metalbondd/api.sock,
    /// /tmp/metalbondd-UID/api.sock, then the same for the client role
    /// (metalbondd-client)]
    #[arg(long, global = true, env = "MBCTL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Without --socket, talk to the daemon of this role: `server` (also a
    /// daemon running both roles) or `client` (`metalbondd client`, whose
    /// socket is /run/metalbondd-client/api.sock or its fallbacks).
    #[arg(
        long,
        global = true,
        env = "MBCTL_ROLE",
        value_enum,
        value_name = "ROLE"
    )]
    pub role: Option<Role>,

    /// Short for --role client.
    #[arg(short = 'c', long = "client", global = true)]
    pub client: bool,

    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// Seconds to wait for the daemon to answer a call.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0,
          value_parser = parse_timeout)]
    pub timeout: f64,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The role whose default socket to use (`-c` wins over `--role`).
    pub fn role(&self) -> Option<Role> {
        if self.client {
            Some(Role::Client)
        } else {
            self.role
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns with a header row (or `key: value` lines).
    Table,
    /// One JSON document (one object per line for `watch`).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the sessions (peers).
    Peers,
    /// Show one session, or reset it (`mbctl peer reset ADDR|ID`).
    Peer(PeerArgs),
    /// List the VNIs.
    Vnis,
    /// Show one VNI: routes, distinct announcers, subscribers.
    Vni {
        /// VNI, 0..16777215.
        #[arg(value_name = "VNI")]
        vni: String,
    },
    /// List routes (all pages).
    Routes(RoutesArgs),
    /// Announce routes (all or none): from the route server's table, or, in a
    /// client-role daemon, to its route servers.
    Announce {
        /// Do not fail for routes announced through the API before.
        #[arg(long, conflicts_with = "exact")]
        allow_existing: bool,
        /// Owner of the routes (client role; default `api`).
        #[arg(long, value_name = "NAME")]
        owner: Option<String>,
        /// The owner's routes become exactly ROUTE... (none: all withdrawn);
        /// only the difference is sent (client role; needs --owner).
        #[arg(long, requires = "owner")]
        exact: bool,
        /// Routes: VNI#PREFIX@NEXTHOP[#TYPE[#FROM#TO]] or the Go form VNI#PREFIX#NEXTHOP[#TYPE][#FROM#TO].
        #[arg(value_name = "ROUTE", required_unless_present = "exact")]
        routes: Vec<String>,
    },
    /// Withdraw routes announced through the API (all or none); in a
    /// client-role daemon, from its route servers.
    Withdraw {
        /// Do not fail for routes that are not announced through the API.
        #[arg(long)]
        allow_missing: bool,
        /// Owner of the routes (client role; default `api`).
        #[arg(long, value_name = "NAME")]
        owner: Option<String>,
        /// Routes, in the same form as for `announce`.
        #[arg(value_name = "ROUTE", required = true)]
        routes: Vec<String>,
    },
    /// List the routes announced to the route servers, with their owners
    /// (client role).
    Announcements,
    /// Stream changes, one line per event, until interrupted.
    #[command(subcommand)]
    Watch(WatchCommand),
    /// List the MetalBond servers of the client role.
    Servers,
    /// Add or remove a MetalBond server of the client role.
    #[command(subcommand)]
    Server(ServerCommand),
    /// List the subscribed VNIs of the client role.
    Subscriptions,
    /// Subscribe to a VNI (client role).
    Subscribe {
        /// VNI, 0..16777215.
        #[arg(value_name = "VNI")]
        vni: String,
    },
    /// Unsubscribe from a VNI; its received routes are dropped (client role).
    Unsubscribe {
        /// VNI, 0..16777215.
        #[arg(value_name = "VNI")]
        vni: String,
    },
    /// List the VNI -> routing table mappings (client role).
    Mappings,
    /// Install the received routes of a VNI in a routing table (client role).
    Map {
        /// VNI, 0..16777215.
        #[arg(value_name = "VNI")]
        vni: String,
        /// Routing table, 1..4294967295.
        #[arg(value_name = "TABLE")]
        table: String,
    },
    /// Remove the table mapping of a VNI; its routes leave the kernel (client role).
    Unmap {
        /// VNI, 0..16777215.
        #[arg(value_name = "VNI")]
        vni: String,
    },
    /// List the routes received from the servers (client role).
    Received {
        /// Only this VNI.
        #[arg(long, value_name = "N")]
        vni: Option<u32>,
    },
    /// Show the fleet's route servers and the VNIs they disagree on (the
    /// daemon's GetFleet, or each --server's own record compared here).
    Fleet(FleetArgs),
    /// Show the routes of one VNI that only A or only B has (A and B: API
    /// sockets, tcp://HOST:PORT, or member names of `mbctl fleet`); exit 0
    /// when equal, 1 when they differ, as diff(1).
    Diff(DiffArgs),
    /// Show the daemon's status.
    Status,
    /// Show the peer policy: its classes in match order and the live
    /// sessions in each (route server).
    Policy,
    /// Check the daemon's health (grpc.health.v1); exit 0 if SERVING.
    Health,
    /// Re-read the configuration file (like SIGHUP).
    Reload,
    /// Stop the daemon gracefully.
    Shutdown,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// `mbctl peer ADDR|ID` or `mbctl peer reset ADDR|ID`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PeerArgs {
    /// Session id, remote address (`[2001:db8::7]:40522`) or just its IP.
    #[arg(value_name = "ADDR|ID", required = true)]
    pub peer: Option<String>,
    /// What to do with the session (default: show it).
    #[command(subcommand)]
    pub action: Option<PeerAction>,
}

/// `mbctl peer ...` actions.
#[derive(Debug, Subcommand)]
pub enum PeerAction {
    /// Close the session (ResetPeer); its client reconnects.
    Reset {
        /// Session id, remote address (`[2001:db8::7]:40522`) or just its IP.
        #[arg(value_name = "ADDR|ID")]
        peer: String,
    },
}

/// `mbctl routes` filters.
#[derive(Debug, Args, Default)]
pub struct RoutesArgs {
    /// Only this VNI.
    #[arg(long, value_name = "N")]
    pub vni: Option<u32>,
    /// Only this exact prefix (`10.0.1.0/24`).
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,
    /// Only this next-hop address.
    #[arg(long, value_name = "A")]
    pub next_hop: Option<String>,
    /// Only this route type.
    #[arg(long = "type", value_enum, ignore_case = true, value_name = "TYPE")]
    pub kind: Option<RouteTypeArg>,
    /// Only routes announced by the daemon (`local`), a session id, or a peer address.
    #[arg(long, value_name = "local|SESSION_ID|PEER_ADDR")]
    pub origin: Option<String>,
}

/// Route type on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
pub enum RouteTypeArg {
    /// Standard.
    Std,
    /// NAT.
    Nat,
    /// Load-balancer target.
    Lb,
}

/// `mbctl server ...`.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Add a server and connect to it.
    Add {
        /// `HOST:PORT`: an IP address (`[2001:db8::2]:4711`) or a name
        /// (`metalbond.example:4711`), resolved by the daemon on every
        /// connection attempt.
        #[arg(value_name = "ADDR")]
        address: String,
    },
    /// Remove a server and close its session.
    Remove {
        /// `HOST:PORT`, as listed by `mbctl servers`.
        #[arg(value_name = "ADDR")]
        address: String,
    },
}

/// `mbctl watch ...`.
#[derive(Debug, Subcommand)]
pub enum WatchCommand {
    /// Route snapshot, end marker, then routes added and removed.
    Routes {
        /// Only this VNI.
        #[arg(long, value_name = "N")]
        vni: Option<u32>,
    },
    /// Sessions coming up and going down.
    Peers,
    /// Client role: the received routes (snapshot, then changes, with a
    /// `synced` line per VNI once every route server delivered it).
    Received {
        /// Only this VNI (repeat for more).
        #[arg(long, value_name = "N")]
        vni: Vec<u32>,
    },
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 * 365.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_globals_anywhere() {
        let cli = Cli::try_parse_from([
            "mbctl", "routes", "--vni", "7", "-o", "json", "--socket", "/x",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.socket, Some(PathBuf::from("/x")));
        assert_eq!(cli.timeout, 10.0);
        match cli.command {
            Command::Routes(a) => assert_eq!(a.vni, Some(7)),
            other => panic!("{other:?}"),
        }
        let cli =
            Cli::try_parse_from(["mbctl", "--timeout", "0.5", "watch", "routes", "--vni", "1"])
                .unwrap();
        assert_eq!(cli.timeout, 0.5);
        assert!(matches!(
            cli.command,
            Command::Watch(WatchCommand::Routes { vni: Some(1) })
        ));
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &["mbctl"][..],
            &["mbctl", "announce"],
            &["mbctl", "announce", "--exact", "1#10.0.0.0/8@::1"],
            &[
                "mbctl",
                "announce",
                "--exact",
                "--allow-existing",
                "--owner",
                "a",
            ],
            &["mbctl", "routes", "--type", "weird"],
            &["mbctl", "routes", "--vni", "x"],
            &["mbctl", "--timeout", "0", "status"],
            &["mbctl", "-o", "yaml", "status"],
            &["mbctl", "completions", "tcsh"],
            &["mbctl", "server"],
            &["mbctl", "map", "1"],
            &["mbctl", "received", "--vni", "x"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn route_types_and_flags() {
        let cli =
            Cli::try_parse_from(["mbctl", "routes", "--type", "lb", "--origin", "local"]).unwrap();
        match cli.command {
            Command::Routes(a) => {
                assert_eq!(a.kind, Some(RouteTypeArg::Lb));
                assert_eq!(a.origin.as_deref(), Some("local"));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["mbctl", "withdraw", "--allow-missing", "1#10.0.0.0/8@::1"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Withdraw {
                allow_missing: true,
                ..
            }
        ));
    }

    #[test]
    fn client_commands() {
        let cli = Cli::try_parse_from(["mbctl", "server", "add", "[::1]:4711"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Server(ServerCommand::Add { ref address }) if address == "[::1]:4711"
        ));
        let cli = Cli::try_parse_from(["mbctl", "map", "200", "300"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Map { ref vni, ref table } if vni == "200" && table == "300"
        ));
        let cli = Cli::try_parse_from(["mbctl", "received", "--vni", "7"]).unwrap();
        assert!(matches!(cli.command, Command::Received { vni: Some(7) }));
    }

    #[test]
    fn peer_show_and_reset_and_vni() {
        let cli = Cli::try_parse_from(["mbctl", "peer", "17"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Peer(PeerArgs { peer: Some(ref p), action: None }) if p == "17"
        ));
        let cli = Cli::try_parse_from(["mbctl", "peer", "reset", "[::1]:4000"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Peer(PeerArgs {
                peer: None,
                action: Some(PeerAction::Reset { ref peer })
            }) if peer == "[::1]:4000"
        ));
        let cli = Cli::try_parse_from(["mbctl", "vni", "100"]).unwrap();
        assert!(matches!(cli.command, Command::Vni { ref vni } if vni == "100"));
        for args in [
            &["mbctl", "peer"][..],
            &["mbctl", "peer", "reset"],
            &["mbctl", "peer", "1", "2"],
            &["mbctl", "vni"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}

/// `mbctl fleet [--server S]...`.
#[derive(Debug, Args, Default)]
pub struct FleetArgs {
    /// Ask this server (API socket path or tcp://HOST:PORT) for its own
    /// record; repeat for each server, and the VNIs they disagree on are
    /// computed here (no shared registry needed).
    #[arg(long = "server", value_name = "SOCKET")]
    pub servers: Vec<String>,
}

/// `mbctl diff --vni V A B`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The VNI to compare.
    #[arg(long, value_name = "N", required = true)]
    pub vni: String,
    /// One server: an API socket path, tcp://HOST:PORT, or a member name
    /// (resolved through the daemon's GetFleet).
    #[arg(value_name = "A")]
    pub a: String,
    /// The other server, in the same forms.
    #[arg(value_name = "B")]
    pub b: String,
}
