//! Device ids: the one rule for every place an id enters Waveguide (the fleet repository,
//! an enrollment, a published batch, the agent's own settings).
//!
//! An id becomes one path segment of the TUF target `devices/<id>.json` and of the URL
//! `/v1/devices/<id>/reports`, so the rule keeps it short, plain ASCII and free of path
//! syntax: 1–128 letters, digits, `.`, `_` or `-`, starting with a letter or digit.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// Why a text is not a device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceIdError {
    /// The text is empty.
    #[error("a device id must not be empty")]
    Empty,
    /// The text is longer than [`MAX_DEVICE_ID_LEN`].
    #[error("a device id must be at most 128 characters")]
    TooLong,
    /// The text holds a character outside the allowed set.
    #[error("a device id may hold only letters, digits, '.', '_' and '-'")]
    Character,
    /// The text starts with `.`, `_` or `-`.
    #[error("a device id must start with a letter or digit")]
    Start,
}

/// A device id that follows the rule (see the module documentation). It derefs to the
/// id's text and serialises as that text; deserialising checks the rule.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(Box<str>);

impl DeviceId {
    /// Checks `id` against the rule without taking it.
    pub fn check(id: &str) -> Result<(), DeviceIdError> {
        let bytes = id.as_bytes();
        match bytes.first() {
            None => Err(DeviceIdError::Empty),
            Some(_) if bytes.len() > MAX_DEVICE_ID_LEN => Err(DeviceIdError::TooLong),
            Some(_)
                if !bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
            {
                Err(DeviceIdError::Character)
            }
            Some(first) if !first.is_ascii_alphanumeric() => Err(DeviceIdError::Start),
            Some(_) => Ok(()),
        }
    }

    /// `id` as a device id, if it follows the rule.
    pub fn new(id: impl Into<Box<str>>) -> Result<DeviceId, DeviceIdError> {
        let id = id.into();
        DeviceId::check(&id)?;
        Ok(DeviceId(id))
    }

    /// An id the compiler already checked against the rule (every id of a compiled fleet):
    /// taken as it is, without checking a million ids a second time.
    pub(crate) fn checked(id: impl Into<Box<str>>) -> DeviceId {
        let id = id.into();
        debug_assert_eq!(DeviceId::check(&id), Ok(()), "{id:?}");
        DeviceId(id)
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for DeviceId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<DeviceId, DeviceIdError> {
        DeviceId::new(s)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;

    fn try_from(s: String) -> Result<DeviceId, DeviceIdError> {
        DeviceId::new(s)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0.into()
    }
}

impl From<DeviceId> for Box<str> {
    fn from(id: DeviceId) -> Box<str> {
        id.0
    }
}

impl PartialEq<str> for DeviceId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for DeviceId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<DeviceId> for Box<str> {
    fn eq(&self, other: &DeviceId) -> bool {
        **self == *other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in ["a", "store-0001", "A.b_c-9", &"x".repeat(128)] {
            assert_eq!(DeviceId::check(good), Ok(()), "{good}");
        }
        assert_eq!(DeviceId::check(""), Err(DeviceIdError::Empty));
        assert_eq!(DeviceId::check(&"x".repeat(129)), Err(DeviceIdError::TooLong));
        for bad in ["a/b", "..", "bad id", "caf\u{e9}", "a\\b", "a\nb"] {
            assert!(DeviceId::check(bad).is_err(), "{bad:?}");
        }
        assert_eq!(DeviceId::check("-a"), Err(DeviceIdError::Start));
        assert_eq!(DeviceId::check(".a"), Err(DeviceIdError::Start));
    }

    #[test]
    fn reads_and_writes_as_its_text() {
        let id: DeviceId = serde_json::from_str("\"gw-1\"").unwrap();
        assert_eq!(id, "gw-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"gw-1\"");
        let err = serde_json::from_str::<DeviceId>("\"a/b\"").unwrap_err();
        assert!(err.to_string().contains("may hold only"), "{err}");
        assert_eq!(format!("{id} {id:?}"), "gw-1 \"gw-1\"");
    }
}
