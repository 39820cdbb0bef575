//! `mbctl fleet` and `mbctl diff` in table mode.

use crate::contract::columns;
use crate::model::{DiffJson, FleetJson, RouteJson};
use crate::render::table::table_of;
use crate::render::{plural, route_cells};

/// `mbctl fleet`: the members, then the VNIs where they disagree (one row
/// per member and VNI) or a line saying there are none.
pub fn fleet_tables(f: &FleetJson) -> String {
    let mut out = table_of(columns::FLEET_MEMBERS, &f.members, |m| {
        vec![
            m.name.clone(),
            m.sessions.to_string(),
            m.routes.to_string(),
            m.vnis.len().to_string(),
            m.updated_at.clone().unwrap_or_else(|| "-".into()),
        ]
    });
    out.push('\n');
    if f.disagreeing_vnis.is_empty() {
        out.push_str(&format!(
            "VNIs where members disagree: none ({} {}, source {})\n",
            f.members.len(),
            plural(f.members.len(), "member"),
            f.source
        ));
        return out;
    }
    let settling = f
        .disagreeing_vnis
        .iter()
        .filter(|d| d.settled == Some(false))
        .count();
    let aged = f
        .disagreeing_vnis
        .iter()
        .all(|d| d.disagreeing_for_ms.is_some());
    let note = if !aged {
        // `--server`: compared once by mbctl, no history.
        " (compared once by mbctl: a change may still be on its way, ask again)".to_string()
    } else if settling > 0 {
        format!(" ({settling} settling, routes may still be on their way)")
    } else {
        String::new()
    };
    out.push_str(&format!(
        "VNIs where members disagree: {}{note}\n",
        f.disagreeing_vnis.len()
    ));
    let rows: Vec<(u32, String, &str, u64, &str)> = f
        .disagreeing_vnis
        .iter()
        .flat_map(|d| {
            let age = age_text(d.disagreeing_for_ms, d.settled);
            d.members.iter().map(move |m| {
                (
                    d.vni,
                    age.clone(),
                    m.member.as_str(),
                    m.routes,
                    m.digest.as_str(),
                )
            })
        })
        .collect();
    out.push_str(&table_of(
        columns::FLEET_DISAGREEMENTS,
        &rows,
        |(vni, age, member, routes, digest)| {
            vec![
                vni.to_string(),
                age.clone(),
                member.to_string(),
                routes.to_string(),
                digest.to_string(),
            ]
        },
    ));
    out
}

/// The AGE cell: how long the VNI has been disagreeing, `(settling)` while
/// under 5 s; `-` when unknown (`--server`).
fn age_text(ms: Option<u64>, settled: Option<bool>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) => {
            let state = if settled == Some(false) {
                " (settling)"
            } else {
                ""
            };
            format!("{:.1}s{state}", ms as f64 / 1000.0)
        }
    }
}

