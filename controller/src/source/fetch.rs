//! The Git source: a bare mirror of the fleet repository, kept up to date with `git2`, from
//! which the fleet files of the followed reference are read without a checkout.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, FetchPrune, Oid,
    RemoteCallbacks, Repository,
};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use super::git::{fleet_tree, git_error, read_blobs, Blobs};
use super::known_hosts::{ssh_host, KnownHosts};
use super::spec::{Auth, GitReference, SourceSpec, VerifyMode};
use super::status::{jitter, SourceStatus};
use super::verify::Verifier;
use super::{FleetFiles, SourceError};

/// A commit of the fleet repository and the tree of its fleet path. Two commits with the
/// same tree describe the same fleet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revision {
    /// The commit id.
    pub commit: Oid,
    /// The id of the fleet path's tree in that commit.
    pub tree: Oid,
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.commit)
    }
}

/// A fleet to apply: the fleet files of a revision whose tree differs from the one in
/// force.
#[derive(Debug, Clone)]
pub struct Update {
    /// The revision the files come from.
    pub revision: Revision,
    /// The fleet files.
    pub files: FleetFiles,
}

/// What one poll of the source found.
#[derive(Debug)]
#[must_use]
pub enum Poll {
    /// The fleet changed: compile and apply it, then report with [`GitSource::applied`] or
    /// [`GitSource::rejected`].
    Changed(Update),
    /// The fleet in force (or the one already rejected) is still the latest: nothing to do.
    Unchanged(Revision),
    /// The poll failed; the status records it and the last good commit stays in force.
    Failed(SourceError),
}

/// Follows one reference of one Git repository. See the [module](super) documentation.
pub struct GitSource {
    spec: SourceSpec,
    mirror: PathBuf,
    verifier: Option<Verifier>,
    status: SourceStatus,
    /// The fleet tree last rejected by the caller, so the same invalid fleet is not
    /// compiled again at every poll.
    rejected_tree: Option<Oid>,
    /// The SSH server's accepted host keys, when the credentials name a file of them.
    known_hosts: Option<KnownHosts>,
    /// The blobs of the fleet tree read last: the next read takes unchanged files from
    /// here rather than from the object database.
    blobs: Mutex<Blobs>,
}

impl GitSource {
    /// A source for `spec` that keeps its mirror under `data_dir` (created if needed). One
    /// data directory can hold the mirrors of many sources: each URL gets its own.
    pub fn new(spec: SourceSpec, data_dir: &Path) -> Result<GitSource, SourceError> {
        let verifier = match spec.verify.mode {
            VerifyMode::None => None,
            VerifyMode::Head => Some(Verifier::new(&spec.verify)?),
        };
        let known_hosts = match &spec.auth {
            Auth::SshKey { known_hosts: Some(path), .. } => Some(KnownHosts::read(path)?),
            _ => None,
        };
        let name = hex::encode(&Sha256::digest(spec.url.as_bytes())[..12]);
        let mirror = data_dir.join(format!("{name}.git"));
        Ok(GitSource {
            spec,
            mirror,
            verifier,
            status: SourceStatus::new(SystemTime::now()),
            rejected_tree: None,
            known_hosts,
            blobs: Mutex::default(),
        })
    }

    /// The settings this source follows.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// The repository's directory when the URL names one on this machine (a path or a
    /// `file://` URL): the one to watch with [`super::LocalWatcher`].
    pub fn local_path(&self) -> Option<PathBuf> {
        let url = &self.spec.url;
        let path = match url.strip_prefix("file://") {
            Some(path) => Path::new(path),
            None if !url.contains("://") && Path::new(url).exists() => Path::new(url),
            None => return None,
        };
        Some(path.to_owned())
    }

    /// The bare mirror's directory.
    pub fn mirror_path(&self) -> &Path {
        &self.mirror
    }

    /// What the source applied, attempted and failed at, and when it polls next.
    pub fn status(&self) -> &SourceStatus {
        &self.status
    }

    /// Fetches the remote into the mirror (cloning it the first time) and resolves the
    /// followed reference to a commit and its fleet tree. Verifies nothing and changes no
    /// status; [`GitSource::poll`] is the whole step.
    pub fn fetch(&self) -> Result<Revision, SourceError> {
        let repo = self.open_mirror()?;
        let refspecs = match &self.spec.reference {
            // Forced refspecs: a force-pushed branch or a moved tag replaces what the
            // mirror had.
            GitReference::Branch(name) => vec![format!("+refs/heads/{name}:refs/heads/{name}")],
            GitReference::Tag(name) => vec![format!("+refs/tags/{name}:refs/tags/{name}")],
            GitReference::Commit(_) => {
                vec!["+refs/heads/*:refs/heads/*".to_owned(), "+refs/tags/*:refs/tags/*".to_owned()]
            }
        };
        // libgit2 replaces a refused host key's reason with its own; it is kept here.
        let refused_host = RefCell::new(None);
        let fetch_error = |e: git2::Error| SourceError::Fetch {
            url: self.spec.url.clone(),
            message: refused_host.take().unwrap_or_else(|| e.message().to_owned()),
        };
        let mut remote = repo.remote_anonymous(&self.spec.url).map_err(fetch_error)?;
        let mut options = FetchOptions::new();
        let known_hosts = self.known_hosts.as_ref().map(|k| (k, &refused_host));
        options.remote_callbacks(callbacks(&self.spec.auth, known_hosts, &self.spec.url));
        options.prune(FetchPrune::On);
        options.download_tags(AutotagOption::None);
        remote.fetch(&refspecs, Some(&mut options), None).map_err(fetch_error)?;
        self.resolve(&repo)
    }

