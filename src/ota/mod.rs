//! Over-the-air updates of models and gallery: signed bundles (`bundle.rs`)
//! and the keys that sign them (`keys.rs`). See docs/OTA.md.
//!
//! This sits beside the data flow, not in it: it produces the files a
//! [`crate::Pipeline`] is opened from, and never reaches into a running one.

pub mod bundle;
pub mod keys;
