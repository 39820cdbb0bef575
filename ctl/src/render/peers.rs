//! `mbctl peers`, `mbctl peer` and `mbctl peer reset` in table mode.

use crate::contract::{columns, keys};
use crate::model::{PeerJson, PeerResetJson};
use crate::render::table::{
    human_bytes, human_duration, key_values, labelled, or_dash, short_list, table_of,
};

/// The table of `mbctl peers`.
pub fn peers_table(peers: &[PeerJson]) -> String {
    table_of(columns::PEERS, peers, |peer| {
        vec![
            peer.session_id.to_string(),
            peer.remote_address.clone(),
            peer.role.to_string(),
            peer.state.to_string(),
            if peer.keepalive_seconds == 0 {
                "-".into()
            } else {
                format!("{}s", peer.keepalive_seconds)
            },
            human_duration(peer.uptime_seconds),
            short_list(&peer.subscribed_vnis, 4),
            peer.routes_announced.to_string(),
            format!("{}/{}", peer.updates_received, peer.updates_sent),
            human_bytes(peer.queue_bytes),
            or_dash(&peer.extensions.join(",")),
            or_dash(&peer.last_error),
        ]
    })
}

/// The `key: value` lines of `mbctl peer`.
pub fn peer_details(peer: &PeerJson) -> String {
    let vnis: Vec<String> = peer.subscribed_vnis.iter().map(u32::to_string).collect();
    // In the order of `keys::PEER`.
    let values = vec![
        peer.session_id.to_string(),
        or_dash(&peer.remote_address),
        or_dash(&peer.local_address),
        peer.role.into(),
        peer.state.into(),
        peer.keepalive_seconds.to_string(),
        peer.connected_at.clone().unwrap_or_else(|| "-".into()),
        human_duration(peer.uptime_seconds),
        or_dash(&vnis.join(",")),
        peer.routes_announced.to_string(),
        peer.updates_received.to_string(),
        peer.updates_sent.to_string(),
        peer.messages_in.to_string(),
        peer.messages_out.to_string(),
        peer.bytes_in.to_string(),
        peer.bytes_out.to_string(),
        peer.queue_bytes.to_string(),
        or_dash(&peer.last_error),
        or_dash(&peer.extensions.join(",")),
        or_dash(&peer.policy_class),
        peer.routes_refused.to_string(),
        peer.subscribes_refused.to_string(),
        or_dash(&peer.last_refusal_reason),
        peer.last_refusal_at.clone().unwrap_or_else(|| "-".into()),
        or_dash(&peer.tls_identity),
        peer.paced.to_string(),
    ];
    key_values(&labelled(keys::PEER, values))
}

/// The line of `mbctl peer reset`.
pub fn peer_reset(r: &PeerResetJson) -> String {
    format!("reset session {} (its client reconnects)\n", r.peer)
}
