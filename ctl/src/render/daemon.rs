//! `mbctl status`, `health`, `reload` and `shutdown` in table mode.

use crate::model::{HealthJson, ReloadJson, ShutdownJson, StatusJson};
use crate::render::table::{human_duration, key_values, or_dash};

/// The `key: value` lines of `mbctl status`: the daemon, then the client
/// role's counters when it runs, then each setting given at start that a
/// stored API change overrides.
pub fn status_details(s: &StatusJson) -> String {
    let mut lines = vec![
        ("version", or_dash(&s.version)),
        (
            "started_at",
            s.started_at.clone().unwrap_or_else(|| "-".into()),
        ),
        ("uptime", human_duration(s.uptime_seconds)),
        ("listen_addresses", or_dash(&s.listen_addresses.join(", "))),
        (
            "metrics_address",
            s.metrics_address.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "http_address",
            s.http_address.clone().unwrap_or_else(|| "-".into()),
        ),
        ("api_socket", or_dash(&s.api_socket)),
        ("state_dir", or_dash(&s.state_dir)),
        ("sessions", s.sessions.to_string()),
        ("routes", s.routes.to_string()),
        ("vnis", s.vnis.to_string()),
        ("next_hops", s.next_hops.to_string()),
        ("injected_routes", s.injected_routes.to_string()),
        ("static_routes", s.static_routes.to_string()),
    ];
    if let Some(c) = &s.client {
        lines.extend([
            (
                "client_servers",
                format!("{} ({} established)", c.servers, c.servers_established),
            ),
            ("client_subscriptions", c.subscriptions.to_string()),
            ("client_mapped_vnis", c.mapped_vnis.to_string()),
            ("client_received_routes", c.received_routes.to_string()),
            ("client_installed_routes", c.installed_routes.to_string()),
            (
                "client_updates_in/out",
                format!("{}/{}", c.updates_received, c.updates_sent),
            ),
        ]);
    }
    if let Some(shared) = s.shared_state.as_ref().filter(|x| x.backend == "etcd") {
        let state = match &shared.reason {
            Some(reason) if shared.degraded => format!("DEGRADED: {reason}"),
            _ if shared.degraded => "DEGRADED".to_string(),
            _ => "ok".to_string(),
        };
        lines.extend([
            (
                "shared_state",
                format!("etcd {} ({})", shared.endpoints.join(","), shared.prefix),
            ),
            ("shared_state_health", state),
            (
                "shared_state_routes",
                format!("{} at revision {}", shared.routes, shared.revision),
            ),
        ]);
    } else if let Some(shared) = &s.shared_state {
        lines.push(("shared_state", shared.backend.clone()));
    }
    for o in &s.overrides {
        lines.push(("overridden", format!("{} -> {}", o.setting, o.replaced_by)));
    }
    key_values(&lines)
}

/// The line of `mbctl health`: the serving status.
pub fn health(h: &HealthJson) -> String {
    match &h.shared_state {
        Some(shared) => format!("{} (shared state: {shared})\n", h.status),
        None => format!("{}\n", h.status),
    }
}

/// The lines of `mbctl reload`: what was applied and what needs a restart.
pub fn reloaded(r: &ReloadJson) -> String {
    if r.applied.is_empty() && r.needs_restart.is_empty() {
        return "configuration reloaded: nothing changed\n".into();
    }
    key_values(&[
        ("applied", or_dash(&r.applied.join(", "))),
        ("needs restart", or_dash(&r.needs_restart.join(", "))),
    ])
}

/// The line of `mbctl shutdown`.
pub fn shutting_down(_: &ShutdownJson) -> String {
    "metalbondd is shutting down\n".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_shows_the_shared_state_only_when_there_is_one() {
        let mut h = HealthJson {
            status: "SERVING".into(),
            shared_state: None,
        };
        assert_eq!(health(&h), "SERVING\n");
        assert_eq!(
            serde_json::to_value(&h).unwrap(),
            serde_json::json!({"status": "SERVING"})
        );
        h.shared_state = Some("NOT_SERVING".into());
        assert_eq!(health(&h), "SERVING (shared state: NOT_SERVING)\n");
        assert_eq!(
            serde_json::to_value(&h).unwrap(),
            serde_json::json!({"status": "SERVING", "shared_state": "NOT_SERVING"})
        );
    }
}
