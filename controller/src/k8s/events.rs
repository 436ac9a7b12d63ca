//! Kubernetes Events (`events.k8s.io/v1`): one Event per fact, each with its own note.
//!
//! kube's `Recorder` folds every Event of one reason on one object into a series that
//! keeps the first note, for minutes: right for a fact that repeats, wrong for ours. Each
//! commit applied, wave published or operator action is a fact of its own ("CommitApplied
//! ×4" would name an old commit, and a second rollout's waves would vanish into the first
//! one's series), so each is written as a new Event.

use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Whether an Event reports something normal or something to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Progress.
    Normal,
    /// Something went wrong or needs attention.
    Warning,
}

/// Writes the controller's Events.
#[derive(Clone)]
pub struct Events {
    client: Client,
    controller: String,
    instance: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("instance", &self.instance).finish_non_exhaustive()
    }
}

/// Events have at most 1 kB of note.
const MAX_NOTE: usize = 1024;

impl Events {
    /// Events reported by `controller` (`waveguide-controller`), from replica `instance`.
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Events {
        Events { client, controller: controller.into(), instance: instance.into() }
    }

    /// Records one fact about `regarding`. An Event that cannot be written is logged,
    /// never fatal: Events are for people, and the status says the same.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        let mut note = note.into();
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name(regarding.name.as_deref().unwrap_or("waveguide"))),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(Timestamp::now())),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(reason.into()),
            action: Some(action.into()),
            note: Some(note),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(reason, "cannot write a Kubernetes Event: {e}");
        }
    }
}

/// `<object>.<hex>`, unique per Event as client-go names them (the time in nanoseconds),
/// with a counter so that two facts in the same nanosecond get two names.
fn event_name(object: &str) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = Timestamp::now().as_nanosecond() as u128;
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    // Names have at most 253 characters; the object's name may have as many.
    let object = &object[..object.len().min(200)];
    format!("{object}.{nanos:x}{sequence:x}")
}
