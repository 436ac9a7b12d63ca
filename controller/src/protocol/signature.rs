//! How a device proves a report is its own: an ed25519 signature over the report body,
//! the device id and a timestamp, so a captured report can be neither altered, moved to
//! another device, nor replayed later.
//!
//! The device sends two headers with `POST /v1/devices/{id}/reports`:
//! - `x-waveguide-timestamp`: Unix milliseconds when it signed;
//! - `x-waveguide-signature`: base64 ed25519 signature of [`signed_message`].
//!
//! The server refuses timestamps outside a short window around its clock, and any
//! timestamp not newer than the last one it accepted from that device.

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// Header carrying the signing time, Unix milliseconds.
pub const TIMESTAMP_HEADER: &str = "x-waveguide-timestamp";
/// Header carrying the base64 ed25519 signature.
pub const SIGNATURE_HEADER: &str = "x-waveguide-signature";

/// The bytes a device signs for a report: a domain tag, its id, the timestamp and the
/// body, each separated by a newline.
pub fn signed_message(device_id: &str, timestamp_ms: i64, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(body.len() + device_id.len() + 48);
    message.extend_from_slice(b"waveguide-report-v1\n");
    message.extend_from_slice(device_id.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(timestamp_ms.to_string().as_bytes());
    message.push(b'\n');
    message.extend_from_slice(body);
    message
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The stored public key is not base64 of 32 bytes.
    #[error("the device's public key is not a base64 ed25519 key")]
    BadPublicKey,
    /// The signature header is not base64.
    #[error("the signature is not base64")]
    BadEncoding,
    /// The signature does not verify.
    #[error("the signature does not match the report")]
    Mismatch,
}

/// Checks a report's signature against the device's base64 public key.
pub fn verify(
    public_key_b64: &str,
    device_id: &str,
    timestamp_ms: i64,
    body: &[u8],
    signature_b64: &str,
) -> Result<(), SignatureError> {
    let key = BASE64.decode(public_key_b64.trim()).map_err(|_| SignatureError::BadPublicKey)?;
    if key.len() != 32 {
        return Err(SignatureError::BadPublicKey);
    }
    let signature = BASE64.decode(signature_b64.trim()).map_err(|_| SignatureError::BadEncoding)?;
    UnparsedPublicKey::new(&signature::ED25519, &key)
        .verify(&signed_message(device_id, timestamp_ms, body), &signature)
        .map_err(|_| SignatureError::Mismatch)
}

/// A device's signing key: an ed25519 key pair kept as PKCS#8.
pub struct DeviceKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey").field("public_key", &self.public_key_b64()).finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// A new random key.
    pub fn generate() -> DeviceKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .expect("the system random source works");
        DeviceKey::from_pkcs8(pkcs8.as_ref()).expect("a freshly generated key parses")
    }

    /// A key from its PKCS#8 bytes (as written by [`DeviceKey::pkcs8`]).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Option<DeviceKey> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).ok()?;
        Some(DeviceKey { pair, pkcs8: pkcs8.to_vec() })
    }

    /// The key whose ed25519 seed (private scalar source) is `seed`: the same seed always
    /// gives the same key.
    pub fn from_seed(seed: &[u8; 32]) -> DeviceKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are an ed25519 seed");
        let pkcs8 = pair.to_pkcs8().expect("a key pair serialises as PKCS#8");
        DeviceKey::from_pkcs8(pkcs8.as_ref()).expect("PKCS#8 just written parses")
    }

    /// The PKCS#8 bytes, for storing the key.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key, base64, as declared in the fleet repository or sent at enrollment.
    pub fn public_key_b64(&self) -> String {
        BASE64.encode(self.pair.public_key().as_ref())
    }

    /// The base64 signature headers' value for a report.
    pub fn sign_report(&self, device_id: &str, timestamp_ms: i64, body: &[u8]) -> String {
        BASE64.encode(self.pair.sign(&signed_message(device_id, timestamp_ms, body)).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_body_device_and_time() {
        let key = DeviceKey::generate();
        let public = key.public_key_b64();
        let sig = key.sign_report("dev-1", 1000, b"{}");
        assert_eq!(verify(&public, "dev-1", 1000, b"{}", &sig), Ok(()));
        assert_eq!(verify(&public, "dev-2", 1000, b"{}", &sig), Err(SignatureError::Mismatch));
        assert_eq!(verify(&public, "dev-1", 1001, b"{}", &sig), Err(SignatureError::Mismatch));
        assert_eq!(verify(&public, "dev-1", 1000, b"{ }", &sig), Err(SignatureError::Mismatch));
        let other = DeviceKey::generate().public_key_b64();
        assert_eq!(verify(&other, "dev-1", 1000, b"{}", &sig), Err(SignatureError::Mismatch));
        assert_eq!(verify("not base64!", "dev-1", 1000, b"{}", &sig), Err(SignatureError::BadPublicKey));
        assert_eq!(verify(&public, "dev-1", 1000, b"{}", "%%%"), Err(SignatureError::BadEncoding));
    }

    #[test]
    fn a_seed_gives_the_same_key_every_time() {
        let a = DeviceKey::from_seed(&[7; 32]);
        assert_eq!(a.public_key_b64(), DeviceKey::from_seed(&[7; 32]).public_key_b64());
        assert_ne!(a.public_key_b64(), DeviceKey::from_seed(&[8; 32]).public_key_b64());
        let sig = a.sign_report("d", 1, b"{}");
        assert_eq!(verify(&a.public_key_b64(), "d", 1, b"{}", &sig), Ok(()));
    }

    #[test]
    fn keys_round_trip_through_pkcs8() {
        let key = DeviceKey::generate();
        let again = DeviceKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(key.public_key_b64(), again.public_key_b64());
        assert!(DeviceKey::from_pkcs8(b"garbage").is_none());
    }
}