/// `mbctl diff`: both sides, then the routes only one of them has.
pub fn diff_table(d: &DiffJson) -> String {
    let mut out = String::new();
    for (label, side) in [("A", &d.a), ("B", &d.b)] {
        let at = if side.address == side.server {
            String::new()
        } else {
            format!(" at {}", side.address)
        };
        out.push_str(&format!(
            "{label}: {}{at}: {} {} in VNI {}\n",
            side.server,
            side.routes,
            plural(side.routes as usize, "route"),
            d.vni
        ));
    }
    if d.equal {
        out.push_str("no difference\n");
        return out;
    }
    let rows: Vec<(&str, &RouteJson)> = d
        .only_a
        .iter()
        .map(|r| ("A", r))
        .chain(d.only_b.iter().map(|r| ("B", r)))
        .collect();
    out.push_str(&table_of(columns::DIFF, &rows, |(side, r)| {
        let mut cells = vec![side.to_string()];
        cells.extend(route_cells(r));
        cells
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        DiffSideJson, FleetDisagreementJson, FleetMemberDigestJson, FleetMemberJson,
    };
    use crate::route::parse_route;

    fn member(name: &str, routes: u64) -> FleetMemberJson {
        FleetMemberJson {
            name: name.into(),
            local: false,
            version: "0.1.0".into(),
            api_addresses: vec![],
            listen_addresses: vec![],
            sessions: 1,
            routes,
            vnis: vec![],
            updated_at: Some("2026-01-01T00:00:00Z".into()),
        }
    }

    #[test]
    fn fleet_tables_show_members_and_disagreements() {
        let mut f = FleetJson {
            source: "servers".into(),
            members: vec![member("a:1", 2), member("b:2", 1)],
            disagreeing_vnis: vec![],
        };
        assert_eq!(
            fleet_tables(&f),
            "NAME  SESSIONS  ROUTES  VNIS  UPDATED\n\
             a:1   1         2       0     2026-01-01T00:00:00Z\n\
             b:2   1         1       0     2026-01-01T00:00:00Z\n\
             \n\
             VNIs where members disagree: none (2 members, source servers)\n"
        );
        f.disagreeing_vnis = vec![FleetDisagreementJson {
            vni: 7,
            members: vec![
                FleetMemberDigestJson {
                    member: "a:1".into(),
                    routes: 2,
                    digest: "00000000000000aa".into(),
                },
                FleetMemberDigestJson {
                    member: "b:2".into(),
                    routes: 1,
                    digest: "00000000000000bb".into(),
                },
            ],
            disagreeing_for_ms: None,
            settled: None,
        }];
        let text = fleet_tables(&f);
        assert!(
            text.ends_with(
                "VNIs where members disagree: 1 (compared once by mbctl: a change may still be on its way, ask again)\n\
                 VNI  AGE  MEMBER  ROUTES  DIGEST\n\
                 7    -    a:1     2       00000000000000aa\n\
                 7    -    b:2     1       00000000000000bb\n"
            ),
            "{text}"
        );
        // From a daemon: the age, settling under 5 s.
        f.disagreeing_vnis[0].disagreeing_for_ms = Some(1_234);
        f.disagreeing_vnis[0].settled = Some(false);
        let text = fleet_tables(&f);
        assert!(
            text.ends_with(
                "VNIs where members disagree: 1 (1 settling, routes may still be on their way)\n\
                 VNI  AGE              MEMBER  ROUTES  DIGEST\n\
                 7    1.2s (settling)  a:1     2       00000000000000aa\n\
                 7    1.2s (settling)  b:2     1       00000000000000bb\n"
            ),
            "{text}"
        );
        f.disagreeing_vnis[0].disagreeing_for_ms = Some(65_000);
        f.disagreeing_vnis[0].settled = Some(true);
        let text = fleet_tables(&f);
        assert!(
            text.contains("VNIs where members disagree: 1\nVNI  AGE    MEMBER")
                && text.contains("7    65.0s  a:1"),
            "{text}"
        );
    }

    #[test]
    fn diff_table_lists_each_sides_routes() {
        let side = |s: &str, n| DiffSideJson {
            server: s.into(),
            address: s.into(),
            routes: n,
        };
        let route = |s| RouteJson::from(&parse_route(s).unwrap());
        let mut d = DiffJson {
            vni: 7,
            a: side("/a.sock", 2),
            b: side("/b.sock", 1),
            equal: false,
            only_a: vec![route("7#10.0.9.0/24@2001:db8::9")],
            only_b: vec![],
        };
        assert_eq!(
            diff_table(&d),
            "A: /a.sock: 2 routes in VNI 7\n\
             B: /b.sock: 1 route in VNI 7\n\
             ONLY ON  VNI  PREFIX       NEXT HOP     TYPE  PORTS\n\
             A        7    10.0.9.0/24  2001:db8::9  std   -\n"
        );
        d.equal = true;
        d.only_a.clear();
        assert!(diff_table(&d).ends_with("no difference\n"));
    }
}
