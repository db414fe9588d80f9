//! Idempotency keys of creating calls (ADR 0005): the key a client sent and the fingerprint of
//! the request it came with. Each service stores them in its own table, in the transaction that
//! creates the resource.

/// A key with the SHA-256 (hex) of the canonical request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

impl Idempotency {
    /// Fingerprints `request` (a validated domain value, serialised canonically) under `key`.
    pub fn new(key: String, request: &impl serde::Serialize) -> Self {
        let bytes = serde_json::to_vec(request).expect("domain values serialise");
        Self {
            key,
            request_hash: sha256_hex(&bytes),
        }
    }
}

/// SHA-256 of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_request_same_fingerprint_other_request_other() {
        let a = Idempotency::new("k".into(), &("chai", 4900));
        assert_eq!(a, Idempotency::new("k".into(), &("chai", 4900)));
        assert_ne!(
            a.request_hash,
            Idempotency::new("k".into(), &("chai", 5000)).request_hash
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
