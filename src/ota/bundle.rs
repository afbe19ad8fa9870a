//! The update bundle: one tar file with a signed manifest and the files it lists.
//!
//! ```text
//! manifest.json      what the bundle holds: versions, target, every file's size and sha256
//! manifest.sig       {"key_id", "signature"}: ed25519 over the exact bytes of manifest.json
//! models/…           ONNX models
//! gallery/…          a gallery directory (`shitud gallery build`)
//! golden/…           images the new pipeline must recognise before it is switched to
//! ```
//!
//! The manifest and its signature come first, so a bundle is checked before
//! a byte of its payload is trusted, and the payload is then checked while it
//! streams: a tampered, truncated or foreign file stops the walk at that file.
//! See docs/OTA.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys;
use crate::error::{Error, Result};

/// Manifest format version.
pub const FORMAT: u32 = 1;
/// The manifest's name in the tar.
pub const MANIFEST: &str = "manifest.json";
/// The signature's name in the tar.
pub const SIGNATURE: &str = "manifest.sig";
/// Largest manifest or signature read (they come before any check).
const MAX_HEAD_BYTES: u64 = 4 << 20;

/// One part of an update and its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// `detector`, `embedder` or `gallery`.
    pub role: String,
    /// Its file (models) or directory (gallery) inside the bundle.
    pub path: String,
    /// Its version: 16 hex digits of the model's sha256, or the gallery's item count and sequence.
    pub version: String,
}

/// One payload file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path inside the bundle.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Hex sha256.
    pub sha256: String,
}

/// An image the new pipeline must recognise as `label` before it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Golden {
    /// The image inside the bundle.
    pub image: String,
    /// The label it must get.
    pub label: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The bundle's version, as the fleet names it.
    pub version: String,
    /// Seconds since the epoch when it was packed.
    pub created_unix: u64,
    /// The oldest shitud that can apply it.
    pub min_daemon_version: String,
    /// CPU architectures it is for (`aarch64`, `x86_64`); empty = any.
    pub targets: Vec<String>,
    /// What it updates.
    pub parts: Vec<Part>,
    /// Every payload file.
    pub files: Vec<FileEntry>,
    /// The health check.
    pub golden: Vec<Golden>,
    /// Whether this bundle may replace a newer version (signed with the
    /// rest of the manifest; absent in older bundles: no).
    #[serde(default)]
    pub allow_downgrade: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct SignatureFile {
    key_id: String,
    signature: String,
}

/// What `pack` puts in a bundle.
#[derive(Debug, Clone, Default)]
pub struct PackSpec {
    /// The bundle's version.
    pub version: String,
    /// A detector model.
    pub detector: Option<PathBuf>,
    /// A recogniser model.
    pub embedder: Option<PathBuf>,
    /// A gallery directory.
    pub gallery: Option<PathBuf>,
    /// Health-check images and their labels.
    pub golden: Vec<(PathBuf, String)>,
    /// Architectures; empty = any.
    pub targets: Vec<String>,
    /// The oldest shitud that can apply it; this build's version if `None`.
    pub min_daemon_version: Option<String>,
    /// Let the bundle replace a newer version.
    pub allow_downgrade: bool,
}

