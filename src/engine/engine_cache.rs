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

use crate::error::{Error, Result};
use crate::gpu::Platform;

const MANIFEST: &str = "manifest.json";
const LOCK: &str = ".lock";
const TIMING: &str = "timing";
// 2: keys hold the ONNX Runtime build, the TensorRT provider's options, the
// SM count and the CUDA driver; entries can record that no engine was made.
const MANIFEST_VERSION: u32 = 2;

/// The batch sizes a TensorRT optimisation profile covers, and the image
/// side the stage feeds (for models exported with dynamic height and width).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchProfile {
    /// Smallest batch.
    pub min: usize,
    /// The batch TensorRT tunes its kernels for.
    pub opt: usize,
    /// Largest batch.
    pub max: usize,
    /// Height and width of the stage's image input (640 detector, 224 embedder).
    pub side: u32,
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
    /// Streaming multiprocessors (Orin modules all call themselves "Orin").
    pub sm_count: i32,
    /// The CUDA driver's version, e.g. 12060.
    pub cuda_driver: i32,
    /// TensorRT release.
    pub tensorrt: String,
    /// The ONNX Runtime build whose TensorRT provider built the engine: an
    /// upgrade rebuilds, where the provider would silently rebuild anyway
    /// while the log said "using the cached engine".
    pub ort: String,
    /// The TensorRT provider's options that shape the engine
    /// ([`super::providers::engine_shaping`]).
    pub trt_options: String,
}

impl CacheKey {
    /// The key for `model_sha256` built with these options on `platform`
    /// by the TensorRT provider of the ONNX Runtime build `ort`.
    pub fn new(
        model_sha256: &str,
        fp16: bool,
        profile: BatchProfile,
        platform: &Platform,
        ort: &str,
        trt_options: &str,
    ) -> CacheKey {
        let (maj, min) = platform.compute_capability;
        CacheKey {
            model_sha256: model_sha256.to_string(),
            precision: if fp16 { "fp16" } else { "fp32" }.to_string(),
            profile,
            gpu: platform.gpu.clone(),
            compute_capability: format!("{maj}.{min}"),
            sm_count: platform.sm_count,
            cuda_driver: platform.cuda_driver,
            tensorrt: platform.tensorrt.clone().unwrap_or_else(|| "none".into()),
            ort: ort.to_string(),
            trt_options: trt_options.to_string(),
        }
    }

    /// A short, stable name for the folder: 16 hex digits of a sha256 over every field.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.model_sha256.as_str(),
            &self.precision,
            &format!("{} side {}", self.profile, self.profile.side),
            &self.gpu,
            &self.compute_capability,
            &self.sm_count.to_string(),
            &self.cuda_driver.to_string(),
            &self.tensorrt,
            &self.ort,
            &self.trt_options,
        ] {
            // Length-prefixed so that no two different keys hash the same bytes.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(&h.finalize()[..8])
    }

    /// Whether this key was made for the GPU, driver and TensorRT of `platform`.
    pub fn fits(&self, platform: &Platform) -> bool {
        let (maj, min) = platform.compute_capability;
        self.gpu == platform.gpu
            && self.compute_capability == format!("{maj}.{min}")
            && self.sm_count == platform.sm_count
            && self.cuda_driver == platform.cuda_driver
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
    /// The build finished but TensorRT wrote no engine (it took no part of
    /// the graph, or failed inside ONNX Runtime). Recorded so that every
    /// start does not spend minutes on the same empty build; pruning the
    /// entry tries again.
    NoEngine,
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
    /// A finished build that wrote no engine.
    NoEngine(Entry),
    /// Nothing finished for this key: build it.
    Missing,
}

