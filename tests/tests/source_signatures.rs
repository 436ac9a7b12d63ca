//! Commit signature verification on real commits signed by the `git` CLI, with SSH keys
//! made by `ssh-keygen` and OpenPGP keys made by `gpg`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use waveguide::source::{
    GitReference, GitSource, Poll, Refusal, SourceError, SourceSpec, VerifyMode, VerifySpec,
};
use waveguide_tests::{git, git_stdout};

/// Runs `git` in `dir` with extra configuration and environment; panics when it fails.
fn git_with(dir: &Path, config: &[String], env: &[(&str, &Path)], args: &[&str]) {
    let mut command = Command::new("git");
    command.args(["-c", "user.name=Fleet Operator", "-c", "user.email=ops@example.com"]);
    for setting in config {
        command.args(["-c", setting]);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.args(args).current_dir(dir).output().expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// An ed25519 key pair made by `ssh-keygen`; returns the private key's path.
fn ssh_key(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    key
}

/// Commits a change to the fleet, signed with the SSH key `key`.
fn commit_ssh_signed(work: &Path, key: &Path, text: &str) -> String {
    fs::write(work.join("fleet/groups.yaml"), text).unwrap();
    git(work, &["add", "-A"]);
    let config = ["gpg.format=ssh".to_owned(), format!("user.signingkey={}", key.display())];
    git_with(work, &config, &[], &["commit", "-q", "-S", "-m", text]);
    git_stdout(work, &["rev-parse", "HEAD"])
}

/// A repository with one unsigned commit, and a source following it with `verify`.
fn setup(dir: &Path, verify: VerifySpec) -> (PathBuf, GitSource) {
    let work = dir.join("origin");
    fs::create_dir_all(work.join("fleet")).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    fs::write(work.join("fleet/groups.yaml"), "unsigned").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "unsigned"]);
    let mut spec = SourceSpec::new(work.to_str().unwrap(), GitReference::Branch("main".into()));
    spec.path = "fleet".into();
    spec.verify = verify;
    let source = GitSource::new(spec, &dir.join("data")).unwrap();
    (work, source)
}

#[track_caller]
fn refusal(poll: Poll, commit: &str) -> Refusal {
    match poll {
        Poll::Failed(SourceError::Refused { commit: refused, reason }) => {
            assert_eq!(refused, commit);
            reason
        }
        other => panic!("expected commit {commit} to be refused, got {other:?}"),
    }
}

#[track_caller]
fn applied(source: &mut GitSource, commit: &str) {
    match source.poll() {
        Poll::Changed(update) => {
            assert_eq!(update.revision.commit.to_string(), commit);
            source.applied(&update.revision);
        }
        other => panic!("expected commit {commit} to be accepted, got {other:?}"),
    }
}

/// Replaces the branch's head commit by a copy whose message was changed but whose
/// signature was kept: the signature no longer matches what it signs.
fn tamper_with_head(work: &Path) -> String {
    let object = git_stdout(work, &["cat-file", "commit", "HEAD"]);
    let tampered = format!("{object}\n\nand a line nobody signed\n");
    let path = work.join("tampered-commit");
    fs::write(&path, tampered).unwrap();
    let id = git_stdout(work, &["hash-object", "-t", "commit", "-w", path.to_str().unwrap()]);
    fs::remove_file(&path).unwrap();
    git(work, &["update-ref", "refs/heads/main", &id]);
    id
}

/// Resets `work`'s branch to `good`, tampers with it, and checks that the source refuses
/// the result as a bad signature by the allowed signer.
fn refuses_a_tampered_copy_of(good: &str, work: &Path, source: &mut GitSource) {
    git(work, &["reset", "-q", "--hard", good]);
    let tampered = tamper_with_head(work);
    let reason = refusal(source.poll(), &tampered);
    assert!(
        matches!(&reason, Refusal::BadSignature { signer, .. } if signer.contains("ops@example.com")),
        "{reason}"
    );
}

#[test]
fn ssh_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let allowed = ssh_key(&keys, "allowed");
    let stranger = ssh_key(&keys, "stranger");
    let public = fs::read_to_string(allowed.with_extension("pub")).unwrap();
    let verify = VerifySpec {
        mode: VerifyMode::Head,
        allowed_signers: format!("ops@example.com namespaces=\"git\" {public}"),
        ..VerifySpec::default()
    };
    let (work, mut source) = setup(dir.path(), verify);

    let unsigned = git_stdout(&work, &["rev-parse", "HEAD"]);
    assert_eq!(refusal(source.poll(), &unsigned), Refusal::Unsigned);
    assert_eq!(source.status().last_applied, None);

    let good = commit_ssh_signed(&work, &allowed, "signed by an allowed key");
    applied(&mut source, &good);

    let unknown = commit_ssh_signed(&work, &stranger, "signed by a stranger");
    let reason = refusal(source.poll(), &unknown);
    assert!(matches!(&reason, Refusal::UnknownKey { key } if key.starts_with("SSH key SHA256:")), "{reason}");
    let status = source.status();
    assert_eq!(status.last_applied.as_ref().unwrap().commit.to_string(), good, "the last good commit stays");
    assert_eq!(status.last_attempted.as_ref().unwrap().commit.to_string(), unknown);
    let error = status.last_error.as_deref().unwrap();
    assert!(error.contains(&unknown) && error.contains("not an allowed signer"), "{error}");

    refuses_a_tampered_copy_of(&good, &work, &mut source);

    // A new good commit is applied again.
    git(&work, &["reset", "-q", "--hard", &good]);
    let again = commit_ssh_signed(&work, &allowed, "signed again");
    applied(&mut source, &again);
}

