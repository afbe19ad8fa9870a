//! Over-the-air updates of models and gallery. See docs/OTA.md.
//!
//! - `keys.rs`, `bundle.rs`: the signed bundle and the keys that sign it;
//! - `fetch.rs`: getting a bundle onto the box (resumable download);
//! - `apply.rs`: the steps up to the switch (verify, unpack, build, health check);
//! - `store.rs`: the versions on disk, the atomic switch, rollback and crash recovery;
//! - `version.rs`: how versions are ordered (no silent downgrade).
//!
//! This sits beside the data flow, not in it: it produces the files a
//! [`crate::Pipeline`] is opened from and opens the new one; handing that to
//! the serving thread is the daemon's job.

pub mod apply;
pub mod bundle;
pub mod fetch;
pub mod keys;
pub mod store;
pub mod version;
