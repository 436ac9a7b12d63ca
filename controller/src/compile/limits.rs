//! Hard limits on what a fleet repository may ask of the compiler, so that no commit —
//! a mistake or a hostile pull request — can make `validate`, `plan` or the controller
//! run for hours or exhaust memory. Each is checked before the work it bounds: a
//! document's size and nesting before it is parsed, a range's size without expanding
//! it. `docs/formats.md` lists them.

use super::diagnostic::{Code, Diagnostic};
use super::load::Documents;
use crate::model::DeviceRange;

/// The largest document, in bytes: room for a DeviceSet that lists its whole
/// [`MAX_DEVICES_PER_SET`] devices with keys and labels.
pub const MAX_DOCUMENT_BYTES: usize = 256 << 20;

/// How deep collections may nest in a document. Fleet documents need about ten levels;
/// deeper nesting is only ever a mistake or an attack on the YAML parser, whose cost
/// grows with the square of the depth.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Devices one DeviceSet may declare (listed and ranged together).
pub const MAX_DEVICES_PER_SET: u64 = 1_000_000;

/// Devices one fleet may declare.
pub const MAX_DEVICES_PER_FLEET: u64 = 10_000_000;

/// A device range whose numbers run past the largest device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("device range from {start} with count {count} runs past the largest device number ({})", u64::MAX)]
pub struct RangeOverflow {
    /// The range's first number.
    pub start: u64,
    /// How many devices it declares.
    pub count: u64,
}

/// How many devices a range declares. Nothing is expanded.
pub(super) fn range_size(range: &DeviceRange) -> Result<u64, RangeOverflow> {
    if range.count > 0 && range.last_number().is_none() {
        return Err(RangeOverflow { start: range.start, count: range.count });
    }
    Ok(range.count)
}

/// Checks that the fleet declares at most [`MAX_DEVICES_PER_FLEET`] devices, counting
/// ranges without expanding them. Reports at the document whose devices cross the limit,
/// in file order; the compiler then stops: the checks after loading cost time per
/// device.
pub(super) fn check_fleet_size(documents: &Documents) -> Option<Diagnostic> {
    // Devices and device sets, each with its location, in file order.
    let mut declared: Vec<(&super::Location, u64)> =
        documents.devices.iter().map(|d| (&d.location, 1)).collect();
    declared.extend(documents.device_sets.iter().map(|s| {
        let spec = &s.value.spec;
        (&s.location, spec.devices.len() as u64 + spec.range.as_ref().map_or(0, |r| r.count))
    }));
    let total: u64 = declared.iter().map(|(_, n)| n).sum();
    if total <= MAX_DEVICES_PER_FLEET {
        return None;
    }
    declared.sort_by(|a, b| a.0.cmp(b.0));
    let mut running = 0u64;
    let (location, _) = declared.iter().find(|(_, n)| {
        running += n;
        running > MAX_DEVICES_PER_FLEET
    })?;
    Some(Diagnostic::new(
        Code::TooManyDevices,
        (*location).clone(),
        format!(
            "the fleet declares {total} devices, more than the limit of {MAX_DEVICES_PER_FLEET}; \
             this document's devices cross it (nothing else was checked)"
        ),
    ))
}
