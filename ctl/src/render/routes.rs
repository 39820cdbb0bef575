//! `mbctl routes`, `mbctl announce` and `mbctl withdraw` in table mode.

use crate::contract::columns;
use crate::model::{AnnounceJson, AnnouncerJson, RouteEntryJson, WithdrawJson};
use crate::render::table::{short_list, table_of};
use crate::render::{plural, route_cells};

/// The table of `mbctl routes`.
pub fn routes_table(routes: &[RouteEntryJson]) -> String {
    table_of(columns::ROUTES, routes, |e| {
        let announcers: Vec<String> = e.announcers.iter().map(AnnouncerJson::short).collect();
        let mut cells = route_cells(&e.route);
        cells.push(short_list(&announcers, 3));
        cells
    })
}

/// The line of `mbctl announce` (`n` routes sent).
pub fn announced(n: usize, a: &AnnounceJson) -> String {
    format!("announced {n} {}, {} new\n", plural(n, "route"), a.added)
}

/// The line of `mbctl withdraw` (`n` routes sent).
pub fn withdrew(n: usize, w: &WithdrawJson) -> String {
    format!(
        "withdrew {n} {}, {} removed\n",
        plural(n, "route"),
        w.removed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::parse_route;
    use metalbond_proto::api;

    #[test]
    fn routes_table_columns() {
        let entries = vec![
            RouteEntryJson::from(&api::RouteEntry {
                route: Some(parse_route("200#10.0.2.0/24@2001:db8::2#nat#1024#2048").unwrap()),
                announcers: vec![api::Announcer {
                    kind: Some(api::announcer::Kind::Api(true)),
                }],
            }),
            RouteEntryJson::from(&api::RouteEntry {
                route: Some(parse_route("100#10.0.1.0/24@2001:db8::1").unwrap()),
                announcers: vec![],
            }),
        ];
        assert_eq!(
            routes_table(&entries),
            "VNI  PREFIX       NEXT HOP     TYPE  PORTS      ANNOUNCERS\n\
             200  10.0.2.0/24  2001:db8::2  nat   1024-2048  api\n\
             100  10.0.1.0/24  2001:db8::1  std   -          -\n"
        );
    }
}
