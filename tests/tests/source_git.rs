//! The Git source against real repositories: a local path, and the same repository served
//! on 127.0.0.1 by `git daemon` (git://), by `git http-backend` (smart HTTP with basic
//! authentication) and by OpenSSH's `sshd` (SSH with a key and a known hosts file). Force-pushed history, a repository that disappears and comes back, and
//! the last good commit staying in force.

use std::fs;
use std::path::Path;
use std::time::Duration;

use waveguide::source::{Auth, GitReference, GitSource, Poll, Revision, SourceError, SourceSpec, Update};
use waveguide_tests::{git, git_stdout, serve_git_http, GitDaemon, Sshd};

/// A working repository with a fleet under `fleet/` and a README outside it.
fn origin(dir: &Path) {
    fs::create_dir_all(dir.join("fleet")).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    commit(dir, "fleet/groups.yaml", "v1");
    commit(dir, "README.md", "about the fleet");
}

/// Writes `text` to `file` in `dir` and commits it.
fn commit(dir: &Path, file: &str, text: &str) -> String {
    fs::write(dir.join(file), text).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", &format!("{file}: {text}")]);
    git_stdout(dir, &["rev-parse", "HEAD"])
}

fn spec(url: &str, reference: GitReference) -> SourceSpec {
    let mut spec = SourceSpec::new(url, reference);
    spec.path = "fleet".into();
    spec.jitter = Duration::ZERO;
    spec
}

#[track_caller]
fn changed(poll: Poll) -> Update {
    match poll {
        Poll::Changed(update) => update,
        other => panic!("expected a change, got {other:?}"),
    }
}

#[track_caller]
fn unchanged(poll: Poll) -> Revision {
    match poll {
        Poll::Unchanged(revision) => revision,
        other => panic!("expected no change, got {other:?}"),
    }
}

fn text(update: &Update) -> Vec<(String, String)> {
    update
        .files
        .files()
        .iter()
        .map(|f| (f.path.to_string(), String::from_utf8(f.contents.to_vec()).unwrap()))
        .collect()
}

/// Polls `source` and applies what changed.
fn poll_and_apply(source: &mut GitSource) -> Update {
    let update = changed(source.poll());
    source.applied(&update.revision);
    update
}

#[test]
fn follows_a_branch_skips_unchanged_trees_and_survives_force_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let (work, data) = (dir.path().join("origin"), dir.path().join("data"));
    origin(&work);
    let mut source =
        GitSource::new(spec(work.to_str().unwrap(), GitReference::Branch("main".into())), &data).unwrap();
    assert_eq!(source.local_path().as_deref(), Some(work.as_path()));

    let first = poll_and_apply(&mut source);
    assert_eq!(text(&first), [("groups.yaml".to_owned(), "v1".to_owned())]);
    assert_eq!(first.revision.commit.to_string(), git_stdout(&work, &["rev-parse", "HEAD"]));
    assert_eq!(first.revision.tree.to_string(), git_stdout(&work, &["rev-parse", "HEAD:fleet"]));
    assert!(source.mirror_path().join("HEAD").exists(), "a bare mirror, no checkout");

    // A commit outside the fleet path: a new commit, the same fleet; nothing to compile.
    let readme = commit(&work, "README.md", "more about the fleet");
    let revision = unchanged(source.poll());
    assert_eq!((revision.commit.to_string(), revision.tree), (readme, first.revision.tree));
    assert_eq!(source.status().last_applied.as_ref(), Some(&revision));

    let second = commit(&work, "fleet/groups.yaml", "v2");
    let update = poll_and_apply(&mut source);
    assert_eq!(update.revision.commit.to_string(), second);

    // History rewritten: the branch now points to a commit that does not descend from the
    // one the mirror has.
    git(&work, &["reset", "-q", "--hard", "HEAD~2"]);
    let rewritten = commit(&work, "fleet/groups.yaml", "v2-rewritten");
    let update = poll_and_apply(&mut source);
    assert_eq!(update.revision.commit.to_string(), rewritten);
    assert_eq!(text(&update), [("groups.yaml".to_owned(), "v2-rewritten".to_owned())]);
    assert_eq!(source.status().consecutive_failures, 0);
}

