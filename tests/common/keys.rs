//! Encryption keys as clients make them: device keys signed by the
//! device, cross-signing keys.

use ruma::serde::{base64::Standard, Base64};
use ruma::signatures::{sign_json, Ed25519KeyPair};
use ruma::CanonicalJsonObject;
use serde_json::{json, Value};

pub fn new_key(version: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).expect("a fresh key")
}

/// A cross-signing key pair: its key ID is `ed25519:<public key>`, so
/// that is the "version" it signs with.
pub fn cross_key() -> Ed25519KeyPair {
    let der = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&der, "probe".to_owned()).expect("a fresh key");
    Ed25519KeyPair::from_der(&der, public(&probe)).expect("the same key")
}

pub fn public(key: &Ed25519KeyPair) -> String {
    Base64::<Standard>::new(key.public_key().to_vec()).encode()
}

/// `object` with `signer`'s signature by `key` (key ID `ed25519:<version>`).
pub fn signed(object: Value, signer: &str, key: &Ed25519KeyPair) -> Value {
    let mut canonical: CanonicalJsonObject = serde_json::from_value(object).expect("canonical JSON");
    sign_json(signer, key, &mut canonical).expect("sign");
    serde_json::to_value(canonical).unwrap()
}

/// A device's identity keys, signed by its own ed25519 key.
pub fn device_keys(user: &str, device: &str, key: &Ed25519KeyPair) -> Value {
    let curve = Base64::<Standard>::new(vec![device.len() as u8; 32]).encode();
    signed(
        json!({
            "user_id": user,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("ed25519:{device}"): public(key),
                format!("curve25519:{device}"): curve,
            },
        }),
        user,
        key,
    )
}
