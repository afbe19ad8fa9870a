//! TensorRT engines, built once and kept on disk between starts.
//!
//! Building a TensorRT engine takes minutes on a Jetson; doing it at every
//! start, or failing because the folder is not writable, is what users of
//! other edge stacks complain about most. Each engine lives in its own
//! folder, named by a hash of everything that makes an engine valid (the
//! [`CacheKey`]), and `manifest.json` records what each folder holds, whether
//! its build finished, and when it was last used.
//!
//! ONNX Runtime's TensorRT provider writes the engine files into the folder
//! the key names; this module decides which folder that is, knows which
//! folders are complete, and removes the ones no longer needed.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::gpu::Platform;
use crate::error::{Error, Result};

const MANIFEST: &str = "manifest.json";
const LOCK: &str = ".lock";
const TIMING: &str = "timing";
const MANIFEST_VERSION: u32 = 1;

/// The batch sizes a TensorRT optimisation profile covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchProfile {
    /// Smallest batch.
    pub min: usize,
    /// The batch TensorRT tunes its kernels for.
    pub opt: usize,
    /// Largest batch.
    pub max: usize,
}

impl fmt::Display for BatchProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.min, self.opt, self.max)
    }
}

/// Everything a built engine depends on. Two keys with the same
/// [`id`](CacheKey::id) can share an engine; any difference needs a rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// sha256 of the ONNX file.
    pub model_sha256: String,
    /// `fp16` or `fp32`.
    pub precision: String,
    /// The dynamic-batch profile.
    pub profile: BatchProfile,
    /// GPU name as the driver reports it.
    pub gpu: String,
    /// Compute capability, e.g. `8.7`.
    pub compute_capability: String,
    /// TensorRT release.
    pub tensorrt: String,
}

impl CacheKey {
    /// The key for `model_sha256` built with these options on `platform`.
    pub fn new(
        model_sha256: &str,
        fp16: bool,
        profile: BatchProfile,
        platform: &Platform,
    ) -> CacheKey {
        let (maj, min) = platform.compute_capability;
        CacheKey {
            model_sha256: model_sha256.to_string(),
            precision: if fp16 { "fp16" } else { "fp32" }.to_string(),
            profile,
            gpu: platform.gpu.clone(),
            compute_capability: format!("{maj}.{min}"),
            tensorrt: platform.tensorrt.clone().unwrap_or_else(|| "none".into()),
        }
    }

    /// A short, stable name for the folder: 16 hex digits of a sha256 over every field.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.model_sha256.as_str(),
            &self.precision,
            &self.profile.to_string(),
            &self.gpu,
            &self.compute_capability,
            &self.tensorrt,
        ] {
            // Length-prefixed so that no two different keys hash the same bytes.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(&h.finalize()[..8])
    }

    /// Whether this key was made for the GPU and TensorRT of `platform`.
    pub fn fits(&self, platform: &Platform) -> bool {
        let (maj, min) = platform.compute_capability;
        self.gpu == platform.gpu
            && self.compute_capability == format!("{maj}.{min}")
            && self.tensorrt == platform.tensorrt.as_deref().unwrap_or("none")
    }
}

/// Whether an entry's build finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A build started and has not finished (or the process died during it).
    Building,
    /// The engine is complete and can be used.
    Ready,
}

/// One engine folder, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Folder name, [`CacheKey::id`].
    pub id: String,
    /// Which model this is for ("detector", "embedder").
    pub role: String,
    /// The model file the engine was built from.
    pub model: PathBuf,
    /// What the engine was built for.
    pub key: CacheKey,
    /// Build state.
    pub state: State,
    /// Seconds since the epoch when the build started.
    pub created: u64,
    /// Seconds since the epoch when it was last opened.
    pub last_used: u64,
    /// How long the build took, in seconds (0 while building).
    pub build_seconds: f64,
    /// Bytes on disk.
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// Every engine folder the cache knows of.
    pub entries: Vec<Entry>,
}

