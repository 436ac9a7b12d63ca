//! What the Git source follows and how: the typed settings behind a `Fleet`'s `source`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where the fleet repository is and how to follow it. In YAML (as `docs/source.md` shows):
/// `{url, ref: {branch: main}, path, interval: 30s, jitter: 3s, retry, auth, verify}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// The repository: an `https://`, `http://`, `ssh://` (or scp-like `git@host:path`),
    /// `git://` or `file://` URL, or a local path.
    pub url: String,
    /// The branch, tag or commit to follow.
    #[serde(rename = "ref")]
    pub reference: GitReference,
    /// The fleet path inside the repository (`""` for the whole tree).
    #[serde(default)]
    pub path: String,
    /// How often to poll when nothing wakes the source earlier.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// Up to this much is added at random to every wait, so that many controllers started
    /// together do not poll one Git server in lockstep.
    #[serde(default = "default_jitter", deserialize_with = "duration")]
    pub jitter: Duration,
    /// How retries after a failure are spaced.
    #[serde(default)]
    pub retry: Retry,
    /// Credentials for the remote.
    #[serde(default)]
    pub auth: Auth,
    /// Which commits may be applied.
    #[serde(default)]
    pub verify: VerifySpec,
}

impl SourceSpec {
    /// Follows `reference` of `url` with the defaults: the whole tree, a 30 s interval with
    /// up to 3 s of jitter, no credentials and no signature verification.
    pub fn new(url: impl Into<String>, reference: GitReference) -> SourceSpec {
        SourceSpec {
            url: url.into(),
            reference,
            path: String::new(),
            interval: default_interval(),
            jitter: default_jitter(),
            retry: Retry::default(),
            auth: Auth::None,
            verify: VerifySpec::default(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_jitter() -> Duration {
    Duration::from_secs(3)
}

/// Reads a duration written the human way: `30s`, `5m`, `1h 30m`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// The Git reference the source follows. In YAML, a map with exactly one of `branch`, `tag`
/// and `commit`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ReferenceYaml")]
pub enum GitReference {
    /// The branch's latest commit (`main`, not `refs/heads/main`).
    Branch(String),
    /// The commit a tag points to (annotated or not); a moved tag is followed.
    Tag(String),
    /// One fixed commit, by its full id.
    Commit(String),
}

/// The YAML form of a reference: a map with exactly one key. (serde_yaml writes externally
/// tagged enums as YAML tags, `!branch main`; operators expect `{branch: main}`.)
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceYaml {
    branch: Option<String>,
    tag: Option<String>,
    commit: Option<String>,
}

impl TryFrom<ReferenceYaml> for GitReference {
    type Error = &'static str;
    fn try_from(yaml: ReferenceYaml) -> Result<GitReference, Self::Error> {
        match (yaml.branch, yaml.tag, yaml.commit) {
            (Some(branch), None, None) => Ok(GitReference::Branch(branch)),
            (None, Some(tag), None) => Ok(GitReference::Tag(tag)),
            (None, None, Some(commit)) => Ok(GitReference::Commit(commit)),
            _ => Err("expected exactly one of `branch`, `tag` and `commit`"),
        }
    }
}

/// The YAML form of credentials: a map with at most one key.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthYaml {
    token: Option<String>,
    basic: Option<BasicYaml>,
    ssh_key: Option<SshKeyYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicYaml {
    user: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct SshKeyYaml {
    path: PathBuf,
    passphrase: Option<String>,
    known_hosts: Option<PathBuf>,
}

impl TryFrom<AuthYaml> for Auth {
    type Error = &'static str;
    fn try_from(yaml: AuthYaml) -> Result<Auth, Self::Error> {
        match (yaml.token, yaml.basic, yaml.ssh_key) {
            (None, None, None) => Ok(Auth::None),
            (Some(token), None, None) => Ok(Auth::Token(token)),
            (None, Some(BasicYaml { user, password }), None) => Ok(Auth::Basic { user, password }),
            (None, None, Some(SshKeyYaml { path, passphrase, known_hosts })) => {
                Ok(Auth::SshKey { path, passphrase, known_hosts })
            }
            _ => Err("expected at most one of `token`, `basic` and `sshKey`"),
        }
    }
}

impl fmt::Display for GitReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitReference::Branch(name) => write!(f, "branch {name:?}"),
            GitReference::Tag(name) => write!(f, "tag {name:?}"),
            GitReference::Commit(id) => write!(f, "commit {id}"),
        }
    }
}

/// Exponential backoff after failures: the n-th consecutive failure waits
/// `min(initial × 2ⁿ⁻¹, max)`, plus jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retry {
    /// The wait after the first failure.
    #[serde(deserialize_with = "duration")]
    pub initial: Duration,
    /// The longest wait; a Git server that stays down is still tried this often.
    #[serde(deserialize_with = "duration")]
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { initial: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

/// Credentials for the remote repository. In YAML, `{token: ...}`, `{basic: {user,
/// password}}` or `{sshKey: {path, passphrase, knownHosts}}`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AuthYaml")]
pub enum Auth {
    /// Anonymous access (public repositories, local paths, `git://`).
    #[default]
    None,
    /// An HTTPS access token (GitHub, GitLab, Gitea...), sent as the password of HTTP basic
    /// authentication with the user name `x-access-token`, which these servers accept.
    Token(String),
    /// HTTPS basic authentication.
    Basic {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// SSH with a private key file (OpenSSH or PEM format).
    SshKey {
        /// The private key file.
        path: PathBuf,
        /// The key's passphrase, if it is encrypted.
        passphrase: Option<String>,
        /// A `known_hosts` file listing the server's host key: any other key is refused
        /// before the key is used. Without one, libgit2 checks the user's
        /// `~/.ssh/known_hosts`.
        known_hosts: Option<PathBuf>,
    },
}

// Secrets stay out of logs and status messages.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(..)"),
            Auth::Basic { user, .. } => f.debug_struct("Basic").field("user", user).finish_non_exhaustive(),
            Auth::SshKey { path, known_hosts, .. } => f
                .debug_struct("SshKey")
                .field("path", path)
                .field("known_hosts", known_hosts)
                .finish_non_exhaustive(),
        }
    }
}

/// Whether commit signatures are checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Any commit is applied.
    #[default]
    None,
    /// The commit the reference points to must carry a good signature by an allowed
    /// signer.
    Head,
}

