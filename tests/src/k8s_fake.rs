//! The scripted fake API server (`tower-test`) of the Fleet reconciler's tests: a world
//! of a real Git repository and inventory, and helpers that expect one request at a time.

use std::path::PathBuf;
use std::sync::Arc;

use http::{Method, Request, Response};
use jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tempfile::TempDir;
use waveguide::inventory::store::{RolloutPhase, RolloutRecord, Store, WaveRecord, WaveState};
use waveguide::k8s::crd::Fleet;
use waveguide::k8s::fleet::{Context, Settings, FINALIZER};
use waveguide::k8s::lease::Leases;
use waveguide::k8s::metrics::Metrics;
use waveguide::k8s::serve::FleetRoutes;

use crate::{copy_dir, git, git_stdout, repo_root};

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub const NS: &str = "fleets";
pub const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/fleets/leases";
pub const FLEET: &str = "/apis/waveguide.dev/v1alpha1/namespaces/fleets/fleets/edge";
pub const ROLLOUTS: &str = "/apis/waveguide.dev/v1alpha1/namespaces/fleets/fleetrollouts";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/fleets/events";

/// A fleet repository (the example fleet, committed) and a data directory.
pub struct World {
    /// Scratch space: the repository and the data directory.
    pub dir: TempDir,
    /// The routes the reconcilers serve fleets on.
    pub routes: FleetRoutes,
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

impl World {
    /// A new world in a temporary directory.
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        copy_dir(&repo_root().join("examples/fleet"), &repo);
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "fleet"]);
        World { dir, routes: FleetRoutes::default() }
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn head(&self) -> String {
        git_stdout(&self.repo(), &["rev-parse", "HEAD"])
    }

    /// The Fleet `fleets/edge` following the repository's `main`.
    pub fn fleet(&self, finalizer: bool) -> Fleet {
        serde_json::from_value(json!({
            "apiVersion": "waveguide.dev/v1alpha1",
            "kind": "Fleet",
            "metadata": {
                "name": "edge",
                "namespace": NS,
                "uid": "5c1f4a52-0000-4000-8000-000000000001",
                "generation": 1,
                "resourceVersion": "100",
                "finalizers": if finalizer { vec![FINALIZER] } else { vec![] },
            },
            "spec": {
                "source": {"url": self.repo().display().to_string(), "ref": {"branch": "main"}, "interval": "10ms"},
                // Shorter than the day within which the controller re-signs a timestamp.
                "tuf": {"expiries": {"timestamp": "2h"}},
            },
        }))
        .unwrap()
    }

    /// A reconciler context over a fake API server, as replica `replica-a`.
    pub fn context(&self) -> (Arc<Context>, Handle) {
        self.context_with_lease(SignedDuration::from_secs(15))
    }

    pub fn context_with_lease(&self, lease: SignedDuration) -> (Arc<Context>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let leases = Leases::new(client.clone(), "replica-a", lease);
        let settings = Settings::new(self.data());
        let ctx = Context::new(client, leases, settings, self.routes.clone(), Arc::new(Metrics::default()));
        (ctx, handle)
    }
}

/// Takes the next request: asserts its method and path (query ignored), returns its JSON
/// body and answers it with `status` and `response`.
pub async fn expect(handle: &mut Handle, method: Method, path: &str, status: u16, response: Value) -> Value {
    let (request, send) = next(handle, &method, path).await;
    answer(request, send, method, path, status, response).await
}

/// Like [`expect`], after answering the Events written before it: whether the engine's
/// pass publishes a wave of the example fleet (and says so) depends on its maintenance
/// windows, so on the time of day.
pub async fn expect_after_events(
    handle: &mut Handle,
    method: Method,
    path: &str,
    status: u16,
    response: Value,
) -> Value {
    loop {
        let (request, send) = next(handle, &method, path).await;
        if request.method() == Method::POST && request.uri().path() == EVENTS {
            answer(request, send, Method::POST, EVENTS, 201, Value::Null).await;
            continue;
        }
        return answer(request, send, method, path, status, response).await;
    }
}

type Pending = (Request<Body>, tower_test::mock::SendResponse<Response<Body>>);

async fn next(handle: &mut Handle, method: &Method, path: &str) -> Pending {
    let next = tokio::time::timeout(std::time::Duration::from_secs(30), handle.next_request());
    next.await
        .unwrap_or_else(|_| panic!("expected {method} {path} within 30 s"))
        .unwrap_or_else(|| panic!("expected {method} {path}"))
}