/// What the cache holds for a key.
#[derive(Debug, Clone, PartialEq)]
// One lookup per model at start-up: the size of the variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Lookup {
    /// A finished engine; use it as it is.
    Ready(Entry),
    /// Nothing finished for this key: build it.
    Missing,
}

/// Why an entry is kept or would be pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Matches a model of the current config on this GPU and TensorRT.
    Current,
    /// Built for another GPU or TensorRT release.
    OtherPlatform,
    /// Built from a model the config no longer names (replaced by an update).
    OtherModel,
    /// Its build never finished.
    Unfinished,
    /// A folder the manifest does not know.
    Orphan,
}

impl Verdict {
    /// Whether `prune` removes entries with this verdict.
    pub fn is_stale(&self) -> bool {
        !matches!(self, Verdict::Current)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Current => "current",
            Verdict::OtherPlatform => "stale: other GPU or TensorRT",
            Verdict::OtherModel => "stale: model no longer configured",
            Verdict::Unfinished => "stale: build did not finish",
            Verdict::Orphan => "stale: not in the manifest",
        })
    }
}

/// One engine folder and what `prune` thinks of it.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The folder name.
    pub id: String,
    /// Its manifest entry; `None` for an orphan folder.
    pub entry: Option<Entry>,
    /// Keep or remove, and why.
    pub verdict: Verdict,
}

/// The cache folder.
#[derive(Debug, Clone)]
pub struct EngineCache {
    dir: PathBuf,
}

