//! Applying a bundle, up to the switch: fetch, verify, unpack, build the
//! engines, run the health check. The old version serves all along; nothing
//! here touches it. The caller (the daemon, or `shitud ota apply` with the
//! daemon stopped) then calls [`Store::switch`] and starts serving the
//! [`Staged`] pipeline.

use std::fs;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use super::bundle::{self, BundleManifest};
use super::fetch::{self, Limits, Source};
use super::store::{self, Store, VersionInfo, VERSION_FILE};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;

/// The steps of an update, in order, as reported on `P/ota/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Fetching the bundle.
    Download,
    /// Checking the signature and every file's hash.
    Verify,
    /// Writing the new version's folder.
    Unpack,
    /// Opening the new pipeline: TensorRT engines are built (or found in the engine cache).
    Build,
    /// Running the golden images through the new pipeline.
    Check,
    /// Renaming the `current` link.
    Switch,
    /// Handing the new pipeline to the serving thread.
    Reload,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 7] = [
        Step::Download,
        Step::Verify,
        Step::Unpack,
        Step::Build,
        Step::Check,
        Step::Switch,
        Step::Reload,
    ];

    /// Its name on `P/ota/status` and in `SHITU_FAULT_OTA_KILL_AT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Download => "downloading",
            Step::Verify => "verifying",
            Step::Unpack => "unpacking",
            Step::Build => "building",
            Step::Check => "checking",
            Step::Switch => "switching",
            Step::Reload => "reloading",
        }
    }
}

/// Fault injection for the crash tests: with this set to a step's name, the
/// process kills itself with SIGKILL as that step begins, exactly as a power
/// cut or `kill -9` at that moment would.
pub const KILL_AT_ENV: &str = "SHITU_FAULT_OTA_KILL_AT";

/// Called as each step begins, and on long steps with news.
pub type Progress<'a> = &'a mut dyn FnMut(Step, &str);

/// Reports `step` and honours [`KILL_AT_ENV`].
pub fn enter(step: Step, progress: Progress<'_>, what: &str) {
    if std::env::var(KILL_AT_ENV).is_ok_and(|v| v == step.as_str()) {
        tracing::error!(
            "{KILL_AT_ENV}={}: killing this process (fault injection)",
            step.as_str()
        );
        // SAFETY: kill(2) on our own pid.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    progress(step, what);
}

/// A version unpacked, built and checked, ready to switch to.
pub struct Staged {
    /// Its `version.json`.
    pub info: VersionInfo,
    /// The settings that open it.
    pub settings: Settings,
    /// Its pipeline, open (engines built) and healthy.
    pub pipeline: Pipeline,
}

/// What an update needs to know.
pub struct Update<'a> {
    /// The versions on disk.
    pub store: &'a Store,
    /// The config's own settings (what serves when no version is current).
    pub base: &'a Settings,
    /// Keys whose bundles are accepted.
    pub trusted: &'a [VerifyingKey],
    /// Download limits.
    pub limits: Limits,
}

