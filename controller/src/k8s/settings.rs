//! A Fleet's settings, read from its spec and the Secrets it names: the Git source and
//! its credentials, the TUF keys, the inventory database, the expiries and the webhook
//! secret. Everything here is checked before an engine is built; what cannot work is an
//! [`Error::Secret`] or [`Error::Spec`], which the status reports as `InvalidSettings`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use jiff::SignedDuration;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use super::crd::{Fleet, FleetSpec, VerifyMode};
use super::fleet::Settings;
use super::Error;
use crate::files::write_private;
use crate::publish::{Expiries, KeyDir, KeySpec};
use crate::source::{Auth, GitReference, SourceSpec, VerifySpec};
use crate::standalone::RunConfig;

/// What an engine is built from.
pub(super) struct FleetSettings {
    /// The engine's configuration.
    pub config: RunConfig,
    /// The Git source in full.
    pub source: SourceSpec,
    /// The TUF keys.
    pub keys: KeyDir,
    /// The secret of the push webhook, when the Fleet names one.
    pub webhook_secret: Option<Vec<u8>>,
}

/// Reads a Fleet's settings, writing the keys and credentials its Secrets hold into its
/// data directory.
pub(super) async fn read(
    fleet: &Fleet,
    client: &Client,
    settings: &Settings,
    namespace: &str,
) -> Result<FleetSettings, Error> {
    let name = fleet.name_any();
    let data = settings.data.join(namespace).join(&name);
    std::fs::create_dir_all(&data)
        .map_err(|e| Error::spec(namespace, &name, format!("cannot create {}: {e}", data.display())))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let spec = &fleet.spec;

    let reference =
        match (&spec.source.reference.branch, &spec.source.reference.tag, &spec.source.reference.commit) {
            (Some(b), None, None) => GitReference::Branch(b.clone()),
            (None, Some(t), None) => GitReference::Tag(t.clone()),
            (None, None, Some(c)) => GitReference::Commit(c.clone()),
            _ => {
                return Err(Error::spec(
                    namespace,
                    &name,
                    "source.ref: set exactly one of branch, tag and commit",
                ))
            }
        };
    let interval = humantime::parse_duration(&spec.source.interval).map_err(|e| {
        Error::spec(
            namespace,
            &name,
            format!("source.interval: {:?} is not a duration: {e}", spec.source.interval),
        )
    })?;
    let mut source = SourceSpec::new(spec.source.url.clone(), reference.clone());
    source.path = spec.source.path.clone();
    source.interval = interval;
    source.jitter = Duration::ZERO;
    if let Some(secret) = &spec.source.secret_ref {
        let data = secret_data(&secrets, namespace, &secret.name).await?;
        source.auth = git_auth(&data, &settings.data.join(namespace).join(&name))
            .map_err(|problem| problem.of(namespace, &secret.name))?;
    }
    if let Some(verify) = &spec.source.verify {
        let data = secret_data(&secrets, namespace, &verify.secret_ref.name).await?;
        source.verify = VerifySpec {
            mode: match verify.mode {
                VerifyMode::None => crate::source::VerifyMode::None,
                VerifyMode::Head => crate::source::VerifyMode::Head,
            },
            allowed_signers: data.get("allowedSigners").map(|b| text(b)).unwrap_or_default(),
            openpgp_keys: data.get("openpgpKeys").map(|b| vec![text(b)]).unwrap_or_default(),
        };
    }

    let keys_dir = data.join("keys");
    let keys = match &spec.tuf.keys_secret_ref {
        Some(secret) => {
            let files = secret_data(&secrets, namespace, &secret.name).await?;
            write_keys(&keys_dir, &files).map_err(|problem| problem.of(namespace, &secret.name))?;
            KeyDir::open(&keys_dir).map_err(|e| Error::spec(namespace, &name, format!("TUF keys: {e}")))?
        }
        None if keys_dir.join("roots").is_dir() => {
            KeyDir::open(&keys_dir).map_err(|e| Error::spec(namespace, &name, format!("TUF keys: {e}")))?
        }
        None => {
            tracing::warn!(fleet = %name, "no tuf.keysSecretRef: creating keys in the data volume (trials only)");
            KeyDir::init(&keys_dir, &KeySpec::without_release_keys())
                .map_err(|e| Error::spec(namespace, &name, format!("creating TUF keys: {e}")))?
                .0
        }
    };
    let database = database_url(fleet, &settings.database, &secrets, namespace).await?;
    let expiries = expiries(spec, namespace, &name)?;

    let mut config = RunConfig::new(spec.source.url.clone(), data.clone());
    config.reference = reference;
    config.path = spec.source.path.clone();
    config.poll_interval = interval;
    config.database = database;
    config.keys = Some(keys_dir);
    config.engine = settings.engine;
    config.expiries = expiries;
    let webhook_secret = match &spec.source.webhook_secret_ref {
        Some(r) => {
            let data = secret_data(&secrets, namespace, &r.name).await?;
            let secret = data.get(&r.key).ok_or_else(|| Error::Secret {
                namespace: namespace.into(),
                name: r.name.clone(),
                reason: format!("has no key {:?}", r.key),
            })?;
            let secret = text(secret).trim().as_bytes().to_vec();
            if secret.is_empty() {
                return Err(Error::Secret {
                    namespace: namespace.into(),
                    name: r.name.clone(),
                    reason: format!("has an empty {:?}: anyone could sign webhooks with it", r.key),
                });
            }
            Some(secret)
        }
        None => None,
    };
    Ok(FleetSettings { config, source, keys, webhook_secret })
}

