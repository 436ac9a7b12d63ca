//! What wakes the Git source before its next poll: a commit to a watched local repository,
//! and a signed webhook delivery over real HTTP. The source loop runs with an hour-long
//! interval, so only the trigger can explain a prompt pass.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac_sha256::sign;
use tokio::sync::{mpsc, watch, Notify};
use waveguide::source::webhook::Webhook;
use waveguide::source::{GitReference, GitSource, LocalWatcher, SourceSpec, SourceStatus};
use waveguide_tests::{git, git_stdout};

fn commit(dir: &Path, text: &str) -> String {
    fs::write(dir.join("fleet/groups.yaml"), text).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", text]);
    git_stdout(dir, &["rev-parse", "HEAD"])
}

/// Starts the source loop on `work`'s `main` with a one-hour interval; applied commits
/// arrive on the returned channel.
fn run_source(
    work: &Path,
    data: &Path,
    wake: Arc<Notify>,
) -> (mpsc::UnboundedReceiver<String>, watch::Receiver<SourceStatus>) {
    let mut spec = SourceSpec::new(work.to_str().unwrap(), GitReference::Branch("main".into()));
    spec.path = "fleet".into();
    spec.interval = Duration::from_secs(3600);
    let source = GitSource::new(spec, data).unwrap();
    let (applied_tx, applied_rx) = mpsc::unbounded_channel();
    let (status_tx, status_rx) = watch::channel(source.status().clone());
    tokio::spawn(source.run(wake, status_tx, move |update| {
        let sent = applied_tx.send(update.revision.commit.to_string());
        async move { sent.map_err(|_| "the test ended") }
    }));
    (applied_rx, status_rx)
}

async fn next_applied(applied: &mut mpsc::UnboundedReceiver<String>, within: Duration) -> String {
    tokio::time::timeout(within, applied.recv()).await.expect("applied in time").expect("the loop runs")
}

fn origin(dir: &Path) -> std::path::PathBuf {
    let work = dir.join("origin");
    fs::create_dir_all(work.join("fleet")).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    commit(&work, "v1");
    work
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_to_a_watched_local_repository_is_applied_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let work = origin(dir.path());
    let wake = Arc::new(Notify::new());
    let _watcher = LocalWatcher::new(&work, wake.clone()).unwrap();
    let (mut applied, status) = run_source(&work, &dir.path().join("data"), wake);
    let first = git_stdout(&work, &["rev-parse", "HEAD"]);
    assert_eq!(next_applied(&mut applied, Duration::from_secs(10)).await, first);

    for text in ["v2", "v3"] {
        let start = Instant::now();
        let commit = commit(&work, text);
        assert_eq!(next_applied(&mut applied, Duration::from_secs(1)).await, commit);
        eprintln!("{text}: applied {:?} after the commit", start.elapsed());
    }
    let mut status = status;
    status.changed().await.unwrap();
    assert!(status.borrow().last_applied.is_some());
}

/// HMAC-SHA256 as GitHub computes it, written out here so the test does not share code
/// with the receiver it checks.
mod hmac_sha256 {
    use sha2::{Digest, Sha256};

    pub fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut key = [0u8; 64];
        key[..secret.len()].copy_from_slice(secret);
        let pad = |byte: u8| key.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new().chain_update(pad(0x36)).chain_update(body).finalize();
        let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
        format!("sha256={}", hex::encode(outer))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_delivery_triggers_a_pass_and_a_bad_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let work = origin(dir.path());
    let wake = Arc::new(Notify::new());
    let (mut applied, _status) = run_source(&work, &dir.path().join("data"), wake.clone());
    next_applied(&mut applied, Duration::from_secs(10)).await;

    let secret = "webhook secret";
    let app: axum::Router = Webhook::new(secret, wake).unwrap().router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/hooks/git", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let body = r#"{"ref":"refs/heads/main"}"#;

    let second = commit(&work, "v2");
    let forged = client
        .post(&url)
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(b"another secret", body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let error: serde_json::Value = forged.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unauthorized");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), applied.recv()).await.is_err(),
        "a forged delivery triggers nothing"
    );

    let start = Instant::now();
    let delivered = client
        .post(&url)
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(secret.as_bytes(), body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 202);
    assert_eq!(next_applied(&mut applied, Duration::from_secs(2)).await, second);
    eprintln!("applied {:?} after the webhook", start.elapsed());

    let third = commit(&work, "v3");
    let delivered = client
        .post(&url)
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", secret)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(delivered.status(), 202);
    assert_eq!(next_applied(&mut applied, Duration::from_secs(2)).await, third);
}
