//! Commit signature verification: SSH signatures (`gpg.format=ssh`) against an allowed
//! signers list, OpenPGP signatures against armored public keys, both in pure Rust.

use std::fmt;

use git2::{Oid, Repository};
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::{KeyDetails, PublicKeyTrait};
use ssh_key::{HashAlg, PublicKey, SshSig};

use super::spec::VerifySpec;
use super::SourceError;

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
const SSH_NAMESPACE: &str = "git";

/// Why a commit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The commit carries no signature.
    Unsigned,
    /// The signature was made by a key that is not allowed.
    UnknownKey {
        /// The key's fingerprint (SSH) or issuer key ids (OpenPGP).
        key: String,
    },
    /// The signature was made by an allowed key but does not match the commit (tampered
    /// commit or signature, wrong namespace).
    BadSignature {
        /// The allowed signer.
        signer: String,
        /// What the verification said.
        message: String,
    },
    /// The signature cannot be read, or is of a kind no allowed signer can make.
    Malformed {
        /// What is wrong with it.
        message: String,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unsigned => f.write_str("the commit is not signed"),
            Refusal::UnknownKey { key } => write!(f, "signed by {key}, which is not an allowed signer"),
            Refusal::BadSignature { signer, message } => {
                write!(f, "bad signature claiming to be by {signer}: {message}")
            }
            Refusal::Malformed { message } => write!(f, "unreadable signature: {message}"),
        }
    }
}

/// Who signed a verified commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// An SSH key of the allowed signers list.
    Ssh {
        /// The principals of the allowed signers line (comma-separated, as written).
        principals: String,
        /// The key's `SHA256:` fingerprint.
        fingerprint: String,
    },
    /// An OpenPGP key.
    OpenPgp {
        /// The primary key's fingerprint (hex).
        fingerprint: String,
        /// The key's first user id.
        user_id: Option<String>,
    },
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signer::Ssh { principals, fingerprint } => write!(f, "{principals} ({fingerprint})"),
            Signer::OpenPgp { fingerprint, user_id: Some(user_id) } => write!(f, "{user_id} ({fingerprint})"),
            Signer::OpenPgp { fingerprint, user_id: None } => write!(f, "OpenPGP key {fingerprint}"),
        }
    }
}

/// One line of an allowed signers file.
#[derive(Debug, Clone)]
struct AllowedSigner {
    principals: String,
    key: PublicKey,
}

/// Checks commit signatures against the allowed signers.
#[derive(Debug, Clone)]
pub struct Verifier {
    ssh: Vec<AllowedSigner>,
    openpgp: Vec<SignedPublicKey>,
}

impl Verifier {
    /// Reads the allowed signers and OpenPGP keys of `spec`. A line or key that cannot be
    /// honoured is an error, never silently skipped: a skipped restriction would widen who
    /// may change the fleet.
    pub fn new(spec: &VerifySpec) -> Result<Verifier, SourceError> {
        let ssh = parse_allowed_signers(&spec.allowed_signers)?;
        let mut openpgp = Vec::new();
        for (n, armored) in spec.openpgp_keys.iter().enumerate() {
            let invalid = |message: String| SourceError::InvalidVerifySettings {
                what: format!("OpenPGP key #{}", n + 1),
                message,
            };
            let (keys, _) = SignedPublicKey::from_string_many(armored).map_err(|e| invalid(e.to_string()))?;
            for key in keys {
                let key = key.map_err(|e| invalid(e.to_string()))?;
                // The key's own binding signatures must hold, or its subkeys mean nothing.
                key.verify().map_err(|e| invalid(e.to_string()))?;
                openpgp.push(key);
            }
        }
        if ssh.is_empty() && openpgp.is_empty() {
            return Err(SourceError::InvalidVerifySettings {
                what: "signature verification".into(),
                message: "no allowed signers and no OpenPGP keys: every commit would be refused".into(),
            });
        }
        Ok(Verifier { ssh, openpgp })
    }

    /// Verifies the signature of `commit` in `repo`, returning who made it, or refuses the
    /// commit with [`SourceError::Refused`].
    pub fn verify_commit(&self, repo: &Repository, commit: Oid) -> Result<Signer, SourceError> {
        let refused = |reason| SourceError::Refused { commit: commit.to_string(), reason };
        let (signature, signed) = match repo.extract_signature(&commit, None) {
            Ok(pair) => pair,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Err(refused(Refusal::Unsigned)),
            Err(e) => {
                return Err(SourceError::Git {
                    repository: repo.path().to_owned(),
                    what: format!("the signature of commit {commit}"),
                    message: e.message().to_owned(),
                })
            }
        };
        let signature = std::str::from_utf8(&signature)
            .map_err(|_| refused(Refusal::Malformed { message: "not ASCII armored".into() }))?;
        self.verify(signature.trim(), &signed).map_err(refused)
    }

