//! Over-the-air updates inside the running daemon: `P/ota/apply`,
//! `P/ota/rollback`, the watched drop folder, `P/ota/status`, and the hand-over
//! of the new pipeline to the pipeline thread.
//!
//! An update runs on its own thread (`shitud-ota`) through the steps of
//! [`crate::ota::apply`] while the old pipeline keeps serving. Only the last
//! step touches serving: the new pipeline is handed to the pipeline thread,
//! which takes it between two batches, so no request is dropped or failed
//! across the swap. Gallery commands are refused with `busy` while an update
//! runs, because the new version's gallery is a copy taken when it started.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;

use super::answer::{self, ErrorCode, OtaAnswer, OtaState, OtaStatus};
use super::outbox::Message;
use super::request::OtaCommand as Command;
use super::worker::Swap;
use super::ReplyTo;
use super::Shared;
use crate::config::Settings;
use crate::ota::apply::{self, Step, Update};
use crate::ota::fetch::{Limits, Source};
use crate::ota::store::{self, Recovery, Store, StoreLock};
use crate::pipeline::Pipeline;

/// Called with the outcome of an update (the version, or why not) when it ends.
pub type OnDone = Box<dyn FnOnce(Result<String, String>) + Send>;

/// The daemon's side of OTA: the store it owns, and the update in progress.
pub struct Updater {
    store: Store,
    base: Settings,
    trusted: Vec<VerifyingKey>,
    busy: AtomicBool,
    swap: Mutex<Option<Swap>>,
    status: Mutex<OtaStatus>,
    _lock: StoreLock,
}

/// What a start-up found: the updater, the settings to serve with, and the version they are.
pub struct Startup {
    /// The updater.
    pub updater: Updater,
    /// `base` with the current version's files.
    pub settings: Settings,
    /// The current version (`None`: the config's own files).
    pub version: Option<String>,
}

impl Updater {
    /// Opens `ota.root` (if set), recovers from a crash during a trial, and
    /// says what to serve. `None` when updates are off.
    pub fn start(base: &Settings) -> anyhow::Result<Option<Startup>> {
        let o = &base.ota;
        if o.root.as_os_str().is_empty() {
            return Ok(None);
        }
        let store =
            Store::open(&o.root).with_context(|| format!("ota.root {}", o.root.display()))?;
        let lock = store.try_lock()?.with_context(|| {
            format!(
                "ota.root {}: another shitud (or `shitud ota`) is using it",
                o.root.display()
            )
        })?;
        let trusted = o
            .trusted_keys
            .iter()
            .map(|k| crate::ota::keys::read_public(k))
            .collect::<Result<Vec<_>, _>>()?;
        let mut status = OtaStatus::default();
        match store.recover()? {
            Recovery::Clean => {}
            Recovery::RolledBack { from, to } => {
                let to = if to.is_empty() {
                    "the config's own models and gallery".to_string()
                } else {
                    format!("version {to}")
                };
                let message = format!("version {from} stopped without a clean stop within ota.trial_s of its switch; rolled back to {to}");
                tracing::error!("{message}");
                status = OtaStatus {
                    state: OtaState::RolledBack,
                    failed_version: Some(from),
                    message: Some(message),
                    ..Default::default()
                };
            }
            Recovery::TrialContinues(t) => {
                tracing::info!(version = %t.version, "version on trial since its switch; the trial goes on")
            }
        }
        let (settings, version) = store.settings_current(base)?;
        if let Some(v) = &version {
            tracing::info!(version = %v, dir = %store.version_dir(v).display(), "serving OTA version");
        }
        let updater = Updater {
            store,
            base: base.clone(),
            trusted,
            busy: AtomicBool::new(false),
            swap: Mutex::new(None),
            status: Mutex::new(status),
            _lock: lock,
        };
        Ok(Some(Startup {
            updater,
            settings,
            version,
        }))
    }

