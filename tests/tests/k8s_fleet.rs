//! The Fleet reconciler against a scripted fake API server (`tower-test`): one scenario per
//! expected call sequence, asserting the method, path and body of every request and that
//! nothing else is sent. The Git repository (a local repository in a temp dir) and the
//! inventory (SQLite in a temp dir) are real.

use std::sync::Arc;

use http::Method;
use jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use serde_json::{json, Value};
use waveguide::inventory::store::RolloutPhase;
use waveguide::k8s::fleet::{self, Settings, FINALIZER};
use waveguide_tests::k8s_fake::*;
use waveguide_tests::{fresh_postgres_database, git};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_fleet_gets_a_finalizer_then_status_and_events() {
    let world = World::new();
    let (ctx, mut handle) = world.context();
    let with_finalizer = serde_json::to_value(world.fleet(true)).unwrap();

    let server = tokio::spawn(async move {
        lease_taken(&mut handle).await;
        let patch = expect(&mut handle, Method::PATCH, FLEET, 200, with_finalizer).await;
        assert!(patch["body"].to_string().contains(FINALIZER), "adds the finalizer: {}", patch["body"]);
        handle
    });
    let fleet = Arc::new(world.fleet(false));
    let action = fleet::reconcile(fleet, ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let mut handle = server.await.unwrap();

    let head = world.head();
    let server = tokio::spawn(async move {
        let event = expect(&mut handle, Method::POST, EVENTS, 201, Value::Null).await;
        assert_eq!(event["body"]["reason"], "CommitApplied");
        assert_eq!(event["body"]["type"], "Normal");
        assert_eq!(event["body"]["regarding"]["name"], "edge");
        let list = expect(&mut handle, Method::GET, ROLLOUTS, 200, empty_list()).await;
        let query = list["query"].as_str().unwrap();
        assert!(query.contains("labelSelector=waveguide.dev%2Ffleet%3Dedge"), "{query}");
        let status = expect(&mut handle, Method::PATCH, &format!("{FLEET}/status"), 200, fleet_json()).await;
        assert!(status["query"].as_str().unwrap().contains("fieldManager=waveguide"), "server-side apply");
        let status = status["body"]["status"].clone();
        assert_eq!(status["lastAppliedCommit"], head);
        assert_eq!(status["observedGeneration"], 1);
        assert!(status["devices"].as_u64().unwrap() > 0);
        for type_ in ["Ready", "SourceReady", "Validated", "Published"] {
            assert_eq!(condition(&status, type_)["status"], "True", "{type_}: {status}");
        }
        handle
    });
    let action = fleet::reconcile(Arc::new(world.fleet(true)), ctx.clone()).await.unwrap();
    assert!(action != Action::await_change(), "a fleet in force is stepped again");
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;
    let meta = world.data().join(NS).join("edge/tuf/metadata");
    let timestamp: Value =
        serde_json::from_slice(&std::fs::read(meta.join("timestamp.json")).unwrap()).unwrap();
    // The controller re-signs what expires within a day, as `waveguide run` does: the
    // 2-hour timestamp was re-signed once after the publish, nothing else.
    let signed = &timestamp["signed"];
    let snapshot = signed["meta"]["snapshot.json"]["version"].as_u64().unwrap();
    assert_eq!(signed["version"].as_u64().unwrap(), snapshot + 1, "{timestamp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_sets_the_conditions_and_keeps_the_last_good_one() {
    let world = World::new();
    let good = world.head();
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        lease_taken(&mut handle).await;
        expect(&mut handle, Method::POST, EVENTS, 201, Value::Null).await;
        expect(&mut handle, Method::GET, ROLLOUTS, 200, empty_list()).await;
        expect(&mut handle, Method::PATCH, &format!("{FLEET}/status"), 200, fleet_json()).await;
        handle
    });
    fleet::reconcile(Arc::new(world.fleet(true)), ctx.clone()).await.unwrap();
    let mut handle = server.await.unwrap();

    // A policy that names a release nobody declared.
    std::fs::write(
        world.repo().join("policies/broken.yaml"),
        "apiVersion: waveguide.dev/v1alpha1\nkind: Policy\nmetadata:\n  name: broken\nspec:\n  \
         selector:\n    groups: [apac]\n  release: no-such-release\n  rollout:\n    waves:\n      - name: all\n",
    )
    .unwrap();
    git(&world.repo(), &["add", "."]);
    git(&world.repo(), &["commit", "-q", "-m", "broken policy"]);
    let bad = world.head();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let expected_bad = bad.clone();
    let server = tokio::spawn(async move {
        let event = expect(&mut handle, Method::POST, EVENTS, 201, Value::Null).await;
        assert_eq!(event["body"]["reason"], "CommitRefused");
        assert_eq!(event["body"]["type"], "Warning");
        assert!(event["body"]["note"].as_str().unwrap().contains(&expected_bad));
        expect(&mut handle, Method::GET, ROLLOUTS, 200, empty_list()).await;
        let status = expect(&mut handle, Method::PATCH, &format!("{FLEET}/status"), 200, fleet_json()).await;
        (handle, status["body"]["status"].clone())
    });
    fleet::reconcile(Arc::new(world.fleet(true)), ctx.clone()).await.unwrap();
    let (handle, status) = server.await.unwrap();
    no_more_requests(ctx, handle).await;

    assert_eq!(status["lastAppliedCommit"], good, "the last good commit stays in force");
    assert_eq!(status["lastAttemptedCommit"], bad);
    let validated = condition(&status, "Validated");
    assert_eq!((&validated["status"], &validated["reason"]), (&json!("False"), &json!("CommitRefused")));
    assert!(validated["message"].as_str().unwrap().contains("broken.yaml"), "names the file: {validated}");
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "SourceReady")["status"], "True");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_gets_a_fleet_rollout_owned_by_its_fleet() {
    let world = World::new();
    apac_rollout(&world).await;
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        lease_taken(&mut handle).await;
        expect(&mut handle, Method::POST, EVENTS, 201, Value::Null).await;
        expect(&mut handle, Method::GET, ROLLOUTS, 200, empty_list()).await;
        let created = expect_after_events(
            &mut handle,
            Method::PATCH,
            &format!("{ROLLOUTS}/edge-apac-1"),
            200,
            rollout_json(),
        )
        .await;
        assert!(created["query"].as_str().unwrap().contains("fieldManager=waveguide"), "server-side apply");
        let body = &created["body"];
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                &owner["kind"],
                &owner["name"],
                &owner["uid"],
                &owner["controller"],
                &owner["blockOwnerDeletion"]
            ),
            (
                &json!("Fleet"),
                &json!("edge"),
                &json!("5c1f4a52-0000-4000-8000-000000000001"),
                &json!(true),
                &json!(true)
            )
        );
        assert_eq!(body["metadata"]["labels"]["waveguide.dev/fleet"], "edge");
        assert_eq!(body["spec"]["policy"], "apac");
        assert_eq!(body["spec"]["rolloutId"], "apac-1");
        assert_eq!(body["spec"]["waves"], json!([{"name": "canary", "devices": 1}]));
        assert!(body["spec"].get("paused").is_none(), "the operators' fields are left to them");
        let status = expect(
            &mut handle,
            Method::PATCH,
            &format!("{ROLLOUTS}/edge-apac-1/status"),
            200,
            rollout_json(),
        )
        .await;
        assert_eq!(status["body"]["status"]["phase"], "progressing");
        expect(&mut handle, Method::PATCH, &format!("{FLEET}/status"), 200, fleet_json()).await;
        handle
    });
    fleet::reconcile(Arc::new(world.fleet(true)), ctx.clone()).await.unwrap();
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;
}

