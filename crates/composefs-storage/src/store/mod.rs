//! The store itself: where it is (`storage.conf`), its records and locks, and the handles on
//! them ([`Storage`](storage::Storage), [`Image`](image::Image), [`Layer`](layer::Layer)).
//!
//! Nothing here writes a tar, merges layers or writes outside the process: those are the
//! `tar`, `rootfs` and `export` modules, which use this one.

pub(crate) mod big_data;
pub(crate) mod chains;
pub mod config;
pub mod image;
pub mod layer;
pub(crate) mod lock;
pub mod manifest;
pub(crate) mod records;
pub mod reference;
pub(crate) mod state;
pub mod storage;
