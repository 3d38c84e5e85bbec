//! Helpers shared by the integration tests.

use base64::Engine;

/// Little-endian `f32` values from base64 (how the golden fixtures store tensors).
pub fn f32s(b64: &str) -> Vec<f32> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
