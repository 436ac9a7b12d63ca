//! The device agent against a real device API, SQLite inventory and published TUF
//! repository on 127.0.0.1: it installs what it is told, reports each step, refuses
//! what does not verify, holds for maintenance windows and resumes after a restart.

use std::path::{Path, PathBuf};

use waveguide::agent::{Agent, AgentConfig, CommandInstaller, Installer, PollOutcome};
use waveguide::protocol::DeviceKey;
use waveguide::protocol::MaintenanceWindow;
use waveguide::protocol::{FailureClass, UpdateState};
use waveguide::publish::{Batch, Expiries, Repository};
use waveguide_tests::agent::{instruction, Controller, CONFIRMED_UPDATE, TOKEN};
use waveguide_tests::waveguide;

fn open_agent(c: &Controller, id: &str, key: &DeviceKey, state: &Path, install: Option<&str>) -> Agent {
    let key = DeviceKey::from_pkcs8(key.pkcs8()).unwrap();
    Agent::open(
        AgentConfig::new(c.base.clone(), id.parse().unwrap()),
        reqwest::Client::new(),
        key,
        state,
        &c.root_file(),
        (Some("factory".into()), "1.0.0".parse().unwrap()),
        Installer::Command(CommandInstaller {
            install: install.map(str::to_owned),
            ..CommandInstaller::default()
        }),
    )
    .unwrap()
}

