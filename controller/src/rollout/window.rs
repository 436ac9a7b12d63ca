//! Maintenance windows: when a group's devices may install.
//!
//! A window opens at each time its cron schedule matches (read in its time zone) and
//! stays open for its duration. A device may start installing while any window of its
//! group is open; a group without windows may install at any time.

use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::model::MaintenanceWindow;

/// One compiled window.
#[derive(Debug, Clone)]
struct Window {
    schedule: Cron,
    duration: SignedDuration,
    time_zone: TimeZone,
}

/// The windows in force for a group, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    windows: Vec<Window>,
}

/// A window that cannot be evaluated. The compiler's checks refuse these before a
/// rollout sees them; this is the error of the last resort.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid maintenance window {schedule:?}: {reason}")]
pub struct WindowError {
    /// The schedule as written.
    pub schedule: String,
    /// What is wrong.
    pub reason: String,
}

impl Windows {
    /// Compiles a group's windows.
    pub fn new(specs: &[MaintenanceWindow]) -> Result<Windows, WindowError> {
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let windows = specs
            .iter()
            .map(|spec| {
                let err = |reason: String| WindowError { schedule: spec.schedule.clone(), reason };
                let schedule = parser.parse(&spec.schedule).map_err(|e| err(e.to_string()))?;
                let duration: Duration =
                    humantime::parse_duration(&spec.duration).map_err(|e| err(e.to_string()))?;
                let duration = SignedDuration::try_from(duration).map_err(|e| err(e.to_string()))?;
                let time_zone = match spec.time_zone.as_deref() {
                    None | Some("UTC") => TimeZone::UTC,
                    Some(name) => TimeZone::get(name).map_err(|e| err(e.to_string()))?,
                };
                Ok(Window { schedule, duration, time_zone })
            })
            .collect::<Result<_, _>>()?;
        Ok(Windows { windows })
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

impl Window {
    fn open_at(&self, now: Timestamp) -> bool {
        let local = now.to_zoned(self.time_zone.clone());
        match self.schedule.find_previous_occurrence(&local, true) {
            Ok(start) => start.timestamp().checked_add(self.duration).is_ok_and(|end| now < end),
            Err(_) => false,
        }
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
}