    /// Whether an update or rollback is running.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// The pipeline waiting to be swapped in, for the pipeline thread.
    pub fn take_swap(&self) -> Option<Swap> {
        self.swap.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The retained status, with the versions on disk.
    pub fn status_payload(&self) -> Vec<u8> {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.current = self.store.current();
        s.previous = self.store.previous();
        s.time_unix = store::now();
        answer::to_vec(&s)
    }

    /// The current version's trial, if any: confirmed after `ota.trial_s` of service.
    pub fn watch_trial(self: &Arc<Self>, trial_s: u64) {
        let Some(t) = self.store.trial() else { return };
        let end = t.switched_unix + trial_s;
        let me = self.clone();
        let _ = std::thread::Builder::new().name("shitud-trial".into()).spawn(move || {
            std::thread::sleep(Duration::from_secs(end.saturating_sub(store::now())));
            if me.store.trial().is_some_and(|now| now.version == t.version && now.switched_unix == t.switched_unix) {
                me.store.clear_trial();
                tracing::info!(version = %t.version, "version confirmed: it served through its trial");
            }
        });
    }

    /// Goes back from a current version that does not open: to the previous
    /// version, or else to the config's own files. Returns what to serve.
    pub fn fall_back(&self) -> crate::Result<(Settings, Option<String>)> {
        if self.store.previous().is_some() {
            self.store.rollback()?;
        } else {
            self.store.forget_current();
        }
        self.store.settings_current(&self.base)
    }

    /// Marks a clean stop, so that the next start does not take it for a crash.
    pub fn clean_stop(&self) {
        self.store.note_clean_stop();
    }
}

impl Shared {
    fn updater(&self) -> Option<&Arc<Updater>> {
        self.updater.as_ref()
    }

    /// Publishes `P/ota/status` (retained) with `fields`.
    pub(super) fn publish_ota_status(&self, fields: OtaStatus) {
        let Some(u) = self.updater() else { return };
        *u.status.lock().unwrap_or_else(|p| p.into_inner()) = fields;
        self.outbox.submit(Message::status(
            self.topics.ota_status.clone(),
            u.status_payload(),
        ));
    }

    /// Republishes the last OTA status (after a reconnect).
    pub(super) fn republish_ota_status(&self) {
        if let Some(u) = self.updater() {
            self.outbox.submit(Message::status(
                self.topics.ota_status.clone(),
                u.status_payload(),
            ));
        }
    }

    /// Starts `command` on the OTA thread, answering `reply` (if any) when it ends.
    /// Refused at once when updates are off or one is already running.
    pub(super) fn start_ota(
        self: &Arc<Self>,
        command: Command,
        reply: Option<ReplyTo>,
        on_done: Option<OnDone>,
    ) {
        let Some(u) = self.updater().cloned() else {
            if let Some(r) = reply {
                self.ota_answer(
                    r,
                    Err((
                        ErrorCode::BadRequest,
                        "updates are off on this box (ota.root is empty)".into(),
                    )),
                );
            }
            return;
        };
        if u.busy.swap(true, Ordering::SeqCst) {
            if let Some(r) = reply {
                self.ota_answer(
                    r,
                    Err((
                        ErrorCode::Busy,
                        "an update is already running; see P/ota/status".into(),
                    )),
                );
            }
            if let Some(f) = on_done {
                f(Err("an update is already running".into()));
            }
            return;
        }
        let shared = self.clone();
        let spawned = std::thread::Builder::new().name("shitud-ota".into()).spawn(move || {
            let request_id = reply.as_ref().map(|r| r.request_id.clone());
            // A panic in native code (ORT, faiss) while opening the new version
            // must end the update, not leave it "running" for ever.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match command {
                Command::Apply(source) => shared.apply(&u, &source, request_id.as_deref()),
                Command::Rollback => shared.rollback(&u, request_id.as_deref()),
            }));
            let outcome = run.unwrap_or_else(|_| {
                let message = "the update failed with an internal panic (see the log); the current version keeps serving".to_string();
                shared.publish_ota_status(OtaStatus {
                    state: OtaState::Refused,
                    request_id: request_id.clone(),
                    message: Some(message.clone()),
                    ..Default::default()
                });
                Err(message)
            });
            u.busy.store(false, Ordering::SeqCst);
            let text = outcome.clone();
            if let Some(r) = reply {
                shared.ota_answer(r, outcome.map_err(|e| (ErrorCode::Refused, e)));
            }
            if let Some(f) = on_done {
                f(text);
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the OTA thread: {e}");
            if let Some(u) = self.updater() {
                u.busy.store(false, Ordering::SeqCst);
            }
        }
    }