/// A bundle whose signature and files checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its manifest.
    pub manifest: BundleManifest,
    /// The trusted key that signed it.
    pub key_id: String,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Bundle {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Makes a bundle at `out` (signed if `key` is given) and returns its manifest.
pub fn pack(spec: &PackSpec, out: &Path, key: Option<&SigningKey>) -> Result<BundleManifest> {
    if spec.detector.is_none() && spec.embedder.is_none() && spec.gallery.is_none() {
        return Err(bad(
            out,
            "nothing to pack: give a detector, an embedder or a gallery",
        ));
    }
    // (path in bundle, source file)
    let mut sources: Vec<(String, PathBuf)> = Vec::new();
    let mut parts = Vec::new();
    for (role, model) in [("detector", &spec.detector), ("embedder", &spec.embedder)] {
        let Some(model) = model else { continue };
        let name = file_name(model)?;
        let inside = format!("models/{role}-{name}");
        parts.push(Part {
            role: role.into(),
            path: inside.clone(),
            version: crate::engine::sha256_file(model)?[..16].to_string(),
        });
        sources.push((inside, model.clone()));
    }
    if let Some(dir) = &spec.gallery {
        let manifest: crate::search::Manifest = serde_json::from_slice(
            &fs::read(dir.join(crate::search::gallery::MANIFEST)).map_err(|e| Error::io(dir, e))?,
        )
        .map_err(|e| Error::gallery(dir, format!("unreadable manifest: {e}")))?;
        parts.push(Part {
            role: "gallery".into(),
            path: "gallery".into(),
            version: format!("{} items, seq {}", manifest.count, manifest.wal_seq),
        });
        for file in walk_dir(dir)? {
            let rel = file
                .strip_prefix(dir)
                .map_err(|_| bad(dir, "file outside the gallery"))?;
            sources.push((format!("gallery/{}", rel.to_string_lossy()), file.clone()));
        }
    }
    let mut golden = Vec::new();
    for (i, (image, label)) in spec.golden.iter().enumerate() {
        let inside = format!("golden/{i:03}-{}", file_name(image)?);
        golden.push(Golden {
            image: inside.clone(),
            label: label.clone(),
        });
        sources.push((inside, image.clone()));
    }
    let mut files = Vec::new();
    for (inside, src) in &sources {
        let (size, sha256) = hash_file(src)?;
        files.push(FileEntry {
            path: inside.clone(),
            size,
            sha256,
        });
    }
    let manifest = BundleManifest {
        format: FORMAT,
        version: spec.version.clone(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        min_daemon_version: spec
            .min_daemon_version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        targets: spec.targets.clone(),
        parts,
        files,
        golden,
        allow_downgrade: spec.allow_downgrade,
    };
    let manifest_bytes =
        serde_json::to_vec_pretty(&manifest).map_err(|e| bad(out, e.to_string()))?;
    let signature = key.map(|k| signature_bytes(k, &manifest_bytes));
    write_tar(out, &manifest_bytes, signature.as_deref(), |tar| {
        for (inside, src) in &sources {
            let f = File::open(src).map_err(|e| Error::io(src, e))?;
            let len = f.metadata().map_err(|e| Error::io(src, e))?.len();
            append(tar, inside, len, f).map_err(|e| Error::io(out, e))?;
        }
        Ok(())
    })?;
    Ok(manifest)
}

/// Signs the bundle at `path` in place (replacing any earlier signature).
pub fn sign(path: &Path, key: &SigningKey) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = archive
        .entries()
        .map_err(|e| bad(path, format!("not a tar file: {e}")))?;
    let manifest_bytes = read_head(path, &mut entries, MANIFEST)?;
    let signature = signature_bytes(key, &manifest_bytes);
    let tmp = path.with_extension("signing");
    write_tar(&tmp, &manifest_bytes, Some(&signature), |tar| {
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(path, format!("unreadable entry: {e}")))?;
            let name = entry
                .path()
                .map_err(|e| bad(path, e.to_string()))?
                .to_string_lossy()
                .into_owned();
            if name == SIGNATURE {
                continue;
            }
            let size = entry
                .header()
                .size()
                .map_err(|e| bad(path, e.to_string()))?;
            append(tar, &name, size, &mut entry).map_err(|e| Error::io(&tmp, e))?;
        }
        Ok(())
    })?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(keys::key_id(&key.verifying_key()))
}

/// Checks the bundle at `path`: signature by one of `trusted`, target, daemon
/// version, and every file's path, type, size and sha256. Nothing is written.
pub fn verify(path: &Path, trusted: &[VerifyingKey]) -> Result<Verified> {
    walk(path, trusted, None)
}

/// [`verify`], writing the payload under `dest` (which must not exist) as
/// it is checked. On any failure `dest` is removed.
pub fn unpack(path: &Path, trusted: &[VerifyingKey], dest: &Path) -> Result<Verified> {
    if dest.exists() {
        return Err(bad(dest, "already exists; refusing to unpack over it"));
    }
    fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let out = walk(path, trusted, Some(dest));
    if out.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    out
}

