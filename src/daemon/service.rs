//! Talking to the service manager (systemd's `sd_notify` protocol): `READY=1`
//! once the models are loaded and the broker has answered (or, after
//! `daemon.ready_timeout_s` without a broker, ready but degraded), `STATUS=`
//! lines saying what the daemon is doing, `WATCHDOG=1` pings while the
//! pipeline is healthy, and `STOPPING=1`.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use super::health::Health;

/// Sends `states`; a failure is logged, never fatal (the service still works).
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

/// The daemon's state as the service manager sees it.
#[derive(Debug, Default)]
pub struct Service {
    ready: AtomicBool,
    stalled: AtomicBool,
}

impl Service {
    /// Says what the daemon is doing (`systemctl status` shows it).
    pub fn status(&self, text: &str) {
        tracing::debug!(status = text, "service status");
        send(&[NotifyState::Status(text)]);
    }

    /// Ready (once): the service manager starts dependent units now.
    pub fn ready(&self, text: &str) {
        if !self.ready.swap(true, Ordering::Relaxed) {
            send(&[NotifyState::Ready, NotifyState::Status(text)]);
        } else {
            self.status(text);
        }
    }

    /// Whether `ready` was sent.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The stop has begun.
    pub fn stopping(&self, text: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(text)]);
    }

    /// Whether the watchdog has stopped pinging.
    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }
}

/// Pings the watchdog at half its interval while `health` says the pipeline
/// is healthy; stops pinging (and says why) when it is not, so that systemd
/// kills and restarts the service. Returns at once when the unit has no
/// `WatchdogSec=`.
pub async fn watchdog(service: Arc<Service>, health: Arc<Health>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(50));
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog on: pinging while the pipeline is healthy"
    );
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match health.check() {
            Ok(()) => {
                if service.stalled.swap(false, Ordering::Relaxed) {
                    tracing::warn!("the pipeline is making progress again; watchdog pings resumed");
                }
                send(&[NotifyState::Watchdog]);
            }
            Err(why) => {
                if !service.stalled.swap(true, Ordering::Relaxed) {
                    tracing::error!("pipeline stalled: {why}; watchdog pings stopped, the service manager will restart the daemon");
                    send(&[NotifyState::Status(&format!(
                        "stalled: {why}; watchdog pings stopped"
                    ))]);
                }
            }
        }
    }
}