    /// Verifies an armored SSH or OpenPGP `signature` over `signed`.
    fn verify(&self, signature: &str, signed: &[u8]) -> Result<Signer, Refusal> {
        if signature.starts_with("-----BEGIN SSH SIGNATURE-----") {
            self.verify_ssh(signature, signed)
        } else if signature.starts_with("-----BEGIN PGP SIGNATURE-----") {
            self.verify_openpgp(signature, signed)
        } else {
            // X.509 (gpgsm) signatures and anything else.
            Err(Refusal::Malformed { message: "neither an SSH nor an OpenPGP signature".into() })
        }
    }

    fn verify_ssh(&self, signature: &str, signed: &[u8]) -> Result<Signer, Refusal> {
        let signature =
            SshSig::from_pem(signature).map_err(|e| Refusal::Malformed { message: e.to_string() })?;
        let fingerprint = signature.public_key().fingerprint(HashAlg::Sha256).to_string();
        let signer = self
            .ssh
            .iter()
            .find(|allowed| allowed.key.key_data() == signature.public_key())
            .ok_or_else(|| Refusal::UnknownKey { key: format!("SSH key {fingerprint}") })?;
        signer.key.verify(SSH_NAMESPACE, signed, &signature).map_err(|e| Refusal::BadSignature {
            signer: format!("{} ({fingerprint})", signer.principals),
            message: e.to_string(),
        })?;
        Ok(Signer::Ssh { principals: signer.principals.clone(), fingerprint })
    }

    fn verify_openpgp(&self, signature: &str, signed: &[u8]) -> Result<Signer, Refusal> {
        let (signature, _) = DetachedSignature::from_string(signature)
            .map_err(|e| Refusal::Malformed { message: e.to_string() })?;
        let issuers = signature.signature.issuer();
        let issuer_fingerprints = signature.signature.issuer_fingerprint();
        for key in &self.openpgp {
            let signer = || Signer::OpenPgp {
                fingerprint: hex::encode_upper(key.fingerprint().as_bytes()),
                user_id: key.details.users.first().map(|u| String::from_utf8_lossy(u.id.id()).into_owned()),
            };
            // The primary key or any of its subkeys may be the signing key.
            let candidates = std::iter::once(&key.primary_key as &dyn PublicKeyTraitObject)
                .chain(key.public_subkeys.iter().map(|s| &s.key as &dyn PublicKeyTraitObject));
            for candidate in candidates {
                let named =
                    issuers.contains(&&candidate.id()) || issuer_fingerprints.contains(&&candidate.print());
                if !named {
                    continue;
                }
                return match candidate.check(&signature, signed) {
                    Ok(()) => Ok(signer()),
                    Err(e) => {
                        Err(Refusal::BadSignature { signer: signer().to_string(), message: e.to_string() })
                    }
                };
            }
        }
        let named: Vec<String> = issuer_fingerprints
            .iter()
            .map(|f| hex::encode_upper(f.as_bytes()))
            .chain(issuers.iter().map(|id| hex::encode_upper(id.as_ref())))
            .collect();
        Err(Refusal::UnknownKey { key: format!("OpenPGP key {}", named.join(", ")) })
    }
}

/// The parts of an OpenPGP primary key or subkey the verification needs, as a trait object
/// so the two kinds iterate together.
trait PublicKeyTraitObject {
    fn id(&self) -> pgp::types::KeyId;
    fn print(&self) -> pgp::types::Fingerprint;
    fn check(&self, signature: &DetachedSignature, signed: &[u8]) -> pgp::errors::Result<()>;
}

impl<K: PublicKeyTrait + KeyDetails> PublicKeyTraitObject for K {
    fn id(&self) -> pgp::types::KeyId {
        self.key_id()
    }
    fn print(&self) -> pgp::types::Fingerprint {
        self.fingerprint()
    }
    fn check(&self, signature: &DetachedSignature, signed: &[u8]) -> pgp::errors::Result<()> {
        signature.verify(self, signed)
    }
}

/// Key types an allowed signers line may name (OpenSSH's `sshkey_type_from_name` list that
/// `ssh-key` reads).
fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-sha2-") || word.starts_with("sk-")
}

