//! The versions on disk, and which one serves.
//!
//! ```text
//! <ota.root>/
//!   versions/<version>/   one applied bundle, self-contained: version.json,
//!                         models/, gallery/, golden/ (parts the bundle did
//!                         not carry are copied from the version it replaced)
//!   current  -> versions/<version>   the version that serves
//!   previous -> versions/<version>   where a rollback goes
//!   trial.json            the switch being tried (see below)
//!   staging/              downloads (*.part), unpacking (*.partial/), and
//!                         <version>.unconfirmed: committed, never switched to
//!   lock                  flock: one update at a time
//! ```
//!
//! Crash safety comes from two renames. A version is unpacked into
//! `staging/<version>.partial/`, synced, then renamed into `versions/`, so a
//! version folder is either complete or absent. `current` is replaced by
//! renaming a new link over it, so at every instant it names exactly one
//! complete version (or does not exist, and the config's own files serve).
//!
//! A switch writes `trial.json` first. Until the new version has served for
//! `ota.trial_s`, a start that finds `trial.json` without `clean_stop`
//! means the new version died (crash, kill, power loss, watchdog): the start
//! goes back to the previous version. See [`Store::recover`].
//!
//! A committed version is marked `staging/<version>.unconfirmed` until it is
//! switched to. A start that finds the mark on a version that is neither
//! current nor previous removes that version: the update was stopped while
//! building or checking it, and it never served.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::error::{Error, Result};

/// The file in each version folder that says where its parts are.
pub const VERSION_FILE: &str = "version.json";
const TRIAL_FILE: &str = "trial.json";

/// `versions/<v>/version.json`: a version's parts, relative to its folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The bundle's version.
    pub version: String,
    /// The detector model.
    pub detector: String,
    /// The recogniser model.
    pub embedder: String,
    /// The gallery folder.
    pub gallery: String,
    /// Golden images and their labels, relative paths.
    pub golden: Vec<(String, String)>,
    /// Seconds since the epoch when it was unpacked.
    pub staged_unix: u64,
    /// The version it was applied over (`""`: the config's own files).
    pub from: String,
}

/// `trial.json`: a switch not yet confirmed by `ota.trial_s` of service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The version switched to.
    pub version: String,
    /// The version switched from (`""`: the config's own files).
    pub previous: String,
    /// When.
    pub switched_unix: u64,
    /// The daemon stopped cleanly since: the next start is not a crash.
    pub clean_stop: bool,
}

/// What [`Store::recover`] found at start-up.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// Nothing to do.
    Clean,
    /// The version on trial died; the store went back to `to`.
    RolledBack {
        /// The version that died.
        from: String,
        /// The version now current (`""`: the config's own files).
        to: String,
    },
    /// A version is on trial and the last stop was clean: the trial goes on.
    TrialContinues(Trial),
}

