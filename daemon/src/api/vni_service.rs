//! VniService: routes, announcers and subscribers per VNI.

use std::sync::Arc;

use metalbond_proto::api as pb;
use tonic::{Request, Response, Status};

use super::{shutting_down, ApiState};
use crate::table::VniStats;
use crate::table_task::Query;
use crate::wire::Vni;

/// The VniService implementation.
pub struct Vnis {
    state: Arc<ApiState>,
}

impl Vnis {
    /// Serves VNIs from `state`.
    pub fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }

    async fn stats(&self, only: Option<Vni>) -> Result<Vec<VniStats>, Status> {
        self.state
            .table
            .query(|reply| Query::Vnis { only, reply })
            .await
            .ok_or_else(shutting_down)
    }
}

fn vni_to_api(s: &VniStats) -> pb::Vni {
    pb::Vni {
        vni: s.vni.0,
        routes: s.routes as u64,
        announcers: s.announcers as u64,
        subscribers: s.subscribers as u64,
        digest_routes: s.routes as u64,
        digest: crate::table::digest::to_hex(s.digest),
    }
}

#[tonic::async_trait]
impl pb::vni_service_server::VniService for Vnis {
    async fn list_vnis(
        &self,
        _request: Request<pb::ListVnisRequest>,
    ) -> Result<Response<pb::ListVnisResponse>, Status> {
        let vnis = self.stats(None).await?.iter().map(vni_to_api).collect();
        Ok(Response::new(pb::ListVnisResponse { vnis }))
    }

    async fn get_vni(
        &self,
        request: Request<pb::GetVniRequest>,
    ) -> Result<Response<pb::Vni>, Status> {
        let vni = Vni(request.get_ref().vni);
        let stats = self.stats(Some(vni)).await?;
        stats
            .first()
            .map(|s| Response::new(vni_to_api(s)))
            .ok_or_else(|| Status::not_found(format!("VNI {vni} has no routes and no subscribers")))
    }
}