    /// Reads the fleet files of `revision` from the mirror's object database.
    pub fn read(&self, revision: &Revision) -> Result<FleetFiles, SourceError> {
        let repo = self.open_mirror()?;
        let tree = repo.find_tree(revision.tree).map_err(git_error(&self.mirror, "the fleet tree"))?;
        let mut blobs = self.blobs.lock().unwrap_or_else(|e| e.into_inner());
        read_blobs(&repo, &self.mirror, &tree, &mut blobs)
    }

    /// One pass: fetch, resolve the reference, verify the commit's signature (when asked
    /// to) and, when the fleet tree differs from the one in force, read the fleet files.
    /// Failures are recorded in the status and back off; the last good commit stays.
    pub fn poll(&mut self) -> Poll {
        let now = SystemTime::now();
        self.status.polls += 1;
        let revision = match self.fetch() {
            Ok(revision) => revision,
            Err(error) => return self.fail(None, error, now),
        };
        if let Some(verifier) = &self.verifier {
            // The mirror was just opened by `fetch`; opening it again is cheap next to a fetch.
            let verified = self.open_mirror().and_then(|repo| verifier.verify_commit(&repo, revision.commit));
            if let Err(error) = verified {
                return self.fail(Some(revision), error, now);
            }
        }
        let jitter = jitter(self.spec.jitter);
        let in_force = self.status.last_applied.as_ref().map(|r| r.tree);
        if in_force == Some(revision.tree) {
            self.status.succeeded(revision.clone(), self.spec.interval, jitter, now);
            return Poll::Unchanged(revision);
        }
        if self.rejected_tree == Some(revision.tree) {
            self.status.still_rejected(self.spec.interval, jitter, now);
            return Poll::Unchanged(revision);
        }
        match self.read(&revision) {
            Ok(files) => {
                self.status.last_attempted = Some(revision.clone());
                Poll::Changed(Update { revision, files })
            }
            Err(error) => self.fail(Some(revision), error, now),
        }
    }

    /// The caller applied `revision`'s fleet: it is now the one in force.
    pub fn applied(&mut self, revision: &Revision) {
        self.rejected_tree = None;
        self.status.succeeded(
            revision.clone(),
            self.spec.interval,
            jitter(self.spec.jitter),
            SystemTime::now(),
        );
    }

    /// The caller could not apply `revision`'s fleet (it does not compile, say): the last
    /// good commit stays in force, and the same fleet tree is not offered again.
    pub fn rejected(&mut self, revision: &Revision, error: impl fmt::Display) {
        self.rejected_tree = Some(revision.tree);
        let (interval, jitter) = (self.spec.interval, jitter(self.spec.jitter));
        self.status.rejected(revision.clone(), error.to_string(), interval, jitter, SystemTime::now());
    }

    /// The caller could not apply `revision`'s fleet for a reason of its own that may pass
    /// (the inventory database is down, say): unlike [`GitSource::rejected`], the same
    /// fleet is offered again by the next poll, which backs off as after a failed fetch.
    pub fn apply_failed(&mut self, revision: &Revision, error: impl fmt::Display) {
        let now = SystemTime::now();
        self.status.failed(
            Some(revision.clone()),
            error.to_string(),
            self.spec.retry,
            jitter(self.spec.jitter),
            now,
        );
    }