/// The inventory database of a fleet: its Secret's URL, else the controller's default.
pub(super) async fn database_url(
    fleet: &Fleet,
    default: &Option<String>,
    secrets: &Api<Secret>,
    namespace: &str,
) -> Result<Option<String>, Error> {
    match &fleet.spec.inventory.database_secret_ref {
        Some(r) => {
            let data = secret_data(secrets, namespace, &r.name).await?;
            let url = data.get(&r.key).map(|b| text(b)).ok_or_else(|| Error::Secret {
                namespace: namespace.into(),
                name: r.name.clone(),
                reason: format!("has no key {:?}", r.key),
            })?;
            Ok(Some(url.trim().to_string()))
        }
        None => Ok(default.clone()),
    }
}

/// The expiries `spec.tuf.expiries` sets, over the defaults.
fn expiries(spec: &FleetSpec, namespace: &str, name: &str) -> Result<Expiries, Error> {
    let mut out = Expiries::default();
    if let Some(e) = &spec.tuf.expiries {
        for (field, value, slot) in [
            ("timestamp", &e.timestamp, &mut out.timestamp),
            ("snapshot", &e.snapshot, &mut out.snapshot),
            ("targets", &e.targets, &mut out.targets),
        ] {
            if let Some(text) = value {
                let invalid = |e: &dyn std::fmt::Display| {
                    Error::spec(
                        namespace,
                        name,
                        format!("tuf.expiries.{field}: {text:?} is not a duration: {e}"),
                    )
                };
                let d = humantime::parse_duration(text).map_err(|e| invalid(&e))?;
                *slot = SignedDuration::try_from(d).map_err(|e| invalid(&e))?;
            }
        }
    }
    Ok(out)
}

/// What is wrong with the content of a Secret a Fleet names.
#[derive(Debug, thiserror::Error)]
enum SecretProblem {
    /// No credentials the Git source understands.
    #[error("has none of `token`, `username` and `password`, or `identity`")]
    NoCredentials,
    /// No online TUF key.
    #[error("has no `online.pk8` (the online TUF key)")]
    NoOnlineKey,
    /// No signed root.
    #[error("has no `<version>.root.json` (the signed roots)")]
    NoRoots,
    /// No `targets` signed offline.
    #[error("has no `<version>.targets.json` (the targets role signed offline by `waveguide keys init`)")]
    NoTargets,
    /// Its content could not be written to the fleet's data directory.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl SecretProblem {
    /// The error of the Secret `namespace/name`.
    fn of(self, namespace: &str, name: &str) -> Error {
        Error::Secret { namespace: namespace.into(), name: name.into(), reason: self.to_string() }
    }

