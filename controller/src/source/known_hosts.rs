//! SSH host key checking against a `known_hosts` file, as OpenSSH does with
//! `StrictHostKeyChecking yes`: the server's key must be listed for its host (and port),
//! or the connection is refused before any credential is sent.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use ssh_key::known_hosts::{Entry, HostPatterns, KnownHosts as Parser, Marker};
use ssh_key::PublicKey;

use super::SourceError;

/// The host keys a `known_hosts` file accepts.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl KnownHosts {
    /// Reads `path`, in OpenSSH's `known_hosts` format (plain or hashed host names,
    /// patterns, `[host]:port`, `@revoked`; `@cert-authority` lines are ignored).
    pub fn read(path: &Path) -> Result<KnownHosts, SourceError> {
        let invalid = |message: String| SourceError::KnownHosts { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            // The parser reads a whole file; one line at a time names the bad line.
            for entry in Parser::new(line) {
                entries.push(entry.map_err(|e| invalid(format!("line {}: {e}", n + 1)))?);
            }
        }
        Ok(KnownHosts { path: path.to_owned(), entries })
    }

    /// Checks the key `key` (SSH wire encoding, as the server sent it) of `host`:`port`.
    pub fn check(&self, host: &str, port: u16, key: &[u8]) -> Result<(), HostKeyRefusal> {
        let offered = PublicKey::from_bytes(key).map_err(|e| HostKeyRefusal::Unreadable(e.to_string()))?;
        let host = if port == 22 { host.to_owned() } else { format!("[{host}]:{port}") };
        let fingerprint = offered.fingerprint(Default::default()).to_string();
        let same_key = |entry: &Entry| entry.public_key().key_data() == offered.key_data();
        let for_host: Vec<&Entry> =
            self.entries.iter().filter(|e| matches(e.host_patterns(), &host)).collect();
        let file = self.path.clone();
        if for_host.iter().any(|e| e.marker() == Some(&Marker::Revoked) && same_key(e)) {
            return Err(HostKeyRefusal::Revoked { host, fingerprint, file });
        }
        if for_host.iter().any(|e| e.marker().is_none() && same_key(e)) {
            return Ok(());
        }
        let known = for_host.iter().any(|e| e.marker().is_none());
        Err(if known {
            HostKeyRefusal::Changed { host, fingerprint, file }
        } else {
            HostKeyRefusal::Unknown { host, fingerprint, file }
        })
    }
}

/// Why a server's host key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostKeyRefusal {
    /// The key the server sent cannot be read.
    #[error("the server's host key is unreadable: {0}")]
    Unreadable(String),
    /// The file lists the key as revoked.
    #[error("the host key of {host} ({fingerprint}) is revoked in {}", file.display())]
    Revoked {
        /// The host as `known_hosts` names it (`[host]:port` off port 22).
        host: String,
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
        /// The `known_hosts` file.
        file: PathBuf,
    },
    /// The file lists the host with other keys.
    #[error(
        "the host key of {host} ({fingerprint}) does not match the one in {}: the server's key changed, or \
         this is not the server",
        file.display()
    )]
    Changed {
        /// The host as `known_hosts` names it.
        host: String,
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
        /// The `known_hosts` file.
        file: PathBuf,
    },
    /// The file does not list the host.
    #[error("{host} is not in {} (its host key is {fingerprint})", file.display())]
    Unknown {
        /// The host as `known_hosts` names it.
        host: String,
        /// The key's SHA-256 fingerprint.
        fingerprint: String,
        /// The `known_hosts` file.
        file: PathBuf,
    },
}

/// Whether `patterns` name the host, as OpenSSH matches them: against `host` on port 22
/// and `[host]:port` on others.
fn matches(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else { return false };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for pattern in patterns {
                let (negated, pattern) = match pattern.strip_prefix('!') {
                    Some(p) => (true, p),
                    None => (false, pattern.as_str()),
                };
                let hit = glob(pattern, name);
                if hit && negated {
                    return false;
                }
                matched |= hit;
            }
            matched
        }
    }
}