/// Why an entry is kept or would be pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Matches a model of the current config on this GPU and TensorRT.
    Current,
    /// Built for another GPU, driver or TensorRT release.
    OtherPlatform,
    /// Built by another ONNX Runtime build.
    OtherRuntime,
    /// Its build wrote no engine; removing the entry makes the next start try again.
    NoEngine,
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
            Verdict::OtherPlatform => "stale: other GPU, driver or TensorRT",
            Verdict::OtherRuntime => "stale: other ONNX Runtime",
            Verdict::NoEngine => "no engine: TensorRT built none; prune to retry",
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
    pub fn timing_dir(&self, platform: &Platform) -> Result<PathBuf> {
        let mut h = Sha256::new();
        let (maj, min) = platform.compute_capability;
        h.update(format!(
            "{}\0{maj}.{min}\0{}\0{}",
            platform.gpu,
            platform.sm_count,
            platform.tensorrt.as_deref().unwrap_or("none")
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
            Some(e) if e.state == State::NoEngine => Lookup::NoEngine(e),
            _ => Lookup::Missing,
        }
    }

    /// What to do for `key`, decided under the key's own lock: use the
    /// finished engine, or build it while holding the lock. A second process
    /// (`shitud engines build` beside a running daemon, two daemons on one
    /// cache) waits for the first one's build and then uses it, instead of
    /// wiping the folder under it.
    pub fn claim(&self, key: &CacheKey, role: &str, model: &Path) -> Result<Claim> {
        let lock = self.key_lock(key)?;
        match self.lookup(key) {
            Lookup::Ready(e) => Ok(Claim::Ready(e)),
            Lookup::NoEngine(e) => Ok(Claim::NoEngine(e)),
            Lookup::Missing => Ok(Claim::Build(self.begin_locked(key, role, model, lock)?)),
        }
    }

    /// Starts a build of `key` whatever the cache holds for it (under the
    /// key's lock), in an emptied folder.
    pub fn begin(&self, key: &CacheKey, role: &str, model: &Path) -> Result<Build> {
        let lock = self.key_lock(key)?;
        self.begin_locked(key, role, model, lock)
    }

    fn begin_locked(
        &self,
        key: &CacheKey,
        role: &str,
        model: &Path,
        lock: FileLock,
    ) -> Result<Build> {
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
        Ok(Build {
            key: key.clone(),
            dir,
            _lock: lock,
        })
    }

    /// Records that `build` finished after `took`, and whether TensorRT
    /// wrote an engine (a non-empty `*.engine` file); releases the key.
    pub fn finish(&self, build: Build, took: Duration) -> Result<State> {
        let id = build.key.id();
        let bytes = dir_size(&build.dir);
        let state = if has_engine(&build.dir) {
            State::Ready
        } else {
            State::NoEngine
        };
        self.update(|m| {
            if let Some(e) = m.entries.iter_mut().find(|e| e.id == id) {
                e.state = state;
                e.build_seconds = took.as_secs_f64();
                e.bytes = bytes;
                e.last_used = unix_now();
            }
        })?;
        Ok(state)
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
    ///
    /// `ort` is the loaded ONNX Runtime's build, where it could be loaded.
    pub fn judge(
        &self,
        current_models: &BTreeSet<String>,
        platform: Option<&Platform>,
        ort: Option<&str>,
    ) -> Result<Vec<Judged>> {
        let manifest = self.manifest();
        let mut out: Vec<Judged> = manifest
            .entries
            .iter()
            .map(|e| {
                let verdict = if e.state == State::Building {
                    Verdict::Unfinished
                } else if !current_models.contains(&e.key.model_sha256) {
                    Verdict::OtherModel
                } else if platform.is_some_and(|p| !e.key.fits(p)) {
                    Verdict::OtherPlatform
                } else if ort.is_some_and(|o| o != e.key.ort) {
                    Verdict::OtherRuntime
                } else if e.state == State::NoEngine {
                    Verdict::NoEngine
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
        ort: Option<&str>,
        dry_run: bool,
    ) -> Result<Vec<Judged>> {
        let stale = |c: &EngineCache| -> Result<Vec<Judged>> {
            Ok(c.judge(current_models, platform, ort)?
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
        FileLock::take(&self.dir.join(LOCK), || {})
    }

    /// The lock of one key's build, held from its start to its end (the
    /// manifest's lock is only held for each read-modify-write).
    fn key_lock(&self, key: &CacheKey) -> Result<FileLock> {
        let id = key.id();
        FileLock::take(&self.dir.join(format!(".{id}.lock")), || {
            tracing::info!(
                engine = %id,
                "another process is building this TensorRT engine; waiting for it to finish"
            )
        })
    }
}

/// A build in progress: the folder TensorRT writes into, and the key's lock.
#[derive(Debug)]
pub struct Build {
    key: CacheKey,
    dir: PathBuf,
    _lock: FileLock,
}

impl Build {
    /// The folder the engine goes into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What [`EngineCache::claim`] found for a key.
#[derive(Debug)]
// One claim per model at start-up: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Claim {
    /// A finished engine; use it.
    Ready(Entry),
    /// An earlier build wrote no engine.
    NoEngine(Entry),
    /// Nothing usable: build it (the key is locked until [`EngineCache::finish`]).
    Build(Build),
}

/// Holds an exclusive `flock` until dropped.
#[derive(Debug)]
struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    /// Locks `path` (created if need be); calls `waiting` once if another
    /// process holds it, then waits.
    fn take(path: &Path, waiting: impl FnOnce()) -> Result<FileLock> {
        use std::os::fd::AsRawFd;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        // SAFETY: flock on a descriptor this function owns; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            waiting();
            // SAFETY: as above.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::io(path, std::io::Error::last_os_error()));
            }
        }
        Ok(FileLock(file))
    }
}

/// Whether `dir` holds a non-empty TensorRT engine file.
fn has_engine(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|items| {
        items.flatten().any(|i| {
            i.path().extension().is_some_and(|e| e == "engine")
                && i.metadata().is_ok_and(|m| m.is_file() && m.len() > 0)
        })
    })
}

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

    const ORT: &str = "git-branch=rel-1.31.1,git-commit-id=9a4c8f0";
    const TRT_OPTIONS: &str = "trt_engine_cache_enable=1;trt_fp16_enable=1";
    const PROFILE: BatchProfile = BatchProfile {
        min: 1,
        opt: 4,
        max: 8,
        side: 640,
    };

    fn platform(gpu: &str, trt: &str) -> Platform {
        Platform {
            gpu: gpu.into(),
            compute_capability: (8, 7),
            sm_count: 16,
            cuda_driver: 12060,
            tensorrt: Some(trt.into()),
            integrated: true,
        }
    }

    fn key(sha: &str, p: &Platform) -> CacheKey {
        CacheKey::new(sha, true, PROFILE, p, ORT, TRT_OPTIONS)
    }

    /// A build that wrote an engine file, as the TensorRT provider names them.
    fn built(cache: &EngineCache, k: &CacheKey, role: &str) {
        let b = cache.begin(k, role, Path::new("m.onnx")).unwrap();
        fs::write(
            b.dir().join("TRTKernel_graph_main_0_sm87.engine"),
            b"engine bytes",
        )
        .unwrap();
        assert_eq!(
            cache.finish(b, Duration::from_secs(3)).unwrap(),
            State::Ready
        );
    }

    #[test]
    fn every_field_of_the_key_changes_its_id() {
        let orin = platform("Orin", "10.3.0");
        let base = key("aa", &orin);
        let new =
            |fp16, profile, p: &Platform, ort, trt| CacheKey::new("aa", fp16, profile, p, ort, trt);
        let mut variants = vec![
            key("ab", &orin),
            new(false, PROFILE, &orin, ORT, TRT_OPTIONS),
            new(
                true,
                BatchProfile { opt: 8, ..PROFILE },
                &orin,
                ORT,
                TRT_OPTIONS,
            ),
            new(
                true,
                BatchProfile {
                    side: 320,
                    ..PROFILE
                },
                &orin,
                ORT,
                TRT_OPTIONS,
            ),
            key("aa", &platform("Xavier", "10.3.0")),
            key("aa", &platform("Orin", "8.6.2")),
            // An ONNX Runtime upgrade, and other TensorRT provider options.
            new(
                true,
                PROFILE,
                &orin,
                "git-branch=rel-1.32.0,git-commit-id=1234567",
                TRT_OPTIONS,
            ),
            new(
                true,
                PROFILE,
                &orin,
                ORT,
                "trt_engine_cache_enable=1;trt_fp16_enable=0",
            ),
        ];
        let mut other_cc = orin.clone();
        other_cc.compute_capability = (7, 2);
        variants.push(key("aa", &other_cc));
        // Every Orin module reports "Orin": the SM count tells them apart.
        let mut orin_nano = orin.clone();
        orin_nano.sm_count = 8;
        variants.push(key("aa", &orin_nano));
        let mut new_driver = orin.clone();
        new_driver.cuda_driver = 12080;
        variants.push(key("aa", &new_driver));
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
        let b = cache.begin(&k, "embedder", Path::new("rec.onnx")).unwrap();
        let dir = b.dir().to_path_buf();
        fs::write(dir.join("engine.bin"), vec![0u8; 100]).unwrap();
        fs::write(dir.join("m.engine"), vec![0u8; 28]).unwrap();
        assert_eq!(
            cache.lookup(&k),
            Lookup::Missing,
            "a build in progress is not usable"
        );
        cache.finish(b, Duration::from_secs(130)).unwrap();
        let Lookup::Ready(e) = cache.lookup(&k) else {
            panic!("finished entry not found")
        };
        assert_eq!(
            (e.role.as_str(), e.bytes, e.build_seconds),
            ("embedder", 128, 130.0)
        );
        // Another platform is a different key: a stale engine is never reused.
        assert_eq!(
            cache.lookup(&key("aa", &platform("Orin", "10.4.0"))),
            Lookup::Missing
        );
        // An emptied folder is not trusted.
        fs::remove_file(dir.join("engine.bin")).unwrap();
        fs::remove_file(dir.join("m.engine")).unwrap();
        assert_eq!(cache.lookup(&k), Lookup::Missing);
    }

    #[test]
    fn begin_wipes_what_a_crashed_build_left() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::open(tmp.path()).unwrap();
        let k = key("aa", &platform("Orin", "10.3.0"));
        let b = cache.begin(&k, "detector", Path::new("det.onnx")).unwrap();
        fs::write(b.dir().join("half.engine"), b"x").unwrap();
        drop(b); // the process died: its lock went with it
        let b = cache.begin(&k, "detector", Path::new("det.onnx")).unwrap();
        assert_eq!(fs::read_dir(b.dir()).unwrap().count(), 0);
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
        drop(
            cache
                .begin(&unfinished, "detector", Path::new("det.onnx"))
                .unwrap(),
        );
        fs::create_dir_all(tmp.path().join("0123456789abcdef")).unwrap();
        cache.timing_dir(&orin).unwrap();

        let current: BTreeSet<String> = ["det1".to_string(), "rec1".to_string()].into();
        let verdicts: Vec<(String, Verdict)> = cache
            .judge(&current, Some(&orin), Some(ORT))
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

        let dry = cache.prune(&current, Some(&orin), Some(ORT), true).unwrap();
        assert_eq!(dry.len(), 4);
        assert!(
            tmp.path().join(old_trt.id()).exists(),
            "a dry run removes nothing"
        );

        let gone = cache
            .prune(&current, Some(&orin), Some(ORT), false)
            .unwrap();
        assert_eq!(gone.len(), 4);
        let left: BTreeSet<String> = cache.manifest().entries.into_iter().map(|e| e.id).collect();
        assert_eq!(left, [keep_det.id(), keep_rec.id()].into());
        for k in [&old_trt, &old_model, &unfinished] {
            assert!(!tmp.path().join(k.id()).exists());
        }
        assert!(!tmp.path().join("0123456789abcdef").exists());
        assert!(tmp
            .path()
            .join(keep_det.id())
            .join("TRTKernel_graph_main_0_sm87.engine")
            .exists());
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
            cache.judge(&current, None, None).unwrap()[0].verdict,
            Verdict::Current
        );
        let nowhere = EngineCache::existing(&tmp.path().join("missing"));
        assert!(nowhere.judge(&current, None, None).unwrap().is_empty());
        assert!(
            !tmp.path().join("missing").exists(),
            "reading does not create the folder"
        );
        assert_eq!(
            cache.judge(&BTreeSet::new(), None, None).unwrap()[0].verdict,
            Verdict::OtherModel
        );
    }

    #[test]
    fn an_onnx_runtime_upgrade_misses_the_old_engine_and_judges_it_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::open(tmp.path()).unwrap();
        let orin = platform("Orin", "10.3.0");
        let old = key("aa", &orin);
        built(&cache, &old, "detector");
        let upgraded = CacheKey::new(
            "aa",
            true,
            PROFILE,
            &orin,
            "git-branch=rel-1.32.0",
            TRT_OPTIONS,
        );
        assert_eq!(
            cache.lookup(&upgraded),
            Lookup::Missing,
            "not 'using the cached engine'"
        );
        let current: BTreeSet<String> = ["aa".to_string()].into();
        let j = cache
            .judge(&current, Some(&orin), Some("git-branch=rel-1.32.0"))
            .unwrap();
        assert_eq!(j[0].verdict, Verdict::OtherRuntime);
        assert!(j[0].verdict.is_stale());
    }

    #[test]
    fn a_build_that_wrote_no_engine_is_not_repeated_at_every_start() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::open(tmp.path()).unwrap();
        let k = key("aa", &platform("Orin", "10.3.0"));
        let Claim::Build(b) = cache.claim(&k, "detector", Path::new("det.onnx")).unwrap() else {
            panic!("an empty cache builds");
        };
        // What ORT leaves when TensorRT took nothing: a profile, a 0-byte engine.
        fs::write(b.dir().join("m.profile"), b"shapes").unwrap();
        fs::write(b.dir().join("m.engine"), b"").unwrap();
        assert_eq!(
            cache.finish(b, Duration::from_secs(200)).unwrap(),
            State::NoEngine
        );
        // The next start is told, instead of building for minutes again.
        assert!(matches!(cache.lookup(&k), Lookup::NoEngine(_)));
        assert!(matches!(
            cache.claim(&k, "detector", Path::new("det.onnx")).unwrap(),
            Claim::NoEngine(_)
        ));
        // Pruning the entry is how to try again.
        let current: BTreeSet<String> = ["aa".to_string()].into();
        let gone = cache.prune(&current, None, None, false).unwrap();
        assert_eq!(gone[0].verdict, Verdict::NoEngine);
        assert_eq!(cache.lookup(&k), Lookup::Missing);
    }

    #[test]
    fn a_second_builder_waits_for_the_first_and_uses_its_engine() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = EngineCache::open(tmp.path()).unwrap();
        let k = key("aa", &platform("Orin", "10.3.0"));
        let Claim::Build(first) = cache.claim(&k, "detector", Path::new("det.onnx")).unwrap()
        else {
            panic!("an empty cache builds");
        };
        let engine = first.dir().join("TRTKernel_graph_main_0_sm87.engine");
        fs::write(&engine, b"half an engine").unwrap();
        // `shitud engines build` while the daemon builds: the second claim
        // must neither wipe the folder nor start its own build.
        let (c2, k2) = (cache.clone(), k.clone());
        let second =
            std::thread::spawn(move || c2.claim(&k2, "detector", Path::new("det.onnx")).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !second.is_finished(),
            "the second claim waits for the build"
        );
        assert!(engine.exists(), "the first build's files are untouched");
        fs::write(&engine, b"a whole engine").unwrap();
        cache.finish(first, Duration::from_secs(90)).unwrap();
        match second.join().unwrap() {
            Claim::Ready(e) => assert_eq!(e.build_seconds, 90.0),
            other => panic!("the second claim should use the first build, got {other:?}"),
        }
        assert_eq!(fs::read(&engine).unwrap(), b"a whole engine");
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
        // At least one tick; no more than the time actually taken allows
        // (a loaded machine may oversleep the 110 ms).
        let after = ticks.lock().unwrap().len();
        let most = started.elapsed().as_millis() / 20 + 1;
        assert!(
            after >= 1 && after as u128 <= most,
            "{after} ticks in {:?} at 20 ms",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            ticks.lock().unwrap().len(),
            after,
            "no ticks after the build returned"
        );
    }
}