    fn write(path: &Path) -> impl FnOnce(std::io::Error) -> SecretProblem + '_ {
        move |source| SecretProblem::Write { path: path.to_owned(), source }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn secret_data(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
) -> Result<HashMap<String, Vec<u8>>, Error> {
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading Secret {namespace}/{name}"), e))?
        .ok_or_else(|| Error::Secret {
            namespace: namespace.into(),
            name: name.into(),
            reason: "not found".into(),
        })?;
    let mut out: HashMap<String, Vec<u8>> =
        secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    Ok(out)
}

/// Git credentials from a Secret's keys: `token`; `username` and `password`; or
/// `identity` (an SSH private key, written to the fleet's data directory), `passphrase`
/// and `known_hosts` (the server's host keys, checked when given).
fn git_auth(data: &HashMap<String, Vec<u8>>, dir: &Path) -> Result<Auth, SecretProblem> {
    if let Some(token) = data.get("token") {
        return Ok(Auth::Token(text(token).trim().to_string()));
    }
    if let (Some(user), Some(password)) = (data.get("username"), data.get("password")) {
        return Ok(Auth::Basic { user: text(user), password: text(password) });
    }
    if let Some(identity) = data.get("identity") {
        let path = dir.join("git-identity");
        write_private(&path, identity).map_err(SecretProblem::write(&path))?;
        let known_hosts = match data.get("known_hosts") {
            Some(hosts) => {
                let file = dir.join("git-known-hosts");
                write_private(&file, hosts).map_err(SecretProblem::write(&file))?;
                Some(file)
            }
            None => None,
        };
        return Ok(Auth::SshKey { path, passphrase: data.get("passphrase").map(|p| text(p)), known_hosts });
    }
    Err(SecretProblem::NoCredentials)
}

/// Writes the key directory from a Secret: `online.pk8`, `online.next.pk8`, and
/// `<version>.root.json` files into `roots/`.
fn write_keys(dir: &Path, files: &HashMap<String, Vec<u8>>) -> Result<(), SecretProblem> {
    if !files.contains_key("online.pk8") {
        return Err(SecretProblem::NoOnlineKey);
    }
    if !files.keys().any(|k| k.ends_with(".root.json")) {
        return Err(SecretProblem::NoRoots);
    }
    if !files.keys().any(|k| k.ends_with(".targets.json")) {
        return Err(SecretProblem::NoTargets);
    }
    // The signed files go where `KeyDir` reads them: `roots/`, `targets/`, `releases/`.
    let signed = |name: &str| {
        ["root", "targets", "releases"].into_iter().find_map(|role| {
            name.ends_with(&format!(".{role}.json"))
                .then(|| dir.join(if role == "root" { "roots" } else { role }))
        })
    };
    for (name, bytes) in files {
        let path = match name.as_str() {
            "online.pk8" | "online.next.pk8" => dir.join(name),
            n => match signed(n) {
                Some(sub) => {
                    std::fs::create_dir_all(&sub).map_err(SecretProblem::write(&sub))?;
                    sub.join(n)
                }
                None => continue,
            },
        };
        if std::fs::read(&path).is_ok_and(|old| old == *bytes) {
            continue;
        }
        write_private(&path, bytes).map_err(SecretProblem::write(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_map_to_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let data = |pairs: &[(&str, &str)]| -> HashMap<String, Vec<u8>> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
        };
        assert_eq!(
            git_auth(&data(&[("token", "t0ken\n")]), dir.path()).unwrap(),
            Auth::Token("t0ken".into())
        );
        let ssh = git_auth(
            &data(&[
                ("identity", "KEY"),
                ("passphrase", "p"),
                ("known_hosts", "example.com ssh-ed25519 AAAA"),
            ]),
            dir.path(),
        )
        .unwrap();
        let Auth::SshKey { path, passphrase, known_hosts: Some(known_hosts) } = ssh else {
            panic!("{ssh:?}")
        };
        assert_eq!(std::fs::read_to_string(path).unwrap(), "KEY");
        assert_eq!(passphrase.as_deref(), Some("p"));
        assert_eq!(std::fs::read_to_string(known_hosts).unwrap(), "example.com ssh-ed25519 AAAA");
        assert!(matches!(git_auth(&data(&[("user", "x")]), dir.path()), Err(SecretProblem::NoCredentials)));
    }
}