impl EngineCache {
    /// Opens (creating it if needed) the cache at `dir` and checks that it is
    /// writable, so a read-only or wrongly-owned folder is reported at
    /// start-up in plain words instead of as a TensorRT failure minutes later.
    pub fn open(dir: &Path) -> Result<EngineCache> {
        let advice = "set engine.engine_cache_dir to a writable folder; under systemd the unit's StateDirectory= (/var/lib/shitu-edge) is writable by the service user";
        fs::create_dir_all(dir).map_err(|e| {
            Error::engine_cache(dir, format!("cannot create the folder: {e}; {advice}"))
        })?;
        let probe = dir.join(format!(".write-test-{}", std::process::id()));
        let wrote = File::create(&probe).and_then(|mut f| f.write_all(b"ok"));
        let _ = fs::remove_file(&probe);
        wrote.map_err(|e| {
            Error::engine_cache(dir, format!("the folder is not writable: {e}; {advice}"))
        })?;
        Ok(EngineCache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache at `dir` as it is, for reading (`shitud engines list`): not
    /// created, not checked for write access. A missing folder is an empty cache.
    pub fn existing(dir: &Path) -> EngineCache {
        EngineCache {
            dir: dir.to_path_buf(),
        }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder the engine for `key` lives in.
    pub fn entry_dir(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.id())
    }

    /// TensorRT's timing cache, shared by every engine of one platform
    /// (timings depend on the GPU and TensorRT only), so building the second
    /// model reuses what the first one measured.
    pub fn timing_dir(&self, key: &CacheKey) -> Result<PathBuf> {
        let mut h = Sha256::new();
        h.update(format!(
            "{}\0{}\0{}",
            key.gpu, key.compute_capability, key.tensorrt
        ));
        let dir = self.dir.join(TIMING).join(hex::encode(&h.finalize()[..8]));
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(dir)
    }

    /// Reads the manifest; a missing one is an empty cache. A corrupt one is
    /// also treated as empty (every engine is rebuilt) rather than stopping
    /// the daemon: the cache only ever saves time.
    pub fn manifest(&self) -> Manifest {
        let path = self.dir.join(MANIFEST);
        match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) if m.version == MANIFEST_VERSION => m,
                Ok(m) => {
                    tracing::warn!(path = %path.display(), version = m.version, "engine cache manifest has an unknown version; engines will be rebuilt");
                    Manifest {
                        version: MANIFEST_VERSION,
                        entries: Vec::new(),
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "engine cache manifest is unreadable ({e}); engines will be rebuilt");
                    Manifest {
                        version: MANIFEST_VERSION,
                        entries: Vec::new(),
                    }
                }
            },
            Err(_) => Manifest {
                version: MANIFEST_VERSION,
                entries: Vec::new(),
            },
        }
    }

    /// What the cache holds for `key`. A `Ready` entry whose folder has gone
    /// (cleaned by hand) counts as missing.
    pub fn lookup(&self, key: &CacheKey) -> Lookup {
        let id = key.id();
        match self.manifest().entries.into_iter().find(|e| e.id == id) {
            Some(e) if e.state == State::Ready && dir_size(&self.dir.join(&id)) > 0 => {
                Lookup::Ready(e)
            }
            _ => Lookup::Missing,
        }
    }

    /// Records that a build of `key` starts, and returns an empty folder for it.
    pub fn begin(&self, key: &CacheKey, role: &str, model: &Path) -> Result<PathBuf> {
        let dir = self.entry_dir(key);
        // Whatever a crashed build left is not trusted.
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let now = unix_now();
        self.update(|m| {
            m.entries.retain(|e| e.id != key.id());
            m.entries.push(Entry {
                id: key.id(),
                role: role.to_string(),
                model: model.to_path_buf(),
                key: key.clone(),
                state: State::Building,
                created: now,
                last_used: now,
                build_seconds: 0.0,
                bytes: 0,
            });
        })?;
        Ok(dir)
    }

    /// Records that the build of `key` finished after `took`.
    pub fn finish(&self, key: &CacheKey, took: Duration) -> Result<()> {
        let id = key.id();
        let bytes = dir_size(&self.dir.join(&id));
        self.update(|m| {
            if let Some(e) = m.entries.iter_mut().find(|e| e.id == id) {
                e.state = State::Ready;
                e.build_seconds = took.as_secs_f64();
                e.bytes = bytes;
                e.last_used = unix_now();
            }
        })
    }

    /// Records that the engine for `key` was opened now.
    pub fn touch(&self, key: &CacheKey) -> Result<()> {
        let id = key.id();
        self.update(|m| {
            if let Some(e) = m.entries.iter_mut().find(|e| e.id == id) {
                e.last_used = unix_now();
            }
        })
    }

    /// Every engine folder, judged against the models the config names
    /// (`current`, their sha256s) and this box's platform. `platform` is
    /// `None` where no GPU can be probed; entries are then judged by model only.
    pub fn judge(
        &self,
        current_models: &BTreeSet<String>,
        platform: Option<&Platform>,
    ) -> Result<Vec<Judged>> {
        let manifest = self.manifest();
        let mut out: Vec<Judged> = manifest
            .entries
            .iter()
            .map(|e| {
                let verdict = if e.state != State::Ready {
                    Verdict::Unfinished
                } else if !current_models.contains(&e.key.model_sha256) {
                    Verdict::OtherModel
                } else if platform.is_some_and(|p| !e.key.fits(p)) {
                    Verdict::OtherPlatform
                } else {
                    Verdict::Current
                };
                Judged {
                    id: e.id.clone(),
                    entry: Some(e.clone()),
                    verdict,
                }
            })
            .collect();
        let known: BTreeSet<&str> = manifest.entries.iter().map(|e| e.id.as_str()).collect();
        let listing = match fs::read_dir(&self.dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let mut orphans = Vec::new();
        for item in listing.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if item.path().is_dir() && name != TIMING && !known.contains(name.as_str()) {
                orphans.push(Judged {
                    id: name,
                    entry: None,
                    verdict: Verdict::Orphan,
                });
            }
        }
        orphans.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(orphans);
        Ok(out)
    }

    /// Removes every stale folder (see [`Verdict`]) and its manifest entry;
    /// returns what was removed. With `dry_run` nothing is touched.
    pub fn prune(
        &self,
        current_models: &BTreeSet<String>,
        platform: Option<&Platform>,
        dry_run: bool,
    ) -> Result<Vec<Judged>> {
        let stale = |c: &EngineCache| -> Result<Vec<Judged>> {
            Ok(c.judge(current_models, platform)?
                .into_iter()
                .filter(|j| j.verdict.is_stale())
                .collect())
        };
        if dry_run {
            return stale(self);
        }
        let _lock = self.lock()?;
        let stale = stale(self)?;
        for j in &stale {
            let dir = self.dir.join(&j.id);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
        }
        let gone: BTreeSet<&str> = stale.iter().map(|j| j.id.as_str()).collect();
        let mut m = self.manifest();
        m.entries.retain(|e| !gone.contains(e.id.as_str()));
        self.write(&m)?;
        Ok(stale)
    }

    /// Read-modify-write of the manifest under the cache's lock, so that
    /// `shitud engines build` and a running daemon do not lose each other's entries.
    fn update(&self, change: impl FnOnce(&mut Manifest)) -> Result<()> {
        let _lock = self.lock()?;
        let mut m = self.manifest();
        change(&mut m);
        self.write(&m)
    }

    fn write(&self, m: &Manifest) -> Result<()> {
        let path = self.dir.join(MANIFEST);
        let tmp = self
            .dir
            .join(format!("{MANIFEST}.tmp-{}", std::process::id()));
        let mut m = m.clone();
        m.version = MANIFEST_VERSION;
        let text =
            serde_json::to_vec_pretty(&m).map_err(|e| Error::engine_cache(&path, e.to_string()))?;
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        // Renamed in one step: a crash leaves the old manifest or the new one, never half of one.
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    fn lock(&self) -> Result<FileLock> {
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(&path, std::io::Error::last_os_error()));
        }
        Ok(FileLock(file))
    }
}