/// A FleetRollout left by a deleted Fleet of the same name (its owner reference names the
/// old uid, and no garbage collector removed it) is adopted by the new Fleet with a merge
/// patch of its owner references: the operators' spec fields stay as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_rollout_left_by_an_earlier_fleet_is_adopted() {
    let world = World::new();
    apac_rollout(&world).await;
    let mut left = rollout_json();
    left["metadata"]["labels"] = json!({"waveguide.dev/fleet": "edge"});
    left["metadata"]["ownerReferences"] = json!([{"apiVersion": "waveguide.dev/v1alpha1", "kind": "Fleet",
        "name": "edge", "uid": "0ld00000-0000-4000-8000-000000000000", "controller": true}]);
    left["spec"]["paused"] = json!(true);
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        lease_taken(&mut handle).await;
        expect(&mut handle, Method::POST, EVENTS, 201, Value::Null).await;
        let list = json!({"apiVersion": "waveguide.dev/v1alpha1", "kind": "FleetRolloutList", "metadata": {}, "items": [left.clone()]});
        expect(&mut handle, Method::GET, ROLLOUTS, 200, list).await;
        expect(&mut handle, Method::POST, EVENTS, 201, Value::Null).await;
        let adopted =
            expect(&mut handle, Method::PATCH, &format!("{ROLLOUTS}/edge-apac-1"), 200, left.clone()).await;
        assert!(!adopted["query"].as_str().unwrap().contains("fieldManager"), "a merge patch, not an apply");
        assert_eq!(
            adopted["body"],
            json!({"metadata": {"ownerReferences": [{"apiVersion": "waveguide.dev/v1alpha1", "kind": "Fleet",
                "name": "edge", "uid": "5c1f4a52-0000-4000-8000-000000000001", "controller": true,
                "blockOwnerDeletion": true}]}})
        );
        expect(&mut handle, Method::PATCH, &format!("{ROLLOUTS}/edge-apac-1/status"), 200, left).await;
        expect(&mut handle, Method::PATCH, &format!("{FLEET}/status"), 200, fleet_json()).await;
        handle
    });
    fleet::reconcile(Arc::new(world.fleet(true)), ctx.clone()).await.unwrap();
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_through_the_spec_pauses_the_engine() {
    let world = World::new();
    let store = apac_rollout(&world).await;

    let resource = json!({
        "apiVersion": "waveguide.dev/v1alpha1",
        "kind": "FleetRollout",
        "metadata": {
            "name": "edge-apac-1", "namespace": NS, "generation": 2, "labels": {"waveguide.dev/fleet": "edge"},
            "ownerReferences": [{"apiVersion": "waveguide.dev/v1alpha1", "kind": "Fleet", "name": "edge",
                                 "uid": "5c1f4a52-0000-4000-8000-000000000001", "controller": true}],
        },
        "spec": {
            "fleet": "edge", "rolloutId": "apac-1", "policy": "apac", "release": "edge-os-1-5-0",
            "version": "1.5.0", "waves": [{"name": "canary", "devices": 1}], "paused": true,
        },
    });
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        lease_taken(&mut handle).await;
        expect(&mut handle, Method::POST, EVENTS, 201, Value::Null).await;
        let list = json!({"apiVersion": "waveguide.dev/v1alpha1", "kind": "FleetRolloutList", "metadata": {}, "items": [resource.clone()]});
        expect(&mut handle, Method::GET, ROLLOUTS, 200, list).await;
        // The operator's change is an Event on the FleetRollout.
        let event = expect(&mut handle, Method::POST, EVENTS, 201, Value::Null).await;
        assert_eq!(event["body"]["reason"], "RolloutPaused");
        assert_eq!(event["body"]["regarding"]["kind"], "FleetRollout");
        assert_eq!(event["body"]["regarding"]["name"], "edge-apac-1");
        // The resource exists: only its status is written.
        let status =
            expect(&mut handle, Method::PATCH, &format!("{ROLLOUTS}/edge-apac-1/status"), 200, resource)
                .await;
        let status = status["body"]["status"].clone();
        assert_eq!(status["phase"], "paused");
        assert_eq!(status["wave"], "1/1");
        assert_eq!(status["observedGeneration"], 2);
        let fleet = expect(&mut handle, Method::PATCH, &format!("{FLEET}/status"), 200, fleet_json()).await;
        assert_eq!(fleet["body"]["status"]["activeRollouts"], 1);
        handle
    });
    fleet::reconcile(Arc::new(world.fleet(true)), ctx.clone()).await.unwrap();
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;

    let rollout = store.rollout("apac-1").await.unwrap().unwrap();
    assert!(rollout.paused, "the engine's rollout is paused");
    assert_eq!(rollout.phase, RolloutPhase::Paused);
    assert!(store.waves("apac-1").await.unwrap()[0].published_at.is_none(), "nothing published while paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_elsewhere_stops_all_writes() {
    let world = World::new();
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        // Another replica holds the Lease and renewed it just now.
        let held = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "waveguide-fleet-edge", "namespace": NS, "resourceVersion": "7"},
            "spec": {"holderIdentity": "replica-b", "leaseDurationSeconds": 15, "renewTime": Timestamp::now().to_string()},
        });
        expect(&mut handle, Method::GET, &format!("{LEASE}/waveguide-fleet-edge"), 200, held).await;
        // Next pass: the Lease is free, but another replica wins the race to take it.
        expect(&mut handle, Method::GET, &format!("{LEASE}/waveguide-fleet-edge"), 404, not_found()).await;
        expect(&mut handle, Method::POST, LEASE, 409, conflict()).await;
        handle
    });
    let fleet = Arc::new(world.fleet(false));
    let action = fleet::reconcile(fleet.clone(), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Settings::new("").standby_retry));
    fleet::reconcile(fleet, ctx.clone()).await.unwrap();
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;
    assert!(!world.data().join(NS).join("edge").exists(), "a standby replica touches no fleet data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_engine_and_every_write() {
    let world = World::new();
    // Renewed after a third of its duration: 2 s.
    let (ctx, mut handle) = world.context_with_lease(SignedDuration::from_secs(6));
    let server = tokio::spawn(async move {
        lease_taken(&mut handle).await;
        expect(&mut handle, Method::POST, EVENTS, 201, Value::Null).await;
        expect(&mut handle, Method::GET, ROLLOUTS, 200, empty_list()).await;
        expect(&mut handle, Method::PATCH, &format!("{FLEET}/status"), 200, fleet_json()).await;
        handle
    });
    fleet::reconcile(Arc::new(world.fleet(true)), ctx.clone()).await.unwrap();
    let mut handle = server.await.unwrap();
    assert!(ctx.store(NS, "edge").await.is_some(), "the engine runs here");

    // The renewal finds that another replica took the Lease over.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let server = tokio::spawn(async move {
        let held = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "waveguide-fleet-edge", "namespace": NS, "resourceVersion": "9"},
            "spec": {"holderIdentity": "replica-b", "leaseDurationSeconds": 15, "renewTime": Timestamp::now().to_string()},
        });
        expect(&mut handle, Method::GET, &format!("{LEASE}/waveguide-fleet-edge"), 200, held).await;
        handle
    });
    fleet::reconcile(Arc::new(world.fleet(true)), ctx.clone()).await.unwrap();
    let handle = server.await.unwrap();
    assert!(ctx.store(NS, "edge").await.is_none(), "the engine is stopped");
    assert!(!ctx.leases().holds(NS, "waveguide-fleet-edge"));
    no_more_requests(ctx, handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_serves_devices_over_a_shared_inventory() {
    use tower::ServiceExt;
    let world = World::new();
    let url = fresh_postgres_database().await;
    let mut fleet = world.fleet(true);
    fleet.spec.inventory.database_secret_ref =
        Some(waveguide::k8s::crd::SecretKeyRef { name: "edge-db".into(), key: "url".into() });
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        let held = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "waveguide-fleet-edge", "namespace": NS, "resourceVersion": "7"},
            "spec": {"holderIdentity": "replica-b", "leaseDurationSeconds": 15, "renewTime": Timestamp::now().to_string()},
        });
        expect(&mut handle, Method::GET, &format!("{LEASE}/waveguide-fleet-edge"), 200, held).await;
        use base64::Engine as _;
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "edge-db", "namespace": NS},
            "data": {"url": base64::engine::general_purpose::STANDARD.encode(url)},
        });
        expect(&mut handle, Method::GET, "/api/v1/namespaces/fleets/secrets/edge-db", 200, secret).await;
        handle
    });
    fleet::reconcile(Arc::new(fleet), ctx.clone()).await.unwrap();
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;

    let router = waveguide::k8s::serve::device_router(world.routes.clone());
    let request = http::Request::get("/fleets/fleets/edge/healthz").body(axum::body::Body::empty()).unwrap();
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
    assert_eq!(status, 200, "the standby answers devices: {}", String::from_utf8_lossy(&body));
    assert!(!world.data().join(NS).join("edge").exists(), "and writes no fleet data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over() {
    let world = World::new();
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        let stale = Timestamp::now() - SignedDuration::from_secs(60);
        let expired = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "waveguide-fleet-edge", "namespace": NS, "resourceVersion": "7"},
            "spec": {"holderIdentity": "replica-b", "leaseDurationSeconds": 15, "renewTime": stale.to_string(), "leaseTransitions": 3},
        });
        expect(&mut handle, Method::GET, &format!("{LEASE}/waveguide-fleet-edge"), 200, expired).await;
        let replaced =
            expect(&mut handle, Method::PUT, &format!("{LEASE}/waveguide-fleet-edge"), 200, Value::Null)
                .await;
        assert_eq!(replaced["body"]["metadata"]["resourceVersion"], "7", "optimistic concurrency");
        assert_eq!(replaced["body"]["spec"]["holderIdentity"], "replica-a");
        assert_eq!(replaced["body"]["spec"]["leaseTransitions"], 4);
        handle
    });
    assert!(ctx.leases().hold(NS, "waveguide-fleet-edge").await.unwrap());
    assert!(ctx.leases().holds(NS, "waveguide-fleet-edge"));
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_releases_the_lease_and_removes_the_finalizer() {
    let world = World::new();
    let mirror = world.data().join(NS).join("edge/source");
    std::fs::create_dir_all(&mirror).unwrap();
    let mut fleet = world.fleet(true);
    fleet.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        lease_taken(&mut handle).await;
        // No garbage collector is relied on: the Fleet's FleetRollouts are deleted first.
        let listed = expect(&mut handle, Method::GET, ROLLOUTS, 200, owned_rollouts()).await;
        assert_eq!(listed["query"], "&labelSelector=waveguide.dev%2Ffleet%3Dedge");
        let deleted = format!("{ROLLOUTS}/edge-apac-1");
        expect(&mut handle, Method::DELETE, &deleted, 200, success()).await;
        lease_released(&mut handle, "replica-a").await;
        let patch = expect(&mut handle, Method::PATCH, FLEET, 200, fleet_json()).await;
        let ops = patch["body"].as_array().unwrap().iter().map(|op| op["op"].clone()).collect::<Vec<_>>();
        assert!(ops.contains(&json!("remove")), "removes the finalizer: {}", patch["body"]);
        handle
    });
    let action = fleet::reconcile(Arc::new(fleet), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;
    assert!(!mirror.exists(), "the source mirror is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_released_on_shutdown() {
    let world = World::new();
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        lease_taken(&mut handle).await;
        lease_released(&mut handle, "replica-a").await;
        handle
    });
    assert!(ctx.leases().hold(NS, "waveguide-fleet-edge").await.unwrap());
    ctx.leases().release_all().await;
    assert!(!ctx.leases().holds(NS, "waveguide-fleet-edge"));
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;
}

/// A replica whose Lease another replica took over meanwhile (it stalled past the expiry)
/// stops without deleting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_replica_leaves_a_lease_it_no_longer_holds() {
    let world = World::new();
    let (ctx, mut handle) = world.context();
    let server = tokio::spawn(async move {
        lease_taken(&mut handle).await;
        lease_released(&mut handle, "replica-b").await;
        handle
    });
    assert!(ctx.leases().hold(NS, "waveguide-fleet-edge").await.unwrap());
    ctx.leases().release_all().await;
    let handle = server.await.unwrap();
    no_more_requests(ctx, handle).await;
}