/// OpenSSH's host pattern match: `*` any run of characters, `?` one; case-insensitive.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) =
        (pattern.to_lowercase().chars().collect(), text.to_lowercase().chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The host and port an SSH URL connects to: `ssh://[user@]host[:port]/path` or the
/// scp-like `[user@]host:path`. `None` for other URLs.
pub fn ssh_host(url: &str) -> Option<(String, u16)> {
    if let Some(rest) = url.strip_prefix("ssh://").or_else(|| url.strip_prefix("git+ssh://")) {
        let authority = rest.split('/').next()?;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if let Some(bracketed) = host_port.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']')?;
            let port = after.strip_prefix(':').map_or(Some(22), |p| p.parse().ok())?;
            return Some((host.to_owned(), port));
        }
        return Some(match host_port.split_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse().ok()?),
            None => (host_port.to_owned(), 22),
        });
    }
    if url.contains("://") {
        return None;
    }
    let (authority, _) = url.split_once(':')?;
    if authority.contains('/') {
        return None;
    }
    Some((authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_owned(), 22))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHE3dLQbTTYkD5ouByZw4qIl+kKmXzTSrwpIG8E6Ag4Y";
    const OTHER: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

    fn wire(key: &str) -> Vec<u8> {
        PublicKey::from_openssh(key).unwrap().to_bytes().unwrap()
    }

    fn known(text: &str) -> KnownHosts {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, text).unwrap();
        KnownHosts::read(&path).unwrap()
    }

    #[test]
    fn plain_patterns_ports_and_negations() {
        let hosts =
            known(&format!("# servers\ngit.example.com,10.0.0.*,!10.0.0.9 {KEY}\n[127.0.0.1]:2222 {KEY}\n"));
        assert_eq!(hosts.check("git.example.com", 22, &wire(KEY)), Ok(()));
        assert_eq!(hosts.check("GIT.example.com", 22, &wire(KEY)), Ok(()));
        assert_eq!(hosts.check("10.0.0.7", 22, &wire(KEY)), Ok(()));
        assert!(hosts.check("10.0.0.9", 22, &wire(KEY)).unwrap_err().to_string().contains("is not in"));
        assert_eq!(hosts.check("127.0.0.1", 2222, &wire(KEY)), Ok(()));
        assert!(hosts
            .check("127.0.0.1", 22, &wire(KEY))
            .unwrap_err()
            .to_string()
            .contains("127.0.0.1 is not in"));
        assert!(hosts.check("git.example.com", 2222, &wire(KEY)).is_err());
        let changed = hosts.check("git.example.com", 22, &wire(OTHER)).unwrap_err().to_string();
        assert!(changed.contains("does not match"), "{changed}");
    }

    #[test]
    fn hashed_names_and_revoked_keys() {
        // `ssh-keygen -H` form of "[127.0.0.1]:2222", salt "salt-salt-salt-salt-"
        let salt = b"salt-salt-salt-salt-";
        let mut mac = Hmac::<Sha1>::new_from_slice(salt).unwrap();
        mac.update(b"[127.0.0.1]:2222");
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let hashed = format!("|1|{}|{}", b64.encode(salt), b64.encode(mac.finalize().into_bytes()));
        let hosts = known(&format!("{hashed} {KEY}\n@revoked * {OTHER}\n"));
        assert_eq!(hosts.check("127.0.0.1", 2222, &wire(KEY)), Ok(()));
        assert!(hosts.check("127.0.0.2", 2222, &wire(KEY)).is_err());
        assert!(hosts.check("127.0.0.1", 2222, &wire(OTHER)).unwrap_err().to_string().contains("revoked"));
    }

    #[test]
    fn glob_matching() {
        assert!(glob("*", "anything"));
        assert!(glob("git-?.example.com", "git-1.example.com"));
        assert!(!glob("git-?.example.com", "git-10.example.com"));
        assert!(glob("*.example.com", "a.b.example.com"));
        assert!(!glob("*.example.com", "example.com"));
    }

    #[test]
    fn hosts_of_ssh_urls() {
        assert_eq!(ssh_host("ssh://git@127.0.0.1:2222/srv/fleet.git"), Some(("127.0.0.1".into(), 2222)));
        assert_eq!(ssh_host("ssh://example.com/fleet.git"), Some(("example.com".into(), 22)));
        assert_eq!(ssh_host("ssh://git@[::1]:2222/fleet.git"), Some(("::1".into(), 2222)));
        assert_eq!(ssh_host("git@github.com:acme/fleet.git"), Some(("github.com".into(), 22)));
        assert_eq!(ssh_host("https://github.com/acme/fleet.git"), None);
        assert_eq!(ssh_host("/srv/fleet"), None);
        assert_eq!(ssh_host("./a:b/fleet"), None);
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, format!("example.com {KEY}\nexample.org ssh-ed25519 not-base64\n")).unwrap();
        let error = KnownHosts::read(&path).unwrap_err().to_string();
        assert!(error.contains("known_hosts: line 2:"), "{error}");
    }
}