/// A repository under `dir`, and a source following its `main` that applied its head.
fn following_main(dir: &Path) -> (std::path::PathBuf, GitSource, Revision) {
    let (work, data) = (dir.join("origin"), dir.join("data"));
    origin(&work);
    let mut source =
        GitSource::new(spec(work.to_str().unwrap(), GitReference::Branch("main".into())), &data).unwrap();
    let good = poll_and_apply(&mut source).revision;
    (work, source, good)
}

#[test]
fn keeps_the_last_good_commit_while_the_repository_is_gone_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (work, mut source, good) = following_main(dir.path());

    let moved = dir.path().join("elsewhere");
    fs::rename(&work, &moved).unwrap();
    for failures in 1..=3 {
        let Poll::Failed(error) = source.poll() else { panic!("the repository is gone") };
        assert!(matches!(error, SourceError::Fetch { .. }), "{error}");
        let status = source.status();
        assert_eq!(status.consecutive_failures, failures);
        assert_eq!(status.last_applied.as_ref(), Some(&good));
        assert!(status.last_error.as_deref().unwrap().contains("cannot fetch"), "{status:?}");
        // Backoff: 1 s, 2 s, 4 s (no jitter here).
        let wait = status.wait(std::time::SystemTime::now());
        assert!(wait <= Duration::from_secs(1 << (failures - 1)), "{wait:?}");
        assert!(wait > Duration::from_secs(1 << (failures - 1)) - Duration::from_secs(1), "{wait:?}");
    }

    // It comes back, with a different history: the source follows it again by itself.
    fs::rename(&moved, &work).unwrap();
    let status_before = source.status().clone();
    assert!(status_before.last_error.is_some());
    let revision = unchanged(source.poll());
    assert_eq!(revision, good);
    assert_eq!(source.status().last_error, None);
    assert_eq!(source.status().consecutive_failures, 0);

    fs::remove_dir_all(&work).unwrap();
    origin(&work);
    commit(&work, "fleet/groups.yaml", "recreated");
    let update = poll_and_apply(&mut source);
    assert_eq!(text(&update), [("groups.yaml".to_owned(), "recreated".to_owned())]);
}

#[test]
fn an_invalid_commit_is_not_applied_nor_compiled_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (work, mut source, good) = following_main(dir.path());

    commit(&work, "fleet/groups.yaml", "not: [valid");
    let bad = changed(source.poll()).revision;
    source.rejected(&bad, "fleet/groups.yaml:1: did not find expected ',' or ']'");
    let status = source.status().clone();
    assert_eq!(status.last_applied.as_ref(), Some(&good));
    assert_eq!(status.last_attempted.as_ref(), Some(&bad));
    assert!(status.last_error.as_deref().unwrap().contains("groups.yaml:1"));

    // The same broken fleet again (a commit outside the fleet path): not offered again.
    commit(&work, "README.md", "still broken");
    unchanged(source.poll());
    assert_eq!(source.status().last_applied.as_ref(), Some(&good));
    assert!(source.status().last_error.is_some());

    // The fix is picked up.
    let fixed = commit(&work, "fleet/groups.yaml", "v3");
    let update = poll_and_apply(&mut source);
    assert_eq!(update.revision.commit.to_string(), fixed);
    assert_eq!(source.status().last_error, None);
}