/// A declared device with its key and state directory.
async fn device(c: &Controller, id: &str) -> (DeviceKey, PathBuf) {
    let key = DeviceKey::generate();
    c.declare(&[(id, key.public_key_b64())]).await;
    (key, c.tmp.path().join(format!("state-{id}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_installs_a_published_instruction_and_reports_it() {
    let c = Controller::start().await;
    let (key, state) = device(&c, "gw-1").await;
    let image = c.artifact("r2", "app.bin", b"release two image");
    let config = c.artifact("r2", "config.json", b"{\"mode\":\"fast\"}");
    c.publish(Batch {
        upserts: vec![instruction("gw-1", "r2", "2.0.0", &[&image, &config])],
        releases: vec![image.clone(), config.clone()],
        ..Batch::default()
    });
    let env_file = c.tmp.path().join("install-env");
    let install = format!(
        "printf '%s|%s|%s\\n%s\\n' \"$WAVEGUIDE_DEVICE_ID\" \"$WAVEGUIDE_RELEASE\" \"$WAVEGUIDE_VERSION\" \"$WAVEGUIDE_ARTIFACTS\" > {}",
        env_file.display()
    );
    let mut agent = open_agent(&c, "gw-1", &key, &state, Some(&install));
    assert_eq!(agent.once().await.unwrap(), PollOutcome::Installed { healthy: true });

    let env = std::fs::read_to_string(&env_file).unwrap();
    let mut lines = env.lines();
    assert_eq!(lines.next(), Some("gw-1|r2|2.0.0"));
    let files: Vec<&str> = lines.collect();
    assert_eq!(files.len(), 2, "{env}");
    assert_eq!(std::fs::read(files[0]).unwrap(), b"release two image");
    assert_eq!(std::fs::read(files[1]).unwrap(), b"{\"mode\":\"fast\"}");

    let inventory = c.api.store().inventory().await.unwrap();
    let report = inventory.get("gw-1").unwrap();
    assert_eq!(report.release.as_deref(), Some("r2"));
    assert_eq!(report.version.to_string(), "2.0.0");
    assert_eq!(report.state, UpdateState::Installed);
    assert!(report.healthy);
    let states = c.states("gw-1").await;
    assert_eq!(states, CONFIRMED_UPDATE);
    // The progress reports name what the device still ran.
    let history = c.history("gw-1").await;
    assert_eq!(history[0].report.release.as_deref(), Some("factory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_install_is_reported_with_its_stderr_and_not_retried_until_the_instruction_changes() {
    let c = Controller::start().await;
    let (key, state) = device(&c, "gw-2").await;
    let image = c.artifact("r2", "app.bin", b"two");
    c.publish(Batch {
        upserts: vec![instruction("gw-2", "r2", "2.0.0", &[&image])],
        releases: vec![image.clone()],
        ..Batch::default()
    });
    let attempts = c.tmp.path().join("attempts");
    let install =
        format!("echo attempt >> {}; echo 'disk full: cannot write /data' >&2; exit 3", attempts.display());
    let mut agent = open_agent(&c, "gw-2", &key, &state, Some(&install));
    let PollOutcome::Failed { failure: FailureClass::Install, error } = agent.once().await.unwrap() else {
        panic!("the install must fail")
    };
    assert!(error.contains("disk full: cannot write /data"), "{error}");
    let report = c.last_report("gw-2");
    assert_eq!((report.state, report.failure), (UpdateState::Failed, Some(FailureClass::Install)));

    let history = c.history("gw-2").await;
    let failed = history.iter().find(|r| r.report.state == UpdateState::Failed).expect("a failed report");
    assert!(failed.detail.as_deref().unwrap().contains("disk full: cannot write /data"), "{failed:?}");
    assert_eq!(failed.report.release.as_deref(), Some("factory"), "it still runs the factory release");

    // Same instruction: not tried again, even after a restart.
    assert_eq!(agent.once().await.unwrap(), PollOutcome::AlreadyFailed);
    drop(agent);
    let mut agent = open_agent(&c, "gw-2", &key, &state, Some(&install));
    assert_eq!(agent.once().await.unwrap(), PollOutcome::AlreadyFailed);
    assert_eq!(std::fs::read_to_string(&attempts).unwrap().lines().count(), 1);
    assert_eq!(agent.state().failures.len(), 1);

    // A new version is a new instruction: tried again.
    let image3 = c.artifact("r3", "app.bin", b"three");
    c.publish(Batch {
        upserts: vec![instruction("gw-2", "r3", "3.0.0", &[&image3])],
        releases: vec![image3],
        ..Batch::default()
    });
    assert!(matches!(agent.once().await.unwrap(), PollOutcome::Failed { .. }));
    assert_eq!(std::fs::read_to_string(&attempts).unwrap().lines().count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_maintenance_window_holds_the_install() {
    let c = Controller::start().await;
    let (key, state) = device(&c, "gw-3").await;
    let image = c.artifact("r2", "app.bin", b"two");
    let mut held = instruction("gw-3", "r2", "2.0.0", &[&image]);
    // Open one minute a year, at a time the test is not running.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let month = if now.month() == 6 { 7 } else { 6 };
    held.maintenance_windows = vec![MaintenanceWindow {
        schedule: format!("0 3 15 {month} *"),
        duration: "1m".into(),
        time_zone: None,
    }];
    c.publish(Batch { upserts: vec![held], releases: vec![image.clone()], ..Batch::default() });
    let marker = c.tmp.path().join("installed");
    let mut agent = open_agent(&c, "gw-3", &key, &state, Some(&format!("touch {}", marker.display())));
    let PollOutcome::Held { next_open } = agent.once().await.unwrap() else { panic!("held") };
    assert!(next_open.unwrap() > jiff::Timestamp::now());
    assert!(!marker.exists());
    assert_eq!(c.states("gw-3").await, [UpdateState::Idle], "only the heartbeat");

    // A window open now lets it through.
    let mut open = instruction("gw-3", "r2", "2.0.0", &[&image]);
    open.maintenance_windows = vec![MaintenanceWindow {
        schedule: "* * * * *".into(),
        duration: "2m".into(),
        time_zone: Some("Europe/Berlin".into()),
    }];
    c.publish(Batch { upserts: vec![open], ..Batch::default() });
    assert_eq!(agent.once().await.unwrap(), PollOutcome::Installed { healthy: true });
    assert!(marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_that_does_not_match_its_signed_hash_is_refused_and_reported() {
    let c = Controller::start().await;
    let (key, state) = device(&c, "gw-4").await;
    let image = c.artifact("r2", "app.bin", b"genuine image");
    c.publish(Batch {
        upserts: vec![instruction("gw-4", "r2", "2.0.0", &[&image])],
        releases: vec![image.clone()],
        ..Batch::default()
    });
    // The mirror serves other bytes of the same length.
    std::fs::write(c.artifact_file(&image), b"evil! image!!").unwrap();
    let marker = c.tmp.path().join("installed");
    let mut agent = open_agent(&c, "gw-4", &key, &state, Some(&format!("touch {}", marker.display())));
    let PollOutcome::Failed { failure: FailureClass::Verification, error } = agent.once().await.unwrap()
    else {
        panic!("must fail")
    };
    assert!(error.contains("sha256"), "{error}");
    assert_eq!(c.last_report("gw-4").failure, Some(FailureClass::Verification));
    assert!(!marker.exists(), "nothing installed");
    assert!(!state.join("artifacts/r2/app.bin").exists(), "nothing kept");
    let inventory = c.api.store().inventory().await.unwrap();
    assert_eq!(inventory.get("gw-4").unwrap().state, UpdateState::Failed);
    assert_eq!(inventory.get("gw-4").unwrap().release.as_deref(), Some("factory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_or_tampered_metadata_is_refused_and_nothing_installed() {
    let c = Controller::start().await;
    let (key, state) = device(&c, "gw-5").await;
    let image = c.artifact("r2", "app.bin", b"two");
    let marker = c.tmp.path().join("installed");
    let install = format!("touch {}", marker.display());

    // An expired timestamp.
    let mut repo = Repository::open(&c.repo(), &c.keys).unwrap();
    repo.set_expiries(Expiries { timestamp: jiff::SignedDuration::from_secs(-60), ..Expiries::default() });
    let report = repo
        .commit(Batch {
            upserts: vec![instruction("gw-5", "r2", "2.0.0", &[&image])],
            releases: vec![image.clone()],
            ..Batch::default()
        })
        .unwrap();
    drop(repo);
    let mut agent = open_agent(&c, "gw-5", &key, &state, Some(&install));
    let err = agent.once().await.unwrap_err();
    assert!(format!("{err:#}").contains("timestamp metadata expired"), "{err:#}");
    assert!(!marker.exists());

    // A fresh timestamp over a tampered leaf bin.
    Repository::open(&c.repo(), &c.keys).unwrap().refresh(jiff::SignedDuration::from_hours(1)).unwrap();
    c.tamper_leaf_bin(&report);
    let err = agent.once().await.unwrap_err();
    assert!(format!("{err:#}").contains("is not signed by its keys"), "{err:#}");
    assert!(!marker.exists());
    let states = c.states("gw-5").await;
    assert!(states.iter().all(|s| *s == UpdateState::Idle), "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_resumes_without_reinstalling() {
    let c = Controller::start().await;
    let (key, state) = device(&c, "gw-6").await;
    let image = c.artifact("r2", "app.bin", b"two");
    c.publish(Batch {
        upserts: vec![instruction("gw-6", "r2", "2.0.0", &[&image])],
        releases: vec![image],
        ..Batch::default()
    });
    let count = c.tmp.path().join("installs");
    let install = format!("echo x >> {}", count.display());
    let mut agent = open_agent(&c, "gw-6", &key, &state, Some(&install));
    assert_eq!(agent.once().await.unwrap(), PollOutcome::Installed { healthy: true });
    let trusted_snapshot = agent.tuf().trusted().snapshot_version();
    drop(agent);

    let mut agent = open_agent(&c, "gw-6", &key, &state, Some(&install));
    assert_eq!(agent.state().release.as_deref(), Some("r2"));
    assert_eq!(agent.tuf().trusted().snapshot_version(), trusted_snapshot, "trusted metadata persisted");
    assert_eq!(agent.once().await.unwrap(), PollOutcome::UpToDate);
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
    let inventory = c.api.store().inventory().await.unwrap();
    assert_eq!(inventory.get("gw-6").unwrap().state, UpdateState::Installed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_enrolls_installs_and_exits_with_once() {
    let c = Controller::start().await;
    let image = c.artifact("r2", "app.bin", b"two");
    c.publish(Batch {
        upserts: vec![instruction("cam-9", "r2", "2.0.0", &[&image])],
        releases: vec![image],
        ..Batch::default()
    });
    let key = c.tmp.path().join("device/key.pk8");
    let state = c.tmp.path().join("device/state");
    let marker = c.tmp.path().join("installed");
    let args: Vec<String> = vec![
        "agent".into(),
        "--server".into(),
        c.base.to_string(),
        "--device-id".into(),
        "cam-9".into(),
        "--key".into(),
        key.display().to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--root".into(),
        c.root_file().display().to_string(),
        "--enroll-token".into(),
        TOKEN.into(),
        "--install-cmd".into(),
        format!("cp \"$WAVEGUIDE_ARTIFACTS\" {}", marker.display()),
        "--health-cmd".into(),
        "test \"$WAVEGUIDE_RELEASE\" = r2".into(),
        "--once".into(),
    ];
    let run = move || waveguide().args(&args).output().unwrap();
    let output = tokio::task::spawn_blocking(run.clone()).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("cam-9: installed (runs r2 2.0.0, installed)"), "{stdout}");
    assert_eq!(std::fs::read(&marker).unwrap(), b"two");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let device = c.api.store().device("cam-9").await.unwrap().unwrap();
    assert_eq!(device.group, "lab");
    let inventory = c.api.store().inventory().await.unwrap();
    assert_eq!(inventory.get("cam-9").unwrap().release.as_deref(), Some("r2"));
    assert!(inventory.get("cam-9").unwrap().healthy);

    // Run again: enrolled already, up to date, nothing reinstalled.
    std::fs::remove_file(&marker).unwrap();
    let output = tokio::task::spawn_blocking(run).await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("up to date"));
    assert!(!marker.exists());
}

/// The agent follows the fleet repository's rule of device ids: an id the controller
/// would refuse stops it before it creates a key or contacts anyone.
#[test]
fn the_agent_binary_refuses_an_invalid_device_id() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key.pk8");
    let state = tmp.path().join("state");
    let output = waveguide()
        .args(["agent", "--server", "http://127.0.0.1:9/", "--device-id", "cam 9", "--key"])
        .arg(&key)
        .arg("--state-dir")
        .arg(&state)
        .args(["--root", "root.json", "--once"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--device-id"), "{stderr}");
    assert!(stderr.contains("a device id may hold only letters, digits, '.', '_' and '-'"), "{stderr}");
    assert!(!key.exists() && !state.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_the_repository_does_not_hold_comes_from_its_signed_url() {
    let c = Controller::start().await;
    let (key, state) = device(&c, "gw-7").await;
    // A download server of its own, holding the artifact the repository only signs.
    let downloads = c.tmp.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    std::fs::write(downloads.join("app.bin"), b"from the mirror").unwrap();
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(&downloads));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mirror = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut image = c.artifact("r2", "app.bin", b"from the mirror");
    image.file = None;
    image.url = format!("{mirror}/app.bin");
    c.publish(Batch {
        upserts: vec![instruction("gw-7", "r2", "2.0.0", &[&image])],
        releases: vec![image.clone()],
        ..Batch::default()
    });
    assert!(!c.artifact_file(&image).exists());
    let mut agent = open_agent(&c, "gw-7", &key, &state, None);
    assert_eq!(agent.once().await.unwrap(), PollOutcome::Installed { healthy: true });
    assert_eq!(std::fs::read(state.join("artifacts/r2/app.bin")).unwrap(), b"from the mirror");

    // The mirror changes the file: refused.
    std::fs::write(downloads.join("app.bin"), b"from the MIRROR").unwrap();
    let mut image3 = image.clone();
    image3.release = "r3".into();
    image3.url = format!("{mirror}/app.bin");
    c.publish(Batch {
        upserts: vec![instruction("gw-7", "r3", "3.0.0", &[&image3])],
        releases: vec![image3],
        ..Batch::default()
    });
    let PollOutcome::Failed { failure: FailureClass::Verification, error } = agent.once().await.unwrap()
    else {
        panic!("must fail")
    };
    assert!(error.contains("does not match the signed"), "{error}");

    // The mirror is down: a download failure, which a retry may cure.
    std::fs::remove_file(downloads.join("app.bin")).unwrap();
    let mut image4 = image.clone();
    image4.release = "r4".into();
    image4.url = format!("{mirror}/app.bin");
    c.publish(Batch {
        upserts: vec![instruction("gw-7", "r4", "4.0.0", &[&image4])],
        releases: vec![image4],
        ..Batch::default()
    });
    let PollOutcome::Failed { failure: FailureClass::Download, error } = agent.once().await.unwrap() else {
        panic!("must fail")
    };
    assert!(error.contains("not found"), "{error}");
    let report = c.last_report("gw-7");
    assert_eq!((report.state, report.failure), (UpdateState::Failed, Some(FailureClass::Download)));
    assert_eq!(report.release.as_deref(), Some("r2"), "it still runs r2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_conflict_is_an_error_that_names_the_reason() {
    let c = Controller::start().await;
    let (_declared_key, state) = device(&c, "gw-8").await;
    let mut config = AgentConfig::new(c.base.clone(), "gw-8".parse().unwrap());
    config.enroll_token = Some(TOKEN.into());
    let mut agent = Agent::open(
        config,
        reqwest::Client::new(),
        DeviceKey::generate(),
        &state,
        &c.root_file(),
        (None, "1.0.0".parse().unwrap()),
        Installer::Command(CommandInstaller::default()),
    )
    .unwrap();
    let err = agent.once().await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("conflict") && message.contains("already has a different key"), "{message}");
    assert!(!agent.state().enrolled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_agent_installs_once_and_keeps_reporting() {
    let c = Controller::start().await;
    let (key, state) = device(&c, "gw-9").await;
    let count = c.tmp.path().join("installs");
    let mut config = AgentConfig::new(c.base.clone(), "gw-9".parse().unwrap());
    config.poll_interval = std::time::Duration::from_millis(100);
    config.report_interval = std::time::Duration::from_millis(300);
    let mut agent = Agent::open(
        config,
        reqwest::Client::new(),
        key,
        &state,
        &c.root_file(),
        (None, "1.0.0".parse().unwrap()),
        Installer::Command(CommandInstaller {
            install: Some(format!("echo x >> {}", count.display())),
            health: Some("echo 'service down' >&2; exit 1".into()),
            ..CommandInstaller::default()
        }),
    )
    .unwrap();
    let image = c.artifact("r2", "app.bin", b"two");
    c.publish(Batch {
        upserts: vec![instruction("gw-9", "r2", "2.0.0", &[&image])],
        releases: vec![image],
        ..Batch::default()
    });
    agent.run_until(tokio::time::sleep(std::time::Duration::from_millis(1500)), false).await;
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1, "installed once");
    // Without a confirmation period, one failing check fails the confirmation.
    let history = c.history("gw-9").await;
    let rolled_back: Vec<_> = history.iter().filter(|r| r.report.state == UpdateState::RolledBack).collect();
    assert!(rolled_back.len() >= 3, "heartbeats: {history:?}");
    assert!(rolled_back.iter().all(|r| r.report.release.is_none()), "back on the factory image");
    assert!(agent.state().detail.as_deref().unwrap().contains("service down"), "{:?}", agent.state());
}
