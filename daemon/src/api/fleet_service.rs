//! FleetService: the route servers of the fleet and the VNIs they disagree
//! on (ADR 0030), from the fleet directory.

use std::sync::Arc;

use metalbond_proto::api as pb;
use metalbond_types::fleet::digest_hex;
use tonic::{Request, Response, Status};

use super::{shutting_down, ApiState};
use crate::fleet::MemberRecord;

/// The FleetService implementation.
pub struct Fleet {
    state: Arc<ApiState>,
}

impl Fleet {
    /// Serves the fleet view of `state`.
    pub fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }
}

/// A member record as the API shows it; `local` for the answering server.
fn member_to_api(m: &MemberRecord, local: bool) -> pb::FleetMember {
    let ms = m.updated_at_unix_ms;
    pb::FleetMember {
        name: m.name.clone(),
        version: m.version.clone(),
        api_addresses: m.api_addresses.clone(),
        listen_addresses: m.listen_addresses.clone(),
        sessions: m.sessions,
        routes: m.routes,
        vnis: m
            .vnis
            .iter()
            .map(|v| pb::FleetVniDigest {
                vni: v.vni,
                routes: v.routes,
                digest: v.digest.clone(),
            })
            .collect(),
        updated_at: Some(prost_types::Timestamp {
            seconds: (ms / 1000) as i64,
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }),
        local,
    }
}

#[tonic::async_trait]
impl pb::fleet_service_server::FleetService for Fleet {
    async fn get_fleet(
        &self,
        _request: Request<pb::GetFleetRequest>,
    ) -> Result<Response<pb::Fleet>, Status> {
        let view = self.state.fleet.view().await.ok_or_else(shutting_down)?;
        Ok(Response::new(pb::Fleet {
            source: view.source.clone(),
            members: view
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| member_to_api(m, i == 0))
                .collect(),
            disagreeing_vnis: view
                .disagreements
                .iter()
                .enumerate()
                .map(|(i, d)| pb::FleetDisagreement {
                    vni: d.vni,
                    disagreeing_for_ms: view.disagreeing_for_ms.get(i).copied().unwrap_or(0),
                    settled: view.settled(i),
                    members: d
                        .members
                        .iter()
                        .map(|(name, v)| pb::FleetMemberDigest {
                            member: name.clone(),
                            routes: v.routes,
                            digest: digest_hex(v.digest),
                        })
                        .collect(),
                })
                .collect(),
        }))
    }
}