#[test]
fn follows_tags_and_fixed_commits_and_names_missing_references() {
    let dir = tempfile::tempdir().unwrap();
    let (work, data) = (dir.path().join("origin"), dir.path().join("data"));
    origin(&work);
    git(&work, &["tag", "-a", "-m", "first release", "v1"]);
    let first = git_stdout(&work, &["rev-parse", "HEAD"]);
    commit(&work, "fleet/groups.yaml", "v2");
    let url = work.to_str().unwrap();

    let mut tag = GitSource::new(spec(url, GitReference::Tag("v1".into())), &data).unwrap();
    let update = poll_and_apply(&mut tag);
    assert_eq!((update.revision.commit.to_string(), text(&update)[0].1.as_str()), (first.clone(), "v1"));
    // A moved tag is followed.
    git(&work, &["tag", "-f", "-a", "-m", "moved", "v1"]);
    let update = poll_and_apply(&mut tag);
    assert_eq!(text(&update)[0].1, "v2");

    let mut fixed = GitSource::new(spec(url, GitReference::Commit(first.clone())), &data).unwrap();
    assert_eq!(poll_and_apply(&mut fixed).revision.commit.to_string(), first);

    for reference in [GitReference::Branch("nope".into()), GitReference::Tag("v9".into())] {
        let mut missing = GitSource::new(spec(url, reference.clone()), &data).unwrap();
        let Poll::Failed(error) = missing.poll() else { panic!("{reference} does not exist") };
        assert!(matches!(error, SourceError::MissingReference { .. }), "{error}");
        assert!(error.to_string().contains(&reference.to_string()), "{error}");
    }
    let mut no_path = GitSource::new(
        SourceSpec { path: "nowhere".into(), ..spec(url, GitReference::Branch("main".into())) },
        &data,
    )
    .unwrap();
    let Poll::Failed(error) = no_path.poll() else { panic!("no such fleet path") };
    assert!(matches!(error, SourceError::PathNotInCommit { .. }), "{error}");
}

/// A bare copy of `work` under `root/fleet.git`, as a server would hold it.
fn serve_copy(work: &Path, root: &Path) -> std::path::PathBuf {
    let bare = root.join("fleet.git");
    git(root, &["clone", "-q", "--bare", work.to_str().unwrap(), bare.to_str().unwrap()]);
    bare
}

#[test]
fn fetches_over_git_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let (work, served, data) =
        (dir.path().join("origin"), dir.path().join("served"), dir.path().join("data"));
    origin(&work);
    fs::create_dir_all(&served).unwrap();
    let bare = serve_copy(&work, &served);
    let daemon = GitDaemon::start(&served);

    let url = format!("git://127.0.0.1:{}/fleet.git", daemon.port);
    let mut source = GitSource::new(spec(&url, GitReference::Branch("main".into())), &data).unwrap();
    assert_eq!(source.local_path(), None);
    assert_eq!(text(&poll_and_apply(&mut source)), [("groups.yaml".to_owned(), "v1".to_owned())]);

    let pushed = commit(&work, "fleet/groups.yaml", "v2");
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    assert_eq!(poll_and_apply(&mut source).revision.commit.to_string(), pushed);

    // The repository disappears from the server: the last good commit stays; it comes
    // back: the same source recovers by itself.
    let away = dir.path().join("away.git");
    fs::rename(&bare, &away).unwrap();
    assert!(matches!(source.poll(), Poll::Failed(SourceError::Fetch { .. })));
    assert_eq!(source.status().last_applied.as_ref().unwrap().commit.to_string(), pushed);
    assert_eq!(source.status().consecutive_failures, 1);
    fs::rename(&away, &bare).unwrap();
    assert_eq!(unchanged(source.poll()).commit.to_string(), pushed);
    assert_eq!(source.status().consecutive_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_over_smart_http_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let (work, served, data) =
        (dir.path().join("origin"), dir.path().join("served"), dir.path().join("data"));
    origin(&work);
    fs::create_dir_all(&served).unwrap();
    serve_copy(&work, &served);
    let port = serve_git_http(&served, "fleet-bot", "s3cret").await;
    let url = format!("http://127.0.0.1:{port}/fleet.git");

    let poll = |auth: Auth| {
        let (url, data) = (url.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            let mut source =
                GitSource::new(SourceSpec { auth, ..spec(&url, GitReference::Branch("main".into())) }, &data)
                    .unwrap();
            source.poll()
        })
    };
    let basic = Auth::Basic { user: "fleet-bot".into(), password: "s3cret".into() };
    let update = changed(poll(basic).await.unwrap());
    assert_eq!(text(&update), [("groups.yaml".to_owned(), "v1".to_owned())]);

    for auth in [
        Auth::None,
        Auth::Basic { user: "fleet-bot".into(), password: "guess".into() },
        Auth::Token("s3cret".into()),
    ] {
        let Poll::Failed(error) = poll(auth.clone()).await.unwrap() else {
            panic!("{auth:?} must be refused")
        };
        assert!(matches!(error, SourceError::Fetch { .. }), "{error}");
    }

    // A token is the password of the user name token-accepting servers expect.
    let port = serve_git_http(&served, "x-access-token", "t0ken").await;
    let url = format!("http://127.0.0.1:{port}/fleet.git");
    let data = dir.path().join("data-token");
    let update = tokio::task::spawn_blocking(move || {
        let spec = SourceSpec {
            auth: Auth::Token("t0ken".into()),
            ..spec(&url, GitReference::Branch("main".into()))
        };
        GitSource::new(spec, &data).unwrap().poll()
    })
    .await
    .unwrap();
    assert_eq!(text(&changed(update)), [("groups.yaml".to_owned(), "v1".to_owned())]);
}

