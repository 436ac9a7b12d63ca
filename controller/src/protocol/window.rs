//! Maintenance windows: when a group's devices may install.
//!
//! A window opens at each time its cron schedule matches (read in its time zone) and
//! stays open for its duration. A device may start installing while any window of its
//! group is open; a group without windows may install at any time.
//!
//! A window travels as written ([`MaintenanceWindow`]: in the fleet repository and in
//! each device instruction) and is parsed once where it arrives ([`Window::parse`]: by
//! the compiler, and by the agent from its instruction).

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::{parse_duration, DurationError};

/// A recurring window in which updates may be installed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// Start of each window, as a five-field cron expression (`minute hour day month weekday`).
    pub schedule: String,
    /// How long each window stays open, e.g. `2h` or `90m`.
    pub duration: String,
    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`. Default `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// What is wrong with one field of a window.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// The schedule is not a five-field cron expression.
    #[error("invalid schedule {schedule:?}: {reason} (write five fields: minute hour day month weekday)")]
    Schedule {
        /// The schedule as written.
        schedule: String,
        /// What the cron parser said.
        reason: String,
    },
    /// The duration is not a duration.
    #[error("invalid duration {duration:?}: {reason} (write e.g. 90m or 2h)")]
    Duration {
        /// The duration as written.
        duration: String,
        /// Why it does not parse.
        reason: DurationError,
    },
    /// The duration is zero or negative: the window would never open.
    #[error("a maintenance window must last longer than 0")]
    Empty,
    /// The time zone is not a known IANA name.
    #[error("unknown time zone {zone:?} (write an IANA name such as Europe/Berlin): {reason}")]
    TimeZone {
        /// The time zone as written.
        zone: String,
        /// What the time zone database said.
        reason: String,
    },
}

impl WindowError {
    /// The field of [`MaintenanceWindow`] that is wrong, as written in YAML.
    pub fn field(&self) -> &'static str {
        match self {
            WindowError::Schedule { .. } => "schedule",
            WindowError::Duration { .. } | WindowError::Empty => "duration",
            WindowError::TimeZone { .. } => "timeZone",
        }
    }
}

/// One parsed window, with the form it was written in.
#[derive(Debug, Clone)]
pub struct Window {
    written: MaintenanceWindow,
    schedule: Cron,
    duration: SignedDuration,
    time_zone: TimeZone,
}

impl Window {
    /// Parses a window, reporting every wrong field.
    pub fn parse(spec: &MaintenanceWindow) -> Result<Window, Vec<WindowError>> {
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let schedule = parser
            .parse(&spec.schedule)
            .map_err(|e| WindowError::Schedule { schedule: spec.schedule.clone(), reason: e.to_string() });
        let duration = match parse_duration(&spec.duration) {
            Ok(d) if d.is_positive() => Ok(d),
            Ok(_) => Err(WindowError::Empty),
            Err(reason) => Err(WindowError::Duration { duration: spec.duration.clone(), reason }),
        };
        let time_zone = match spec.time_zone.as_deref() {
            None | Some("UTC") => Ok(TimeZone::UTC),
            Some(name) => TimeZone::get(name)
                .map_err(|e| WindowError::TimeZone { zone: name.to_owned(), reason: e.to_string() }),
        };
        match (schedule, duration, time_zone) {
            (Ok(schedule), Ok(duration), Ok(time_zone)) => {
                Ok(Window { written: spec.clone(), schedule, duration, time_zone })
            }
            (schedule, duration, time_zone) => {
                Err([schedule.err(), duration.err(), time_zone.err()].into_iter().flatten().collect())
            }
        }
    }

    /// The window as written.
    pub fn as_written(&self) -> &MaintenanceWindow {
        &self.written
    }

    fn open_at(&self, now: Timestamp) -> bool {
        let local = now.to_zoned(self.time_zone.clone());
        match self.schedule.find_previous_occurrence(&local, true) {
            Ok(start) => start.timestamp().checked_add(self.duration).is_ok_and(|end| now < end),
            Err(_) => false,
        }
    }
}

/// The windows in force for a group, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    windows: Vec<Window>,
    written: Vec<MaintenanceWindow>,
}