async fn answer(
    request: Request<Body>,
    send: tower_test::mock::SendResponse<Response<Body>>,
    method: Method,
    path: &str,
    status: u16,
    response: Value,
) -> Value {
    assert_eq!((request.method(), request.uri().path()), (&method, path), "request {}", request.uri());
    let query = request.uri().query().unwrap_or("").to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    let mut response = response;
    if response.is_null() {
        response = body.clone();
    }
    send.send_response(
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&response).unwrap())).unwrap(),
    );
    json!({"query": query, "body": body})
}

pub fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

pub fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"})
}

/// The Lease is free: the replica creates it.
pub async fn lease_taken(handle: &mut Handle) {
    expect(handle, Method::GET, &format!("{LEASE}/waveguide-fleet-edge"), 404, not_found()).await;
    let created = expect(handle, Method::POST, LEASE, 201, Value::Null).await;
    assert_eq!(created["body"]["spec"]["holderIdentity"], "replica-a");
    assert_eq!(created["body"]["metadata"]["name"], "waveguide-fleet-edge");
}

/// What the API server answers to a write of the Fleet (its content does not matter to
/// the reconciler, only that it is a Fleet).
pub fn fleet_json() -> Value {
    json!({
        "apiVersion": "waveguide.dev/v1alpha1", "kind": "Fleet",
        "metadata": {"name": "edge", "namespace": NS, "uid": "5c1f4a52-0000-4000-8000-000000000001"},
        "spec": {"source": {"url": "/srv/fleet", "ref": {"branch": "main"}}},
    })
}

pub fn empty_list() -> Value {
    json!({"apiVersion": "waveguide.dev/v1alpha1", "kind": "FleetRolloutList", "metadata": {}, "items": []})
}

pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap()
}

/// Nothing more is sent once the context is gone.
pub async fn no_more_requests(ctx: Arc<Context>, mut handle: Handle) {
    drop(ctx);
    if let Some((request, _)) = handle.next_request().await {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

/// A rollout of the `apac` policy in the fleet's inventory, as the engine would have
/// started it.
pub async fn apac_rollout(world: &World) -> Store {
    let db = world.data().join(NS).join("edge");
    std::fs::create_dir_all(&db).unwrap();
    let store = Store::open(&db.join("inventory.sqlite").display().to_string()).await.unwrap();
    let now = Timestamp::now().as_millisecond();
    let rollout = RolloutRecord {
        id: "apac-1".into(),
        policy: "apac".into(),
        release: "edge-os-1-5-0".into(),
        version: "1.5.0".into(),
        commit: Some(world.head()),
        phase: RolloutPhase::Progressing,
        paused: false,
        message: None,
        waiting: None,
        created_at: now,
        updated_at: now,
        revision: 0,
        rollback_of: None,
        requests: Default::default(),
    };
    let wave = WaveRecord {
        index: 0,
        name: "canary".into(),
        state: WaveState::Pending,
        size: 1,
        published_at: None,
        healthy_at: None,
        approved_at: None,
        finished_at: None,
        bake_ms: None,
    };
    store.create_rollout(&rollout, &[wave], &[vec!["tokyo-pos-0001".into()]]).await.unwrap();
    store
}

pub fn rollout_json() -> Value {
    json!({
        "apiVersion": "waveguide.dev/v1alpha1", "kind": "FleetRollout",
        "metadata": {"name": "edge-apac-1", "namespace": NS},
        "spec": {"fleet": "edge", "rolloutId": "apac-1", "policy": "apac", "release": "edge-os-1-5-0", "version": "1.5.0"},
    })
}

pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})
}

/// The Lease is read, and deleted only when `holder` is this replica (`replica-a`), on the
/// condition that it is still the version read.
pub async fn lease_released(handle: &mut Handle, holder: &str) {
    let path = format!("{LEASE}/waveguide-fleet-edge");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "waveguide-fleet-edge", "namespace": NS, "uid": "lease-uid", "resourceVersion": "42"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    });
    expect(handle, Method::GET, &path, 200, lease).await;
    if holder == "replica-a" {
        let deleted = expect(handle, Method::DELETE, &path, 200, success()).await;
        assert_eq!(
            deleted["body"]["preconditions"],
            json!({"uid": "lease-uid", "resourceVersion": "42"}),
            "the delete is conditional"
        );
    }
}

/// The FleetRollouts of the Fleet, as the API server lists them.
pub fn owned_rollouts() -> Value {
    json!({
        "apiVersion": "waveguide.dev/v1alpha1", "kind": "FleetRolloutList", "metadata": {},
        "items": [rollout_json()],
    })
}
