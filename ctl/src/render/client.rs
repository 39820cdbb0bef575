//! The client role's commands in table mode: `servers`, `server add|remove`,
//! `subscriptions`, `subscribe`, `unsubscribe`, `mappings`, `map`, `unmap`
//! and `received`.

use crate::contract::columns;
use crate::model::{
    AnnouncementJson, ClientAnnounceJson, ClientServerJson, ClientWithdrawJson, ReceivedRouteJson,
    ServerAddedJson, ServerRemovedJson, SetAnnouncementsJson, SubscribedJson, TableMappingJson,
    UnmappedJson, UnsubscribedJson,
};
use crate::render::table::{or_dash, short_list, table_of};
use crate::render::{plural, route_cells};

/// The table of `mbctl servers`.
pub fn servers_table(servers: &[ClientServerJson]) -> String {
    table_of(columns::SERVERS, servers, |s| {
        // A literal address resolves to itself: not worth a column entry.
        let resolved = if s.resolved.len() == 1 && s.resolved[0] == s.address {
            "-".to_string()
        } else {
            short_list(&s.resolved, 3)
        };
        vec![
            s.address.clone(),
            s.state.to_string(),
            s.connected.clone().unwrap_or_else(|| "-".into()),
            resolved,
            s.since.clone().unwrap_or_else(|| "-".into()),
            format!("{}/{}", s.updates_received, s.updates_sent),
            or_dash(&s.extensions.join(",")),
            or_dash(&s.last_error),
        ]
    })
}

/// The line of `mbctl server add`.
pub fn server_added(d: &ServerAddedJson) -> String {
    format!("added server {}\n", d.address)
}

/// The line of `mbctl server remove`.
pub fn server_removed(d: &ServerRemovedJson) -> String {
    format!("removed server {}\n", d.address)
}

/// The table of `mbctl subscriptions`.
pub fn subscriptions_table(vnis: &[u32]) -> String {
    table_of(columns::SUBSCRIPTIONS, vnis, |v| vec![v.to_string()])
}

/// The line of `mbctl subscribe`.
pub fn subscribed(d: &SubscribedJson) -> String {
    format!("subscribed to VNI {}\n", d.vni)
}

/// The line of `mbctl unsubscribe`.
pub fn unsubscribed(d: &UnsubscribedJson) -> String {
    format!("unsubscribed from VNI {}\n", d.vni)
}

/// The table of `mbctl mappings`.
pub fn mappings_table(mappings: &[TableMappingJson]) -> String {
    table_of(columns::MAPPINGS, mappings, |m| {
        vec![m.vni.to_string(), m.table.to_string()]
    })
}

/// The line of `mbctl map`.
pub fn mapped(d: &TableMappingJson) -> String {
    format!("mapped VNI {} to table {}\n", d.vni, d.table)
}

/// The line of `mbctl unmap`.
pub fn unmapped(d: &UnmappedJson) -> String {
    format!("unmapped VNI {}\n", d.vni)
}

/// The table of `mbctl announcements`.
pub fn announcements_table(list: &[AnnouncementJson]) -> String {
    table_of(columns::ANNOUNCEMENTS, list, |a| {
        let mut cells = route_cells(&a.route);
        cells.push(short_list(&a.owners, 3));
        cells
    })
}

/// The line of `mbctl announce` in a client-role daemon (`n` routes sent).
pub fn client_announced(n: usize, d: &ClientAnnounceJson) -> String {
    format!(
        "announced {n} {} to the route servers (owner {}), {} new\n",
        plural(n, "route"),
        d.owner,
        d.added
    )
}

/// The line of `mbctl withdraw` in a client-role daemon (`n` routes sent).
pub fn client_withdrew(n: usize, d: &ClientWithdrawJson) -> String {
    format!(
        "withdrew {n} {} from the route servers (owner {}), {} removed\n",
        plural(n, "route"),
        d.owner,
        d.removed
    )
}

/// The line of `mbctl announce --owner NAME --exact`.
pub fn announcements_set(d: &SetAnnouncementsJson) -> String {
    format!(
        "owner {} announces exactly {} {}: {} added, {} removed\n",
        d.owner,
        d.added + d.unchanged,
        plural((d.added + d.unchanged) as usize, "route"),
        d.added,
        d.removed
    )
}

/// The table of `mbctl received`.
pub fn received_table(routes: &[ReceivedRouteJson]) -> String {
    table_of(columns::RECEIVED, routes, |r| {
        let tables: Vec<String> = r.installed_tables.iter().map(u32::to_string).collect();
        let mut cells = route_cells(&r.route);
        cells.extend([short_list(&r.servers, 3), or_dash(&tables.join(","))]);
        cells
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::parse_route;
    use metalbond_proto::api;

    #[test]
    fn received_table_columns() {
        let routes = vec![
            ReceivedRouteJson::from(&api::ReceivedRoute {
                route: Some(parse_route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048").unwrap()),
                servers: vec!["[2001:db8::a]:4711".into(), "[2001:db8::b]:4711".into()],
                installed_tables: vec![200, 201],
            }),
            ReceivedRouteJson::from(&api::ReceivedRoute {
                route: Some(parse_route("100#10.0.1.0/24@2001:db8::1").unwrap()),
                servers: vec![],
                installed_tables: vec![],
            }),
        ];
        assert_eq!(
            received_table(&routes),
            "VNI  PREFIX       NEXT HOP     TYPE  PORTS      SERVERS                                INSTALLED\n\
             200  10.0.2.0/24  2001:db8::2  nat   1024-2048  [2001:db8::a]:4711,[2001:db8::b]:4711  200,201\n\
             100  10.0.1.0/24  2001:db8::1  std   -          -                                      -\n"
        );
    }
}