fn walk(path: &Path, trusted: &[VerifyingKey], dest: Option<&Path>) -> Result<Verified> {
    if trusted.is_empty() {
        return Err(bad(path, "no trusted keys: add the fleet's public key to ota.trusted_keys (or pass --trust KEY.pub)"));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = archive
        .entries()
        .map_err(|e| bad(path, format!("not a tar file: {e}")))?;
    let manifest_bytes = read_head(path, &mut entries, MANIFEST)?;
    let sig_bytes = read_head(path, &mut entries, SIGNATURE).map_err(|e| match e {
        Error::Bundle { reason, .. } if reason.contains("expected manifest.sig") => bad(
            path,
            "unsigned: sign it with `shitud bundle sign --key KEY`",
        ),
        e => e,
    })?;
    let sig: SignatureFile = serde_json::from_slice(&sig_bytes)
        .map_err(|e| bad(path, format!("{SIGNATURE} is unreadable: {e}")))?;
    let key = trusted
        .iter()
        .find(|k| keys::key_id(k) == sig.key_id)
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "signed by key {}, which is not trusted (trusted: {})",
                    sig.key_id,
                    trusted
                        .iter()
                        .map(keys::key_id)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
    if !keys::verify(key, &manifest_bytes, &sig.signature) {
        return Err(bad(path, format!("the signature of {MANIFEST} does not match key {}: the manifest was changed after signing", sig.key_id)));
    }
    let manifest: BundleManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| bad(path, format!("{MANIFEST} is unreadable: {e}")))?;
    check_compatible(path, &manifest)?;

    let mut expected: BTreeMap<&str, &FileEntry> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    if expected.len() != manifest.files.len() {
        return Err(bad(path, "the manifest lists a file twice"));
    }
    for f in &manifest.files {
        safe_relative(f.path.as_str())
            .map_err(|why| bad(path, format!("manifest entry {:?}: {why}", f.path)))?;
    }
    let mut seen = BTreeSet::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(path, format!("truncated or corrupt: {e}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            return Err(bad(
                path,
                format!(
                    "entry {name:?} is a {}; bundles hold regular files only",
                    kind_name(kind)
                ),
            ));
        }
        safe_relative(&name).map_err(|why| bad(path, format!("entry {name:?}: {why}")))?;
        let Some(want) = expected.remove(name.as_str()) else {
            let why = if seen.contains(&name) {
                "appears twice"
            } else {
                "is not in the manifest"
            };
            return Err(bad(path, format!("entry {name:?} {why}")));
        };
        let size = entry
            .header()
            .size()
            .map_err(|e| bad(path, format!("entry {name:?}: {e}")))?;
        if size != want.size {
            return Err(bad(
                path,
                format!(
                    "entry {name:?} is {size} bytes, the manifest says {}",
                    want.size
                ),
            ));
        }
        let mut sink: Box<dyn Write> = match dest {
            Some(dest) => {
                let target = dest.join(&name);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                Box::new(BufWriter::new(
                    File::create(&target).map_err(|e| Error::io(&target, e))?,
                ))
            }
            None => Box::new(std::io::sink()),
        };
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(path, format!("entry {name:?} is truncated: {e}")))?;
            if n == 0 {
                break;
            }
            got += n as u64;
            hasher.update(&buf[..n]);
            sink.write_all(&buf[..n])
                .map_err(|e| bad(path, format!("writing {name:?}: {e}")))?;
        }
        sink.flush()
            .map_err(|e| bad(path, format!("writing {name:?}: {e}")))?;
        if got != want.size {
            return Err(bad(
                path,
                format!("entry {name:?} is truncated: {got} of {} bytes", want.size),
            ));
        }
        let sha = hex::encode(hasher.finalize());
        if sha != want.sha256 {
            return Err(bad(path, format!("entry {name:?} does not match its sha256 in the manifest: the file was changed or corrupted")));
        }
        seen.insert(name);
    }
    if let Some((missing, _)) = expected.into_iter().next() {
        return Err(bad(
            path,
            format!("ends before {missing:?}, which the manifest lists: truncated"),
        ));
    }
    Ok(Verified {
        manifest,
        key_id: sig.key_id,
    })
}

/// Refuses bundles for another CPU, or that need a newer daemon.
fn check_compatible(path: &Path, m: &BundleManifest) -> Result<()> {
    if m.format != FORMAT {
        return Err(bad(
            path,
            format!(
                "bundle format {} is not supported (this build reads {FORMAT})",
                m.format
            ),
        ));
    }
    let arch = std::env::consts::ARCH;
    if !m.targets.is_empty() && !m.targets.iter().any(|t| t == arch) {
        return Err(bad(
            path,
            format!("made for {}, this box is {arch}", m.targets.join(", ")),
        ));
    }
    let ours = env!("CARGO_PKG_VERSION");
    if version_key(&m.min_daemon_version).is_none() {
        return Err(bad(
            path,
            format!(
                "min_daemon_version {:?} is not a version",
                m.min_daemon_version
            ),
        ));
    }
    if version_key(&m.min_daemon_version) > version_key(ours) {
        return Err(bad(
            path,
            format!(
                "needs shitud {} or newer, this is {ours}",
                m.min_daemon_version
            ),
        ));
    }
    Ok(())
}