/// Parses git's allowed signers format (`ssh-keygen(1)`, ALLOWED SIGNERS): one signer a
/// line, `principals [options] key-type base64-key [comment]`; `#` comments and blank lines
/// are skipped. Of the options, `namespaces` is honoured (a line whose namespaces exclude
/// `git` is skipped); `cert-authority`, `valid-after` and `valid-before` are refused,
/// because ignoring them would accept keys that `git verify-commit` would not.
fn parse_allowed_signers(text: &str) -> Result<Vec<AllowedSigner>, SourceError> {
    let mut signers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |message: String| SourceError::InvalidVerifySettings {
            what: format!("allowed signers line {}", n + 1),
            message,
        };
        let (principals, rest) = split_field(line);
        let (next, after) = split_field(rest);
        let (options, key_text) = if is_key_type(next) { ("", rest) } else { (next, after) };
        if principals.is_empty() || key_text.is_empty() {
            return Err(invalid("expected `principals [options] key-type base64-key`".into()));
        }
        let mut for_git = true;
        for option in split_options(options) {
            let (name, value) = option.split_once('=').unwrap_or((option, ""));
            match name.to_ascii_lowercase().as_str() {
                "namespaces" => {
                    for_git = value.trim_matches('"').split(',').any(|ns| ns.trim() == SSH_NAMESPACE);
                }
                other => return Err(invalid(format!("option {other:?} is not supported"))),
            }
        }
        let key = PublicKey::from_openssh(key_text).map_err(|e| invalid(e.to_string()))?;
        if for_git {
            signers.push(AllowedSigner { principals: principals.to_owned(), key });
        }
    }
    Ok(signers)
}

/// The first whitespace-separated field of `text` (a double-quoted part may hold spaces)
/// and the rest, trimmed.
fn split_field(text: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&text[..i], text[i..].trim_start()),
            _ => {}
        }
    }
    (text, "")
}

/// The comma-separated options of an allowed signers line (commas inside quotes kept).
fn split_options(options: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in options.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&options[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < options.len() {
        parts.push(&options[start..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHE3dLQbTTYkD5ouByZw4qIl+kKmXzTSrwpIG8E6Ag4Y";

    #[test]
    fn parses_allowed_signers_lines() {
        let text = format!(
            "# fleet maintainers\n\n\
             ops@example.com {KEY} laptop\n\
             a@example.com,b@example.com namespaces=\"git,file\" {KEY}\n\
             \"c@example.com\" namespaces=\"file\" {KEY}\n"
        );
        let signers = parse_allowed_signers(&text).unwrap();
        let principals: Vec<_> = signers.iter().map(|s| s.principals.as_str()).collect();
        // The third line is for another namespace than git's.
        assert_eq!(principals, ["ops@example.com", "a@example.com,b@example.com"]);
        assert_eq!(signers[0].key.algorithm(), ssh_key::Algorithm::Ed25519);
    }

    #[test]
    fn refuses_lines_it_cannot_honour() {
        for (text, expected) in [
            (format!("ops@example.com cert-authority {KEY}"), "\"cert-authority\""),
            (format!("ops@example.com valid-before=20300101 {KEY}"), "\"valid-before\""),
            ("ops@example.com ssh-ed25519 AAAA-not-base64".to_owned(), "Base64"),
            ("ops@example.com".to_owned(), "expected"),
        ] {
            let err = parse_allowed_signers(&format!("\n{text}")).unwrap_err();
            assert!(err.to_string().contains(expected), "{text}: {err}");
            assert!(err.to_string().contains("line 2"), "{err}");
        }
    }

    #[test]
    fn refuses_to_verify_against_nothing() {
        let err = Verifier::new(&VerifySpec::default()).unwrap_err();
        assert!(matches!(err, SourceError::InvalidVerifySettings { .. }), "{err}");
        let spec = VerifySpec { openpgp_keys: vec!["not a key".into()], ..VerifySpec::default() };
        let err = Verifier::new(&spec).unwrap_err();
        assert!(err.to_string().contains("OpenPGP key #1"), "{err}");
    }

    #[test]
    fn refuses_signatures_of_other_kinds() {
        let verifier = Verifier::new(&VerifySpec {
            allowed_signers: format!("ops@example.com {KEY}"),
            ..VerifySpec::default()
        })
        .unwrap();
        let err = verifier.verify("-----BEGIN SIGNED MESSAGE-----", b"x").unwrap_err();
        assert!(matches!(err, Refusal::Malformed { .. }), "{err}");
        let err = verifier.verify("-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----", b"x");
        assert!(matches!(err, Err(Refusal::Malformed { .. })), "{err:?}");
    }
}
