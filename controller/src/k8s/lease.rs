//! Leader election with `coordination.k8s.io/v1` Leases: one Lease per Fleet, so each
//! fleet has exactly one active engine while the other replicas stand by, and several
//! fleets spread over the replicas.
//!
//! A replica that holds a Lease renews it once a third of its duration has passed; a
//! replica takes a Lease that is free or that its holder let expire. Every write is a
//! replace with the `resourceVersion` read just before, so two replicas racing for one
//! Lease cannot both win: the loser gets `409 Conflict` and stands by.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::{Api, Client};

/// The Lease of a fleet.
pub fn lease_name(fleet: &str) -> String {
    format!("waveguide-fleet-{fleet}")
}

/// This replica's Leases.
pub struct Leases {
    client: Client,
    identity: String,
    duration: SignedDuration,
    /// Lease (`namespace/name`) → until when this replica holds it.
    held: Mutex<HashMap<String, Timestamp>>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl Leases {
    /// Leases taken as `identity` (the pod name), each valid for `duration`.
    pub fn new(client: Client, identity: impl Into<String>, duration: SignedDuration) -> Leases {
        Leases { client, identity: identity.into(), duration, held: Mutex::new(HashMap::new()) }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How often a holder must come back to renew its Leases in time.
    pub fn renew_interval(&self) -> std::time::Duration {
        std::time::Duration::try_from(self.duration / 3).unwrap_or(std::time::Duration::from_secs(1))
    }

    /// Whether this replica holds the Lease now, by its own clock, without asking the API
    /// server. Checked again just before the engine publishes.
    pub fn holds(&self, namespace: &str, name: &str) -> bool {
        let held = self.held.lock().expect("lease table");
        held.get(&key(namespace, name)).is_some_and(|until| *until > Timestamp::now())
    }

    /// Takes or renews the Lease `name` in `namespace`; true when this replica holds it.
    pub async fn hold(&self, namespace: &str, name: &str) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let key = key(namespace, name);
        let renew_after = self.duration * 2 / 3;
        if let Some(until) = self.held.lock().expect("lease table").get(&key) {
            if *until - renew_after > now {
                return Ok(true);
            }
        }
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let held = match api.get_opt(name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(name.to_string()), ..ObjectMeta::default() },
                    spec: Some(self.spec(None, now)),
                };
                write_outcome(api.create(&PostParams::default(), &lease).await)?
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
                    (Some(renewed), Some(seconds)) => {
                        renewed.0 + SignedDuration::from_secs(i64::from(seconds)) <= now
                    }
                    _ => true,
                };
                if ours || expired || spec.holder_identity.as_deref().unwrap_or("").is_empty() {
                    lease.spec = Some(self.spec(Some(&spec), now));
                    write_outcome(api.replace(name, &PostParams::default(), &lease).await)?
                } else {
                    tracing::debug!(lease = name, holder = ?spec.holder_identity, "standing by");
                    false
                }
            }
        };
        let mut table = self.held.lock().expect("lease table");
        if held {
            if table.insert(key, now + self.duration).is_none() {
                tracing::info!(lease = name, identity = %self.identity, "lease acquired");
            }
        } else if table.remove(&key).is_some() {
            tracing::warn!(lease = name, "lease lost; this replica stops writing for its fleet");
        }
        Ok(held)
    }

    /// Gives the Lease up (the fleet is deleted, or the replica stops): forgets it, and
    /// deletes it only while the API server still names this replica its holder. The
    /// delete is conditional on the uid and `resourceVersion` just read, so a replica that
    /// took the Lease over meanwhile (this one's clock ran past the expiry while it
    /// stalled, say) keeps it: its write makes the delete fail with `409 Conflict`.
    pub async fn release(&self, namespace: &str, name: &str) -> Result<(), kube::Error> {
        self.held.lock().expect("lease table").remove(&key(namespace, name));
        let api: Api<Lease> = Api::namespaced(self.client.clone(), namespace);
        let Some(lease) = api.get_opt(name).await? else { return Ok(()) };
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.identity.as_str()) {
            tracing::info!(lease = name, namespace, ?holder, "not releasing a Lease another replica holds");
            return Ok(());
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: lease.metadata.uid.clone(),
                resource_version: lease.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                tracing::info!(
                    lease = name,
                    namespace,
                    "the Lease changed hands before it could be released"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Gives every Lease this replica holds up (on shutdown), so that standby replicas
    /// take the fleets over at once rather than after the Leases expire.
    pub async fn release_all(&self) {
        let held: Vec<String> = self.held.lock().expect("lease table").keys().cloned().collect();
        for key in held {
            let Some((namespace, name)) = key.split_once('/') else { continue };
            match self.release(namespace, name).await {
                Ok(()) => tracing::info!(lease = name, namespace, "lease released"),
                Err(e) => tracing::warn!(lease = name, namespace, "cannot release the lease: {e}"),
            }
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || previous.is_none() { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        }
    }
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// A write that lost a race (`409 Conflict`) means another replica holds the Lease.
fn write_outcome(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