/// A throw-away GnuPG home with one ed25519 signing key; the agent it starts is stopped
/// when dropped.
struct GnuPg {
    home: tempfile::TempDir,
    fingerprint: String,
}

impl GnuPg {
    fn new(user_id: &str) -> GnuPg {
        // A short path: gpg-agent's socket path must fit in a Unix socket address.
        let home = tempfile::Builder::new().prefix("gpg").tempdir_in("/tmp").unwrap();
        let gpg = |args: &[&str]| {
            let output = Command::new("gpg")
                .env("GNUPGHOME", home.path())
                .args(["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""])
                .args(args)
                .output()
                .expect("gpg runs");
            assert!(output.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8(output.stdout).unwrap()
        };
        gpg(&["--quick-generate-key", user_id, "ed25519", "sign", "never"]);
        let listing = gpg(&["--with-colons", "--list-keys", user_id]);
        let fingerprint = listing
            .lines()
            .find_map(|line| line.strip_prefix("fpr:"))
            .and_then(|rest| rest.trim_matches(':').rsplit(':').next())
            .unwrap()
            .to_owned();
        GnuPg { home, fingerprint }
    }

    fn export(&self) -> String {
        let output = Command::new("gpg")
            .env("GNUPGHOME", self.home.path())
            .args(["--batch", "--armor", "--export", &self.fingerprint])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    }

    fn commit_signed(&self, work: &Path, text: &str) -> String {
        fs::write(work.join("fleet/groups.yaml"), text).unwrap();
        git(work, &["add", "-A"]);
        let config = ["gpg.format=openpgp".to_owned(), format!("user.signingkey={}", self.fingerprint)];
        git_with(work, &config, &[("GNUPGHOME", self.home.path())], &["commit", "-q", "-S", "-m", text]);
        git_stdout(work, &["rev-parse", "HEAD"])
    }
}

impl Drop for GnuPg {
    fn drop(&mut self) {
        let _ =
            Command::new("gpgconf").env("GNUPGHOME", self.home.path()).args(["--kill", "gpg-agent"]).status();
    }
}

#[test]
fn openpgp_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let operator = GnuPg::new("Fleet Operator <ops@example.com>");
    let stranger = GnuPg::new("Stranger <stranger@example.com>");
    let verify =
        VerifySpec { mode: VerifyMode::Head, openpgp_keys: vec![operator.export()], ..VerifySpec::default() };
    let (work, mut source) = setup(dir.path(), verify);

    let unsigned = git_stdout(&work, &["rev-parse", "HEAD"]);
    assert_eq!(refusal(source.poll(), &unsigned), Refusal::Unsigned);

    let good = operator.commit_signed(&work, "signed by the operator");
    applied(&mut source, &good);

    let unknown = stranger.commit_signed(&work, "signed by a stranger");
    let reason = refusal(source.poll(), &unknown);
    assert!(matches!(&reason, Refusal::UnknownKey { key } if key.starts_with("OpenPGP key ")), "{reason}");
    assert!(reason.to_string().contains(&stranger.fingerprint), "{reason}");

    refuses_a_tampered_copy_of(&good, &work, &mut source);
    assert_eq!(source.status().last_applied.as_ref().unwrap().commit.to_string(), good);

    // Both kinds of signer in one list: an SSH-signed commit is checked against SSH keys.
    let keys = dir.path().join("keys");
    fs::create_dir_all(&keys).unwrap();
    let ssh = ssh_key(&keys, "ssh");
    let both = VerifySpec {
        mode: VerifyMode::Head,
        allowed_signers: format!(
            "ops@example.com {}",
            fs::read_to_string(ssh.with_extension("pub")).unwrap()
        ),
        openpgp_keys: vec![operator.export()],
    };
    let (work, mut source) = setup(&dir.path().join("both"), both);
    let ssh_signed = commit_ssh_signed(&work, &ssh, "ssh");
    applied(&mut source, &ssh_signed);
    let pgp_signed = operator.commit_signed(&work, "openpgp");
    applied(&mut source, &pgp_signed);
}
