//! Is the pipeline thread making progress? The watchdog asks this before each
//! ping, so a hung inference (a driver stuck in a GPU call, a read that never
//! returns) stops the pings and systemd restarts the service.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const IDLE: u64 = u64::MAX;

/// The pipeline thread's heartbeat.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` when the current batch started; `IDLE` between batches.
    busy_since_ms: AtomicU64,
    exited: AtomicBool,
    stall_after: Duration,
}

impl Health {
    /// A batch taking longer than `stall_after` counts as hung.
    pub fn new(stall_after: Duration) -> Health {
        Health {
            epoch: Instant::now(),
            busy_since_ms: AtomicU64::new(IDLE),
            exited: AtomicBool::new(false),
            stall_after,
        }
    }

    /// The pipeline thread starts a batch.
    pub fn begin(&self) {
        self.busy_since_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The batch is answered.
    pub fn end(&self) {
        self.busy_since_ms.store(IDLE, Ordering::Relaxed);
    }

    /// The pipeline thread has ended (a stop, or a bug).
    pub fn exited(&self) {
        self.exited.store(true, Ordering::Relaxed);
    }

    /// `Err` with the reason when the pipeline is not healthy.
    pub fn check(&self) -> Result<(), String> {
        if self.exited.load(Ordering::Relaxed) {
            return Err("the pipeline thread has ended".into());
        }
        let since = self.busy_since_ms.load(Ordering::Relaxed);
        if since == IDLE {
            return Ok(());
        }
        let busy = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(since));
        if busy > self.stall_after {
            return Err(format!(
                "one batch has been running for {:.0} s (daemon.stall_after_s = {})",
                busy.as_secs_f64(),
                self.stall_after.as_secs()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_batch_is_a_stall_and_idle_is_healthy() {
        // 500 ms: a loaded machine may pause the test between begin and
        // check for tens of ms, never mind the stall it would then report.
        let h = Health::new(Duration::from_millis(500));
        assert!(h.check().is_ok(), "idle");
        h.begin();
        assert!(h.check().is_ok(), "a batch just started");
        std::thread::sleep(Duration::from_millis(700));
        let e = h.check().unwrap_err();
        assert!(e.contains("stall_after_s"), "{e}");
        h.end();
        assert!(h.check().is_ok(), "answered");
        h.exited();
        assert!(h.check().is_err());
    }
}