    /// Runs the source until the task is dropped: polls when due or when `wake` is
    /// notified (webhook, file watcher, CLI), hands each changed fleet to `apply`, and
    /// publishes the status after every pass. Git work runs on the blocking thread pool.
    pub async fn run<F, Fut, E>(
        mut self,
        wake: Arc<Notify>,
        status: watch::Sender<SourceStatus>,
        mut apply: F,
    ) where
        F: FnMut(Update) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: fmt::Display,
    {
        loop {
            let (source, poll) = tokio::task::spawn_blocking(move || {
                let poll = self.poll();
                (self, poll)
            })
            .await
            .expect("a source poll does not panic");
            self = source;
            match poll {
                Poll::Changed(update) => {
                    let revision = update.revision.clone();
                    match apply(update).await {
                        Ok(()) => self.applied(&revision),
                        Err(error) => self.rejected(&revision, error),
                    }
                }
                Poll::Unchanged(_) => {}
                Poll::Failed(error) => tracing::warn!(url = %self.spec.url, %error, "git source"),
            }
            status.send_replace(self.status.clone());
            let wait = self.status.wait(SystemTime::now());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = wake.notified() => {}
            }
        }
    }

    fn fail(&mut self, attempted: Option<Revision>, error: SourceError, now: SystemTime) -> Poll {
        self.status.failed(attempted, error.to_string(), self.spec.retry, jitter(self.spec.jitter), now);
        Poll::Failed(error)
    }

    /// Opens the mirror, creating it on first use, or anew when it is unreadable (a crash
    /// during the first clone, a full disk): it only caches the remote.
    fn open_mirror(&self) -> Result<Repository, SourceError> {
        let io = |source| SourceError::Io { path: self.mirror.clone(), source };
        if let Ok(repo) = Repository::open_bare(&self.mirror) {
            return Ok(repo);
        }
        if self.mirror.exists() {
            std::fs::remove_dir_all(&self.mirror).map_err(io)?;
        }
        if let Some(parent) = self.mirror.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        Repository::init_bare(&self.mirror).map_err(|e| SourceError::OpenRepository {
            path: self.mirror.clone(),
            message: e.message().to_owned(),
        })
    }

    /// The commit the reference names in the mirror, and its fleet tree.
    fn resolve(&self, repo: &Repository) -> Result<Revision, SourceError> {
        let missing = || SourceError::MissingReference {
            url: self.spec.url.clone(),
            reference: self.spec.reference.to_string(),
        };
        let object = match &self.spec.reference {
            GitReference::Branch(name) => repo.revparse_single(&format!("refs/heads/{name}")),
            GitReference::Tag(name) => repo.revparse_single(&format!("refs/tags/{name}")),
            GitReference::Commit(id) => repo.revparse_single(id),
        };
        let commit = object.and_then(|o| o.peel_to_commit()).map_err(|_| missing())?;
        let rev = self.spec.reference.to_string();
        let tree = fleet_tree(repo, &self.mirror, &commit, &rev, &self.spec.path)?;
        Ok(Revision { commit: commit.id(), tree: tree.id() })
    }
}

/// Answers the remote's credential requests from `auth`. libgit2 asks again after a refusal;
/// a few tries cover the SSH user-name step, then give up instead of looping.
/// With `known_hosts`, an SSH server whose host key it does not list is refused before
/// any credential is offered, and the reason kept in the cell beside it.
fn callbacks<'a>(
    auth: &'a Auth,
    known_hosts: Option<(&'a KnownHosts, &'a RefCell<Option<String>>)>,
    url: &str,
) -> RemoteCallbacks<'a> {
    let mut callbacks = RemoteCallbacks::new();
    if let Some((known_hosts, refused)) = known_hosts {
        let port = ssh_host(url).map_or(22, |(_, port)| port);
        callbacks.certificate_check(move |cert, host| {
            let Some(key) = cert.as_hostkey().and_then(|k| k.hostkey()) else {
                // Not an SSH host key (a TLS certificate): the usual checks apply.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            known_hosts.check(host, port, key).map(|()| CertificateCheckStatus::CertificateOk).map_err(
                |refusal| {
                    let message = refusal.to_string();
                    let error = git2::Error::from_str(&message);
                    *refused.borrow_mut() = Some(message);
                    error
                },
            )
        });
    }
    let mut tries = 0;
    callbacks.credentials(move |_url, user_from_url, allowed| {
        tries += 1;
        if tries > 3 {
            return Err(git2::Error::from_str("the remote refused the credentials"));
        }
        let user_pass = allowed.contains(CredentialType::USER_PASS_PLAINTEXT);
        match auth {
            Auth::Token(token) if user_pass => Cred::userpass_plaintext("x-access-token", token),
            Auth::Basic { user, password } if user_pass => Cred::userpass_plaintext(user, password),
            Auth::SshKey { .. } if allowed.contains(CredentialType::USERNAME) => {
                Cred::username(user_from_url.unwrap_or("git"))
            }
            Auth::SshKey { path, passphrase, .. } if allowed.contains(CredentialType::SSH_KEY) => {
                Cred::ssh_key(user_from_url.unwrap_or("git"), None, path, passphrase.as_deref())
            }
            Auth::None => {
                Err(git2::Error::from_str("the remote asks for credentials and none are configured"))
            }
            _ => Err(git2::Error::from_str(&format!(
                "the remote asks for credentials of another kind ({allowed:?}) than the ones configured"
            ))),
        }
    });
    callbacks
}
