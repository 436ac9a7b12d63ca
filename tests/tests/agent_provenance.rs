//! Provenance and downgrades, with the agent against a real device API, SQLite inventory
//! and published TUF repository on 127.0.0.1: the device reports the fleet commit its
//! release came from, and refuses to move to a lower version unless its instruction says
//! the policy allows it.

use waveguide::agent::{Agent, AgentConfig, CommandInstaller, Installer, PollOutcome};
use waveguide::protocol::{DeviceKey, FailureClass, UpdateState};
use waveguide::publish::Batch;
use waveguide_tests::agent::{instruction, Controller};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_reports_its_commit_and_refuses_a_downgrade_it_was_not_allowed() {
    let c = Controller::start().await;
    let key = DeviceKey::generate();
    c.declare(&[("gw-1", key.public_key_b64())]).await;
    let state = c.tmp.path().join("state-gw-1");
    let installs = c.tmp.path().join("installs");
    let agent_key = DeviceKey::from_pkcs8(key.pkcs8()).unwrap();
    let mut agent = Agent::open(
        AgentConfig::new(c.base.clone(), "gw-1".parse().unwrap()),
        reqwest::Client::new(),
        agent_key,
        &state,
        &c.root_file(),
        (Some("factory".into()), "1.0.0".parse().unwrap()),
        Installer::Command(CommandInstaller {
            install: Some(format!("echo \"$WAVEGUIDE_VERSION\" >> {}", installs.display())),
            ..CommandInstaller::default()
        }),
    )
    .unwrap();
    let installed = || std::fs::read_to_string(&installs).unwrap_or_default();

    // 2.0.0 from commit c0ffee01: installed, and every report from then on names it.
    let v2 = c.artifact("r2", "app.bin", b"two");
    let mut told = instruction("gw-1", "r2", "2.0.0", &[&v2]);
    told.commit = Some("c0ffee01".into());
    c.publish(Batch { upserts: vec![told], releases: vec![v2], ..Batch::default() });
    assert_eq!(agent.once().await.unwrap(), PollOutcome::Installed { healthy: true });
    // (The history comes oldest first.)
    let history = c.history("gw-1").await;
    assert_eq!(history.last().unwrap().commit.as_deref(), Some("c0ffee01"));
    assert_eq!(history[0].commit, None, "the factory release came from no commit");

    // 1.5.0 without allowDowngrade: refused as a verification failure, nothing installed.
    let old = c.artifact("r1", "app.bin", b"one and a half");
    let mut back = instruction("gw-1", "r1", "1.5.0", &[&old]);
    back.commit = Some("badc0ffe".into());
    c.publish(Batch { upserts: vec![back.clone()], releases: vec![old.clone()], ..Batch::default() });
    let PollOutcome::Failed { failure, error } = agent.once().await.unwrap() else { panic!("not refused") };
    assert_eq!(failure, FailureClass::Verification);
    assert!(error.contains("refusing to downgrade from 2.0.0 to r1 1.5.0"), "{error}");
    assert_eq!(installed(), "2.0.0\n");
    let history = c.history("gw-1").await;
    let report = history.last().unwrap();
    assert_eq!(
        (report.report.state, report.report.failure),
        (UpdateState::Failed, Some(FailureClass::Verification))
    );
    assert_eq!(
        (report.report.version.to_string(), report.commit.as_deref()),
        ("2.0.0".to_string(), Some("c0ffee01")),
        "still runs 2.0.0 from its commit"
    );

    // The same release with the policy's permission (or a rollback's): installed.
    back.allow_downgrade = true;
    back.rollout = "rollout-r1-rollback".into();
    c.publish(Batch { upserts: vec![back], releases: vec![old], ..Batch::default() });
    assert_eq!(agent.once().await.unwrap(), PollOutcome::Installed { healthy: true });
    assert_eq!(installed(), "2.0.0\n1.5.0\n");
    assert_eq!(c.history("gw-1").await.last().unwrap().commit.as_deref(), Some("badc0ffe"));
}
