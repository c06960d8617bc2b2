//! Pure builders of what should exist: the ConfigMaps and Secrets Kiln derives, their names,
//! labels and annotations. No client calls here; the controllers apply what these return.

pub mod draft;
pub mod follow;
pub mod job;
pub mod labels;
pub mod protection;
pub mod provider_config;

use sha2::{Digest, Sha256};

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
