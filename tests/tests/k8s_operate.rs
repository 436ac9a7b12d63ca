//! Retry, accept and rollback through a FleetRollout's spec, as docs/kubernetes.md shows
//! them: the real `waveguide controller` against a real kube-apiserver, `kubectl patch` as
//! the operator, `waveguide simulate` devices whose installs of `r2` fail, and each
//! device's instruction read back with the `tough` client from the controller's TUF files.

use std::time::Duration;

use serde_json::{json, Value};
use waveguide::protocol::DeviceInstruction;
use waveguide_tests::k8s_scene::Scene;
use waveguide_tests::kube::events;
use waveguide_tests::run::fresh_instruction;

const MINUTE: Duration = Duration::from_secs(60);

/// The instruction of `device` that the controller publishes now.
fn instruction(scene: &Scene, base: &str, device: &str) -> Option<DeviceInstruction> {
    let root = std::fs::read(scene.root()).unwrap();
    let cache = scene.dir.path().join("tough");
    tokio::runtime::Runtime::new().unwrap().block_on(fresh_instruction(base, &root, &cache, device))
}

fn patch(scene: &Scene, name: &str, spec: Value) {
    let body = json!({ "spec": spec }).to_string();
    scene.kubectl(&["patch", "fleetrollout", name, "--type", "merge", "-p", &body]);
}

fn reasons(scene: &Scene, name: &str) -> Vec<(String, String)> {
    events(&scene.cluster, &scene.ns, "FleetRollout", name)
}