    pub(super) fn ota_answer(&self, reply: ReplyTo, outcome: Result<String, (ErrorCode, String)>) {
        let payload = match &outcome {
            Ok(v) => answer::to_vec(&OtaAnswer {
                request_id: &reply.request_id,
                ok: true,
                version: v,
            }),
            Err((code, message)) => answer::error_payload(&reply.request_id, *code, message),
        };
        let bytes = Bytes::from(payload);
        self.outbox.submit(Message::answer(
            reply.topic,
            bytes,
            reply.correlation,
            reply.request_id,
            Vec::new(),
        ));
    }

    fn apply(
        &self,
        u: &Updater,
        source: &Source,
        request_id: Option<&str>,
    ) -> Result<String, String> {
        let started = Instant::now();
        let o = &self.settings.ota;
        let update = Update {
            store: &u.store,
            base: &u.base,
            trusted: &u.trusted,
            limits: Limits::from_settings(o),
        };
        let mut last_news = Instant::now() - Duration::from_secs(10);
        let mut progress = |step: Step, what: &str| {
            // Download news comes every second; the status only needs it every few.
            if step == Step::Download && last_news.elapsed() < Duration::from_secs(3) {
                return;
            }
            last_news = Instant::now();
            tracing::info!(step = step.as_str(), "update: {what}");
            self.publish_ota_status(OtaStatus {
                state: step.into(),
                source: Some(source.describe()),
                request_id: request_id.map(str::to_string),
                message: Some(what.to_string()),
                ..Default::default()
            });
        };
        let staged = update.stage(source, &mut progress);
        let staged = match staged {
            Ok(s) => s,
            Err(e) => {
                let message = e.to_string();
                tracing::error!(source = %source.describe(), "update refused: {message}; the current version keeps serving");
                self.publish_ota_status(refused(source, request_id, &message));
                return Err(message);
            }
        };
        let v = staged.info.version.clone();
        apply::enter(
            Step::Switch,
            &mut progress,
            &format!("current -> versions/{v}"),
        );
        if let Err(e) = u.store.switch(&v) {
            let message = format!("switching to {v}: {e}");
            self.publish_ota_status(refused(source, request_id, &message));
            return Err(message);
        }
        apply::enter(
            Step::Reload,
            &mut progress,
            "handing the new pipeline to the pipeline thread",
        );
        self.swap_in(u, staged.pipeline, Some(v.clone()))?;
        let pruned = u.store.prune(o.keep_versions);
        if !pruned.is_empty() {
            tracing::info!(?pruned, "old versions removed (ota.keep_versions)");
        }
        if let Some(u) = self.updater() {
            u.watch_trial(o.trial_s);
        }
        let message = format!(
            "version {v} serving after {:.1} s; on trial for {} s",
            started.elapsed().as_secs_f64(),
            o.trial_s
        );
        tracing::info!("update applied: {message}");
        self.publish_ota_status(OtaStatus {
            state: OtaState::Applied,
            version: Some(v.clone()),
            source: Some(source.describe()),
            request_id: request_id.map(str::to_string),
            message: Some(message),
            ..Default::default()
        });
        Ok(v)
    }

