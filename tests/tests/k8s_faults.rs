//! The real `waveguide controller` against a real kube-apiserver when things go wrong or
//! are held: a refused commit and its revert (each fetched at once through the push
//! webhook), a suspended Fleet whose timestamp is still re-signed, a halted rollout resumed
//! and aborted with kubectl, and the checks a 1.20 API server cannot make.

use std::time::Duration;

use serde_json::{json, Value};
use waveguide_tests::k8s_scene::{fleet_yaml, Scene};
use waveguide_tests::kube::{condition, events, http_get};
use waveguide_tests::{git, git_stdout, repo_root};

const MINUTE: Duration = Duration::from_secs(60);

/// Delivers a GitLab push event to the Fleet's webhook; returns the HTTP status.
fn push_event(url: &str, token: &str) -> String {
    post(url, &[&format!("X-Gitlab-Token: {token}"), "X-Gitlab-Event: Push Hook"], "{}")
}

/// Delivers a GitHub push event, its body signed with `secret` (HMAC-SHA256, computed by
/// openssl as GitHub does); returns the HTTP status.
fn github_push_event(url: &str, secret: &str) -> String {
    let body = r#"{"ref":"refs/heads/main"}"#;
    let mut openssl = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    std::io::Write::write_all(&mut openssl.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let digest = String::from_utf8(openssl.wait_with_output().unwrap().stdout).unwrap();
    let signature = format!("X-Hub-Signature-256: sha256={}", digest.split_whitespace().next().unwrap());
    post(url, &[&signature, "X-GitHub-Event: push", "Content-Type: application/json"], body)
}

fn post(url: &str, headers: &[&str], body: &str) -> String {
    let mut command = std::process::Command::new("curl");
    command.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", url, "--data-binary", body]);
    for header in headers {
        command.args(["-H", header]);
    }
    String::from_utf8(command.output().unwrap().stdout).unwrap()
}

#[test]
fn a_refused_commit_its_revert_and_a_suspended_fleet() {
    let scene = Scene::new("wg-faults", 2);
    let controller = scene.controller("replica-a", &[]);
    scene.kubectl(&["create", "secret", "generic", "edge-webhook", "--from-literal=secret=s3cret"]);
    // Polled once an hour: only the webhook brings commits in quickly. The timestamp
    // expires after 20 s, so it is re-signed every 5 s.
    scene.apply(&scene.fleet(json!({
        "source": {"interval": "1h", "webhookSecretRef": {"name": "edge-webhook", "key": "secret"}},
        "tuf": {"expiries": {"timestamp": "20s"}},
    })));
    let good = scene.wait_condition("Ready", "True", MINUTE)["status"]["lastAppliedCommit"].clone();
    let hook = format!("{}/v1/hooks/git", controller.fleet_url(&scene.ns, "edge"));
    assert_eq!(push_event(&hook, "wrong"), "401", "a wrong token wakes nothing");

    // A commit that does not compile: refused with file and line, the last good one stays.
    scene.write("fleet.yaml", &fleet_yaml(2, "r9", "auto"));
    let bad = scene.commit("a release nobody declared");
    assert_eq!(push_event(&hook, "s3cret"), "202");
    let fleet = scene.wait_condition("Validated", "False", Duration::from_secs(20));
    let validated = condition(&fleet, "Validated").unwrap();
    assert_eq!(validated["reason"], "CommitRefused");
    assert!(validated["message"].as_str().unwrap().contains("fleet.yaml:"), "{validated:#}");
    assert_eq!(condition(&fleet, "Ready").unwrap()["status"], "False");
    assert_eq!(fleet["status"]["lastAttemptedCommit"], bad.as_str());
    assert_eq!(fleet["status"]["lastAppliedCommit"], good);

    // Its revert: the fleet in force again, so Validated and Ready come back.
    git(&scene.repo(), &["revert", "--no-edit", "HEAD"]);
    let revert = git_stdout(&scene.repo(), &["rev-parse", "HEAD"]);
    assert_eq!(github_push_event(&hook, "wrong"), "401", "a wrong signature wakes nothing");
    assert_eq!(github_push_event(&hook, "s3cret"), "202");
    let fleet = scene.wait_condition("Validated", "True", Duration::from_secs(20));
    assert_eq!(condition(&fleet, "Ready").unwrap()["status"], "True", "{fleet:#}");
    assert_eq!(fleet["status"]["lastAppliedCommit"], revert.as_str());
    let refused: Vec<_> = events(&scene.cluster, &scene.ns, "Fleet", "edge")
        .into_iter()
        .filter(|(reason, _)| reason == "CommitRefused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].1.starts_with(&format!("commit {bad} refused")), "{refused:?}");
    let metrics = controller.metrics();
    let errors = format!(
        r#"waveguide_controller_reconcile_errors_total{{namespace="{}",fleet="edge",stage="compile"}} 1"#,
        scene.ns
    );
    assert!(metrics.lines().any(|l| l == errors), "no {errors} in:\n{metrics}");

    // Suspended: no fetching, no publishing, but the timestamp is still re-signed.
    scene.kubectl(&["patch", "fleet", "edge", "--type", "merge", "-p", r#"{"spec":{"suspend":true}}"#]);
    let fleet = scene.wait("Ready=False Suspended", MINUTE, || {
        let fleet = scene.fleet_object()?;
        (condition(&fleet, "Ready")?["reason"] == "Suspended").then_some(fleet)
    });
    assert_eq!(fleet["status"]["observedGeneration"], fleet["metadata"]["generation"]);
    let timestamp_url = format!("{}/tuf/metadata/timestamp.json", controller.fleet_url(&scene.ns, "edge"));
    let timestamp = || -> Option<Value> { serde_json::from_str(&http_get(&timestamp_url)?).ok() };
    let before = timestamp().expect("the timestamp is served")["signed"]["version"].as_u64().unwrap();
    let resigned = scene.wait("the timestamp re-signed twice while suspended", MINUTE, || {
        let now = timestamp()?;
        (now["signed"]["version"].as_u64()? >= before + 2).then_some(now)
    });
    let expires: jiff::Timestamp = resigned["signed"]["expires"].as_str().unwrap().parse().unwrap();
    assert!(expires > jiff::Timestamp::now(), "{resigned:#}");
    // Also by a controller that starts while the Fleet is suspended (no commit applied
    // in this process).
    let mut controller = controller;
    controller.signal("TERM");
    assert!(controller.wait(Duration::from_secs(30)).success(), "{}", controller.log_text());
    let controller = scene.controller_over("replica-b", &scene.dir.path().join("data-replica-a"), &[]);
    let timestamp_url = format!("{}/tuf/metadata/timestamp.json", controller.fleet_url(&scene.ns, "edge"));
    let timestamp = || -> Option<Value> { serde_json::from_str(&http_get(&timestamp_url)?).ok() };
    let before = resigned["signed"]["version"].as_u64().unwrap();
    scene.wait("the timestamp re-signed after a restart while suspended", MINUTE, || {
        (timestamp()?["signed"]["version"].as_u64()? >= before + 2).then_some(())
    });
    let hook = format!("{}/v1/hooks/git", controller.fleet_url(&scene.ns, "edge"));
    // A suspended Fleet ignores new commits.
    scene.write("fleet.yaml", &fleet_yaml(2, "r3", "auto"));
    scene.commit("r3 while suspended");
    assert_eq!(push_event(&hook, "s3cret"), "202");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(scene.fleet_object().unwrap()["status"]["lastAppliedCommit"], revert.as_str());
}

#[test]
fn a_halted_rollout_is_resumed_then_aborted_with_kubectl() {
    let scene = Scene::new("wg-halt", 4);
    scene.write("fleet.yaml", &fleet_yaml(4, "r2", "auto"));
    scene.commit("automatic waves");
    let controller = scene.controller("replica-a", &[]);
    scene.apply(&scene.fleet(json!({})));
    scene.wait_condition("Ready", "True", MINUTE);
    // Every install of r2 fails: the canary wave halts the rollout.
    let _devices = scene.simulate(&controller.fleet_url(&scene.ns, "edge"), 4, Some("r2"));
    let rollout = scene.rollout(MINUTE);
    let name = rollout["metadata"]["name"].as_str().unwrap().to_owned();
    scene.wait_rollout(&name, "phase halted", |r| r["status"]["phase"] == "halted");

    // `paused: false` resumes a halted rollout (it was never paused): the engine takes it
    // up again, and halts it again as its canary still fails.
    scene.kubectl(&["patch", "fleetrollout", &name, "--type", "merge", "-p", r#"{"spec":{"paused":false}}"#]);
    scene.wait("the resume and a second halt", MINUTE, || {
        let on_rollout = events(&scene.cluster, &scene.ns, "FleetRollout", &name);
        let on_fleet = events(&scene.cluster, &scene.ns, "Fleet", "edge");
        let halts = on_fleet.iter().filter(|(reason, _)| reason == "RolloutHalted").count();
        (on_rollout.iter().any(|(reason, _)| reason == "RolloutResumed") && halts >= 2).then_some(())
    });
    let resumed = scene.cluster.get(&scene.ns, "fleetrollout", &name).unwrap();
    assert_eq!(resumed["status"]["observedGeneration"], resumed["metadata"]["generation"]);
    // Only once for that change of the spec.
    std::thread::sleep(Duration::from_secs(3));
    let resumes = events(&scene.cluster, &scene.ns, "FleetRollout", &name)
        .into_iter()
        .filter(|(reason, _)| reason == "RolloutResumed")
        .count();
    assert_eq!(resumes, 1);

    scene.kubectl(&["patch", "fleetrollout", &name, "--type", "merge", "-p", r#"{"spec":{"abort":true}}"#]);
    scene.wait_rollout(&name, "phase aborted", |r| r["status"]["phase"] == "aborted");
    let on_rollout = events(&scene.cluster, &scene.ns, "FleetRollout", &name);
    assert_eq!(on_rollout.last().unwrap().0, "RolloutAborted", "{on_rollout:?}");
    let fleet = scene.wait("no active rollout", MINUTE, || {
        let fleet = scene.fleet_object()?;
        (fleet["status"]["activeRollouts"] == 0).then_some(fleet)
    });
    assert_eq!(condition(&fleet, "Ready").unwrap()["status"], "True");
}

/// What the API server checks and what only the controller does: CEL rules
/// (`x-kubernetes-validations`, Kubernetes 1.25 and later) are dropped by older servers,
/// so a Fleet naming both a branch and a tag is accepted there and refused by the
/// controller with `InvalidSettings`; patterns (OpenAPI) are checked by every server.
#[test]
fn checks_a_server_older_than_1_25_cannot_make() {
    let scene = Scene::new("wg-checks", 1);
    let _controller = scene.controller("replica-a", &[]);
    let both = scene.fleet(json!({"source": {"ref": {"branch": "main", "tag": "v1"}}}));
    let output = scene.cluster.kubectl_with(&["apply", "-f", "-"], Some(&both));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if scene.cluster.server_minor_version() >= 25 {
        assert!(
            !output.status.success() && stderr.contains("set exactly one of branch, tag and commit"),
            "{stderr}"
        );
    } else {
        assert!(output.status.success(), "a 1.20 server does not evaluate CEL rules: {stderr}");
        let fleet = scene.wait("Ready=False InvalidSettings", MINUTE, || {
            let fleet = scene.fleet_object()?;
            (condition(&fleet, "Ready")?["reason"] == "InvalidSettings").then_some(fleet)
        });
        let ready = condition(&fleet, "Ready").unwrap();
        assert!(
            ready["message"]
                .as_str()
                .unwrap()
                .contains("source.ref: set exactly one of branch, tag and commit"),
            "{ready:#}"
        );
        assert_eq!(scene.cluster.list(&scene.ns, "fleetrollouts"), Vec::<Value>::new());
    }
    // A pattern is an OpenAPI check: every server refuses this interval.
    let bad_interval = scene.fleet(json!({"source": {"interval": "soon"}}));
    let output = scene.cluster.kubectl_with(&["apply", "-f", "-"], Some(&bad_interval));
    assert!(!output.status.success(), "the API server checks patterns");
    assert!(String::from_utf8_lossy(&output.stderr).contains("spec.source.interval"));

    // The documented CRD upgrade works on every supported server.
    let crds = repo_root().join("charts/waveguide/crds");
    scene.cluster.kubectl_ok(&["replace", "--validate=false", "-f", crds.to_str().unwrap()]);
}
