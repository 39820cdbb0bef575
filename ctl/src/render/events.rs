//! The lines of `mbctl watch routes` and `mbctl watch peers` in table mode.

use metalbond_proto::api;

use crate::model::{
    PeerEventJson, PeerEventKind, ReceivedEventJson, ReceivedEventKind, RouteEventJson,
    RouteEventKind,
};
use crate::render::plural;
use crate::render::table::or_dash;
use crate::route::format_route;

/// One line of `mbctl watch routes` in table mode:
/// `SEQ KIND ROUTE` (`12 added 100#10.0.1.0/24@2001:db8::1`).
pub fn route_event_line(e: &RouteEventJson, raw: &api::RouteEvent) -> String {
    use api::route_event::Event;
    let detail = match (&e.event, &raw.event) {
        (_, Some(Event::Snapshot(r) | Event::Added(r) | Event::Removed(r))) => format_route(r),
        (RouteEventKind::SnapshotEnd { routes }, _) => {
            format!("{routes} {}", plural(*routes as usize, "route"))
        }
        (RouteEventKind::Lagged { reason }, _) => reason.clone(),
        _ => String::new(),
    };
    let kind = match &e.event {
        RouteEventKind::Snapshot { .. } => "snapshot",
        RouteEventKind::SnapshotEnd { .. } => "snapshot_end",
        RouteEventKind::Added { .. } => "added",
        RouteEventKind::Removed { .. } => "removed",
        RouteEventKind::Lagged { .. } => "lagged",
        RouteEventKind::Unknown => "unknown",
    };
    format!("{} {kind} {detail}", e.sequence)
        .trim_end()
        .to_string()
        + "\n"
}

/// The lines of one `mbctl watch received` event in table mode: `SEQ KIND
/// DETAIL`, one line per route of a snapshot chunk
/// (`7 synced vni 100`, `8 added 100#10.0.1.0/24@2001:db8::1`).
pub fn received_event_line(e: &ReceivedEventJson, raw: &api::ReceivedEvent) -> String {
    use api::received_event::Event;
    let seq = e.sequence;
    match (&e.event, &raw.event) {
        (_, Some(Event::Snapshot(chunk))) => chunk
            .routes
            .iter()
            .map(|r| format!("{seq} snapshot {}\n", format_route(r)))
            .collect(),
        (_, Some(Event::Added(r))) => format!("{seq} added {}\n", format_route(r)),
        (_, Some(Event::Removed(r))) => format!("{seq} removed {}\n", format_route(r)),
        (ReceivedEventKind::SnapshotEnd { routes }, _) => format!(
            "{seq} snapshot_end {routes} {}\n",
            plural(*routes as usize, "route")
        ),
        (ReceivedEventKind::Synced { vni }, _) => format!("{seq} synced vni {vni}\n"),
        (ReceivedEventKind::Lagged { reason }, _) => format!("{seq} lagged {reason}\n"),
        _ => format!("{seq} unknown\n"),
    }
}

/// One line of `mbctl watch peers` in table mode:
/// `SEQ up ID REMOTE ROLE STATE`, `SEQ established ID REMOTE ROLE STATE`
/// or `SEQ down ID REMOTE: REASON`.
pub fn peer_event_line(e: &PeerEventJson) -> String {
    let line = match &e.event {
        PeerEventKind::Up { peer } | PeerEventKind::Established { peer } => format!(
            "{} {} {} {} {} {}",
            e.sequence,
            if matches!(e.event, PeerEventKind::Up { .. }) {
                "up"
            } else {
                "established"
            },
            peer.session_id,
            peer.remote_address,
            peer.role,
            peer.state
        ),
        PeerEventKind::Down { peer, reason } => {
            let who = peer
                .as_ref()
                .map(|p| format!("{} {}", p.session_id, p.remote_address))
                .unwrap_or_else(|| "?".into());
            format!("{} down {who}: {}", e.sequence, or_dash(reason))
        }
        PeerEventKind::Lagged { reason } => format!("{} lagged {reason}", e.sequence),
        PeerEventKind::Unknown => format!("{} unknown", e.sequence),
    };
    line + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::parse_route;

    #[test]
    fn event_lines() {
        use api::route_event::Event;
        let ev = api::RouteEvent {
            sequence: 3,
            event: Some(Event::Added(parse_route("1#10.0.0.0/8@::1#lb").unwrap())),
        };
        assert_eq!(
            route_event_line(&(&ev).into(), &ev),
            "3 added 1#10.0.0.0/8@::1#lb\n"
        );
        let ev = api::RouteEvent {
            sequence: 4,
            event: Some(Event::SnapshotEnd(api::SnapshotEnd { routes: 2 })),
        };
        assert_eq!(
            route_event_line(&(&ev).into(), &ev),
            "4 snapshot_end 2 routes\n"
        );
        let pe = api::PeerEvent {
            sequence: 5,
            event: Some(api::peer_event::Event::Down(api::PeerDown {
                peer: Some(api::Peer {
                    session_id: 2,
                    remote_address: "[::1]:9".into(),
                    ..Default::default()
                }),
                reason: "keepalive timeout".into(),
            })),
        };
        assert_eq!(
            peer_event_line(&(&pe).into()),
            "5 down 2 [::1]:9: keepalive timeout\n"
        );
    }
}