/// Commit signature verification settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifySpec {
    /// Whether to verify.
    #[serde(default)]
    pub mode: VerifyMode,
    /// SSH signers, in the format of git's `gpg.ssh.allowedSignersFile`
    /// (`principals [options] key-type base64-key [comment]`, one a line).
    #[serde(default)]
    pub allowed_signers: String,
    /// OpenPGP public keys (ASCII armored, one or more blocks).
    #[serde(default, rename = "openpgpKeys")]
    pub openpgp_keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_yaml_form_with_defaults() {
        let spec: SourceSpec = serde_yaml::from_str(
            "url: https://git.example.com/fleet.git\n\
             ref: {branch: main}\n\
             path: fleet\n\
             interval: 1m\n\
             auth: {basic: {user: bot, password: hunter2}}\n\
             verify: {mode: head, openpgpKeys: [KEY]}\n",
        )
        .unwrap();
        assert_eq!(spec.reference, GitReference::Branch("main".into()));
        assert_eq!((spec.interval, spec.jitter), (Duration::from_secs(60), Duration::from_secs(3)));
        assert_eq!(spec.retry, Retry::default());
        assert_eq!(spec.auth, Auth::Basic { user: "bot".into(), password: "hunter2".into() });
        assert_eq!(spec.verify.mode, VerifyMode::Head);
        assert_eq!(spec.verify.openpgp_keys, ["KEY"]);
        assert!(!format!("{spec:?}").contains("hunter2"), "secrets stay out of Debug output");

        assert!(serde_yaml::from_str::<SourceSpec>("url: /srv/fleet\nref: {sshKey: x}\n").is_err());
        let spec: SourceSpec = serde_yaml::from_str(
            "url: git@example.com:fleet.git\nref: {tag: v1}\nauth: {sshKey: {path: /keys/id, passphrase: p, knownHosts: /keys/known_hosts}}\n",
        )
        .unwrap();
        assert_eq!(
            spec.auth,
            Auth::SshKey {
                path: "/keys/id".into(),
                passphrase: Some("p".into()),
                known_hosts: Some("/keys/known_hosts".into())
            }
        );
        assert!(serde_yaml::from_str::<SourceSpec>("url: x\nref: {branch: main}\ninterval: soon\n").is_err());
    }
}
