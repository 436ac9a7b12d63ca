//! The body of `POST /v1/enroll` and its answer: a device joins the group whose
//! enrollment token it presents.

use serde::{Deserialize, Serialize};

/// The JSON body of an enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    /// The id the device will report with; the server refuses one that breaks the rule
    /// of [`DeviceId`](super::DeviceId), naming why.
    pub device_id: String,
    /// The group's enrollment token (its SHA-256 is in the fleet repository).
    pub token: String,
    /// The device's base64 ed25519 public key.
    pub public_key: String,
}

/// The answer to an enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    /// The device id.
    pub device_id: String,
    /// The group it belongs to.
    pub group: String,
}
