//! `mbctl policy` in table mode: the classes in match order, then the live
//! sessions of each class.

use crate::contract::columns;
use crate::model::{PolicyClassJson, PolicyJson};
use crate::render::table::{or_dash, table_of};

/// Two tables (classes, then sessions), or one line without a policy.
pub fn policy_tables(p: &PolicyJson) -> String {
    if !p.enabled {
        return "no peer policy: every peer may subscribe to and announce anything\n".into();
    }
    let mut out = table_of(columns::POLICY_CLASSES, &p.classes, class_cells);
    let sessions: Vec<(&str, &crate::model::PolicySessionJson)> = p
        .classes
        .iter()
        .flat_map(|c| c.sessions.iter().map(move |s| (c.name.as_str(), s)))
        .collect();
    out.push('\n');
    if sessions.is_empty() {
        out.push_str("no live sessions\n");
    } else {
        out.push_str(&table_of(
            columns::POLICY_SESSIONS,
            &sessions,
            |(class, s)| {
                vec![
                    class.to_string(),
                    s.session_id.to_string(),
                    s.remote_address.clone(),
                    s.routes_announced.to_string(),
                    s.routes_refused.to_string(),
                    s.subscribes_refused.to_string(),
                    or_dash(s.last_refusal_reason.as_deref().unwrap_or("")),
                ]
            },
        ));
    }
    out
}

/// CLASS, MATCH, RULES, MAX ROUTES and SESSIONS of a class.
fn class_cells(c: &PolicyClassJson) -> Vec<String> {
    let matches = if c.is_default {
        "(default)".to_string()
    } else {
        c.match_prefixes.join(",")
    };
    let rules = if c.rules.is_empty() {
        "anything".to_string()
    } else {
        c.rules.join("; ")
    };
    let limit = match (c.max_routes, &c.max_routes_action, c.max_routes_warn) {
        (Some(max), action, warn) => format!(
            "{max} ({}, warn at {})",
            action.as_deref().unwrap_or("refuse"),
            warn.unwrap_or(max)
        ),
        _ => "-".into(),
    };
    vec![
        c.name.clone(),
        matches,
        rules,
        limit,
        c.sessions.len().to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PolicySessionJson;

    #[test]
    fn classes_then_sessions() {
        let p = PolicyJson {
            enabled: true,
            classes: vec![
                PolicyClassJson {
                    name: "hv".into(),
                    match_prefixes: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                    is_default: false,
                    rules: vec![
                        "announce_vnis = [100-199]".into(),
                        "next_hop = [self]".into(),
                    ],
                    max_routes: Some(100),
                    max_routes_action: Some("close".into()),
                    max_routes_warn: Some(80),
                    sessions: vec![PolicySessionJson {
                        session_id: 16,
                        remote_address: "10.0.0.1:4000".into(),
                        routes_announced: 3,
                        routes_refused: 2,
                        subscribes_refused: 0,
                        last_refusal_reason: Some("next_hop".into()),
                    }],
                },
                PolicyClassJson {
                    name: "default".into(),
                    match_prefixes: vec![],
                    is_default: true,
                    rules: vec![],
                    max_routes: None,
                    max_routes_action: None,
                    max_routes_warn: None,
                    sessions: vec![],
                },
            ],
        };
        let text = policy_tables(&p);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("CLASS"), "{text}");
        assert!(lines[1].contains("10.0.0.0/8,2001:db8::/32"), "{text}");
        assert!(
            lines[1].contains("announce_vnis = [100-199]; next_hop = [self]"),
            "{text}"
        );
        assert!(lines[1].contains("100 (close, warn at 80)"), "{text}");
        assert!(lines[2].contains("(default)") && lines[2].contains("anything"));
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with("CLASS") && lines[4].contains("LAST REFUSAL"));
        assert!(
            lines[5].starts_with("hv") && lines[5].contains("next_hop"),
            "{text}"
        );
        let off = PolicyJson {
            enabled: false,
            classes: vec![],
        };
        assert!(policy_tables(&off).starts_with("no peer policy"));
    }
}