    fn rollback(&self, u: &Updater, request_id: Option<&str>) -> Result<String, String> {
        let refuse = |message: String| {
            self.publish_ota_status(OtaStatus {
                state: OtaState::RollbackRefused,
                request_id: request_id.map(str::to_string),
                message: Some(message.clone()),
                ..Default::default()
            });
            Err(message)
        };
        let Some(prev) = u.store.previous() else {
            return refuse("no previous version to roll back to".into());
        };
        // Opened before any link moves: a previous version that no longer opens is refused.
        let opened = u
            .store
            .settings_for(&u.base, &prev)
            .and_then(|s| Pipeline::open_writable(&s));
        let pipeline = match opened {
            Ok(p) => p,
            Err(e) => return refuse(format!("version {prev} does not open: {e}")),
        };
        let from = u.store.current().unwrap_or_default();
        if let Err(e) = u.store.rollback() {
            return refuse(e.to_string());
        }
        self.swap_in(u, pipeline, Some(prev.clone()))?;
        let message = format!("rolled back from {from} to {prev} on command");
        tracing::warn!("{message}");
        self.publish_ota_status(OtaStatus {
            state: OtaState::RolledBack,
            version: Some(prev.clone()),
            request_id: request_id.map(str::to_string),
            message: Some(message),
            ..Default::default()
        });
        Ok(prev)
    }

    /// Hands `pipeline` to the pipeline thread and waits until it serves.
    fn swap_in(
        &self,
        u: &Updater,
        pipeline: Pipeline,
        version: Option<String>,
    ) -> Result<(), String> {
        let (done, old) = mpsc::channel();
        *u.swap.lock().unwrap_or_else(|p| p.into_inner()) = Some(Swap {
            pipeline,
            version,
            done,
        });
        match old.recv_timeout(Duration::from_secs(120)) {
            Ok(old) => {
                drop(old);
                Ok(())
            }
            Err(_) => Err("the pipeline thread did not take the new pipeline within 120 s; it serves after a restart".into()),
        }
    }

    /// The pipeline waiting to be swapped in (see [`Updater::take_swap`]).
    pub(super) fn take_swap(&self) -> Option<Swap> {
        self.updater().and_then(|u| u.take_swap())
    }
}

/// Watches `dir` for `*.tar` bundles: a file whose size held still for one
/// poll is moved into the store's staging folder and applied. A refused
/// bundle leaves `<file>.rejected` beside where it was (`v7.tar` →
/// `v7.tar.rejected`), with the reason.
pub fn watch_folder(shared: Arc<Shared>, dir: PathBuf) {
    let Some(u) = shared.updater.clone() else {
        return;
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), "ota.watch_dir cannot be created: {e}; not watching");
        return;
    }
    tracing::info!(dir = %dir.display(), "watching for bundles (*.tar)");
    let mut sizes: std::collections::HashMap<PathBuf, u64> = Default::default();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut seen = std::collections::HashMap::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "tar") || !e.file_type().is_ok_and(|t| t.is_file())
            {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            seen.insert(p.clone(), size);
            if sizes.get(&p) != Some(&size) || u.is_busy() {
                continue;
            }
            take_dropped(&shared, &u, &p);
        }
        sizes = seen;
    }
}

fn take_dropped(shared: &Arc<Shared>, u: &Updater, path: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staged = u.store.staging().join(format!("dropped-{name}"));
    // Moved out first: a bundle that kills the daemon is not picked up again at every start.
    let moved = std::fs::rename(path, &staged)
        .or_else(|_| std::fs::copy(path, &staged).and_then(|_| std::fs::remove_file(path)));
    if let Err(e) = moved {
        tracing::error!(file = %path.display(), "cannot take the dropped bundle: {e}");
        return;
    }
    tracing::info!(file = %path.display(), "bundle dropped into ota.watch_dir; applying it");
    let rejected = path.with_extension("tar.rejected");
    let staged_copy = staged.clone();
    shared.start_ota(
        Command::Apply(Source::Path(staged)),
        None,
        Some(Box::new(move |outcome| {
            if let Err(why) = outcome {
                let _ = std::fs::write(&rejected, format!("{why}\n"));
            }
            let _ = std::fs::remove_file(&staged_copy);
        })),
    );
}

/// The status of an update refused at some step.
fn refused(source: &Source, request_id: Option<&str>, message: &str) -> OtaStatus {
    OtaStatus {
        state: OtaState::Refused,
        source: Some(source.describe()),
        request_id: request_id.map(str::to_string),
        message: Some(message.to_string()),
        ..Default::default()
    }
}
