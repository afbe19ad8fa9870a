//! The OTA bundle reader. A real bundle is refused before anything else
//! unless its manifest is signed, so the fuzzer's bytes are made into a
//! bundle this target signs with its own key: the first part is the
//! manifest (JSON, any bytes), the rest follows the manifest and its
//! signature in the tar as raw archive bytes. Every fourth input is also
//! read as a whole file, unsigned. Each must be verified or refused with a
//! reason, never panic; nothing is written outside the target's folder.
//!
//!   cargo +nightly fuzz run ota_bundle -- -runs=1000000
#![no_main]

use std::io::Write;

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use shitu_edge::ota::bundle::{unpack, verify, MANIFEST, SIGNATURE};
use shitu_edge::ota::keys;

fn header(name: &str, size: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let _ = h.set_path(name);
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let trusted = [key.verifying_key()];
    // The first byte is the manifest's length in units of 4 bytes.
    let cut = data.first().map_or(0, |&b| usize::from(b) * 4);
    let body = data.get(1..).unwrap_or_default();
    let (manifest, rest) = body.split_at(cut.min(body.len()));
    let sig = serde_json::json!({"key_id": keys::key_id(&key.verifying_key()), "signature": keys::sign(&key, manifest)});
    let sig = serde_json::to_vec(&sig).unwrap_or_default();
    let mut bundle = Vec::new();
    for (name, body) in [(MANIFEST, manifest), (SIGNATURE, &sig[..])] {
        bundle.extend_from_slice(header(name, body.len()).as_bytes());
        bundle.extend_from_slice(body);
        bundle.resize(bundle.len().div_ceil(512) * 512, 0);
    }
    bundle.extend_from_slice(rest);
    let dir = std::env::temp_dir().join(format!("shitu-fuzz-ota-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("bundle.tar");
    let Ok(mut f) = std::fs::File::create(&path) else {
        return;
    };
    if f.write_all(&bundle).is_err() {
        return;
    }
    drop(f);
    let dest = dir.join("out");
    match unpack(&path, &trusted, &dest) {
        Ok(v) => assert!(v
            .manifest
            .files
            .iter()
            .all(|f| dest.join(&f.path).starts_with(&dest))),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(!dest.exists(), "a refused bundle leaves nothing behind");
        }
    }
    if data.len() % 4 == 0 && std::fs::write(&path, data).is_ok() {
        if let Err(e) = verify(&path, &trusted) {
            assert!(!e.to_string().is_empty());
        }
    }
});