fn version_key(v: &str) -> Option<Vec<u64>> {
    v.split('.').map(|p| p.parse().ok()).collect()
}

/// A path inside the bundle must stay inside the folder it is unpacked to.
fn safe_relative(name: &str) -> std::result::Result<(), &'static str> {
    let p = Path::new(name);
    if name.is_empty() || name.contains('\0') || name.contains('\\') {
        return Err("is not a plain relative path");
    }
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return Err("climbs out of the bundle (..)"),
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
            Component::CurDir => return Err("is not a plain relative path"),
        }
    }
    if name == MANIFEST || name == SIGNATURE {
        return Err("repeats a header file");
    }
    Ok(())
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Char | tar::EntryType::Block => "device file",
        tar::EntryType::Fifo => "FIFO",
        tar::EntryType::Directory => "directory",
        _ => "special entry",
    }
}

fn read_head<R: Read>(
    path: &Path,
    entries: &mut tar::Entries<'_, R>,
    want: &str,
) -> Result<Vec<u8>> {
    let mut entry = match entries.next() {
        Some(Ok(e)) => e,
        Some(Err(e)) => return Err(bad(path, format!("truncated or corrupt: {e}"))),
        None => return Err(bad(path, format!("empty: expected {want} first"))),
    };
    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    if name != want || !entry.header().entry_type().is_file() {
        return Err(bad(
            path,
            format!("expected {want} as the next entry, found {name:?}"),
        ));
    }
    let size = entry
        .header()
        .size()
        .map_err(|e| bad(path, e.to_string()))?;
    if size > MAX_HEAD_BYTES {
        return Err(bad(
            path,
            format!("{want} is {size} bytes; at most {MAX_HEAD_BYTES}"),
        ));
    }
    let mut out = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut out)
        .map_err(|e| bad(path, format!("{want} is truncated: {e}")))?;
    Ok(out)
}

fn signature_bytes(key: &SigningKey, manifest: &[u8]) -> Vec<u8> {
    let sig = SignatureFile {
        key_id: keys::key_id(&key.verifying_key()),
        signature: keys::sign(key, manifest),
    };
    serde_json::to_vec_pretty(&sig).unwrap_or_default()
}

fn write_tar(
    out: &Path,
    manifest: &[u8],
    signature: Option<&[u8]>,
    payload: impl FnOnce(&mut tar::Builder<BufWriter<File>>) -> Result<()>,
) -> Result<()> {
    let file = File::create(out).map_err(|e| Error::io(out, e))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    append(&mut tar, MANIFEST, manifest.len() as u64, manifest).map_err(|e| Error::io(out, e))?;
    if let Some(sig) = signature {
        append(&mut tar, SIGNATURE, sig.len() as u64, sig).map_err(|e| Error::io(out, e))?;
    }
    payload(&mut tar)?;
    let mut inner = tar.into_inner().map_err(|e| Error::io(out, e))?;
    inner.flush().map_err(|e| Error::io(out, e))?;
    inner.get_ref().sync_all().map_err(|e| Error::io(out, e))
}

fn append<W: Write, R: Read>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: R,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)
}

fn file_name(p: &Path) -> Result<String> {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| bad(p, "not a file"))
}

fn hash_file(path: &Path) -> Result<(u64, String)> {
    let size = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    Ok((size, crate::engine::sha256_file(path)?))
}

/// Regular files under `dir`, sorted; a link or special file is refused.
fn walk_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for item in fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let item = item.map_err(|e| Error::io(&d, e))?;
            let kind = item.file_type().map_err(|e| Error::io(item.path(), e))?;
            if kind.is_dir() {
                todo.push(item.path());
            } else if kind.is_file() {
                out.push(item.path());
            } else {
                return Err(bad(
                    &item.path(),
                    "not a regular file; a bundle holds regular files only",
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_folder_are_refused() {
        for ok in ["models/rec.onnx", "gallery/snap-1/vector.index", "a"] {
            assert_eq!(safe_relative(ok), Ok(()), "{ok}");
        }
        for bad in [
            "../etc/passwd",
            "models/../../x",
            "/etc/shadow",
            "",
            "./x",
            "a\\b",
            "manifest.json",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("0.10.0") > version_key("0.9.3"));
        assert!(version_key("1.0") < version_key("1.0.1"));
        assert!(version_key("v1").is_none());
    }
}
