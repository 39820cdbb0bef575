//! Fleet registration on etcd (shell; ADR 0030, 0031): every route server of
//! a fleet writes its member record (name, sessions, routes, per-VNI
//! digests) under `{prefix}fleet/{name}`, attached to a lease, and reads
//! every member's record back into its [`FleetDirectory`], so `mbctl fleet`
//! and `FleetService.GetFleet` on any server list the whole fleet and the
//! VNIs where its servers disagree.
//!
//! - The record is rewritten every [`REFRESH`] (digests change with every
//!   route), the lease renewed at the same time; a server that dies
//!   disappears from the fleet when its lease expires ([`LEASE_TTL_SECS`]),
//!   one that stops revokes its lease and disappears at once.
//! - While etcd is unreachable the directory keeps the last members it read
//!   (their `updated_at_unix_ms` ages, which `mbctl fleet` shows); the next
//!   successful round replaces them.
//! - Another live registration with this server's name (another lease on
//!   the same key) is reported with a WARN: two servers with one name
//!   overwrite each other's record and must be renamed (`--name`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::client::{EtcdClient, EtcdError};
use crate::fleet::{FleetDirectory, MemberRecord, Published};

/// The lease of a member's record: a dead server leaves the fleet this
/// long after its last renewal.
pub const LEASE_TTL_SECS: i64 = 10;
/// How often the record is rewritten and the members read back.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Largest record written: etcd refuses requests above 1.5 MiB by default.
/// Above this the record is written without its VNI list (about 20,000
/// VNIs fit), with a WARN.
const MAX_RECORD_BYTES: usize = 1 << 20;
/// `source` of the directory's view once members come from etcd.
pub const SOURCE_ETCD: &str = "etcd";

/// The key of member `name` under the fleet's `prefix`.
pub fn member_key(prefix: &str, name: &str) -> String {
    format!("{prefix}fleet/{name}")
}

/// What one registration keeps between rounds.
struct Registration {
    client: EtcdClient,
    key: String,
    members_prefix: String,
    directory: Arc<FleetDirectory>,
    lease: Option<i64>,
    warned_size: bool,
    warned_name: bool,
    failing: bool,
}

/// Registers this server and follows the fleet until `stop` turns true;
/// then revokes the lease (bounded by the client's request timeout).
pub async fn run(
    client: EtcdClient,
    prefix: String,
    directory: Arc<FleetDirectory>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reg = Registration {
        key: member_key(&prefix, directory.name()),
        members_prefix: format!("{prefix}fleet/"),
        client,
        directory,
        lease: None,
        warned_size: false,
        warned_name: false,
        failing: false,
    };
    info!(key = %reg.key, "fleet registration on etcd");
    loop {
        if *stop.borrow() {
            break;
        }
        match reg.round().await {
            Ok(members) => {
                if reg.failing {
                    info!(members, "fleet registration on etcd restored");
                    reg.failing = false;
                }
            }
            Err(e) => {
                // One WARN per outage; the shared state's own status already
                // reports etcd as degraded.
                if !reg.failing {
                    warn!(error = %e, "fleet registration on etcd failed; keeping the last members seen, retrying");
                    reg.failing = true;
                } else {
                    debug!(error = %e, "fleet registration on etcd still failing");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = stop.changed() => {}
        }
    }
    if let Some(id) = reg.lease.take() {
        match reg.client.revoke_lease(id).await {
            Ok(()) => info!(key = %reg.key, "fleet registration withdrawn"),
            Err(e) => debug!(error = %e, "fleet lease not revoked; it expires"),
        }
    }
}

impl Registration {
    /// Renews (or grants) the lease, writes this server's record, reads every
    /// member's and publishes them; the number of members read.
    async fn round(&mut self) -> Result<usize, EtcdError> {
        let lease = self.lease().await?;
        let Some(mut record) = self.directory.local_record().await else {
            return Ok(0); // shutting down
        };
        // Kept whole for this round's view, even when the record written
        // must lose its VNI list.
        let local = record.clone();
        let mut json = record.to_json();
        if json.len() > MAX_RECORD_BYTES {
            if !self.warned_size {
                warn!(
                    bytes = json.len(),
                    vnis = record.vnis.len(),
                    "fleet record too large for etcd; registered without its per-VNI digests"
                );
                self.warned_size = true;
            }
            record.vnis.clear();
            json = record.to_json();
        }
        if let Err(e) = self
            .client
            .put_with_lease(self.key.as_bytes(), json.as_bytes(), lease)
            .await
        {
            // The lease may have expired meanwhile: grant a new one next time.
            if matches!(e, EtcdError::Refused(_)) {
                self.lease = None;
            }
            return Err(e);
        }
        let (kvs, _) = self
            .client
            .range_prefix(self.members_prefix.as_bytes())
            .await?;
        let mut records = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            if kv.key == self.key.as_bytes() {
                if kv.lease != lease && !self.warned_name {
                    warn!(
                        key = %self.key,
                        "another server registers with this server's name; give each a unique --name"
                    );
                    self.warned_name = true;
                }
                continue;
            }
            match std::str::from_utf8(&kv.value)
                .map_err(|e| e.to_string())
                .and_then(MemberRecord::from_json)
            {
                Ok(r) => records.push(r),
                Err(e) => debug!(
                    key = %String::from_utf8_lossy(&kv.key),
                    error = %e,
                    "fleet member record unreadable; left out"
                ),
            }
        }
        let members = records.len() + 1;
        self.directory.publish(Published {
            source: SOURCE_ETCD.to_string(),
            records,
        });
        // One view per round, so the ages of disagreements (settling or
        // settled, ADR 0030) advance even when nobody asks for the fleet.
        self.directory.view_with(local);
        Ok(members)
    }

    /// The live lease: renewed if there is one, else granted.
    async fn lease(&mut self) -> Result<i64, EtcdError> {
        if let Some(id) = self.lease {
            match self.client.keep_alive_once(id).await {
                Ok(ttl) if ttl > 0 => return Ok(id),
                Ok(_) | Err(EtcdError::Refused(_)) => self.lease = None,
                Err(e) => return Err(e),
            }
        }
        let id = self.client.grant_lease(LEASE_TTL_SECS).await?;
        self.lease = Some(id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_keys_live_under_the_fleet_prefix() {
        assert_eq!(
            member_key("/metalbondd/", "rs1:4711"),
            "/metalbondd/fleet/rs1:4711"
        );
    }
}