impl Windows {
    /// Parses a group's windows (as an instruction carries them); the first wrong field
    /// is the error.
    pub fn new(specs: &[MaintenanceWindow]) -> Result<Windows, WindowError> {
        let windows = specs
            .iter()
            .map(|spec| Window::parse(spec).map_err(|mut errors| errors.swap_remove(0)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Windows::from_parsed(windows))
    }

    /// The windows already parsed one by one.
    pub fn from_parsed(windows: Vec<Window>) -> Windows {
        let written = windows.iter().map(|w| w.written.clone()).collect();
        Windows { windows, written }
    }

    /// The windows as written, for a device instruction.
    pub fn as_written(&self) -> &[MaintenanceWindow] {
        &self.written
    }

    /// True when there is no window: installing is allowed at any time.
    pub fn is_unrestricted(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether some window is open at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.is_unrestricted() || self.windows.iter().any(|w| w.open_at(now))
    }

    /// When the next window opens after `now`, if any (now itself when one is open).
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        if self.is_open(now) {
            return Some(now);
        }
        self.windows
            .iter()
            .filter_map(|w| w.schedule.find_next_occurrence(&now.to_zoned(w.time_zone.clone()), false).ok())
            .map(|z| z.timestamp())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(schedule: &str, duration: &str, tz: Option<&str>) -> MaintenanceWindow {
        MaintenanceWindow {
            schedule: schedule.into(),
            duration: duration.into(),
            time_zone: tz.map(Into::into),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn no_window_means_any_time() {
        let w = Windows::new(&[]).unwrap();
        assert!(w.is_open(at("2026-01-01T12:00:00Z")));
    }

    #[test]
    fn a_nightly_window_in_a_time_zone() {
        // 02:00–04:00 Berlin time; Berlin is UTC+1 in January.
        let w = Windows::new(&[window("0 2 * * *", "2h", Some("Europe/Berlin"))]).unwrap();
        assert!(!w.is_open(at("2026-01-10T00:59:00Z")));
        assert!(w.is_open(at("2026-01-10T01:00:00Z")));
        assert!(w.is_open(at("2026-01-10T02:59:59Z")));
        assert!(!w.is_open(at("2026-01-10T03:00:00Z")));
        assert_eq!(w.next_open(at("2026-01-10T12:00:00Z")), Some(at("2026-01-11T01:00:00Z")));
        assert_eq!(w.next_open(at("2026-01-10T01:30:00Z")), Some(at("2026-01-10T01:30:00Z")));
    }

    #[test]
    fn a_window_crossing_midnight_and_weekdays() {
        // Saturdays 22:00 UTC for 4 hours: open until Sunday 02:00.
        let w = Windows::new(&[window("0 22 * * 6", "4h", None)]).unwrap();
        assert!(w.is_open(at("2026-01-10T23:00:00Z"))); // a Saturday
        assert!(w.is_open(at("2026-01-11T01:59:00Z")));
        assert!(!w.is_open(at("2026-01-11T02:00:00Z")));
        assert!(!w.is_open(at("2026-01-09T23:00:00Z"))); // a Friday
    }

    #[test]
    fn any_of_several_windows() {
        let w = Windows::new(&[window("0 1 * * *", "1h", None), window("0 13 * * *", "30m", None)]).unwrap();
        assert!(w.is_open(at("2026-03-01T01:30:00Z")));
        assert!(w.is_open(at("2026-03-01T13:10:00Z")));
        assert!(!w.is_open(at("2026-03-01T13:40:00Z")));
    }

    #[test]
    fn invalid_windows_are_errors() {
        assert!(Windows::new(&[window("61 * * * *", "1h", None)]).is_err());
        assert!(Windows::new(&[window("0 1 * * *", "soon", None)]).is_err());
        assert!(Windows::new(&[window("0 1 * * *", "1h", Some("Mars/Olympus"))]).is_err());
    }

    #[test]
    fn every_wrong_field_is_named() {
        let errors = Window::parse(&window("0 25 * * *", "0s", Some("Mars/Olympus"))).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(WindowError::field).collect();
        assert_eq!(fields, ["schedule", "duration", "timeZone"]);
        assert_eq!(errors[1], WindowError::Empty);
        let parsed = Windows::new(&[window("0 1 * * *", "1h", None)]).unwrap();
        assert_eq!(parsed.as_written(), [window("0 1 * * *", "1h", None)]);
    }
}
