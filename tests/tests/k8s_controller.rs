//! The real `waveguide controller` binary against a real kube-apiserver (1.20, from
//! `scripts/kube-apiserver`), run with the chart's ServiceAccount and RBAC, with `kubectl`
//! as the operator and `waveguide simulate` devices reporting through the controller's
//! per-fleet routes. These are the steps of docs/kubernetes.md.

use std::time::Duration;

use serde_json::json;
use waveguide_tests::git_stdout;
use waveguide_tests::k8s_scene::{fleet_yaml, Scene};
use waveguide_tests::kube::{condition, events};

const MINUTE: Duration = Duration::from_secs(60);

fn reasons(events: &[(String, String)], reason: &str) -> Vec<String> {
    events.iter().filter(|(r, _)| r == reason).map(|(_, note)| note.clone()).collect()
}

#[test]
fn a_fleet_rolls_out_through_the_controller_with_kubectl_steering() {
    let scene = Scene::new("wg-rollout", 4);
    let controller = scene.controller("replica-a", &[]);
    let first = git_stdout(&scene.repo(), &["rev-parse", "HEAD"]);
    scene.apply(&scene.fleet(json!({})));

    // Conditions, finalizer, observed generation and the print columns.
    let fleet = scene.wait_condition("Ready", "True", MINUTE);
    assert_eq!(fleet["metadata"]["finalizers"], json!(["waveguide.dev/cleanup"]));
    assert_eq!(fleet["status"]["observedGeneration"], fleet["metadata"]["generation"]);
    assert_eq!(fleet["status"]["lastAppliedCommit"], first.as_str());
    for type_ in ["SourceReady", "Validated", "Published"] {
        assert_eq!(condition(&fleet, type_).unwrap()["status"], "True", "{type_}: {fleet:#}");
    }
    let table = scene.kubectl(&["get", "fleets"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "COMMIT", "DEVICES", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["edge", "True", first.as_str(), "4"], "{table}");

    // Devices report through /fleets/<ns>/edge/ and the canary wave goes out.
    let _devices = scene.simulate(&controller.fleet_url(&scene.ns, "edge"), 4, None);
    let rollout = scene.rollout(MINUTE);
    let name = rollout["metadata"]["name"].as_str().unwrap().to_owned();
    let owner = &rollout["metadata"]["ownerReferences"][0];
    assert_eq!((&owner["kind"], &owner["uid"]), (&json!("Fleet"), &fleet["metadata"]["uid"]));
    assert_eq!(owner["blockOwnerDeletion"], true);
    scene.wait_rollout(&name, "the canary healthy and wave 2 waiting for approval", |r| {
        r["status"]["updated"] == 1
            && r["status"]["message"].as_str().is_some_and(|m| m.contains("wave 2 (rest) waits for approval"))
    });

    // Pause and resume with kubectl patch (docs/kubernetes.md, "Pause, approve, abort").
    scene.kubectl(&["patch", "fleetrollout", &name, "--type", "merge", "-p", r#"{"spec":{"paused":true}}"#]);
    scene.wait_rollout(&name, "phase paused", |r| r["status"]["phase"] == "paused");
    scene.kubectl(&["patch", "fleetrollout", &name, "--type", "merge", "-p", r#"{"spec":{"paused":false}}"#]);
    scene.wait_rollout(&name, "phase progressing", |r| r["status"]["phase"] == "progressing");
    // Approve wave 2: every device ends on r2.
    scene.kubectl(&[
        "patch",
        "fleetrollout",
        &name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"approvedWaves":[2]}}"#,
    ]);
    let done = scene.wait_rollout(&name, "the rollout to complete", |r| r["status"]["phase"] == "completed");
    assert_eq!((&done["status"]["updated"], &done["status"]["devices"]), (&json!(4), &json!(4)), "{done:#}");
    let table = scene.kubectl(&["get", "fleetrollouts"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "POLICY", "RELEASE", "WAVE", "UPDATED", "FAILED", "PHASE", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..7], [name.as_str(), "all", "r2", "2/2", "4", "0", "completed"], "{table}");

    // Events: one per fact, each with its own note, read back from the API server.
    let on_fleet = events(&scene.cluster, &scene.ns, "Fleet", "edge");
    assert_eq!(reasons(&on_fleet, "CommitApplied"), [format!("commit {first} applied: 4 devices")]);
    assert_eq!(reasons(&on_fleet, "RolloutStarted").len(), 1, "{on_fleet:?}");
    let published = reasons(&on_fleet, "WavePublished");
    assert_eq!(published.len(), 2, "{on_fleet:?}");
    assert!(published[0].contains("wave 1 (canary) published to 1 devices"), "{published:?}");
    assert!(published[1].contains("wave 2 (rest) published to 3 devices"), "{published:?}");
    assert_eq!(reasons(&on_fleet, "WaveSucceeded").len(), 2, "{on_fleet:?}");
    assert_eq!(reasons(&on_fleet, "RolloutCompleted").len(), 1, "{on_fleet:?}");
    // As docs/kubernetes.md shows them.
    let listed = scene.kubectl(&["get", "events", "--field-selector", "involvedObject.name=edge"]);
    assert!(listed.contains(&format!("commit {first} applied: 4 devices")), "{listed}");
    let on_rollout: Vec<String> = events(&scene.cluster, &scene.ns, "FleetRollout", &name)
        .into_iter()
        .map(|(reason, _)| reason)
        .collect();
    assert_eq!(on_rollout, ["RolloutPaused", "RolloutResumed", "WaveApproved"]);

    // The metrics a Prometheus user scrapes.
    let metrics = controller.metrics();
    let ns = &scene.ns;
    for line in [
        format!(r#"waveguide_controller_rollouts{{namespace="{ns}",fleet="edge",phase="completed"}} 1"#),
        format!(r#"waveguide_controller_rollouts{{namespace="{ns}",fleet="edge",phase="progressing"}} 0"#),
        format!(
            r#"waveguide_controller_devices{{namespace="{ns}",fleet="edge",state="installed",release="r2"}} 4"#
        ),
        format!(r#"waveguide_controller_rollout_wave{{namespace="{ns}",fleet="edge",rollout="all-1"}} 2"#),
        format!(
            r#"waveguide_controller_rollout_devices{{namespace="{ns}",fleet="edge",rollout="all-1",progress="healthy"}} 4"#
        ),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line} in:\n{metrics}");
    }
    for role in ["timestamp", "snapshot", "targets", "releases", "root"] {
        let prefix = format!(
            r#"waveguide_controller_tuf_expiry_seconds{{namespace="{ns}",fleet="edge",role="{role}"}} "#
        );
        let line =
            metrics.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{prefix}\n{metrics}"));
        let seconds: f64 = line[prefix.len()..].parse().unwrap();
        assert!(seconds > 3600.0, "{line}");
    }
    assert!(metrics.contains(&format!(
        r#"waveguide_controller_source_last_fetch_timestamp_seconds{{namespace="{ns}",fleet="edge"}}"#
    )));

    // The next release: a new rollout; the finished one keeps its counts although its
    // devices move on.
    scene.write("fleet.yaml", &fleet_yaml(4, "r3", "auto"));
    scene.commit("all to r3");
    scene.wait("a second rollout to complete", MINUTE, || {
        let all = scene.cluster.list(&scene.ns, "fleetrollouts");
        all.iter().any(|r| r["spec"]["release"] == "r3" && r["status"]["phase"] == "completed").then_some(())
    });
    let old = scene.cluster.get(&scene.ns, "fleetrollout", &name).unwrap();
    assert_eq!(old["status"]["updated"], 4, "a completed rollout's counts stay: {old:#}");

    // Deleting the Fleet: the finalizer deletes its FleetRollouts (a bare API server has no
    // garbage collector) and its Lease, then lets it go.
    scene.kubectl(&["delete", "fleet", "edge", "--wait=false"]);
    scene.wait("the Fleet to be gone", MINUTE, || scene.fleet_object().is_none().then_some(()));
    assert_eq!(scene.cluster.list(&scene.ns, "fleetrollouts"), Vec::<serde_json::Value>::new());
    assert!(scene.cluster.get(&scene.ns, "lease", "waveguide-fleet-edge").is_none(), "the Lease is deleted");

    // Created again: it resumes from the inventory, its FleetRollouts owned by the new uid.
    scene.apply(&scene.fleet(json!({})));
    let again = scene.wait_condition("Ready", "True", MINUTE);
    assert_ne!(again["metadata"]["uid"], fleet["metadata"]["uid"]);
    let rollouts = scene.wait("both FleetRollouts back", MINUTE, || {
        let all = scene.cluster.list(&scene.ns, "fleetrollouts");
        (all.len() == 2).then_some(all)
    });
    for rollout in rollouts {
        assert_eq!(rollout["metadata"]["ownerReferences"][0]["uid"], again["metadata"]["uid"], "{rollout:#}");
    }
    drop(controller);
}
