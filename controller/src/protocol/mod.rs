//! The device protocol: everything the agent and the controller exchange, in one place
//! that both sides depend on (the agent on nothing else of the controller).
//!
//! | what | where | direction |
//! |---|---|---|
//! | [`DeviceInstruction`] | TUF target `devices/<id>.json` ([`target`]) | controller → device |
//! | [`MaintenanceWindow`], [`Windows`] | inside the instruction | controller → device |
//! | [`EnrollRequest`], [`EnrollResponse`] | `POST /v1/enroll` | device → controller |
//! | [`ReportBody`], [`UpdateState`] | `POST /v1/devices/{id}/reports` | device → controller |
//! | [`signature`]: headers, [`DeviceKey`], [`signature::verify`] | on every report | device → controller |
//! | [`DeviceId`] | everywhere a device is named | both |
//!
//! The wire formats are fixed: JSON field names and order, the signed message and the
//! target paths are what deployed agents read and write.

pub mod device_id;
pub mod duration;
mod enroll;
mod instruction;
mod report;
pub mod signature;
pub mod target;
pub mod window;

pub use device_id::{DeviceId, DeviceIdError};
pub use enroll::{EnrollRequest, EnrollResponse};
pub(crate) use instruction::{is_false, is_first_attempt};
pub use instruction::{ArtifactRef, DeviceInstruction};
pub use report::{FailureClass, ReportBody, UpdateState};
pub use signature::DeviceKey;
pub use window::{MaintenanceWindow, Window, WindowError, Windows};