/// The store under `ota.root`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An exclusive hold on the store (released when dropped).
pub struct StoreLock(#[allow(dead_code)] File);

impl Store {
    /// The store at `root`, creating its folders.
    pub fn open(root: &Path) -> Result<Store> {
        for d in [
            root.to_path_buf(),
            root.join("versions"),
            root.join("staging"),
        ] {
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where downloads and unpacking happen.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// The folder of version `v`.
    pub fn version_dir(&self, v: &str) -> PathBuf {
        self.root.join("versions").join(v)
    }

    /// Takes the store's lock, failing at once if someone else holds it.
    pub fn try_lock(&self) -> Result<Option<StoreLock>> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(Error::io(&path, e))
            };
        }
        Ok(Some(StoreLock(file)))
    }

    fn link_target(&self, name: &str) -> Option<String> {
        let target = fs::read_link(self.root.join(name)).ok()?;
        let v = target.file_name()?.to_str()?.to_string();
        self.version_dir(&v)
            .join(VERSION_FILE)
            .is_file()
            .then_some(v)
    }

    /// The version that serves, if any.
    pub fn current(&self) -> Option<String> {
        self.link_target("current")
    }

    /// The version a rollback goes to, if any.
    pub fn previous(&self) -> Option<String> {
        self.link_target("previous")
    }

    /// Every complete version, oldest first.
    pub fn versions(&self) -> Vec<VersionInfo> {
        let mut out: Vec<VersionInfo> = fs::read_dir(self.root.join("versions"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.info(e.file_name().to_str()?).ok())
            .collect();
        out.sort_by(|a, b| (a.staged_unix, &a.version).cmp(&(b.staged_unix, &b.version)));
        out
    }

    /// `version.json` of version `v`.
    pub fn info(&self, v: &str) -> Result<VersionInfo> {
        let path = self.version_dir(v).join(VERSION_FILE);
        let text = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::json(format!("{}: unreadable", path.display()), e))
    }

    /// `base` with the models and gallery of version `v`.
    pub fn settings_for(&self, base: &Settings, v: &str) -> Result<Settings> {
        let info = self.info(v)?;
        let dir = self.version_dir(v);
        let mut s = base.clone();
        s.detector.model = dir.join(&info.detector);
        s.embedder.model = dir.join(&info.embedder);
        s.search.index = dir.join(&info.gallery);
        Ok(s)
    }

    /// `base` with the current version's files, or `base` itself when none is current.
    pub fn settings_current(&self, base: &Settings) -> Result<(Settings, Option<String>)> {
        match self.current() {
            Some(v) => Ok((self.settings_for(base, &v)?, Some(v))),
            None => Ok((base.clone(), None)),
        }
    }

    /// Moves a finished unpack into `versions/` (the first rename of the
    /// module docs). `partial` must hold a synced `version.json`.
    pub fn commit(&self, partial: &Path, v: &str) -> Result<PathBuf> {
        let dest = self.version_dir(v);
        if dest.exists() {
            // A version of that name that is not current: an earlier, failed try. Replace it.
            if self.current().as_deref() == Some(v) {
                return Err(Error::Ota(format!("version {v} is already current")));
            }
            fs::remove_dir_all(&dest).map_err(|e| Error::io(&dest, e))?;
        }
        // The mark goes first, so no committed version is ever without it
        // before its switch.
        write_synced(&self.unconfirmed_mark(v), b"")?;
        fs::rename(partial, &dest).map_err(|e| Error::io(&dest, e))?;
        sync_dir(&self.root.join("versions"));
        Ok(dest)
    }

    fn unconfirmed_mark(&self, v: &str) -> PathBuf {
        self.staging().join(format!("{v}.unconfirmed"))
    }

    /// Makes `v` current (the second rename), remembering the old current as
    /// `previous` and starting a trial. `v` must be a committed version.
    pub fn switch(&self, v: &str) -> Result<()> {
        if !self.version_dir(v).join(VERSION_FILE).is_file() {
            return Err(Error::Config(format!(
                "version {v} is not in {}",
                self.root.join("versions").display()
            )));
        }
        let old = self.current().unwrap_or_default();
        self.write_trial(&Trial {
            version: v.to_string(),
            previous: old.clone(),
            switched_unix: now(),
            clean_stop: false,
        })?;
        if !old.is_empty() && old != v {
            self.set_link("previous", &old)?;
        }
        self.set_link("current", v)?;
        let _ = fs::remove_file(self.unconfirmed_mark(v));
        Ok(())
    }

    /// Makes `previous` current again (no trial: it served before). Returns it.
    pub fn rollback(&self) -> Result<String> {
        let Some(prev) = self.previous() else {
            return Err(Error::Ota("no previous version to roll back to".into()));
        };
        let cur = self.current().unwrap_or_default();
        self.set_link("current", &prev)?;
        if cur.is_empty() || cur == prev {
            let _ = fs::remove_file(self.root.join("previous"));
        } else {
            self.set_link("previous", &cur)?;
        }
        self.clear_trial();
        Ok(prev)
    }

    /// Drops the `current` link (and the trial): the config's own files serve.
    pub fn forget_current(&self) {
        let _ = fs::remove_file(self.root.join("current"));
        self.clear_trial();
    }

    /// Start-up: clears what a crash left in `staging/`, and goes back to the
    /// previous version if the one on trial died (see the module docs).
    pub fn recover(&self) -> Result<Recovery> {
        let staging = self.staging();
        for e in fs::read_dir(&staging)
            .map_err(|e| Error::io(&staging, e))?
            .flatten()
        {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.extension().is_some_and(|x| x == "partial") {
                let _ = fs::remove_dir_all(&p);
            } else if let Some(v) = name.strip_suffix(".unconfirmed") {
                let kept = [self.current(), self.previous()];
                if !kept.iter().any(|k| k.as_deref() == Some(v)) && !v.is_empty() {
                    let dir = self.version_dir(v);
                    if dir.exists() {
                        tracing::warn!(version = v, "version {v} was being built or checked when shitud stopped; it never served and is removed");
                        let _ = fs::remove_dir_all(&dir);
                    }
                }
                let _ = fs::remove_file(&p);
            } else if name.starts_with("dropped-") {
                // A dropped bundle being applied when the daemon died: not tried
                // again at every start (it may be what killed the daemon).
                tracing::warn!(file = %p.display(), "a dropped bundle was being applied when shitud stopped; it is discarded: drop it again to retry");
                let _ = fs::remove_file(&p);
            }
        }
        let Some(trial) = self.trial() else {
            return Ok(Recovery::Clean);
        };
        if self.current().as_deref() != Some(trial.version.as_str()) {
            // The switch itself never happened (killed between trial.json and the rename).
            self.clear_trial();
            return Ok(Recovery::Clean);
        }
        if trial.clean_stop {
            let t = Trial {
                clean_stop: false,
                ..trial.clone()
            };
            self.write_trial(&t)?;
            return Ok(Recovery::TrialContinues(t));
        }
        if trial.previous.is_empty() {
            let _ = fs::remove_file(self.root.join("current"));
            sync_dir(&self.root);
        } else {
            self.set_link("current", &trial.previous)?;
        }
        let _ = fs::remove_file(self.root.join("previous"));
        self.clear_trial();
        Ok(Recovery::RolledBack {
            from: trial.version,
            to: trial.previous,
        })
    }

    /// The trial in progress, if any.
    pub fn trial(&self) -> Option<Trial> {
        let text = fs::read(self.root.join(TRIAL_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Ends the trial: the current version is confirmed.
    pub fn clear_trial(&self) {
        let _ = fs::remove_file(self.root.join(TRIAL_FILE));
        sync_dir(&self.root);
    }

    /// Marks the trial (if any) as ended by a clean stop.
    pub fn note_clean_stop(&self) {
        if let Some(t) = self.trial() {
            let _ = self.write_trial(&Trial {
                clean_stop: true,
                ..t
            });
        }
    }

    /// Keeps `keep` versions: current and previous always, then the newest
    /// others; removes the rest. Returns the removed versions, oldest first.
    pub fn prune(&self, keep: usize) -> Vec<String> {
        let protected = [self.current(), self.previous()];
        let is_protected = |v: &str| protected.iter().any(|p| p.as_deref() == Some(v));
        let all = self.versions();
        let mut room = keep.saturating_sub(all.iter().filter(|i| is_protected(&i.version)).count());
        let mut doomed = Vec::new();
        for info in all.iter().rev().filter(|i| !is_protected(&i.version)) {
            if room > 0 {
                room -= 1;
            } else {
                doomed.push(info.version.clone());
            }
        }
        doomed.reverse();
        doomed.retain(|v| fs::remove_dir_all(self.version_dir(v)).is_ok());
        doomed
    }

    fn write_trial(&self, t: &Trial) -> Result<()> {
        let path = self.root.join(TRIAL_FILE);
        let bytes =
            serde_json::to_vec_pretty(t).map_err(|e| Error::json("writing the update state", e))?;
        write_synced(&path, &bytes)
    }

    fn set_link(&self, name: &str, v: &str) -> Result<()> {
        let link = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.new"));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("versions").join(v), &tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &link).map_err(|e| Error::io(&link, e))?;
        sync_dir(&self.root);
        Ok(())
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

/// fsyncs every file under `dir`, then the folders: a rename of `dir` after
/// this cannot expose unwritten data after a power loss.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        let p = e.path();
        let t = e.file_type().map_err(|err| Error::io(&p, err))?;
        if t.is_dir() {
            sync_tree(&p)?;
        } else if t.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|err| Error::io(&p, err))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Best effort: some file systems refuse fsync on a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(store: &Store, v: &str, t: u64) {
        let partial = store.staging().join(format!("{v}.partial"));
        fs::create_dir_all(&partial).unwrap();
        let info = VersionInfo {
            version: v.into(),
            detector: "models/d.onnx".into(),
            embedder: "models/e.onnx".into(),
            gallery: "gallery".into(),
            golden: vec![],
            staged_unix: t,
            from: String::new(),
        };
        write_synced(
            &partial.join(VERSION_FILE),
            &serde_json::to_vec(&info).unwrap(),
        )
        .unwrap();
        store.commit(&partial, v).unwrap();
    }

    /// A store where version a served through its trial and b is now on trial.
    fn a_confirmed_then_b_on_trial(root: &Path) -> Store {
        let store = Store::open(root).unwrap();
        version(&store, "a", 1);
        store.switch("a").unwrap();
        store.clear_trial();
        version(&store, "b", 2);
        store.switch("b").unwrap();
        store
    }

    #[test]
    fn switch_rollback_and_prune_keep_one_current_version() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.current(), None);
        version(&store, "a", 1);
        store.switch("a").unwrap();
        store.clear_trial();
        version(&store, "b", 2);
        store.switch("b").unwrap();
        assert_eq!(
            (store.current().as_deref(), store.previous().as_deref()),
            (Some("b"), Some("a"))
        );
        assert_eq!(store.rollback().unwrap(), "a");
        assert_eq!(
            (store.current().as_deref(), store.previous().as_deref()),
            (Some("a"), Some("b"))
        );
        for (v, t) in [("c", 3), ("d", 4)] {
            version(&store, v, t);
        }
        // a (current) and b (previous) always stay; then the newest others.
        assert_eq!(store.prune(3), vec!["c".to_string()]);
        assert_eq!(store.prune(2), vec!["d".to_string()]);
        assert_eq!(store.versions().len(), 2);
        assert!(
            store.switch("nope").is_err(),
            "only committed versions can be switched to"
        );
    }

    #[test]
    fn a_start_after_a_crash_on_trial_goes_back_and_a_clean_stop_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let store = a_confirmed_then_b_on_trial(tmp.path());
        store.note_clean_stop();
        assert!(
            matches!(store.recover().unwrap(), Recovery::TrialContinues(t) if t.version == "b")
        );
        assert_eq!(store.current().as_deref(), Some("b"));
        // No clean stop this time: b died on trial.
        assert_eq!(
            store.recover().unwrap(),
            Recovery::RolledBack {
                from: "b".into(),
                to: "a".into()
            }
        );
        assert_eq!(store.current().as_deref(), Some("a"));
        assert_eq!(store.recover().unwrap(), Recovery::Clean);
        // The first version ever dying on trial leaves the config's own files serving.
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        version(&store, "x", 1);
        store.switch("x").unwrap();
        fs::create_dir_all(store.staging().join("y.partial")).unwrap();
        assert_eq!(
            store.recover().unwrap(),
            Recovery::RolledBack {
                from: "x".into(),
                to: String::new()
            }
        );
        assert_eq!(store.current(), None);
        assert!(
            !store.staging().join("y.partial").exists(),
            "unfinished unpacks are cleared"
        );
    }

    #[test]
    fn a_version_never_switched_to_is_removed_at_the_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let store = a_confirmed_then_b_on_trial(tmp.path());
        store.clear_trial();
        // c is committed, then the update stops while building or checking it.
        version(&store, "c", 3);
        assert_eq!(store.recover().unwrap(), Recovery::Clean);
        let left: Vec<_> = store.versions().into_iter().map(|i| i.version).collect();
        assert_eq!(
            left,
            ["a", "b"],
            "c never served, so it goes; a and b served"
        );
        assert_eq!(
            fs::read_dir(store.staging()).unwrap().count(),
            0,
            "the marks are cleared"
        );
        // A switched-to version keeps its folder through any number of starts.
        assert_eq!(store.recover().unwrap(), Recovery::Clean);
        assert_eq!(store.versions().len(), 2);
    }
}