impl Update<'_> {
    /// Runs every step up to the switch. On failure nothing is left behind
    /// but a partial download (kept so a retry resumes it).
    pub fn stage(&self, source: &Source, progress: Progress<'_>) -> Result<Staged> {
        enter(Step::Download, progress, &source.describe());
        let (file, downloaded) = match source {
            Source::Path(p) => {
                if !p.is_file() {
                    return Err(Error::Bundle {
                        path: p.clone(),
                        reason: "no such file".into(),
                    });
                }
                (p.clone(), false)
            }
            Source::Url(url) => {
                let name = format!(
                    "download-{}.tar",
                    &hex::encode(Sha256::digest(url.as_bytes()))[..16]
                );
                let dir = match &self.base.ota.download_dir {
                    d if d.as_os_str().is_empty() => self.store.staging(),
                    d => d.clone(),
                };
                fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                let dest = dir.join(name);
                let mut report = |got: u64, total: Option<u64>| {
                    let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                    progress(Step::Download, &format!("{got}{of} bytes"));
                };
                (fetch::download(url, &dest, self.limits, &mut report)?, true)
            }
        };
        let out = self.stage_file(&file, progress);
        if downloaded && !matches!(&out, Err(Error::Io { .. })) {
            // Verified and unpacked, or refused: either way the download is done with.
            let _ = fs::remove_file(&file);
        }
        out
    }

    fn stage_file(&self, file: &Path, progress: Progress<'_>) -> Result<Staged> {
        enter(Step::Verify, progress, "signature and file hashes");
        let verified = bundle::verify(file, self.trusted)?;
        let m = verified.manifest;
        check_version_name(file, &m.version)?;
        if let Some(current) = self.store.current() {
            if current == m.version {
                return Err(Error::Bundle {
                    path: file.to_path_buf(),
                    reason: format!("version {} is already current", m.version),
                });
            }
            if super::version::compare(&m.version, &current).is_le() && !m.allow_downgrade {
                return Err(Error::Bundle {
                    path: file.to_path_buf(),
                    reason: format!(
                        "version {} is not newer than the current version {current} (docs/OTA.md, \"Versions\"), and its manifest does not allow a downgrade: \
                         `shitud ota rollback` goes back to the previous version; to go further back, pack the bundle with `shitud bundle pack --allow-downgrade`",
                        m.version
                    ),
                });
            }
            if m.allow_downgrade && super::version::compare(&m.version, &current).is_le() {
                tracing::warn!(version = %m.version, current = %current, "downgrading: the bundle's signed manifest allows it");
            }
        }

        enter(Step::Unpack, progress, &format!("version {}", m.version));
        let partial = self.store.staging().join(format!("{}.partial", m.version));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        }
        // Checked again while unpacking: the file may have changed since the first pass.
        let unpacked = bundle::unpack(file, self.trusted, &partial);
        let info = unpacked.and_then(|v| self.complete(&partial, &v.manifest));
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                let _ = fs::remove_dir_all(&partial);
                return Err(e);
            }
        };
        self.store.commit(&partial, &m.version)?;

        let dir = self.store.version_dir(&m.version);
        let built = (|| {
            let settings = self.store.settings_for(self.base, &m.version)?;
            enter(
                Step::Build,
                progress,
                "opening the new pipeline (TensorRT engines are built now if the cache lacks them)",
            );
            let mut pipeline = Pipeline::open_writable(&settings)?;
            enter(
                Step::Check,
                progress,
                &format!("{} golden images", info.golden.len()),
            );
            health_check(&mut pipeline, &dir, &info)?;
            Ok(Staged {
                info: info.clone(),
                settings,
                pipeline,
            })
        })();
        if built.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        built
    }

    /// Fills in what the bundle did not carry from the version it replaces,
    /// and writes `version.json`: each version folder stands alone, so a
    /// rollback needs nothing else.
    fn complete(&self, partial: &Path, m: &BundleManifest) -> Result<VersionInfo> {
        let (from_settings, from) = self.store.settings_current(self.base)?;
        let part = |role: &str| {
            m.parts
                .iter()
                .find(|p| p.role == role)
                .map(|p| p.path.clone())
        };
        let model = |role: &str, src: &Path| -> Result<String> {
            if let Some(p) = part(role) {
                return Ok(p);
            }
            let name = src
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model.onnx");
            // Carried over from a version that already named it `<role>-…`: keep the name.
            let rel = if name.starts_with(&format!("{role}-")) {
                format!("models/{name}")
            } else {
                format!("models/{role}-{name}")
            };
            let dest = partial.join(&rel);
            fs::create_dir_all(dest.parent().unwrap_or(partial))
                .map_err(|e| Error::io(partial, e))?;
            // Models are never written in place, so a hard link is as good as a copy.
            if fs::hard_link(src, &dest).is_err() {
                fs::copy(src, &dest).map_err(|e| Error::io(src, e))?;
            }
            Ok(rel)
        };
        let detector = model("detector", &from_settings.detector.model)?;
        let embedder = model("embedder", &from_settings.embedder.model)?;
        let gallery = match part("gallery") {
            Some(p) => p,
            None => {
                // Copied, not linked: the live gallery is written in place.
                copy_tree(&from_settings.search.index, &partial.join("gallery"))?;
                "gallery".to_string()
            }
        };
        let info = VersionInfo {
            version: m.version.clone(),
            detector,
            embedder,
            gallery,
            golden: m
                .golden
                .iter()
                .map(|g| (g.image.clone(), g.label.clone()))
                .collect(),
            staged_unix: store::now(),
            from: from.unwrap_or_default(),
        };
        let manifest_text = serde_json::to_vec_pretty(m)
            .map_err(|e| Error::json("writing the gallery manifest", e))?;
        fs::write(partial.join(bundle::MANIFEST), manifest_text)
            .map_err(|e| Error::io(partial, e))?;
        let text = serde_json::to_vec_pretty(&info)
            .map_err(|e| Error::json("writing the version info", e))?;
        store::write_synced(&partial.join(VERSION_FILE), &text)?;
        store::sync_tree(partial)?;
        Ok(info)
    }
}

/// The new pipeline must give each golden image its label (as any result's
/// best match). Without golden images the check is that the pipeline opened.
pub fn health_check(pipeline: &mut Pipeline, dir: &Path, info: &VersionInfo) -> Result<()> {
    if info.golden.is_empty() {
        tracing::warn!(version = %info.version, "the bundle has no golden images: the health check only opened the pipeline");
    }
    for (image, label) in &info.golden {
        let path = dir.join(image);
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let frame = crate::input::decode(image.as_str(), &bytes, &pipeline.settings().input)?;
        let r = pipeline.recognize(std::slice::from_ref(&frame))?;
        let got: Vec<&str> = r
            .iter()
            .flat_map(|x| x.results.iter().map(|m| m.rec_docs.as_str()))
            .collect();
        if !got.contains(&label.as_str()) {
            return Err(Error::Bundle {
                path: path.clone(),
                reason: format!("health check failed: golden image {image} should be recognised as {label:?}, the new pipeline says {got:?}"),
            });
        }
    }
    Ok(())
}

fn check_version_name(file: &Path, v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v != "."
        && v != ".."
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if ok {
        Ok(())
    } else {
        Err(Error::Bundle {
            path: file.to_path_buf(),
            reason: format!(
                "version {v:?} cannot name a folder: use letters, digits, '.', '-', '_', '+'"
            ),
        })
    }
}

/// Copies the regular files under `src` into `dest` (created).
fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    for e in fs::read_dir(src).map_err(|e| Error::io(src, e))?.flatten() {
        let (from, to) = (e.path(), dest.join(e.file_name()));
        let t = e.file_type().map_err(|err| Error::io(&from, err))?;
        if t.is_dir() {
            copy_tree(&from, &to)?;
        } else if t.is_file() {
            fs::copy(&from, &to).map_err(|err| Error::io(&from, err))?;
        }
    }
    Ok(())
}