#[test]
fn retry_accept_and_rollback_are_fleet_rollout_spec_fields() {
    let scene = Scene::new("wg-operate", 4);
    let controller = scene.controller("replica-a", &[]);
    scene.apply(&scene.fleet(json!({})));
    scene.wait_condition("Ready", "True", MINUTE);
    let base = controller.fleet_url(&scene.ns, "edge");
    let devices = scene.simulate(&base, 4, Some("r2"));

    // The canary's install of r2 fails: the rollout halts.
    let rollout = scene.rollout(MINUTE);
    let name = rollout["metadata"]["name"].as_str().unwrap().to_owned();
    let id = rollout["spec"]["rolloutId"].as_str().unwrap().to_owned();
    scene.wait_rollout(&name, "the canary to fail and the rollout to halt", |r| {
        r["status"]["phase"] == "halted" && r["status"]["failed"] == 1
    });
    let canary = scene.wait("the canary's instruction", MINUTE, || {
        (0..4).map(|i| format!("dev-{i}")).find(|d| instruction(&scene, &base, d).is_some())
    });
    assert_eq!(instruction(&scene, &base, &canary).unwrap().attempt, 0);

    // spec.retry: the canary's instruction again, with the next attempt; its install fails
    // again and the rollout halts again.
    let token = "2026-11-29T23:40:00Z";
    patch(&scene, &name, json!({"retry": token}));
    scene.wait_rollout(&name, "status.lastRetry", |r| r["status"]["lastRetry"] == token);
    scene.wait("the canary's second attempt", MINUTE, || {
        instruction(&scene, &base, &canary).filter(|i| i.attempt == 1 && i.release == "r2")
    });
    scene.wait_rollout(&name, "the rollout to halt again", |r| {
        r["status"]["phase"] == "halted" && r["status"]["failed"] == 1
    });
    let retried: Vec<_> = reasons(&scene, &name).into_iter().filter(|(r, _)| r == "RetryRequested").collect();
    assert_eq!(retried.len(), 1, "{retried:?}");

    // The value is carried out once: a restarted controller (or another replica) reads it
    // as done from the status and asks nothing more.
    drop(controller);
    drop(devices);
    let controller = scene.controller("replica-a", &[]);
    let base = controller.fleet_url(&scene.ns, "edge");
    // The new process listens on a port of its own.
    let _devices = scene.simulate(&base, 4, Some("r2"));
    scene.wait_condition("Ready", "True", MINUTE);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(instruction(&scene, &base, &canary).unwrap().attempt, 1, "no second retry for one value");
    let retried = reasons(&scene, &name).into_iter().filter(|(r, _)| r == "RetryRequested").count();
    assert_eq!(retried, 1);

    // spec.accept: the canary's failure counts apart, and the rollout goes on to wave 2,
    // which waits for approval.
    patch(&scene, &name, json!({"accept": "accept-1"}));
    let accepted = scene.wait_rollout(&name, "the failure accepted and wave 2 waiting", |r| {
        r["status"]["lastAccept"] == "accept-1"
            && r["status"]["accepted"] == 1
            && r["status"]["message"].as_str().is_some_and(|m| m.contains("wave 2 (rest) waits for approval"))
    });
    assert_eq!(
        (&accepted["status"]["failed"], &accepted["status"]["phase"]),
        (&json!(0), &json!("progressing"))
    );
    assert_eq!(accepted["status"]["waves"][0]["accepted"], 1, "{accepted:#}");
    let ns = &scene.ns;
    let gauge = format!(
        r#"waveguide_controller_rollout_devices{{namespace="{ns}",fleet="edge",rollout="{id}",progress="accepted"}} 1"#
    );
    scene.wait("the accepted device in the metrics", MINUTE, || {
        controller.metrics().lines().any(|l| l == gauge).then_some(())
    });

    // spec.rollback: the canary goes back to r1 through the rollback rollout, a
    // FleetRollout of its own that names what it rolls back; the other devices, never told
    // r2, are told nothing.
    // Aborted first: a finished rollout can still be rolled back, and its FleetRollout
    // shows it.
    patch(&scene, &name, json!({"abort": true}));
    scene.wait_rollout(&name, "the rollout aborted", |r| r["status"]["phase"] == "aborted");
    patch(&scene, &name, json!({"rollback": true}));
    let original =
        scene.wait_rollout(&name, "status.rolledBackAt", |r| r["status"]["rolledBackAt"].is_string());
    assert_eq!(original["status"]["phase"], "aborted", "{original:#}");
    let back = format!("{name}-rollback");
    let rollback = scene
        .wait_rollout(&back, "the rollback rollout to complete", |r| r["status"]["phase"] == "completed");
    assert_eq!(rollback["spec"]["rollbackOf"], id.as_str(), "{rollback:#}");
    assert_eq!(rollback["spec"]["release"], "r1", "{rollback:#}");
    assert_eq!((&rollback["status"]["devices"], &rollback["status"]["updated"]), (&json!(1), &json!(1)));
    let told = instruction(&scene, &base, &canary).unwrap();
    assert_eq!(told.release, "r1", "{told:?}");
    for device in (0..4).map(|i| format!("dev-{i}")).filter(|d| *d != canary) {
        assert_eq!(instruction(&scene, &base, &device), None, "{device} never took r2");
    }
    let table = scene.kubectl(&["get", "fleetrollouts", "-o", "wide"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header.last(), Some(&"ROLLBACK-OF"), "{table}");
    let row = table.lines().find(|l| l.starts_with(&back)).unwrap_or_else(|| panic!("{table}"));
    assert!(row.trim_end().ends_with(&id), "{table}");

    // A token the rollout refuses (it was rolled back) is recorded as asked, with a Warning.
    patch(&scene, &name, json!({"retry": "after-rollback"}));
    scene.wait_rollout(&name, "the refused retry recorded", |r| r["status"]["lastRetry"] == "after-rollback");
    let on_rollout = scene.wait("the Events of the operator's changes", MINUTE, || {
        let all = reasons(&scene, &name);
        all.iter().any(|(r, _)| r == "RetryRefused").then_some(all)
    });
    let order: Vec<&str> = on_rollout.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        order,
        ["RetryRequested", "FailuresAccepted", "RolloutAborted", "RollbackRequested", "RetryRefused"]
    );
    assert!(on_rollout[4].1.contains("spec.retry refused"), "{on_rollout:?}");
    drop(controller);
}
