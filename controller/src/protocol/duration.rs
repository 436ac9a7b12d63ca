//! The one duration grammar of Waveguide: `humantime`'s (`90s`, `30m`, `2h`, `1d`,
//! `1h 30m`), with a leading `-` for a negative duration where one makes sense (expiry
//! periods in tests). Fleet documents (bake times, maintenance windows), device
//! instructions, Kubernetes settings and command-line flags all read durations this way.

use std::fmt;

use jiff::SignedDuration;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Not in the grammar; the message says where.
    #[error("{0}")]
    Syntax(#[from] humantime::DurationError),
    /// Longer than a signed duration holds.
    #[error("the duration is too long")]
    TooLong,
}

/// Parses a duration: `humantime`'s grammar, optionally negative (`-1h`).
pub fn parse_duration(text: &str) -> Result<SignedDuration, DurationError> {
    let (negative, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let duration = humantime::parse_duration(magnitude)?;
    let duration = SignedDuration::try_from(duration).map_err(|_| DurationError::TooLong)?;
    Ok(if negative { -duration } else { duration })
}

/// A duration as written in a fleet document (`30m`), parsed once: its value to compute
/// with, its text to show in reports exactly as the operator wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WrittenDuration {
    text: Box<str>,
    value: SignedDuration,
}

impl WrittenDuration {
    /// Parses `text` (see [`parse_duration`]).
    pub fn parse(text: &str) -> Result<WrittenDuration, DurationError> {
        Ok(WrittenDuration { text: text.into(), value: parse_duration(text)? })
    }

    /// The duration as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The duration.
    pub fn value(&self) -> SignedDuration {
        self.value
    }
}

impl fmt::Display for WrittenDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_sign() {
        assert_eq!(parse_duration("1d"), Ok(SignedDuration::from_secs(86_400)));
        assert_eq!(parse_duration("-1h"), Ok(SignedDuration::from_secs(-3600)));
        assert_eq!(parse_duration("90s"), Ok(SignedDuration::from_secs(90)));
        assert_eq!(parse_duration("1h 30m"), Ok(SignedDuration::from_secs(5400)));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("soon").unwrap_err().to_string(), "expected number at 0");
    }

    #[test]
    fn a_written_duration_keeps_its_text() {
        let bake = WrittenDuration::parse("90m").unwrap();
        assert_eq!(bake.as_str(), "90m");
        assert_eq!(bake.to_string(), "90m");
        assert_eq!(bake.value(), SignedDuration::from_secs(5400));
    }
}