#[test]
fn fetches_over_ssh_with_a_key_and_checks_the_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let (work, served) = (dir.path().join("origin"), dir.path().join("served"));
    origin(&work);
    fs::create_dir_all(&served).unwrap();
    let bare = serve_copy(&work, &served);
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let url = format!("ssh://{}@127.0.0.1:{}{}", sshd.user, sshd.port, bare.display());
    let known_hosts = dir.path().join("known_hosts");
    fs::write(&known_hosts, format!("# the fleet's Git server\n{}\n", sshd.known_hosts_line)).unwrap();
    let ssh = |key: &Path, known_hosts: &Path| Auth::SshKey {
        path: key.to_owned(),
        passphrase: None,
        known_hosts: Some(known_hosts.to_owned()),
    };
    let source = |auth: Auth, data: &str| {
        let spec = SourceSpec { auth, ..spec(&url, GitReference::Branch("main".into())) };
        GitSource::new(spec, &dir.path().join(data)).unwrap()
    };

    let mut good = source(ssh(&sshd.client_key, &known_hosts), "data");
    assert_eq!(text(&poll_and_apply(&mut good)), [("groups.yaml".to_owned(), "v1".to_owned())]);
    let pushed = commit(&work, "fleet/groups.yaml", "v2");
    git(&work, &["push", "-q", bare.to_str().unwrap(), "main"]);
    assert_eq!(poll_and_apply(&mut good).revision.commit.to_string(), pushed);

    // A key the server does not accept.
    let stranger = dir.path().join("stranger");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&stranger)
        .status()
        .unwrap();
    assert!(status.success());
    let Poll::Failed(error) = source(ssh(&stranger, &known_hosts), "data-stranger").poll() else {
        panic!("an unknown client key must be refused")
    };
    assert!(matches!(error, SourceError::Fetch { .. }), "{error}");

    // A server whose host key is not the one listed: refused before the key is offered,
    // with the reason.
    let impostor = dir.path().join("impostor_known_hosts");
    fs::write(
        &impostor,
        format!(
            "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHE3dLQbTTYkD5ouByZw4qIl+kKmXzTSrwpIG8E6Ag4Y\n",
            sshd.port
        ),
    )
    .unwrap();
    let Poll::Failed(error) = source(ssh(&sshd.client_key, &impostor), "data-impostor").poll() else {
        panic!("a host key that does not match must be refused")
    };
    assert!(error.to_string().contains("does not match"), "{error}");

    // A known hosts file that does not list the server at all.
    let elsewhere = dir.path().join("elsewhere_known_hosts");
    fs::write(&elsewhere, sshd.known_hosts_line.replace("127.0.0.1", "git.example.com")).unwrap();
    let Poll::Failed(error) = source(ssh(&sshd.client_key, &elsewhere), "data-elsewhere").poll() else {
        panic!("a server missing from known hosts must be refused")
    };
    assert!(error.to_string().contains("is not in"), "{error}");

    // The server goes away: the last good commit stays in force.
    drop(sshd);
    assert!(matches!(good.poll(), Poll::Failed(SourceError::Fetch { .. })));
    assert_eq!(good.status().last_applied.as_ref().unwrap().commit.to_string(), pushed);
}