/// Holds the cache's `flock` until dropped.
struct FileLock(#[allow(dead_code)] File);

/// Runs `build`, calling `tick` with the time so far every `every` until it
/// returns, so that a multi-minute TensorRT build is visibly alive in the journal.
pub fn with_progress<T>(
    every: Duration,
    tick: impl Fn(Duration) + Send + 'static,
    build: impl FnOnce() -> T,
) -> T {
    let (done, wait) = mpsc::channel::<()>();
    let started = Instant::now();
    let ticker = std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(every) {
            tick(started.elapsed());
        }
    });
    let out = build();
    drop(done);
    let _ = ticker.join();
    out
}

/// `2m10s`, `45s`.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(items) = fs::read_dir(dir) else {
        return 0;
    };
    items
        .flatten()
        .map(|i| match i.metadata() {
            Ok(m) if m.is_dir() => dir_size(&i.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(gpu: &str, trt: &str) -> Platform {
        Platform {
            gpu: gpu.into(),
            compute_capability: (8, 7),
            tensorrt: Some(trt.into()),
        }
    }

    fn key(sha: &str, p: &Platform) -> CacheKey {
        CacheKey::new(
            sha,
            true,
            BatchProfile {
                min: 1,
                opt: 4,
                max: 8,
            },
            p,
        )
    }

    fn built(cache: &EngineCache, k: &CacheKey, role: &str) {
        let dir = cache.begin(k, role, Path::new("m.onnx")).unwrap();
        fs::write(dir.join("engine.bin"), b"engine bytes").unwrap();
        cache.finish(k, Duration::from_secs(3)).unwrap();
    }

    #[test]
    fn every_field_of_the_key_changes_its_id() {
        let orin = platform("Orin", "10.3.0");
        let base = key("aa", &orin);
        let mut variants = vec![
            key("ab", &orin),
            CacheKey::new("aa", false, base.profile, &orin),
            CacheKey::new(
                "aa",
                true,
                BatchProfile {
                    min: 1,
                    opt: 8,
                    max: 8,
                },
                &orin,
            ),
            key("aa", &platform("Xavier", "10.3.0")),
            key("aa", &platform("Orin", "8.6.2")),
        ];
        let mut other_cc = orin.clone();
        other_cc.compute_capability = (7, 2);
        variants.push(key("aa", &other_cc));
        let ids: BTreeSet<String> = variants
            .iter()
            .map(CacheKey::id)
            .chain([base.id()])
            .collect();
        assert_eq!(ids.len(), variants.len() + 1, "{ids:?}");
        assert_eq!(base.id(), key("aa", &orin).id(), "ids are stable");
        assert_eq!(base.id().len(), 16);
    }

    #[test]
    fn a_finished_build_is_found_and_an_unfinished_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::open(tmp.path()).unwrap();
        let orin = platform("Orin", "10.3.0");
        let k = key("aa", &orin);
        assert_eq!(cache.lookup(&k), Lookup::Missing);
        let dir = cache.begin(&k, "embedder", Path::new("rec.onnx")).unwrap();
        fs::write(dir.join("engine.bin"), vec![0u8; 100]).unwrap();
        assert_eq!(
            cache.lookup(&k),
            Lookup::Missing,
            "a build in progress is not usable"
        );
        cache.finish(&k, Duration::from_secs(130)).unwrap();
        let Lookup::Ready(e) = cache.lookup(&k) else {
            panic!("finished entry not found")
        };
        assert_eq!(
            (e.role.as_str(), e.bytes, e.build_seconds),
            ("embedder", 100, 130.0)
        );
        // Another platform is a different key: a stale engine is never reused.
        assert_eq!(
            cache.lookup(&key("aa", &platform("Orin", "10.4.0"))),
            Lookup::Missing
        );
        // An emptied folder is not trusted.
        fs::remove_file(dir.join("engine.bin")).unwrap();
        assert_eq!(cache.lookup(&k), Lookup::Missing);
    }

    #[test]
    fn begin_wipes_what_a_crashed_build_left() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::open(tmp.path()).unwrap();
        let k = key("aa", &platform("Orin", "10.3.0"));
        let dir = cache.begin(&k, "detector", Path::new("det.onnx")).unwrap();
        fs::write(dir.join("half.engine"), b"x").unwrap();
        let dir = cache.begin(&k, "detector", Path::new("det.onnx")).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        assert_eq!(cache.manifest().entries.len(), 1, "one entry per key");
    }

    #[test]
    fn prune_removes_other_platforms_old_models_unfinished_and_orphans() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::open(tmp.path()).unwrap();
        let orin = platform("Orin", "10.3.0");
        let keep_det = key("det1", &orin);
        let keep_rec = key("rec1", &orin);
        let old_trt = key("rec1", &platform("Orin", "8.6.2"));
        let old_model = key("rec0", &orin);
        let unfinished = key("det1", &platform("Orin", "10.4.0"));
        for (k, role) in [
            (&keep_det, "detector"),
            (&keep_rec, "embedder"),
            (&old_trt, "embedder"),
            (&old_model, "embedder"),
        ] {
            built(&cache, k, role);
        }
        cache
            .begin(&unfinished, "detector", Path::new("det.onnx"))
            .unwrap();
        fs::create_dir_all(tmp.path().join("0123456789abcdef")).unwrap();
        cache.timing_dir(&keep_det).unwrap();

        let current: BTreeSet<String> = ["det1".to_string(), "rec1".to_string()].into();
        let verdicts: Vec<(String, Verdict)> = cache
            .judge(&current, Some(&orin))
            .unwrap()
            .into_iter()
            .map(|j| (j.id, j.verdict))
            .collect();
        let of = |k: &CacheKey| {
            verdicts
                .iter()
                .find(|(id, _)| *id == k.id())
                .map(|(_, v)| v.clone())
        };
        assert_eq!(of(&keep_det), Some(Verdict::Current));
        assert_eq!(of(&keep_rec), Some(Verdict::Current));
        assert_eq!(of(&old_trt), Some(Verdict::OtherPlatform));
        assert_eq!(of(&old_model), Some(Verdict::OtherModel));
        assert_eq!(of(&unfinished), Some(Verdict::Unfinished));
        assert!(
            verdicts.contains(&("0123456789abcdef".into(), Verdict::Orphan)),
            "{verdicts:?}"
        );
        assert_eq!(
            verdicts.len(),
            6,
            "the timing folder is not an engine: {verdicts:?}"
        );

        let dry = cache.prune(&current, Some(&orin), true).unwrap();
        assert_eq!(dry.len(), 4);
        assert!(
            tmp.path().join(old_trt.id()).exists(),
            "a dry run removes nothing"
        );

        let gone = cache.prune(&current, Some(&orin), false).unwrap();
        assert_eq!(gone.len(), 4);
        let left: BTreeSet<String> = cache.manifest().entries.into_iter().map(|e| e.id).collect();
        assert_eq!(left, [keep_det.id(), keep_rec.id()].into());
        for k in [&old_trt, &old_model, &unfinished] {
            assert!(!tmp.path().join(k.id()).exists());
        }
        assert!(!tmp.path().join("0123456789abcdef").exists());
        assert!(tmp.path().join(keep_det.id()).join("engine.bin").exists());
        assert!(
            tmp.path().join(TIMING).exists(),
            "timing caches survive pruning"
        );
    }

    #[test]
    fn without_a_gpu_entries_are_judged_by_model_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::open(tmp.path()).unwrap();
        let k = key("det1", &platform("Orin", "10.3.0"));
        built(&cache, &k, "detector");
        let current: BTreeSet<String> = ["det1".to_string()].into();
        assert_eq!(
            cache.judge(&current, None).unwrap()[0].verdict,
            Verdict::Current
        );
        let nowhere = EngineCache::existing(&tmp.path().join("missing"));
        assert!(nowhere.judge(&current, None).unwrap().is_empty());
        assert!(
            !tmp.path().join("missing").exists(),
            "reading does not create the folder"
        );
        assert_eq!(
            cache.judge(&BTreeSet::new(), None).unwrap()[0].verdict,
            Verdict::OtherModel
        );
    }

    #[test]
    fn a_corrupt_manifest_means_rebuild_not_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::open(tmp.path()).unwrap();
        let k = key("aa", &platform("Orin", "10.3.0"));
        built(&cache, &k, "detector");
        fs::write(tmp.path().join(MANIFEST), b"{ not json").unwrap();
        assert_eq!(cache.lookup(&k), Lookup::Missing);
        built(&cache, &k, "detector");
        assert!(matches!(cache.lookup(&k), Lookup::Ready(_)));
    }

    #[test]
    fn a_read_only_folder_is_reported_with_advice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ro");
        fs::create_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        // root writes anyway; the check must then pass, and that is right.
        let probe_ok = File::create(dir.join("p")).is_ok();
        let _ = fs::remove_file(dir.join("p"));
        match EngineCache::open(&dir) {
            Ok(_) => assert!(probe_ok, "a folder we cannot write was accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(!probe_ok);
                assert!(
                    msg.contains("not writable")
                        && msg.contains("engine.engine_cache_dir")
                        && msg.contains(&dir.display().to_string()),
                    "{msg}"
                );
            }
        }
        // A path under a regular file cannot be created at all.
        fs::write(tmp.path().join("file"), b"").unwrap();
        let msg = EngineCache::open(&tmp.path().join("file/engines"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("cannot create the folder") && msg.contains("file/engines"),
            "{msg}"
        );
    }

    #[test]
    fn progress_is_logged_while_a_build_runs() {
        assert_eq!(elapsed(Duration::from_secs(130)), "2m10s");
        assert_eq!(elapsed(Duration::from_secs(45)), "45s");
        let ticks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ticks.clone();
        let started = Instant::now();
        let out = with_progress(
            Duration::from_millis(20),
            move |so_far| seen.lock().unwrap().push(so_far),
            || {
                std::thread::sleep(Duration::from_millis(110));
                7
            },
        );
        assert_eq!(out, 7);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the ticker must stop with the build"
        );
        let after = ticks.lock().unwrap().len();
        assert!((2..=6).contains(&after), "{after} ticks in 110 ms at 20 ms");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            ticks.lock().unwrap().len(),
            after,
            "no ticks after the build returned"
        );
    }
}
