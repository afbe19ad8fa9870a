//! ed25519 keys for signing update bundles.
//!
//! A secret key file holds the 32-byte seed, base64, under a one-line
//! header; a public key is 32 bytes, base64, on one line (so it can be
//! pasted into `ota.trusted_keys`). A key is named by its id: the first 16
//! hex digits of the sha256 of the public key.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const SECRET_HEADER: &str = "shitu-edge ed25519 secret key";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The id of a public key: 16 hex digits of its sha256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Makes a new key pair; writes the secret to `secret` (mode 0600, never
/// overwritten) and the public key beside it as `<secret>.pub`.
pub fn generate(secret: &Path) -> Result<VerifyingKey> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| Error::Bundle {
        path: secret.to_path_buf(),
        reason: format!("no randomness for a key: {e}"),
    })?;
    let key = SigningKey::from_bytes(&seed);
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(secret)
        .map_err(|e| Error::io(secret, e))?;
    writeln!(f, "{SECRET_HEADER}\n{}", b64().encode(seed)).map_err(|e| Error::io(secret, e))?;
    let public = key.verifying_key();
    let pub_path = public_path(secret);
    std::fs::write(&pub_path, format!("{}\n", b64().encode(public.as_bytes())))
        .map_err(|e| Error::io(&pub_path, e))?;
    Ok(public)
}

/// Where [`generate`] writes the public half of `secret`.
pub fn public_path(secret: &Path) -> std::path::PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// Reads a secret key file written by [`generate`].
pub fn read_secret(path: &Path) -> Result<SigningKey> {
    let bad = |reason: &str| Error::Bundle {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    if lines.next() != Some(SECRET_HEADER) {
        return Err(bad(
            "not a shitu-edge secret key (made by `shitud bundle keygen`)",
        ));
    }
    let seed = lines
        .next()
        .and_then(|l| b64().decode(l.trim()).ok())
        .ok_or_else(|| bad("the key is not base64"))?;
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| bad("the key is not 32 bytes"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A trusted public key: base64 text, or the path of a `.pub` file holding it.
pub fn read_public(spec: &str) -> Result<VerifyingKey> {
    let (text, origin) = if Path::new(spec).is_file() {
        (
            std::fs::read_to_string(spec).map_err(|e| Error::io(spec, e))?,
            format!("key file {spec}"),
        )
    } else {
        (spec.to_string(), format!("key {spec:?}"))
    };
    let bad = |reason: &str| {
        Error::Ota(format!("{origin}: {reason} (expected 32 bytes of base64, as `shitud bundle keygen` writes to KEY.pub)"))
    };
    let bytes = b64()
        .decode(text.trim())
        .map_err(|_| bad("not base64, and no such file"))?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("not 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid ed25519 public key"))
}

/// Signs `message`; returns the signature, base64.
pub fn sign(key: &SigningKey, message: &[u8]) -> String {
    b64().encode(key.sign(message).to_bytes())
}

/// Checks a base64 `signature` of `message` under `key` (strict: no malleable signatures).
pub fn verify(key: &VerifyingKey, message: &[u8], signature: &str) -> bool {
    let Ok(bytes) = b64().decode(signature.trim()) else {
        return false;
    };
    let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
        return false;
    };
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_signatures_check() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("fleet.key");
        let public = generate(&secret).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            generate(&secret).is_err(),
            "an existing key is never overwritten"
        );
        let key = read_secret(&secret).unwrap();
        assert_eq!(key.verifying_key(), public);
        let pub_file = public_path(&secret);
        let from_file = read_public(pub_file.to_str().unwrap()).unwrap();
        let from_text = read_public(std::fs::read_to_string(&pub_file).unwrap().trim()).unwrap();
        assert_eq!((from_file, from_text), (public, public));
        assert_eq!(key_id(&public).len(), 16);

        let sig = sign(&key, b"manifest");
        assert!(verify(&public, b"manifest", &sig));
        assert!(!verify(&public, b"manifest!", &sig));
        let other = SigningKey::from_bytes(&[9u8; 32]);
        assert!(!verify(&other.verifying_key(), b"manifest", &sig));
        assert!(!verify(&public, b"manifest", "not base64"));
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("k");
        std::fs::write(&f, "hello\n").unwrap();
        assert!(read_secret(&f)
            .unwrap_err()
            .to_string()
            .contains("not a shitu-edge secret key"));
        let msg = read_public("AAAA").unwrap_err().to_string();
        assert!(
            msg.contains("not 32 bytes") && msg.contains("keygen"),
            "{msg}"
        );
        assert!(read_public("/no/such.pub")
            .unwrap_err()
            .to_string()
            .contains("no such file"));
    }
}
